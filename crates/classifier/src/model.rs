//! The ONNX model: loaded once per process, run through one ONNX Runtime session per worker
//! thread; softmax and top-k over its logits.

use crate::budget::DecodeBudget;
use crate::cancel::Cancel;
use crate::imageio::{ImageLimits, INPUT_SIDE};
use crate::prepare::{Prepared, Preprocessor};
use crate::runtime::{self, RuntimeError};
use crate::{Classifier, ClassifyError};
use imgclass_core::{ModelInfo, Prediction, Provider};
use ort::memory::Allocator;
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::Tensor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const BUILTIN_MODEL: &[u8] = include_bytes!("../model/efficientnet-lite0.onnx");
const BUILTIN_LABELS: &str = include_str!("../model/imagenet_labels.txt");
const INPUT_LEN: usize = 3 * (INPUT_SIDE as usize) * (INPUT_SIDE as usize);

/// Which network to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// EfficientNet-Lite0 (ImageNet-1k), built into the binary.
    BuiltIn,
    /// An ImageNet-style model: input `[N,3,224,224]` float32 normalised as `(x-127)/128`,
    /// output `[N,classes]` logits, and a labels file with one line per class.
    File { model: PathBuf, labels: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the model cannot be loaded: {0}")]
    Invalid(String),
}

struct Shared {
    bytes: std::borrow::Cow<'static, [u8]>,
    labels: Vec<String>,
    info: ModelInfo,
}

/// A loaded model, cheap to clone; `session()` makes a classifier for one thread.
#[derive(Clone)]
pub struct Model {
    shared: Arc<Shared>,
}

/// What one classification produced.
#[derive(Debug, Clone)]
pub struct Classification {
    pub predictions: Vec<Prediction>,
    pub decode_ms: f64,
    pub inference_ms: f64,
}

impl Model {
    /// Loads the model and its labels and checks them by running one blank image through.
    pub fn load(source: &ModelSource) -> Result<Model, ModelError> {
        let (bytes, labels_text, name) = read_source(source)?;
        let labels: Vec<String> = labels_text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if labels.is_empty() {
            return Err(ModelError::Invalid("the labels file has no labels".into()));
        }
        let version = short_digest(&bytes);
        let model = Model {
            shared: Arc::new(Shared {
                bytes,
                labels,
                info: ModelInfo {
                    provider: Provider::Builtin,
                    name,
                    version,
                },
            }),
        };
        let mut probe = model.session(1, 5)?;
        let logits = probe
            .infer(&vec![0.0; INPUT_LEN], 1)
            .map_err(ModelError::Invalid)?;
        if logits.len() != model.shared.labels.len() {
            return Err(ModelError::Invalid(format!(
                "the model has {} outputs but the labels file has {} labels",
                logits.len(),
                model.shared.labels.len()
            )));
        }
        Ok(model)
    }

