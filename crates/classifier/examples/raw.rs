//! imgclass's own decode + inference loop, without the queue, the database or HTTP: the ceiling
//! of what the service can do on this machine with this crate. Used by `bench/run.sh`.
//!
//! ```sh
//! cargo run --release -p imgclass-classifier --example raw -- [--n 200] [--repeat 1] [--mode both|1x2|2x1] \
//!     [--breakdown] [--json OUT.json] IMAGE...
//! ```
//!
//! The N images are taken round-robin from IMAGE... (read into memory first, so the disk is not
//! measured). `1x2` runs one thread with one ONNX Runtime session of 2 intra-op threads; `2x1`
//! runs two threads, each with its own 1-thread session, taking images from a shared counter
//! (what `imgclass serve --workers 2` does on 2 cores). Each image goes through
//! `Classifier::classify`: sniff, header check, decode (reduced where the format allows) with
//! EXIF, crop + resize + normalise into the input tensor, model, softmax, top-5. With `--repeat R` each layout runs R times (the JSON has every run).
//! `--breakdown` also times decode, pre-processing and the model apart, per image.

use imgclass_classifier::{Cancel, Classifier, Model, ModelSource};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

struct Args {
    n: usize,
    repeat: usize,
    modes: Vec<(usize, usize)>,
    breakdown: bool,
    json: Option<String>,
    files: Vec<String>,
}

fn usage() -> ! {
    eprintln!("usage: raw [--n N] [--repeat R] [--mode both|1x2|2x1] [--breakdown] [--json OUT.json] IMAGE...");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 200,
        repeat: 1,
        modes: vec![(1, 2), (2, 1)],
        breakdown: false,
        json: None,
        files: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => {
                args.n = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--repeat" => {
                args.repeat = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|r| *r > 0)
                    .unwrap_or_else(|| usage())
            }
            "--mode" => {
                args.modes = match it.next().as_deref() {
                    Some("both") => vec![(1, 2), (2, 1)],
                    Some("1x2") => vec![(1, 2)],
                    Some("2x1") => vec![(2, 1)],
                    _ => usage(),
                }
            }
            "--breakdown" => args.breakdown = true,
            "--json" => args.json = Some(it.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            f if f.starts_with("--") => usage(),
            f => args.files.push(f.to_string()),
        }
    }
    if args.files.is_empty() || args.n == 0 {
        usage()
    }
    args
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // Clock ticks of 1/100 s on Linux.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// One run: `threads` threads, each with a session of `intra` intra-op threads. Returns the
/// wall seconds and the CPU seconds of the timed part.
fn run(
    model: &Model,
    images: &Arc<Vec<Vec<u8>>>,
    n: usize,
    threads: usize,
    intra: usize,
) -> (f64, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut classifier = model.session(intra, 5).expect("session");
            // Warm-up outside the timed part: the first run allocates ONNX Runtime's buffers.
            classifier.classify(&images[0]).expect("warm-up");
            let (next, barrier, images) = (next.clone(), barrier.clone(), images.clone());
            std::thread::spawn(move || {
                barrier.wait();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    classifier
                        .classify(&images[i % images.len()])
                        .expect("classify");
                }
            })
        })
        .collect();
    barrier.wait();
    let (t0, c0) = (Instant::now(), cpu_seconds());
    for h in handles {
        h.join().expect("worker thread");
    }
    (t0.elapsed().as_secs_f64(), cpu_seconds() - c0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let args = parse_args();
    let images: Vec<Vec<u8>> = args
        .files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect();
    let images = Arc::new(images);
    let t = Instant::now();
    let model = Model::load(&ModelSource::BuiltIn).expect("model");
    eprintln!(
        "raw: model {} {} loaded in {:.0} ms; {} images round-robin over {} files",
        model.info().name,
        model.info().version,
        t.elapsed().as_secs_f64() * 1e3,
        args.n,
        images.len()
    );

    let mut runs = Vec::new();
    for &(threads, intra) in args
        .modes
        .iter()
        .flat_map(|m| std::iter::repeat_n(m, args.repeat))
    {
        let (secs, cpu) = run(&model, &images, args.n, threads, intra);
        let rate = args.n as f64 / secs;
        let cpu_ms = cpu * 1e3 / args.n as f64;
        eprintln!(
            "raw: {threads} thread(s) x {intra} intra: {} images in {secs:.2} s = {rate:.1} img/s, CPU {cpu_ms:.1} ms per image",
            args.n
        );
        runs.push((threads, intra, secs, rate, cpu_ms));
    }

    // Per image: decode (with the upload checks), pre-processing, model; medians of a few runs.
    let mut breakdown = Vec::new();
    if args.breakdown {
        let mut c = model.session(2, 5).expect("session");
        for (name, bytes) in args.files.iter().zip(images.iter()) {
            let (mut dec, mut pre, mut inf) = (Vec::new(), Vec::new(), Vec::new());
            let mut size = (0, 0);
            let mut decoded = (0, 0);
            let mut path = String::new();
            for _ in 0..5 {
                let p = c.prepare(bytes, &Cancel::never()).expect("prepare");
                let t2 = Instant::now();
                c.infer_prepared().expect("infer");
                let t3 = Instant::now();
                size = (p.width, p.height);
                decoded = p.decoded;
                path = format!("{:?}", p.decoder);
                dec.push(p.decode.as_secs_f64() * 1e3);
                pre.push(p.resize.as_secs_f64() * 1e3);
                inf.push((t3 - t2).as_secs_f64() * 1e3);
            }
            let (d, p, i) = (median(dec), median(pre), median(inf));
            eprintln!(
                "raw: {name}: {}x{} {} bytes: decode {d:.1} ms ({path}, {}x{}), resize+normalise {p:.1} ms, model (2 intra) {i:.1} ms",
                size.0,
                size.1,
                bytes.len(),
                decoded.0,
                decoded.1
            );
            breakdown.push((name.clone(), size, bytes.len(), d, p, i));
        }
    }

    let mut json = String::new();
    let _ = write!(
        json,
        "{{\"n\": {}, \"files\": [{}], \"runs\": [",
        args.n,
        args.files
            .iter()
            .map(|f| json_str(f))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (k, (threads, intra, secs, rate, cpu_ms)) in runs.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"threads\": {threads}, \"intra\": {intra}, \"seconds\": {secs:.4}, \"images_per_s\": {rate:.2}, \"cpu_ms_per_image\": {cpu_ms:.2}}}",
            if k > 0 { ", " } else { "" }
        );
    }
    json.push_str("], \"breakdown\": [");
    for (k, (name, (w, h), size, d, p, i)) in breakdown.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"file\": {}, \"width\": {w}, \"height\": {h}, \"bytes\": {size}, \"decode_ms\": {d:.2}, \"preprocess_ms\": {p:.2}, \"inference_ms\": {i:.2}}}",
            if k > 0 { ", " } else { "" },
            json_str(name)
        );
    }
    json.push_str("]}\n");
    match &args.json {
        Some(path) => std::fs::write(path, &json).unwrap_or_else(|e| panic!("{path}: {e}")),
        None => print!("{json}"),
    }
}
