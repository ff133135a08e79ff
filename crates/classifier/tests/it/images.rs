//! The pre-processing on generated images: the reference tensors, shapes that used to cost
//! gigabytes (thin, huge, 16-bit), decompression bombs, headers that lie, cancellation. Each
//! case asserts what comes out and the error code; how long they take and how much memory they
//! use is measured by `bench/hardening.sh`, except that a whole decode's peak is checked
//! against its budget here (in a child process).

use image::{ImageEncoder, RgbImage};
use imgclass_classifier::imageio::{self, ImageLimits};
use imgclass_classifier::prepare::{DecoderKind, Prepared, Preprocessor, TENSOR_LEN};
use imgclass_classifier::{Cancel, ClassifyError, MemoryBudget};
use std::io::Write;
use std::path::Path;

fn prepare_with(
    bytes: &[u8],
    budget: &MemoryBudget,
) -> Result<(Prepared, Vec<f32>), ClassifyError> {
    let mut out = vec![0f32; TENSOR_LEN];
    let p = Preprocessor::new().prepare(
        bytes,
        &ImageLimits::default(),
        budget,
        &Cancel::never(),
        &mut out,
    )?;
    Ok((p, out))
}

fn prepare(bytes: &[u8]) -> Result<(Prepared, Vec<f32>), ClassifyError> {
    prepare_with(bytes, &MemoryBudget::new(256 << 20))
}

#[track_caller]
fn assert_code(r: Result<(Prepared, Vec<f32>), ClassifyError>, want: &str) {
    match r {
        Ok((p, _)) => panic!("expected {want}, got a result: {p:?}"),
        Err(e) => assert_eq!(e.code().as_str(), want, "{e}"),
    }
}

pub(crate) fn png_rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub(crate) fn jpeg_rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A PNG written row by row (so that a large one never exists in memory here).
fn png_streamed(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    row: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.set_compression(png::Compression::Fastest);
        let mut writer = enc.write_header().unwrap();
        let mut stream = writer.stream_writer().unwrap();
        for _ in 0..h {
            stream.write_all(row).unwrap();
        }
        stream.finish().unwrap();
    }
    out
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn read_f32(name: &str) -> Vec<f32> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
    .chunks_exact(4)
    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    .collect()
}

#[test]
fn tensors_match_the_reference_pipeline() {
    // The reference tensors were made by Pillow (full decode, bilinear resize, centre crop).
    // One step of 1/128 is one grey level.
    for (file, stem, path) in [
        ("coffee.png", "coffee", DecoderKind::PngRows),
        ("chelsea.png", "chelsea", DecoderKind::PngRows),
        ("astronaut.png", "astronaut", DecoderKind::PngRows),
        ("grace_hopper.jpg", "grace_hopper", DecoderKind::JpegFull),
        ("rocket.jpg", "rocket", DecoderKind::JpegFull),
    ] {
        let (p, got) = prepare(&fixture(file)).unwrap();
        assert_eq!(p.decoder, path, "{file}");
        let want = read_f32(&format!("{stem}.input.f32"));
        let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().copied().fold(0f32, f32::max);
        // PNG: same pixels, same kernel; only fixed-point rounding differs. JPEG: another IDCT,
        // and a large one is scaled in the DCT domain (as Pillow's draft mode), which is sharper
        // than a bilinear reduction at edges; the agreement test checks what that does to labels.
        let (mean_limit, max_limit) = match path {
            DecoderKind::PngRows => (0.5 / 128.0, 2.5 / 128.0),
            DecoderKind::JpegFull => (1.0 / 128.0, 16.0 / 128.0),
            _ => (4.0 / 128.0, 96.0 / 128.0),
        };
        eprintln!(
            "{file}: mean |diff| {:.3} levels, max {:.1}",
            mean * 128.0,
            max * 128.0
        );
        assert!(
            mean <= mean_limit && max <= max_limit,
            "{file}: mean |diff| {:.3} levels, max {:.1} levels",
            mean * 128.0,
            max * 128.0
        );
    }
}

