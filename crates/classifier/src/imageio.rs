//! Upload checks (format sniffed from the bytes, size limits read from the header before any
//! pixel is decoded), full decoding with EXIF orientation, and the model's pre-processing.

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use imgclass_core::ErrorCode;
use std::io::Cursor;

/// Limits an upload must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_bytes: u64,
    pub max_side: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: 25 * 1024 * 1024,
            max_side: 12_000,
            max_pixels: 100_000_000,
        }
    }
}

/// What the header of an accepted image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbedImage {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl ProbedImage {
    pub fn content_type(&self) -> &'static str {
        content_type(self.format)
    }
}

/// The MIME type of an accepted format.
pub fn content_type(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Png => "image/png",
        ImageFormat::WebP => "image/webp",
        ImageFormat::Gif => "image/gif",
        ImageFormat::Bmp => "image/bmp",
        ImageFormat::Tiff => "image/tiff",
        _ => "application/octet-stream",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageCheckError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    NotAnImage,
    #[error("{0} images are not supported; use JPEG, PNG, WebP, GIF, BMP or TIFF")]
    UnsupportedFormat(String),
    #[error("the file is {size} bytes; the limit is {limit} bytes")]
    TooManyBytes { size: u64, limit: u64 },
    #[error("the image is {width}x{height} pixels; the limit is {max_side} pixels a side and {max_pixels} pixels in all")]
    TooManyPixels {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("the image is corrupt or truncated: {0}")]
    Corrupt(String),
}

impl ImageCheckError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageCheckError::Empty
            | ImageCheckError::NotAnImage
            | ImageCheckError::UnsupportedFormat(_) => ErrorCode::UnsupportedMediaType,
            ImageCheckError::TooManyBytes { .. } => ErrorCode::PayloadTooLarge,
            ImageCheckError::TooManyPixels { .. } => ErrorCode::ImageTooLarge,
            ImageCheckError::Corrupt(_) => ErrorCode::ImageCorrupt,
        }
    }
}

fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageCheckError> {
    if bytes.is_empty() {
        return Err(ImageCheckError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageCheckError::NotAnImage)?;
    match format {
        ImageFormat::Jpeg
        | ImageFormat::Png
        | ImageFormat::WebP
        | ImageFormat::Gif
        | ImageFormat::Bmp
        | ImageFormat::Tiff => Ok(format),
        other => Err(ImageCheckError::UnsupportedFormat(
            other
                .extensions_str()
                .first()
                .unwrap_or(&"this")
                .to_uppercase(),
        )),
    }
}

/// The content type of an accepted image format, sniffed from the first bytes of a file (64 are
/// enough); `None` when they are not the start of an image imgclass accepts.
pub fn sniff_content_type(head: &[u8]) -> Option<&'static str> {
    sniff(head).ok().map(content_type)
}

