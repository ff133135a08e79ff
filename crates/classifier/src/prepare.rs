//! The model's pre-processing, from image bytes to the input tensor, at a cost that does not grow
//! with the image's shape.
//!
//! What the model sees is the centre 224×224 of the image resized so that its shorter side is 256
//! (bilinear), the reference pipeline of `model/NOTICE.md`. Only that centre square of the source
//! is ever resized: the crop box is worked out in source pixels first, mapped through the EXIF
//! orientation, and handed to a SIMD convolution resizer (`fast_image_resize`, the same
//! Pillow-style bilinear kernel, which also reads the pixels just outside the box as Pillow does);
//! the 224×224 result is oriented and normalised while it is written into the tensor. A 12000×1
//! image therefore costs what a photo costs.
//!
//! Decoding:
//! - JPEG: the markers are walked first (a header that declares more blocks than the scan data
//!   can hold is refused as corrupt); then libjpeg-turbo (the MozJPEG fork, built from source
//!   by the `mozjpeg` crate) decodes it, a large one at 1/2–1/8 scale in the DCT domain keeping
//!   the shorter side ≥ 320 (5/4 of 256), so that the bilinear resize still does the last
//!   reduction. Measured against jpeg-decoder's scaled decode and zune-jpeg (full size only), it was
//!   the fastest; see bench/README.md.
//! - PNG (not interlaced): decoded row by row; only the rows and columns around the centre square
//!   are kept, box-averaged on the fly by an integer factor when the square is large (as Pillow's
//!   `reducing_gap`), so memory stays at a few rows plus a small buffer. A PNG whose data ends
//!   before its last row is corrupt.
//! - Anything else (WebP, GIF, BMP, TIFF, interlaced PNG, CMYK JPEG): a full decode by the
//!   `image` crate under its memory limits.
//!
//! Every decode first takes what it will allocate from the process-wide [`DecodeBudget`]
//! (waiting while it is spent); an image needing more than the whole budget is refused as too
//! large. The [`Cancel`] is checked between stages and every few rows.

use crate::budget::DecodeBudget;
use crate::cancel::Cancel;
use crate::imageio::{self, ImageCheckError, ImageLimits, INPUT_SIDE, RESIZE_SHORT_SIDE};
use crate::ClassifyError;
use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;
use std::time::{Duration, Instant};

const SIDE: usize = INPUT_SIDE as usize;
/// Floats in one image's input tensor.
pub const TENSOR_LEN: usize = 3 * SIDE * SIDE;

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

/// What a decoder path produced: the decoded size, the path, when decoding ended.
struct Decoded {
    size: (u32, u32),
    kind: DecoderKind,
    at: Instant,
}

/// Scratch buffers and the resizer, reused from image to image by one thread.
pub struct Preprocessor {
    resizer: fr::Resizer,
    /// The resized centre square, 224×224 pixels of 1, 3 or 4 bytes.
    square: Vec<u8>,
    lut: [f32; 256],
}

impl Default for Preprocessor {
    fn default() -> Self {
        Preprocessor::new()
    }
}

/// A decoded source: pixels (1, 3 or 4 bytes each, RGB order) and where they sit in the image.
struct Source<'a> {
    pixels: &'a [u8],
    width: u32,
    height: u32,
    channels: usize,
    /// The crop box (left, top, width, height) in this buffer's pixels, before orientation.
    crop: (f64, f64, f64, f64),
}

impl Preprocessor {
    pub fn new() -> Preprocessor {
        let mut lut = [0f32; 256];
        for (i, v) in lut.iter_mut().enumerate() {
            *v = (i as f32 - 127.0) / 128.0;
        }
        Preprocessor {
            resizer: fr::Resizer::new(),
            square: Vec::new(),
            lut,
        }
    }

