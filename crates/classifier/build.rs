//! With the `jpeg-simd` feature: checks that the libjpeg-turbo mozjpeg-sys built for this build
//! really has its SIMD code, and fails the build with what to do when it has not.
//!
//! mozjpeg-sys assembles the SIMD code only when its build script finds `nasm`; otherwise it
//! prints a warning and builds the C code, and cargo keeps that build for the same features even
//! after nasm is installed. Its generated `jconfig.h` says which it built (`WITH_SIMD`).

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::exit;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_JPEG_SIMD").is_none() {
        return;
    }
    // mozjpeg-sys (`links = "jpeg"`) hands its include directories to the crates that depend on
    // it: first the one with its generated configuration.
    let include = env::var_os("DEP_JPEG_INCLUDE").unwrap_or_default();
    let Some(jconfig) = env::split_paths(&include)
        .map(|dir| dir.join("jconfig.h"))
        .find(|path| path.is_file())
    else {
        fail(
            "mozjpeg-sys did not say where its jconfig.h is (DEP_JPEG_INCLUDE)",
            None,
        );
    };
    println!("cargo:rerun-if-changed={}", jconfig.display());
    let text = fs::read_to_string(&jconfig).unwrap_or_else(|e| {
        fail(&format!("cannot read {}: {e}", jconfig.display()), None);
    });
    if !text
        .lines()
        .any(|line| line.trim() == "#define WITH_SIMD 1")
    {
        fail(
            "the `jpeg-simd` feature is on, but mozjpeg-sys built libjpeg-turbo without its SIMD \
             code: nasm was missing (or too old) when that build ran, and cargo keeps it",
            Some(&jconfig),
        );
    }
}

fn fail(what: &str, jconfig: Option<&PathBuf>) -> ! {
    let profile = env::var("PROFILE").unwrap_or_default();
    let release = if profile == "release" {
        " --release"
    } else {
        ""
    };
    eprintln!("error: imgclass-classifier: {what}.");
    if let Some(path) = jconfig {
        eprintln!("  (libjpeg-turbo's configuration: {})", path.display());
    }
    eprintln!(
        "  Install nasm (Debian or Ubuntu: apt-get install nasm), remove that build with \
         `cargo clean{release} -p mozjpeg-sys`, and build again; or build without the \
         `jpeg-simd` feature (libjpeg-turbo's C code: large JPEGs decode about 1.5 times slower)."
    );
    exit(1);
}
