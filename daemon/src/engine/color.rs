//! Colour preservation by luminance-only transfer (Gatys et al., "Preserving Color in Neural
//! Artistic Style Transfer", 2016, §2.2): keep the stylized image's luminance Y and take the
//! chroma (I, Q of YIQ) from the content image.

use tch::{Kind, Tensor};

const RGB_TO_YIQ: [f32; 9] = [0.299, 0.587, 0.114, 0.596, -0.274, -0.322, 0.211, -0.523, 0.312];

fn apply(matrix: &Tensor, image: &Tensor) -> Tensor {
    let (b, c, h, w) = image.size4().expect("image is 4-D");
    matrix.matmul(&image.reshape([c, b * h * w])).reshape([b, c, h, w])
}

/// Stylized luminance + content chroma, both `[1,3,H,W]` RGB in `[0,1]`.
pub fn luminance_transfer(stylized: &Tensor, content: &Tensor) -> Tensor {
    let m = Tensor::from_slice(&RGB_TO_YIQ).view([3, 3]).to_kind(Kind::Double).to_device(stylized.device());
    let inv = m.inverse();
    let s = apply(&m, &stylized.to_kind(Kind::Double));
    let c = apply(&m, &content.to_kind(Kind::Double));
    let yiq = Tensor::cat(&[s.narrow(1, 0, 1), c.narrow(1, 1, 2)], 1);
    apply(&inv, &yiq).clamp(0.0, 1.0).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_content_chroma_and_stylized_luminance() {
        tch::manual_seed(1);
        let s = Tensor::rand([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 0.5 + 0.25;
        let c = &s * 0.8 + Tensor::rand([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 0.1 + 0.05;
        let out = luminance_transfer(&s, &c);
        let m = Tensor::from_slice(&RGB_TO_YIQ).view([3, 3]);
        let (yo, ys, yc) = (apply(&m, &out), apply(&m, &s), apply(&m, &c));
        // luminance of the stylized image, chroma of the content (where nothing was clipped)
        let dy = (yo.narrow(1, 0, 1) - ys.narrow(1, 0, 1)).abs().max().double_value(&[]);
        let dc = (yo.narrow(1, 1, 2) - yc.narrow(1, 1, 2)).abs().max().double_value(&[]);
        assert!(dy < 1e-4 && dc < 1e-4, "dy={dy} dc={dc}");
        // identity when content == stylized
        let same = luminance_transfer(&s, &s);
        assert!((same - &s).abs().max().double_value(&[]) < 1e-5);
    }
}
