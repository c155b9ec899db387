//! VGG19 `features`, evaluated up to the deepest layer a job needs, returning the activations
//! at named taps (`relu4_2`, `conv1_1`, …). Layers mirror torchvision's `features.N` names.

use tch::{Device, Kind, Tensor};

use super::weights::{vgg19_layers, LayerSpec, Preprocessing, Weights};

/// The pooling between blocks. The paper found average pooling gives slightly nicer images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Avg,
    Max,
}

/// Numeric precision and memory layout of the network (the optimised image, Gram matrices and
/// loss sums always stay f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number type of the network's weights and activations.
    pub dtype: NetDtype,
    /// NHWC-strided activations and weights (libtorch's channels-last convolutions).
    pub channels_last: bool,
}

/// The network's number type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetDtype {
    F32,
    /// bfloat16: f32's range, 8 bits of mantissa; native on recent CPUs and GPUs.
    Bf16,
    /// IEEE half: more mantissa, less range; fast on GPUs, slow on most CPUs.
    F16,
}

/// What users ask for with `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 + channels-last where the hardware has fast bf16 (CUDA; CPUs with AVX512-BF16 or
    /// AMX), f32 elsewhere.
    Auto,
    Fp32,
    Bf16,
    /// IEEE half precision + channels-last (for GPUs; slow on most CPUs).
    Fp16,
}

/// Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16).
pub fn cpu_has_fast_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines().filter(|l| l.starts_with("flags")).any(|l| l.contains(" avx512_bf16") || l.contains(" amx_bf16"))
        })
        .unwrap_or(false)
}

impl Precision {
    /// The layout this precision means on `device`.
    pub fn layout(self, device: Device) -> Layout {
        match self {
            Precision::Fp32 => Layout::FP32,
            Precision::Bf16 => Layout::BF16_NHWC,
            Precision::Fp16 => Layout { dtype: NetDtype::F16, channels_last: true },
            Precision::Auto if device.is_cuda() || cpu_has_fast_bf16() => Layout::BF16_NHWC,
            Precision::Auto => Layout::FP32,
        }
    }
}

impl Layout {
    pub const FP32: Layout = Layout { dtype: NetDtype::F32, channels_last: false };
    pub const BF16_NHWC: Layout = Layout { dtype: NetDtype::Bf16, channels_last: true };

    /// Whether the network runs below f32.
    pub fn reduced(&self) -> bool {
        self.dtype != NetDtype::F32
    }

    /// Bytes per activation or weight element.
    pub fn element_bytes(&self) -> u64 {
        if self.reduced() {
            2
        } else {
            4
        }
    }

    /// A short name for logs and summaries: `fp32`, `bf16+nhwc`, …
    pub fn name(&self) -> String {
        let p = match self.dtype {
            NetDtype::F32 => "fp32",
            NetDtype::Bf16 => "bf16",
            NetDtype::F16 => "fp16",
        };
        if self.channels_last {
            format!("{p}+nhwc")
        } else {
            p.to_string()
        }
    }

    /// The activations' element kind.
    pub fn kind(&self) -> Kind {
        match self.dtype {
            NetDtype::F32 => Kind::Float,
            NetDtype::Bf16 => Kind::BFloat16,
            NetDtype::F16 => Kind::Half,
        }
    }
}

/// A 3×3 convolution (`features.N.weight`, `features.N.bias`).
struct Conv2d {
    weight: Tensor,
    bias: Tensor,
}

