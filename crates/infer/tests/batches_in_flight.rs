//! When the model's loop hands a batch's maps on to the stitcher: at once where the engine
//! computed them on the submitting thread (the CPU's), a batch later where they are still on
//! the device (a batch kept in flight, so that a GPU computes while the host reads back). The
//! summary's `seconds_to_first_batch` is when the first batch's maps were handed on.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use infer::pipeline::{self, Options, ProbFormat, SlideJob};
use tiling::Blend;
use unet_core::engine::{Batch, Done, Engine, InFlight, Output};
use unet_core::{
    EngineChoice, FoldedWeights, Precision, PredictError, Predictor, Target, Tta, UnetConfig,
};

mod common;

/// An engine that answers 0 everywhere and records when each batch was submitted; `queued`:
/// its forwards wait on a device, else they are computed when submitted.
struct Recording {
    queued: bool,
    submitted: Arc<Mutex<Vec<Instant>>>,
}

/// A forward on [`Recording`]'s device.
struct Queued(Vec<f32>);

impl InFlight for Queued {
    fn wait(self: Box<Self>) -> Result<Vec<f32>, PredictError> {
        Ok(self.0)
    }
}

impl Engine for Recording {
    fn load(_: &FoldedWeights, _: Target) -> Result<Self, PredictError> {
        unreachable!("made by the test")
    }
    fn name(&self) -> &'static str {
        "recording"
    }
    fn choice() -> EngineChoice {
        EngineChoice::Auto
    }
    fn device(&self) -> &'static str {
        "cpu"
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn forward(&self, batch: &Batch, _: Output) -> Result<Vec<f32>, PredictError> {
        Ok(vec![0.0; batch.len() * batch.width * batch.height])
    }
    fn submit<'a>(
        &'a self,
        batch: &Batch,
        output: Output,
    ) -> Result<Box<dyn InFlight + 'a>, PredictError> {
        self.submitted.lock().unwrap().push(Instant::now());
        let maps = self.forward(batch, output)?;
        Ok(match self.queued {
            true => Box::new(Queued(maps)),
            false => Box::new(Done(maps)),
        })
    }
}

/// The demo slide's top-left 1024 x 1024 pixels, every patch run in batches of one, on an
/// engine `queued` or not: when the first batch's maps were handed on, and when each batch
/// was submitted.
fn first_batch_and_submissions(queued: bool) -> (Instant, Vec<Instant>) {
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let engine = Recording {
        queued,
        submitted: Arc::clone(&submitted),
    };
    let predictor = Predictor::from_engine(Box::new(engine), UnetConfig::new(3, 3, 8));
    let dir = tempfile::tempdir().unwrap();
    let process_start = Instant::now();
    let job = SlideJob {
        slide: common::fixtures().join("pipeline/demo_vips_jpeg.tif"),
        stem: "demo".to_string(),
        predictor: &predictor,
        model: "recording".into(),
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

/// The summary's seconds, an f64, give the instant back to within a nanosecond.
const SLACK: Duration = Duration::from_nanos(100);

#[test]
fn a_batch_computed_when_submitted_goes_on_before_the_next_is_submitted() {
    let (first_batch, submitted) = first_batch_and_submissions(false);
    assert_eq!(submitted.len(), 4);
    let slack = SLACK;
    assert!(submitted[0] <= first_batch + slack);
    assert!(
        first_batch <= submitted[1] + slack,
        "the first batch waited for the second"
    );
}

#[test]
fn a_batch_on_the_device_stays_in_flight_until_the_next_is_submitted() {
    let (first_batch, submitted) = first_batch_and_submissions(true);
    assert_eq!(submitted.len(), 4);
    let slack = SLACK;
    assert!(
        submitted[1] <= first_batch + slack,
        "the first batch went on before the second was submitted"
    );
}
