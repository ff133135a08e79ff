//! The model's pre-processing, from image bytes to the input tensor, at a cost that does not grow
//! with the image's shape.
//!
//! What the model sees is what its [`InputSpec`] says: for the built-in model, the centre 224×224
//! of the image resized so that its shorter side is 256 (bilinear), the reference pipeline of
//! `model/NOTICE.md`; for any model, its size (any height × width), resized by centre crop or
//! stretch, in NCHW or NHWC, RGB or BGR, with its mean and std. Only the crop box of the source
//! is ever resized: it is worked out in source pixels first, mapped through the EXIF orientation
//! (`crop.rs`), and handed to a SIMD convolution resizer (`fast_image_resize`, the same
//! Pillow-style bilinear kernel, which also reads the pixels just outside the box as Pillow
//! does); the result is oriented and normalised while it is written into the tensor
//! (`tensor.rs`). A 12000×1 image therefore costs what a photo costs.
//!
//! The two stages meet at a `Region` (`region.rs`): a decoder path produces the pixels around the
//! crop box and the box in them, and the tensor stage resizes and writes them. The decoder paths:
//! - JPEG (`jpeg.rs`): libjpeg-turbo, a large one at 1/2–1/8 scale in the DCT domain (the scale
//!   chosen from the size the spec needs), after its markers are checked.
//! - PNG, not interlaced (`png.rs`): row by row, keeping only the rows and columns around the
//!   crop box, box-averaged on the fly when it is large.
//! - Anything else (WebP, GIF, BMP, TIFF, interlaced PNG, CMYK JPEG; `generic.rs`): a full decode
//!   by the `image` crate under its memory limits.
//!
//! Every decode first takes what it will allocate from the process-wide [`MemoryBudget`]
//! (waiting while it is spent); an image needing more than the whole budget is refused as too
//! large. The [`Cancel`] is checked between stages and every few rows.

mod crop;
mod generic;
mod jpeg;
mod png;
mod region;
mod tensor;

pub use crop::crop_box;
pub use tensor::TENSOR_LEN;

use crate::spec::{InputSpec, ModelSpec, SpecError};
use crop::Geometry;

use crate::budget::MemoryBudget;
use crate::cancel::Cancel;
use crate::imageio::{self, ImageCheckError, ImageLimits, ProbedImage};
use crate::ClassifyError;
use image::ImageFormat;
use region::Region;
use std::time::{Duration, Instant};
use tensor::{Format, TensorWriter};

/// How an image went through the pre-processing, for timings and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prepared {
    /// Width and height of the image as its header declares them.
    pub width: u32,
    pub height: u32,
    /// Size of the buffer the decoder produced (after DCT scaling or row reduction).
    pub decoded: (u32, u32),
    pub decoder: DecoderKind,
    /// Decoding (with the checks).
    pub decode: Duration,
    /// Resizing, cropping and normalising into the tensor.
    pub resize: Duration,
}

/// Which decoder path was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// libjpeg-turbo with DCT scaling (1/2 to 1/8).
    JpegScaled,
    /// libjpeg-turbo, full size.
    JpegFull,
    /// PNG row by row, kept around the centre square.
    PngRows,
    /// The `image` crate, whole image.
    Full,
}

/// Scratch buffers and the resizer, reused from image to image by one thread; made for one
/// model's input.
pub struct Preprocessor {
    geometry: Geometry,
    tensor: TensorWriter,
}

impl Default for Preprocessor {
    fn default() -> Self {
        Preprocessor::new()
    }
}

impl Preprocessor {
    /// For the built-in model: 224×224, NCHW, RGB, `(pixel - 127) / 128`.
    pub fn new() -> Preprocessor {
        Preprocessor::for_input(&ModelSpec::builtin().input).expect("the built-in spec has a size")
    }

    /// For a model whose input `input` describes; its size must be known (`input.size` set, as
    /// it always is in the spec of a loaded [`Model`](crate::Model)).
    pub fn for_input(input: &InputSpec) -> Result<Preprocessor, SpecError> {
        let [height, width] = input.size.ok_or_else(|| SpecError {
            file: "model.toml".into(),
            key: Some("input.size".into()),
            message: "the input size is not known".into(),
        })?;
        Ok(Preprocessor {
            geometry: Geometry {
                width,
                height,
                resize: input.resize,
            },
            tensor: TensorWriter::new(Format::new(input, height, width)),
        })
    }

