//! A time budget (`--max-seconds`) is split so that each scale gets its share of the
//! *evaluations* (issue #12): a scale's share of the time is its evaluation share times what its
//! evaluations cost against the output size's, as the engine measured them (`engine::pace`).
//! Before, the coarse scales got their share of the *time*; a coarse evaluation costs far more
//! than its pixel ratio on a CPU, so they made up to half of the evaluations from the content,
//! where the schedule gives them a quarter. (One test in this binary: tests side by side on two
//! cores would share the CPU and the clock.)

mod common;

use common::picture;
use neural_style::engine::vgg::Layout;
use neural_style::engine::weights::Weights;
use neural_style::engine::{Control, Engine, Init, Job, Params};
use tch::Device;

#[test]
fn each_scale_gets_its_share_of_the_evaluations() {
    tch::set_num_threads(2);
    let engine = Engine::with_layout(&Weights::random(0), Device::Cpu, Layout::FP32);
    let run = |init: Init| {
        let params = Params {
            size: Some(128),
            min_scale: 32,
            evaluations: 100_000,
            max_seconds: Some(5.0),
            init,
            ..Params::default()
        };
        let job = Job::new(picture("tubingen.jpg", 128), vec![picture("starry_night.jpg", 128)], params).unwrap();
        engine.stylize(&job, &mut |_| Control::Continue).unwrap().summary
    };
    // the first job measures the sizes; the next ones split by what was measured
    run(Init::Noise);
    for (init, coarse) in [(Init::Noise, 0.5), (Init::Content, 0.25)] {
        let s = run(init);
        let per: Vec<usize> = s.scales.iter().map(|x| x.evaluations).collect();
        let total: usize = per.iter().sum();
        eprintln!("{init:?}: evaluations per scale {per:?}, {:?}", s.scales);
        assert_eq!(per.len(), 3, "32, 64 and 128 px");
        // each coarse scale's share of the evaluations is coarse/2, within what a loaded
        // machine's timing noise allows; with the old split (time shares) the 32 px scale alone
        // made more than the output size from noise
        let share = |n: usize| n as f64 / total as f64;
        for &n in &per[..2] {
            assert!((0.4 * coarse / 2.0..2.0 * coarse / 2.0).contains(&share(n)), "{per:?}");
        }
        assert!((0.6 * (1.0 - coarse)..1.0).contains(&share(per[2])), "{per:?}");
    }
}
