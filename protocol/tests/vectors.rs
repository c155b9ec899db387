//! Golden vectors (protocol/vectors/NAME.bin + NAME.json): the Rust side decodes every one as
//! the JSON says, and re-encodes the valid ones to the same bytes. The GIMP plug-in's Python
//! tests check the same files. `NEURAL_STYLE_REGEN_VECTORS=1 cargo test -p neural-style-protocol`
//! rewrites them (review the diff: they are the spec's examples).

use std::path::{Path, PathBuf};

use neural_style_protocol::frame::{self, FrameError, Limits};
use neural_style_protocol::message::*;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A complete summary, as a daemon sends it.
fn sample_summary() -> Summary {
    Summary {
        content_loss: 0.05,
        style_loss: 0.04,
        tv_loss: 0.0,
        total_loss: 0.1,
        initial_loss: 2.5,
        iterations: 60,
        evaluations: 100,
        seconds: 1.5,
        device: "cuda:0".into(),
        pretrained: false,
        weights: WeightsSummary {
            path: "/home/u/.local/share/neural-style/vgg19-features.safetensors".into(),
            pretrained: false,
            preprocessing: "torchvision".into(),
            source: "random".into(),
        },
        width: 1,
        height: 1,
        alpha: 1.0,
        beta: 500.0,
        tv_weight: 0.0,
        optimizer: "lbfgs".into(),
        precision: "bf16+nhwc".into(),
        converged: false,
        stop_reason: StopReason::Budget,
        line_search_restarts: 0,
        cancelled: false,
        time_budget_reached: false,
        has_alpha: true,
        scales: vec![ScaleReport { width: 1, height: 1, evaluations: 100, seconds: 1.5, carried_pairs: 0 }],
        schedule: "single scale (chosen: image start)".into(),
        memory: MemoryPlan {
            estimated_bytes: 1 << 30,
            limit_bytes: 8 << 30,
            tiling: None,
            lbfgs_history: 100,
            history_bytes: 1200,
            history_precision: "bf16".into(),
        },
        high_precision: true,
    }
}

enum Msg {
    Req(Request),
    Ev(Event),
}