/// Sniffs the format and reads the dimensions from the header, without decoding pixels.
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<ProbedImage, ImageCheckError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageCheckError::TooManyBytes {
            size: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ImageCheckError::Corrupt(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageCheckError::Corrupt("the image has no pixels".into()));
    }
    if width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(ImageCheckError::TooManyPixels {
            width,
            height,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(ProbedImage {
        format,
        width,
        height,
    })
}

/// The upload check: the format from the bytes, the size limits from the header, and whether
/// the file is complete (a truncated file is refused) — without decoding pixels, which the
/// worker does once. JPEG: an end-of-image marker after the last scan; PNG: every chunk whole,
/// its CRC right, up to IEND; GIF: the trailer; WebP and BMP: the length their header declares;
/// TIFF (rare, and without a cheap check): a full decode.
pub fn check(bytes: &[u8], limits: &ImageLimits) -> Result<ProbedImage, ImageCheckError> {
    let probed = probe(bytes, limits)?;
    let truncated = |what: &str| Err(ImageCheckError::Corrupt(what.to_string()));
    match probed.format {
        ImageFormat::Jpeg if !jpeg_has_end(bytes) => {
            return truncated("the JPEG data ends before its end-of-image marker")
        }
        ImageFormat::Png => png_complete(bytes)?,
        ImageFormat::Gif if bytes.last() != Some(&0x3B) => {
            return truncated("the GIF data ends before its trailer")
        }
        ImageFormat::WebP => {
            let declared = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            if bytes.len() < 8 + declared {
                return truncated("the WebP data is shorter than its header says");
            }
        }
        ImageFormat::Bmp if bytes.len() >= 6 => {
            let declared = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
            if bytes.len() < declared {
                return truncated("the BMP data is shorter than its header says");
            }
        }
        ImageFormat::Tiff => {
            decode(bytes, limits)?;
        }
        _ => {}
    }
    Ok(probed)
}

/// Walks the PNG chunks: each must fit in the file with a correct CRC, up to IEND.
fn png_complete(bytes: &[u8]) -> Result<(), ImageCheckError> {
    let corrupt = |m: &str| Err(ImageCheckError::Corrupt(m.to_string()));
    let mut pos = 8;
    loop {
        if pos + 12 > bytes.len() {
            return corrupt("the PNG data ends before its IEND chunk");
        }
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let end = pos + 12 + len;
        if end > bytes.len() {
            return corrupt("the PNG data ends inside a chunk");
        }
        let body = &bytes[pos + 4..pos + 8 + len];
        let crc = u32::from_be_bytes([
            bytes[end - 4],
            bytes[end - 3],
            bytes[end - 2],
            bytes[end - 1],
        ]);
        if crc32fast::hash(body) != crc {
            return corrupt("a PNG chunk is damaged (CRC mismatch)");
        }
        if &body[..4] == b"IEND" {
            return Ok(());
        }
        pos = end;
    }
}

/// Decodes for the model: like [`decode`], but a large JPEG is decoded at a reduced scale in
/// the DCT domain (1/2, 1/4 or 1/8), keeping the shorter side at least `short_side` pixels.
/// For a 12 MP photo that is several times faster and smaller than a full decode.
pub fn decode_reduced(
    bytes: &[u8],
    limits: &ImageLimits,
    short_side: u32,
) -> Result<DynamicImage, ImageCheckError> {
    let probed = probe(bytes, limits)?;
    if probed.format == ImageFormat::Jpeg && probed.width.min(probed.height) >= 2 * short_side {
        if !jpeg_has_end(bytes) {
            return Err(ImageCheckError::Corrupt(
                "the JPEG data ends before its end-of-image marker".into(),
            ));
        }
        if let Some(img) = decode_jpeg_scaled(bytes, probed, short_side)? {
            return Ok(img);
        }
    }
    decode(bytes, limits)
}

/// `None` when the JPEG's pixel format is one the scaled path does not handle (CMYK, 16-bit).
fn decode_jpeg_scaled(
    bytes: &[u8],
    probed: ProbedImage,
    short_side: u32,
) -> Result<Option<DynamicImage>, ImageCheckError> {
    let corrupt = |e: jpeg_decoder::Error| ImageCheckError::Corrupt(e.to_string());
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let min = probed.width.min(probed.height);
    let want = |side: u32| {
        u16::try_from((u64::from(side) * u64::from(short_side)).div_ceil(u64::from(min)))
            .unwrap_or(u16::MAX)
    };
    let (w, h) = decoder
        .scale(want(probed.width), want(probed.height))
        .map_err(corrupt)?;
    let format = decoder.info().map(|i| i.pixel_format);
    let pixels = match format {
        Some(jpeg_decoder::PixelFormat::RGB24) | Some(jpeg_decoder::PixelFormat::L8) => {
            decoder.decode().map_err(corrupt)?
        }
        _ => return Ok(None),
    };
    let (w, h) = (u32::from(w), u32::from(h));
    let bad_size = || ImageCheckError::Corrupt("the JPEG decoded to an unexpected size".into());
    let mut img = match format {
        Some(jpeg_decoder::PixelFormat::L8) => {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, pixels).ok_or_else(bad_size)?)
        }
        _ => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, pixels).ok_or_else(bad_size)?),
    };
    if let Some(o) = decoder
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
    {
        img.apply_orientation(o);
    }
    Ok(Some(img))
}

