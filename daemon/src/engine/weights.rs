//! VGG19 weights: the manifest of expected tensors, the safetensors file format with its
//! metadata, where the file is looked up, and seeded random (not pretrained) weights.
//!
//! File format: safetensors with torchvision names `features.N.weight|bias` (f32) and string
//! metadata:
//!
//! | key | meaning |
//! |---|---|
//! | `format` | `neural-style-vgg19` |
//! | `pretrained` | `true` or `false` |
//! | `preprocessing` | `torchvision` (RGB in `[0,1]`, ImageNet mean/std) or `caffe` (BGR ×255, mean subtracted) |
//! | `source` | where the numbers came from (URL, or `random`) |
//! | `sha256` | checksum of the source file (pretrained) |
//! | `seed` | the seed (random weights) |

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use neural_style_protocol::message::WeightsSummary;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

/// The file name used in the data directory for the pretrained weights.
pub const DEFAULT_FILE_NAME: &str = "vgg19-features.safetensors";
/// Environment variable that names a weights file.
pub const WEIGHTS_ENV: &str = "NEURAL_STYLE_WEIGHTS";
/// What to tell users who have no usable weights.
pub const FETCH_HINT: &str =
    "run `neural-style weights fetch` (needs internet), or pass --weights FILE / set NEURAL_STYLE_WEIGHTS; \
     `neural-style weights random --out FILE` makes non-pretrained test weights";

/// Channels of the convolutions in each of VGG19's five blocks and how many convolutions each has.
const BLOCKS: [(usize, i64); 5] = [(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)];

/// One layer of torchvision's `vgg19().features`, by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// A 3×3 convolution, stride 1, padding 1.
    Conv { name: String, in_channels: i64, out_channels: i64 },
    /// The ReLU after the convolution of the same suffix.
    Relu { name: String },
    /// 2×2 pooling, stride 2.
    Pool { name: String },
}

impl LayerSpec {
    pub fn name(&self) -> &str {
        match self {
            LayerSpec::Conv { name, .. } | LayerSpec::Relu { name } | LayerSpec::Pool { name } => name,
        }
    }
}

/// The 37 layers of `vgg19().features`, index = position in torchvision's `features`.
pub fn vgg19_layers() -> Vec<LayerSpec> {
    let mut layers = Vec::with_capacity(37);
    let mut in_channels = 3;
    for (block, &(convs, channels)) in BLOCKS.iter().enumerate() {
        for conv in 0..convs {
            let suffix = format!("{}_{}", block + 1, conv + 1);
            layers.push(LayerSpec::Conv { name: format!("conv{suffix}"), in_channels, out_channels: channels });
            layers.push(LayerSpec::Relu { name: format!("relu{suffix}") });
            in_channels = channels;
        }
        layers.push(LayerSpec::Pool { name: format!("pool{}", block + 1) });
    }
    layers
}

/// Index in `features` of a layer name such as `relu4_2`, `conv1_1` or `pool3`.
pub fn layer_index(name: &str) -> Option<usize> {
    vgg19_layers().iter().position(|l| l.name() == name)
}

/// The manifest: every tensor the file must hold, with its shape.
pub fn manifest() -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    for (index, layer) in vgg19_layers().iter().enumerate() {
        if let LayerSpec::Conv { in_channels, out_channels, .. } = layer {
            out.push((format!("features.{index}.weight"), vec![*out_channels, *in_channels, 3, 3]));
            out.push((format!("features.{index}.bias"), vec![*out_channels]));
        }
    }
    out
}

/// How images are turned into network input; recorded in the weights' metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocessing {
    /// RGB in `[0,1]`, minus ImageNet mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225).
    Torchvision,
    /// BGR in `[0,255]` minus (103.939, 116.779, 123.68): Caffe's VGG (the author's `vgg_conv.pth`).
    Caffe,
}

