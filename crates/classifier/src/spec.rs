//! A model's own pre-processing and output, described by its `model.toml`.

use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// How a model wants its input and what its output is, read from a `model.toml`.
///
/// ```toml
/// [input]
/// layout = "NCHW"                 # default "NCHW"; or "NHWC"
/// size = [224, 224]               # [height, width]; default: the ONNX input's fixed size
/// color = "RGB"                   # default "RGB"; or "BGR"
/// mean = [0.485, 0.456, 0.406]    # required
/// std = [0.229, 0.224, 0.225]     # required
/// resize = "crop"                 # default "crop"; or "stretch"
/// crop_fraction = 0.875           # default 0.875; only with resize = "crop"
///
/// [output]
/// kind = "logits"                 # required: "logits" or "probabilities"
/// ```
///
/// | key | required | default | meaning |
/// | --- | --- | --- | --- |
/// | `input.layout` | no | `"NCHW"` | the order of the input tensor's axes: `"NCHW"` (batch, channel, height, width; PyTorch, most ONNX exports) or `"NHWC"` (channels last; TensorFlow/Keras). The channel axis must hold 3 channels. |
/// | `input.size` | when the ONNX input's height or width is not fixed | the ONNX input's fixed height and width | `[height, width]` in pixels, each 1 to 8192. When the ONNX input fixes them, they must agree. |
/// | `input.color` | no | `"RGB"` | the order of the three channels: `"RGB"` or `"BGR"` (Caffe, OpenCV). |
/// | `input.mean` | yes | — | three values, one per channel in the model's channel order (so B, G, R when `color = "BGR"`), on pixel values scaled to 0..1. |
/// | `input.std` | yes | — | three values > 0, like `mean`. A channel's value is `(p / 255 - mean) / std` for a pixel value `p` in 0..255. |
/// | `input.resize` | no | `"crop"` | `"crop"`: scale the image (keeping its aspect ratio) so that it just covers `size / crop_fraction`, then take the centre `size`. `"stretch"`: the whole image to `size` exactly, aspect ratio not kept. Both resize bilinearly. |
/// | `input.crop_fraction` | no | `0.875` | with `resize = "crop"`, the share of the covering image that is kept, in (0, 1]: 0.875 with 224 resizes to 256 then crops 224 (the ImageNet convention); 1 crops the largest centre region of the size's aspect ratio. An error with `resize = "stretch"`. |
/// | `output.kind` | yes | — | `"logits"`: raw scores, turned into probabilities with a softmax. `"probabilities"`: the model ends in a softmax; its outputs are used as they are. |
///
/// Unknown keys and tables are errors. Images are oriented by their EXIF tag, grey images are
/// expanded to three channels and alpha is dropped before any of this.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub input: InputSpec,
    pub output: OutputSpec,
}

/// The `[input]` table: how an image becomes the model's input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub layout: Layout,
    /// `[height, width]`. `None` in a parsed file that leaves it to the model; always `Some` in
    /// the spec of a loaded [`Model`](crate::Model).
    pub size: Option<[u32; 2]>,
    pub color: ColorOrder,
    /// Per channel, in the model's channel order, on pixel values scaled to 0..1.
    pub mean: [f64; 3],
    /// Per channel, in the model's channel order; all > 0.
    pub std: [f64; 3],
    pub resize: Resize,
}

/// The `[output]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    /// Batch, channel, height, width.
    #[serde(rename = "NCHW")]
    Nchw,
    /// Batch, height, width, channel.
    #[serde(rename = "NHWC")]
    Nhwc,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ColorOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// How the image is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resize {
    /// Scale (keeping the aspect ratio) to cover `size / fraction`, then take the centre `size`.
    Crop { fraction: f64 },
    /// The whole image to `size` exactly.
    Stretch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Raw scores; a softmax makes them probabilities.
    Logits,
    /// Already probabilities (the model ends in a softmax); used as they are.
    Probabilities,
}

/// A `model.toml` that cannot be used, naming the file and, where there is one, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    /// The key, as `input.mean`; `None` for a file that cannot be read or is not TOML.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for SpecError {}

