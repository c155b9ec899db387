//! neural-style: Gatys et al. (CVPR 2016) neural style transfer on libtorch (tch).
//!
//! Layout, from the paper outwards:
//!
//! * [`weights`]: the VGG19 manifest, safetensors weights files and their metadata, lookup
//!   (`--weights` > `NEURAL_STYLE_WEIGHTS` > data dir), seeded random (non-pretrained) weights.
//! * [`vgg`]: VGG19 `features` up to the deepest tap, avg or max pooling, input normalisation.
//! * [`objective`]: the paper's equations 1, 3, 4, 5 and 7 (plus optional total variation).
//! * [`tiling`]: the objective evaluated over overlapping tiles (exact global Gram matrices),
//!   for images whose activations do not fit.
//! * [`memory`]: a job's predicted peak memory, and the choice of tiles or a refusal.
//! * [`lbfgs`], [`adam`]: optimisers over a flat tensor; L-BFGS follows torch.optim.LBFGS.
//! * [`color`]: luminance-only transfer for `--preserve-colors`.
//! * [`image_io`]: decoding with limits and EXIF orientation, 8/16-bit PNG and JPEG output.
//! * [`cache`]: LRU cache of style Gram targets (the daemon keeps one across jobs).
//! * [`engine`]: one job from pictures to a stylised image, with progress and cancellation.
//! * [`rng`]: the seeded generator behind noise images and random weights.
//! * [`python`]: the project's Python (venv) used for fetching weights and reference runs.
//!
//! The daemon, socket → queue → one engine thread → events:
//!
//! * [`server`]: `serve` — socket (private dir, 0600, stale recovery, one instance), accept
//!   loop, one thread per connection, shutdown on SIGINT/SIGTERM or request.
//! * [`queue`]: jobs by priority then arrival, cancellation, queue positions.
//! * [`worker`]: the engine thread: model load, warm-up, jobs, progress/result events.
//! * [`watch`]: watch folders: files dropped in are stylised (batch priority), never lost.
//! * [`config`]: the daemon's config file and its defaults.
//!
//! * [`cli`]: the `neural-style` command line (`run`, `serve`, `status`, `cancel`, `stop`,
//!   `config`, `weights`, `bench`, `samples`).

pub mod adam;
pub mod cache;
pub mod cli;
pub mod color;
pub mod config;
pub mod engine;
pub mod image_io;
pub mod lbfgs;
pub mod memory;
pub mod objective;
pub mod python;
pub mod queue;
pub mod rng;
pub mod server;
pub mod tiling;
pub mod vgg;
pub mod watch;
pub mod weights;
pub mod worker;
