//! The photo variants of the agreement test, generated deterministically from the five test
//! photos: re-encoded at several JPEG qualities, scaled (down and up to 12 MP), cropped, turned
//! and tagged with the EXIF orientation that turns them back, grey, with alpha.
//!
//! Shared by the test (`agreement.rs`) and by `examples/agreement_variants.rs`, which writes
//! them to a directory for `tests/agreement/reference_labels.py`.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder};
use std::path::Path;

pub const PHOTOS: [&str; 5] = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "grace_hopper.jpg",
    "rocket.jpg",
];

fn jpeg(img: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = JpegEncoder::new_with_quality(&mut out, quality);
    match img {
        DynamicImage::ImageLuma8(l) => enc
            .write_image(
                l.as_raw(),
                l.width(),
                l.height(),
                image::ExtendedColorType::L8,
            )
            .unwrap(),
        _ => {
            let rgb = img.to_rgb8();
            enc.write_image(
                rgb.as_raw(),
                rgb.width(),
                rgb.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap()
        }
    }
    out
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    let color = img.color();
    PngEncoder::new(&mut out)
        .write_image(img.as_bytes(), img.width(), img.height(), color.into())
        .unwrap();
    out
}

/// Puts an APP1 Exif segment holding only an Orientation tag right after SOI.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn scaled(img: &DynamicImage, f: f64) -> DynamicImage {
    let w = ((f64::from(img.width()) * f).round() as u32).max(1);
    let h = ((f64::from(img.height()) * f).round() as u32).max(1);
    img.resize_exact(w, h, FilterType::Triangle)
}

fn crop(img: &DynamicImage, x: f64, y: f64, w: f64, h: f64) -> DynamicImage {
    let (iw, ih) = (f64::from(img.width()), f64::from(img.height()));
    img.crop_imm(
        (x * iw) as u32,
        (y * ih) as u32,
        (w * iw) as u32,
        (h * ih) as u32,
    )
}

/// (name, bytes) of every variant, in a fixed order.
pub fn variants(fixtures: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for photo in PHOTOS {
        let bytes = std::fs::read(fixtures.join(photo)).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        let img = DynamicImage::ImageRgb8(img.to_rgb8());
        let stem = photo.split('.').next().unwrap();
        let mut add = |name: String, b: Vec<u8>| out.push((format!("{stem}-{name}"), b));
        add("original".into(), bytes.clone());
        for q in [95, 85, 75, 50, 30] {
            add(format!("q{q}.jpg"), jpeg(&img, q));
        }
        for f in [0.5, 0.75] {
            add(format!("x{f}.png"), png(&scaled(&img, f)));
        }
        // Up to phone-photo sizes: the reduced-scale JPEG paths (1/2, 1/4, 1/8).
        for f in [1.5, 2.5, 4.0, 7.0] {
            add(format!("x{f}.jpg"), jpeg(&scaled(&img, f), 90));
        }
        add(
            "crop-centre80.png".into(),
            png(&crop(&img, 0.1, 0.1, 0.8, 0.8)),
        );
        add(
            "crop-left60.jpg".into(),
            jpeg(&crop(&img, 0.0, 0.2, 0.6, 0.8), 90),
        );
        add(
            "crop-top70.png".into(),
            png(&crop(&img, 0.15, 0.0, 0.7, 0.7)),
        );
        // Stored turned, with the EXIF orientation that shows them upright again.
        for (o, turned) in [
            (3, img.rotate180()),
            (6, img.rotate270()),
            (8, img.rotate90()),
            (2, img.fliph()),
        ] {
            add(
                format!("exif{o}.jpg"),
                with_exif_orientation(&jpeg(&turned, 90), o),
            );
        }
        add(
            "exif6-x3.jpg".into(),
            with_exif_orientation(&jpeg(&scaled(&img, 3.0).rotate270(), 90), 6),
        );
        add(
            "grey.png".into(),
            png(&DynamicImage::ImageLuma8(img.to_luma8())),
        );
        add(
            "grey.jpg".into(),
            jpeg(&DynamicImage::ImageLuma8(img.to_luma8()), 90),
        );
        add(
            "rgba.png".into(),
            png(&DynamicImage::ImageRgba8(img.to_rgba8())),
        );
    }
    out
}
