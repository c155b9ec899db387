//! L-BFGS over a flat tensor, following `torch.optim.LBFGS` step for step where it is defined
//! the same (first step scaled by min(1, 1/|g|₁) unless told otherwise, optional strong-Wolfe
//! line search ported from PyTorch's `_strong_wolfe`), so the same problem from the same start
//! takes the same path. Unlike torch:
//!
//! * **it stays on the device, and launches little there.** The history is two matrices S, Y
//!   (a ring buffer of rows, with a spare row that holds each trial's pair) and the direction
//!   −H·g comes from the compact representation (Byrd, Nocedal & Schnabel 1994, eq. 3.1; see
//!   [`History`]) instead of the two-loop recursion's 2m dot products read one by one. Each
//!   evaluation's single host read brings, with the problem's own terms, the history's rows
//!   times the trial's pair and times its gradient (two matrix products); the 2m-sized algebra
//!   (SᵀY and YᵀY, two triangular solves) then runs on the host in f64, and the direction is one
//!   product back over the history with the coefficients uploaded. A trial (the direction on a
//!   line's first, x₀ + t·d, the evaluation, the pair written, the products) is one [`Step`]
//!   over fixed device buffers, which a problem may capture as one CUDA graph: the loop then
//!   launches an upload and a read per evaluation;
//! * **a failed line search is not convergence.** When the strong-Wolfe search finds no lower
//!   value (at low precision the values' rounding can hide a decrease), the history is dropped
//!   and the next iteration starts again from steepest descent with a first step in pixel
//!   units (shorter after each consecutive failure); only a zero gradient (or positive
//!   tolerances) ends the run early;
//! * every update is followed by an evaluation, so the last point is always one whose value is
//!   known, and the budget counts evaluations (forward + backward).

use tch::{Device, Kind, Tensor};

use super::super::host;
use super::{evaluate_and_read, step_and_read, FnProblem, Outcome, Problem, Step, Stepped, Stop};

/// Settings; the defaults are torch.optim.LBFGS's.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LbfgsConfig {
    pub lr: f64,
    pub history_size: usize,
    pub tolerance_grad: f64,
    pub tolerance_change: f64,
    pub strong_wolfe: bool,
    /// The first step's size in units of x: the step moves the coordinate with the largest
    /// gradient by this much. `None` is torch's min(1, 1/|g|₁)·lr, which on an objective whose
    /// gradients are small per coordinate (an image of many pixels) barely moves at all.
    pub first_step: Option<f64>,
    /// A line search gives up after this many trials none of which is below the start's value,
    /// and its zoom phase stops (taking the best point found) after this many trials in a row
    /// that did not improve on that point (`None`: only torch's limit of 25 trials). Where
    /// values carry rounding noise (a bf16 network: about 2⁻⁸ of the value) a search that has
    /// not found a decrease in a few trials will not find one by shrinking the step further, and
    /// a zoom can close in on its best point without ever seeing the curvature condition met
    /// (measured from the content at 128 px: 24 of 25 trials spent closing in on t = 1).
    pub patience: Option<usize>,
    /// Store the history's pairs in bf16 (half the memory of f32; the products with them are
    /// still taken in f32, a slice at a time). The memory plan asks for it when the device is
    /// tight and the network itself runs in reduced precision.
    #[serde(default)]
    pub history_bf16: bool,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            history_size: 100,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            strong_wolfe: false,
            first_step: None,
            patience: None,
            history_bf16: false,
        }
    }
}

/// The L-BFGS history: pairs s_i = x_{i+1} − x_i, y_i = g_{i+1} − g_i on the device, stored
/// interleaved as rows of one `[m + 1, 2, n]` f32 (or bf16) tensor: a ring buffer of m pairs and
/// a spare slot (allocated once and uninitialised: no copies as it fills, and on the CPU its
/// pages become resident only as rows are written; the memory plan counts the full history).
/// A line search writes each trial's pair (t·d, g − g₀) into the spare slot, and the trial's
/// host read brings that pair's products with every row (one matrix product) and the gradient's
/// (one more): when the trial is taken, the spare slot becomes the newest pair's and its row and
/// column of SᵀY and YᵀY (kept on the host in f64, by slot) are already known; the oldest
/// pair's slot is the next spare.
///
/// The direction is the compact representation's: with R the upper triangle of SᵀY (pairs in
/// chronological order), D its diagonal and γ = s·y / y·y of the newest pair (H₀ = γI),
/// H g = γg + [S γY] [[R⁻ᵀ(D + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]] [Sᵀg; γYᵀg]; with u = R⁻¹Sᵀg and
/// w = R⁻ᵀ((D + γYᵀY)u − γYᵀg): H g = γg + S w − γ Y u. Sᵀg and Yᵀg came with g's read, so the
/// solves run on the host and the device does one operator back: −H g = −γ g + [S; Y]ᵀ c with
/// c = (−w, γu) (`baddbmm`, its β = −γ; rows of slots not held get a zero coefficient, and
/// hold finite numbers: every slot the product runs over has been written).
///
/// Stored in bf16 (see [`LbfgsConfig::history_bf16`]) the pairs are rounded once, when written;
/// every product is taken with the stored (rounded) vectors, so SᵀY, YᵀY, Sᵀg and the direction
/// are those of one consistent history, in f32 arithmetic over [`BF16_SLICES`] slices of the
/// coordinates (the f32 copy of a slice is the only temporary: 1/[`BF16_SLICES`] of an f32
/// history); −γ g is then added apart.
pub struct History {
    m: usize,
    pairs: Tensor,
    /// Pairs held.
    len: usize,
    /// Slot of the oldest pair (slots are in chronological order from here, wrapping around
    /// m + 1 slots); 0 until the buffer first wraps.
    oldest: usize,
    /// [(m + 1)²] by slot: sty[i·(m + 1) + j] = s_i·y_j, yty likewise y_i·y_j.
    sty: Vec<f64>,
    yty: Vec<f64>,
    pub gamma: f64,
    /// The trial whose pair the spare slot holds.
    spare_holds: Option<u64>,
}

/// Slices of the coordinates a bf16 history's products are taken over.
pub const BF16_SLICES: i64 = 16;

/// The history's rows times a trial's pair and gradient, as read with the trial's value.
#[derive(Clone, Debug, Default)]
pub struct Products {
    /// [2·rows, 2], row-major: row 2i is s_i, row 2i + 1 is y_i (by slot); column 0 is the
    /// trial's s, column 1 its y. Empty where the point is not a trial on a line.
    pair: Vec<f64>,
    /// [2·rows]: s_i·g, y_i·g by slot. Empty where the history was empty.
    grad: Vec<f64>,
}

