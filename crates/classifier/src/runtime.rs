//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic` mode).
//!
//! Search order: `ORT_DYLIB_PATH`; the cache that `scripts/setup-onnxruntime.sh` fills
//! (`$IMGCLASS_CACHE_DIR`, else `$XDG_CACHE_HOME/imgclass`, else `~/.cache/imgclass`);
//! a `libonnxruntime.so*` beside the executable.

use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release the project is built and tested against.
pub const ORT_VERSION: &str = "1.32.0";
const LIB_NAME: &str = "libonnxruntime.so.1.32.0";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime {ORT_VERSION} was not found (looked in: {searched}).\n\
         Get it with `scripts/setup-onnxruntime.sh` from the imgclass source tree (it fetches the official \
         onnxruntime {ORT_VERSION} wheel with pip and checks its sha256), or point ORT_DYLIB_PATH at a \
         libonnxruntime.so of version {ORT_VERSION}."
    )]
    Missing { searched: String },
    #[error("could not load ONNX Runtime from {path}: {message}")]
    Load { path: String, message: String },
}

/// The directory where the setup script puts the library.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IMGCLASS_CACHE_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("imgclass"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("imgclass"))
}

/// Where the library is expected in the cache.
pub fn cached_library_path() -> Option<PathBuf> {
    cache_dir().map(|d| d.join(format!("onnxruntime-{ORT_VERSION}")).join(LIB_NAME))
}

/// Finds the library, or says where it looked.
pub fn locate() -> Result<PathBuf, RuntimeError> {
    let mut searched = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        searched.push(format!("ORT_DYLIB_PATH={}", p.display()));
    }
    let mut candidates: Vec<PathBuf> = cached_library_path().into_iter().collect();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIB_NAME));
        candidates.push(dir.join("libonnxruntime.so"));
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        searched.push(c.display().to_string());
    }
    Err(RuntimeError::Missing {
        searched: searched.join(", "),
    })
}

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = locate()?;
            let load_err = |message: String| RuntimeError::Load {
                path: path.display().to_string(),
                message,
            };
            let builder = ort::init_from(&path).map_err(|e| load_err(e.to_string()))?;
            builder
                .with_name("imgclass")
                .build()
                .map_err(|e| load_err(e.to_string()))
        })
        .as_ref()
        .map_err(Clone::clone)
}
