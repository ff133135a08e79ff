//! The tensor stage: a region's crop box resized to the model's input size by a SIMD convolution
//! resizer (`fast_image_resize`, the same Pillow-style bilinear kernel, which also reads the
//! pixels just outside the box as Pillow does), then oriented, put in the model's channel order
//! and normalised while it is written into the input tensor in the model's layout.

use super::region::Region;
use crate::imageio::INPUT_SIDE;
use crate::spec::{ColorOrder, InputSpec, Layout};
use crate::ClassifyError;
use fast_image_resize as fr;
use image::metadata::Orientation;

const SIDE: usize = INPUT_SIDE as usize;
/// Floats in one image's input tensor for the built-in model (3×224×224).
pub const TENSOR_LEN: usize = 3 * SIDE * SIDE;

/// How the resized pixels become the tensor: size, layout, channel order and normalisation.
pub(super) struct Format {
    pub(super) width: usize,
    pub(super) height: usize,
    layout: Layout,
    /// Which RGB channel feeds each of the model's channels.
    order: [usize; 3],
    /// Per model channel, the value of each pixel level.
    lut: [[f32; 256]; 3],
}

impl Format {
    pub(super) fn new(input: &InputSpec, height: u32, width: u32) -> Format {
        let order = match input.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (i, v) in table.iter_mut().enumerate() {
                // In f64, so that (p - 127) / 128 written as mean 127/255, std 128/255 comes out
                // exact in f32.
                *v = ((i as f64 / 255.0 - input.mean[c]) / input.std[c]) as f32;
            }
        }
        Format {
            width: width as usize,
            height: height as usize,
            layout: input.layout,
            order,
            lut,
        }
    }

    pub(super) fn len(&self) -> usize {
        3 * self.width * self.height
    }
}

/// The resizer and its scratch buffer, reused from image to image by one thread.
pub(super) struct TensorWriter {
    resizer: fr::Resizer,
    /// The resized crop box, pixels of 1, 3 or 4 bytes.
    resized: Vec<u8>,
    pub(super) format: Format,
}

impl TensorWriter {
    pub(super) fn new(format: Format) -> TensorWriter {
        TensorWriter {
            resizer: fr::Resizer::new(),
            resized: Vec::new(),
            format,
        }
    }

    /// Resizes the region's crop box to the input size, then orients and normalises it into `out`.
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
        let (dw, dh) = src.dst;
        self.resized
            .resize(dw as usize * dh as usize * src.channels, 0);
        let mut dst = fr::images::Image::from_slice_u8(dw, dh, &mut self.resized, pixel_type)
            .map_err(|e| failed(e.to_string()))?;
        let (l, t, cw, ch) = src.crop;
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
            .use_alpha(false)
            .crop(l, t, cw, ch);
        self.resizer
            .resize(&view, &mut dst, &options)
            .map_err(|e| failed(e.to_string()))?;
        write_tensor(
            &self.resized,
            (dw as usize, dh as usize),
            src.channels,
            src.orientation,
            &self.format,
            out,
        );
        Ok(())
    }
}

/// Writes the resized pixels (`bw`×`bh`, before orientation) into the tensor, oriented, in the
/// format's layout, channel order and normalisation.
fn write_tensor(
    resized: &[u8],
    (bw, bh): (usize, usize),
    channels: usize,
    o: Orientation,
    f: &Format,
    out: &mut [f32],
) {
    let (w, h) = (f.width, f.height);
    let plane = w * h;
    debug_assert_eq!(bw * bh, plane);
    let (lx, ly) = (bw - 1, bh - 1);
    for y in 0..h {
        for x in 0..w {
            // The pixel of the resized buffer shown at (x, y) of the oriented image.
            let (sx, sy) = match o {
                Orientation::NoTransforms => (x, y),
                Orientation::FlipHorizontal => (lx - x, y),
                Orientation::FlipVertical => (x, ly - y),
                Orientation::Rotate180 => (lx - x, ly - y),
                Orientation::Rotate90 => (y, ly - x),
                Orientation::Rotate270 => (lx - y, x),
                Orientation::Rotate90FlipH => (y, x),
                Orientation::Rotate270FlipH => (lx - y, ly - x),
            };
            let p = (sy * bw + sx) * channels;
            let rgb = if channels == 1 {
                [resized[p]; 3]
            } else {
                [resized[p], resized[p + 1], resized[p + 2]]
            };
            let i = y * w + x;
            match f.layout {
                Layout::Nchw => {
                    for c in 0..3 {
                        out[c * plane + i] = f.lut[c][usize::from(rgb[f.order[c]])];
                    }
                }
                Layout::Nhwc => {
                    for c in 0..3 {
                        out[i * 3 + c] = f.lut[c][usize::from(rgb[f.order[c]])];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelSpec;

    #[test]
    fn the_builtin_normalisation_is_exact() {
        let f = Format::new(&ModelSpec::builtin().input, 224, 224);
        for c in 0..3 {
            for i in 0..256 {
                assert_eq!(f.lut[c][i], (i as f32 - 127.0) / 128.0, "{c} {i}");
            }
        }
    }
}
