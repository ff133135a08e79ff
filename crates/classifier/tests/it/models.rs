//! Models that carry their own pre-processing (`model.toml`), on the tiny generated models of
//! `tests/models/` (written by `scripts/make-test-models.py`), whose answers are known exactly:
//! `flat_*` output their input tensor as it is, `means_*` the mean of each channel.

use crate::images::{jpeg_rgb, png_rgb};
use imgclass_classifier::{
    Cancel, Classifier, Layout, Model, ModelError, ModelRepository, ModelSpec, OutputKind, Resize,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn generated(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/models")
        .join(name)
}

/// A fresh, empty directory for one test.
pub(crate) fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imgclass-models-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a model folder `dir/name` with the generated `onnx`, `spec` as its model.toml and
/// `labels` labels.
fn folder(dir: &Path, name: &str, onnx: &str, spec: &str, labels: usize) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(generated(onnx), d.join("model.onnx")).unwrap();
    std::fs::write(d.join("model.toml"), spec).unwrap();
    let text: String = (0..labels).map(|i| format!("class {i}\n")).collect();
    std::fs::write(d.join("labels.txt"), text).unwrap();
    d
}

fn load(tag: &str, onnx: &str, spec: &str, labels: usize) -> Result<Model, ModelError> {
    let dir = scratch(tag);
    let m = Model::load_dir(&folder(&dir, "m", onnx, spec, labels));
    std::fs::remove_dir_all(dir).unwrap();
    m
}

/// The model's raw outputs for one image.
fn outputs(model: &Model, image: &[u8]) -> Vec<f32> {
    let mut c = model.session(1, 100).unwrap();
    c.prepare(image, &Cancel::never()).unwrap();
    c.infer_prepared().unwrap()
}

/// `(p / 255 - mean) / std`, as the pre-processing computes it.
fn norm(p: u8, mean: f64, std: f64) -> f32 {
    ((f64::from(p) / 255.0 - mean) / std) as f32
}

const PLAIN: &str = "mean = [0, 0, 0]\nstd = [1, 1, 1]\n";

/// A 6×4 image whose every pixel and channel differs.
fn pattern(x: u32, y: u32) -> [u8; 3] {
    [(10 * x + y) as u8, (100 + 7 * y) as u8, (200 - 9 * x) as u8]
}

#[test]
fn nchw_stretch_writes_the_image_exactly() {
    let spec = format!(
        "[input]\nlayout = \"NCHW\"\nsize = [4, 6]\ncolor = \"RGB\"\n{PLAIN}resize = \"stretch\"\n\
         [output]\nkind = \"logits\"\n"
    );
    let m = load("nchw", "flat_nchw_4x6.onnx", &spec, 72).unwrap();
    assert_eq!(m.spec().input.size, Some([4, 6]));
    let got = outputs(&m, &png_rgb(6, 4, pattern));
    for y in 0..4 {
        for x in 0..6 {
            for c in 0..3 {
                let want = norm(pattern(x, y)[c], 0.0, 1.0);
                let i = c * 24 + y as usize * 6 + x as usize;
                assert_eq!(got[i], want, "x {x} y {y} c {c}");
            }
        }
    }
}

#[test]
fn nhwc_bgr_with_mean_and_std_per_channel() {
    // mean and std are in the model's channel order: B, G, R here.
    let (mean, std) = ([0.1, 0.2, 0.3], [0.5, 0.25, 2.0]);
    let spec = "[input]\nlayout = \"NHWC\"\ncolor = \"BGR\"\nmean = [0.1, 0.2, 0.3]\n\
                std = [0.5, 0.25, 2.0]\nresize = \"stretch\"\n[output]\nkind = \"logits\"\n";
    // No size: the ONNX input fixes it.
    let m = load("nhwc", "flat_nhwc_4x6.onnx", spec, 72).unwrap();
    assert_eq!(m.spec().input.size, Some([4, 6]));
    assert_eq!(m.spec().input.layout, Layout::Nhwc);
    let got = outputs(&m, &png_rgb(6, 4, pattern));
    for y in 0..4 {
        for x in 0..6 {
            let rgb = pattern(x, y);
            for c in 0..3 {
                let want = norm(rgb[2 - c], mean[c], std[c]);
                let i = (y as usize * 6 + x as usize) * 3 + c;
                assert_eq!(got[i], want, "x {x} y {y} c {c}");
            }
        }
    }
}