fn valid_vectors() -> Vec<(&'static str, &'static str, Msg, Vec<u8>)> {
    let rgba = |offset, w: u32, h: u32| ImageRef {
        offset,
        length: u64::from(w * h * 4),
        format: PixelFormat::Rgba8,
        width: Some(w),
        height: Some(h),
    };
    let mut params = serde_json::Map::new();
    params.insert("size".into(), json!(256));
    params.insert("iterations".into(), json!(100));
    params.insert("init".into(), json!("content"));
    params.insert("seed".into(), json!(7));
    let pixels: Vec<u8> = vec![255, 0, 0, 255, 0, 255, 0, 128, 0, 0, 255, 255, 10, 20, 30, 40];
    vec![
        (
            "request_hello",
            "client greeting, first message on every connection",
            Msg::Req(Request::Hello { protocol: 1, client: "gimp-plugin/0.1".into() }),
            vec![],
        ),
        ("request_status", "status request", Msg::Req(Request::Status), vec![]),
        ("request_cancel", "cancel job 42", Msg::Req(Request::Cancel { job: 42 }), vec![]),
        ("request_shutdown", "stop the daemon", Msg::Req(Request::Shutdown), vec![]),
        (
            "request_stylize",
            "2×1 RGBA8 content and a 1×1 RGBA8 style with weight 0.5 and another 1×1 with weight 1.5; rgba16 result; previews every 10",
            Msg::Req(Request::Stylize(Stylize {
                content: rgba(0, 2, 1),
                styles: vec![
                    StyleRef { image: rgba(8, 1, 1), weight: 0.5 },
                    StyleRef { image: rgba(12, 1, 1), weight: 1.5 },
                ],
                params,
                output: PixelFormat::Rgba16,
                priority: Priority::Interactive,
                preview_every: Some(10),
                preview_every_s: None,
                preview_size: Some(128),
                label: Some("photo.xcf".into()),
            })),
            pixels.clone(),
        ),
        (
            "request_stylize_timed_previews",
            "2×1 RGBA8 content and 1×1 RGBA8 style; a preview every 0.5 s, up to 1024 px (the size the client shows)",
            Msg::Req(Request::Stylize(Stylize {
                content: rgba(0, 2, 1),
                styles: vec![StyleRef { image: rgba(8, 1, 1), weight: 1.0 }],
                params: serde_json::Map::new(),
                output: PixelFormat::Rgba8,
                priority: Priority::Interactive,
                preview_every: None,
                preview_every_s: Some(0.5),
                preview_size: Some(1024),
                label: None,
            })),
            pixels[..12].to_vec(),
        ),
        (
            "event_hello",
            "daemon greeting",
            Msg::Ev(Event::Hello { protocol: 1, server: "neural-style 0.1.0".into(), device: "cuda:0".into(), pretrained: true }),
            vec![],
        ),
        ("event_accepted", "job 3 queued behind two others", Msg::Ev(Event::Accepted { job: 3, position: 2 }), vec![]),
        ("event_queued", "job 3 moved up", Msg::Ev(Event::Queued { job: 3, position: 1 }), vec![]),
        ("event_started", "job 3 runs at 256×192", Msg::Ev(Event::Started { job: 3, width: 256, height: 192, memory: None }), vec![]),
        (
            "event_progress",
            "progress with a 2×1 RGBA8 preview in the payload",
            Msg::Ev(Event::Progress {
                job: 3,
                evaluation: 10,
                total: 100,
                losses: Losses { content: 1.5, style: 0.25, tv: 0.0, total: 0.125 },
                elapsed: 2.5,
                eta: 22.5,
                scale: Some([128, 96]),
                preview: Some(rgba(0, 2, 1)),
            }),
            pixels[..8].to_vec(),
        ),
        (
            "event_result",
            "1×1 RGBA16 result (little-endian samples) and summary",
            Msg::Ev(Event::Result {
                job: 3,
                image: ImageRef { offset: 0, length: 8, format: PixelFormat::Rgba16, width: Some(1), height: Some(1) },
                summary: Box::new(sample_summary()),
            }),
            vec![0xff, 0xff, 0x00, 0x80, 0x01, 0x00, 0xff, 0xff],
        ),
        ("event_cancelled", "job 4 cancelled while waiting", Msg::Ev(Event::Cancelled { job: 4, image: None, summary: None }), vec![]),
        (
            "event_error",
            "a refused request",
            Msg::Ev(Event::Error {
                job: None,
                code: ErrorCode::TooLarge,
                message: "the output would be 8000×6000, over this daemon's limit of 16777216 pixels; use a smaller size".into(),
            }),
            vec![],
        ),
        ("event_shutting_down", "answer to shutdown", Msg::Ev(Event::ShuttingDown), vec![]),
    ]
}

fn encode(m: &Msg, payload: &[u8]) -> Vec<u8> {
    match m {
        Msg::Req(r) => frame::encode(r, payload),
        Msg::Ev(e) => frame::encode(e, payload),
    }
}