impl History {
    pub fn new(m: usize, n: i64, device: Device, bf16: bool) -> Self {
        let m = m.max(1);
        let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
        let slots = m + 1;
        Self {
            m,
            pairs: Tensor::empty([slots as i64, 2, n], (kind, device)),
            len: 0,
            oldest: 0,
            sty: vec![0.0; slots * slots],
            yty: vec![0.0; slots * slots],
            gamma: 1.0,
            spare_holds: None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Coordinates of each vector.
    pub fn n(&self) -> i64 {
        self.pairs.size()[2]
    }

    fn slots(&self) -> usize {
        self.m + 1
    }

    fn bf16(&self) -> bool {
        self.pairs.kind() == Kind::BFloat16
    }

    /// The slot a new pair goes into.
    fn spare(&self) -> usize {
        (self.oldest + self.len) % self.slots()
    }

    /// The slots of the pairs held, oldest first.
    fn chronological(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).map(|i| (self.oldest + i) % self.slots())
    }

    /// Slots the products run over: the pairs held (and the spare slot where `spare`), as a
    /// prefix of the buffer (all of it once it has wrapped).
    fn rows(&self, spare: bool) -> usize {
        if self.oldest == 0 {
            self.len + usize::from(spare)
        } else {
            self.slots()
        }
    }

    /// The first `rows` slots as [2·rows, n] rows s_0, y_0, s_1, …
    fn held(&self, rows: usize) -> Tensor {
        self.pairs.narrow(0, 0, rows as i64).view([2 * rows as i64, -1])
    }

    /// Slots a trial's products run over: every slot where `all` (a captured step keeps its
    /// shapes), else the pairs held and the spare slot (see [`History::rows`]).
    fn trial_rows(&self, all: bool) -> usize {
        if all {
            self.slots()
        } else {
            self.rows(true)
        }
    }

    /// Slots a direction runs over (see [`History::trial_rows`]): the pairs held, or every slot.
    fn direction_rows(&self, all: bool) -> usize {
        if all {
            self.slots()
        } else {
            self.rows(false)
        }
    }

    /// Zeroes the slots not written yet (once per run, where every slot takes part in the
    /// products and directions: a slot's rows must then hold finite numbers).
    fn zero_unwritten(&self) {
        if self.oldest == 0 && self.len + usize::from(self.spare_holds.is_some()) < self.slots() {
            let written = (self.len + usize::from(self.spare_holds.is_some())) as i64;
            let _ = self.pairs.narrow(0, written, self.slots() as i64 - written).zero_();
        }
    }

    /// Writes a trial's pair (`[2, n]`: s, y) into the slot held by `slot` (a device scalar) and
    /// returns the pair as stored (rounded where the history is bf16).
    fn write_pair(&self, pair: &Tensor, slot: &Tensor) -> Tensor {
        let stored = pair.to_kind(self.pairs.kind());
        let _ = self.pairs.shallow_clone().index_copy_(0, &slot.to_kind(Kind::Int64), &stored.unsqueeze(0));
        stored
    }

    /// Writes a trial's s = t·d into the spare slot (by the host's index); returns s (unrounded
    /// where the history is bf16).
    fn write_step(&self, d: &Tensor, t: f64) -> Tensor {
        let s_row = self.pairs.get(self.spare() as i64).get(0);
        if s_row.kind() == d.kind() {
            // (the `out` variants return their output, the row itself)
            return d.mul_scalar_out(&s_row, t);
        }
        let s = d * t;
        s_row.shallow_clone().copy_(&s);
        s
    }

    /// Writes a trial's y = g − g₀ into the spare slot (after [`History::write_step`]); returns
    /// the slot's pair as stored ([2, n]).
    fn write_gradient_change(&self, g: &Tensor, g0: &Tensor) -> Tensor {
        let pair = self.pairs.get(self.spare() as i64);
        let y_row = pair.get(1);
        if y_row.kind() == g.kind() {
            let _ = g.sub_out(&y_row, g0);
        } else {
            y_row.shallow_clone().copy_(&(g - g0));
        }
        pair
    }

    /// The products a point's read brings (see [`Products`]): the first `rows` slots times the
    /// `columns` (`[c, n]`: a trial's s, y and g, or a point's g), in one pass over the rows (the
    /// history is the largest thing an evaluation reads besides the network: 0.5 GB at 512 px
    /// with 100 pairs, 38 GB at 3840 px).
    fn products(&self, columns: &Tensor, rows: usize) -> Option<Tensor> {
        (rows > 0).then(|| forward(&self.held(rows), &columns.transpose(0, 1)).reshape([-1]))
    }

    /// Values read for [`History::products`] over `rows` slots: each row's products with the
    /// columns, row by row.
    fn split_products(&self, values: &[f64], rows: usize, pair: bool) -> Products {
        if rows == 0 {
            return Products::default();
        }
        if !pair {
            return Products { pair: Vec::new(), grad: values[..2 * rows].to_vec() };
        }
        let by_row = values[..6 * rows].chunks_exact(3);
        Products { pair: by_row.clone().flat_map(|r| [r[0], r[1]]).collect(), grad: by_row.map(|r| r[2]).collect() }
    }

    /// s·g of a trial's step and gradient, from its products.
    fn step_times_gradient(&self, p: &Products) -> f64 {
        p.grad[2 * self.spare()]
    }

    /// s·y of a trial's pair, from its products.
    fn curvature(&self, p: &Products) -> f64 {
        p.pair[(2 * self.spare() + 1) * 2]
    }

    /// Takes the pair in the spare slot as the newest (the oldest goes when `m` are held), its
    /// products with the other pairs from the read that brought `p`.
    fn accept(&mut self, p: &Products) {
        let (c, slots) = (self.spare(), self.slots());
        for j in self.chronological().chain([c]).collect::<Vec<_>>() {
            // s_c·y_j, s_j·y_c, y_c·y_j
            self.sty[c * slots + j] = p.pair[(2 * j + 1) * 2];
            self.sty[j * slots + c] = p.pair[(2 * j) * 2 + 1];
            let yy = p.pair[(2 * j + 1) * 2 + 1];
            (self.yty[c * slots + j], self.yty[j * slots + c]) = (yy, yy);
        }
        if self.len < self.m {
            self.len += 1;
        } else {
            self.oldest = (self.oldest + 1) % slots;
        }
        self.gamma = self.sty[c * slots + c] / self.yty[c * slots + c];
        self.spare_holds = None;
    }

    /// Adds a pair (the oldest goes when `m` are held): its products with the other pairs are
    /// taken and read here (one host read). The optimiser writes its pairs trial by trial
    /// instead, with no read of their own.
    pub fn push(&mut self, s: &Tensor, y: &Tensor) {
        let spare = self.spare();
        let row = self.pairs.get(spare as i64);
        row.get(0).copy_(s);
        row.get(1).copy_(y);
        let rows = self.rows(true);
        let pair = host::read(&forward(&self.held(rows), &row.transpose(0, 1)));
        self.accept(&Products { pair, grad: Vec::new() });
    }

    /// This history carried to another parameterisation of the problem (a finer scale of the
    /// same image): a history of `m` pairs of `n` coordinates (bf16 storage when `bf16`) whose
    /// pairs are (map(s), map(y)·y_scale) for the pairs held here, oldest first, keeping the
    /// newest `m`. A pair whose s·y is not positive after the mapping is left out (it would
    /// make H indefinite). Each pair is mapped straight into its row (one pair's temporaries at a
    /// time), and SᵀY and YᵀY come from one product of the rows with themselves, read once.
    pub fn mapped(&self, (m, n, bf16): (usize, i64, bool), map: impl Fn(&Tensor) -> Tensor, y_scale: f64) -> History {
        let mut out = History::new(m, n, self.pairs.device(), bf16);
        let mut k = 0;
        for slot in self.chronological().skip(self.len.saturating_sub(out.m)) {
            let (from, to) = (self.pairs.get(slot as i64), out.pairs.get(k as i64));
            to.get(0).copy_(&map(&from.get(0).to_kind(Kind::Float)));
            to.get(1).copy_(&(map(&from.get(1).to_kind(Kind::Float)) * y_scale));
            k += 1;
        }
        if k == 0 {
            return out;
        }
        // [2k, 2k] of the rows s_0, y_0, s_1, …: s_i·y_j at (2i, 2j+1), y_i·y_j at (2i+1, 2j+1)
        let gram = host::read(&gram(&out.held(k)));
        let at = |r: usize, c: usize| gram[r * 2 * k + c];
        let kept: Vec<usize> = (0..k).filter(|&i| at(2 * i, 2 * i + 1) > 1e-10).collect();
        let slots = out.slots();
        for (to, &from) in kept.iter().enumerate() {
            if to != from {
                out.pairs.get(to as i64).copy_(&out.pairs.get(from as i64));
            }
            for (to_j, &from_j) in kept.iter().enumerate() {
                out.sty[to * slots + to_j] = at(2 * from, 2 * from_j + 1);
                out.yty[to * slots + to_j] = at(2 * from + 1, 2 * from_j + 1);
            }
        }
        if let Some(&newest) = kept.last() {
            out.len = kept.len();
            out.gamma = at(2 * newest, 2 * newest + 1) / at(2 * newest + 1, 2 * newest + 1);
        }
        out
    }

    /// Forgets every pair (γ stays: it only scales the next steepest-descent step).
    pub fn clear(&mut self) {
        self.len = 0;
        self.oldest = 0;
        self.spare_holds = None;
    }

    /// The coefficients (u, w) of the compact representation for the g whose products with the
    /// rows are `grad` (by slot), in chronological order of the pairs.
    fn solve(&self, grad: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let slots = self.slots();
        let order: Vec<usize> = self.chronological().collect();
        let k = order.len();
        let r = |i: usize, j: usize| self.sty[order[i] * slots + order[j]];
        let yty = |i: usize, j: usize| self.yty[order[i] * slots + order[j]];
        let (a, b): (Vec<f64>, Vec<f64>) = order.iter().map(|&s| (grad[2 * s], grad[2 * s + 1])).unzip();
        // R u = a, R upper triangular: back substitution
        let mut u = vec![0.0; k];
        for i in (0..k).rev() {
            u[i] = (a[i] - (i + 1..k).map(|j| r(i, j) * u[j]).sum::<f64>()) / r(i, i);
        }
        // Rᵀ w = (D + γYᵀY) u − γ b: forward substitution
        let gamma = self.gamma;
        let mut w = vec![0.0; k];
        for i in 0..k {
            let inner = r(i, i) * u[i] + gamma * (0..k).map(|j| yty(i, j) * u[j]).sum::<f64>() - gamma * b[i];
            w[i] = (inner - (0..i).map(|j| r(j, i) * w[j]).sum::<f64>()) / r(i, i);
        }
        (u, w)
    }

    /// The coefficients c of the direction −H·g = −γ g + [S; Y]ᵀ c (see [`History`]) over the
    /// first `rows` slots, for the g whose products with the rows are `grad` (by slot): the
    /// solves, on the host. Slots that hold no pair get zero.
    fn coefficients(&self, grad: &[f64], rows: usize) -> Vec<f32> {
        let mut c = vec![0f32; 2 * rows];
        if self.len == 0 {
            return c;
        }
        let (u, w) = self.solve(grad);
        for (i, slot) in self.chronological().enumerate() {
            c[2 * slot] = -w[i] as f32;
            c[2 * slot + 1] = (self.gamma * u[i]) as f32;
        }
        c
    }

    /// Writes the direction −H·g = −γ g + [S; Y]ᵀ c into `d`, with the coefficients `c` over
    /// the first `rows` slots and −γ (`neg_gamma`, [1]) on the device: a product back over the
    /// history and one operator more.
    fn direction_into(&self, d: &Tensor, g: &Tensor, c: &Tensor, neg_gamma: &Tensor, rows: usize) {
        if rows == 0 {
            let _ = g.mul_out(d, neg_gamma);
            return;
        }
        back_into(&self.held(rows), c, d);
        let _ = d.shallow_clone().addcmul_(g, neg_gamma);
    }

    /// The L-BFGS direction −H·g for any g: its products with the rows are taken and read here
    /// (one host read), then the coefficients and the product back as for a line (see [`History`]).
    pub fn direction(&mut self, g: &Tensor) -> Tensor {
        let rows = self.rows(false);
        let grad = match self.products(&g.reshape([1, -1]), rows) {
            Some(p) if self.len > 0 => host::read(&p),
            _ => Vec::new(),
        };
        let mut scalars = vec![-self.gamma as f32];
        scalars.extend(self.coefficients(&grad, rows));
        let scalars = host::upload(&scalars, g.device());
        let d = g.empty_like();
        self.direction_into(&d, g, &scalars.narrow(0, 1, 2 * rows as i64), &scalars.narrow(0, 0, 1), rows);
        d
    }
}

/// Coordinates per chunk of a product over the history's long dimension on a GPU. cuBLAS runs
/// `[2k, n]` × `[n, 3]` (k pairs, n coordinates, a trial's three columns) on few blocks: on an
/// H200 (2026-11-28) `[202, 49 152]` × `[49 152, 3]` took 87 µs, 3× what reading its 40 MB costs;
/// as 256 products of 192 coordinates each, summed, 30 µs (docs/benchmarks.md, "GPU").
const CHUNK: i64 = 256;

/// The `[2k, n]` held rows times `[n, c]` columns, as `[2k, c]` f32 (a bf16 history slice by slice;
/// on a GPU by the kernels of [`crate::engine::products`] where they are loaded, else chunk by
/// chunk of the n coordinates, the chunks' products summed).
pub fn forward(held: &Tensor, columns: &Tensor) -> Tensor {
    if held.kind() == Kind::Float && columns.kind() == Kind::Float {
        if !held.device().is_cuda() {
            return held.matmul(columns);
        }
        return crate::engine::products::products(held, &columns.transpose(0, 1))
            .unwrap_or_else(|| chunked(held, columns));
    }
    let columns = columns.to_kind(Kind::Float);
    slices(held.size()[1])
        .map(|(start, len)| held.narrow(1, start, len).to_kind(Kind::Float).matmul(&columns.narrow(0, start, len)))
        .reduce(|acc, part| acc + part)
        .expect("n > 0")
}

/// `held` `[r, n]` times `columns` `[n, c]` as a batch of products over [`CHUNK`] coordinates each
/// (views of both: no copies), summed, plus the rest of n.
fn chunked(held: &Tensor, columns: &Tensor) -> Tensor {
    let (r, n) = (held.size()[0], held.size()[1]);
    let c = columns.size()[1];
    let chunks = n / CHUNK;
    if chunks < 2 {
        return held.matmul(columns);
    }
    let main = chunks * CHUNK;
    let a = held.narrow(1, 0, main).view([r, chunks, CHUNK]).permute([1, 0, 2]);
    let b = columns.narrow(0, 0, main).view([chunks, CHUNK, c]);
    let sum = a.bmm(&b).sum_dim_intlist(0, false, Kind::Float);
    if main == n {
        sum
    } else {
        sum + held.narrow(1, main, n - main).matmul(&columns.narrow(0, main, n - main))
    }
}

/// The `[2k, n]` held rows times themselves transposed, `[2k, 2k]` f64 (a bf16 history slice by
/// slice: the f32 copy of one slice is the only temporary).
fn gram(held: &Tensor) -> Tensor {
    let product = |h: Tensor| h.matmul(&h.transpose(0, 1)).to_kind(Kind::Double);
    if held.kind() == Kind::Float {
        return product(held.shallow_clone());
    }
    slices(held.size()[1])
        .map(|(start, len)| product(held.narrow(1, start, len).to_kind(Kind::Float)))
        .reduce(|acc, part| acc + part)
        .expect("n > 0")
}

/// Writes the held rows' combination heldᵀ·c (`[n]`, f32) for coefficients `c` (`[2k]`) into `out`.
pub fn back_into(held: &Tensor, c: &Tensor, out: &Tensor) {
    if held.kind() == Kind::Float {
        let _ = held.transpose(0, 1).mv_out(out, c);
        return;
    }
    let n = held.size()[1];
    for (start, len) in slices(n) {
        let _ = held.narrow(1, start, len).to_kind(Kind::Float).transpose(0, 1).mv_out(&out.narrow(0, start, len), c);
    }
}

/// [`BF16_SLICES`] (start, length) slices covering 0..n.
fn slices(n: i64) -> impl Iterator<Item = (i64, i64)> {
    let len = (n + BF16_SLICES - 1) / BF16_SLICES;
    (0..n).step_by(len.max(1) as usize).map(move |start| (start, len.min(n - start)))
}

/// An evaluated point, with the scalars read along with its value.
struct Point {
    /// The point evaluated (never changed afterwards: the problem may keep it).
    x: Tensor,
    t: f64,
    f: f64,
    g: Tensor,
    /// g·d along the line it was tried on (NaN elsewhere).
    gtd: f64,
    /// max |g| (tolerance, first-step scale), and Σ|g| where torch's default first step needs
    /// it (NaN otherwise: not reduced, not read).
    gmax: f64,
    gsum: f64,
    /// The history's rows times its pair and its gradient.
    products: Products,
    /// Which trial of its line it was (0: not a trial).
    trial: u64,
}

/// max|g| and (when `sum`) Σ|g|, as device scalars.
fn gradient_norms(g: &Tensor, sum: bool) -> Vec<Tensor> {
    let norm = |ord: f64| g.linalg_norm(ord, None::<i64>, false, None::<Kind>);
    let mut s = vec![norm(f64::INFINITY)];
    if sum {
        s.push(norm(1.0));
    }
    s
}

/// Evaluates the problem at `x` (not a trial on a line), with max|g|, Σ|g| (when `sum`) and the
/// history's rows times g in the same host read.
fn probe<P: Problem>(problem: &mut P, x: &Tensor, sum: bool, history: &History) -> Result<Point, P::Stop> {
    let rows = history.rows(false);
    let (terms, g, v) = evaluate_and_read(problem, x, |g| {
        let mut s = gradient_norms(g, sum);
        s.extend(history.products(&g.reshape([1, -1]), rows));
        s
    })?;
    let gmax = v[0];
    let gsum = if sum { v[1] } else { f64::NAN };
    let products = history.split_products(&v[1 + usize::from(sum)..], rows, false);
    Ok(Point { x: x.shallow_clone(), t: 0.0, f: terms[0], g, gtd: f64::NAN, gmax, gsum, products, trial: 0 })
}

/// The device side of a run's line searches, in tensors that stay where they are (a problem may
/// capture a trial as a CUDA graph, which reads them by address): the line's start x₀ and its
/// gradient g₀, its direction d, the last trial's point (where a captured line's first trial
/// takes x₀ from), the last trial's s, y and g as the rows of one `[3, n]` tensor (the columns
/// of its products; a captured line's first trial takes g₀ from its g), and the scalars
/// uploaded for each trial ([`Scalars`]).
struct Buffers {
    x0: Tensor,
    g0: Tensor,
    d: Tensor,
    last_x: Tensor,
    trial: Tensor,
    scalars: Tensor,
}

/// Positions in [`Buffers::scalars`]: the trial's t, the spare slot, whether the trial is its
/// line's first (1) or not (0), then −γ and the direction's coefficients by slot (uploaded with
/// a line's first trial).
struct Scalars;

impl Scalars {
    const T: i64 = 0;
    const SLOT: i64 = 1;
    const FIRST: i64 = 2;
    const NEG_GAMMA: i64 = 3;
    const COEFFICIENTS: i64 = 4;
}

impl Buffers {
    /// Buffers for vectors of `n` and a history of `slots` slots; x₀, g₀ and the last trial's
    /// point and vectors only where the steps are captured (`all`: elsewhere a line reads its
    /// start point's own tensors, and these stay empty).
    fn new(n: i64, device: Device, slots: usize, all: bool) -> Self {
        let vector = |n| Tensor::zeros([n], (Kind::Float, device));
        let n_captured = if all { n } else { 0 };
        let scalars = vector(Scalars::COEFFICIENTS + 2 * slots as i64);
        let trial = Tensor::zeros([3, n_captured], (Kind::Float, device));
        Self {
            x0: vector(n_captured),
            g0: vector(n_captured),
            d: vector(n),
            last_x: vector(n_captured),
            trial,
            scalars,
        }
    }