    /// Floats in one image's input tensor.
    pub fn tensor_len(&self) -> usize {
        self.tensor.format.len()
    }

    /// Decodes `bytes` and writes the model's input for it into `out` ([`tensor_len`] floats,
    /// in the spec's layout, channel order and normalisation).
    ///
    /// [`tensor_len`]: Self::tensor_len
    pub fn prepare(
        &mut self,
        bytes: &[u8],
        limits: &ImageLimits,
        budget: &MemoryBudget,
        cancel: &Cancel,
        out: &mut [f32],
    ) -> Result<Prepared, ClassifyError> {
        assert_eq!(
            out.len(),
            self.tensor_len(),
            "the output is one image's tensor"
        );
        let t0 = Instant::now();
        let probed = imageio::probe(bytes, limits)?;
        cancel.check()?;
        let (region, decoder, t1) =
            decode(bytes, probed.format, &self.geometry, limits, budget, cancel)?;
        let decoded = (region.width, region.height);
        self.tensor.write(&region, out)?;
        Ok(Prepared {
            width: probed.width,
            height: probed.height,
            decoded,
            decoder,
            decode: t1 - t0,
            resize: t1.elapsed(),
        })
    }
}

/// Whether the decode of an image that passed the upload check can ever fit the process's
/// decode budget ([`MemoryBudget::global`]): a 100 MP GIF or CMYK JPEG, which are decoded whole,
/// cannot, and is refused at upload (`image_too_large`) rather than accepted as a job that is
/// sure to fail. The decoder path the worker would take reads the headers and stops where it
/// would take its share, before any pixel; images too small to come near the budget (at most 32
/// bytes a pixel on any path) are not looked at.
pub fn admits(
    bytes: &[u8],
    probed: &ProbedImage,
    limits: &ImageLimits,
) -> Result<(), ImageCheckError> {
    let capacity = MemoryBudget::global().capacity();
    if u64::from(probed.width) * u64::from(probed.height) * 32 <= capacity {
        return Ok(());
    }
    // A budget of its own (nothing is taken from the process's), and a cancel that has fired:
    // a path whose share fits stops at once, as canceled.
    let budget = MemoryBudget::new(capacity);
    let (cancel, handle) = Cancel::never().with_flag();
    handle.cancel();
    let geometry = Preprocessor::new().geometry;
    let outcome = match decode(bytes, probed.format, &geometry, limits, &budget, &cancel) {
        Err(ClassifyError::Image(e @ ImageCheckError::TooMuchMemory { .. })) => Err(e),
        // Fits; anything else the worker finds and reports as it would have.
        _ => Ok(()),
    };
    outcome
}

/// The pixels of the region the model needs, by the first decoder path that takes the image,
/// with that path and the time decoding ended (checked for cancellation right after).
fn decode<'b>(
    bytes: &[u8],
    format: ImageFormat,
    geometry: &Geometry,
    limits: &ImageLimits,
    budget: &'b MemoryBudget,
    cancel: &Cancel,
) -> Result<(Region<'b>, DecoderKind, Instant), ClassifyError> {
    let ended = || -> Result<Instant, ClassifyError> {
        let t1 = Instant::now();
        cancel.check()?;
        Ok(t1)
    };
    if format == ImageFormat::Jpeg {
        if let Some((region, scale)) = jpeg::decode(bytes, geometry, budget, cancel)? {
            let kind = if scale > 1 {
                DecoderKind::JpegScaled
            } else {
                DecoderKind::JpegFull
            };
            return Ok((region, kind, ended()?));
        }
    }
    if format == ImageFormat::Png {
        if let Some(region) = png::decode(bytes, geometry, budget, cancel)? {
            return Ok((region, DecoderKind::PngRows, ended()?));
        }
    }
    // Everything else: a whole decode by the image crate; the conversion to a region (RGB for
    // formats other than 8-bit grey, RGB or RGBA) counts as resizing, after the cancel check.
    let (img, orientation, permit) = generic::decode(bytes, format, limits, budget, cancel)?;
    let t1 = ended()?;
    Ok((
        generic::region(img, orientation, permit, geometry),
        DecoderKind::Full,
        t1,
    ))
}