    /// Which model `source` is (what its results will name), without loading it into ONNX
    /// Runtime.
    pub fn identify(source: &ModelSource) -> Result<ModelInfo, ModelError> {
        let (bytes, _, name) = read_source(source)?;
        Ok(ModelInfo {
            provider: Provider::Builtin,
            name,
            version: short_digest(&bytes),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn labels(&self) -> &[String] {
        &self.shared.labels
    }

    /// A classifier with its own ONNX Runtime session, for one thread.
    pub fn session(
        &self,
        intra_threads: usize,
        top_k: usize,
    ) -> Result<OnnxClassifier, ModelError> {
        let env = runtime::environment()?;
        let invalid = |e: String| ModelError::Invalid(e);
        let session = Session::builder(env)
            .map_err(|e| invalid(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| invalid(e.to_string()))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| invalid(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| invalid(e.to_string()))?
            .commit_from_memory(&self.shared.bytes)
            .map_err(|e| invalid(e.to_string()))?;
        let side = INPUT_SIDE as usize;
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| invalid("the model has no input".into()))?
            .name()
            .to_string();
        Ok(OnnxClassifier {
            model: self.clone(),
            session,
            input,
            limits: ImageLimits::default(),
            budget: None,
            top_k: top_k.max(1),
            pre: Preprocessor::new(),
            input_tensor: Tensor::<f32>::new(&Allocator::default(), [1usize, 3, side, side])
                .map_err(|e| invalid(e.to_string()))?,
        })
    }
}

/// A model source's bytes, labels file text and name.
type SourceParts = (std::borrow::Cow<'static, [u8]>, String, String);

fn read_source(source: &ModelSource) -> Result<SourceParts, ModelError> {
    Ok(match source {
        ModelSource::BuiltIn => (
            std::borrow::Cow::Borrowed(BUILTIN_MODEL),
            BUILTIN_LABELS.to_string(),
            "efficientnet-lite0".to_string(),
        ),
        ModelSource::File { model, labels } => {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| ModelError::Read {
                    path: p.display().to_string(),
                    source,
                })
            };
            let bytes = read(model)?;
            let labels = String::from_utf8(read(labels)?)
                .map_err(|_| ModelError::Invalid("the labels file is not UTF-8".into()))?;
            let name = model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            (std::borrow::Cow::Owned(bytes), labels, name)
        }
    })
}

fn short_digest(bytes: &[u8]) -> String {
    // FNV-1a 64: a stable fingerprint of the weights, enough to tell two model files apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// An ONNX Runtime session and its scratch buffers; used by one thread at a time.
pub struct OnnxClassifier {
    model: Model,
    session: Session,
    input: String,
    limits: ImageLimits,
    /// `None`: the process-wide [`DecodeBudget::global`].
    budget: Option<Arc<DecodeBudget>>,
    top_k: usize,
    pre: Preprocessor,
    /// The model's input for one image, written in place by the pre-processing.
    input_tensor: Tensor<f32>,
}

impl OnnxClassifier {
    pub fn with_limits(mut self, limits: ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Decoders of this classifier take their memory from `budget` instead of the process-wide one.
    pub fn with_budget(mut self, budget: Arc<DecodeBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Decodes and pre-processes one image into this classifier's input buffer (the first
    /// stage of [`Classifier::classify`]); returns how it went. For benchmarks.
    pub fn prepare(&mut self, image: &[u8], cancel: &Cancel) -> Result<Prepared, ClassifyError> {
        let budget = self
            .budget
            .as_deref()
            .unwrap_or_else(|| DecodeBudget::global());
        let (_, out) = self.input_tensor.extract_tensor_mut();
        self.pre.prepare(image, &self.limits, budget, cancel, out)
    }

    /// Runs the model on what [`prepare`](Self::prepare) left in the input tensor.
    pub fn infer_prepared(&mut self) -> Result<Vec<f32>, String> {
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => &self.input_tensor])
            .map_err(|e| e.to_string())?;
        let (_, logits) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        Ok(logits.to_vec())
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs `n` pre-processed images (`n * 3 * 224 * 224` floats) and returns the raw logits.
    pub fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, String> {
        let side = INPUT_SIDE as usize;
        let tensor = Tensor::from_array(([n, 3usize, side, side], input.to_vec()))
            .map_err(|e| e.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let (_, logits) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        Ok(logits.to_vec())
    }

    /// Softmax over the logits, then the `k` most probable labels.
    pub fn top_k(&self, logits: &[f32], k: usize) -> Vec<Prediction> {
        top_k(logits, k, self.model.labels())
    }
}

/// Softmax over `logits`, then the `k` most probable classes, most probable first.
pub fn top_k(logits: &[f32], k: usize, labels: &[String]) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut idx: Vec<usize> = (0..exps.len()).collect();
    idx.sort_unstable_by(|a, b| exps[*b].total_cmp(&exps[*a]).then(a.cmp(b)));
    idx.into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i,
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}")),
            probability: exps[i] / sum,
        })
        .collect()
}

impl Classifier for OnnxClassifier {
    fn classify(&mut self, image: &[u8]) -> Result<Classification, ClassifyError> {
        self.classify_with(image, &Cancel::never())
    }

    fn classify_with(
        &mut self,
        image: &[u8],
        cancel: &Cancel,
    ) -> Result<Classification, ClassifyError> {
        let t0 = Instant::now();
        self.prepare(image, cancel)?;
        cancel.check()?;
        let t1 = Instant::now();
        let logits = self.infer_prepared().map_err(ClassifyError::Model)?;
        let t2 = Instant::now();
        Ok(Classification {
            predictions: self.top_k(&logits, self.top_k),
            decode_ms: (t1 - t0).as_secs_f64() * 1e3,
            inference_ms: (t2 - t1).as_secs_f64() * 1e3,
        })
    }

    fn info(&self) -> &ModelInfo {
        self.model.info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_a_sorted_softmax() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p = top_k(&[1.0, 3.0, 2.0], 2, &labels);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].index, p[0].label.as_str()), (1, "b"));
        assert_eq!(p[1].index, 2);
        let all = top_k(&[1.0, 3.0, 2.0], 10, &labels);
        let sum: f32 = all.iter().map(|p| p.probability).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((all[0].probability - 0.665_240_9).abs() < 1e-5);
    }
}
