//! What a finished classification produces.

use serde::{Deserialize, Serialize};

/// One label and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The class index in the model's output.
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// The model that produced a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
}

/// How long each stage of a job took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue_wait_ms: f64,
    pub decode_ms: f64,
    pub inference_ms: f64,
}

/// The stored result of a succeeded job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub predictions: Vec<Prediction>,
    pub model: ModelInfo,
    pub timings: Timings,
    /// The worker that produced it (`NODE-wN`).
    #[serde(default)]
    pub worker: Option<String>,
}
