//! The daemon as a real process over a real socket, with random weights and small sizes.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use image::GenericImageView;
use interprocess::local_socket::traits::Stream as _;
use neural_style_e2e::{image, stderr, stylize_files, Daemon};
use neural_style_protocol::client::connect_stream;
use neural_style_protocol::frame;
use neural_style_protocol::message::{ErrorCode, Event, Request};
use serde_json::json;

fn wait_for_progress(client: &mut neural_style_protocol::Client) {
    loop {
        match client.recv().unwrap().0 {
            Event::Progress { .. } => return,
            e @ Event::Error { .. } => panic!("{e:?}"),
            _ => {}
        }
    }
}

fn small(iterations: usize, seed: u64) -> serde_json::Value {
    json!({"size": 32, "iterations": iterations, "seed": seed})
}

#[test]
fn round_trip_gives_the_in_process_pixels() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (c, s) = (image("tubingen.jpg"), image("starry_night.jpg"));
    let run = |local: bool, name: &str| {
        let out = dir.path().join(name);
        let mut args = vec!["run", "-c", c.to_str().unwrap(), "-s", s.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(&["--size", "48", "--iterations", "12", "--seed", "5", "--threads", "2", "--json"]);
        args.extend_from_slice(&["--weights", neural_style_e2e::weights().to_str().unwrap()]);
        if local {
            args.push("--local");
        }
        let o = d.cli(&args).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (std::fs::read(out).unwrap(), stderr(&o))
    };
    let (remote, log) = run(false, "daemon.png");
    assert!(log.contains("using the running daemon"), "{log}");
    let (local, log) = run(true, "local.png");
    assert!(!log.contains("using the running daemon"), "{log}");
    assert_eq!(remote, local, "daemon and in-process runs must give the same pixels");
    assert_eq!(d.status().jobs_done, 1);
}

#[test]
fn eight_concurrent_clients_all_get_results_in_queue_order() {
    let d = Daemon::start(&[]);
    let (c, s) = (image("golden_gate.jpg"), image("the_scream.jpg"));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let socket = d.socket.clone();
            let (c, s) = (c.clone(), s.clone());
            std::thread::spawn(move || {
                let mut client = neural_style_protocol::Client::connect(&socket, "e2e").unwrap();
                let (req, payload) = stylize_files(&c, &s, small(8, i));
                let mut positions = Vec::new();
                let mut started = false;
                let result = client
                    .stylize(req, &payload, |e, _| match e {
                        Event::Accepted { position, .. } | Event::Queued { position, .. } => {
                            assert!(!started, "position after start");
                            positions.push(*position)
                        }
                        Event::Started { .. } => started = true,
                        _ => {}
                    })
                    .unwrap();
                assert!(started);
                (result.job, positions, result.payload.len(), result.image)
            })
        })
        .collect();
    let mut max_position = 0;
    for h in handles {
        let (job, positions, len, image) = h.join().unwrap();
        assert!(job >= 1);
        assert!(positions.windows(2).all(|w| w[1] < w[0]), "positions must only fall: {positions:?}");
        assert_eq!(*positions.last().unwrap(), 0, "a job starts from position 0: {positions:?}");
        max_position = max_position.max(positions[0]);
        assert_eq!(len as u64, image.length);
        assert_eq!(len, (image.width.unwrap() * image.height.unwrap() * 4) as usize);
    }
    assert!(max_position >= 4, "jobs should have queued behind each other (max position {max_position})");
    let st = d.status();
    assert_eq!(st.jobs_done, 8);
    assert!(st.queue.is_empty() && st.running.is_none());
}

