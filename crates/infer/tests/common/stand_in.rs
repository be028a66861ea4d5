//! An engine that stands in for the model where the pipeline around it is what is measured or
//! tested (`benches/pipeline.rs` includes this file too): it answers each patch's red level as
//! its probability, and records when each batch was submitted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use unet_core::engine::{Batch, Done, Engine, InFlight, Output};
use unet_core::{EngineChoice, FoldedWeights, Precision, PredictError, Target};

/// On a device (`StandIn::on_a_device`), a forward is the host's share of a GPU's (the maps
/// computed when submitted; copied when waited for, as out of pinned memory) and the device's
/// `ms_per_patch` a patch, each forward queued behind the ones submitted before it, as on a
/// CUDA stream (at once, if 0). On the host (`StandIn::on_the_host`), a forward is computed
/// when submitted, as the CPU engine's is.
pub struct StandIn {
    /// `None` on the host.
    ms_per_patch: Option<f64>,
    /// When the device will have finished the forwards submitted so far.
    device_free: Mutex<Instant>,
    submitted: Arc<Mutex<Vec<Instant>>>,
}

impl StandIn {
    pub fn on_a_device(ms_per_patch: f64) -> StandIn {
        StandIn::new(Some(ms_per_patch))
    }

    pub fn on_the_host() -> StandIn {
        StandIn::new(None)
    }

    fn new(ms_per_patch: Option<f64>) -> StandIn {
        StandIn {
            ms_per_patch,
            device_free: Mutex::new(Instant::now()),
            submitted: Arc::default(),
        }
    }

    /// When each batch was submitted, in order (kept up to date once the engine is boxed).
    pub fn submissions(&self) -> Arc<Mutex<Vec<Instant>>> {
        Arc::clone(&self.submitted)
    }
}

/// A forward on [`StandIn`]'s device: its maps, and when the device is done with it.
struct Queued {
    maps: Vec<f32>,
    done: Instant,
}

impl InFlight for Queued {
    fn wait(self: Box<Self>) -> Result<Vec<f32>, PredictError> {
        std::thread::sleep(self.done.saturating_duration_since(Instant::now()));
        Ok(self.maps.clone())
    }
}

impl Engine for StandIn {
    fn load(_: &FoldedWeights, _: Target) -> Result<Self, PredictError> {
        Ok(StandIn::on_a_device(0.0))
    }
    fn name(&self) -> &'static str {
        "stand-in"
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
    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        self.submit(batch, output)?.wait()
    }
    fn submit<'a>(
        &'a self,
        batch: &Batch,
        _: Output,
    ) -> Result<Box<dyn InFlight + 'a>, PredictError> {
        self.submitted.lock().unwrap().push(Instant::now());
        let maps = batch
            .patches
            .iter()
            .flat_map(|patch| patch.pixels.chunks_exact(3).map(|p| p[0] as f32 / 255.0))
            .collect();
        let Some(ms_per_patch) = self.ms_per_patch else {
            return Ok(Box::new(Done(maps)));
        };
        let pace = Duration::from_secs_f64(ms_per_patch * batch.len() as f64 / 1000.0);
        let mut device_free = self.device_free.lock().unwrap();
        let done = (*device_free).max(Instant::now()) + pace;
        *device_free = done;
        Ok(Box::new(Queued { maps, done }))
    }
}