#[test]
fn crop_takes_the_centre_and_stretch_the_whole_image() {
    // 12×4 source, 4×6 input. Crop with fraction 1 covers 4×6 at scale 1: columns 3..9, exact.
    let src = |x: u32, y: u32| [(20 * x) as u8, (50 * y) as u8, 7];
    let image = png_rgb(12, 4, src);
    let crop = format!("[input]\n{PLAIN}crop_fraction = 1.0\n[output]\nkind = \"logits\"\n");
    let m = load("crop", "flat_nchw_4x6.onnx", &crop, 72).unwrap();
    assert_eq!(m.spec().input.resize, Resize::Crop { fraction: 1.0 });
    let got = outputs(&m, &image);
    for y in 0..4 {
        for x in 0..6 {
            for c in 0..3 {
                let want = norm(src(x + 3, y)[c], 0.0, 1.0);
                assert_eq!(
                    got[c * 24 + y as usize * 6 + x as usize],
                    want,
                    "{x} {y} {c}"
                );
            }
        }
    }
    // Stretch halves the width: column x averages source columns around 2x + 1 (red 40x + 10);
    // the rows stay as they are.
    let stretch = format!("[input]\n{PLAIN}resize = \"stretch\"\n[output]\nkind = \"logits\"\n");
    let m = load("stretch", "flat_nchw_4x6.onnx", &stretch, 72).unwrap();
    let got = outputs(&m, &image);
    for y in 0..4usize {
        for x in 1..5usize {
            let red = got[y * 6 + x] * 255.0;
            assert!((red - (40 * x + 10) as f32).abs() <= 1.0, "{x} {y}: {red}");
            let green = got[24 + y * 6 + x] * 255.0;
            assert!((green - (50 * y) as f32).abs() < 1e-3, "{x} {y}: {green}");
        }
    }
}

#[test]
fn non_square_sizes_of_a_free_model() {
    let spec = "[input]\nsize = [5, 7]\nmean = [0.1, 0.2, 0.3]\nstd = [0.2, 0.3, 0.4]\n\
                crop_fraction = 0.5\n[output]\nkind = \"logits\"\n";
    let m = load("free", "means_free.onnx", spec, 3).unwrap();
    let rgb = [30u8, 60, 90];
    let want: Vec<f32> = (0..3)
        .map(|c| norm(rgb[c], [0.1, 0.2, 0.3][c], [0.2, 0.3, 0.4][c]))
        .collect();
    let got = outputs(&m, &png_rgb(100, 37, |_, _| rgb));
    for c in 0..3 {
        assert!((got[c] - want[c]).abs() < 1e-5, "{got:?} {want:?}");
    }
    // Logits: the probabilities are their softmax.
    let p = m
        .session(1, 3)
        .unwrap()
        .classify(&png_rgb(37, 100, |_, _| rgb))
        .unwrap();
    let exps: Vec<f32> = want.iter().map(|v| v.exp()).collect();
    let sum: f32 = exps.iter().sum();
    assert_eq!(p.predictions[0].index, 2);
    for pred in &p.predictions {
        assert!((pred.probability - exps[pred.index] / sum).abs() < 1e-5);
    }
    // A large JPEG at a tall size goes through the scaled decode; a solid colour stays itself.
    let spec = "[input]\nsize = [300, 200]\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n\
                [output]\nkind = \"logits\"\n";
    let m = load("tall", "means_free.onnx", spec, 3).unwrap();
    let mut c = m.session(1, 3).unwrap();
    let prepared = c
        .prepare(&jpeg_rgb(4000, 3000, |_, _| rgb), &Cancel::never())
        .unwrap();
    assert!(prepared.decoded.0 < 4000, "{prepared:?}");
    let got = c.infer_prepared().unwrap();
    for ch in 0..3 {
        assert!(
            (got[ch] * 255.0 - f32::from(rgb[ch])).abs() <= 2.0,
            "{got:?}"
        );
    }
}

#[test]
fn probabilities_are_used_as_they_are() {
    let rgb = [200u8, 10, 90];
    let means: Vec<f32> = rgb.iter().map(|v| norm(*v, 0.0, 1.0)).collect();
    let softmax = |v: &[f32]| -> Vec<f32> {
        let e: Vec<f32> = v.iter().map(|x| x.exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    };
    let once = softmax(&means);
    let spec = |kind: &str| format!("[input]\nsize = [8, 8]\n{PLAIN}[output]\nkind = \"{kind}\"\n");
    let image = png_rgb(20, 20, |_, _| rgb);
    let m = load("probs", "means_softmax.onnx", &spec("probabilities"), 3).unwrap();
    assert_eq!(m.spec().output.kind, OutputKind::Probabilities);
    let p = m
        .session(1, 3)
        .unwrap()
        .classify(&image)
        .unwrap()
        .predictions;
    assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 2, 1]);
    for pred in &p {
        assert!((pred.probability - once[pred.index]).abs() < 1e-6, "{p:?}");
    }
    // Declared as logits, the softmax is applied a second time: flatter numbers.
    let m = load("probs-as-logits", "means_softmax.onnx", &spec("logits"), 3).unwrap();
    let p = m
        .session(1, 3)
        .unwrap()
        .classify(&image)
        .unwrap()
        .predictions;
    let twice = softmax(&once);
    for pred in &p {
        assert!((pred.probability - twice[pred.index]).abs() < 1e-6, "{p:?}");
    }
}