fn invalid_vectors() -> Vec<(&'static str, &'static str, Vec<u8>, &'static str)> {
    let good = frame::encode(&json!({"type": "status"}), &[]);
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"HTTP");
    let mut huge_header = good.clone();
    huge_header[4..8].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let mut huge_payload = good.clone();
    huge_payload[8..16].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let mut zero_header = good.clone();
    zero_header[4..8].copy_from_slice(&0u32.to_be_bytes());
    let truncated = good[..good.len() - 3].to_vec();
    let mut not_utf8 = good.clone();
    let n = not_utf8.len();
    not_utf8[n - 2] = 0xff;
    let unknown = frame::encode(&json!({"type": "teleport", "to": "mars"}), &[]);
    let wrong_type = frame::encode(&json!({"type": "cancel", "job": "forty-two"}), &[]);
    vec![
        ("invalid_bad_magic", "wrong magic: close the connection", bad_magic, "bad_magic"),
        ("invalid_header_too_large", "header length 2^31-1 > 1 MiB cap", huge_header, "header_size"),
        ("invalid_zero_header", "empty header", zero_header, "header_size"),
        ("invalid_payload_too_large", "payload length 2^40 > 1 GiB cap", huge_payload, "payload_too_large"),
        ("invalid_truncated", "stream ends inside the header", truncated, "truncated"),
        ("invalid_not_utf8", "header bytes are not UTF-8", not_utf8, "not_utf8"),
        ("invalid_unknown_type", "well-formed frame, unknown message type", unknown, "bad_message"),
        ("invalid_wrong_field_type", "well-formed frame, job is a string", wrong_type, "bad_message"),
    ]
}

fn kind(e: &FrameError) -> &'static str {
    match e {
        FrameError::BadMagic(_) => "bad_magic",
        FrameError::HeaderSize(..) => "header_size",
        FrameError::PayloadTooLarge(..) => "payload_too_large",
        FrameError::Truncated => "truncated",
        FrameError::NotUtf8 => "not_utf8",
        FrameError::BadMessage(_) => "bad_message",
        FrameError::Io(_) => "io",
    }
}

#[test]
fn golden_vectors() {
    let regen = std::env::var_os("NEURAL_STYLE_REGEN_VECTORS").is_some();
    for (name, description, msg, payload) in valid_vectors() {
        let bytes = encode(&msg, &payload);
        let header: Value = serde_json::from_slice(&bytes[16..16 + (bytes.len() - 16 - payload.len())]).unwrap();
        let direction = if matches!(msg, Msg::Req(_)) { "request" } else { "event" };
        let doc = json!({"description": description, "valid": true, "direction": direction,
                         "header": header, "payload_hex": hex(&payload)});
        let (bin, js) = (dir().join(format!("{name}.bin")), dir().join(format!("{name}.json")));
        if regen {
            std::fs::write(&bin, &bytes).unwrap();
            std::fs::write(&js, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        }
        let stored = std::fs::read(&bin).unwrap_or_else(|_| panic!("{name}.bin missing"));
        let expected: Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
        let (f, used) = frame::decode(&stored, &Limits::default()).unwrap();
        assert_eq!(used, stored.len(), "{name}");
        assert_eq!(serde_json::from_slice::<Value>(&f.header).unwrap(), expected["header"], "{name}");
        assert_eq!(f.payload, unhex(expected["payload_hex"].as_str().unwrap()), "{name}");
        // typed decoding and canonical re-encoding
        let again = match msg {
            Msg::Req(_) => frame::encode(&f.message::<Request>().unwrap(), &f.payload),
            Msg::Ev(_) => frame::encode(&f.message::<Event>().unwrap(), &f.payload),
        };
        assert_eq!(again, stored, "{name}: re-encoding differs");
        assert_eq!(stored, bytes, "{name}: this build encodes differently from the stored vector");
    }
    for (name, description, bytes, error) in invalid_vectors() {
        let (bin, js) = (dir().join(format!("{name}.bin")), dir().join(format!("{name}.json")));
        if regen {
            std::fs::write(&bin, &bytes).unwrap();
            let doc = json!({"description": description, "valid": false, "error": error});
            std::fs::write(&js, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        }
        let stored = std::fs::read(&bin).unwrap();
        let expected: Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
        let got = match frame::decode(&stored, &Limits::default()) {
            Err(e) => kind(&e),
            Ok((f, _)) => match f.message::<Request>() {
                Err(e) => kind(&e),
                Ok(r) => panic!("{name} decoded as {r:?}"),
            },
        };
        assert_eq!(got, expected["error"].as_str().unwrap(), "{name}");
    }
}
