//! The ONNX model: loaded once per process with its [`ModelSpec`] (checked against the ONNX
//! input's shape and output size), run through one ONNX Runtime session per worker thread;
//! softmax (for logits) and top-k over its outputs.

use crate::budget::{Hold, MemoryBudget, NoRoom};
use crate::cancel::Cancel;
use crate::heap;
use crate::imageio::ImageLimits;
use crate::prepare::{Prepared, Preprocessor};
use crate::runtime::{self, RuntimeError};
use crate::spec::{Layout, ModelSpec, OutputKind, SpecError};
use crate::{Classifier, ClassifyError};
use imgclass_core::{ModelInfo, Prediction, Provider};
use ort::memory::Allocator;
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{Tensor, TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const BUILTIN_MODEL: &[u8] = include_bytes!("../model/efficientnet-lite0.onnx");
const BUILTIN_LABELS: &str = include_str!("../model/imagenet_labels.txt");

/// Which network to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// EfficientNet-Lite0 (ImageNet-1k), built into the binary.
    BuiltIn,
    /// An ImageNet-style model with the built-in model's pre-processing (its `model.toml`):
    /// input `[N,3,224,224]` float32 normalised as `(x-127)/128`, output `[N,classes]` logits,
    /// and a labels file with one line per class. A model with its own pre-processing is a
    /// folder with a `model.toml`: see [`Model::load_dir`].
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
    /// The `model.toml` is wrong, or does not fit the ONNX model.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The model's file or a session of it does not fit the process's memory budget.
    #[error("model {model}: {why}")]
    Memory { model: String, why: NoRoom },
}

struct Shared {
    bytes: std::borrow::Cow<'static, [u8]>,
    /// The file's share of the memory budget, when it was read into memory (the built-in
    /// model's is part of the binary).
    _hold: Option<Hold<'static>>,
    labels: Vec<String>,
    info: ModelInfo,
    /// With `input.size` always set.
    spec: ModelSpec,
}

