//! A model repository (`--models DIR`): its models are served beside the built-in one, jobs
//! name them, `classify --model NAME` runs one, and a folder that cannot load leaves the others
//! served. The models are the tiny generated ones of the classifier's tests, whose answers are
//! known exactly: `means_softmax` outputs the softmax of each channel's mean.

use crate::{bin, job, post_image, wait_for_event, Server};
use image::ImageEncoder;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A repository with `colours` (the channel means, as probabilities, of an 8×8 RGB input) and
/// `broken` (its model.toml lacks the required `std`).
fn repository(dir: &Path) -> PathBuf {
    repository_with(dir, "colours")
}

/// A repository with the channel-means model as `name`, and `broken`.
pub(crate) fn repository_with(dir: &Path, name: &str) -> PathBuf {
    let repo = dir.join(format!("models-{name}"));
    let generated =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../classifier/tests/models/means_softmax.onnx");
    for (name, spec) in [
        (
            name,
            "[input]\nsize = [8, 8]\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n[output]\nkind = \"probabilities\"\n",
        ),
        (
            "broken",
            "[input]\nsize = [8, 8]\nmean = [0, 0, 0]\n[output]\nkind = \"probabilities\"\n",
        ),
    ] {
        let d = repo.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&generated, d.join("model.onnx")).unwrap();
        std::fs::write(d.join("model.toml"), spec).unwrap();
        std::fs::write(d.join("labels.txt"), "red\ngreen\nblue\n").unwrap();
    }
    repo
}

/// A solid-colour PNG.
pub(crate) fn solid(rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(32, 24, image::Rgb(rgb));
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), 32, 24, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_names_a_model_of_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let server = Server::start(&db, &["--models", repo.to_str().unwrap(), "--workers", "2"]);
    // The built-in model and `colours` are served (once the workers have loaded them); `broken`
    // is not.
    let mut models = Value::Null;
    for _ in 0..600 {
        models = models_of(&server.base).await;
        if models["models"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["colours", "efficientnet-lite0"]);
    assert_eq!(models["default_model"], "efficientnet-lite0");
    let colours = &models["models"][0];
    assert_eq!(colours["labels"], 3);
    assert_eq!(colours["spec"]["output"]["kind"], "probabilities");
    assert_eq!(colours["nodes"].as_array().unwrap().len(), 1);
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("broken") && l.contains("std")),
        "the broken folder is reported with its file and key"
    );
    // The node is ready (it serves the others) and /readyz names the folder that did not load.
    let ready = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    let not_loaded = ready["models_not_loaded"].as_array().unwrap();
    assert_eq!(not_loaded.len(), 1, "{ready}");
    let why = not_loaded[0].as_str().unwrap();
    assert!(
        why.contains("broken") && why.contains("model.toml") && why.contains("std"),
        "{why}"
    );

    // A blue image, classified by `colours`: blue first.
    let blue = solid([10, 20, 240]);
    let (status, body) = post_image(&server.base, "blue.png", blue, &[("model", "colours")]).await;
    assert_eq!(status, 202, "{body}");
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    wait_for_event(&server.base, &id, "succeeded").await;
    let done = job(&server.base, &id).await;
    assert_eq!(done["model"], "colours");
    assert_eq!(done["result"]["model"]["name"], "colours");
    assert_eq!(done["result"]["predictions"][0]["label"], "blue");

    // `broken` never loaded: no node has served it.
    let (status, body) = post_image(
        &server.base,
        "x.png",
        solid([1, 2, 3]),
        &[("model", "broken")],
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "unknown_model");

    // A folder added, then SIGHUP: served without a restart.
    copy_model(&repo.join("colours"), &repo.join("added"));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let served = |m: &Value, name: &str| {
        m["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == name && !x["nodes"].as_array().unwrap().is_empty())
    };
    let mut models = Value::Null;
    for _ in 0..600 {
        models = models_of(&server.base).await;
        if served(&models, "added") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served(&models, "added"), "{models}");
    // A folder removed, then POST /api/models/reload: it is no longer served.
    std::fs::remove_dir_all(repo.join("colours")).unwrap();
    let resp = reload(&server.base).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["models"],
        serde_json::json!(["efficientnet-lite0", "added"])
    );
    let models: Value = models_of(&server.base).await;
    assert!(
        served(&models, "added") && !served(&models, "colours"),
        "{models}"
    );
}

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.onnx", "model.toml", "labels.txt"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn classify_runs_the_model_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let image = dir.path().join("green.png");
    std::fs::write(&image, solid([20, 230, 30])).unwrap();
    let out = classify(&repo, "colours", &image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().nth(1).unwrap_or_default();
    assert!(first.ends_with("green"), "{text}");
    assert!(text.contains("model colours"), "{text}");

    // An unknown name, and a folder that cannot load, are refused clearly.
    let out = classify(&repo, "nope", &image);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("colours"), "{err}");
    let out = classify(&repo, "broken", &image);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.toml") && err.contains("std"), "{err}");
}

