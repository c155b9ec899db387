//! Reading and writing images: decode limits against decompression bombs, EXIF orientation,
//! grayscale → RGB, 8/16/32-bit inputs at full precision, alpha carried through, 8/16-bit PNG
//! and JPEG out.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{ColorType, DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageReader, Rgba32FImage};
use neural_style_protocol::message::PixelFormat;
use tch::{Kind, Tensor};

/// The smallest side the network accepts (four 2×2 poolings before relu5_1).
pub const MIN_SIDE: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open image {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot decode image {path}: {reason}. Is it a complete PNG/JPEG/WebP/TIFF/GIF/BMP file?")]
    Decode { path: PathBuf, reason: String },
    #[error("image {path} is too large: {reason}. Shrink it first or raise --max-pixels")]
    TooLarge { path: PathBuf, reason: String },
    #[error("image {path} is {width}×{height} at the working size; both sides must be at least {MIN_SIDE} px (use a larger --size)")]
    TooSmall { path: PathBuf, width: u32, height: u32 },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("unsupported output format for {path}: use a .png, .jpg or .jpeg name")]
    OutputFormat { path: PathBuf },
}

/// Limits applied before decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Largest width × height accepted.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_side: 16384, max_pixels: 64 * 1024 * 1024 }
    }
}

/// A decoded image, RGBA f32 in `[0,1]` (alpha 1 when the file has none).
#[derive(Clone)]
pub struct Picture {
    pub rgba: Rgba32FImage,
    pub has_alpha: bool,
    /// The file had more than 8 bits per channel.
    pub high_precision: bool,
}

impl Picture {
    pub fn width(&self) -> u32 {
        self.rgba.width()
    }
    pub fn height(&self) -> u32 {
        self.rgba.height()
    }

    /// Decodes an image file (format guessed from content, extension as fallback).
    pub fn load(path: &Path, limits: DecodeLimits) -> Result<Self, ImageError> {
        let file = std::fs::File::open(path).map_err(|source| ImageError::Open { path: path.into(), source })?;
        let reader = ImageReader::new(std::io::BufReader::new(file));
        let reader = match image::ImageFormat::from_path(path) {
            Ok(fmt) => {
                let mut r = reader;
                r.set_format(fmt);
                r
            }
            Err(_) => reader,
        };
        Self::decode(reader.with_guessed_format().map_err(|e| decode_err(path, e))?, path, limits)
    }

