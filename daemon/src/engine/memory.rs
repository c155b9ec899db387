//! Peak-memory estimate of a job before it runs, and the tiling decision.
//!
//! The estimate adds, for the largest scale of the schedule (the output size):
//!
//! * the network: every convolution of VGG19 `features` in the working precision, plus the f32
//!   copy that reports losses when the working precision is reduced;
//! * activations kept for the backward pass: per pixel, Σ over the layers up to the deepest tap
//!   of channels / stride², in f32, times [`ACTIVATION_OVERHEAD`] (gradients in flight,
//!   convolution workspaces, allocator slack: measured, see docs/benchmarks.md). f32 even when
//!   the working precision is reduced: the last part of every such job runs on the f32 network
//!   (precision refinement, see `engine::REFINE_FRACTION`), and those evaluations set the peak
//!   (measured: 1024×768, bf16 with refinement 2.38 GiB, fp32 throughout 2.30 GiB);
//! * f32 copies of the tapped activations and their gradients;
//! * image-sized f32 vectors: the optimiser's (L-BFGS: [`PAIR_VECTORS`] per history pair, or
//!   [`BF16_PAIR_HALVES`] halves when the pairs are stored in bf16) and about sixteen working copies
//!   (image, gradient, direction, best point, targets, pictures);
//! * [`BASE_BYTES`] for the process itself (libtorch, thread pools).
//!
//! With tiles, the activation terms use a tile window's area instead of the image's, and the
//! stitched content targets are added. When the estimate exceeds the memory limit, in order: the
//! history is stored in bf16 (where the network itself runs in reduced precision: its values and
//! gradients carry bf16 rounding already), then shortened to at most half the limit, then the job
//! is tiled with the largest tile whose estimate fits; when even 256 px tiles and the smallest
//! useful L-BFGS history do not fit, the job is refused with the numbers.

use neural_style_protocol::message::{MemoryPlan, TileGrid};

use super::cost::{activation_elements_per_pixel, network_parameters, tap_elements_per_pixel};
use super::error::EngineError;
use super::params::{OptimizerKind, Params};
use super::tiling::Tiling;
use super::vgg::Layout;

/// Measured factor over the f32 activation sizes that the backward pass holds at its peak.
pub const ACTIVATION_OVERHEAD: f64 = 1.1;
/// The process before any job: libtorch, its thread pools and kernel caches, the binary, and
/// the allocator's slack (the same 512 px job peaks 1.02–1.17 GiB from run to run).
pub const BASE_BYTES: u64 = 512 << 20;
/// Image-sized vectors one L-BFGS history pair costs at the peak: its two stored vectors plus the
/// temporaries and allocator slack (measured at 512 and 1024 px; the spare slot of the ring buffer
/// is 1/m of a pair more).
pub const PAIR_VECTORS: u64 = 3;
/// The same, in f32-vector units (halves), for a history stored in bf16: its two stored vectors
/// are one f32 vector, plus the f32 copy of one slice per product and slack (measured, see
/// docs/benchmarks.md).
pub const BF16_PAIR_HALVES: u64 = 3;
/// Image-sized f32 working vectors besides the optimiser's history.
const WORKING_VECTORS: u64 = 16;
/// More of them in a tiled job: the gradient being assembled, the clamped image, stitched
/// targets built per scale, and heap growth over a long job. Fitted to a 3840×2160 run under
/// `--max-memory 8` (800 px tiles, 12 evaluations, 4 of them f32): peak RSS 7.67 GiB with 6 of
/// its 8 history pairs, where the estimate without this term said 6.81 GiB for all 8.
const TILED_EXTRA_VECTORS: u64 = 12;
/// Context around each tile core.
pub const HALO: i64 = 96;
/// The smallest L-BFGS history a large job is given.
const MIN_HISTORY: usize = 5;
/// The smallest tile core tried before refusing.
const MIN_TILE: i64 = 256;
/// Below this core side the halo makes a tile slow ((256 + 2·96)² / 256² ≈ 3× the work), so
/// the L-BFGS history is shortened first.
const EFFICIENT_TILE: i64 = 512;

/// What the estimate found for a job.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Predicted peak bytes.
    pub estimated_bytes: u64,
    /// The limit it was checked against.
    pub limit_bytes: u64,
    /// Tiles, when the whole image does not fit.
    pub tiling: Option<Tiling>,
    /// The L-BFGS history actually used (reduced when the history alone would not fit).
    pub lbfgs_history: usize,
    /// The part of the estimate that is the L-BFGS history (it fills over the first iterations).
    pub history_bytes: u64,
    /// The history's pairs are stored in bf16.
    pub history_bf16: bool,
}