    /// Decodes `bytes` and writes the model's input for it into `out` (`3 * 224 * 224` floats,
    /// CHW, `(pixel - 127) / 128`).
    pub fn prepare(
        &mut self,
        bytes: &[u8],
        limits: &ImageLimits,
        budget: &DecodeBudget,
        cancel: &Cancel,
        out: &mut [f32],
    ) -> Result<Prepared, ClassifyError> {
        assert_eq!(out.len(), TENSOR_LEN, "the output is one image's tensor");
        let t0 = Instant::now();
        let probed = imageio::probe(bytes, limits)?;
        cancel.check()?;
        let (width, height) = (probed.width, probed.height);
        let report = |decoded: (u32, u32), decoder, t1: Instant| Prepared {
            width,
            height,
            decoded,
            decoder,
            decode: t1 - t0,
            resize: t1.elapsed(),
        };

        if probed.format == ImageFormat::Jpeg {
            let layout = imageio::jpeg_layout(bytes)?;
            layout.check_data_covers_frame()?;
            let orientation = layout.orientation(bytes);
            if let Some(d) = self.prepare_jpeg(bytes, &layout, orientation, budget, cancel, out)? {
                return Ok(report(d.size, d.kind, d.at));
            }
        }
        if probed.format == ImageFormat::Png {
            if let Some(d) = self.prepare_png(bytes, budget, cancel, out)? {
                return Ok(report(d.size, d.kind, d.at));
            }
        }
        // Everything else: a whole decode by the image crate.
        let img = decode_full(bytes, probed.format, limits, budget, cancel)?;
        let t1 = Instant::now();
        cancel.check()?;
        let decoded = (img.0.width(), img.0.height());
        self.resize_dynamic(&img.0, img.1, out)?;
        Ok(report(decoded, DecoderKind::Full, t1))
    }

    /// `None` when this JPEG needs the generic path (CMYK, 16-bit).
    fn prepare_jpeg(
        &mut self,
        bytes: &[u8],
        layout: &imageio::JpegLayout,
        orientation: Orientation,
        budget: &DecodeBudget,
        cancel: &Cancel,
        out: &mut [f32],
    ) -> Result<Option<Decoded>, ClassifyError> {
        let (w, h) = (u32::from(layout.width), u32::from(layout.height));
        let corrupt = |e: String| ClassifyError::Image(ImageCheckError::Corrupt(e));
        if !matches!(layout.components, 1 | 3) {
            return Ok(None);
        }
        let min = w.min(h);
        // DCT-domain scaling: the smallest of 1/1, 1/2, 1/4, 1/8 that keeps the shorter side at
        // least 5/4 of 256 (320), so that the bilinear resize still does the last reduction.
        // Scaling down to 256 itself, as Pillow's draft mode may, is sharper than the
        // reference's bilinear reduction and flipped close top-1 calls in the agreement test;
        // keeping twice 256 agreed no better than 5/4 and cost a 12 MP photo a 1/4 decode
        // instead of 1/8 (about a fifth more CPU; see bench/README.md).
        let mut scale = 1u32;
        while scale < 8 && 4 * (min / (scale * 2)) >= 5 * RESIZE_SHORT_SIDE {
            scale *= 2;
        }
        let _permit = take_budget(budget, layout.decode_bytes(scale), w, h, cancel)?;
        let (pixels, dw, dh) = decode_mozjpeg(bytes, scale).map_err(corrupt)?;
        let t1 = Instant::now();
        cancel.check()?;
        self.resize_pixels(&pixels, dw, dh, 3, orientation, out)?;
        Ok(Some(Decoded {
            size: (dw, dh),
            kind: if scale > 1 {
                DecoderKind::JpegScaled
            } else {
                DecoderKind::JpegFull
            },
            at: t1,
        }))
    }

