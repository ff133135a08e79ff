//! The generic path, for anything the JPEG and PNG paths do not take (WebP, GIF, BMP, TIFF,
//! interlaced PNG, CMYK JPEG): a full decode by the `image` crate under its memory limits.

use super::crop::Geometry;
use super::region::{take_budget, Region};
use crate::budget::DecodeBudget;
use crate::cancel::Cancel;
use crate::imageio::{self, ImageLimits};
use crate::ClassifyError;
use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;

/// A whole decode by the image crate, under its memory limits and the budget.
pub(super) fn decode(
    bytes: &[u8],
    format: ImageFormat,
    limits: &ImageLimits,
    budget: &DecodeBudget,
    cancel: &Cancel,
) -> Result<(DynamicImage, Orientation), ClassifyError> {
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
    let _permit = take_budget(budget, total.saturating_add(converted), w, h, cancel)?;
    let orientation = decoder.orientation().map_err(corrupt)?;
    let img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok((img, orientation))
}

/// The decoded image as a region: 8-bit grey, RGB and RGBA as they are, anything else converted
/// to RGB.
pub(super) fn region(
    img: DynamicImage,
    orientation: Orientation,
    geometry: &Geometry,
) -> Region<'static> {
    let (w, h) = (img.width(), img.height());
    let (pixels, channels) = match img {
        DynamicImage::ImageRgb8(b) => (b.into_raw(), 3),
        DynamicImage::ImageLuma8(b) => (b.into_raw(), 1),
        DynamicImage::ImageRgba8(b) => (b.into_raw(), 4),
        other => (other.to_rgb8().into_raw(), 3),
    };
    Region::whole(pixels, w, h, channels, orientation, None, geometry)
}
