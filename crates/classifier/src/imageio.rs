//! Upload checks (format sniffed from the bytes, size limits read from the header before any
//! pixel is decoded, completeness and structure checked without decoding pixels), the JPEG
//! marker walk, and a whole decode with EXIF orientation. The model's pre-processing is in
//! `prepare/`.

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
    #[error("decoding this {width}x{height} image needs {} MiB, more than the {} MiB a decode may use", needed.div_ceil(1 << 20), limit >> 20)]
    TooMuchMemory {
        width: u32,
        height: u32,
        needed: u64,
        limit: u64,
    },
    #[error("the image needs more memory to decode than is allowed: {0}")]
    DecoderLimit(String),
}

impl ImageCheckError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageCheckError::Empty
            | ImageCheckError::NotAnImage
            | ImageCheckError::UnsupportedFormat(_) => ErrorCode::UnsupportedMediaType,
            ImageCheckError::TooManyBytes { .. } => ErrorCode::PayloadTooLarge,
            ImageCheckError::TooManyPixels { .. }
            | ImageCheckError::TooMuchMemory { .. }
            | ImageCheckError::DecoderLimit(_) => ErrorCode::ImageTooLarge,
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
    let (width, height) = if format == ImageFormat::Jpeg {
        jpeg_dimensions(bytes)?
    } else {
        ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| ImageCheckError::Corrupt(e.to_string()))?
    };
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

/// A JPEG's size from its headers, read by the decoder `image` uses (zune-jpeg, with the options
/// `image` gives it) straight from the slice: `image`'s own JPEG decoder starts by copying the
/// whole file, which for a 12 MP photo cost more than the rest of the upload check.
fn jpeg_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageCheckError> {
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    decoder
        .decode_headers()
        .map_err(|e| ImageCheckError::Corrupt(format!("JPEG: {e}")))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| ImageCheckError::Corrupt("JPEG: the headers give no size".into()))?;
    let side = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    Ok((side(w), side(h)))
}