#[test]
fn a_uniform_image_gives_a_uniform_tensor() {
    let (_, t) = prepare(&png_rgb(300, 400, |_, _| [10, 200, 30])).unwrap();
    let plane = 224 * 224;
    assert!(t[..plane]
        .iter()
        .all(|v| (v - (10.0 - 127.0) / 128.0).abs() < 1e-6));
    assert!(t[plane..2 * plane]
        .iter()
        .all(|v| (v - (200.0 - 127.0) / 128.0).abs() < 1e-6));
    assert!(t[2 * plane..]
        .iter()
        .all(|v| (v - (30.0 - 127.0) / 128.0).abs() < 1e-6));
}

/// Left half red, right half blue.
fn halves(x: u32, w: u32) -> [u8; 3] {
    if x < w / 2 {
        [250, 0, 0]
    } else {
        [0, 0, 250]
    }
}

#[test]
fn large_jpegs_are_decoded_at_reduced_scale_and_exif_orientation_applies() {
    let big = jpeg_rgb(2400, 1200, |x, _| halves(x, 2400));
    let (p, t) = prepare(&big).unwrap();
    // 1/2 keeps the shorter side at 600 >= 5/4 x 256; 1/4 would give 300.
    assert_eq!(
        (p.decoder, p.decoded),
        (DecoderKind::JpegScaled, (1200, 600))
    );
    // A photo-sized one goes down to 1/8 while its shorter side stays at 320 or more.
    let (p, _) = prepare(&jpeg_rgb(2560, 2560, |x, _| halves(x, 2560))).unwrap();
    assert_eq!(
        (p.decoder, p.decoded),
        (DecoderKind::JpegScaled, (320, 320))
    );
    let (p, _) = prepare(&jpeg_rgb(2552, 2552, |x, _| halves(x, 2552))).unwrap();
    assert_eq!(p.decoded, (638, 638));
    let red = |t: &[f32], x: usize, y: usize| t[y * 224 + x] > 0.5;
    assert!(red(&t, 10, 112) && !red(&t, 213, 112));
    // EXIF 6 = shown rotated 90° clockwise: the left half (red) is now on top.
    let (p, t) = prepare(&insert_exif_orientation(&big, 6)).unwrap();
    assert_eq!(p.decoded, (1200, 600));
    assert!(red(&t, 112, 10) && !red(&t, 112, 213));
    // EXIF 8 = 270°: red at the bottom. EXIF 2 = mirrored: red on the right.
    let (_, t) = prepare(&insert_exif_orientation(&big, 8)).unwrap();
    assert!(!red(&t, 112, 10) && red(&t, 112, 213));
    let (_, t) = prepare(&insert_exif_orientation(&big, 2)).unwrap();
    assert!(!red(&t, 10, 112) && red(&t, 213, 112));
    // Small JPEGs are decoded whole.
    let (p, _) = prepare(&jpeg_rgb(400, 300, |x, _| halves(x, 400))).unwrap();
    assert_eq!((p.decoder, p.decoded), (DecoderKind::JpegFull, (400, 300)));
}

#[test]
fn thin_images_cost_what_a_photo_costs() {
    // 12000x1 used to be resized to 3,072,000x256 (2.4 GB). Now only the pixel under the
    // centre square is read; the row itself is all the memory a decode needs.
    for (w, h) in [(12_000, 1), (1, 12_000), (12_000, 3)] {
        let bytes = png_rgb(w, h, |x, y| [(x % 251) as u8, (y % 251) as u8, 7]);
        let budget = MemoryBudget::new(1 << 20);
        let (p, t) = prepare_with(&bytes, &budget).unwrap();
        assert_eq!(p.decoder, DecoderKind::PngRows);
        assert!(
            p.decoded.0 <= 16 && p.decoded.1 <= 16,
            "{w}x{h}: {:?}",
            p.decoded
        );
        assert!(t.iter().all(|v| v.is_finite()));
        assert_eq!(budget.in_use(), 0);
    }
    // The same through the generic (whole-image) path: a thin BMP.
    let img = RgbImage::from_pixel(12_000, 2, image::Rgb([1, 2, 3]));
    let mut bmp = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut bmp)
        .write_image(img.as_raw(), 12_000, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    let (p, _) = prepare(&bmp).unwrap();
    assert_eq!((p.decoder, p.decoded), (DecoderKind::Full, (12_000, 2)));
}

