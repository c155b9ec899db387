//! Awkward and bad inputs: each gives a correct output or a clear error naming the file, with a
//! non-zero exit code, and never a panic.

use std::io::Write;
use std::path::Path;

use image::{ColorType, GenericImageView, ImageEncoder};
use neural_style_e2e::{image, stderr, stylize};

fn expect_error(content: &Path, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = stylize(content, &image("starry_night.jpg"), &out, &["--size", "32", "--iterations", "2"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {}", content.display());
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&content.display().to_string()), "error should name the file: {err}");
    assert!(err.to_lowercase().contains(needle), "error should say {needle:?}: {err}");
    assert!(!out.exists(), "no output on error");
}

#[test]
fn missing_file() {
    expect_error(Path::new("/nonexistent/photo.jpg"), "no such file");
}

#[test]
fn zero_byte_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.jpg");
    std::fs::write(&p, b"").unwrap();
    expect_error(&p, "cannot decode");
}

#[test]
fn text_file_named_png() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.png");
    std::fs::write(&p, "this is not an image\n").unwrap();
    expect_error(&p, "cannot decode");
}

#[test]
fn truncated_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.jpg");
    let bytes = std::fs::read(image("tubingen.jpg")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    // The JPEG decoder either rejects the file (clear error) or decodes the part that is there.
    let out = dir.path().join("o.png");
    let o = stylize(&p, &image("starry_night.jpg"), &out, &["--size", "32", "--iterations", "2"]);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    if o.status.success() {
        assert_eq!(image::open(&out).unwrap().dimensions().0, 32);
    } else {
        assert!(err.contains("cut.jpg") && err.contains("cannot decode"), "{err}");
    }
    // a JPEG cut inside its header is always an error
    std::fs::write(&p, &bytes[..200]).unwrap();
    expect_error(&p, "cannot decode");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    // A valid PNG header declaring 100000 × 100000 pixels (40 GB as RGBA) and almost no data.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0]);
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.png");
    std::fs::write(&p, &png).unwrap();
    expect_error(&p, "too large");
}

#[test]
fn one_pixel_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dot.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30])).save(&p).unwrap();
    // kept at its size it is too small for VGG19: clear error
    let out = dir.path().join("o.png");
    let o = stylize(&p, &image("starry_night.jpg"), &out, &["--size", "0", "--iterations", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("at least 16 px"), "{}", stderr(&o));
    // scaled up to --size it works
    let o = stylize(&p, &image("starry_night.jpg"), &out, &["--size", "32", "--iterations", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().dimensions(), (32, 32));
}

#[test]
fn grayscale_input_gives_rgb_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gray.png");
    image::GrayImage::from_fn(48, 32, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8])).save(&p).unwrap();
    let out = dir.path().join("o.png");
    let o = stylize(&p, &image("starry_night.jpg"), &out, &["--size", "0", "--iterations", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&out).unwrap();
    assert_eq!(img.dimensions(), (48, 32));
    assert_eq!(img.color(), ColorType::Rgb8);
}

#[test]
fn sixteen_bit_png_with_alpha_keeps_depth_and_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("deep.png");
    let src = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_fn(40, 24, |x, y| {
        image::Rgba([(x * 1600) as u16, (y * 2700) as u16, 30_000, ((x + y) * 1000 + 1) as u16])
    });
    image::DynamicImage::ImageRgba16(src.clone()).save(&p).unwrap();
    let out = dir.path().join("o.png");
    let o = stylize(&p, &image("the_scream.jpg"), &out, &["--size", "40", "--iterations", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&out).unwrap();
    assert_eq!(img.color(), ColorType::Rgba16, "16-bit input with alpha → 16-bit RGBA PNG");
    let got = img.to_rgba16();
    for (a, b) in got.pixels().zip(src.pixels()) {
        assert_eq!(a[3], b[3], "alpha carried through unchanged");
    }
    // JPEG output drops alpha and is 8-bit
    let jpg = dir.path().join("o.jpg");
    let o = stylize(&p, &image("the_scream.jpg"), &jpg, &["--size", "40", "--iterations", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&jpg).unwrap().color(), ColorType::Rgb8);
}

#[test]
fn exif_orientation_is_applied() {
    // A 40×20 JPEG with EXIF orientation 6 (rotate 90° clockwise) is a 20×40 portrait.
    let dir = tempfile::tempdir().unwrap();
    let mut jpeg = Vec::new();
    let img = image::RgbImage::from_fn(40, 20, |x, _| image::Rgb([(x * 6) as u8, 100, 50]));
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(img.as_raw(), 40, 20, image::ExtendedColorType::Rgb8)
        .unwrap();
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(&exif);
    let mut with_exif = jpeg[..2].to_vec();
    with_exif.extend_from_slice(&app1);
    with_exif.extend_from_slice(&jpeg[2..]);
    let p = dir.path().join("rotated.jpg");
    std::fs::File::create(&p).unwrap().write_all(&with_exif).unwrap();
    let out = dir.path().join("o.png");
    let o = stylize(&p, &image("starry_night.jpg"), &out, &["--size", "0", "--iterations", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().dimensions(), (20, 40));
}

#[test]
fn bad_output_and_parameters_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let c = image("tubingen.jpg");
    let s = image("starry_night.jpg");
    for (out, flags, needle) in [
        (dir.path().join("o.gif"), vec![], "unsupported output format"),
        (dir.path().join("missing/o.png"), vec![], "does not exist"),
        (dir.path().join("o.png"), vec!["--content-layers", "relu9_9"], "unknown layer"),
        (dir.path().join("o.png"), vec!["--style-weights", "1,2"], "blend weights"),
        (dir.path().join("o.png"), vec!["--style-layer-weights=1,1,-1,1,1"], "non-negative"),
        (dir.path().join("o.png"), vec!["--device", "cuda:7"], "cuda"),
    ] {
        let mut f = vec!["--size", "32", "--iterations", "2"];
        f.extend(flags.iter());
        let o = stylize(&c, &s, &out, &f);
        assert_eq!(o.status.code(), Some(1), "{needle}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "expected {needle:?} in: {}", stderr(&o));
        assert!(!out.exists());
    }
}