/// Checks and decodes a whole image (the first frame of an animation), with its EXIF
/// orientation applied.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ImageCheckError> {
    let probed = probe(bytes, limits)?;
    if probed.format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(ImageCheckError::Corrupt(
            "the JPEG data ends before its end-of-image marker".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), probed.format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    // Room for the largest allowed image at 16 bits per channel RGBA.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(decoder_limits);
    let corrupt = |e: image::ImageError| ImageCheckError::Corrupt(e.to_string());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().map_err(corrupt)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Whether a JPEG stream is complete: an end-of-image marker follows the last start-of-scan.
/// The JPEG decoder fills a truncated scan with grey instead of failing, so this is checked
/// separately. Entropy-coded data never holds `FF D9` or `FF DA` (0xFF bytes are stuffed).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(pos) => bytes[pos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Side of the square the model sees.
pub const INPUT_SIDE: u32 = 224;
/// The shorter side after the first resize, before the centre crop.
pub const RESIZE_SHORT_SIDE: u32 = 256;

/// The EfficientNet-Lite pre-processing: RGB, shorter side resized to 256 (bilinear), centre
/// crop 224x224, `(pixel - 127) / 128`, laid out as CHW float32.
pub fn preprocess(img: &DynamicImage, out: &mut Vec<f32>) {
    let (w, h) = (img.width(), img.height());
    // Very large photos are first shrunk cheaply to twice the target, which keeps the bilinear
    // pass small without visible change to what the model sees.
    let shrunk;
    let img = if w.min(h) > 4 * RESIZE_SHORT_SIDE {
        let s = (2 * RESIZE_SHORT_SIDE) as f32 / w.min(h) as f32;
        shrunk = img.thumbnail_exact(
            ((w as f32 * s).round() as u32).max(1),
            ((h as f32 * s).round() as u32).max(1),
        );
        &shrunk
    } else {
        img
    };
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let s = RESIZE_SHORT_SIDE as f32 / w.min(h) as f32;
    let nw = ((w as f32 * s).round() as u32).max(INPUT_SIDE);
    let nh = ((h as f32 * s).round() as u32).max(INPUT_SIDE);
    let resized = image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::Triangle);
    let (left, top) = ((nw - INPUT_SIDE) / 2, (nh - INPUT_SIDE) / 2);
    let plane = (INPUT_SIDE * INPUT_SIDE) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let dst = &mut out[start..];
    for y in 0..INPUT_SIDE {
        for x in 0..INPUT_SIDE {
            let p = resized.get_pixel(left + x, top + y);
            let i = (y * INPUT_SIDE + x) as usize;
            for c in 0..3 {
                dst[c * plane + i] = (f32::from(p[c]) - 127.0) / 128.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn sniffs_from_bytes_not_names() {
        let p = probe(&png(3, 2), &ImageLimits::default()).unwrap();
        assert_eq!(p.format, ImageFormat::Png);
        assert_eq!((p.width, p.height), (3, 2));
        assert_eq!(p.content_type(), "image/png");
    }

    #[test]
    fn rejects_non_images() {
        let l = ImageLimits::default();
        assert_eq!(probe(b"hello, world", &l), Err(ImageCheckError::NotAnImage));
        assert_eq!(probe(b"", &l), Err(ImageCheckError::Empty));
        assert_eq!(
            probe(b"hello", &l).unwrap_err().code(),
            ErrorCode::UnsupportedMediaType
        );
    }

    #[test]
    fn rejects_too_many_bytes_before_sniffing() {
        let l = ImageLimits {
            max_bytes: 10,
            ..ImageLimits::default()
        };
        let e = probe(&png(3, 2), &l).unwrap_err();
        assert!(matches!(e, ImageCheckError::TooManyBytes { limit: 10, .. }));
        assert_eq!(e.code(), ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn pixel_limits_come_from_the_header() {
        // A PNG header that claims 50000x50000: rejected without decoding (there is no pixel data).
        let mut bytes = png(1, 1);
        bytes[16..20].copy_from_slice(&50_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&50_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = probe(&bytes, &ImageLimits::default()).unwrap_err();
        assert!(matches!(
            e,
            ImageCheckError::TooManyPixels { width: 50_000, .. }
        ));
        assert_eq!(e.code(), ErrorCode::ImageTooLarge);

        let l = ImageLimits {
            max_side: 100,
            max_pixels: 50,
            ..ImageLimits::default()
        };
        assert!(matches!(
            probe(&png(10, 10), &l),
            Err(ImageCheckError::TooManyPixels { .. })
        ));
        assert!(probe(&png(5, 10), &l).is_ok());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn truncated_images_are_corrupt() {
        let bytes = png(64, 64);
        let cut = &bytes[..bytes.len() - 30];
        let e = decode(cut, &ImageLimits::default()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ImageCorrupt, "{e}");
    }

    #[test]
    fn the_upload_check_finds_truncation_without_decoding() {
        let l = ImageLimits::default();
        let p = png(64, 64);
        assert!(check(&p, &l).is_ok());
        for cut in [p.len() - 1, p.len() - 12, p.len() / 2, 40] {
            let e = check(&p[..cut], &l).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ImageCorrupt, "cut at {cut}: {e}");
        }
        // A flipped bit inside the image data: the chunk's CRC no longer matches.
        let mut damaged = p.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x10;
        assert_eq!(
            check(&damaged, &l).unwrap_err().code(),
            ErrorCode::ImageCorrupt
        );

        let j = jpeg(64, 48);
        assert!(check(&j, &l).is_ok());
        assert_eq!(
            check(&j[..j.len() - 10], &l).unwrap_err().code(),
            ErrorCode::ImageCorrupt
        );
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 99]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn large_jpegs_are_decoded_at_a_reduced_scale() {
        let l = ImageLimits::default();
        let big = jpeg(2400, 1200);
        let img = decode_reduced(&big, &l, 256).unwrap();
        // 1/4 keeps the shorter side at 300 >= 256; 1/8 would give 150.
        assert_eq!((img.width(), img.height()), (600, 300));
        // Small images are decoded whole.
        let small = jpeg(400, 300);
        let img = decode_reduced(&small, &l, 256).unwrap();
        assert_eq!((img.width(), img.height()), (400, 300));
        // EXIF orientation still applies on the reduced path.
        let rotated = insert_exif_orientation(&big, 6);
        let img = decode_reduced(&rotated, &l, 256).unwrap();
        assert_eq!((img.width(), img.height()), (300, 600));
    }

    #[test]
    fn preprocess_shape_and_values() {
        let img = image::load_from_memory(&png(300, 400)).unwrap();
        let mut out = Vec::new();
        preprocess(&img, &mut out);
        assert_eq!(out.len(), 3 * 224 * 224);
        let plane = 224 * 224;
        assert!((out[0] - (10.0 - 127.0) / 128.0).abs() < 1e-6);
        assert!((out[plane] - (200.0 - 127.0) / 128.0).abs() < 1e-6);
        assert!((out[2 * plane] - (30.0 - 127.0) / 128.0).abs() < 1e-6);
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4x2 JPEG whose EXIF says "rotate 90° clockwise" decodes as 2x4.
        let img = RgbImage::from_pixel(4, 2, image::Rgb([0, 0, 0]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .write_image(img.as_raw(), 4, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        let with_exif = insert_exif_orientation(&jpeg, 6);
        let decoded = decode(&with_exif, &ImageLimits::default()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (2, 4));
    }

    /// Puts an APP1 Exif segment holding only an Orientation tag right after SOI.
    fn insert_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big endian, IFD at 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }
}