#[test]
fn bad_files_name_the_file_and_the_key() {
    let ok_input = "mean = [0, 0, 0]\nstd = [1, 1, 1]\n";
    let out = "[output]\nkind = \"logits\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("[input]\n{ok_input}foo = 1\n{out}"),
            "input.foo: unknown key",
        ),
        (
            format!("[input]\n{ok_input}{out}extra = 2\n"),
            "output.extra: unknown key",
        ),
        (
            format!("[input]\n{ok_input}{out}[more]\n"),
            "more: unknown key",
        ),
        (
            format!("[input]\nstd = [1, 1, 1]\n{out}"),
            "input.mean: required key is missing",
        ),
        (
            format!("[input]\nmean = [0, 0, 0]\n{out}"),
            "input.std: required key is missing",
        ),
        (
            format!("[input]\n{ok_input}[output]\n"),
            "output.kind: required key is missing",
        ),
        (
            format!("[input]\n{ok_input}"),
            "output: required table is missing",
        ),
        (out.to_string(), "input: required table is missing"),
        (
            format!("[input]\nmean = [0.5, 0.5]\nstd = [1, 1, 1]\n{out}"),
            "input.mean: expected 3 values, got 2",
        ),
        (
            format!("[input]\nmean = [0, 0, 0]\nstd = [1, 1, 1, 1]\n{out}"),
            "input.std: expected 3 values, got 4",
        ),
        (
            format!("[input]\nmean = [0, 0, 0]\nstd = [1, 0, 1]\n{out}"),
            "input.std: every value must be > 0, got 0",
        ),
        (
            format!("[input]\nmean = [0, 0, 0]\nstd = [1, -1, 1]\n{out}"),
            "input.std: every value must be > 0, got -1",
        ),
        (
            format!("[input]\nmean = \"imagenet\"\nstd = [1, 1, 1]\n{out}"),
            "input.mean: invalid type: string \"imagenet\"",
        ),
        (
            format!("[input]\n{ok_input}crop_fraction = 0\n{out}"),
            "input.crop_fraction: must be in (0, 1], got 0",
        ),
        (
            format!("[input]\n{ok_input}crop_fraction = 1.5\n{out}"),
            "input.crop_fraction: must be in (0, 1], got 1.5",
        ),
        (
            format!("[input]\n{ok_input}resize = \"stretch\"\ncrop_fraction = 0.9\n{out}"),
            "input.crop_fraction: only used with resize = \"crop\"",
        ),
        (
            format!("[input]\n{ok_input}resize = \"fit\"\n{out}"),
            "input.resize: unknown variant `fit`",
        ),
        (
            format!("[input]\n{ok_input}layout = \"CHW\"\n{out}"),
            "input.layout: unknown variant `CHW`",
        ),
        (
            format!("[input]\n{ok_input}color = \"rgb\"\n{out}"),
            "input.color: unknown variant `rgb`",
        ),
        (
            format!("[input]\n{ok_input}size = [224]\n{out}"),
            "input.size: expected 2 values [height, width], got 1",
        ),
        (
            format!("[input]\n{ok_input}size = [0, 10]\n{out}"),
            "input.size: 0 is not a side of 1 to 8192",
        ),
        (
            format!("[input]\n{ok_input}[output]\nkind = \"softmax\"\n"),
            "output.kind: unknown variant `softmax`",
        ),
        (
            format!("[input]\n{ok_input}{out}kind = \"x\"\n"),
            "m.toml: line 6:",
        ),
    ];
    for (text, want) in cases {
        let err = ModelSpec::parse(&text, "models/x/m.toml")
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("models/x/{want}"))
                || shown.starts_with(&format!("models/x/m.toml: {want}")),
            "{shown}\n  wanted: {want}\n  for:\n{text}"
        );
    }
}