    fn scalar(&self, at: i64) -> Tensor {
        self.scalars.narrow(0, at, 1)
    }

    /// The last trial's s = t·d, y = g − g₀ (as `[2, n]`: the pair a captured trial writes into
    /// the history) and g.
    fn pair(&self) -> Tensor {
        self.trial.narrow(0, 0, 2)
    }

    fn s(&self) -> Tensor {
        self.trial.get(0)
    }

    fn y(&self) -> Tensor {
        self.trial.get(1)
    }

    fn last_g(&self) -> Tensor {
        self.trial.get(2)
    }
}

/// The direction of a line, as a line's first trial computes it on the device: −γ and the
/// coefficients over `rows` slots (see [`History::direction_into`]).
struct Direction {
    neg_gamma: f32,
    coefficients: Vec<f32>,
    rows: usize,
}

/// The line x₀ + t·d searched from a point (`from`: x₀ and g₀); each trial's pair goes into the
/// history's spare slot, its products with every slot (`all`: the problem captures its steps)
/// or with those written so far. Where `all`, x₀ and g₀ are read from `buffers`, where the
/// line's first trial copies them from the last trial's point and gradient.
struct Line<'a> {
    from: &'a Point,
    buffers: &'a Buffers,
    history: &'a mut History,
    sum: bool,
    /// max|d| is read with the first trial (a tolerance on the change asks for it).
    dmax: bool,
    all: bool,
    trials: u64,
    /// g₀·d, once the first trial has read it.
    gtd0: f64,
}

