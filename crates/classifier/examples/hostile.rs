//! One hostile (or ordinary) image through the upload check and the classifier, in a fresh
//! process, with the time of each step and the memory the process used. Used by
//! `bench/hardening.sh`; it calls only `imageio::check`, `Model::load`, `Model::session` and
//! `Classifier::classify`, so the same file also builds against older versions of the crate
//! (to measure before and after).
//!
//! ```sh
//! cargo run --release -p imgclass-classifier --example hostile -- IMAGE
//! ```
//!
//! Prints one tab-separated line: file, check ms, check result, classify ms, classify result,
//! VmRSS after the model was loaded (MiB), VmHWM at the end (MiB).

use imgclass_classifier::imageio::{self, ImageLimits};
use imgclass_classifier::{Classifier, Model, ModelSource};
use std::time::Instant;

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: hostile IMAGE");
    let bytes = std::fs::read(&path).expect("read the image");
    let model = Model::load(&ModelSource::BuiltIn).expect("model");
    let mut c = model.session(1, 5).expect("session");
    // One ordinary image first, so that ONNX Runtime's own buffers are in the baseline.
    let warm = image_bytes();
    c.classify(&warm).expect("warm-up");
    let base = status_mib("VmRSS:");
    let t = Instant::now();
    let checked = imageio::check(&bytes, &ImageLimits::default());
    let check_ms = t.elapsed().as_secs_f64() * 1e3;
    let check = match &checked {
        Ok(p) => format!("ok {}x{}", p.width, p.height),
        Err(e) => format!("{}: {e}", e.code().as_str()),
    };
    let t = Instant::now();
    let result = c.classify(&bytes);
    let classify_ms = t.elapsed().as_secs_f64() * 1e3;
    let classified = match &result {
        Ok(r) => format!("ok {}", r.predictions[0].label),
        Err(e) => format!("{}: {e}", e.code().as_str()),
    };
    println!(
        "{path}\t{check_ms:.1}\t{check}\t{classify_ms:.1}\t{classified}\t{base:.0}\t{:.0}",
        status_mib("VmHWM:")
    );
}

/// A 64x64 grey PNG made here, for the warm-up.
fn image_bytes() -> Vec<u8> {
    use image::ImageEncoder;
    let img = image::GrayImage::from_pixel(64, 64, image::Luma([128]));
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), 64, 64, image::ExtendedColorType::L8)
        .unwrap();
    out
}
