//! neural-style: Gatys et al. (CVPR 2016) neural style transfer on libtorch (tch).
//!
//! Three layers that depend one way, **engine ← server ← cli** (checked by
//! `tests/architecture.rs`: no module of `engine` names `server` or `cli`, no module of
//! `server` names `cli`, and no two modules name each other, directly or in a circle):
//!
//! * [`engine`]: one job from decoded pictures to a stylized image. The paper's objective
//!   ([`engine::objective`], eqs. 1–7), VGG19 ([`engine::vgg`], [`engine::weights`]), the job's
//!   parameters and their defaults ([`engine::params`]), the coarse-to-fine schedule
//!   ([`engine::schedule`]) and one scale's run ([`engine::scale`]) over the optimisers
//!   ([`engine::optim`]), targets and the style cache, tiles and the memory plan, images in and
//!   out. It knows nothing of sockets, queues or flags.
//! * [`server`]: the daemon, socket → queue → one engine thread → events. The accept loop
//!   ([`server::run`]), connections, [`server::submit`] (requests and watch folders enter
//!   here, checked once), the [`server::queue`], the engine thread ([`server::worker`]), the
//!   shared [`server::state`], the config file and the watch folders ([`server::watch`]).
//! * [`cli`]: the `neural-style` command line. Flags are resolved into engine and server
//!   configuration in [`cli::args`]; the libraries never see clap.
//!
//! The wire format (messages, framing, the typed job summary) is the `neural-style-protocol`
//! crate, which all three layers use.

pub mod cli;
pub mod engine;
pub mod server;