impl Plan {
    /// The plan as the protocol reports it (`started` event, summaries).
    pub fn report(&self) -> MemoryPlan {
        MemoryPlan {
            estimated_bytes: self.estimated_bytes,
            limit_bytes: self.limit_bytes,
            tiling: self.tiling.map(|t| TileGrid { tile: t.tile, halo: t.halo }),
            lbfgs_history: self.lbfgs_history,
            history_bytes: self.history_bytes,
            history_precision: if self.history_bf16 { "bf16" } else { "f32" }.into(),
        }
    }

    /// Tiled, or expected to use more than half the limit: worth handing freed memory back
    /// after every evaluation ([`release_freed`]).
    pub fn tight(&self) -> bool {
        self.tiling.is_some() || self.estimated_bytes > self.limit_bytes / 2
    }
}

fn network_bytes(layout: Layout) -> u64 {
    let params = network_parameters();
    // a reduced-precision network has an f32 copy for reporting
    params * if layout.reduced() { layout.element_bytes() + 4 } else { 4 }
}

/// An L-BFGS history: its length and whether its pairs are stored in bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistorySize {
    pub pairs: usize,
    pub bf16: bool,
}

impl HistorySize {
    pub fn f32(pairs: usize) -> Self {
        Self { pairs, bf16: false }
    }

    fn with_pairs(self, pairs: usize) -> Self {
        Self { pairs, ..self }
    }
}

/// Bytes the optimiser keeps for an image of `pixels` (L-BFGS's history, Adam's two moments).
fn optimizer_bytes(p: &Params, history: HistorySize, pixels: f64) -> f64 {
    let vector = 3.0 * pixels * 4.0;
    match (p.optimizer, history.bf16) {
        (OptimizerKind::Lbfgs, false) => (PAIR_VECTORS * history.pairs as u64) as f64 * vector,
        (OptimizerKind::Lbfgs, true) => (BF16_PAIR_HALVES * history.pairs as u64) as f64 * vector / 2.0,
        (OptimizerKind::Adam, _) => 2.0 * vector,
    }
}

/// Predicted peak bytes of a job at `w` × `h` (its output size).
pub fn estimate(w: u32, h: u32, p: &Params, layout: Layout, tiling: Option<Tiling>, history: HistorySize) -> u64 {
    let pixels = f64::from(w) * f64::from(h);
    let work_pixels = match tiling {
        None => pixels,
        Some(t) => {
            let side = |len: u32| ((t.tile + 2 * t.halo) as f64).min(f64::from(len));
            side(h) * side(w)
        }
    };
    // f32: the refinement's evaluations (or an fp32 job's) hold the largest activations
    let activations = activation_elements_per_pixel(p.deepest_layer()) * work_pixels * 4.0 * ACTIVATION_OVERHEAD;
    let taps = tap_elements_per_pixel(p) * work_pixels * 4.0 * 2.0;
    let extra = if tiling.is_some() { TILED_EXTRA_VECTORS } else { 0 };
    let vectors = (WORKING_VECTORS + extra) as f64 * 3.0 * pixels * 4.0 + optimizer_bytes(p, history, pixels);
    // stitched content targets (tiled): the content layers' features at full size, in f32, once
    // per objective (a reduced precision's refinement has its own, on the f32 network)
    let content_targets = if tiling.is_some() {
        let c = Params { style_layers: Vec::new(), ..p.clone() };
        let objectives = if layout.reduced() { 2.0 } else { 1.0 };
        tap_elements_per_pixel(&c) * pixels * 4.0 * objectives
    } else {
        0.0
    };
    BASE_BYTES + network_bytes(layout) + (activations + taps + vectors + content_targets) as u64
}

