//! Models exported by torchvision and Keras give, through imgclass, the answers they give in
//! their framework. `tests/frameworks/` holds three exports made by
//! `scripts/make-framework-models.py` (torch.onnx.export of a torchvision ShuffleNetV2, and Keras'
//! own ONNX export of MobileNetV2: NHWC with a softmax, one with the "caffe" BGR normalisation
//! at a non-square 192×256), each with the `model.toml` that docs/models.md gives for its
//! framework, and `expected.tsv`: each framework's probabilities for the five test photos, by
//! its usual pipeline (torchvision's Resize/CenterCrop/Normalize; Keras' load_img and
//! preprocess_input, both resizing with Pillow). The networks were trained by the script to
//! tell the five photos apart, short of certainty (their answers are 0.5 to 0.99).
//!
//! The two pipelines resize with different code (imgclass decodes JPEGs at reduced scale and
//! resizes with its own kernels), so the answers agree closely, not bit for bit: on every photo
//! the same top class, and no probability more than 0.03 away from the framework's (measured:
//! 0.013 at most). The same exports with a mistaken `model.toml` (crop for stretch and back, the
//! wrong normalisation or colour order) miss by more than that on some photo.

use imgclass_classifier::{Classifier, Model};
use std::path::{Path, PathBuf};

/// The most a probability may differ from the framework's.
const TOLERANCE: f32 = 0.03;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks")
}

/// `expected.tsv`'s rows of `model`: each photo and the framework's probabilities.
fn expected(model: &str) -> Vec<(String, Vec<f32>)> {
    std::fs::read_to_string(dir().join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f[1] == model)
        .map(|f| {
            let probs = f[2].split(',').map(|v| v.parse().unwrap()).collect();
            (f[0].to_string(), probs)
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// Runs `model` (its folder, with `model.toml`'s text replaced `from` → `to`) on its photos;
/// per photo: whether the top class is the framework's, and the largest difference of a
/// probability from the framework's.
fn compare(model: &str, edit: Option<(&str, &str)>) -> Vec<(String, bool, f32)> {
    let tag = format!(
        "{model}-{}",
        edit.map_or(String::new(), |(_, to)| to
            .replace(['"', ' ', '=', ',', '[', ']'], ""))
    );
    let folder = dir().join(model);
    let loaded = match edit {
        None => Model::load_dir(&folder),
        Some((from, to)) => {
            let tmp = super::models::scratch(&tag);
            for f in ["model.onnx", "labels.txt"] {
                std::fs::copy(folder.join(f), tmp.join(f)).unwrap();
            }
            let spec = std::fs::read_to_string(folder.join("model.toml")).unwrap();
            assert!(
                spec.contains(from),
                "{model}: no {from:?} in its model.toml"
            );
            std::fs::write(tmp.join("model.toml"), spec.replace(from, to)).unwrap();
            Model::load_dir(&tmp)
        }
    };
    let model_ = loaded.unwrap_or_else(|e| panic!("{model}: {e}"));
    let labels = model_.labels().to_vec();
    let mut c = model_.session(1, labels.len()).unwrap();
    expected(model)
        .into_iter()
        .map(|(photo, want)| {
            let got = c.classify(&super::fixture(&photo)).unwrap();
            let mut probs = vec![f32::NAN; want.len()];
            for p in &got.predictions {
                probs[labels.iter().position(|l| *l == p.label).unwrap()] = p.probability;
            }
            let diff = probs
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            (photo, argmax(&probs) == argmax(&want), diff)
        })
        .collect()
}

const MODELS: [&str; 3] = [
    "torchvision-shufflenet",
    "keras-mobilenetv2",
    "keras-caffe-192x256",
];

#[test]
fn framework_exports_give_their_frameworks_answers() {
    let mut worst = (0.0f32, String::new());
    for model in MODELS {
        let rows = compare(model, None);
        assert_eq!(rows.len(), 5, "{model}: five photos");
        for (photo, same_top, diff) in rows {
            assert!(
                same_top,
                "{model}, {photo}: another top class than the framework's"
            );
            assert!(
                diff <= TOLERANCE,
                "{model}, {photo}: a probability {diff:.3} away from the framework's"
            );
            if diff > worst.0 {
                worst = (diff, format!("{model}, {photo}"));
            }
        }
    }
    eprintln!(
        "largest difference from a framework's probability: {:.4} ({})",
        worst.0, worst.1
    );
}

#[test]
fn a_mistaken_model_toml_misses_the_frameworks_answers() {
    let stretch = ("resize = \"stretch\"", "resize = \"crop\"");
    let mistakes: [(&str, (&str, &str)); 6] = [
        (
            MODELS[0],
            (
                "resize = \"crop\"\ncrop_fraction = 0.875",
                "resize = \"stretch\"",
            ),
        ),
        (MODELS[0], ("color = \"RGB\"", "color = \"BGR\"")),
        (MODELS[1], stretch),
        (
            MODELS[1],
            ("mean = [0.5, 0.5, 0.5]", "mean = [0.485, 0.456, 0.406]"),
        ),
        (MODELS[2], stretch),
        (MODELS[2], ("color = \"BGR\"", "color = \"RGB\"")),
    ];
    for (model, edit) in mistakes {
        let worst = compare(model, Some(edit))
            .into_iter()
            .map(|(_, _, diff)| diff)
            .fold(0.0, f32::max);
        assert!(
            worst > TOLERANCE,
            "{model} with {edit:?}: within {worst:.3} of the framework on every photo"
        );
    }
}
