//! `neural-style samples DIR`: a content and a style image the project draws itself, so that
//! `make run` works on a fresh machine without any image at hand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use image::{Rgb, RgbImage};

#[derive(Args, Debug)]
pub struct SamplesArgs {
    /// Folder to write content.png and style.png into.
    pub dir: PathBuf,
}

/// A landscape: sky gradient, sun, two ranges of hills, a lake.
pub(crate) fn content(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let far = 0.45 + 0.08 * (fx * 9.0).sin() + 0.04 * (fx * 23.0).cos();
        let near = 0.62 + 0.10 * (fx * 5.0 + 1.0).sin();
        let sun = ((fx - 0.72).powi(2) + (fy - 0.22).powi(2)).sqrt() < 0.07;
        let c = if fy > 0.8 {
            [40.0, 90.0 + 60.0 * (fy - 0.8) * 5.0, 160.0 + 10.0 * (fx * 40.0).sin()]
        } else if fy > near {
            [60.0 + 40.0 * fx, 120.0 + 30.0 * (fx * 31.0).sin(), 50.0]
        } else if fy > far {
            [90.0, 110.0, 130.0 - 40.0 * fy]
        } else if sun {
            [250.0, 220.0, 120.0]
        } else {
            [120.0 + 100.0 * fy, 170.0 + 60.0 * fy, 240.0]
        };
        Rgb(c.map(|v| v.clamp(0.0, 255.0) as u8))
    })
}

/// Swirling strokes in a warm/cool palette, loosely after a night-sky painting.
pub(crate) fn style(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32 - 0.5, y as f32 / h as f32 - 0.5);
        let r = (fx * fx + fy * fy).sqrt();
        let a = fy.atan2(fx);
        let swirl = (a * 5.0 + r * 40.0).sin() * 0.5 + 0.5;
        let strokes = ((fx * 60.0 + (fy * 13.0).sin() * 4.0).sin() * 0.5 + 0.5) * 0.35;
        let t = (swirl * 0.65 + strokes).clamp(0.0, 1.0);
        let c = [20.0 + 230.0 * t * t, 40.0 + 160.0 * t, 110.0 + 120.0 * (1.0 - t)];
        Rgb(c.map(|v: f32| v.clamp(0.0, 255.0) as u8))
    })
}

pub fn run(args: SamplesArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)?;
    let c = args.dir.join("content.png");
    let s = args.dir.join("style.png");
    content(384, 256).save(&c)?;
    style(256, 256).save(&s)?;
    eprintln!("wrote {} and {}", c.display(), s.display());
    Ok(ExitCode::SUCCESS)
}