    /// `None` for interlaced PNGs (their rows come in seven passes; they take the generic path).
    fn prepare_png(
        &mut self,
        bytes: &[u8],
        budget: &DecodeBudget,
        cancel: &Cancel,
        out: &mut [f32],
    ) -> Result<Option<Decoded>, ClassifyError> {
        let corrupt = |e: png::DecodingError| {
            ClassifyError::Image(ImageCheckError::Corrupt(format!("PNG: {e}")))
        };
        let mut decoder =
            png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: 64 << 20 });
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        decoder.set_ignore_text_chunk(true);
        let mut reader = decoder.read_info().map_err(corrupt)?;
        let info = reader.info();
        if info.interlaced {
            return Ok(None);
        }
        let (w, h) = (info.width, info.height);
        let orientation = info
            .exif_metadata
            .as_deref()
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms);
        let in_channels = match reader.output_color_type().0 {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Ok(None),
        };
        let plan = RowPlan::new(w, h, orientation, in_channels);
        let row_bytes = reader.output_line_size(w).unwrap_or(usize::MAX);
        // One raw row, one unfiltered row, the reduced window, the accumulators.
        let need = 3 * row_bytes as u64 + plan.buffer_bytes();
        let _permit = take_budget(budget, need, w, h, cancel)?;
        let mut sink = RowSink::new(&plan);
        let mut y = 0u32;
        while let Some(row) = reader.next_row().map_err(corrupt)? {
            if y >= h {
                break;
            }
            sink.push(y, row.data());
            y += 1;
            if y.is_multiple_of(64) {
                cancel.check()?;
            }
        }
        if y < h {
            return Err(ClassifyError::Image(ImageCheckError::Corrupt(format!(
                "the PNG header declares {h} rows but its data holds {y}"
            ))));
        }
        let t1 = Instant::now();
        cancel.check()?;
        let (pixels, rw, rh) = sink.finish();
        let source = Source {
            pixels: &pixels,
            width: rw,
            height: rh,
            channels: 3,
            crop: plan.crop_in_reduced(),
        };
        self.resize_into(&source, orientation, out)?;
        Ok(Some(Decoded {
            size: (rw, rh),
            kind: DecoderKind::PngRows,
            at: t1,
        }))
    }

    fn resize_dynamic(
        &mut self,
        img: &DynamicImage,
        orientation: Orientation,
        out: &mut [f32],
    ) -> Result<(), ClassifyError> {
        let (w, h) = (img.width(), img.height());
        match img {
            DynamicImage::ImageRgb8(b) => self.resize_pixels(b.as_raw(), w, h, 3, orientation, out),
            DynamicImage::ImageLuma8(b) => {
                self.resize_pixels(b.as_raw(), w, h, 1, orientation, out)
            }
            DynamicImage::ImageRgba8(b) => {
                self.resize_pixels(b.as_raw(), w, h, 4, orientation, out)
            }
            other => {
                let rgb = other.to_rgb8();
                self.resize_pixels(rgb.as_raw(), w, h, 3, orientation, out)
            }
        }
    }

    fn resize_pixels(
        &mut self,
        pixels: &[u8],
        w: u32,
        h: u32,
        channels: usize,
        orientation: Orientation,
        out: &mut [f32],
    ) -> Result<(), ClassifyError> {
        let source = Source {
            pixels,
            width: w,
            height: h,
            channels,
            crop: crop_box(w, h, orientation),
        };
        self.resize_into(&source, orientation, out)
    }

    /// Resizes the source's crop box to 224×224, then orients and normalises it into `out`.
    fn resize_into(
        &mut self,
        src: &Source<'_>,
        orientation: Orientation,
        out: &mut [f32],
    ) -> Result<(), ClassifyError> {
        let pixel_type = match src.channels {
            1 => fr::PixelType::U8,
            3 => fr::PixelType::U8x3,
            4 => fr::PixelType::U8x4,
            _ => unreachable!("sources have 1, 3 or 4 channels"),
        };
        let failed = |e: String| ClassifyError::Model(format!("resizing failed: {e}"));
        let view = fr::images::ImageRef::new(src.width, src.height, src.pixels, pixel_type)
            .map_err(|e| failed(e.to_string()))?;
        self.square.resize(SIDE * SIDE * src.channels, 0);
        let mut dst =
            fr::images::Image::from_slice_u8(INPUT_SIDE, INPUT_SIDE, &mut self.square, pixel_type)
                .map_err(|e| failed(e.to_string()))?;
        let (l, t, cw, ch) = src.crop;
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
            .use_alpha(false)
            .crop(l, t, cw, ch);
        self.resizer
            .resize(&view, &mut dst, &options)
            .map_err(|e| failed(e.to_string()))?;
        write_tensor(&self.square, src.channels, orientation, &self.lut, out);
        Ok(())
    }
}

