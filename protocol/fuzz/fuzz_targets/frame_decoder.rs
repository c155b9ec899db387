//! `cargo +nightly fuzz run frame_decoder` (from protocol/): the frame decoder and message
//! parser on arbitrary bytes must return errors, never panic or allocate past the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neural_style_protocol::frame::{decode, Limits};
use neural_style_protocol::message::{Event, Request};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_header: 1 << 16, max_payload: 1 << 20 };
    let mut rest = data;
    while let Ok((frame, used)) = decode(rest, &limits) {
        let _ = frame.message::<Request>();
        let _ = frame.message::<Event>();
        if let Ok(Request::Stylize(s)) = frame.message::<Request>() {
            let _ = s.content.slice(&frame.payload);
        }
        rest = &rest[used..];
    }
});
