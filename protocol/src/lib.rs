//! Wire format between the `neural-style` daemon and its clients (CLI, tests, GIMP plug-in).
//! The normative description, with examples, is `protocol/README.md`; golden vectors are in
//! `protocol/vectors/`.
//!
//! * [`frame`]: length-prefixed frames (magic, header length, payload length, JSON, bytes) with
//!   hard size caps.
//! * [`message`]: `type`-tagged requests and events, images referenced into the payload.
//! * [`socket`]: where the socket lives (shared rule, `NEURAL_STYLE_SOCKET`).
//! * [`client`]: a blocking client.

pub mod client;
pub mod frame;
pub mod message;
pub mod socket;

pub use client::{Client, ClientError};
pub use message::{Event, Request, PROTOCOL_VERSION};
