//! The built-in model against the reference pipeline's numbers, and on real photos.

mod agreement;
mod frameworks;
mod images;
mod models;
mod variants;

use imgclass_classifier::{Classifier, Model, ModelSource};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&ModelSource::BuiltIn).expect("load the built-in model"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn logits_match_the_reference_runtime() {
    let mut session = model().session(1, 5).unwrap();
    for stem in ["astronaut", "chelsea", "coffee", "grace_hopper", "rocket"] {
        let input = read_f32(&data(&format!("{stem}.input.f32")));
        let want = read_f32(&data(&format!("{stem}.logits.f32")));
        assert_eq!(input.len(), 3 * 224 * 224);
        let got = session.infer(&input, 1).unwrap();
        assert_eq!(got.len(), 1000);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{stem}: max |logit diff| = {diff:e}");
    }
}

#[test]
fn batches_give_the_same_logits() {
    let mut session = model().session(1, 5).unwrap();
    let a = read_f32(&data("coffee.input.f32"));
    let b = read_f32(&data("chelsea.input.f32"));
    let one = session.infer(&b, 1).unwrap();
    let both = session.infer(&[a, b].concat(), 2).unwrap();
    let diff = both[1000..]
        .iter()
        .zip(&one)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "{diff:e}");
}

#[test]
fn photos_get_the_right_top_label() {
    let mut c = model().session(1, 5).unwrap();
    let top = |c: &mut dyn Classifier, name: &str| {
        let r = c.classify(&fixture(name)).unwrap();
        assert_eq!(r.predictions.len(), 5);
        assert!(r.decode_ms > 0.0 && r.inference_ms > 0.0);
        r.predictions[0].clone()
    };
    let coffee = top(&mut c, "coffee.png");
    assert_eq!((coffee.index, coffee.label.as_str()), (967, "espresso"));
    assert!(coffee.probability > 0.9, "{coffee:?}");
    assert!([281, 282, 285].contains(&top(&mut c, "chelsea.png").index));
    assert!([657, 744].contains(&top(&mut c, "rocket.jpg").index));
}

#[test]
fn bad_images_fail_with_image_errors() {
    let mut c = model().session(1, 5).unwrap();
    let err = c.classify(b"not an image at all").unwrap_err();
    assert_eq!(err.code().as_str(), "unsupported_media_type");
    let jpg = fixture("rocket.jpg");
    let err = c.classify(&jpg[..jpg.len() / 2]).unwrap_err();
    assert_eq!(err.code().as_str(), "image_corrupt", "{err}");
}

#[test]
fn a_model_file_with_wrong_labels_is_refused() {
    let dir = tempdir();
    let model_path = dir.join("m.onnx");
    let labels_path = dir.join("labels.txt");
    std::fs::write(
        &model_path,
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("model/efficientnet-lite0.onnx"))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&labels_path, "cat\ndog\n").unwrap();
    let err = Model::load(&ModelSource::File {
        model: model_path.clone(),
        labels: labels_path.clone(),
    })
    .err()
    .expect("must fail");
    assert!(
        err.to_string()
            .contains("1000 outputs but the labels file has 2"),
        "{err}"
    );

    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("model/imagenet_labels.txt"),
        &labels_path,
    )
    .unwrap();
    let m = Model::load(&ModelSource::File {
        model: model_path,
        labels: labels_path,
    })
    .unwrap();
    assert_eq!(m.info().name, "m");
    assert_eq!(m.info().version, model().info().version);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("imgclass-model-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
