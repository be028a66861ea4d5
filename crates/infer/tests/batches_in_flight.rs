//! When the model's loop hands a batch's maps on to the stitcher: at once where the engine
//! computed them on the submitting thread (the CPU's), a batch later where they are still on
//! the device (a batch kept in flight, so that a GPU computes while the host reads back). The
//! summary's `seconds_to_first_batch` is when the first batch's maps were handed on.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use infer::pipeline::{self, Options, ProbFormat, SlideJob};
use tiling::Blend;
use unet_core::{Predictor, Tta, UnetConfig};

use common::stand_in::StandIn;

mod common;

/// The demo slide's top-left 1024 x 1024 pixels, every patch run in batches of one, on
/// `engine`: when the first batch's maps were handed on, and when each batch was submitted.
fn first_batch_and_submissions(engine: StandIn) -> (Instant, Vec<Instant>) {
    let submitted = engine.submissions();
    let predictor = Predictor::from_engine(Box::new(engine), UnetConfig::new(3, 3, 8));
    let dir = tempfile::tempdir().unwrap();
    let process_start = Instant::now();
    let job = SlideJob {
        slide: common::fixtures().join("pipeline/demo_vips_jpeg.tif"),
        stem: "demo".to_string(),
        predictor: &predictor,
        model: "stand-in".into(),
        out_dir: dir.path().to_path_buf(),
        batch: 1,
        options: Options {
            model_sha256: String::new(),
            model_mpp: None,
            slide_mpp: None,
            patch: 512,
            overlap: 0,
            region: Some([0, 0, 1024, 1024]),
            tissue: "off".to_string(),
            blend: Blend::Mean,
            tta: Tta::Off,
            prob_format: ProbFormat::Tiff,
            heatmap_side: 256,
            truth: None,
        },
        truth: None,
        progress: false,
        stop: Arc::new(AtomicBool::new(false)),
        process_start,
    };
    let summary = pipeline::run(&job).unwrap();
    assert_eq!(summary.patches_run, 4);
    let seconds = summary.seconds_to_first_batch.unwrap();
    let first_batch = process_start + Duration::from_secs_f64(seconds);
    let submitted = submitted.lock().unwrap().clone();
    (first_batch, submitted)
}

/// The summary's seconds, an f64, give the instant back to within a nanosecond; a margin.
const SLACK: Duration = Duration::from_nanos(100);

#[test]
fn a_batch_computed_when_submitted_goes_on_before_the_next_is_submitted() {
    let (first_batch, submitted) = first_batch_and_submissions(StandIn::on_the_host());
    assert_eq!(submitted.len(), 4);
    assert!(submitted[0] <= first_batch + SLACK);
    assert!(
        first_batch <= submitted[1] + SLACK,
        "the first batch waited for the second"
    );
}

#[test]
fn a_batch_on_the_device_stays_in_flight_until_the_next_is_submitted() {
    let (first_batch, submitted) = first_batch_and_submissions(StandIn::on_a_device(0.0));
    assert_eq!(submitted.len(), 4);
    assert!(
        submitted[1] <= first_batch + SLACK,
        "the first batch went on before the second was submitted"
    );
}