/// Decides tiling for a job at `w` × `h` under `limit` bytes. `tile` forces a tile size
/// (`Some(0)`: never tile).
pub fn plan(w: u32, h: u32, p: &Params, layout: Layout, limit: u64, tile: Option<i64>) -> Result<Plan, EngineError> {
    let mut history = HistorySize::f32(p.lbfgs_history);
    // plan to 95% of the limit: at 3840×2160 the estimate was 1.3% under the measured peak
    let budget = limit / 20 * 19;
    let pixels = f64::from(w) * f64::from(h);
    let fits = |t: Option<Tiling>, m: HistorySize| estimate(w, h, p, layout, t, m) <= budget;
    let done = |t: Option<Tiling>, m: HistorySize| Plan {
        estimated_bytes: estimate(w, h, p, layout, t, m),
        limit_bytes: limit,
        tiling: t,
        lbfgs_history: m.pairs,
        history_bytes: optimizer_bytes(p, m, pixels) as u64,
        history_bf16: m.bf16 && p.optimizer == OptimizerKind::Lbfgs,
    };
    match tile {
        Some(0) => return Ok(done(None, history)),
        Some(t) => return Ok(done(Some(tiling_for(t)), history)),
        None => {}
    }
    if fits(None, history) {
        return Ok(done(None, history));
    }
    // the history is the first thing to give: stored in bf16 where the network's own values
    // are bf16-rounded anyway, then at most half the limit (a few pairs keep most of L-BFGS's
    // benefit); the rest is for activations, in tiles if need be
    if layout.reduced() && p.optimizer == OptimizerKind::Lbfgs {
        history.bf16 = true;
    }
    let pair = optimizer_bytes(p, history.with_pairs(1), pixels) as u64;
    history.pairs = history.pairs.min(((budget / 2) / pair.max(1)).max(MIN_HISTORY as u64) as usize);
    if fits(None, history) {
        return Ok(done(None, history));
    }
    // then tiles, the largest that fits; then, before going below EFFICIENT_TILE (whose halo
    // costs more time than a few history pairs are worth), a shorter history down to MIN_HISTORY
    let tiles = tile_sizes(w, h);
    let efficient = tiles.iter().filter(|&&t| t >= EFFICIENT_TILE);
    if let Some(&t) = efficient.clone().find(|&&t| fits(Some(tiling_for(t)), history)) {
        return Ok(done(Some(tiling_for(t)), history));
    }
    let small = tiles.iter().filter(|&&t| t < EFFICIENT_TILE);
    let shortest = MIN_HISTORY.min(history.pairs);
    for &t in efficient.chain(small) {
        let shorter = (shortest..=history.pairs).rev().map(|m| history.with_pairs(m));
        if let Some(m) = shorter.into_iter().find(|&m| fits(Some(tiling_for(t)), m)) {
            return Ok(done(Some(tiling_for(t)), m));
        }
    }
    let need = estimate(w, h, p, layout, Some(tiling_for(MIN_TILE)), history.with_pairs(shortest));
    Err(EngineError::Memory(format!(
        "{w}×{h} needs about {:.1} GiB even in {MIN_TILE} px tiles with an L-BFGS history of {shortest}, more than \
         the {:.1} GiB that the {:.1} GiB limit leaves after a 5% margin; use a smaller --size, --optimizer adam, or \
         raise --max-memory",
        gib(need),
        gib(budget),
        gib(limit)
    )))
}

/// Tile core sides tried, largest first: half the longest side, then ×¾ down to [`MIN_TILE`].
fn tile_sizes(w: u32, h: u32) -> Vec<i64> {
    let longest = i64::from(w.max(h));
    let mut t = (longest / 2 + 15) / 16 * 16;
    let mut out = Vec::new();
    while t > MIN_TILE {
        out.push(t);
        t = (t * 3 / 4) / 16 * 16;
    }
    out.push(MIN_TILE);
    out
}

fn tiling_for(tile: i64) -> Tiling {
    Tiling::new(tile, halo(tile))
}

/// The halo for a tile core of side `tile`: [`HALO`], at most half the core.
pub fn halo(tile: i64) -> i64 {
    HALO.min(tile / 2)
}

/// A CUDA device's total memory in MiB from nvidia-smi, asked once per device (the daemon plans
/// every job; a process per job would be waste, and the total does not change).
fn cuda_total_mib(index: usize) -> Option<u64> {
    static TOTALS: std::sync::Mutex<Vec<(usize, Option<u64>)>> = std::sync::Mutex::new(Vec::new());
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, t)) = totals.iter().find(|(i, _)| *i == index) {
        return t;
    }
    let total = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits", &format!("--id={index}")])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    totals.push((index, total));
    total
}

/// Hands freed heap memory back to the system (glibc's `malloc_trim`; elsewhere nothing).
/// Called after every evaluation of a job whose plan is tight ([`Plan::tight`]): tensors of a
/// few MiB come from the heap, and the pages of freed ones stay resident while new ones take
/// fresh pages, so RSS creeps up over a long job. Measured at 512×384, 120 evaluations: peak
/// 1.68 GiB without, 1.43 GiB with, for about 6% more time (freed pages are faulted in again),
/// which is why small jobs skip it. `NEURAL_STYLE_NO_TRIM=1` turns it off (to measure that).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("NEURAL_STYLE_NO_TRIM").is_none() {
        // SAFETY: malloc_trim only walks glibc's own arenas; no Rust invariant is involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A `Vm…:` figure of this process from /proc/self/status (Linux), 0 where unknown.
fn proc_status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Resident memory of this process now.
pub fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