/// Where a model's parts came from, for error messages.
struct Files<'a> {
    spec: &'a str,
    labels: &'a str,
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
    /// Loads the model and its labels and checks them by running one blank image through. Both
    /// sources use the built-in model's `model.toml`.
    pub fn load(source: &ModelSource) -> Result<Model, ModelError> {
        let (bytes, labels_text, name) = read_source(source)?;
        let labels_file = match source {
            ModelSource::BuiltIn => "built-in imagenet_labels.txt".to_string(),
            ModelSource::File { labels, .. } => labels.display().to_string(),
        };
        let files = Files {
            spec: "built-in model.toml",
            labels: &labels_file,
        };
        Model::build(name, bytes, &labels_text, ModelSpec::builtin(), &files)
    }

    /// Loads a model folder: `model.onnx`, `labels.txt` (one label a line, line i = output i)
    /// and `model.toml` (its [`ModelSpec`]). Its name is the folder's name; its version a
    /// digest of `model.onnx`. The spec is checked against the ONNX input's shape, and the
    /// labels against the output's size.
    pub fn load_dir(dir: &Path) -> Result<Model, ModelError> {
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let spec_path = dir.join("model.toml");
        let spec = ModelSpec::read(&spec_path)?;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ModelError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let labels_path = dir.join("labels.txt");
        let labels_file = labels_path.display().to_string();
        let labels_text = String::from_utf8(read(&labels_path)?)
            .map_err(|_| ModelError::Invalid(format!("{labels_file}: not UTF-8")))?;
        let bytes = read(&dir.join("model.onnx"))?;
        let files = Files {
            spec: &spec_path.display().to_string(),
            labels: &labels_file,
        };
        Model::build(name, bytes.into(), &labels_text, spec, &files)
    }

    fn build(
        name: String,
        bytes: std::borrow::Cow<'static, [u8]>,
        labels_text: &str,
        spec: ModelSpec,
        files: &Files<'_>,
    ) -> Result<Model, ModelError> {
        let labels: Vec<String> = labels_text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if labels.is_empty() {
            return Err(ModelError::Invalid(format!(
                "{}: the labels file has no labels",
                files.labels
            )));
        }
        let hold = match &bytes {
            std::borrow::Cow::Owned(b) => Some(hold(&name, "its model file", b.len() as u64)?),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let session = new_session(&bytes, 1)?;
        let spec = resolve(spec, &session, files.spec)?;
        let version = short_digest(&bytes);
        let model = Model {
            shared: Arc::new(Shared {
                bytes,
                _hold: hold,
                labels,
                info: ModelInfo {
                    provider: Provider::Builtin,
                    name,
                    version,
                },
                spec,
            }),
        };
        let outputs = model.classifier(session, 5)?.run_blank()?;
        if outputs.len() != model.shared.labels.len() {
            return Err(ModelError::Invalid(format!(
                "{}: the model has {} outputs but the labels file has {} labels",
                files.labels,
                outputs.len(),
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

    /// The model's pre-processing and output kind; `input.size` is always set.
    pub fn spec(&self) -> &ModelSpec {
        &self.shared.spec
    }

    /// A classifier with its own ONNX Runtime session, for one thread. The session is counted
    /// in the process's [`MemoryBudget`] for as long as the classifier lives: what building it
    /// and one run on a blank image left allocated on this thread (its weights, ONNX Runtime's
    /// working memory of a run), at least the model file's size; a session that does not fit is
    /// refused ([`ModelError::Memory`]). (The model itself holds its file's size while loaded.)
    pub fn session(
        &self,
        intra_threads: usize,
        top_k: usize,
    ) -> Result<OnnxClassifier, ModelError> {
        let before = heap::thread_net_allocated();
        let session = new_session(&self.shared.bytes, intra_threads)?;
        let mut classifier = self.classifier(session, top_k)?;
        classifier.run_blank()?;
        let measured = match (before, heap::thread_net_allocated()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        let bytes = measured.max(self.shared.bytes.len() as u64);
        let hold = hold(&self.shared.info.name, "its ONNX Runtime session", bytes)?;
        tracing::debug!(model = %self.shared.info.name, session_mib = bytes >> 20, "ONNX Runtime session ready");
        classifier.hold = Some(hold);
        Ok(classifier)
    }

    fn classifier(&self, session: Session, top_k: usize) -> Result<OnnxClassifier, ModelError> {
        let invalid = |e: String| ModelError::Invalid(e);
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| invalid("the model has no input".into()))?
            .name()
            .to_string();
        let spec = &self.shared.spec;
        let pre = Preprocessor::for_input(&spec.input)?;
        let shape = spec
            .input
            .shape(1)
            .expect("a loaded model's spec has a size");
        Ok(OnnxClassifier {
            model: self.clone(),
            session,
            input,
            limits: ImageLimits::default(),
            top_k: top_k.max(1),
            pre,
            input_tensor: Tensor::<f32>::new(&Allocator::default(), shape)
                .map_err(|e| invalid(e.to_string()))?,
            hold: None,
        })
    }
}

/// Holds `bytes` of the process's memory budget for `what` of the model `model`.
fn hold(model: &str, what: &'static str, bytes: u64) -> Result<Hold<'static>, ModelError> {
    MemoryBudget::global()
        .hold(what, bytes)
        .map_err(|why| ModelError::Memory {
            model: model.to_string(),
            why,
        })
}

fn new_session(bytes: &[u8], intra_threads: usize) -> Result<Session, ModelError> {
    let env = runtime::environment()?;
    let invalid = |e: String| ModelError::Invalid(e);
    Session::builder(env)
        .map_err(|e| invalid(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| invalid(e.to_string()))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| invalid(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| invalid(e.to_string()))?
        .commit_from_memory(bytes)
        .map_err(|e| invalid(e.to_string()))
}

/// `spec` checked against the ONNX model's first input, with the size filled in from it when
/// the file leaves it out. Errors name `file` and the key that disagrees with the model.
fn resolve(mut spec: ModelSpec, session: &Session, file: &str) -> Result<ModelSpec, ModelError> {
    let invalid = |e: String| ModelError::Invalid(e);
    let input = session
        .inputs()
        .first()
        .ok_or_else(|| invalid("the model has no input".into()))?;
    let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
        return Err(invalid(format!(
            "the model's input {} is not a tensor",
            input.name()
        )));
    };
    let dims: Vec<i64> = shape.iter().copied().collect();
    let shown = show_shape(&dims);
    if *ty != TensorElementType::Float32 {
        return Err(invalid(format!(
            "the model's input {} is {ty:?}, not float32",
            input.name()
        )));
    }
    if dims.len() != 4 {
        return Err(invalid(format!(
            "the model's input {} has shape {shown}; an image batch of 4 axes (NCHW or NHWC) is needed",
            input.name()
        )));
    }
    if dims[0] > 1 {
        return Err(invalid(format!(
            "the model's input {} has shape {shown}: a fixed batch of {} images, not 1 or any",
            input.name(),
            dims[0]
        )));
    }
    let (c, h, w) = match spec.input.layout {
        Layout::Nchw => (1, 2, 3),
        Layout::Nhwc => (3, 1, 2),
    };
    if dims[c] >= 0 && dims[c] != 3 {
        return Err(SpecError::new(
            file,
            "input.layout",
            format!(
                "{} puts the 3 channels on axis {c}, but the model's input shape is {shown}",
                spec.input.layout
            ),
        )
        .into());
    }
    let fixed = |d: i64| u32::try_from(d).ok().filter(|d| *d > 0);
    let (fh, fw) = (fixed(dims[h]), fixed(dims[w]));
    match spec.input.size {
        Some([sh, sw]) => {
            if fh.is_some_and(|f| f != sh) || fw.is_some_and(|f| f != sw) {
                return Err(SpecError::new(
                    file,
                    "input.size",
                    format!(
                        "[{sh}, {sw}] (height, width) contradicts the model's input shape {shown} ({})",
                        spec.input.layout
                    ),
                )
                .into());
            }
        }
        None => match (fh, fw) {
            (Some(fh), Some(fw)) => spec.input.size = Some([fh, fw]),
            _ => {
                return Err(SpecError::new(
                    file,
                    "input.size",
                    format!(
                        "required: the model's input shape {shown} ({}) does not fix the height and width",
                        spec.input.layout
                    ),
                )
                .into())
            }
        },
    }
    Ok(spec)
}

/// A shape with its free axes as `?`: `[?, 3, 224, 224]`.
fn show_shape(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
        .collect();
    format!("[{}]", parts.join(", "))
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
    top_k: usize,
    pre: Preprocessor,
    /// The model's input for one image, written in place by the pre-processing.
    input_tensor: Tensor<f32>,
    /// The session's share of the process's memory budget (`None` for a model's probe at load).
    hold: Option<Hold<'static>>,
}

impl OnnxClassifier {
    pub fn with_limits(mut self, limits: ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Decodes and pre-processes one image into this classifier's input buffer (the first
    /// stage of [`Classifier::classify`]); returns how it went. For benchmarks.
    pub fn prepare(&mut self, image: &[u8], cancel: &Cancel) -> Result<Prepared, ClassifyError> {
        let budget = MemoryBudget::global();
        let (_, out) = self.input_tensor.extract_tensor_mut();
        self.pre.prepare(image, &self.limits, budget, cancel, out)
    }

    /// Runs the model on a blank (all-zero) image: its outputs, for the checks at load, and a
    /// first run that leaves ONNX Runtime's working memory allocated.
    fn run_blank(&mut self) -> Result<Vec<f32>, ModelError> {
        let (_, input) = self.input_tensor.extract_tensor_mut();
        input.fill(0.0);
        self.infer_prepared().map_err(ModelError::Invalid)
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

    /// Runs `n` pre-processed images (`n` times the spec's tensor, e.g. `n * 3 * 224 * 224`
    /// floats for the built-in model) and returns the model's raw outputs.
    pub fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, String> {
        let shape = self
            .model
            .spec()
            .input
            .shape(n)
            .expect("a loaded model's spec has a size");
        let tensor = Tensor::from_array((shape, input.to_vec())).map_err(|e| e.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let (_, logits) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        Ok(logits.to_vec())
    }

    /// The `k` most probable labels for one image's outputs: a softmax first when the model
    /// gives logits, the outputs as they are when it gives probabilities.
    pub fn top_k(&self, outputs: &[f32], k: usize) -> Vec<Prediction> {
        match self.model.spec().output.kind {
            OutputKind::Logits => top_k(outputs, k, self.model.labels()),
            OutputKind::Probabilities => top_k_of(outputs.to_vec(), k, self.model.labels()),
        }
    }
}

/// Softmax over `logits`, then the `k` most probable classes, most probable first.
pub fn top_k(logits: &[f32], k: usize, labels: &[String]) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    for e in &mut exps {
        *e /= sum;
    }
    top_k_of(exps, k, labels)
}

/// The `k` most probable classes of `probabilities`, most probable first.
fn top_k_of(probabilities: Vec<f32>, k: usize, labels: &[String]) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probabilities.len()).collect();
    idx.sort_unstable_by(|a, b| {
        probabilities[*b]
            .total_cmp(&probabilities[*a])
            .then(a.cmp(b))
    });
    idx.into_iter()
        .take(k)
        .map(|i| Prediction {
            index: i,
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}")),
            probability: probabilities[i],
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