/// The upload check: the format from the bytes, the size limits from the header, and whether
/// the file is complete (a truncated file is refused) — without decoding pixels, which the
/// worker does once. JPEG: an end-of-image marker after the last scan; PNG: every chunk whole,
/// its CRC right, up to IEND; GIF: the trailer; WebP and BMP: the length their header declares;
/// TIFF: every strip or tile the first image's directory points to lies inside the file. A JPEG
/// whose scan data is too short to hold the blocks its header declares is refused too.
pub fn check(bytes: &[u8], limits: &ImageLimits) -> Result<ProbedImage, ImageCheckError> {
    let probed = probe(bytes, limits)?;
    let truncated = |what: &str| Err(ImageCheckError::Corrupt(what.to_string()));
    match probed.format {
        ImageFormat::Jpeg => {
            // One walk over the markers finds the end-of-image marker in the usual case; the
            // search from the end is for the files where the walk fails or stops early, so
            // that a truncated file is called truncated rather than corrupt.
            let layout = jpeg_layout(bytes);
            if !matches!(&layout, Ok(l) if l.ends) && !jpeg_has_end(bytes) {
                return truncated("the JPEG data ends before its end-of-image marker");
            }
            layout?.check_data_covers_frame()?
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
        ImageFormat::Tiff => tiff_structure(bytes)?,
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
    reader.limits(decoder_limits(
        limits,
        crate::budget::MemoryBudget::global().capacity(),
    ));
    let corrupt = decode_error;
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().map_err(corrupt)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The `image` crate's decoder limits: the size limits of the upload, and at most `max_alloc`
/// bytes allocated by one decode.
pub fn decoder_limits(limits: &ImageLimits, max_alloc: u64) -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(max_alloc);
    l
}

/// A decoder's error: a memory limit says so (`image_too_large`); anything else is corrupt data.
pub fn decode_error(e: image::ImageError) -> ImageCheckError {
    match e {
        image::ImageError::Limits(l) => ImageCheckError::DecoderLimit(l.to_string()),
        other => ImageCheckError::Corrupt(other.to_string()),
    }
}

/// Checks a TIFF's structure without decoding pixels: the first image's directory parses, and
/// each of its strips or tiles lies inside the file.
fn tiff_structure(bytes: &[u8]) -> Result<(), ImageCheckError> {
    use tiff::tags::Tag;
    let corrupt = |e: &dyn std::fmt::Display| ImageCheckError::Corrupt(format!("TIFF: {e}"));
    let mut d = tiff::decoder::Decoder::new(Cursor::new(bytes)).map_err(|e| corrupt(&e))?;
    d.dimensions().map_err(|e| corrupt(&e))?;
    d.colortype().map_err(|e| corrupt(&e))?;
    let (offsets, counts) = match d.find_tag(Tag::TileOffsets).map_err(|e| corrupt(&e))? {
        Some(_) => (Tag::TileOffsets, Tag::TileByteCounts),
        None => (Tag::StripOffsets, Tag::StripByteCounts),
    };
    let offsets = d.get_tag_u64_vec(offsets).map_err(|e| corrupt(&e))?;
    let counts = d.get_tag_u64_vec(counts).map_err(|e| corrupt(&e))?;
    if offsets.is_empty() || offsets.len() != counts.len() {
        return Err(corrupt(&"the image data is not described"));
    }
    let len = bytes.len() as u64;
    for (o, c) in offsets.iter().zip(&counts) {
        if o.checked_add(*c).is_none_or(|end| end > len) {
            return Err(ImageCheckError::Corrupt(
                "the TIFF data is shorter than its directory says".into(),
            ));
        }
    }
    Ok(())
}

/// What a JPEG's markers say, read without decoding anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegLayout {
    pub width: u16,
    pub height: u16,
    pub components: u8,
    pub progressive: bool,
    /// Arithmetic coding (which no decoder here supports; its data can be very short).
    pub arithmetic: bool,
    /// 8×8 blocks the frame holds, all components together.
    pub blocks: u64,
    /// Bytes of entropy-coded data in all scans (markers excluded).
    pub scan_bytes: u64,
    /// Where the EXIF data (after `Exif\0\0`) lies.
    exif: Option<(usize, usize)>,
    /// The walk reached the end-of-image marker after the last scan (false when it stopped at
    /// a second frame, whose end it did not look for).
    ends: bool,
}

/// Walks a JPEG's markers: the frame header, the APP1 EXIF segment, and the length of each scan.
pub fn jpeg_layout(bytes: &[u8]) -> Result<JpegLayout, ImageCheckError> {
    let corrupt = |m: &str| ImageCheckError::Corrupt(format!("JPEG: {m}"));
    let mut layout = JpegLayout {
        width: 0,
        height: 0,
        components: 0,
        progressive: false,
        arithmetic: false,
        blocks: 0,
        scan_bytes: 0,
        exif: None,
        ends: false,
    };
    let mut seen_frame = false;
    let mut pos = 2;
    loop {
        // Skip fill bytes before a marker.
        while pos < bytes.len() && bytes[pos] == 0xFF && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if pos + 2 > bytes.len() || bytes[pos] != 0xFF {
            return Err(corrupt("a marker is missing"));
        }
        let marker = bytes[pos + 1];
        pos += 2;
        match marker {
            0xD9 => {
                layout.ends = true;
                break;
            }
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if pos + 2 > bytes.len() {
            return Err(corrupt("the data ends inside a segment"));
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos], bytes[pos + 1]]));
        if len < 2 || pos + len > bytes.len() {
            return Err(corrupt("a segment is longer than the file"));
        }
        let body = &bytes[pos + 2..pos + len];
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if seen_frame {
                    break; // a second frame (e.g. a thumbnail after the image): not ours
                }
                seen_frame = true;
                if body.len() < 6 {
                    return Err(corrupt("the frame header is too short"));
                }
                layout.height = u16::from_be_bytes([body[1], body[2]]);
                layout.width = u16::from_be_bytes([body[3], body[4]]);
                layout.components = body[5];
                layout.progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
                layout.arithmetic = marker >= 0xC9;
                let n = usize::from(layout.components);
                if n == 0 || body.len() < 6 + 3 * n {
                    return Err(corrupt("the frame header is too short"));
                }
                let sampling: Vec<(u64, u64)> = (0..n)
                    .map(|i| {
                        let s = body[6 + 3 * i + 1];
                        (u64::from(s >> 4).max(1), u64::from(s & 15).max(1))
                    })
                    .collect();
                let hmax = sampling.iter().map(|s| s.0).max().unwrap_or(1);
                let vmax = sampling.iter().map(|s| s.1).max().unwrap_or(1);
                let (w, h) = (u64::from(layout.width), u64::from(layout.height));
                layout.blocks = sampling
                    .iter()
                    .map(|(hs, vs)| {
                        let cw = (w * hs).div_ceil(hmax);
                        let ch = (h * vs).div_ceil(vmax);
                        cw.div_ceil(8) * ch.div_ceil(8)
                    })
                    .sum();
            }
            0xE1 if body.starts_with(b"Exif\0\0") && layout.exif.is_none() => {
                layout.exif = Some((pos + 2 + 6, pos + len));
            }
            0xDA => {
                // The entropy-coded data runs to the next marker that is not a restart marker
                // or a stuffed 0xFF 0x00.
                let mut p = pos + len;
                let mut data = 0u64;
                while p < bytes.len() {
                    let Some(i) = memchr::memchr(0xFF, &bytes[p..]) else {
                        data += (bytes.len() - p) as u64;
                        p = bytes.len();
                        break;
                    };
                    data += i as u64;
                    p += i;
                    match bytes.get(p + 1) {
                        Some(0x00) => {
                            data += 1;
                            p += 2;
                        }
                        Some(0xD0..=0xD7) => p += 2,
                        Some(0xFF) => p += 1,
                        _ => break,
                    }
                }
                layout.scan_bytes += data;
                pos = p;
                continue;
            }
            _ => {}
        }
        pos += len;
    }
    if !seen_frame {
        return Err(corrupt("there is no frame header"));
    }
    Ok(layout)
}