#[test]
fn specs_that_contradict_the_model_are_refused() {
    let out = "[output]\nkind = \"logits\"\n";
    let msg = |r: Result<Model, ModelError>| r.err().expect("must fail").to_string();
    let e = msg(load(
        "size",
        "flat_nchw_4x6.onnx",
        &format!("[input]\nsize = [6, 4]\n{PLAIN}{out}"),
        72,
    ));
    assert!(e.contains("/m/model.toml: input.size: [6, 4] (height, width) contradicts the model's input shape [?, 3, 4, 6]"), "{e}");
    let e = msg(load(
        "layout",
        "flat_nchw_4x6.onnx",
        &format!("[input]\nlayout = \"NHWC\"\n{PLAIN}{out}"),
        72,
    ));
    assert!(
        e.contains("/m/model.toml: input.layout: NHWC puts the 3 channels on axis 3"),
        "{e}"
    );
    let e = msg(load(
        "free",
        "means_free.onnx",
        &format!("[input]\n{PLAIN}{out}"),
        3,
    ));
    assert!(e.contains("/m/model.toml: input.size: required"), "{e}");
    let e = msg(load(
        "labels",
        "flat_nchw_4x6.onnx",
        &format!("[input]\n{PLAIN}{out}"),
        3,
    ));
    assert!(
        e.contains("/m/labels.txt: the model has 72 outputs but the labels file has 3 labels"),
        "{e}"
    );
}

#[test]
fn a_repository_loads_its_good_folders_and_reports_the_bad_ones() {
    let dir = scratch("repo");
    let good = format!("[input]\nsize = [8, 8]\n{PLAIN}[output]\nkind = \"logits\"\n");
    folder(&dir, "scenes", "means_free.onnx", &good, 3);
    folder(
        &dir,
        "products",
        "means_softmax.onnx",
        &good.replace("logits", "probabilities"),
        3,
    );
    folder(
        &dir,
        "broken",
        "means_free.onnx",
        "[input]\nmean = [0, 0]\nstd = [1, 1, 1]\n[output]\nkind = \"logits\"\n",
        3,
    );
    let missing = dir.join("empty");
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::create_dir_all(dir.join(".cache")).unwrap();
    std::fs::write(dir.join("README.md"), "not a model").unwrap();

    let repo = ModelRepository::load(&dir).unwrap();
    let names: Vec<&str> = repo.models.iter().map(|m| m.info().name.as_str()).collect();
    assert_eq!(names, ["products", "scenes"]);
    let scenes = repo.get("scenes").unwrap();
    let digest = scenes.info().version.clone();
    assert_eq!(digest.len(), 16);
    assert_ne!(digest, repo.get("products").unwrap().info().version);
    assert_eq!(scenes.labels().len(), 3);
    assert_eq!(
        repo.get("products").unwrap().spec().output.kind,
        OutputKind::Probabilities
    );
    let errors: Vec<String> = repo.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(repo.errors.len(), 2, "{errors:?}");
    assert_eq!(repo.errors[0].folder, dir.join("broken"));
    assert!(
        errors[0].contains("broken/model.toml: input.mean: expected 3 values, got 2"),
        "{errors:?}"
    );
    assert_eq!(repo.errors[1].folder, missing);
    assert!(
        errors[1].contains("empty/model.toml: cannot read it"),
        "{errors:?}"
    );
    // Sessions from a repository entry classify.
    let p = scenes
        .session(1, 1)
        .unwrap()
        .classify(&png_rgb(9, 9, |_, _| [1, 2, 250]))
        .unwrap();
    assert_eq!(p.predictions[0].index, 2);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(ModelRepository::load(&missing).is_err());
}

#[test]
fn the_builtin_model_runs_by_its_own_model_toml() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("model/model.toml");
    let spec = ModelSpec::read(&file).unwrap();
    assert_eq!(spec, ModelSpec::builtin());
    assert_eq!(super::model().spec(), &spec);
}

#[test]
fn the_generated_models_are_what_the_script_writes() {
    let sums = std::fs::read_to_string(generated("SHA256SUMS")).unwrap();
    let mut n = 0;
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(generated(name)).unwrap();
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, sum, "{name} differs from SHA256SUMS");
        n += 1;
    }
    assert_eq!(n, 4);
    // With the onnx package at hand, the script itself checks that it writes these bytes.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let has_onnx = std::process::Command::new("python3")
        .args(["-c", "import onnx"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_onnx {
        let out = std::process::Command::new("python3")
            .arg(root.join("scripts/make-test-models.py"))
            .arg("--check")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("the onnx package is not installed: only SHA256SUMS was checked");
    }
}
