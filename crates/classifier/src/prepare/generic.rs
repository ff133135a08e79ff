//! The generic path, for anything the JPEG and PNG paths do not take (WebP, GIF, BMP, TIFF,
//! interlaced PNG, CMYK JPEG): a full decode by the `image` crate under its memory limits, or,
//! for 8-bit grey, RGB and RGBA TIFF, by the `tiff` crate straight into the pixel buffer.
//!
//! What a decode takes from the budget is what it really holds at its peak: the pixels, the
//! decoder's own whole-image buffers besides them (the `image` crate's TIFF decoder decodes into
//! a buffer of its own and copies it out; a GIF frame smaller than the canvas, a WebP's planes
//! and a CMYK JPEG's components are decoded apart first), and an RGB copy when the pixels are
//! converted. The share is held until the tensor is written (the region holds it), so that a
//! decode still running after its attempt was given up keeps its share until it ends.

use super::crop::Geometry;
use super::region::{take_budget, Region};
use crate::budget::{BudgetPermit, MemoryBudget};
use crate::cancel::Cancel;
use crate::imageio::{self, ImageCheckError, ImageLimits};
use crate::ClassifyError;
use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;

/// A whole decode, under the image's limits and the budget; the budget's share comes with the
/// image and must be kept as long as its pixels (see [`region`]).
pub(super) fn decode<'b>(
    bytes: &[u8],
    format: ImageFormat,
    limits: &ImageLimits,
    budget: &'b MemoryBudget,
    cancel: &Cancel,
) -> Result<(DynamicImage, Orientation, BudgetPermit<'b>), ClassifyError> {
    if format == ImageFormat::Tiff {
        if let Some(decoded) = tiff_direct(bytes, limits, budget, cancel)? {
            return Ok(decoded);
        }
    }
    use image::ImageDecoder;
    let corrupt = |e: image::ImageError| ClassifyError::Image(imageio::decode_error(e));
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(imageio::decoder_limits(limits, budget.capacity()));
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    let total = decoder.total_bytes();
    // A format other than 8-bit grey, RGB or RGBA is converted to RGB after decoding.
    let converted = match decoder.color_type() {
        image::ColorType::L8 | image::ColorType::Rgb8 | image::ColorType::Rgba8 => 0,
        _ => u64::from(w) * u64::from(h) * 3,
    };
    let need = total
        .saturating_add(decoder_own(format, decoder.original_color_type(), total))
        .saturating_add(converted);
    let permit = take_budget(budget, need, w, h, cancel)?;
    let orientation = decoder.orientation().map_err(corrupt)?;
    let img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok((img, orientation, permit))
}

/// What the `image` crate's decoder of `format` (whose data is `original`) holds besides the
/// `total` bytes of pixels it hands over, at most.
fn decoder_own(format: ImageFormat, original: image::ExtendedColorType, total: u64) -> u64 {
    use image::ExtendedColorType::{Cmyk16, Cmyk8};
    match format {
        // Decoded row by row into the output.
        ImageFormat::Bmp | ImageFormat::Png => 0,
        // The whole image in the decoder's own buffer (CMYK: 4 samples for 3), copied out.
        ImageFormat::Tiff if matches!(original, Cmyk8 | Cmyk16) => {
            total.saturating_add(total.div_ceil(3))
        }
        ImageFormat::Tiff => total,
        // A CMYK JPEG's component planes and, when progressive, its coefficients (2 bytes each).
        ImageFormat::Jpeg => total.saturating_mul(3),
        // A frame smaller than the canvas (GIF), the luma/chroma and alpha planes (WebP), and
        // anything else: a second image's worth.
        _ => total,
    }
}

/// An 8-bit grey, RGB or RGBA TIFF with its samples interleaved, decoded by the `tiff` crate
/// into the one buffer that becomes the image (no copy); `None` for any other TIFF.
fn tiff_direct<'b>(
    bytes: &[u8],
    limits: &ImageLimits,
    budget: &'b MemoryBudget,
    cancel: &Cancel,
) -> Result<Option<(DynamicImage, Orientation, BudgetPermit<'b>)>, ClassifyError> {
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    use tiff::tags::Tag;
    use tiff::ColorType;
    let corrupt =
        |e: tiff::TiffError| ClassifyError::Image(ImageCheckError::Corrupt(format!("TIFF: {e}")));
    let mut decoder = Decoder::new(Cursor::new(bytes)).map_err(corrupt)?;
    let (w, h) = decoder.dimensions().map_err(corrupt)?;
    if w > limits.max_side || h > limits.max_side {
        return Ok(None);
    }
    let channels: u64 = match decoder.colortype().map_err(corrupt)? {
        ColorType::Gray(8) => 1,
        ColorType::RGB(8) => 3,
        ColorType::RGBA(8) => 4,
        _ => return Ok(None),
    };
    let planar = decoder
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .map_err(corrupt)?;
    if planar.is_some_and(|p| p != 1) {
        return Ok(None);
    }
    let total = u64::from(w) * u64::from(h) * channels;
    // A strip or tile is read whole before it is decompressed: at most the file's size.
    let need = total.saturating_add(bytes.len() as u64);
    let permit = take_budget(budget, need, w, h, cancel)?;
    let mut tiff_limits = Limits::default();
    tiff_limits.decoding_buffer_size = usize::try_from(total).unwrap_or(usize::MAX);
    tiff_limits.intermediate_buffer_size = bytes.len().max(1 << 20);
    tiff_limits.ifd_value_size = 1 << 20;
    let mut decoder = decoder.with_limits(tiff_limits);
    let orientation = decoder
        .find_tag_unsigned::<u8>(Tag::Orientation)
        .ok()
        .flatten()
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms);
    let mut pixels = DecodingResult::U8(Vec::new());
    let layout = decoder.read_image_to_buffer(&mut pixels).map_err(corrupt)?;
    let mismatch = || {
        ClassifyError::Image(ImageCheckError::Corrupt(
            "TIFF: the decoded data does not match the image's size".into(),
        ))
    };
    let DecodingResult::U8(pixels) = pixels else {
        return Err(mismatch());
    };
    if layout.planes != 1 || pixels.len() as u64 != total {
        return Err(mismatch());
    }
    let img = match channels {
        1 => image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        3 => image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
        _ => image::RgbaImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgba8),
    }
    .ok_or_else(mismatch)?;
    Ok(Some((img, orientation, permit)))
}

/// The decoded image as a region, holding the budget's share of the decode: 8-bit grey, RGB
/// and RGBA as they are, anything else converted to RGB.
pub(super) fn region<'b>(
    img: DynamicImage,
    orientation: Orientation,
    permit: BudgetPermit<'b>,
    geometry: &Geometry,
) -> Region<'b> {
    let (w, h) = (img.width(), img.height());
    let (pixels, channels) = match img {
        DynamicImage::ImageRgb8(b) => (b.into_raw(), 3),
        DynamicImage::ImageLuma8(b) => (b.into_raw(), 1),
        DynamicImage::ImageRgba8(b) => (b.into_raw(), 4),
        other => (other.to_rgb8().into_raw(), 3),
    };
    Region::whole(pixels, w, h, channels, orientation, Some(permit), geometry)
}