impl Conv2d {
    fn load(weights: &Weights, index: usize, device: Device, layout: Layout) -> Self {
        let get = |suffix: &str| weights.tensors[&format!("features.{index}.{suffix}")].shallow_clone();
        let weight = to_layout(&get("weight").to_device(device), layout).set_requires_grad(false);
        let bias = get("bias").to_device(device).to_kind(layout.kind()).set_requires_grad(false);
        Self { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        if x.device().is_cuda() {
            // cuDNN in the engine's benchmark mode (see device::set_cudnn_benchmark: until
            // 2026-11-27 this argument was always true, so the forward pass autotuned every new
            // shape whatever the switch said) and TF32 tensor cores for f32 convolutions; Gram
            // matrices and losses stay in full f32. libtorch's global TF32 switch is not exposed
            // by tch, the per-call argument is.
            x.internal_convolution(
                &self.weight,
                Some(&self.bias),
                [1, 1],
                [1, 1],
                [1, 1],
                false,
                [0, 0],
                1,
                super::device::cudnn_benchmark(),
                false,
                true,
                true,
            )
        } else {
            x.conv2d(&self.weight, Some(&self.bias), [1, 1], [1, 1], [1, 1], 1)
        }
    }
}

enum Layer {
    Conv(Conv2d),
    Relu,
    Pool,
}

/// VGG19 feature extractor with frozen weights on one device.
pub struct Vgg19 {
    layers: Vec<Layer>,
    names: Vec<String>,
    preprocessing: Preprocessing,
    /// The input normalisation's mean and std (`[1,3,1,1]`, f32, on the device: made once, as a
    /// copy to a GPU per evaluation would wait for the device).
    mean: Tensor,
    std: Tensor,
    device: Device,
    layout: Layout,
}

/// Converts a 4-D tensor to the layout's dtype and memory format (NHWC strides when
/// channels-last is on; libtorch keeps that format through convolutions): one copy into a fresh
/// tensor with the layout's strides (differentiable), none when `t` is in the layout already.
pub fn to_layout(t: &Tensor, layout: Layout) -> Tensor {
    let (n, c, h, w) = t.size4().expect("a 4-D tensor");
    let channels_last = layout.channels_last && c > 1;
    let strides = if channels_last { [h * w * c, 1, w * c, c] } else { [c * h * w, h * w, w, 1] };
    if t.kind() == layout.kind() && t.stride() == strides {
        return t.shallow_clone();
    }
    let mut out = Tensor::empty_strided([n, c, h, w], strides, (layout.kind(), t.device()));
    out.copy_(t);
    out
}

impl Vgg19 {
    /// Loads every convolution of `features` onto `device`.
    pub fn load(weights: &Weights, device: Device, layout: Layout) -> Self {
        let specs = vgg19_layers();
        let layers = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| match spec {
                LayerSpec::Conv { .. } => Layer::Conv(Conv2d::load(weights, i, device, layout)),
                LayerSpec::Relu { .. } => Layer::Relu,
                LayerSpec::Pool { .. } => Layer::Pool,
            })
            .collect();
        let names = specs.iter().map(|s| s.name().to_string()).collect();
        let constant = |v: [f32; 3]| Tensor::from_slice(&v).to_device(device).view([1, 3, 1, 1]);
        let (mean, std) = match weights.preprocessing {
            Preprocessing::Torchvision => (constant([0.485, 0.456, 0.406]), constant([0.229, 0.224, 0.225])),
            Preprocessing::Caffe => (constant([103.939, 116.779, 123.68]), constant([1.0, 1.0, 1.0])),
        };
        Self { layers, names, preprocessing: weights.preprocessing, mean, std, device, layout }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The spatial stride of the activations after `features` layer `index`: 2 per pooling
    /// before it.
    pub fn stride(index: usize) -> i64 {
        let pools = vgg19_layers().iter().take(index + 1).filter(|l| matches!(l, LayerSpec::Pool { .. })).count();
        1 << pools
    }

    /// Layer names in `features` order.
    pub fn layer_names(&self) -> &[String] {
        &self.names
    }

    /// Maps an image in `[0,1]` RGB, shape `[1,3,H,W]`, to the network's input space, in the
    /// network's dtype and memory format (one copy, none in fp32). Torchvision's arithmetic,
    /// `(x − mean) / std`: `x · (1/std) − mean/std` would save an operator, but its last bits
    /// take L-BFGS off PyTorch's path (the step-for-step test).
    pub fn normalise(&self, x: &Tensor) -> Tensor {
        let x = match self.preprocessing {
            Preprocessing::Torchvision => (x - &self.mean) / &self.std,
            Preprocessing::Caffe => x.flip([1]) * 255.0 - &self.mean,
        };
        to_layout(&x, self.layout)
    }

    /// Runs the network on an already normalised input and returns the activations (f32) at the
    /// given `features` indices, in the order asked. Stops after the deepest tap.
    pub fn forward_taps(&self, input: &Tensor, taps: &[usize], pooling: Pooling) -> Vec<Tensor> {
        // (to_kind makes a new tensor for bf16, and shares storage for f32)
        self.forward_taps_working(input, taps, pooling).iter().map(|t| t.to_kind(Kind::Float)).collect()
    }

    /// As [`forward_taps`](Self::forward_taps), in the network's own precision and memory format
    /// (bf16 + channels-last by default on the CPU): what the style term's matrix products take.
    pub fn forward_taps_working(&self, input: &Tensor, taps: &[usize], pooling: Pooling) -> Vec<Tensor> {
        let deepest = taps.iter().copied().max().unwrap_or(0);
        let mut out: Vec<Option<Tensor>> = taps.iter().map(|_| None).collect();
        let mut x = to_layout(input, self.layout);
        for (i, layer) in self.layers.iter().enumerate().take(deepest + 1) {
            x = match layer {
                Layer::Conv(c) => c.forward(&x),
                // In place: the convolution's backward (to its input) does not need its output,
                // so this saves an allocation and a pass over memory per layer.
                Layer::Relu => x.relu_(),
                Layer::Pool => match pooling {
                    Pooling::Avg => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None),
                    Pooling::Max => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
                },
            };
            for (slot, &t) in out.iter_mut().zip(taps) {
                if t == i {
                    // A pre-ReLU tap (convN_M) must not see the in-place ReLU that follows.
                    let pre_relu = matches!(layer, Layer::Conv(_));
                    *slot = Some(if pre_relu { x.copy() } else { x.shallow_clone() });
                }
            }
        }
        out.into_iter().map(|t| t.expect("tap beyond the network")).collect()
    }
}