#[test]
fn a_large_16_bit_png_is_decoded_in_a_few_megabytes() {
    // A 3000x2000 RGBA 16-bit PNG is 48 MB of pixels; its rows are streamed and only the
    // box-averaged centre is kept, so a 4 MiB budget is enough. (The 10000x10000 case of the
    // issue, 800 MB of pixels in a 777 KB file, is in bench/hardening.sh.)
    let row: Vec<u8> = (0..3000 * 8).map(|i| (i % 7 * 30) as u8).collect();
    let bytes = png_streamed(
        3000,
        2000,
        png::ColorType::Rgba,
        png::BitDepth::Sixteen,
        &row,
    );
    assert!(bytes.len() < 2 << 20, "{}", bytes.len());
    let budget = MemoryBudget::new(4 << 20);
    let (p, _) = prepare_with(&bytes, &budget).unwrap();
    assert_eq!(p.decoder, DecoderKind::PngRows);
    assert!(p.decoded.0 < 1024 && p.decoded.1 < 1024, "{:?}", p.decoded);
}

/// A baseline TIFF of `w`x`h` 16-bit RGBA whose strips all point at the same zero bytes: a
/// small file that declares a huge image.
fn tiff_rgba16(w: u32, h: u32) -> Vec<u8> {
    let row = w as usize * 8;
    let mut out = b"II*\0".to_vec();
    let data_at = 8u32;
    out.extend_from_slice(&0u32.to_le_bytes()); // IFD offset, patched below
    out.extend(std::iter::repeat_n(0u8, row));
    let offsets_at = out.len() as u32;
    for _ in 0..h {
        out.extend_from_slice(&data_at.to_le_bytes());
    }
    let counts_at = out.len() as u32;
    for _ in 0..h {
        out.extend_from_slice(&(row as u32).to_le_bytes());
    }
    let bits_at = out.len() as u32;
    for _ in 0..4 {
        out.extend_from_slice(&16u16.to_le_bytes());
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    let ifd_at = out.len() as u32;
    out[4..8].copy_from_slice(&ifd_at.to_le_bytes());
    // (tag, type, count, value): SHORT = 3, LONG = 4
    let tags: [(u16, u16, u32, u32); 11] = [
        (256, 4, 1, w),          // ImageWidth
        (257, 4, 1, h),          // ImageLength
        (258, 3, 4, bits_at),    // BitsPerSample 16,16,16,16
        (259, 3, 1, 1),          // Compression: none
        (262, 3, 1, 2),          // Photometric: RGB
        (273, 4, h, offsets_at), // StripOffsets
        (277, 3, 1, 4),          // SamplesPerPixel
        (278, 4, 1, 1),          // RowsPerStrip
        (279, 4, h, counts_at),  // StripByteCounts
        (284, 3, 1, 1),          // PlanarConfiguration: chunky
        (338, 3, 1, 2),          // ExtraSamples: unassociated alpha
    ];
    out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
    for (tag, ty, count, value) in tags {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

#[test]
fn a_huge_tiff_is_checked_without_decoding_and_refused_as_too_large() {
    let l = ImageLimits::default();
    // 10000x10000 16-bit RGBA = 800 MB of pixels, more than the default budget (640 MiB); the
    // decoder's own copy of them and the RGB conversion make it 1900 MB.
    let bytes = tiff_rgba16(10_000, 10_000);
    assert!(bytes.len() < 1 << 20);
    // The upload check reads the structure only (it used to decode all 800 MB).
    let probed = imageio::check(&bytes, &l).unwrap();
    assert_eq!((probed.width, probed.height), (10_000, 10_000));
    let e = prepare_with(&bytes, &MemoryBudget::new(640 << 20)).unwrap_err();
    assert_eq!(e.code().as_str(), "image_too_large", "{e}");
    assert!(e.to_string().contains("needs 1812 MiB"), "{e}");
    // A small one of the same kind decodes.
    let (p, _) = prepare(&tiff_rgba16(300, 200)).unwrap();
    assert_eq!((p.decoder, p.decoded), (DecoderKind::Full, (300, 200)));
    // A strip that points past the end of the file is found by the upload check.
    let mut cut = tiff_rgba16(300, 200);
    let n = cut.len() as u32;
    // The strip offsets start right after the 300*8 bytes of the shared strip.
    let first_offset = 8 + 300 * 8;
    cut[first_offset..first_offset + 4].copy_from_slice(&n.to_le_bytes());
    assert_eq!(
        imageio::check(&cut, &l).unwrap_err().code().as_str(),
        "image_corrupt"
    );
}

/// Sets a JPEG's frame size (the first SOFn segment).
fn patch_jpeg_size(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let mut pos = 2;
    while pos + 4 < out.len() {
        let marker = out[pos + 1];
        let len = usize::from(u16::from_be_bytes([out[pos + 2], out[pos + 3]]));
        if (0xC0..=0xC2).contains(&marker) {
            out[pos + 5..pos + 7].copy_from_slice(&h.to_be_bytes());
            out[pos + 7..pos + 9].copy_from_slice(&w.to_be_bytes());
            return out;
        }
        pos += 2 + len;
    }
    panic!("no SOF");
}

/// Sets a PNG's IHDR size and fixes its CRC.
fn patch_png_size(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    out[16..20].copy_from_slice(&w.to_be_bytes());
    out[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
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
fn headers_that_declare_more_than_the_data_holds_are_corrupt() {
    let l = ImageLimits::default();
    let noisy = |x: u32, y: u32| {
        [
            (x * 37 % 256) as u8,
            (y * 91 % 256) as u8,
            ((x ^ y) * 13 % 256) as u8,
        ]
    };
    // A 16x16 JPEG whose header says 10000x10000: refused by the upload check and by decoding
    // (a decoder would fill the missing 99.99 % with grey).
    let liar = patch_jpeg_size(&jpeg_rgb(16, 16, noisy), 10_000, 10_000);
    let e = imageio::check(&liar, &l).unwrap_err();
    assert_eq!(e.code().as_str(), "image_corrupt", "{e}");
    assert_code(prepare(&liar), "image_corrupt");
    // PNG: 16 rows of data, 10000 declared.
    let png = patch_png_size(&png_rgb(16, 16, noisy), 16, 10_000);
    assert_code(prepare(&png), "image_corrupt");
    // Honest files of the same shapes pass.
    assert!(imageio::check(&jpeg_rgb(64, 128, noisy), &l).is_ok());
    assert!(prepare(&jpeg_rgb(64, 128, noisy)).is_ok());
}

/// A progressive JPEG (made by libjpeg-turbo's encoder through the mozjpeg crate).
fn progressive_jpeg(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(w as usize, h as usize);
    c.set_quality(90.0);
    c.set_progressive_mode();
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(img.as_raw()).unwrap();
    started.finish().unwrap()
}

#[test]
fn progressive_jpegs_decode_and_their_headers_are_checked_too() {
    let bytes = progressive_jpeg(1600, 1200, |x, _| halves(x, 1600));
    assert!(
        bytes.windows(2).any(|w| w == [0xFF, 0xC2]),
        "not progressive"
    );
    let (p, t) = prepare(&bytes).unwrap();
    // 1200 / 2 = 600 >= 320, 1200 / 4 = 300 is not: half scale.
    assert_eq!(
        (p.decoder, p.decoded),
        (DecoderKind::JpegScaled, (800, 600))
    );
    assert!(t[112 * 224 + 10] > 0.5 && t[112 * 224 + 213] < 0.0);
    let liar = patch_jpeg_size(&progressive_jpeg(16, 16, halves16), 10_000, 10_000);
    assert_code(prepare(&liar), "image_corrupt");
    assert_eq!(
        imageio::check(&liar, &ImageLimits::default())
            .unwrap_err()
            .code()
            .as_str(),
        "image_corrupt"
    );
}

fn halves16(x: u32, _: u32) -> [u8; 3] {
    halves(x, 16)
}

fn busy(x: u32, y: u32) -> [u8; 3] {
    [
        (x * 37 % 256) as u8,
        (y * 91 % 256) as u8,
        ((x ^ y) * 13 % 256) as u8,
    ]
}

/// Where a JPEG's last scan's entropy-coded data starts (just after its SOS segment).
fn scan_start(jpeg: &[u8]) -> usize {
    let sos = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]))
}

/// The JPEG with its last scan's data cut to `keep` bytes and the end marker put back, as a
/// file cut short and "repaired" would be.
fn cut_scan(jpeg: &[u8], keep: usize) -> Vec<u8> {
    let mut out = jpeg[..scan_start(jpeg) + keep].to_vec();
    while out.last() == Some(&0xFF) {
        out.pop(); // a lone 0xFF would start a marker
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

#[test]
fn scan_data_that_ends_before_the_frame_is_covered_is_corrupt() {
    let l = ImageLimits::default();
    let photo = jpeg_rgb(640, 480, busy);
    assert!(prepare(&photo).is_ok(), "a whole JPEG decodes");
    let scan = photo.len() - 2 - scan_start(&photo);

    // Half of the scan data, with the end marker put back: the upload check cannot tell (there
    // are bytes enough for the blocks), but libjpeg runs out of data before the last rows, and
    // that is corrupt rather than a picture padded with grey.
    let half = cut_scan(&photo, scan / 2);
    assert!(imageio::check(&half, &l).is_ok());
    assert_code(prepare(&half), "image_corrupt");
    // Slightly truncated (the last 64 bytes of scan data gone, a few blocks): corrupt too. A
    // file is classified only when its data covers the whole frame.
    assert_code(prepare(&cut_scan(&photo, scan - 64)), "image_corrupt");
    // Cut without an end marker: refused by the upload check already, and by decoding.
    let cut = &photo[..photo.len() * 2 / 3];
    assert_eq!(
        imageio::check(cut, &l).unwrap_err().code().as_str(),
        "image_corrupt"
    );
    assert_code(prepare(cut), "image_corrupt");

    // A header that lies by less than the upload check's one bit per block can see: 16×16
    // pixels of data, 160×160 declared.
    let liar = patch_jpeg_size(&jpeg_rgb(16, 16, busy), 160, 160);
    assert!(
        imageio::check(&liar, &l).is_ok(),
        "within one bit per block"
    );
    assert_code(prepare(&liar), "image_corrupt");
    // And a large lie decoded at reduced scale (DCT scaling reads every block all the same).
    let big = jpeg_rgb(2400, 1800, busy);
    assert!(prepare(&big).is_ok());
    let big_scan = big.len() - 2 - scan_start(&big);
    assert_code(prepare(&cut_scan(&big, big_scan * 3 / 4)), "image_corrupt");

    // Progressive: every scan is read before the first row comes out.
    let progressive = progressive_jpeg(640, 480, busy);
    assert!(prepare(&progressive).is_ok());
    let last_scan = progressive.len() - 2 - scan_start(&progressive);
    assert_code(
        prepare(&cut_scan(&progressive, last_scan / 2)),
        "image_corrupt",
    );

    // Stray bytes after the last block (some cameras write them) are only a warning to
    // libjpeg: the image is whole, and it is classified.
    let mut stray = photo[..photo.len() - 2].to_vec();
    stray.extend_from_slice(&[0x12, 0x34, 0x56, 0xFF, 0xD9]);
    assert!(prepare(&stray).is_ok());
}

#[test]
fn a_cancelled_preparation_stops_with_timeout() {
    let bytes = png_rgb(640, 480, |x, y| [(x % 256) as u8, (y % 256) as u8, 0]);
    let mut out = vec![0f32; TENSOR_LEN];
    let (cancel, handle) = Cancel::never().with_flag();
    handle.cancel();
    let e = Preprocessor::new()
        .prepare(
            &bytes,
            &ImageLimits::default(),
            &MemoryBudget::new(1 << 30),
            &cancel,
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.code().as_str(), "timeout", "{e}");
    // A decode waiting for memory gives up at its deadline too.
    let budget = MemoryBudget::new(1 << 20);
    let _all = budget.acquire(1 << 20, &Cancel::never()).unwrap();
    let cancel = Cancel::after(std::time::Duration::from_millis(20));
    let e = Preprocessor::new()
        .prepare(&bytes, &ImageLimits::default(), &budget, &cancel, &mut out)
        .unwrap_err();
    assert_eq!(e.code().as_str(), "timeout", "{e}");
}

/// Puts an APP1 Exif segment holding only an Orientation tag right after SOI.
fn insert_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
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

/// An uncompressed-size `side`² RGBA8 TIFF of one flat colour, PackBits-compressed, one row per
/// strip, every strip the same bytes (so the file stays a few kilobytes per thousand rows).
fn flat_rgba_tiff(side: u32) -> Vec<u8> {
    let row_bytes = side as usize * 4;
    let mut row = Vec::new();
    let mut left = row_bytes;
    while left > 0 {
        let run = left.min(128);
        row.push((1 - run as i32) as i8 as u8); // "repeat the next byte `run` times"
        row.push(0x80);
        left -= run;
    }
    let entries: [(u16, u16, u32, u32); 11] = [
        (256, 4, 1, side),  // ImageWidth
        (257, 4, 1, side),  // ImageLength
        (258, 3, 4, 0),     // BitsPerSample: 8,8,8,8 (at `bits`)
        (259, 3, 1, 32773), // Compression: PackBits
        (262, 3, 1, 2),     // PhotometricInterpretation: RGB
        (273, 4, side, 0),  // StripOffsets (at `offsets`)
        (277, 3, 1, 4),     // SamplesPerPixel
        (278, 4, 1, 1),     // RowsPerStrip
        (279, 4, side, 0),  // StripByteCounts (at `counts`)
        (284, 3, 1, 1),     // PlanarConfiguration: interleaved
        (338, 3, 1, 2),     // ExtraSamples: unassociated alpha
    ];
    let ifd_len = 2 + entries.len() * 12 + 4;
    let bits = 8 + ifd_len as u32;
    let offsets = bits + 8;
    let counts = offsets + 4 * side;
    let data = counts + 4 * side;
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        let value = match tag {
            258 => bits,
            273 => offsets,
            279 => counts,
            _ => value,
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&[8, 0, 8, 0, 8, 0, 8, 0]);
    for _ in 0..side {
        out.extend_from_slice(&data.to_le_bytes());
    }
    for _ in 0..side {
        out.extend_from_slice(&(row.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&row);
    out
}

/// This process's peak resident size so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Set in the child process of the test below: the TIFF it decodes.
const PEAK_CHILD: &str = "IMGCLASS_TEST_PEAK_TIFF";

#[test]
fn a_whole_decode_stays_within_the_decode_budget_at_its_peak() {
    if let Ok(path) = std::env::var(PEAK_CHILD) {
        // The child: decode under the process-wide budget and report how far the peak grew.
        let bytes = std::fs::read(path).unwrap();
        let mut out = vec![0f32; TENSOR_LEN];
        let mut pre = Preprocessor::new();
        let before = peak_rss();
        let prepared = pre
            .prepare(
                &bytes,
                &ImageLimits::default(),
                MemoryBudget::global(),
                &Cancel::never(),
                &mut out,
            )
            .unwrap();
        let grew = peak_rss().saturating_sub(before);
        assert_eq!(prepared.decoder, DecoderKind::Full);
        assert_eq!(MemoryBudget::global().in_use(), 0);
        println!("peak-growth={grew}");
        return;
    }
    // A 4000² RGBA8 TIFF (61 MiB of pixels) under a 96 MiB budget: admitted, and its decode
    // must not hold more than the budget at its peak (the decoder's own buffer and the copy
    // out of it used to make that twice the pixels). The same proportions as a 10000² one
    // under the default 640 MiB, at a sixth of the cost.
    let budget: u64 = 96 << 20;
    let path = std::env::temp_dir().join(format!("imgclass-peak-{}.tiff", std::process::id()));
    std::fs::write(&path, flat_rgba_tiff(4000)).unwrap();
    let run = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "images::a_whole_decode_stays_within_the_decode_budget_at_its_peak",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PEAK_CHILD, &path)
        .env("IMGCLASS_DECODE_BUDGET", budget.to_string())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let grew: u64 = stdout
        .split_once("peak-growth=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no measurement: {stdout}"));
    eprintln!(
        "the decode grew the peak by {} MiB (budget {} MiB)",
        grew >> 20,
        budget >> 20
    );
    assert!(
        grew <= budget,
        "the decode grew the peak by {grew} bytes, over the {budget}-byte budget"
    );
}