impl Preprocessing {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "torchvision" => Some(Self::Torchvision),
            "caffe" => Some(Self::Caffe),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::Caffe => "caffe",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("no VGG19 weights found (looked at: {searched}); {FETCH_HINT}")]
    NotFound { searched: String },
    #[error("cannot read weights file {path}: {source}; {FETCH_HINT}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors weights file ({reason}); it may be truncated or of another format — {FETCH_HINT}")]
    Format { path: PathBuf, reason: String },
    #[error("weights file {path} lacks tensor {name}; it is not a VGG19 `features` file — {FETCH_HINT}")]
    Missing { path: PathBuf, name: String },
    #[error("weights file {path}: tensor {name} has shape {got:?} (dtype {dtype}), expected {expected:?} f32 — {FETCH_HINT}")]
    Shape { path: PathBuf, name: String, expected: Vec<i64>, got: Vec<usize>, dtype: String },
    #[error("cannot write weights file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Weights read from a file: the tensors (CPU, f32) and what the metadata says of them.
pub struct Weights {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub pretrained: bool,
    pub preprocessing: Preprocessing,
    pub source: String,
    pub metadata: HashMap<String, String>,
}

/// Summary of a weights file as shown to users (status, JSON summaries, logs).
#[derive(Clone, Debug, serde::Serialize)]
pub struct WeightsInfo {
    pub path: PathBuf,
    pub pretrained: bool,
    pub preprocessing: Preprocessing,
    pub source: String,
}

impl WeightsInfo {
    /// As job summaries report it.
    pub fn summary(&self) -> WeightsSummary {
        WeightsSummary {
            path: self.path.display().to_string(),
            pretrained: self.pretrained,
            preprocessing: self.preprocessing.as_str().into(),
            source: self.source.clone(),
        }
    }
}

impl Weights {
    /// Reads and checks a weights file against the manifest.
    pub fn load(path: &Path) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io { path: path.to_owned(), source })?;
        let format_err = |reason: String| WeightsError::Format { path: path.to_owned(), reason };
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| format_err(format!("{e:?}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(format!("{e:?}")))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        for (name, expected) in manifest() {
            let view =
                st.tensor(&name).map_err(|_| WeightsError::Missing { path: path.to_owned(), name: name.clone() })?;
            let got = view.shape().to_vec();
            let same_shape = got.iter().map(|&d| d as i64).eq(expected.iter().copied());
            if view.dtype() != Dtype::F32 || !same_shape {
                return Err(WeightsError::Shape {
                    path: path.to_owned(),
                    name,
                    expected,
                    got,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let t = Tensor::from_data_size(view.data(), &expected, Kind::Float);
            tensors.insert(name, t);
        }
        let pretrained = metadata.get("pretrained").map(|v| v == "true").unwrap_or(false);
        let preprocessing = match metadata.get("preprocessing") {
            None => Preprocessing::Torchvision,
            Some(p) => Preprocessing::parse(p).ok_or_else(|| {
                format_err(format!("unknown preprocessing {p:?} in metadata (expected torchvision or caffe)"))
            })?,
        };
        let source = metadata.get("source").cloned().unwrap_or_else(|| "unknown".into());
        Ok(Self { path: path.to_owned(), tensors, pretrained, preprocessing, source, metadata })
    }

    pub fn info(&self) -> WeightsInfo {
        WeightsInfo {
            path: self.path.clone(),
            pretrained: self.pretrained,
            preprocessing: self.preprocessing,
            source: self.source.clone(),
        }
    }

    /// torchvision's default initialisation of VGG's convolutions (Kaiming normal, fan-out,
    /// ReLU gain; zero bias), seeded. Labelled `pretrained=false`.
    pub fn random(seed: u64) -> Self {
        let mut tensors = HashMap::new();
        for (i, (name, shape)) in manifest().into_iter().enumerate() {
            let t = if name.ends_with(".weight") {
                let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
                let stream = seed.wrapping_mul(1000).wrapping_add(i as u64);
                super::rng::normal(&shape, (2.0 / fan_out).sqrt(), stream)
            } else {
                Tensor::zeros(&shape, (Kind::Float, Device::Cpu))
            };
            tensors.insert(name, t);
        }
        let metadata = HashMap::from([
            ("format".to_string(), "neural-style-vgg19".to_string()),
            ("pretrained".to_string(), "false".to_string()),
            ("preprocessing".to_string(), "torchvision".to_string()),
            ("source".to_string(), format!("random (torchvision default init, seed {seed})")),
            ("seed".to_string(), seed.to_string()),
        ]);
        Self {
            path: PathBuf::from(format!("<random seed {seed}>")),
            tensors,
            pretrained: false,
            preprocessing: Preprocessing::Torchvision,
            source: metadata["source"].clone(),
            metadata,
        }
    }

    /// Writes the tensors and metadata as safetensors (atomically: temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let write_err = |reason: String| WeightsError::Write { path: path.to_owned(), reason };
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape) in manifest() {
            let t = &self.tensors[&name];
            let numel = t.numel();
            let mut floats = vec![0f32; numel];
            t.to_kind(Kind::Float).contiguous().copy_data(&mut floats, numel);
            let bytes = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
            data.push((name, shape.iter().map(|&d| d as usize).collect(), bytes));
        }
        let views = data
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| write_err(format!("{e:?}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| write_err(e.to_string()))?;
        }
        let tmp = path.with_extension("safetensors.part");
        safetensors::serialize_to_file(views, &Some(self.metadata.clone()), &tmp)
            .map_err(|e| write_err(format!("{e:?}")))?;
        std::fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
    }
}

/// The project's data directory (`directories`): `~/.local/share/neural-style` on Linux.
pub fn data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "neural-style").map(|d| d.data_dir().to_owned())
}

