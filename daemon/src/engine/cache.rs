//! Style-target cache: the Gram matrices of a style image at the style layers, keyed by the
//! style's pixels, size, layers, pooling, network layout and tile grid. Least recently used entries go
//! first when the memory cap is reached. Repeating a style skips its forward pass.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use tch::{Device, Kind, Tensor};

/// Identifies one style's targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StyleKey(u64);

impl StyleKey {
    /// Hashes the style image (its f32 pixels and shape) with everything that changes its Grams:
    /// layers, pooling, network layout, and the tile grid when the style is computed in tiles
    /// (tiled Grams differ from whole-image ones by the halo's missing context).
    pub fn new(style: &Tensor, layers: &[usize], pooling: &str, layout: &str, tiles: Option<(i64, i64)>) -> Self {
        let mut h = DefaultHasher::new();
        let cpu = style.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let n = cpu.numel();
        let mut data = vec![0f32; n];
        cpu.copy_data(&mut data, n);
        style.size().hash(&mut h);
        for v in &data {
            v.to_bits().hash(&mut h);
        }
        layers.hash(&mut h);
        pooling.hash(&mut h);
        layout.hash(&mut h);
        tiles.hash(&mut h);
        Self(h.finish())
    }
}

struct Entry {
    key: StyleKey,
    grams: Vec<Tensor>,
    bytes: u64,
}

/// LRU cache of style Gram matrices with a memory cap.
pub struct StyleCache {
    entries: VecDeque<Entry>,
    cap_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

impl StyleCache {
    pub fn new(cap_bytes: u64) -> Self {
        Self { entries: VecDeque::new(), cap_bytes, hits: 0, misses: 0 }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// The cached Grams for `key`, or computes, stores and returns them.
    pub fn get_or_compute(&mut self, key: StyleKey, compute: impl FnOnce() -> Vec<Tensor>) -> Vec<Tensor> {
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            self.hits += 1;
            let e = self.entries.remove(i).expect("present");
            let grams = e.grams.iter().map(|g| g.shallow_clone()).collect();
            self.entries.push_back(e);
            tracing::info!(key = key.0, "style cache hit");
            return grams;
        }
        self.misses += 1;
        tracing::info!(key = key.0, "style cache miss");
        let grams = compute();
        let bytes = grams.iter().map(|g| (g.numel() * g.kind().elt_size_in_bytes()) as u64).sum();
        if bytes <= self.cap_bytes {
            while self.bytes() + bytes > self.cap_bytes {
                self.entries.pop_front();
            }
            self.entries.push_back(Entry { key, grams: grams.iter().map(|g| g.shallow_clone()).collect(), bytes });
        }
        grams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_with_memory_cap() {
        let t = |v: f64| Tensor::full([2, 2], v, (Kind::Float, Device::Cpu));
        let key = |v: f64| StyleKey::new(&t(v), &[1], "avg", "fp32", None);
        let mut c = StyleCache::new(32); // two entries of 16 bytes
        let mut computed = 0;
        for v in [1.0, 2.0, 1.0, 3.0, 2.0, 1.0] {
            c.get_or_compute(key(v), || {
                computed += 1;
                vec![t(v)]
            });
        }
        // 1 miss, 2 miss, 1 hit, 3 miss (evicts 2), 2 miss (evicts 1), 1 miss
        assert_eq!((c.hits, c.misses, computed), (1, 5, 5));
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 32);
        assert_ne!(key(1.0), StyleKey::new(&t(1.0), &[1], "max", "fp32", None));
        assert_ne!(key(1.0), StyleKey::new(&t(1.0), &[1], "avg", "fp32", Some((256, 96))));
    }
}
