//! Image classification, synchronous and free of any async runtime: sniffing and checking
//! uploads, decoding and pre-processing, the ONNX model run through ONNX Runtime, labels and top-k.
//!
//! Everything here blocks the calling thread; callers run it on a dedicated pool.

pub mod budget;
pub mod cancel;
pub mod imageio;
mod model;
pub mod prepare;
pub mod runtime;

pub use budget::DecodeBudget;
pub use cancel::{Cancel, CancelHandle, Canceled};
pub use imageio::{ImageCheckError, ImageLimits, ProbedImage};
pub use model::{Classification, Model, ModelSource, OnnxClassifier};

use imgclass_core::{ErrorCode, ModelInfo, Prediction};

/// Why one classification failed.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Image(#[from] ImageCheckError),
    #[error("the model failed: {0}")]
    Model(String),
    #[error(transparent)]
    Canceled(#[from] Canceled),
}

impl ClassifyError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ClassifyError::Image(e) => e.code(),
            ClassifyError::Model(_) => ErrorCode::ClassificationFailed,
            ClassifyError::Canceled(_) => ErrorCode::Timeout,
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