impl SpecError {
    pub(crate) fn new(file: &str, key: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            file: file.to_string(),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

/// The file as written: every key optional, so that missing keys are reported by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    input: Option<RawInput>,
    output: Option<RawOutput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    layout: Option<Layout>,
    size: Option<Vec<i64>>,
    color: Option<ColorOrder>,
    mean: Option<Vec<f64>>,
    std: Option<Vec<f64>>,
    resize: Option<ResizeMode>,
    crop_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    kind: Option<OutputKind>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum ResizeMode {
    Crop,
    Stretch,
}

const INPUT_KEYS: [&str; 7] = [
    "layout",
    "size",
    "color",
    "mean",
    "std",
    "resize",
    "crop_fraction",
];
const OUTPUT_KEYS: [&str; 1] = ["kind"];
/// The default `input.crop_fraction`.
pub const DEFAULT_CROP_FRACTION: f64 = 0.875;
/// The largest `input.size` side.
pub const MAX_SIDE: u32 = 8192;

/// The built-in model's `model.toml`.
pub const BUILTIN_MODEL_TOML: &str = include_str!("../model/model.toml");

impl ModelSpec {
    /// The spec of the built-in EfficientNet-Lite0 (its `model/model.toml`).
    pub fn builtin() -> ModelSpec {
        ModelSpec::parse(BUILTIN_MODEL_TOML, "built-in model.toml")
            .expect("the built-in model.toml is valid")
    }

    /// Reads and parses a `model.toml`; errors name `path`.
    pub fn read(path: &Path) -> Result<ModelSpec, SpecError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: file.clone(),
            key: None,
            message: format!("cannot read it: {e}"),
        })?;
        ModelSpec::parse(&text, &file)
    }

    /// Parses the text of a `model.toml`; `file` is the name its errors give.
    pub fn parse(text: &str, file: &str) -> Result<ModelSpec, SpecError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| SpecError {
            file: file.to_string(),
            key: None,
            message: syntax_message(text, &e),
        })?;
        let raw: RawSpec = match table.clone().try_into() {
            Ok(raw) => raw,
            Err(e) => return Err(locate(&table, file, &e)),
        };
        let err = |key: &str, message: String| SpecError::new(file, key, message);
        let input = raw
            .input
            .ok_or_else(|| err("input", "required table is missing".into()))?;
        let output = raw
            .output
            .ok_or_else(|| err("output", "required table is missing".into()))?;
        let three = |key: &str, v: Option<Vec<f64>>| -> Result<[f64; 3], SpecError> {
            let v = v.ok_or_else(|| err(key, "required key is missing".into()))?;
            let got = v.len();
            <[f64; 3]>::try_from(v).map_err(|_| err(key, format!("expected 3 values, got {got}")))
        };
        let mean = three("input.mean", input.mean)?;
        let std = three("input.std", input.std)?;
        if let Some(v) = mean.iter().find(|v| !v.is_finite()) {
            return Err(err("input.mean", format!("{v} is not a finite number")));
        }
        if let Some(v) = std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(err(
                "input.std",
                format!("every value must be > 0, got {v}"),
            ));
        }
        let size = match input.size {
            None => None,
            Some(v) => {
                if v.len() != 2 {
                    return Err(err(
                        "input.size",
                        format!("expected 2 values [height, width], got {}", v.len()),
                    ));
                }
                let side = |x: i64| {
                    u32::try_from(x)
                        .ok()
                        .filter(|s| (1..=MAX_SIDE).contains(s))
                        .ok_or_else(|| {
                            err(
                                "input.size",
                                format!("{x} is not a side of 1 to {MAX_SIDE}"),
                            )
                        })
                };
                Some([side(v[0])?, side(v[1])?])
            }
        };
        let resize = match (
            input.resize.unwrap_or(ResizeMode::Crop),
            input.crop_fraction,
        ) {
            (ResizeMode::Stretch, Some(_)) => {
                return Err(err(
                    "input.crop_fraction",
                    "only used with resize = \"crop\" (this file has resize = \"stretch\")".into(),
                ))
            }
            (ResizeMode::Stretch, None) => Resize::Stretch,
            (ResizeMode::Crop, f) => {
                let fraction = f.unwrap_or(DEFAULT_CROP_FRACTION);
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(err(
                        "input.crop_fraction",
                        format!("must be in (0, 1], got {fraction}"),
                    ));
                }
                Resize::Crop { fraction }
            }
        };
        let kind = output.kind.ok_or_else(|| {
            err(
                "output.kind",
                "required key is missing (\"logits\" or \"probabilities\")".into(),
            )
        })?;
        Ok(ModelSpec {
            input: InputSpec {
                layout: input.layout.unwrap_or(Layout::Nchw),
                size,
                color: input.color.unwrap_or(ColorOrder::Rgb),
                mean,
                std,
                resize,
            },
            output: OutputSpec { kind },
        })
    }
}

