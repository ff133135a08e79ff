//! JPEG: the markers are walked first (a header that declares more blocks than the scan data can
//! hold is refused as corrupt); then libjpeg-turbo (the MozJPEG fork, built from source by the
//! `mozjpeg` crate) decodes it, a large one at 1/2–1/8 scale in the DCT domain keeping the sides the
//! resize needs at ≥ 5/4 of their size after it (for the built-in model, the shorter side ≥ 320), so that the bilinear resize still does the last reduction. Measured
//! against jpeg-decoder's scaled decode and zune-jpeg (full size only), it was the fastest; see
//! bench/README.md.

use super::crop::{plan, Geometry};
use super::region::{take_budget, Region};
use crate::budget::MemoryBudget;
use crate::cancel::Cancel;
use crate::imageio::{self, ImageCheckError};
use crate::ClassifyError;

/// Checks the JPEG's markers and decodes it to RGB, returning the pixels with the DCT scale
/// denominator they were decoded at (1 = full size). `None` when this JPEG needs the generic
/// path (CMYK, 16-bit).
pub(super) fn decode<'b>(
    bytes: &[u8],
    geometry: &Geometry,
    budget: &'b MemoryBudget,
    cancel: &Cancel,
) -> Result<Option<(Region<'b>, u32)>, ClassifyError> {
    let layout = imageio::jpeg_layout(bytes)?;
    layout.check_data_covers_frame()?;
    let orientation = layout.orientation(bytes);
    let (w, h) = (u32::from(layout.width), u32::from(layout.height));
    let corrupt = |e: String| ClassifyError::Image(ImageCheckError::Corrupt(e));
    if !matches!(layout.components, 1 | 3) {
        return Ok(None);
    }
    // DCT-domain scaling: the smallest of 1/1, 1/2, 1/4, 1/8 that keeps each bounding side at
    // least 5/4 of what the resize brings it to (for the built-in model the shorter side, to
    // 256: at least 320), so that the bilinear resize still does the last reduction.
    // Scaling down to 256 itself, as Pillow's draft mode may, is sharper than the
    // reference's bilinear reduction and flipped close top-1 calls in the agreement test;
    // keeping twice 256 agreed no better than 5/4 and cost a 12 MP photo a 1/4 decode
    // instead of 1/8 (about a fifth more CPU; see bench/README.md).
    let full = plan(w, h, orientation, geometry).full;
    let keeps = |side: u32, bound: f64, d: u32| 4.0 * f64::from(side / d) >= 5.0 * bound;
    let mut scale = 1u32;
    while scale < 8 && keeps(w, full.0, scale * 2) && keeps(h, full.1, scale * 2) {
        scale *= 2;
    }
    let permit = take_budget(budget, layout.decode_bytes(scale), w, h, cancel)?;
    let (pixels, dw, dh) = decode_mozjpeg(bytes, scale).map_err(corrupt)?;
    let region = Region::whole(pixels, dw, dh, 3, orientation, Some(permit), geometry);
    Ok(Some((region, scale)))
}

/// libjpeg-turbo (MozJPEG) at 1/`scale` in the DCT domain, to RGB. Its errors unwind out of the
/// C code as panics (the crate's design), caught here; so do the warnings that mean the scan
/// data does not cover the frame (see [`crate::jpeg_errors`]), which libjpeg would otherwise
/// paper over with grey.
fn decode_mozjpeg(bytes: &[u8], scale: u32) -> Result<(Vec<u8>, u32, u32), String> {
    let run = || -> std::io::Result<(Vec<u8>, u32, u32)> {
        let mut d = mozjpeg::decompress::DecompressBuilder::new()
            .with_err(crate::jpeg_errors::manager())
            .from_mem(bytes)?;
        d.scale(u8::try_from(8 / scale.clamp(1, 8)).unwrap_or(8));
        let mut started = d.rgb()?;
        let (w, h) = (started.width(), started.height());
        let pixels: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        if pixels.len() != w * h * 3 {
            return Err(std::io::Error::other(
                "the JPEG decoded to an unexpected size",
            ));
        }
        Ok((pixels, w as u32, h as u32))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg failed".into())),
    }
}
