//! Wire format between the `neural-style` daemon and its clients (CLI, GIMP plug-in).
//!
//! Only the version constant exists so far; the framed protocol lands with the daemon.

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