    /// Decodes encoded image bytes (`label` names them in errors).
    pub fn from_bytes(bytes: &[u8], label: &Path, limits: DecodeLimits) -> Result<Self, ImageError> {
        let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| decode_err(label, e))?;
        Self::decode(reader, label, limits)
    }

    fn decode<R: std::io::BufRead + std::io::Seek>(
        mut reader: ImageReader<R>,
        path: &Path,
        limits: DecodeLimits,
    ) -> Result<Self, ImageError> {
        let mut l = image::Limits::default();
        l.max_image_width = Some(limits.max_side);
        l.max_image_height = Some(limits.max_side);
        // RGBA f32 of the largest allowed image, plus the decoder's own buffer.
        l.max_alloc = Some(limits.max_pixels.saturating_mul(16 + 8));
        reader.limits(l);
        let mut decoder = reader.into_decoder().map_err(|e| classify(path, e))?;
        let (w, h) = decoder.dimensions();
        if u64::from(w) * u64::from(h) > limits.max_pixels {
            return Err(ImageError::TooLarge {
                path: path.into(),
                reason: format!("{w}×{h} exceeds the limit of {} pixels", limits.max_pixels),
            });
        }
        if w == 0 || h == 0 {
            return Err(ImageError::Decode { path: path.into(), reason: format!("it declares {w}×{h} pixels") });
        }
        let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify(path, e))?;
        img.apply_orientation(orientation);
        let color = img.color();
        let high_precision = matches!(
            color,
            ColorType::L16
                | ColorType::La16
                | ColorType::Rgb16
                | ColorType::Rgba16
                | ColorType::Rgb32F
                | ColorType::Rgba32F
        );
        Ok(Self { rgba: img.to_rgba32f(), has_alpha: color.has_alpha(), high_precision })
    }

    /// Raw RGBA pixels (8-bit, 16-bit little-endian or f32 little-endian samples).
    pub fn from_raw(format: PixelFormat, width: u32, height: u32, bytes: &[u8]) -> Result<Self, String> {
        let n = width as usize * height as usize * 4;
        let samples: Vec<f32> = match format {
            PixelFormat::Rgba8 => bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
            PixelFormat::Rgba16 => {
                bytes.chunks_exact(2).map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])) / 65535.0).collect()
            }
            PixelFormat::Rgba32f => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .map(|v| if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 })
                .collect(),
            PixelFormat::Encoded => return Err("encoded bytes are not raw pixels".into()),
        };
        if samples.len() != n {
            return Err(format!("{width}×{height} RGBA needs {n} samples, got {}", samples.len()));
        }
        let rgba = Rgba32FImage::from_raw(width, height, samples).ok_or("pixel buffer of the wrong size")?;
        Ok(Self { rgba, has_alpha: true, high_precision: format != PixelFormat::Rgba8 })
    }

    /// Resized so that the longer side is `size` (no resampling when it already is).
    pub fn resized_longest(&self, size: u32) -> Self {
        let (nw, nh) = longest_side_dims(self.width(), self.height(), size);
        self.resized(nw, nh)
    }

    /// Resized to exactly w × h (Lanczos3, values clamped to `[0,1]`).
    pub fn resized(&self, w: u32, h: u32) -> Self {
        if (w, h) == (self.width(), self.height()) {
            return self.clone();
        }
        let mut rgba = image::imageops::resize(&self.rgba, w, h, FilterType::Lanczos3);
        rgba.pixels_mut().for_each(|p| p.0.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0)));
        Self { rgba, ..self.clone() }
    }

    /// Checks that the network can take it.
    pub fn check_min_size(&self, path: &Path) -> Result<(), ImageError> {
        if self.width() < MIN_SIDE || self.height() < MIN_SIDE {
            return Err(ImageError::TooSmall { path: path.into(), width: self.width(), height: self.height() });
        }
        Ok(())
    }

    /// RGB as a `[1,3,H,W]` f32 CPU tensor.
    pub fn rgb_tensor(&self) -> Tensor {
        let (w, h) = (self.width() as i64, self.height() as i64);
        Tensor::from_slice(self.rgba.as_raw())
            .view([h, w, 4])
            .narrow(2, 0, 3)
            .permute([2, 0, 1])
            .unsqueeze(0)
            .contiguous()
    }

    /// Alpha channel, row-major.
    pub fn alpha(&self) -> Vec<f32> {
        self.rgba.pixels().map(|p| p.0[3]).collect()
    }
}

/// The size of a w × h image scaled so that its longer side is `size` (aspect kept, rounded).
pub fn longest_side_dims(w: u32, h: u32, size: u32) -> (u32, u32) {
    let longest = w.max(h);
    if longest == size {
        return (w, h);
    }
    let scale = f64::from(size) / f64::from(longest);
    (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1))
}

fn decode_err(path: &Path, e: impl std::fmt::Display) -> ImageError {
    ImageError::Decode { path: path.into(), reason: e.to_string() }
}

fn classify(path: &Path, e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(l) => ImageError::TooLarge { path: path.into(), reason: l.to_string() },
        other => decode_err(path, other),
    }
}

/// Output file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
}

impl OutputFormat {
    /// The format a file name asks for.
    pub fn from_path(path: &Path) -> Result<Self, ImageError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            _ => Err(ImageError::OutputFormat { path: path.into() }),
        }
    }
}

/// An image ready to encode: RGB `[1,3,H,W]` in `[0,1]`, optional alpha (row-major, same size).
pub struct Output<'a> {
    pub rgb: &'a Tensor,
    pub alpha: Option<&'a [f32]>,
    /// 16 bits per channel (PNG only).
    pub sixteen_bit: bool,
}