impl Line<'_> {
    /// x₀ and g₀ as the line's trials read them.
    fn start_vectors(&self) -> (&Tensor, &Tensor) {
        if self.all {
            (&self.buffers.x0, &self.buffers.g0)
        } else {
            (&self.from.x, &self.from.g)
        }
    }

    /// Evaluates the problem at x₀ + t·d (the line's first trial computes d, from `first`),
    /// with max|g|, Σ|g| (when `sum`), g·d, the history's rows times the trial's pair and g,
    /// and with the first trial g₀·d and max|d|, all in the same host read: one [`Step`], which
    /// the problem may capture. Where it does (`all`), every trial runs the same operators (one
    /// graph per run): each computes the direction and keeps it only when it is its line's
    /// first, and reads g₀·d and max|d|. Returns the point and, for the first trial,
    /// [g₀·d, max|d|].
    fn probe<P: Problem>(
        &mut self,
        problem: &mut P,
        t: f64,
        first: Option<&Direction>,
    ) -> Result<(Point, Vec<f64>), P::Stop> {
        self.trials += 1;
        let trial = self.trials;
        let (x0, g0) = self.start_vectors();
        let (b, history, sum, all) = (self.buffers, &*self.history, self.sum, self.all);
        let mut scalars = vec![t as f32, history.spare() as f32, f32::from(u8::from(first.is_some()))];
        if let Some(dir) = first {
            scalars.push(dir.neg_gamma);
            scalars.extend(&dir.coefficients);
        }
        // a captured trial reads t and the slot on the device; an eager one only the direction
        if all || first.is_some() {
            host::upload_into(&b.scalars, &scalars);
        }
        let rows = history.trial_rows(all);
        let bf16 = history.bf16();
        // g₀·d and max|d|: read with a line's first trial (with every trial where `all`)
        let line_values = first.is_some() || all;
        let dmax = line_values && self.dmax;
        let direction_rows = first.map_or(history.direction_rows(all), |d| d.rows);
        let point = || {
            let c = b.scalars.narrow(0, Scalars::COEFFICIENTS, 2 * direction_rows as i64);
            let neg_gamma = b.scalar(Scalars::NEG_GAMMA);
            if all {
                // a line's first trial starts from the last trial's point and gradient (or those
                // copied there) and computes the direction; later trials keep them (each a
                // `where` into the buffer itself: one operator)
                let first = b.scalar(Scalars::FIRST).gt(0.5);
                let _ = b.last_x.where_self_out(&b.x0, &first, &b.x0);
                let _ = b.last_g().where_self_out(&b.g0, &first, &b.g0);
                let d = b.d.empty_like();
                history.direction_into(&d, &b.g0, &c, &neg_gamma, direction_rows);
                let _ = d.where_self_out(&b.d, &first, &b.d);
                // s into the trial's first row, x into the last point's buffer
                let s = b.d.mul_out(&b.s(), &b.scalar(Scalars::T));
                return b.x0.add_out(&b.last_x, &s);
            }
            if first.is_some() {
                history.direction_into(&b.d, g0, &c, &neg_gamma, direction_rows);
            }
            x0 + history.write_step(&b.d, t)
        };
        let extras = |g: &Tensor| {
            let pair = if all {
                // y and g beside s in the trial's rows, the pair into the spare slot by the
                // device's index
                b.last_g().copy_(g);
                let _ = g.sub_out(&b.y(), g0);
                history.write_pair(&b.pair(), &b.scalar(Scalars::SLOT))
            } else {
                history.write_gradient_change(g, g0)
            };
            let mut e = gradient_norms(g, sum);
            if bf16 {
                // (with an f32 history g·d is s·g / t, one of the products)
                e.push(g.dot(&b.d));
            }
            if line_values {
                e.push(g0.dot(&b.d));
            }
            if dmax {
                e.push(b.d.linalg_norm(f64::INFINITY, None::<i64>, false, None::<Kind>));
            }
            // the trial's rows are the columns as they are, where the history holds them
            // unrounded (an f32 history); else the pair as stored, and g
            let columns =
                if all && !bf16 { b.trial.shallow_clone() } else { Tensor::cat(&[pair, g.reshape([1, -1])], 0) };
            e.extend(history.products(&columns, rows));
            e
        };
        let name = match (all, first.is_some()) {
            (true, _) => format!("lbfgs trial: sum {sum}, max|d| {dmax}, rows {rows}"),
            (false, true) => "lbfgs first trial".to_string(),
            (false, false) => "lbfgs next trial".to_string(),
        };
        let uses = [x0, g0, &b.d, &b.last_x, &b.trial, &b.scalars, &history.pairs];
        // what a captured trial updates from its own values (see Step::state)
        let state: &[&Tensor] = if all { &[&b.x0, &b.g0, &b.d, &b.last_x, &b.trial] } else { &[] };
        let n_extras =
            1 + usize::from(sum) + usize::from(bf16) + usize::from(line_values) + usize::from(dmax) + 6 * rows;
        let Stepped { x, terms, g, extras: v } = step_and_read(
            problem,
            &Step { name: &name, uses: &uses, state, point: &point, extras: &extras },
            n_extras,
        )?;
        self.history.spare_holds = Some(trial);
        let mut v = v.into_iter();
        let mut next = || v.next().expect("the scalars asked for");
        let gmax = next();
        let gsum = if sum { next() } else { f64::NAN };
        let gtd = if bf16 { next() } else { f64::NAN };
        let mut line = Vec::new();
        if line_values {
            line.push(next());
            line.push(if dmax { next() } else { f64::INFINITY });
            self.gtd0 = line[0];
        }
        let products = self.history.split_products(&v.collect::<Vec<f64>>(), rows, true);
        let gtd = match (bf16, t == 0.0) {
            (true, _) => gtd,
            // at t = 0 the point is x₀, whose g·d is g₀·d
            (false, true) => self.gtd0,
            (false, false) => self.history.step_times_gradient(&products) / t,
        };
        Ok((Point { x, t, f: terms[0], g, gtd, gmax, gsum, products, trial }, line))
    }

    /// The start of the line as a point (t = 0).
    fn start(&self, f0: f64, gtd0: f64) -> Point {
        Point {
            x: self.from.x.shallow_clone(),
            t: 0.0,
            f: f0,
            g: self.from.g.shallow_clone(),
            gtd: gtd0,
            gmax: 0.0,
            gsum: 0.0,
            products: Products::default(),
            trial: 0,
        }
    }

    /// Takes the pair of the trial `p` into the history when its s·y is positive. When a later
    /// trial has written the spare slot since, `p`'s pair is written again (s = t·d,
    /// y = g − g₀: the same numbers as its read's products were taken with).
    fn take(&mut self, p: &Point) {
        if self.history.curvature(&p.products) <= 1e-10 {
            return;
        }
        if self.history.spare_holds != Some(p.trial) {
            let g0 = self.start_vectors().1.shallow_clone();
            let _ = self.history.write_step(&self.buffers.d, p.t);
            let _ = self.history.write_gradient_change(&p.g, &g0);
            self.history.spare_holds = Some(p.trial);
        }
        self.history.accept(&p.products);
    }
}

