//! Image classification, synchronous and free of any async runtime: sniffing and checking
//! uploads, decoding and pre-processing, the ONNX model run through ONNX Runtime, labels and top-k;
//! and the other providers behind the same [`Classifier`] trait (the Imagga API, a no-op).
//!
//! Everything here blocks the calling thread; callers run it on a dedicated pool.

pub mod budget;
pub mod cancel;
pub mod heap;
pub mod imageio;
pub mod imagga;
mod jpeg_errors;
mod model;
pub mod prepare;
pub mod repository;
pub mod runtime;
pub mod spec;

pub use budget::MemoryBudget;
pub use cancel::{Cancel, CancelHandle, Canceled};
pub use imageio::{ImageCheckError, ImageLimits, ProbedImage};
pub use imagga::{ImaggaClassifier, ImaggaConfig, ImaggaConfigError, Secret};
pub use model::{Classification, Model, ModelError, ModelSource, OnnxClassifier};
pub use repository::{FolderError, ModelRepository};
pub use spec::{
    ColorOrder, InputSpec, Layout, ModelSpec, OutputKind, OutputSpec, Resize, SpecError,
};

use imgclass_core::{ErrorCode, ModelInfo, Prediction, Provider};
use std::time::Duration;

/// Why one classification failed.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Image(#[from] ImageCheckError),
    #[error("the model failed: {0}")]
    Model(String),
    #[error(transparent)]
    Canceled(#[from] Canceled),
    /// A failure made on purpose (fault injection), to exercise retries.
    #[error("{0}")]
    Injected(String),
    /// A remote provider failed; `code` says how (and so whether another attempt may work).
    #[error("{message}")]
    Provider {
        code: ErrorCode,
        message: String,
        /// How long the provider asked us to wait before trying again (`Retry-After`).
        retry_after: Option<Duration>,
    },
}

impl ClassifyError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ClassifyError::Image(e) => e.code(),
            ClassifyError::Model(_) => ErrorCode::ClassificationFailed,
            ClassifyError::Canceled(_) => ErrorCode::Timeout,
            ClassifyError::Injected(_) => ErrorCode::InjectedFailure,
            ClassifyError::Provider { code, .. } => *code,
        }
    }

    /// The wait the failing party asked for before another attempt, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClassifyError::Provider { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Something that turns image bytes into labelled probabilities. One instance is used by one
/// thread at a time; a worker pool makes one per thread.
pub trait Classifier: Send {
    fn classify(&mut self, image: &[u8]) -> Result<Classification, ClassifyError>;

    /// Like [`classify`](Self::classify), but gives up (with [`ClassifyError::Canceled`]) soon
    /// after `cancel` fires: between decoding stages, every few rows of a row-by-row decode, and
    /// while waiting for decoder memory. Providers that cannot stop early just classify.
    fn classify_with(
        &mut self,
        image: &[u8],
        cancel: &Cancel,
    ) -> Result<Classification, ClassifyError> {
        let _ = cancel;
        self.classify(image)
    }

    /// The model whose answers these are.
    fn info(&self) -> &ModelInfo;
}

/// Answers at once without looking at the image. Only for benchmarks that measure the queue,
/// the storage and HTTP without the model.
pub struct NoopClassifier {
    info: ModelInfo,
}

impl Default for NoopClassifier {
    fn default() -> Self {
        NoopClassifier {
            info: ModelInfo {
                provider: Provider::Noop,
                name: "noop".into(),
                version: "0".into(),
            },
        }
    }
}

impl Classifier for NoopClassifier {
    fn classify(&mut self, _image: &[u8]) -> Result<Classification, ClassifyError> {
        Ok(Classification {
            predictions: vec![Prediction {
                index: 0,
                label: "noop".into(),
                probability: 1.0,
            }],
            decode_ms: 0.0,
            inference_ms: 0.0,
        })
    }

    fn info(&self) -> &ModelInfo {
        &self.info
    }
}
