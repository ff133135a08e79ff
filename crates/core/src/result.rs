//! What a finished classification produces.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One label and its probability.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The class index in the model's output.
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// What classifies a process's jobs (`--provider`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// An ONNX model run in-process: the built-in one, or the one given with `--model`.
    #[default]
    Builtin,
    /// The Imagga tagging API (v2).
    Imagga,
    /// Answers at once without looking at the image (benchmarks of the queue only).
    Noop,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Builtin, Provider::Imagga, Provider::Noop];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Builtin => "builtin",
            Provider::Imagga => "imagga",
            Provider::Noop => "noop",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown provider {s:?}"))
    }
}

/// The name of the built-in model, the default model of a job.
pub const BUILTIN_MODEL: &str = "efficientnet-lite0";

/// The provider and model that produced a result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Results stored before providers were recorded came from the in-process model.
    #[serde(default)]
    pub provider: Provider,
    pub name: String,
    pub version: String,
}

/// How long each stage of a job took, in milliseconds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue_wait_ms: f64,
    pub decode_ms: f64,
    pub inference_ms: f64,
}

/// The stored result of a succeeded job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub predictions: Vec<Prediction>,
    pub model: ModelInfo,
    pub timings: Timings,
    /// The worker that produced it (`NODE-wN`).
    #[serde(default)]
    pub worker: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
        }
    }

    #[test]
    fn a_result_stored_without_a_provider_reads_as_the_builtin_one() {
        let m: ModelInfo = serde_json::from_str(r#"{"name":"efficientnet-lite0","version":"1"}"#)
            .expect("old model info");
        assert_eq!(m.provider, Provider::Builtin);
    }
}