/// Minimises `f` from `x0` with at most `max_evals` evaluations of `f`. `f` maps a flat point
/// to (value, flat gradient); an `Err` from it (e.g. cancellation) ends the run at once.
pub fn minimize<E>(
    config: &LbfgsConfig,
    x0: &Tensor,
    max_evals: usize,
    f: impl FnMut(&Tensor) -> Result<(f64, Tensor), E>,
) -> Result<Outcome, E> {
    minimize_problem(config, x0, max_evals, &mut FnProblem::new(f))
}

/// [`minimize`] over a [`Problem`]: one host read per evaluation.
pub fn minimize_problem<P: Problem>(
    config: &LbfgsConfig,
    x0: &Tensor,
    max_evals: usize,
    problem: &mut P,
) -> Result<Outcome, P::Stop> {
    minimize_with_history(config, x0, max_evals, problem, &mut None)
}

/// [`minimize_problem`] from a `history` of an earlier run (e.g. a coarser scale's, carried by
/// [`History::mapped`]): when it holds pairs for x's coordinates, as many and stored as the
/// config says, the first direction is the quasi-Newton one with a step of `lr` instead of steepest
/// descent with a first step; otherwise a new history. The run's history is left in `history`
/// however the run ends (also when the problem stops it).
pub fn minimize_with_history<P: Problem>(
    config: &LbfgsConfig,
    x0: &Tensor,
    max_evals: usize,
    problem: &mut P,
    history: &mut Option<History>,
) -> Result<Outcome, P::Stop> {
    // x is replaced, never changed in place: the problem may keep the points it evaluated
    let x = x0.detach().copy();
    let n = x.numel() as i64;
    let m = config.history_size.max(1);
    let kind = if config.history_bf16 { Kind::BFloat16 } else { Kind::Float };
    if !history.as_ref().is_some_and(|h| h.n() == n && h.m == m && h.pairs.kind() == kind) {
        *history = Some(History::new(m, n, x.device(), config.history_bf16));
    }
    let history = history.as_mut().expect("set above");
    // a problem that captures its steps gets the same shapes at every trial: products and
    // directions over every slot of the history (the slots not written yet hold zeros)
    let all = problem.captures_steps();
    if all {
        history.zero_unwritten();
    }
    let buffers = Buffers::new(n, x.device(), history.slots(), all);
    // Σ|g| only for torch's default first step
    let sum = config.first_step.is_none();
    let mut here = probe(problem, &x, sum, history)?;
    let mut evals = 1;
    let mut iterations = 0;
    let mut failed_searches = 0;
    let done = |p: Point, evaluations, iterations, stop, failed_searches| Outcome {
        x: p.x,
        value: p.f,
        evaluations,
        iterations,
        stop,
        failed_searches,
    };
    if here.gmax <= config.tolerance_grad {
        return Ok(done(here, evals, iterations, Stop::Converged, failed_searches));
    }
    // the next direction is steepest descent with a first step (the first iteration without a
    // carried history, and after a failed line search: then `restarts` consecutive failures
    // shorten the step)
    let mut fresh = history.is_empty();
    let mut restarts = 0;
    // max|d| only where a tolerance on the change asks for it
    let dmax_needed = config.tolerance_change > 0.0;
    // whether the last trial evaluated is `here` (its point and gradient in the buffers)
    let mut last_is_here = false;
    while evals < max_evals {
        iterations += 1;
        problem.iteration();
        if all && !last_is_here {
            // a captured line's first trial starts from the last trial's point: this one
            buffers.last_x.shallow_clone().copy_(&here.x);
            buffers.last_g().copy_(&here.g);
        }
        let rows = history.direction_rows(all);
        let direction = if fresh {
            // −g: no pair takes part
            Direction { neg_gamma: -1.0, coefficients: vec![0.0; 2 * rows], rows }
        } else {
            Direction {
                neg_gamma: -history.gamma as f32,
                coefficients: history.coefficients(&here.products.grad, rows),
                rows,
            }
        };
        let t = if fresh {
            let shorter = 0.1f64.powi(restarts);
            match config.first_step {
                Some(step) => shorter * step / here.gmax.max(f64::MIN_POSITIVE),
                None => shorter * (1.0f64).min(1.0 / here.gsum) * config.lr,
            }
        } else {
            config.lr
        };
        let prev_loss = here.f;
        let mut line =
            Line { from: &here, buffers: &buffers, history, sum, dmax: dmax_needed, all, trials: 0, gtd0: f64::NAN };
        let (point, gtd0, dmax) = if config.strong_wolfe {
            // the search's first evaluation plus at most `max_ls` more stay within the budget
            let max_ls = (max_evals - evals).min(25) - 1;
            let limits = Limits { tolerance_change: config.tolerance_change, max_ls, patience: config.patience };
            let ls = strong_wolfe(problem, &mut line, t, here.f, &direction, limits)?;
            evals += ls.evals;
            tracing::trace!(iterations, fresh, trials = ls.evals, t = ls.best.t, value = ls.best.f, "line search");
            (ls.best, ls.gtd0, ls.dmax)
        } else {
            let (p, v) = line.probe(problem, t, Some(&direction))?;
            evals += 1;
            (p, v[0], v[1])
        };
        if gtd0 > -config.tolerance_change || point.t == 0.0 {
            // not a descent direction, or no decrease found along it
            if fresh && gtd0 > -config.tolerance_change {
                // steepest descent itself: |g|² is below tolerance
                return Ok(done(here, evals, iterations, Stop::Converged, failed_searches));
            }
            failed_searches += 1;
            last_is_here = false;
            restarts = if fresh { restarts + 1 } else { 0 };
            fresh = true;
            history.clear();
            if problem.search_failed() && evals < max_evals {
                // the problem's values changed (e.g. a more precise network): start again here,
                // with the full first step
                here = probe(problem, &here.x, sum, history)?;
                evals += 1;
                restarts = 0;
            }
            continue;
        }
        line.take(&point);
        last_is_here = point.trial == line.trials;
        here = point;
        fresh = false;
        restarts = 0;
        if here.gmax <= config.tolerance_grad
            || dmax * here.t <= config.tolerance_change
            || (here.f - prev_loss).abs() < config.tolerance_change
        {
            return Ok(done(here, evals, iterations, Stop::Converged, failed_searches));
        }
    }
    Ok(done(here, evals, iterations, Stop::Budget, failed_searches))
}

/// Minimiser of the cubic interpolating (x1, f1, g1), (x2, f2, g2), clamped to `bounds`.
fn cubic_interpolate(x1: f64, f1: f64, g1: f64, x2: f64, f2: f64, g2: f64, bounds: Option<(f64, f64)>) -> f64 {
    let (lo, hi) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(lo).min(hi)
    } else {
        (lo + hi) / 2.0
    }
}

/// When a line search stops.
struct Limits {
    tolerance_change: f64,
    /// Trials after the first.
    max_ls: usize,
    /// See [`LbfgsConfig::patience`].
    patience: Option<usize>,
}

struct LineSearch {
    /// The point taken: the start point (t = 0) when no decrease was found.
    best: Point,
    evals: usize,
    /// g₀·d and max|d|, read with the first evaluation (max|d| infinite where not asked for).
    gtd0: f64,
    dmax: f64,
}

