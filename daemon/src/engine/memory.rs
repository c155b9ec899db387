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
//! * image-sized f32 vectors: the optimiser's (L-BFGS: [`PAIR_VECTORS`] per history pair) and
//!   about sixteen working copies (image, gradient, direction, best point, targets, pictures);
//! * [`BASE_BYTES`] for the process itself (libtorch, thread pools).
//!
//! With tiles, the activation terms use a tile window's area instead of the image's, and the
//! stitched content targets are added. When the untiled estimate exceeds the memory limit the job
//! is tiled, with the largest tile whose estimate fits; when even 256 px tiles and the smallest
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
/// two-loop recursion's temporaries and allocator slack (measured at 512 and 1024 px).
pub const PAIR_VECTORS: u64 = 3;
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

/// Image-sized vectors the optimiser keeps: L-BFGS's history, Adam's two moments.
fn optimizer_vectors(p: &Params, history: usize) -> u64 {
    if p.optimizer == OptimizerKind::Lbfgs {
        PAIR_VECTORS * history as u64
    } else {
        2
    }
}

/// Predicted peak bytes of a job at `w` × `h` (its output size).
pub fn estimate(w: u32, h: u32, p: &Params, layout: Layout, tiling: Option<Tiling>, history: usize) -> u64 {
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
    let vectors = (optimizer_vectors(p, history) + WORKING_VECTORS + extra) as f64 * 3.0 * pixels * 4.0;
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
    let mut history = p.lbfgs_history;
    // plan to 95% of the limit: at 3840×2160 the estimate was 1.3% under the measured peak
    let budget = limit / 20 * 19;
    let fits = |t: Option<Tiling>, m: usize| estimate(w, h, p, layout, t, m) <= budget;
    let done = |t: Option<Tiling>, m: usize| Plan {
        estimated_bytes: estimate(w, h, p, layout, t, m),
        limit_bytes: limit,
        tiling: t,
        lbfgs_history: m,
        history_bytes: optimizer_vectors(p, m) * 3 * u64::from(w) * u64::from(h) * 4,
    };
    match tile {
        Some(0) => return Ok(done(None, history)),
        Some(t) => return Ok(done(Some(tiling_for(t)), history)),
        None => {}
    }
    if fits(None, history) {
        return Ok(done(None, history));
    }
    // the history is the first thing to give: it may take at most half the limit (a few
    // pairs keep most of L-BFGS's benefit), the rest is for activations, in tiles if need be
    let vector = 3 * u64::from(w) * u64::from(h) * 4;
    history = history.min(((budget / 2) / (PAIR_VECTORS * vector)).max(MIN_HISTORY as u64) as usize);
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
    for &t in efficient.chain(small) {
        if let Some(m) = (MIN_HISTORY.min(history)..=history).rev().find(|&m| fits(Some(tiling_for(t)), m)) {
            return Ok(done(Some(tiling_for(t)), m));
        }
    }
    let m = MIN_HISTORY.min(history);
    let need = estimate(w, h, p, layout, Some(tiling_for(MIN_TILE)), m);
    Err(EngineError::Memory(format!(
        "{w}×{h} needs about {:.1} GiB even in {MIN_TILE} px tiles with an L-BFGS history of {m}, more than the \
         {:.1} GiB that the {:.1} GiB limit leaves after a 5% margin; use a smaller --size, --optimizer adam, or \
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
        let small = estimate(512, 512, &p, l, None, 100);
        let big = estimate(1024, 1024, &p, l, None, 100);
        assert!(big > 3 * (small - BASE_BYTES) && big < 5 * small);
        let tiled = estimate(3840, 2160, &p, l, Some(Tiling::new(512, HALO)), 10);
        assert!(tiled < estimate(3840, 2160, &p, l, None, 10));
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
        // 8.5 GiB
        let limit = 17u64 << 29;
        // with half the budget in history, only tiles too small to be efficient fit...
        let half = ((limit / 20 * 19 / 2) / (PAIR_VECTORS * 3 * 3840 * 2160 * 4)) as usize;
        assert!(estimate(3840, 2160, &p, l, Some(tiling_for(EFFICIENT_TILE)), half) > limit / 20 * 19);
        assert!(estimate(3840, 2160, &p, l, Some(tiling_for(MIN_TILE)), half) <= limit / 20 * 19);
        // ...so the history gives way first, and the largest tile that fits is kept
        let plan = plan(3840, 2160, &p, l, limit, None).unwrap();
        let t = plan.tiling.expect("tiled");
        assert!((MIN_HISTORY..half).contains(&plan.lbfgs_history), "{plan:?}");
        assert!(plan.estimated_bytes <= limit / 20 * 19, "{plan:?}");
        assert!(t.tile >= EFFICIENT_TILE, "{plan:?}");
        assert!(estimate(3840, 2160, &p, l, Some(t), plan.lbfgs_history + 1) > limit / 20 * 19);
        // the refusal names the margin it planned with
        let e = super::plan(3840, 2160, &p, l, 3 << 30, None).unwrap_err().to_string();
        assert!(e.contains("5% margin") && e.contains("3.0 GiB limit"), "{e}");
    }
}
