//! The optimisation loop reads from the device at most twice per evaluation (each read is a
//! device sync on a GPU: ~33 µs on an H100, invisible on a CPU, so it is counted here instead
//! of timed) and uploads at most once. Every read and upload of the loop goes through
//! `engine::host`, which counts them; a source check makes sure no module of the loop reads
//! around it or makes host tensors.

mod common;

use common::picture;
use neural_style::engine::params::OptimizerKind;
use neural_style::engine::weights::Weights;
use neural_style::engine::{host, Control, Engine, Init, Job, Params, Progress};
use tch::Device;

/// `counter`'s growth per evaluation between the first and the last progress report of
/// `params`' job (tubingen × starry night at 64 px), and the job's evaluations.
fn per_evaluation(engine: &Engine, params: Params, counter: impl Fn() -> u64) -> (f64, usize) {
    let job = Job::new(picture("tubingen.jpg", 64), vec![picture("starry_night.jpg", 64)], params).unwrap();
    let mut first = None;
    let mut last = (0, 0);
    let out = engine
        .stylize(&job, &mut |p: &Progress| {
            let now = (p.evaluation, counter());
            first.get_or_insert(now);
            last = now;
            Control::Continue
        })
        .unwrap();
    let (n0, r0) = first.unwrap();
    ((last.1 - r0) as f64 / (last.0 - n0) as f64, out.summary.evaluations)
}

#[test]
fn the_loop_reads_from_the_device_at_most_twice_per_evaluation() {
    tch::set_num_threads(2);
    let engine = Engine::new(&Weights::random(1), Device::Cpu);
    let single = Params {
        size: Some(64),
        evaluations: 60,
        multiscale: Some(false),
        lbfgs_history: 100,
        init: Init::Content,
        ..Params::default()
    };
    for (name, params) in [
        ("L-BFGS, line search, history 100", single.clone()),
        ("L-BFGS, fixed steps", Params { line_search: false, ..single.clone() }),
        ("Adam", Params { optimizer: OptimizerKind::Adam, ..single.clone() }),
        ("defaults at 128 px (two scales)", Params { size: Some(128), evaluations: 60, ..Params::default() }),
    ] {
        let (reads, evaluations) = per_evaluation(&engine, params.clone(), host::reads);
        let (uploads, _) = per_evaluation(&engine, params, host::uploads);
        eprintln!(
            "{name}: {reads:.2} host reads and {uploads:.2} uploads per evaluation over {evaluations} evaluations"
        );
        assert_eq!(evaluations, 60, "{name}: the budget is spent");
        assert!(reads <= 2.0, "{name}: {reads:.2} host reads per evaluation");
        assert!(uploads <= 1.0, "{name}: {uploads:.2} uploads per evaluation");
    }
}

#[test]
fn the_loop_reads_only_through_the_counter() {
    for file in ["optim/lbfgs.rs", "optim/adam.rs", "optim/mod.rs", "scale.rs", "objective.rs", "tiling.rs", "mod.rs"] {
        let code = engine_code(file);
        let code = code.as_str();
        for read in ["double_value(", "int64_value(", "try_from(", "copy_data(", "Device::Cpu)"] {
            let hits: Vec<&str> =
                code.lines().filter(|l| !l.trim_start().starts_with("//") && l.contains(read)).collect();
            // the result leaves for the CPU once per job, after the loop
            let allowed = |l: &&str| file == "mod.rs" && l.contains("rgb: rgb.to_device(Device::Cpu)");
            let hits: Vec<&&str> = hits.iter().filter(|l| !allowed(l)).collect();
            assert!(hits.is_empty(), "{file} reads from the device without engine::host::read: {hits:?}");
        }
    }
}