#[test]
fn cancel_stops_a_job_within_one_iteration() {
    let d = Daemon::start(&[]);
    let mut client = d.client();
    // 256 px: an evaluation takes long enough that the client is never behind the daemon
    let params = json!({"size": 256, "iterations": 5000, "multiscale": false});
    let (req, payload) = stylize_files(&image("tubingen.jpg"), &image("shipwreck.jpg"), params.clone());
    client.send(&Request::Stylize(req), &payload).unwrap();
    let mut job = 0;
    let seen;
    loop {
        match client.recv().unwrap().0 {
            Event::Accepted { job: j, .. } => job = j,
            Event::Progress { evaluation, .. } if evaluation >= 3 => {
                seen = evaluation;
                break;
            }
            e @ Event::Error { .. } => panic!("{e:?}"),
            _ => {}
        }
    }
    client.send(&Request::Cancel { job }, &[]).unwrap();
    let t0 = Instant::now();
    let mut last = seen;
    loop {
        match client.recv().unwrap() {
            (Event::Progress { evaluation, .. }, _) => last = evaluation,
            (Event::Cancelled { summary: None, .. }, _) => {} // the acknowledgement
            (Event::Cancelled { job: j, summary: Some(summary), image }, bytes) => {
                assert_eq!(j, job);
                let evaluations = summary.evaluations;
                assert_eq!(evaluations, last);
                // evaluation seen + 1 was running when the cancel arrived; nothing after it
                assert!(last <= seen + 1, "ran {last} evaluations; the cancel came after {seen}");
                assert_eq!(bytes.len() as u64, image.unwrap().length, "the current image comes back");
                // what comes back is worth keeping: better than where the job started
                assert!(
                    summary.total_loss < summary.initial_loss,
                    "cancelled image {} vs start {}",
                    summary.total_loss,
                    summary.initial_loss
                );
                assert_eq!(summary.stop_reason, neural_style_protocol::message::StopReason::Cancelled);
                break;
            }
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(d.status().jobs_cancelled, 1);
    // `neural-style cancel` from another process
    let (req, payload) = stylize_files(&image("tubingen.jpg"), &image("shipwreck.jpg"), params);
    client.send(&Request::Stylize(req), &payload).unwrap();
    let job = loop {
        if let Event::Progress { job, .. } = client.recv().unwrap().0 {
            break job;
        }
    };
    let o = d.cli(&["cancel", &job.to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    while !matches!(client.recv().unwrap().0, Event::Cancelled { summary: Some(_), .. }) {}
    assert_eq!(d.status().jobs_cancelled, 2);
    // unknown job
    let o = d.cli(&["cancel", "999"]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("no job 999"), "{}", stderr(&o));
}

#[test]
fn a_client_that_disconnects_cancels_its_job_and_the_next_starts() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.png");
    let (c, s) = (image("tubingen.jpg"), image("starry_night.jpg"));
    let mut victim = d
        .cli(&["run", "-c", c.to_str().unwrap(), "-s", s.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--size", "64", "--iterations", "5000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while d.status().running.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // a second client queues behind it
    let socket = d.socket.clone();
    let waiter = std::thread::spawn(move || {
        let mut client = neural_style_protocol::Client::connect(&socket, "e2e").unwrap();
        let (req, payload) = stylize_files(&image("golden_gate.jpg"), &image("the_scream.jpg"), small(4, 1));
        let mut first_position = None;
        let r = client.stylize(req, &payload, |e, _| {
            if let Event::Accepted { position, .. } = e {
                first_position = Some(*position)
            }
        });
        (r.map(|r| r.job), first_position)
    });
    std::thread::sleep(Duration::from_millis(500));
    victim.kill().unwrap(); // SIGKILL: no goodbye, the socket just closes
    victim.wait().unwrap();
    let (result, first_position) = waiter.join().unwrap();
    assert!(result.is_ok(), "the queued job must run once the dead client's job is cancelled");
    assert_eq!(first_position, Some(0));
    assert!(t0.elapsed() < Duration::from_secs(60));
    let st = d.status();
    assert_eq!((st.jobs_cancelled, st.jobs_done), (1, 1));
    assert!(!out.exists());
}

#[test]
fn socket_is_private_and_a_second_daemon_is_refused() {
    let d = Daemon::start(&[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(d.socket.parent().unwrap()), 0o700);
    let log = d.dir.path().join("second.log");
    let mut second = Daemon::spawn(d.dir.path(), &d.socket, &log, &[]);
    let status = second.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let pid = d.child.id().to_string();
    assert!(text.contains("already serving") && text.contains(&pid) && text.contains("daemon.sock"), "{text}");
    // the first one is unharmed
    assert!(d.status().ready);
}

#[test]
fn stale_socket_after_a_crash_is_replaced() {
    let mut d = Daemon::start(&[]);
    d.child.kill().unwrap(); // SIGKILL leaves the socket file behind
    d.child.wait().unwrap();
    assert!(d.socket.exists(), "a killed daemon leaves its socket");
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let again = Daemon::start_at(dir, d.socket.clone(), &[]);
    assert!(again.status().ready);
    assert!(again.log_text().contains("stale socket"), "{}", again.log_text());
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut d = Daemon::start(&[]);
    let pid_file = d.socket.with_extension("pid");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), d.child.id().to_string());
    // a running job is cancelled (default on_signal = cancel)
    let mut client = d.client();
    let (req, payload) =
        stylize_files(&image("tubingen.jpg"), &image("shipwreck.jpg"), json!({"size": 64, "iterations": 5000}));
    client.send(&Request::Stylize(req), &payload).unwrap();
    wait_for_progress(&mut client);
    assert!(Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap().success());
    let status = d.wait_exit(30);
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(!d.socket.exists() && !pid_file.exists());
    // the client was told
    let mut cancelled = false;
    while let Ok((e, _)) = client.recv() {
        if matches!(e, Event::Cancelled { .. }) {
            cancelled = true;
        }
    }
    assert!(cancelled);
}

#[test]
fn finish_mode_lets_the_running_job_complete() {
    let mut d = Daemon::start(&["--on-signal", "finish"]);
    let mut client = d.client();
    let (req, payload) = stylize_files(&image("tubingen.jpg"), &image("shipwreck.jpg"), small(40, 0));
    client.send(&Request::Stylize(req), &payload).unwrap();
    wait_for_progress(&mut client);
    d.cli(&["stop"]).output().unwrap();
    let mut got_result = false;
    while let Ok((e, _)) = client.recv() {
        got_result |= matches!(e, Event::Result { .. });
    }
    assert!(got_result, "{}", d.log_text());
    assert_eq!(d.wait_exit(30).code(), Some(0));
}

#[test]
fn version_mismatch_is_refused_with_a_clear_message() {
    let d = Daemon::start(&[]);
    let mut s = connect_stream(&d.socket).unwrap();
    frame::write(&mut s, &json!({"type": "hello", "protocol": 999, "client": "future"}), &[]).unwrap();
    let f = frame::read(&mut s, &Default::default()).unwrap().unwrap();
    match f.message::<Event>().unwrap() {
        Event::Error { code: ErrorCode::VersionMismatch, message, .. } => {
            assert!(message.contains("999") && message.contains("version 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // and the connection is closed
    assert!(frame::read(&mut s, &Default::default()).unwrap().is_none());
}

#[test]
fn bad_requests_get_errors_and_the_daemon_goes_on() {
    let d = Daemon::start(&["--max-pixels", "5000", "--max-iterations", "50"]);
    let mut client = d.client();
    let (c, s) = (image("tubingen.jpg"), image("starry_night.jpg"));
    let cases = [
        (json!({"size": 32, "iterations": 2, "colour": 1}), ErrorCode::InvalidParams, "unknown field `colour`"),
        (json!({"size": 32, "iterations": 0}), ErrorCode::InvalidParams, "iterations"),
        (json!({"size": 32, "iterations": 51}), ErrorCode::TooLarge, "limit of 50"),
        (json!({"size": 200, "iterations": 2}), ErrorCode::TooLarge, "limit of 5000 pixels"),
        (json!({"size": 32, "content_layers": ["relu9_1"]}), ErrorCode::InvalidParams, "unknown layer"),
    ];
    for (params, code, needle) in cases {
        let (req, payload) = stylize_files(&c, &s, params.clone());
        match client.stylize(req, &payload, |_, _| {}) {
            Err(neural_style_protocol::ClientError::Daemon { code: got, message }) => {
                assert_eq!(got, code, "{params}: {message}");
                assert!(message.contains(needle), "{params}: {message}");
            }
            Err(e) => panic!("{params}: {e}"),
            Ok(_) => panic!("{params}: accepted"),
        }
    }
    // an image that is not one
    let (mut req, mut payload) = stylize_files(&c, &s, small(2, 0));
    payload[..8].copy_from_slice(b"garbage!");
    req.content.length = 8;
    match client.stylize(req, &payload, |_, _| {}) {
        Err(neural_style_protocol::ClientError::Daemon { code, message }) => {
            assert_eq!(code, ErrorCode::BadImage, "{message}");
            assert!(message.contains("content"), "{message}");
        }
        other => panic!("{:?}", other.map(|r| r.job)),
    }
    // still serving
    let (req, payload) = stylize_files(&c, &s, small(2, 0));
    assert!(client.stylize(req, &payload, |_, _| {}).is_ok());
}

#[test]
fn jobs_that_cannot_fit_in_memory_are_refused_and_large_ones_tiled() {
    // 0.4 GiB: the process alone is estimated at that, so a 512 px job cannot fit even in tiles
    let d = Daemon::start(&["--max-memory", "0.4"]);
    let mut client = d.client();
    let (c, s) = (image("tubingen.jpg"), image("starry_night.jpg"));
    let (req, payload) = stylize_files(&c, &s, json!({"size": 512, "iterations": 2}));
    match client.stylize(req, &payload, |_, _| {}) {
        Err(neural_style_protocol::ClientError::Daemon { code, message }) => {
            assert_eq!(code, ErrorCode::OutOfMemory, "{message}");
            assert!(message.contains("GiB") && message.contains("--size"), "{message}");
        }
        other => panic!("{:?}", other.map(|r| r.job)),
    }
    assert!(d.log_text().contains("refused"));
    // still serving; a client may ask for less memory than the daemon allows but not more, and
    // a job over its limit is tiled: the started event carries the plan
    let d = Daemon::start(&[]);
    let mut client = d.client();
    let (req, payload) = stylize_files(&c, &s, json!({"size": 96, "iterations": 2, "tile": 48}));
    let mut memory = None;
    let r = client
        .stylize(req, &payload, |e, _| {
            if let Event::Started { memory: m, .. } = e {
                memory = m.clone();
            }
        })
        .unwrap();
    let m = memory.expect("started carries the memory plan");
    assert_eq!(m.tiling.map(|t| t.tile), Some(48), "{m:?}");
    assert!(m.estimated_bytes > 0 && m.limit_bytes > 0);
    assert_eq!(r.summary.memory.tiling.map(|t| t.tile), Some(48));
}

#[test]
fn style_targets_are_cached_across_jobs() {
    let d = Daemon::start(&[]);
    let mut client = d.client();
    let (c, s) = (image("golden_gate.jpg"), image("woman-with-hat-matisse.jpg"));
    for seed in 0..2 {
        let (req, payload) = stylize_files(&c, &s, small(3, seed));
        client.stylize(req, &payload, |_, _| {}).unwrap();
    }
    let st = d.status();
    assert_eq!((st.cache_misses, st.cache_hits, st.cache_entries), (1, 1, 1));
    assert!(d.log_text().contains("style cache hit"));
    // another size is another entry
    let (req, payload) = stylize_files(&c, &s, json!({"size": 40, "iterations": 2}));
    client.stylize(req, &payload, |_, _| {}).unwrap();
    assert_eq!(d.status().cache_misses, 2);
}

#[test]
fn previews_arrive_every_s_seconds_at_the_output_proportions() {
    let d = Daemon::start(&[]);
    let mut client = d.client();
    let params = json!({"size": 64, "iterations": 150, "multiscale": false});
    let (mut req, payload) = stylize_files(&image("tubingen.jpg"), &image("the_scream.jpg"), params.clone());
    req.preview_every_s = Some(0.2);
    req.preview_size = Some(1024);
    let (mut previews, mut size) = (Vec::new(), None);
    let r = client
        .stylize(req, &payload, |e, bytes| {
            if let Event::Started { width, height, .. } = e {
                size = Some((*width, *height));
            }
            if let Event::Progress { elapsed, preview: Some(p), .. } = e {
                let pic =
                    image::RgbaImage::from_raw(p.width.unwrap(), p.height.unwrap(), p.slice(bytes).unwrap().to_vec());
                assert!(pic.is_some(), "a valid RGBA8 image");
                previews.push((*elapsed, p.width.unwrap(), p.height.unwrap()));
            }
        })
        .unwrap();
    let (w, h) = size.expect("started");
    assert_eq!((r.summary.width, r.summary.height), (w, h));
    eprintln!("{} previews over {:.1} s", previews.len(), r.summary.seconds);
    assert!(previews.len() >= 2, "{} previews before the result", previews.len());
    // the whole image at the output size (asked for up to 1024 px), at least 0.2 s apart
    assert!(previews.iter().all(|&(_, pw, ph)| (pw, ph) == (w, h)), "{previews:?} vs {w}×{h}");
    assert!(previews.windows(2).all(|p| p[1].0 - p[0].0 >= 0.2 - 1e-9), "{previews:?}");
    // asked for nothing: no previews
    let (req, payload) = stylize_files(&image("tubingen.jpg"), &image("the_scream.jpg"), params);
    let mut any = false;
    client.stylize(req, &payload, |e, _| any |= matches!(e, Event::Progress { preview: Some(_), .. })).unwrap();
    assert!(!any, "previews nobody asked for");
}

/// `run --preview` through a daemon: the CLI asks for timed previews and writes each one.
#[test]
fn cli_preview_file_through_the_daemon() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (out, preview) = (dir.path().join("out.png"), dir.path().join("preview.jpg"));
    let (c, s) = (image("tubingen.jpg"), image("the_scream.jpg"));
    let o = d
        .cli(&[
            "run",
            "-c",
            c.to_str().unwrap(),
            "-s",
            s.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--size",
            "64",
            "--iterations",
            "150",
            "--preview",
            preview.to_str().unwrap(),
            "--preview-every",
            "0.2",
        ])
        .env("RUST_LOG", "neural_style=debug")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("using the running daemon"), "{err}");
    assert!(err.matches("preview written").count() >= 2, "{err}");
    assert_eq!(image::open(&preview).unwrap().dimensions(), image::open(&out).unwrap().dimensions());
}

#[test]
fn previews_arrive_every_k_iterations() {
    let d = Daemon::start(&[]);
    let mut client = d.client();
    let (mut req, payload) =
        stylize_files(&image("tubingen.jpg"), &image("the_scream.jpg"), json!({"size": 64, "iterations": 6}));
    req.preview_every = Some(2);
    req.preview_size = Some(32);
    let mut previews = Vec::new();
    client
        .stylize(req, &payload, |e, bytes| {
            if let Event::Progress { evaluation, preview: Some(p), .. } = e {
                assert_eq!(p.slice(bytes).unwrap().len(), (p.width.unwrap() * p.height.unwrap() * 4) as usize);
                assert_eq!(p.width.unwrap().max(p.height.unwrap()), 32);
                previews.push(*evaluation);
            }
        })
        .unwrap();
    assert_eq!(previews, vec![2, 4, 6]);
}

#[test]
fn rss_stays_flat_over_200_jobs() {
    let d = Daemon::start(&[]);
    let mut client = d.client();
    let (c, s) = (image("golden_gate.jpg"), image("the_scream.jpg"));
    let mut rss = Vec::new();
    for i in 0..200 {
        let (req, payload) = stylize_files(&c, &s, json!({"size": 32, "iterations": 2, "seed": i}));
        client.stylize(req, &payload, |_, _| {}).unwrap();
        if i == 19 || i == 199 {
            rss.push(client.status().unwrap().rss_bytes);
        }
    }
    let growth = rss[1] as i64 - rss[0] as i64;
    eprintln!("RSS after 20 jobs {} MiB, after 200 jobs {} MiB", rss[0] >> 20, rss[1] >> 20);
    assert!(growth < 32 << 20, "RSS grew by {} MiB over 180 jobs", growth >> 20);
    assert_eq!(d.status().jobs_done, 200);
}

/// Random and mutated frames against a live daemon; a well-formed client is served after each
/// batch.
#[test]
fn fuzzed_frames_never_stop_the_daemon() {
    let mut d = Daemon::start(&[]);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let hello = frame::encode(&json!({"type": "hello", "protocol": 1, "client": "fuzz"}), &[]);
    let seeds: Vec<Vec<u8>> = vec![
        frame::encode(&json!({"type": "status"}), &[]),
        frame::encode(&json!({"type": "cancel", "job": 12}), &[]),
        frame::encode(
            &json!({"type": "stylize", "content": {"offset": 0, "length": 4, "format": "rgba8", "width": 1, "height": 1},
                    "styles": [{"image": {"offset": 0, "length": 4, "format": "encoded"}}], "params": {"iterations": 1}}),
            &[1, 2, 3, 4],
        ),
        frame::encode(&json!({"type": "nonsense", "x": [1, 2]}), &[9; 16]),
        frame::encode(&json!({"type": "cancel", "job": "twelve"}), &[]),
    ];
    let total = 2000;
    for i in 0..total {
        let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
        match next() % 7 {
            0 => bytes.truncate((next() as usize) % bytes.len()),
            1 => {
                let at = 4 + (next() as usize % 12);
                bytes[at] = 0xFF; // huge length prefix
            }
            2 => {
                let n = bytes.len();
                for _ in 0..4 {
                    bytes[16 + next() as usize % (n - 16)] = (next() & 0xFF) as u8;
                    // invalid UTF-8 / JSON
                }
            }
            3 => bytes = (0..(next() % 64)).map(|_| next() as u8).collect(), // noise
            4 => {
                let h = b"{\"type\": 5}";
                bytes = frame::encode(&serde_json::from_slice::<serde_json::Value>(h).unwrap(), &[]);
            }
            5 => bytes[0] = b'X',
            _ => {}
        }
        let Ok(mut s) = connect_stream(&d.socket) else {
            panic!("daemon stopped accepting at frame {i}:\n{}", d.log_text())
        };
        s.set_recv_timeout(Some(Duration::from_millis(100))).unwrap();
        if next() % 2 == 0 {
            s.write_all(&hello).unwrap();
        }
        let _ = s.write_all(&bytes);
        let _ = s.flush();
        if i % 3 == 0 {
            // read whatever comes back, then hang up
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
        }
        drop(s);
        if i % 200 == 199 {
            assert!(d.is_running(), "daemon died at frame {i}:\n{}", d.log_text());
            let st = d.client().status().unwrap();
            assert!(st.ready);
        }
    }
    // a real job still works
    let mut client = d.client();
    let (req, payload) = stylize_files(&image("tubingen.jpg"), &image("starry_night.jpg"), small(3, 0));
    client.stylize(req, &payload, |_, _| {}).unwrap();
}

#[test]
fn status_stop_and_config_commands() {
    let mut d = Daemon::start(&[]);
    let o = d.cli(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("NOT PRETRAINED") && text.contains("queue:"), "{text}");
    let o = d.cli(&["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pid"], d.child.id());
    assert_eq!(v["pretrained"], false);
    let o =
        d.cli(&["config", "--max-clients", "3"]).env("XDG_CONFIG_HOME", d.dir.path().join("config")).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("max_clients = 3") && text.contains(d.socket.to_str().unwrap()), "{text}");
    let o = d.cli(&["stop"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(d.wait_exit(20).code(), Some(0));
    let o = d.cli(&["status"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no neural-style daemon") && stderr(&o).contains("neural-style serve"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn connections_from_another_user_are_refused() {
    // Normally the 0700 directory and the 0600 socket keep other users out; open both up to
    // check the second line of defence (peer credentials).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sockdir = dir.path().join("open");
    std::fs::create_dir(&sockdir).unwrap();
    std::fs::set_permissions(&sockdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = sockdir.join("d.sock");
    let d = Daemon::start_at(tempfile::tempdir().unwrap(), socket.clone(), &[]);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // the CLI itself as the other user's client
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(neural_style_e2e::bin())
        .args(["status", "--socket", socket.to_str().unwrap()])
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Forbidden") && err.contains("uid 65534"), "{err}");
    assert!(d.status().ready, "the daemon goes on");
}