/// The most resident memory this process has had (its high-water mark).
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Memory a job may use by default: on a CUDA device, 90% of its memory as nvidia-smi reports
/// it (libtorch has no query); on the CPU, or when that fails, 80% of MemAvailable (Linux), else
/// 8 GiB.
pub fn default_limit(device: tch::Device) -> u64 {
    if let tch::Device::Cuda(i) = device {
        if let Some(mib) = cuda_total_mib(i) {
            return (mib << 20) / 10 * 9;
        }
    }
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024))
    });
    available.map(|b| b / 5 * 4).unwrap_or(8 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_grows_with_pixels_and_tiles_bound_it() {
        let p = Params::default();
        let l = Layout::BF16_NHWC;
        let small = estimate(512, 512, &p, l, None, HistorySize::f32(100));
        let big = estimate(1024, 1024, &p, l, None, HistorySize::f32(100));
        assert!(big > 3 * (small - BASE_BYTES) && big < 5 * small);
        let tiled = estimate(3840, 2160, &p, l, Some(Tiling::new(512, HALO)), HistorySize::f32(10));
        assert!(tiled < estimate(3840, 2160, &p, l, None, HistorySize::f32(10)));
        // 4K on a 12 GiB budget: tiled, history reduced
        let plan = plan(3840, 2160, &p, l, 12 << 30, None).unwrap();
        assert!(plan.tiling.is_some() && plan.lbfgs_history < 100 && plan.estimated_bytes <= 12 << 30, "{plan:?}");
        // small jobs are left alone
        let plan = super::plan(512, 512, &p, l, 12 << 30, None).unwrap();
        assert!(plan.tiling.is_none() && plan.lbfgs_history == 100);
        // impossible: refused with the numbers
        let e = super::plan(3840, 2160, &p, l, 1 << 30, None).unwrap_err().to_string();
        assert!(e.contains("GiB") && e.contains("--size"), "{e}");
    }

    #[test]
    fn a_tight_limit_shortens_the_history_before_refusing() {
        let p = Params::default();
        let l = Layout::BF16_NHWC;
        // 8.75 GiB
        let limit = 35u64 << 28;
        // with half the budget in (bf16) history, only tiles too small to be efficient fit...
        let pairs = (limit / 20 * 19 / 2) / (BF16_PAIR_HALVES * 3 * 3840 * 2160 * 4 / 2);
        let half = HistorySize { pairs: pairs as usize, bf16: true };
        assert!(estimate(3840, 2160, &p, l, Some(tiling_for(EFFICIENT_TILE)), half) > limit / 20 * 19);
        assert!(estimate(3840, 2160, &p, l, Some(tiling_for(MIN_TILE)), half) <= limit / 20 * 19);
        // ...so the history gives way first, and the largest tile that fits is kept
        let plan = plan(3840, 2160, &p, l, limit, None).unwrap();
        let t = plan.tiling.expect("tiled");
        assert!((MIN_HISTORY..half.pairs).contains(&plan.lbfgs_history) && plan.history_bf16, "{plan:?}");
        assert!(plan.estimated_bytes <= limit / 20 * 19, "{plan:?}");
        assert!(t.tile >= EFFICIENT_TILE, "{plan:?}");
        assert!(estimate(3840, 2160, &p, l, Some(t), half.with_pairs(plan.lbfgs_history + 1)) > limit / 20 * 19);
        // the refusal names the margin it planned with
        let e = super::plan(3840, 2160, &p, l, 3 << 30, None).unwrap_err().to_string();
        assert!(e.contains("5% margin") && e.contains("3.0 GiB limit"), "{e}");
    }

    /// 3840×2948 (the size of the GPU issue's measurement) on an 80 GB device, and tighter.
    #[test]
    fn a_large_job_keeps_its_history_in_bf16_before_shortening_it() {
        let p = Params::default();
        let (w, h) = (3840, 2948);
        let h100 = (81_559u64 << 20) / 10 * 9;
        for (layout, limit) in
            [(Layout::BF16_NHWC, h100), (Layout::FP32, h100), (Layout::BF16_NHWC, 40 << 30), (Layout::FP32, 40 << 30)]
        {
            let plan = plan(w, h, &p, layout, limit, None).unwrap();
            eprintln!("{layout:?} {:.1} GiB: {plan:?} history {:.1} GiB", gib(limit), gib(plan.history_bytes));
        }
        // an H100: everything fits, f32 history of 100
        let plan = plan(w, h, &p, Layout::BF16_NHWC, h100, None).unwrap();
        assert!(plan.tiling.is_none() && plan.lbfgs_history == 100 && !plan.history_bf16, "{plan:?}");
        // 40 GiB: a bf16 network keeps all 100 pairs, in bf16; an f32 one shortens its f32 history
        let bf16 = super::plan(w, h, &p, Layout::BF16_NHWC, 40 << 30, None).unwrap();
        assert!(bf16.lbfgs_history == 100 && bf16.history_bf16, "{bf16:?}");
        let fp32 = super::plan(w, h, &p, Layout::FP32, 40 << 30, None).unwrap();
        assert!(!fp32.history_bf16 && fp32.lbfgs_history < 100, "{fp32:?}");
        // half the bytes of the same history in f32
        assert_eq!(bf16.history_bytes * 2, fp32.history_bytes * 100 / fp32.lbfgs_history as u64);
    }
}