fn take_budget<'b>(
    budget: &'b DecodeBudget,
    need: u64,
    w: u32,
    h: u32,
    cancel: &Cancel,
) -> Result<crate::budget::BudgetPermit<'b>, ClassifyError> {
    if need > budget.capacity() {
        return Err(ClassifyError::Image(ImageCheckError::TooMuchMemory {
            width: w,
            height: h,
            needed: need,
            limit: budget.capacity(),
        }));
    }
    Ok(budget.acquire(need, cancel)?)
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

/// A whole decode by the image crate, under its memory limits and the budget.
fn decode_full(
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

/// Rounds half to even, as Python's `round` (the reference pipeline's).
fn round_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The reference crop in source pixels (before orientation) of a `w`×`h` source: the centre
/// 224×224 of the oriented image resized to a shorter side of 256, as (left, top, width, height).
pub fn crop_box(w: u32, h: u32, o: Orientation) -> (f64, f64, f64, f64) {
    let (ow, oh) = if swaps_axes(o) { (h, w) } else { (w, h) };
    let (owf, ohf) = (f64::from(ow), f64::from(oh));
    let s = f64::from(RESIZE_SHORT_SIDE) / owf.min(ohf);
    let side = f64::from(INPUT_SIDE);
    let nw = round_even(owf * s).max(side);
    let nh = round_even(ohf * s).max(side);
    let left = ((nw - side) / 2.0).floor();
    let top = ((nh - side) / 2.0).floor();
    let (sx, sy) = (owf / nw, ohf / nh);
    let (x0, y0, x1, y1) = (left * sx, top * sy, (left + side) * sx, (top + side) * sy);
    // Both corners back through the orientation.
    let (a, b) = (unorient(x0, y0, w, h, o), unorient(x1, y1, w, h, o));
    let (l, t) = (a.0.min(b.0), a.1.min(b.1));
    (l, t, (a.0 - b.0).abs(), (a.1 - b.1).abs())
}

/// A point of the oriented image (continuous coordinates) in the source of size `w`×`h`.
fn unorient(x: f64, y: f64, w: u32, h: u32, o: Orientation) -> (f64, f64) {
    let (w, h) = (f64::from(w), f64::from(h));
    match o {
        Orientation::NoTransforms => (x, y),
        Orientation::FlipHorizontal => (w - x, y),
        Orientation::FlipVertical => (x, h - y),
        Orientation::Rotate180 => (w - x, h - y),
        Orientation::Rotate90 => (y, h - x),
        Orientation::Rotate270 => (w - y, x),
        Orientation::Rotate90FlipH => (y, x),
        Orientation::Rotate270FlipH => (w - y, h - x),
    }
}

/// Writes the resized square into the tensor, oriented, as CHW `(p - 127) / 128`.
fn write_tensor(square: &[u8], channels: usize, o: Orientation, lut: &[f32; 256], out: &mut [f32]) {
    let n = SIDE;
    let plane = n * n;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    let last = n - 1;
    for y in 0..n {
        for x in 0..n {
            // The source pixel shown at (x, y) of the oriented square.
            let (sx, sy) = match o {
                Orientation::NoTransforms => (x, y),
                Orientation::FlipHorizontal => (last - x, y),
                Orientation::FlipVertical => (x, last - y),
                Orientation::Rotate180 => (last - x, last - y),
                Orientation::Rotate90 => (y, last - x),
                Orientation::Rotate270 => (last - y, x),
                Orientation::Rotate90FlipH => (y, x),
                Orientation::Rotate270FlipH => (last - y, last - x),
            };
            let p = (sy * n + sx) * channels;
            let (r, g, b) = if channels == 1 {
                (square[p], square[p], square[p])
            } else {
                (square[p], square[p + 1], square[p + 2])
            };
            let i = y * n + x;
            r_out[i] = lut[usize::from(r)];
            g_out[i] = lut[usize::from(g)];
            b_out[i] = lut[usize::from(b)];
        }
    }
}

/// Which rows and columns of a row-by-row source are kept, and by what factor they are
/// box-averaged, so that only the neighbourhood of the centre square is held in memory.
struct RowPlan {
    in_channels: usize,
    /// Kept window in source pixels: [x0, x1) × [y0, y1).
    x0: u32,
    x1: u32,
    y0: u32,
    y1: u32,
    /// Box-average factor (1 = none).
    k: u32,
    crop: (f64, f64, f64, f64),
}

impl RowPlan {
    fn new(w: u32, h: u32, o: Orientation, in_channels: usize) -> RowPlan {
        let crop = crop_box(w, h, o);
        let (l, t, cw, ch) = crop;
        // Source pixels per output pixel; the bilinear kernel reaches that far on each side.
        let scale = cw.max(ch) / f64::from(INPUT_SIDE);
        // Box-average first while the result stays at least twice the output (Pillow's
        // reducing_gap = 2).
        let k = ((scale / 2.0).floor() as u32).max(1);
        let margin = scale.max(1.0) + 2.0 + f64::from(k);
        let clamp = |v: f64, hi: u32| v.max(0.0).min(f64::from(hi)) as u32;
        RowPlan {
            in_channels,
            x0: clamp((l - margin).floor(), w),
            x1: clamp((l + cw + margin).ceil(), w),
            y0: clamp((t - margin).floor(), h),
            y1: clamp((t + ch + margin).ceil(), h),
            k,
            crop,
        }
    }

    fn reduced_size(&self) -> (u32, u32) {
        (
            (self.x1 - self.x0).div_ceil(self.k).max(1),
            (self.y1 - self.y0).div_ceil(self.k).max(1),
        )
    }

    fn buffer_bytes(&self) -> u64 {
        let (rw, rh) = self.reduced_size();
        u64::from(rw) * u64::from(rh) * 3 + u64::from(rw) * 3 * 4 + 1024
    }

    /// The crop box in the reduced window's pixels.
    fn crop_in_reduced(&self) -> (f64, f64, f64, f64) {
        let (l, t, cw, ch) = self.crop;
        let k = f64::from(self.k);
        (
            (l - f64::from(self.x0)) / k,
            (t - f64::from(self.y0)) / k,
            cw / k,
            ch / k,
        )
    }
}

/// Collects the kept window of a row-by-row source, box-averaged by the plan's factor, as RGB.
struct RowSink<'p> {
    plan: &'p RowPlan,
    out: Vec<u8>,
    acc: Vec<u32>,
    rows_in_acc: u32,
    reduced_w: u32,
    next_out_row: u32,
}

