//! The tensor stage: a region's crop box resized to 224×224 by a SIMD convolution resizer
//! (`fast_image_resize`, the same Pillow-style bilinear kernel, which also reads the pixels just
//! outside the box as Pillow does), then oriented and normalised while it is written into the
//! model's input tensor (CHW, `(pixel - 127) / 128`).

use super::region::Region;
use crate::imageio::INPUT_SIDE;
use crate::ClassifyError;
use fast_image_resize as fr;
use image::metadata::Orientation;

const SIDE: usize = INPUT_SIDE as usize;
/// Floats in one image's input tensor.
pub const TENSOR_LEN: usize = 3 * SIDE * SIDE;

/// The resizer and its scratch square, reused from image to image by one thread.
pub(super) struct TensorWriter {
    resizer: fr::Resizer,
    /// The resized centre square, 224×224 pixels of 1, 3 or 4 bytes.
    square: Vec<u8>,
    lut: [f32; 256],
}

impl TensorWriter {
    pub(super) fn new() -> TensorWriter {
        let mut lut = [0f32; 256];
        for (i, v) in lut.iter_mut().enumerate() {
            *v = (i as f32 - 127.0) / 128.0;
        }
        TensorWriter {
            resizer: fr::Resizer::new(),
            square: Vec::new(),
            lut,
        }
    }

    /// Resizes the region's crop box to 224×224, then orients and normalises it into `out`.
    pub(super) fn write(&mut self, src: &Region<'_>, out: &mut [f32]) -> Result<(), ClassifyError> {
        let pixel_type = match src.channels {
            1 => fr::PixelType::U8,
            3 => fr::PixelType::U8x3,
            4 => fr::PixelType::U8x4,
            _ => unreachable!("sources have 1, 3 or 4 channels"),
        };
        let failed = |e: String| ClassifyError::Model(format!("resizing failed: {e}"));
        let view = fr::images::ImageRef::new(src.width, src.height, &src.pixels, pixel_type)
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
        write_tensor(&self.square, src.channels, src.orientation, &self.lut, out);
        Ok(())
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
