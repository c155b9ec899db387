//! The memory estimate against the peak RSS of a real run.

use neural_style_e2e::{image, stderr, stylize, summary};

/// The largest peak RSS of any child this test process has waited for (other children, such as
/// a weights generator, count too: an upper bound only).
fn children_peak_rss_bytes() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn estimate_bounds_the_measured_peak_and_is_close_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = stylize(
        &image("tubingen.jpg"),
        &image("starry_night.jpg"),
        &out,
        &["--size", "512", "--iterations", "3", "--single-scale", "--local", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    // the process's own high-water mark (VmHWM), read by the binary as it finishes; checked
    // against the kernel's accounting of the child below
    let measured = s["peak_rss_bytes"].as_u64().unwrap();
    assert!(measured > 100 << 20 && measured <= children_peak_rss_bytes(), "peak RSS {measured}");
    let m = &s["memory"];
    let estimated = m["estimated_bytes"].as_u64().unwrap();
    assert!(m["tiling"].is_null());
    // three evaluations store at most two L-BFGS pairs of the history the estimate provides for
    let history = m["lbfgs_history"].as_u64().unwrap();
    let unfilled = m["history_bytes"].as_u64().unwrap() / history * (history - 2);
    let comparable = estimated - unfilled;
    eprintln!(
        "512 px: measured peak {:.3} GiB, estimate {:.3} GiB ({:.3} GiB without the history not yet filled)",
        measured as f64 / 1073741824.0,
        estimated as f64 / 1073741824.0,
        comparable as f64 / 1073741824.0
    );
    assert!(measured <= estimated, "the estimate must bound the peak");
    let ratio = comparable as f64 / measured as f64;
    // the same job peaks 1.02–1.17 GiB from run to run (allocator), 1.3 once on a loaded machine
    assert!((0.75..1.3).contains(&ratio), "estimate {comparable} vs measured {measured}: {ratio:.2}×");
}