impl<'p> RowSink<'p> {
    fn new(plan: &'p RowPlan) -> RowSink<'p> {
        let (rw, rh) = plan.reduced_size();
        RowSink {
            plan,
            out: vec![0; rw as usize * rh as usize * 3],
            acc: vec![0; rw as usize * 3],
            rows_in_acc: 0,
            reduced_w: rw,
            next_out_row: 0,
        }
    }

    fn push(&mut self, y: u32, row: &[u8]) {
        let p = self.plan;
        if y < p.y0 || y >= p.y1 {
            return;
        }
        let c = p.in_channels;
        let k = p.k as usize;
        let pixels = &row[p.x0 as usize * c..p.x1 as usize * c];
        if k == 1 {
            let start = self.next_out_row as usize * self.reduced_w as usize * 3;
            let dst = &mut self.out[start..start + self.reduced_w as usize * 3];
            match c {
                3 => dst.copy_from_slice(pixels),
                4 => {
                    for (d, s) in dst.chunks_exact_mut(3).zip(pixels.chunks_exact(4)) {
                        d.copy_from_slice(&s[..3]);
                    }
                }
                _ => {
                    for (d, s) in dst.chunks_exact_mut(3).zip(pixels.chunks_exact(c)) {
                        d.fill(s[0]);
                    }
                }
            }
            self.next_out_row += 1;
            return;
        }
        for (i, s) in pixels.chunks_exact(c).enumerate() {
            let a = &mut self.acc[(i / k) * 3..(i / k) * 3 + 3];
            if c >= 3 {
                a[0] += u32::from(s[0]);
                a[1] += u32::from(s[1]);
                a[2] += u32::from(s[2]);
            } else {
                a[0] += u32::from(s[0]);
                a[1] += u32::from(s[0]);
                a[2] += u32::from(s[0]);
            }
        }
        self.rows_in_acc += 1;
        if self.rows_in_acc == p.k || y + 1 == p.y1 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let p = self.plan;
        let k = p.k;
        let width = p.x1 - p.x0;
        let start = self.next_out_row as usize * self.reduced_w as usize * 3;
        for i in 0..self.reduced_w {
            let cols = (width - i * k).min(k);
            let n = cols * self.rows_in_acc;
            for ch in 0..3 {
                let a = &mut self.acc[i as usize * 3 + ch];
                self.out[start + i as usize * 3 + ch] = ((*a + n / 2) / n) as u8;
                *a = 0;
            }
        }
        self.rows_in_acc = 0;
        self.next_out_row += 1;
    }

    fn finish(self) -> (Vec<u8>, u32, u32) {
        let (rw, rh) = self.plan.reduced_size();
        (self.out, rw, rh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_even(2.5), 2.0);
        assert_eq!(round_even(3.5), 4.0);
        assert_eq!(round_even(3.4), 3.0);
        assert_eq!(round_even(3.6), 4.0);
    }

    #[test]
    fn crop_box_is_the_centre_of_the_resized_image() {
        // 600x400 -> 384x256, crop left (384-224)/2 = 80 -> 125 source px, width 224*600/384.
        let (l, t, w, h) = crop_box(600, 400, Orientation::NoTransforms);
        assert!((l - 125.0).abs() < 1e-9, "{l}");
        assert!((t - 25.0).abs() < 1e-9, "{t}");
        assert!((w - 350.0).abs() < 1e-9 && (h - 350.0).abs() < 1e-9);
        // A 12000x1 image: a box under one pixel wide in the middle, not a 3-million-pixel row.
        let (l, _, w, h) = crop_box(12_000, 1, Orientation::NoTransforms);
        assert!(
            w < 1.0 && h < 1.0 && (l - 6000.0).abs() < 1.0,
            "{l} {w} {h}"
        );
        // Rotations swap the axes: a 400x600 source rotated 90° is 600x400 on screen.
        let (l, t, w, h) = crop_box(400, 600, Orientation::Rotate90);
        assert!(
            (l - 25.0).abs() < 1e-9 && (t - 125.0).abs() < 1e-9,
            "{l} {t}"
        );
        assert!((w - 350.0).abs() < 1e-9 && (h - 350.0).abs() < 1e-9);
    }

    #[test]
    fn row_plan_keeps_only_the_centre() {
        let plan = RowPlan::new(10_000, 10_000, Orientation::NoTransforms, 4);
        let (rw, rh) = plan.reduced_size();
        // The centre square is 8750 px; box-averaged by 19 it is ~460 px, well under 1 MB.
        assert!(plan.k >= 16, "{}", plan.k);
        assert!(rw < 600 && rh < 600, "{rw}x{rh}");
        assert!(plan.buffer_bytes() < 2 << 20);
        let thin = RowPlan::new(12_000, 1, Orientation::NoTransforms, 3);
        assert_eq!(thin.k, 1);
        assert!(thin.x1 - thin.x0 <= 12, "{}..{}", thin.x0, thin.x1);
    }
}
