//! The reference crop box: where the centre 224×224 of the oriented image, resized to a shorter
//! side of 256, lies in the source's own pixels (before the EXIF orientation).

use crate::imageio::{INPUT_SIDE, RESIZE_SHORT_SIDE};
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
}