impl InputSpec {
    /// The input tensor's shape for `n` images, once the size is known.
    pub fn shape(&self, n: usize) -> Option<[usize; 4]> {
        let [h, w] = self.size?;
        let (h, w) = (h as usize, w as usize);
        Some(match self.layout {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        })
    }

    /// Floats in one image's input tensor, once the size is known.
    pub fn tensor_len(&self) -> Option<usize> {
        self.shape(1).map(|s| s.iter().product())
    }
}

/// A TOML syntax error as `line N: message`.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}

/// Which key a failed deserialisation was about: unknown keys and tables by name, and a value of
/// the wrong type by trying each key of its table on its own.
fn locate(table: &toml::Table, file: &str, whole: &toml::de::Error) -> SpecError {
    for (name, value) in table {
        let keys: &[&str] = match name.as_str() {
            "input" => &INPUT_KEYS,
            "output" => &OUTPUT_KEYS,
            _ => return SpecError::new(file, name, "unknown key (expected [input] and [output])"),
        };
        let Some(section) = value.as_table() else {
            return SpecError::new(file, name, "expected a table");
        };
        for (key, v) in section {
            let path = format!("{name}.{key}");
            if !keys.contains(&key.as_str()) {
                return SpecError::new(
                    file,
                    &path,
                    format!("unknown key (expected one of {})", keys.join(", ")),
                );
            }
            let mut one = toml::Table::new();
            one.insert(key.clone(), v.clone());
            let tried = match name.as_str() {
                "input" => toml::Value::Table(one).try_into::<RawInput>().err(),
                _ => toml::Value::Table(one).try_into::<RawOutput>().err(),
            };
            if let Some(e) = tried {
                return SpecError::new(file, &path, e.message().trim_end().to_string());
            }
        }
    }
    SpecError {
        file: file.to_string(),
        key: None,
        message: whole.message().trim_end().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_spec_is_efficientnet_lite() {
        let s = ModelSpec::builtin();
        assert_eq!(s.input.size, Some([224, 224]));
        assert_eq!(s.input.layout, Layout::Nchw);
        assert_eq!(s.input.color, ColorOrder::Rgb);
        assert_eq!(s.input.resize, Resize::Crop { fraction: 0.875 });
        assert_eq!(s.output.kind, OutputKind::Logits);
        for c in 0..3 {
            assert!((s.input.mean[c] - 127.0 / 255.0).abs() < 1e-15);
            assert!((s.input.std[c] - 128.0 / 255.0).abs() < 1e-15);
        }
    }

    #[test]
    fn defaults_and_integers() {
        let s = ModelSpec::parse(
            "[input]\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n[output]\nkind = \"probabilities\"\n",
            "m.toml",
        )
        .unwrap();
        assert_eq!(s.input.layout, Layout::Nchw);
        assert_eq!(s.input.size, None);
        assert_eq!(s.input.resize, Resize::Crop { fraction: 0.875 });
        assert_eq!(s.input.std, [1.0; 3]);
        assert_eq!(s.output.kind, OutputKind::Probabilities);
    }
}