/// `POST /api/models/reload` to the server at `base`.
async fn reload(base: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/models/reload"))
        .send()
        .await
        .unwrap()
}

/// `GET /api/models` of the server at `base`.
async fn models_of(base: &str) -> Value {
    reqwest::get(format!("{base}/api/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `imgclass classify --models REPO --model NAME IMAGE`.
fn classify(repo: &Path, name: &str, image: &Path) -> std::process::Output {
    Command::new(bin())
        .args([
            "classify",
            "--models",
            repo.to_str().unwrap(),
            "--model",
            name,
        ])
        .arg(image)
        .output()
        .unwrap()
}

/// The models' files and ONNX Runtime sessions are counted in the process's memory budget: a
/// model whose sessions do not fit what the others leave (beyond the 256 MiB kept for decodes)
/// is not served; a reload that adds one is refused with the figures, and the node serves what
/// it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_sessions_are_counted_in_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let one_thread = ["--workers", "1", "--inference-threads", "1"];
    // What one session of the built-in model holds, as /metrics reports it.
    let one = {
        let db = format!("sqlite://{}", dir.path().join("a.db").display());
        let server = Server::start(&db, &one_thread);
        wait_ready(&server.base).await;
        memory_metric(
            &server.base,
            "imgclass_memory_held_bytes{holder=\"models\"}",
        )
        .await
    };
    let file = std::fs::metadata(builtin_file("efficientnet-lite0.onnx"))
        .unwrap()
        .len();
    assert!(
        one >= file,
        "a session holds at least its model file: {one} < {file}"
    );

    // Room for that session, a second model's file and half of its session.
    let budget = (256u64 << 20) + one + file + one / 2;
    let repo = dir.path().join("models");
    std::fs::create_dir_all(&repo).unwrap();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let mut args = one_thread.to_vec();
    let (repo_arg, budget_arg) = (repo.display().to_string(), budget.to_string());
    args.extend(["--models", &repo_arg, "--memory-budget", &budget_arg]);
    let server = Server::start(&db, &args);
    wait_ready(&server.base).await;
    let total = memory_metric(&server.base, "imgclass_memory_budget_bytes").await;
    assert_eq!(total, budget);

    // A second copy of the built-in model: its file fits, its session does not.
    let second = repo.join("second");
    std::fs::create_dir_all(&second).unwrap();
    for (from, to) in [
        ("efficientnet-lite0.onnx", "model.onnx"),
        ("model.toml", "model.toml"),
        ("imagenet_labels.txt", "labels.txt"),
    ] {
        std::fs::copy(builtin_file(from), second.join(to)).unwrap();
    }
    let resp = reload(&server.base).await;
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("model second")
            && message.contains("ONNX Runtime session needs")
            && message.contains("--memory-budget"),
        "{message}"
    );
    // Still served, and still holding one session.
    let held = memory_metric(
        &server.base,
        "imgclass_memory_held_bytes{holder=\"models\"}",
    )
    .await;
    assert!(held < one + one / 2, "{held}");
    let (status, body) = post_image(
        &server.base,
        "coffee.png",
        std::fs::read(crate::fixture("coffee.png")).unwrap(),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    wait_for_event(&server.base, &id, "succeeded").await;
}

fn builtin_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../classifier/model")
        .join(name)
}

/// Waits until `/readyz` says the node is ready (its workers have loaded their models).
async fn wait_ready(base: &str) {
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{base} never became ready");
}

/// The value of one sample of `GET /metrics`, named with its labels.
async fn memory_metric(base: &str, sample: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {sample} in {text}")) as u64
}
