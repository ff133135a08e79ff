//! Where the model's input lies in the source's own pixels (before the EXIF orientation): for the
//! built-in model, the centre 224×224 of the oriented image resized to a shorter side of 256; for
//! any model, what its spec's size and resize mode say.

use crate::imageio::{INPUT_SIDE, RESIZE_SHORT_SIDE};
use crate::spec::Resize;
use image::metadata::Orientation;

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
/// The built-in model's geometry; see [`plan`] for any other.
pub fn crop_box(w: u32, h: u32, o: Orientation) -> (f64, f64, f64, f64) {
    plan(w, h, o, &Geometry::BUILTIN).crop
}

/// The size the model's input has and how the image is brought to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) resize: Resize,
}

impl Geometry {
    /// The built-in model's: 224×224, shorter side to 256, centre crop.
    pub(crate) const BUILTIN: Geometry = Geometry {
        width: INPUT_SIDE,
        height: INPUT_SIDE,
        resize: Resize::Crop {
            fraction: INPUT_SIDE as f64 / RESIZE_SHORT_SIDE as f64,
        },
    };
}

/// Where the model's input comes from in a source image, worked out before decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// The box resized into the input, in source pixels (before orientation): left, top, width,
    /// height.
    pub(crate) crop: (f64, f64, f64, f64),
    /// What the box is resized to, in the source's orientation (width, height): the input size,
    /// its sides swapped when the orientation turns the image by 90°.
    pub(crate) dst: (u32, u32),
    /// Per source axis (x, y), the length the whole axis is resized to where that length bounds
    /// how far a decoder may scale the source down first (0: that axis does not).
    pub(crate) full: (f64, f64),
}

/// The plan for a `w`×`h` source with orientation `o`:
/// - crop: the oriented image scaled (aspect ratio kept, bilinear) so that it just covers
///   `size / crop_fraction` (each side rounded down, as timm's `img_size / crop_pct`), then the
///   centre `size` of it; for a square size, the shorter side goes to `side / crop_fraction`.
/// - stretch: the whole image to `size`.
pub(crate) fn plan(w: u32, h: u32, o: Orientation, g: &Geometry) -> Plan {
    let swaps = swaps_axes(o);
    let (ow, oh) = if swaps { (h, w) } else { (w, h) };
    let (owf, ohf) = (f64::from(ow), f64::from(oh));
    let (tw, th) = (f64::from(g.width), f64::from(g.height));
    let dst = if swaps {
        (g.height, g.width)
    } else {
        (g.width, g.height)
    };
    let fraction = match g.resize {
        Resize::Stretch => {
            let full = (f64::from(dst.0), f64::from(dst.1));
            return Plan {
                crop: (0.0, 0.0, f64::from(w), f64::from(h)),
                dst,
                full,
            };
        }
        Resize::Crop { fraction } => fraction,
    };
    // The size the image must cover; 1e-9 keeps 224 / 0.875 at 256, not 255.
    let (cw, ch) = (
        (tw / fraction + 1e-9).floor(),
        (th / fraction + 1e-9).floor(),
    );
    let (sx_cover, sy_cover) = (cw / owf, ch / ohf);
    let s = sx_cover.max(sy_cover);
    let nw = round_even(owf * s).max(tw);
    let nh = round_even(ohf * s).max(th);
    let left = ((nw - tw) / 2.0).floor();
    let top = ((nh - th) / 2.0).floor();
    let (sx, sy) = (owf / nw, ohf / nh);
    let (x0, y0, x1, y1) = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy);
    // Both corners back through the orientation.
    let (a, b) = (unorient(x0, y0, w, h, o), unorient(x1, y1, w, h, o));
    let (l, t) = (a.0.min(b.0), a.1.min(b.1));
    // The covering axis bounds the decode scale (for a square size, the shorter side).
    let oriented_full = if sx_cover >= sy_cover {
        (cw, 0.0)
    } else {
        (0.0, ch)
    };
    let full = if swaps {
        (oriented_full.1, oriented_full.0)
    } else {
        oriented_full
    };
    Plan {
        crop: (l, t, (a.0 - b.0).abs(), (a.1 - b.1).abs()),
        dst,
        full,
    }
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
    fn non_square_and_stretch_plans() {
        // 320 wide, 160 high, crop fraction 0.5: the image must cover 640x320. A 1000x1000
        // source scales by 0.64 to 640x640; the centre 320x160 of it is 500x250 source pixels.
        let g = Geometry {
            width: 320,
            height: 160,
            resize: Resize::Crop { fraction: 0.5 },
        };
        let p = plan(1000, 1000, Orientation::NoTransforms, &g);
        assert_eq!(p.dst, (320, 160));
        let (l, t, w, h) = p.crop;
        assert!(
            (l - 250.0).abs() < 1e-9 && (t - 375.0).abs() < 1e-9,
            "{l} {t}"
        );
        assert!(
            (w - 500.0).abs() < 1e-9 && (h - 250.0).abs() < 1e-9,
            "{w} {h}"
        );
        assert_eq!(p.full, (640.0, 0.0));
        // Turned by 90°: the resize target is 160 wide, 320 high in the source's pixels.
        let p = plan(1000, 1000, Orientation::Rotate90, &g);
        assert_eq!(p.dst, (160, 320));
        assert!((p.crop.2 - 250.0).abs() < 1e-9 && (p.crop.3 - 500.0).abs() < 1e-9);
        let s = Geometry {
            width: 30,
            height: 20,
            resize: Resize::Stretch,
        };
        let p = plan(600, 100, Orientation::NoTransforms, &s);
        assert_eq!(p.crop, (0.0, 0.0, 600.0, 100.0));
        assert_eq!((p.dst, p.full), ((30, 20), (30.0, 20.0)));
    }
}
