//! PNG (not interlaced): decoded row by row; only the rows and columns around the centre square
//! are kept, box-averaged on the fly by an integer factor when the square is large (as Pillow's
//! `reducing_gap`), so memory stays at a few rows plus a small buffer. A PNG whose data ends
//! before its last row is corrupt.

use super::crop::{plan, Geometry};
use super::region::{take_budget, Region};
use crate::budget::MemoryBudget;
use crate::cancel::Cancel;
use crate::imageio::ImageCheckError;
use crate::spec::Resize;
use crate::ClassifyError;
use image::metadata::Orientation;
use std::io::Cursor;

/// Decodes a PNG row by row, keeping the neighbourhood of the centre square, as RGB. `None` for
/// interlaced PNGs (their rows come in seven passes; they take the generic path).
pub(super) fn decode<'b>(
    bytes: &[u8],
    geometry: &Geometry,
    budget: &'b MemoryBudget,
    cancel: &Cancel,
) -> Result<Option<Region<'b>>, ClassifyError> {
    let corrupt =
        |e: png::DecodingError| ClassifyError::Image(ImageCheckError::Corrupt(format!("PNG: {e}")));
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
    let plan = RowPlan::new(w, h, orientation, in_channels, geometry);
    let row_bytes = reader.output_line_size(w).unwrap_or(usize::MAX);
    // One raw row, one unfiltered row, the reduced window, the accumulators.
    let need = 3 * row_bytes as u64 + plan.buffer_bytes();
    let permit = take_budget(budget, need, w, h, cancel)?;
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
    let (pixels, rw, rh) = sink.finish();
    Ok(Some(Region {
        pixels,
        width: rw,
        height: rh,
        channels: 3,
        crop: plan.crop_in_reduced(),
        dst: plan.dst,
        orientation,
        _permit: Some(permit),
    }))
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
    dst: (u32, u32),
}

impl RowPlan {
    fn new(w: u32, h: u32, o: Orientation, in_channels: usize, g: &Geometry) -> RowPlan {
        let p = plan(w, h, o, g);
        let (l, t, cw, ch) = p.crop;
        // Source pixels per output pixel; the bilinear kernel reaches that far on each side.
        let (rx, ry) = (cw / f64::from(p.dst.0), ch / f64::from(p.dst.1));
        let scale = rx.max(ry);
        // Box-average first while the result stays at least twice the output (Pillow's
        // reducing_gap = 2) on both axes. A crop scales both axes alike (up to rounding);
        // a stretch may not, and then the axis reduced least decides.
        let reduce = match g.resize {
            Resize::Crop { .. } => scale,
            Resize::Stretch => rx.min(ry),
        };
        let k = ((reduce / 2.0).floor() as u32).max(1);
        let margin = scale.max(1.0) + 2.0 + f64::from(k);
        let clamp = |v: f64, hi: u32| v.max(0.0).min(f64::from(hi)) as u32;
        RowPlan {
            in_channels,
            x0: clamp((l - margin).floor(), w),
            x1: clamp((l + cw + margin).ceil(), w),
            y0: clamp((t - margin).floor(), h),
            y1: clamp((t + ch + margin).ceil(), h),
            k,
            crop: p.crop,
            dst: p.dst,
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
    fn row_plan_keeps_only_the_centre() {
        let plan = RowPlan::new(
            10_000,
            10_000,
            Orientation::NoTransforms,
            4,
            &Geometry::BUILTIN,
        );
        let (rw, rh) = plan.reduced_size();
        // The centre square is 8750 px; box-averaged by 19 it is ~460 px, well under 1 MB.
        assert!(plan.k >= 16, "{}", plan.k);
        assert!(rw < 600 && rh < 600, "{rw}x{rh}");
        assert!(plan.buffer_bytes() < 2 << 20);
        let thin = RowPlan::new(12_000, 1, Orientation::NoTransforms, 3, &Geometry::BUILTIN);
        assert_eq!(thin.k, 1);
        assert!(thin.x1 - thin.x0 <= 12, "{}..{}", thin.x0, thin.x1);
    }
}