/// libtorch operators (each a kernel launch on a GPU, ~5–15 µs of CPU whatever its size) of one
/// bare evaluation, and added per evaluation by the optimisation loop, counted by
/// `engine::ops`: what a GPU pays for launches, visible on a CPU.
#[test]
fn an_evaluation_and_the_loop_around_it_launch_few_operators() {
    use neural_style::engine::vgg::Layout;
    use neural_style::engine::{ops, optim};

    tch::set_num_threads(2);
    assert!(ops::enable(), "this build has the operator counter");
    let count = || ops::count().unwrap();
    let weights = Weights::random(1);
    // (layout, most operators of a bare evaluation)
    for (layout, bare_limit) in [(Layout::FP32, 85), (Layout::BF16_NHWC, 100)] {
        let engine = Engine::with_layout(&weights, Device::Cpu, layout);
        let content = picture("tubingen.jpg", 64).rgb_tensor();
        let style = picture("starry_night.jpg", 64).rgb_tensor();
        let objective = engine.objective(&content, &[style], &Params::default());
        drop(objective.evaluate(engine.vgg(), &content));
        let before = count();
        drop(objective.evaluate(engine.vgg(), &content));
        let bare = count() - before;
        eprintln!("{}: {bare} operators per bare evaluation", layout.name());
        assert!(bare <= bare_limit, "{}: {bare} operators per evaluation (at most {bare_limit})", layout.name());
        if layout != Layout::FP32 {
            continue;
        }
        let single =
            Params { size: Some(64), evaluations: 60, multiscale: Some(false), init: Init::Noise, ..Params::default() };
        // (optimiser, most operators the loop adds per evaluation outside its steps, most it
        // adds in all): the optimisers' steps (an L-BFGS trial, an Adam step) run with the
        // evaluation as one optim::Step, which a GPU replays as one CUDA graph, so what it
        // launches one by one is what runs outside them (the upload, the read)
        for (name, params, outside_limit, added_limit) in [
            ("L-BFGS, history 100", Params { lbfgs_history: 100, ..single.clone() }, 3.0, 12.0),
            ("L-BFGS, history 5 (wraps around)", Params { lbfgs_history: 5, ..single.clone() }, 3.0, 12.0),
            ("Adam", Params { optimizer: OptimizerKind::Adam, ..single.clone() }, 3.0, 13.0),
        ] {
            let (total, _) = per_evaluation(&engine, params.clone(), count);
            let (stepped, _) = per_evaluation(&engine, params, optim::step_operators);
            // beyond the evaluation (which a GPU replays as one graph, with the step or alone)
            let (added, outside) = (total - bare as f64, total - stepped.max(bare as f64));
            eprintln!(
                "{name}: the loop adds {added:.1} operators per evaluation, {outside:.1} of them outside its steps"
            );
            assert!(
                added <= added_limit,
                "{name}: the loop adds {added:.1} operators per evaluation (at most {added_limit})"
            );
            assert!(
                outside <= outside_limit,
                "{name}: {outside:.1} operators per evaluation outside the steps (at most {outside_limit})"
            );
        }
    }
}

#[test]
fn the_evaluation_makes_no_tensors_on_the_host() {
    // a host tensor moved to a GPU per evaluation is a copy that waits for the device
    for file in ["optim/lbfgs.rs", "optim/adam.rs", "scale.rs", "objective.rs", "tiling.rs", "graph.rs", "vgg.rs"] {
        let code = engine_code(file);
        let code = code.as_str();
        let hits: Vec<&str> = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//") && (l.contains("from_slice(") || l.contains("Tensor::from(")))
            // the network's constants, made once when it loads
            .filter(|l| !(file == "vgg.rs" && l.contains("let constant =")))
            // eq. 7's coefficients as a matrix, made once per objective at its first evaluation
            .filter(|l| !(file == "objective.rs" && l.contains("let once_per_objective =")))
            .collect();
        assert!(hits.is_empty(), "{file} makes host tensors: {hits:?}");
    }
}

/// The source of `src/engine/<file>` without its unit tests.
fn engine_code(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("#[cfg(test)]").next().unwrap_or_default().to_string()
}
