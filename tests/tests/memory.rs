//! The memory estimate against the peak RSS of a real run (its own test binary, so that no other
//! test's child processes count in RUSAGE_CHILDREN).

use neural_style_e2e::{image, stderr, stylise, summary};

fn children_peak_rss_bytes() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn estimate_bounds_the_measured_peak_and_is_close_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = stylise(
        &image("tubingen.jpg"),
        &image("starry_night.jpg"),
        &out,
        &["--size", "512", "--iterations", "3", "--single-scale", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    let measured = children_peak_rss_bytes();
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
    assert!((0.8..1.3).contains(&ratio), "estimate {comparable} vs measured {measured}: {ratio:.2}×");
}