impl JpegLayout {
    /// Huffman-coded data spends at least one bit on every block (the DC difference, in a
    /// sequential scan or in the first DC scan of a progressive one), so scan data shorter than
    /// one bit per block cannot cover the frame: the header lies (or the data was cut), and a
    /// decoder would fill the rest with grey.
    pub fn check_data_covers_frame(&self) -> Result<(), ImageCheckError> {
        if self.width == 0 || self.height == 0 {
            return Err(ImageCheckError::Corrupt(
                "the JPEG frame has no size (DNL marker)".into(),
            ));
        }
        if !self.arithmetic && self.scan_bytes * 8 < self.blocks {
            return Err(ImageCheckError::Corrupt(format!(
                "the JPEG header declares {}x{} pixels ({} blocks) but its data ({} bytes) cannot cover them",
                self.width, self.height, self.blocks, self.scan_bytes
            )));
        }
        Ok(())
    }

    /// The EXIF orientation, if the file has one.
    pub fn orientation(&self, bytes: &[u8]) -> image::metadata::Orientation {
        self.exif
            .and_then(|(a, b)| image::metadata::Orientation::from_exif_chunk(&bytes[a..b]))
            .unwrap_or(image::metadata::Orientation::NoTransforms)
    }

    /// About what decoding allocates at 1/`scale` (1, 2, 4 or 8): the output, the component
    /// planes, and for a progressive file the coefficients of every block at full size.
    pub fn decode_bytes(&self, scale: u32) -> u64 {
        let s = u64::from(scale.max(1));
        let (w, h) = (u64::from(self.width), u64::from(self.height));
        let output = w.div_ceil(s) * h.div_ceil(s) * 3;
        let planes = self.blocks * 64 / (s * s);
        let coefficients = if self.progressive {
            self.blocks * 128
        } else {
            0
        };
        output + planes + coefficients + (1 << 20)
    }
}

/// Whether a JPEG stream is complete: an end-of-image marker follows the last start-of-scan.
/// The JPEG decoder fills a truncated scan with grey instead of failing, so this is checked
/// separately. Entropy-coded data never holds `FF D9` or `FF DA` (0xFF bytes are stuffed).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    match memchr::memmem::rfind(bytes, &[0xFF, 0xDA]) {
        Some(pos) => memchr::memmem::find(&bytes[pos..], &[0xFF, 0xD9]).is_some(),
        None => false,
    }
}

/// Side of the square the model sees.
pub const INPUT_SIDE: u32 = 224;
/// The shorter side after the first resize, before the centre crop.
pub const RESIZE_SHORT_SIDE: u32 = 256;

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
        // Cut inside the scan or before it: called truncated, not corrupt elsewhere.
        for cut in [j.len() - 1, j.len() - 10, j.len() - 40] {
            let e = check(&j[..cut], &l).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ImageCorrupt, "cut at {cut}: {e}");
            assert!(e.to_string().contains("end-of-image"), "cut at {cut}: {e}");
        }
        // Bytes after the end-of-image marker (a cut trailer holding FF DA) are not the
        // image's: the decoder stops at the marker, and so does the check.
        let mut trailed = j.clone();
        trailed.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x02]);
        assert!(check(&trailed, &l).is_ok());
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