/// Where the pretrained weights live by default.
pub fn default_path() -> Option<PathBuf> {
    data_dir().map(|d| d.join(DEFAULT_FILE_NAME))
}

/// Weight resolution: `--weights FILE` > env `NEURAL_STYLE_WEIGHTS` > data dir.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, WeightsError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match default_path() {
        Some(p) if p.exists() => Ok(p),
        Some(p) => Err(WeightsError::NotFound {
            searched: format!("--weights (not given), ${WEIGHTS_ENV} (unset), {}", p.display()),
        }),
        None => Err(WeightsError::NotFound {
            searched: format!("--weights (not given), ${WEIGHTS_ENV} (unset), no home directory"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_match_torchvision_indices() {
        for (name, idx) in [
            ("relu1_1", 1),
            ("relu2_1", 6),
            ("relu3_1", 11),
            ("relu4_1", 20),
            ("relu4_2", 22),
            ("relu5_1", 29),
            ("pool5", 36),
        ] {
            assert_eq!(layer_index(name), Some(idx), "{name}");
        }
        assert_eq!(manifest().len(), 32);
        assert_eq!(layer_index("relu6_1"), None);
    }

    #[test]
    fn random_weights_round_trip_and_bad_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let w = Weights::random(3);
        w.save(&path).unwrap();
        let back = Weights::load(&path).unwrap();
        assert!(!back.pretrained);
        assert_eq!(back.preprocessing, Preprocessing::Torchvision);
        let a = &w.tensors["features.0.weight"];
        let b = &back.tensors["features.0.weight"];
        assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0);
        // same seed, same numbers
        let again = Weights::random(3);
        assert!(again.tensors["features.34.weight"].equal(&w.tensors["features.34.weight"]));

        // truncated
        let bytes = std::fs::read(&path).unwrap();
        let truncated = dir.path().join("t.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = Weights::load(&truncated).err().unwrap().to_string();
        assert!(err.contains("t.safetensors") && err.contains("weights fetch"), "{err}");
        // not safetensors
        let text = dir.path().join("x.safetensors");
        std::fs::write(&text, "hello").unwrap();
        assert!(matches!(Weights::load(&text), Err(WeightsError::Format { .. })));
        // missing file
        assert!(matches!(Weights::load(&dir.path().join("nope")), Err(WeightsError::Io { .. })));
    }
}