/// Strong-Wolfe line search (c1 = 1e-4, c2 = 0.9), as torch.optim.lbfgs._strong_wolfe, along
/// `line` from its start (value f0) along `direction`, which the first trial computes and reads
/// g₀·d (and max|d|) with.
fn strong_wolfe<P: Problem>(
    problem: &mut P,
    line: &mut Line,
    mut t: f64,
    f0: f64,
    direction: &Direction,
    limits: Limits,
) -> Result<LineSearch, P::Stop> {
    let Limits { tolerance_change, max_ls, patience } = limits;
    let (c1, c2) = (1e-4, 0.9);
    let (mut new, v) = line.probe(problem, t, Some(direction))?;
    let (gtd0, d_norm) = (v[0], v[1]);
    let mut evals = 1;
    // trials so far, and whether any was below the start
    let mut decreased = new.f < f0;
    let out_of_patience = |evals: usize, decreased: bool| !decreased && patience.is_some_and(|p| evals >= p);
    if gtd0 > -tolerance_change || out_of_patience(evals, decreased) {
        // not a descent direction: the caller restarts
        return Ok(LineSearch { best: line.start(f0, gtd0), evals, gtd0, dmax: d_norm });
    }
    let mut prev = line.start(f0, gtd0);
    let mut ls_iter = 0;
    let mut done = false;
    let mut bracket: Vec<Point>;
    loop {
        if ls_iter >= max_ls {
            bracket = vec![line.start(f0, gtd0), new];
            break;
        }
        if new.f > f0 + c1 * new.t * gtd0 || (ls_iter > 1 && new.f >= prev.f) || new.gtd >= 0.0 {
            bracket = vec![prev, new];
            break;
        }
        if new.gtd.abs() <= -c2 * gtd0 {
            bracket = vec![new];
            done = true;
            break;
        }
        let min_step = new.t + 0.01 * (new.t - prev.t);
        let max_step = new.t * 10.0;
        t = cubic_interpolate(prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd, Some((min_step, max_step)));
        prev = new;
        new = line.probe(problem, t, None)?.0;
        evals += 1;
        ls_iter += 1;
        decreased |= new.f < f0;
        if out_of_patience(evals, decreased) {
            return Ok(LineSearch { best: line.start(f0, gtd0), evals, gtd0, dmax: d_norm });
        }
    }
    // zoom
    let mut insuf_progress = false;
    let order = |b: &Vec<Point>| {
        if b[0].f <= b[b.len() - 1].f {
            (0, 1)
        } else {
            (1, 0)
        }
    };
    let (mut low, mut high) = order(&bracket);
    // trials since the bracket's best point last improved: with noisy values the zoom can
    // shrink the bracket onto its best point without ever meeting the curvature condition
    let mut stale = 0;
    while !done && ls_iter < max_ls && bracket.len() == 2 {
        if patience.is_some_and(|p| stale >= p) {
            break;
        }
        if (bracket[1].t - bracket[0].t).abs() * d_norm < tolerance_change {
            break;
        }
        let (b0, b1) = (&bracket[0], &bracket[1]);
        t = cubic_interpolate(b0.t, b0.f, b0.gtd, b1.t, b1.f, b1.gtd, None);
        let (bmin, bmax) = (b0.t.min(b1.t), b0.t.max(b1.t));
        let eps = 0.1 * (bmax - bmin);
        if (bmax - t).min(t - bmin) < eps {
            if insuf_progress || t >= bmax || t <= bmin {
                t = if (t - bmax).abs() < (t - bmin).abs() { bmax - eps } else { bmin + eps };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }
        let p = line.probe(problem, t, None)?.0;
        evals += 1;
        ls_iter += 1;
        decreased |= p.f < f0;
        if out_of_patience(evals, decreased) {
            return Ok(LineSearch { best: line.start(f0, gtd0), evals, gtd0, dmax: d_norm });
        }
        if p.f > f0 + c1 * t * gtd0 || p.f >= bracket[low].f {
            bracket[high] = p;
            (low, high) = order(&bracket);
            stale += 1;
        } else {
            stale = 0;
            if p.gtd.abs() <= -c2 * gtd0 {
                done = true;
            } else if p.gtd * (bracket[high].t - bracket[low].t) >= 0.0 {
                bracket.swap(low, high);
            }
            bracket[low] = p;
        }
    }
    let mut best = bracket.swap_remove(if bracket.len() == 1 { 0 } else { low });
    if best.f >= f0 {
        // no decrease: hand back the start point (t = 0)
        best = line.start(f0, gtd0);
    }
    Ok(LineSearch { best, evals, gtd0, dmax: d_norm })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn abs_max(a: &Tensor) -> f64 {
        a.abs().max().double_value(&[])
    }

    /// −H·g by torch's two-loop recursion over `pairs` (oldest first), in f64.
    fn two_loop(pairs: &[(Tensor, Tensor)], g: &Tensor) -> Tensor {
        let dot = |a: &Tensor, b: &Tensor| a.dot(b).double_value(&[]);
        let (s_last, y_last) = pairs.last().unwrap();
        let h_diag = dot(y_last, s_last) / dot(y_last, y_last);
        let ro: Vec<f64> = pairs.iter().map(|(s, y)| 1.0 / dot(y, s)).collect();
        let mut q = g.neg();
        let mut al = vec![0.0; pairs.len()];
        for i in (0..pairs.len()).rev() {
            al[i] = dot(&pairs[i].0, &q) * ro[i];
            q -= &pairs[i].1 * al[i];
        }
        let mut r = q * h_diag;
        for (i, (s, y)) in pairs.iter().enumerate() {
            let be = dot(y, &r) * ro[i];
            r += s * (al[i] - be);
        }
        r
    }

    /// The compact direction of a history (f32 or bf16 storage) against the two-loop recursion
    /// over the same pairs as stored (rounded to bf16 first where the history is bf16).
    fn compact_matches_two_loop(bf16: bool, n: i64, tolerance: f64) {
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        // y = A s with A symmetric positive definite: every pair has s·y > 0
        let b = Tensor::randn([n, n], opts);
        let a = b.matmul(&b.transpose(0, 1)) / n as f64 + Tensor::eye(n, opts);
        let m = 5;
        let mut history = History::new(m, n, Device::Cpu, bf16);
        let stored = if bf16 { Kind::BFloat16 } else { Kind::Float };
        let mut pairs = Vec::new();
        let g = Tensor::randn([n], opts);
        // 12 pairs through a history of 5: the ring buffer fills and wraps around
        for i in 0..12 {
            let s = Tensor::randn([n], opts);
            let y = a.mv(&s);
            let as_stored = |v: &Tensor| v.to_kind(stored).to_kind(Kind::Double);
            let (s, y) = (as_stored(&s), as_stored(&y));
            history.push(&s.to_kind(Kind::Float), &y.to_kind(Kind::Float));
            pairs.push((s, y));
            let held = &pairs[pairs.len().saturating_sub(m)..];
            assert_eq!(history.len(), held.len());
            if i % 4 == 1 {
                // the next push comes before any direction: it settles this pair's products
                continue;
            }
            let compact = history.direction(&g.to_kind(Kind::Float)).to_kind(Kind::Double);
            let reference = two_loop(held, &g);
            let err = abs_max(&(&compact - &reference)) / abs_max(&reference);
            assert!(err < tolerance, "after {} pairs: relative difference {err}", i + 1);
        }
        history.clear();
        assert!(history.is_empty());
        assert!(abs_max(&(history.direction(&g.to_kind(Kind::Float)) + g.to_kind(Kind::Float) * history.gamma)) == 0.0);
    }

    #[test]
    fn a_mapped_history_is_the_newest_pairs_mapped() {
        tch::manual_seed(5);
        let n = 30;
        let opts = (Kind::Float, Device::Cpu);
        let mut history = History::new(6, n, Device::Cpu, false);
        let mut pairs = Vec::new();
        for _ in 0..9 {
            let s = Tensor::randn([n], opts);
            // y = diag(1..n)·s: s·y > 0
            let y = &s * (Tensor::arange(n, opts) + 1.0);
            history.push(&s, &y);
            pairs.push((s, y));
        }
        let g = Tensor::randn([n], opts);
        // the same coordinates, y scaled by 1: the same matrix
        let mut same = history.mapped((6, n, false), |v| v.shallow_clone(), 1.0);
        assert_eq!(same.len(), 6);
        let (a, b) = (history.direction(&g), same.direction(&g));
        assert!(abs_max(&(&a - &b)) <= 1e-5 * abs_max(&a), "{}", abs_max(&(&a - &b)));
        // a longer vector (each coordinate twice), y halved, room for 4: the newest 4 pairs
        let twice = |v: &Tensor| Tensor::cat(&[v, v], 0);
        let mut mapped = history.mapped((4, 2 * n, false), twice, 0.5);
        assert_eq!((mapped.len(), mapped.n()), (4, 2 * n));
        let as_f64 = |v: &Tensor| v.to_kind(Kind::Double);
        let expected: Vec<(Tensor, Tensor)> =
            pairs[5..].iter().map(|(s, y)| (as_f64(&twice(s)), as_f64(&(twice(y) * 0.5)))).collect();
        let g2 = Tensor::randn([2 * n], opts);
        let (got, reference) = (as_f64(&mapped.direction(&g2)), two_loop(&expected, &as_f64(&g2)));
        assert!(abs_max(&(&got - &reference)) <= 1e-4 * abs_max(&reference));
        // a pair with s·y ≤ 0 after the mapping is left out
        let flipped = history.mapped((6, n, false), |v| v.shallow_clone(), -1.0);
        assert!(flipped.is_empty());
        // … also from the middle of the history, into f32 or bf16 rows: y = w·s with w = 1 on the
        // second half, and on the first half 1 for even pairs, −0.1 for odd ones; the map keeps
        // the first half only, so the odd pairs' s·y turns negative
        let half = (Tensor::arange(n, opts) - n as f64 / 2.0).sign().clamp_min(0.0);
        let mut history = History::new(8, n, Device::Cpu, false);
        let mut pairs = Vec::new();
        for i in 0..8 {
            let s = Tensor::randn([n], opts) + 0.1;
            let w = if i % 2 == 0 { half.ones_like() } else { &half * 1.1 - 0.1 };
            let y = &s * w;
            history.push(&s, &y);
            pairs.push((s, y));
        }
        let first_half = |v: &Tensor| v * (1.0 - &half);
        for (bf16, tolerance) in [(false, 1e-4), (true, 1e-3)] {
            let mut mapped = history.mapped((8, n, bf16), first_half, 1.0);
            let stored = |v: &Tensor| v.to_kind(if bf16 { Kind::BFloat16 } else { Kind::Float }).to_kind(Kind::Double);
            let even: Vec<(Tensor, Tensor)> =
                pairs.iter().step_by(2).map(|(s, y)| (stored(&first_half(s)), stored(&first_half(y)))).collect();
            assert_eq!(mapped.len(), 4, "the odd pairs are left out");
            let (got, reference) = (as_f64(&mapped.direction(&g)), two_loop(&even, &as_f64(&g)));
            assert!(abs_max(&(&got - &reference)) <= tolerance * abs_max(&reference), "bf16 {bf16}");
        }
    }

    /// Fine coordinates z (2n), coarse x = D z (each pair of neighbours averaged): the fine
    /// objective is the coarse one of D z plus a term that pulls neighbours together. A coarse
    /// run's history carried to the fine problem (each coordinate twice, y halved: exactly the
    /// fine gradient of a change that is constant over each pair) lets the fine run go on where
    /// the coarse one left off; a new history starts again from steepest descent.
    #[test]
    fn a_carried_history_goes_on_where_the_coarse_run_left_off() {
        let n = 40;
        let opts = (Kind::Float, Device::Cpu);
        // ill-conditioned: curvatures 1 … 1000
        let c = (Tensor::arange(n, opts) * (3.0 / (n - 1) as f64 * std::f64::consts::LN_10)).exp();
        let b = Tensor::arange(n, opts).sin();
        let coarse = |x: &Tensor| -> Result<(f64, Tensor), ()> {
            let r = x - &b;
            Ok(((&c * r.square()).sum(Kind::Float).double_value(&[]) * 0.5, &c * r))
        };
        let down = |z: &Tensor| z.view([2, n]).mean_dim(0, false, Kind::Float);
        let twice = |v: &Tensor| Tensor::cat(&[v, v], 0);
        let fine = |z: &Tensor| -> Result<(f64, Tensor), ()> {
            let (f, g) = coarse(&down(z))?;
            let rough = z - twice(&down(z));
            Ok((f + rough.square().sum(Kind::Float).double_value(&[]), twice(&g) * 0.5 + rough * 2.0))
        };
        let cfg = engine_like();
        let mut history = None;
        let x = minimize_with_history(&cfg, &Tensor::zeros([n], opts), 30, &mut FnProblem::new(coarse), &mut history)
            .unwrap()
            .x;
        let held = history.as_ref().unwrap().len();
        assert!(held >= 10, "{held} pairs");
        let z0 = twice(&x);
        let start = fine(&z0).unwrap().0;
        let mut carried = history.map(|h| h.mapped((100, 2 * n, false), twice, 0.5));
        assert_eq!(carried.as_ref().unwrap().len(), held);
        let warm = minimize_with_history(&cfg, &z0, 10, &mut FnProblem::new(fine), &mut carried).unwrap().value;
        let cold = minimize_with_history(&cfg, &z0, 10, &mut FnProblem::new(fine), &mut None).unwrap().value;
        eprintln!("fine start {start:.3e}; after 10 evaluations: carried {warm:.3e}, new history {cold:.3e}");
        assert!(warm < start && cold < start);
        assert!(warm < 0.5 * cold, "carried {warm:.3e}, new history {cold:.3e}");
    }

    #[test]
    fn compact_representation_is_the_two_loop_recursion() {
        compact_matches_two_loop(false, 40, 1e-4);
    }

    #[test]
    fn a_bf16_history_is_the_two_loop_recursion_over_its_rounded_pairs() {
        // 1003 coordinates: the products run over 16 slices, the last one short
        compact_matches_two_loop(true, 1003, 1e-3);
    }

    /// The settings the engine runs with (line search, no tolerances, a first step in pixels).
    /// A problem that says it captures its steps (as the engine's does on a GPU) but runs them
    /// eagerly, checking what a captured step needs: every step of a name runs over the same
    /// tensors (a graph reads them by address), and the first of each name, run again from its
    /// `state` as it was (as a capture's check replays it), gives the same.
    struct CapturingProblem<F> {
        inner: FnProblem<F, ()>,
        captures: bool,
        seen: std::collections::HashMap<String, Vec<(usize, Vec<i64>)>>,
        replayed: std::collections::HashSet<String>,
    }

    impl<F: FnMut(&Tensor) -> Result<(f64, Tensor), ()>> Problem for CapturingProblem<F> {
        type Stop = ();

        fn evaluate(&mut self, x: &Tensor) -> (Tensor, Tensor) {
            self.inner.evaluate(x)
        }

        fn evaluated(&mut self, terms: &[f64]) -> Result<(), ()> {
            self.inner.evaluated(terms)
        }

        fn captures_steps(&self) -> bool {
            self.captures
        }

        fn evaluate_step(&mut self, step: &Step) -> (Tensor, Tensor, Tensor) {
            let uses: Vec<(usize, Vec<i64>)> = step.uses.iter().map(|t| (t.data_ptr() as usize, t.size())).collect();
            let first = self.seen.entry(step.name.to_string()).or_insert_with(|| uses.clone());
            if self.captures {
                assert_eq!(*first, uses, "step {:?} runs over other tensors than when first run", step.name);
            }
            if !self.captures {
                return super::super::run_step(self, step);
            }
            // as the engine's problem does: a captured step's outputs (a replayed graph's, or
            // tensors of its `uses`) are overwritten by the next step, so the caller gets copies
            let copied = |(x, joined, g): (Tensor, Tensor, Tensor)| (x.copy(), joined.copy(), g.copy());
            if self.replayed.contains(step.name) {
                return copied(super::super::run_step(self, step));
            }
            self.replayed.insert(step.name.to_string());
            let saved: Vec<Tensor> = step.state.iter().map(|t| t.copy()).collect();
            let warm = copied(super::super::run_step(self, step));
            for (to, from) in step.state.iter().zip(&saved) {
                to.shallow_clone().copy_(from);
            }
            let again = copied(super::super::run_step(self, step));
            for (a, b) in [(&warm.0, &again.0), (&warm.1, &again.1), (&warm.2, &again.2)] {
                assert!(a.equal(b), "step {:?} run again from its saved state differs", step.name);
            }
            again
        }
    }

    #[test]
    fn steps_that_a_problem_captures_keep_their_tensors_and_take_the_same_path() {
        let n = 40;
        let opts = (Kind::Float, Device::Cpu);
        let c = (Tensor::arange(n, opts) * (2.0 / (n - 1) as f64 * std::f64::consts::LN_10)).exp();
        let f = |x: &Tensor| -> Result<(f64, Tensor), ()> {
            let r = x - Tensor::arange(n, opts).sin();
            Ok((
                (&c * r.square()).sum(Kind::Float).double_value(&[]) * 0.5
                    + r.pow_tensor_scalar(4).sum(Kind::Float).double_value(&[]),
                &c * &r + r.pow_tensor_scalar(3) * 4.0,
            ))
        };
        let run = |captures: bool, m: usize| {
            let cfg = LbfgsConfig { history_size: m, ..engine_like() };
            let mut problem = CapturingProblem {
                inner: FnProblem::new(f),
                captures,
                seen: Default::default(),
                replayed: Default::default(),
            };
            let out = match m {
                0 => super::super::adam::minimize_problem(
                    &Default::default(),
                    &Tensor::zeros([n], opts),
                    60,
                    &mut problem,
                ),
                _ => minimize_problem(&cfg, &Tensor::zeros([n], opts), 60, &mut problem),
            };
            (out.unwrap(), problem.seen.len())
        };
        // history 5 fills and wraps around within 60 evaluations; 100 does not fill (0: Adam)
        for m in [5, 100, 0] {
            let ((eager, _), (captured, names)) = (run(false, m), run(true, m));
            eprintln!(
                "m = {m}: eager {:.6e} ({} iterations), captured {:.6e} ({} iterations, {names} step names)",
                eager.value, eager.iterations, captured.value, captured.iterations
            );
            assert_eq!(names, 1, "one step for every trial where captured");
            assert_eq!(captured.evaluations, eager.evaluations);
            if m > 0 {
                assert!(
                    eager.value < 1e-3 * f(&Tensor::zeros([n], opts)).unwrap().0,
                    "the run converges: {}",
                    eager.value
                );
            }
            // the same arithmetic, over more rows (zeros): the same path to rounding
            assert!(
                (captured.value - eager.value).abs() <= 1e-3 * eager.value.abs().max(1e-12),
                "{} vs {}",
                captured.value,
                eager.value
            );
        }
    }

    fn engine_like() -> LbfgsConfig {
        LbfgsConfig {
            strong_wolfe: true,
            tolerance_change: 0.0,
            tolerance_grad: 0.0,
            first_step: Some(0.1),
            ..Default::default()
        }
    }

    /// f = 100 + Σ c_i (x_i − i)², its value rounded to three significant digits: like an
    /// image objective in bf16, a large part that does not go away (here 100) hides small
    /// decreases in the rounding. The gradient is exact.
    fn rounded_quadratic(x: &Tensor) -> Result<(f64, Tensor), ()> {
        let (f, g) = quadratic(x)?;
        let f = 100.0 + f;
        let digits = 10f64.powi(2 - f.log10().floor() as i32);
        Ok(((f * digits).round() / digits, g))
    }

    #[test]
    fn a_failed_line_search_restarts_and_the_budget_is_spent() {
        let cfg = engine_like();
        let x0 = Tensor::zeros([10], (Kind::Float, Device::Cpu));
        let initial = quadratic(&x0).unwrap().0;
        let out = minimize(&cfg, &x0, 300, rounded_quadratic).unwrap();
        eprintln!(
            "{} evaluations, {} iterations, {} failed searches, {:?}, exact value {} from {initial}",
            out.evaluations,
            out.iterations,
            out.failed_searches,
            out.stop,
            quadratic(&out.x).unwrap().0
        );
        // rounding hides the decrease near the minimum: searches fail, and each failure restarts
        // instead of ending the run
        assert!(out.failed_searches > 0, "the rounded values should defeat some line searches");
        assert_eq!((out.evaluations, out.stop), (300, Stop::Budget));
        let exact = quadratic(&out.x).unwrap().0;
        assert!(exact < 1e-2 * initial, "no progress: {exact} from {initial}");
    }

    #[test]
    fn a_zoom_that_stops_improving_takes_its_best_point() {
        // f = (x − 0.9)², its value rounded to steps of 0.05, exact gradient: from x = 0 along
        // d = 1 the first trial (t = 1) decreases and overshoots the minimum, and every trial
        // of the zoom between 0.9 and 1 rounds to the same value as t = 1, so none improves
        // on it and the curvature condition is never tested, as on a bf16 network near t = 1
        let f = |x: &Tensor| -> Result<(f64, Tensor), ()> {
            let v = x.double_value(&[0]) - 0.9;
            Ok(((v * v / 0.05).round() * 0.05, Tensor::from_slice(&[2.0 * v as f32])))
        };
        let x = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let (f0, g0) = f(&x).unwrap();
        let start = Point {
            x: x.shallow_clone(),
            t: 0.0,
            f: f0,
            g: g0.shallow_clone(),
            gtd: f64::NAN,
            gmax: 0.0,
            gsum: 0.0,
            products: Products::default(),
            trial: 0,
        };
        // d = −g₀ / |g₀| = 1 (to f32 rounding)
        let direction =
            Direction { neg_gamma: (-1.0 / g0.double_value(&[0]).abs()) as f32, coefficients: vec![], rows: 0 };
        let search = |patience| {
            let limits = Limits { tolerance_change: 0.0, max_ls: 24, patience };
            let mut history = History::new(1, 1, Device::Cpu, false);
            let buffers = Buffers::new(1, Device::Cpu, 2, false);
            let mut line = Line {
                from: &start,
                buffers: &buffers,
                history: &mut history,
                sum: false,
                dmax: true,
                all: false,
                trials: 0,
                gtd0: f64::NAN,
            };
            let search = strong_wolfe(&mut FnProblem::new(f), &mut line, 1.0, f0, &direction, limits).unwrap();
            line.take(&search.best);
            (search, history)
        };
        // torch's search (no patience) spends all 25 trials closing in on t = 1
        let (torch, _) = search(None);
        assert_eq!((torch.evals, torch.best.f), (25, 0.0));
        // with patience 4 it stops 4 trials after its best point and takes that point
        let (patient, mut history) = search(Some(4));
        assert_eq!(patient.evals, 5);
        assert_eq!(patient.best.f, 0.0, "the decrease found is kept");
        assert!(patient.best.t > 0.85 && patient.best.t <= 1.0, "t = {}", patient.best.t);
        // the history's pair is that point's (s = t·d, y = g − g₀), not the last trial's, whose
        // pair the spare slot held: the rows are written again, and agree with the products read
        let (t, g) = (patient.best.t, patient.best.g.double_value(&[0]));
        let (s, y) = (history.pairs.double_value(&[0, 0, 0]), history.pairs.double_value(&[0, 1, 0]));
        let y_expected = g - g0.double_value(&[0]);
        assert!((s - t).abs() < 1e-6 && (y - y_expected).abs() < 1e-6, "pair ({s}, {y}), expected ({t}, {y_expected})");
        assert!((history.gamma - s / y).abs() < 1e-6 * (s / y).abs(), "γ = {} for s/y = {}", history.gamma, s / y);
        // one pair in 1-D: H = s/y, so −H·g = −g·s/y
        let direction = history.direction(&Tensor::from_slice(&[1.0f32])).double_value(&[0]);
        assert!((direction + s / y).abs() < 1e-5 * (s / y).abs(), "{direction}");
    }

    fn quadratic(x: &Tensor) -> Result<(f64, Tensor), ()> {
        // f = Σ c_i (x_i − i)², c_i = 1 + i
        let n = x.size()[0];
        let i = Tensor::arange(n, (Kind::Float, Device::Cpu));
        let c = &i + 1.0;
        let diff = x - &i;
        let f = (&c * diff.square()).sum(Kind::Float).double_value(&[]);
        Ok((f, c * diff * 2.0))
    }

    fn rosenbrock(x: &Tensor) -> Result<(f64, Tensor), ()> {
        let v: Vec<f64> = Vec::<f64>::try_from(x.to_kind(Kind::Double)).unwrap();
        let (a, b) = (v[0], v[1]);
        let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        let g = [-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)];
        Ok((f, Tensor::from_slice(&g).to_kind(Kind::Float)))
    }

    #[test]
    fn converges_on_a_quadratic() {
        // with a short history (the ring buffer wraps) and a bf16 one (its pairs are written
        // from f32 steps and gradients)
        for (strong_wolfe, history_size, history_bf16) in
            [(false, 100, false), (true, 100, false), (true, 3, false), (true, 3, true)]
        {
            let cfg = LbfgsConfig { strong_wolfe, history_size, history_bf16, ..Default::default() };
            let x0 = Tensor::zeros([10], (Kind::Float, Device::Cpu));
            let out = minimize(&cfg, &x0, 200, quadratic).unwrap();
            let target = Tensor::arange(10, (Kind::Float, Device::Cpu));
            let err = abs_max(&(&out.x - target));
            let tolerance = if history_bf16 { 1e-2 } else { 1e-3 };
            assert!(
                err < tolerance,
                "strong_wolfe={strong_wolfe}, m={history_size}, bf16={history_bf16}: error {err}, value {}",
                out.value
            );
        }
    }

    #[test]
    fn converges_on_rosenbrock() {
        let cfg = LbfgsConfig { strong_wolfe: true, ..Default::default() };
        let x0 = Tensor::from_slice(&[-1.5f32, 2.0]);
        let out = minimize(&cfg, &x0, 500, rosenbrock).unwrap();
        let v: Vec<f32> = Vec::<f32>::try_from(&out.x).unwrap();
        assert!((v[0] - 1.0).abs() < 1e-2 && (v[1] - 1.0).abs() < 2e-2, "{v:?} value {}", out.value);
        assert!(out.value < 1e-4);
    }

    #[test]
    fn budget_counts_evaluations() {
        let cfg = LbfgsConfig::default();
        let x0 = Tensor::zeros([50], (Kind::Float, Device::Cpu));
        let mut calls = 0;
        let out = minimize(&cfg, &x0, 7, |x| {
            calls += 1;
            // a badly conditioned quadratic that does not converge in 7 evaluations
            let n = x.size()[0];
            let c = Tensor::arange(n, (Kind::Float, Device::Cpu)).exp2() + 1.0;
            let diff = x - 1.0;
            Ok::<_, ()>(((&c * diff.square()).sum(Kind::Float).double_value(&[]), c * diff * 2.0))
        })
        .unwrap();
        assert_eq!(calls, 7);
        assert_eq!(out.evaluations, 7);
        assert_eq!(out.stop, Stop::Budget);
        // with the line search too
        for budget in 1..12 {
            let cfg = LbfgsConfig { strong_wolfe: true, ..Default::default() };
            let mut calls = 0;
            let out = minimize(&cfg, &Tensor::from_slice(&[-1.5f32, 2.0]), budget, |x| {
                calls += 1;
                rosenbrock(x)
            })
            .unwrap();
            assert!(calls <= budget && out.evaluations == calls, "budget {budget}: {calls} calls");
        }
    }
}