impl Output<'_> {
    /// Encodes to bytes in `format`.
    pub fn encode(&self, format: OutputFormat) -> Result<Vec<u8>, String> {
        let (_, _, h, w) = self.rgb.size4().map_err(|e| e.to_string())?;
        let hwc = self.rgb.squeeze_dim(0).permute([1, 2, 0]).clamp(0.0, 1.0).to_kind(Kind::Float).contiguous();
        let rgb: Vec<f32> =
            Vec::<f32>::try_from(hwc.to_device(tch::Device::Cpu).view([-1])).map_err(|e| e.to_string())?;
        let alpha = self.alpha.filter(|_| format == OutputFormat::Png);
        let channels = if alpha.is_some() { 4 } else { 3 };
        let mut samples = Vec::with_capacity((w * h) as usize * channels);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            samples.extend_from_slice(px);
            if let Some(a) = alpha {
                samples.push(a[i]);
            }
        }
        let (w, h) = (w as u32, h as u32);
        let mut out = Vec::new();
        match format {
            OutputFormat::Png if self.sixteen_bit => {
                let bytes: Vec<u8> =
                    samples.iter().flat_map(|v| ((v * 65535.0).round() as u16).to_ne_bytes()).collect();
                let ct = if channels == 4 { ExtendedColorType::Rgba16 } else { ExtendedColorType::Rgb16 };
                PngEncoder::new(&mut out).write_image(&bytes, w, h, ct).map_err(|e| e.to_string())?;
            }
            _ => {
                let bytes: Vec<u8> = samples.iter().map(|v| (v * 255.0).round() as u8).collect();
                let ct = if channels == 4 { ExtendedColorType::Rgba8 } else { ExtendedColorType::Rgb8 };
                match format {
                    OutputFormat::Png => PngEncoder::new(&mut out).write_image(&bytes, w, h, ct),
                    OutputFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, 95).write_image(&bytes, w, h, ct),
                }
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(out)
    }

    /// Writes atomically (temporary name in the same folder, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        let format = OutputFormat::from_path(path)?;
        let write_err = |reason: String| ImageError::Write { path: path.into(), reason };
        let bytes = self.encode(format).map_err(write_err)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| write_err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_err(e.to_string())
        })
    }
}

/// RGB `[1,3,H,W]` in `[0,1]` (+ optional alpha) as raw RGBA bytes in `format` (alpha 1 when none).
pub fn encode_raw(rgb: &Tensor, alpha: Option<&[f32]>, format: PixelFormat) -> Vec<u8> {
    let hwc = rgb.squeeze_dim(0).permute([1, 2, 0]).clamp(0.0, 1.0).to_kind(Kind::Float).contiguous();
    let v: Vec<f32> = Vec::<f32>::try_from(hwc.to_device(tch::Device::Cpu).view([-1])).expect("f32 pixels");
    let pixels = v.len() / 3;
    let mut out = Vec::with_capacity(pixels * format.bytes_per_pixel().unwrap_or(4));
    for i in 0..pixels {
        let a = alpha.map(|a| a[i]).unwrap_or(1.0);
        for s in [v[3 * i], v[3 * i + 1], v[3 * i + 2], a] {
            match format {
                PixelFormat::Rgba16 => out.extend_from_slice(&((s * 65535.0).round() as u16).to_le_bytes()),
                PixelFormat::Rgba32f => out.extend_from_slice(&s.to_le_bytes()),
                _ => out.push((s * 255.0).round() as u8),
            }
        }
    }
    out
}

/// An RGBA8 preview of an image tensor `[1,3,h,w]` (any scale of a job) as the output of
/// `full` = (width, height) looks: its proportions, longest side at most `size`.
pub fn preview(image: &Tensor, size: u32, full: (u32, u32)) -> (u32, u32, Vec<u8>) {
    let (w, h) = if full.0.max(full.1) > size { longest_side_dims(full.0, full.1, size) } else { full };
    let small = crate::engine::backward::no_grad(|| {
        image.to_kind(Kind::Float).clamp(0.0, 1.0).upsample_bilinear2d([i64::from(h), i64::from(w)], false, None, None)
    });
    (w, h, encode_raw(&small, None, PixelFormat::Rgba8))
}
