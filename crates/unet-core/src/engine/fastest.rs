//! `--engine auto` where more than one engine serves the target (CUDA: the fused engine and
//! Burn's): which is faster depends on the card, the batch and the tile choices found on it,
//! so it is measured, not assumed. Each candidate runs the job's first batch twice, the first
//! time warm-up (its kernel compilation and tuning), the second timed; the fastest keeps the
//! job and the others are dropped, their device memory with them. An engine that fails on that
//! batch (a kernel that does not build for the card, memory) is left out with its reason said;
//! a batch fails only where every candidate fails it, and the next batch measures them again.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Batch, Done, Engine, InFlight, Output, panic_message};
use crate::predictor::PredictError;
use crate::target::{EngineChoice, Precision, Target};
use crate::weights::FoldedWeights;

/// Engines that serve one target, until the first batch picks the fastest.
pub struct Fastest {
    /// Until a batch has chosen: every candidate loaded, in the order of preference on a tie.
    measuring: Mutex<Vec<Box<dyn Engine>>>,
    /// The engine that serves once a batch has chosen it.
    chosen: OnceLock<Box<dyn Engine>>,
    device: &'static str,
    precision: Precision,
}

impl Fastest {
    /// The engines the `choices` name that load for `target`, to be measured on the first
    /// batch; where only one loads, that one alone. Engines that fail to load are named on
    /// stderr; where none loads, the first one's error is the answer.
    pub fn load(
        weights: &FoldedWeights,
        target: Target,
        choices: &[EngineChoice],
    ) -> Result<Box<dyn Engine>, PredictError> {
        let mut loaded = Vec::new();
        let mut first_error = None;
        for &choice in choices {
            match super::load(weights, target, choice) {
                Ok(engine) => loaded.push(engine),
                Err(err) => {
                    eprintln!("unet-core: engine auto: {choice} is left out: {err}");
                    first_error.get_or_insert(err);
                }
            }
        }
        match loaded.len() {
            0 => Err(first_error.unwrap_or_else(|| PredictError::Unsupported {
                engine: "auto",
                what: "choose among no engines".to_string(),
            })),
            1 => Ok(loaded.remove(0)),
            _ => Ok(Box::new(Fastest::new(loaded))),
        }
    }

    /// `candidates` (at least one; they serve one target), measured on the first batch.
    pub fn new(candidates: Vec<Box<dyn Engine>>) -> Fastest {
        assert!(!candidates.is_empty(), "Fastest needs a candidate");
        Fastest {
            device: candidates[0].device(),
            precision: candidates[0].precision(),
            measuring: Mutex::new(candidates),
            chosen: OnceLock::new(),
        }
    }

    /// The engine that serves, once the first batch has chosen it.
    fn chosen<T>(&self, read: impl Fn(&dyn Engine) -> T) -> Option<T> {
        self.chosen.get().map(|engine| read(engine.as_ref()))
    }
}

impl Engine for Fastest {
    /// [`Fastest::load`] builds it from the engines to measure.
    fn load(_: &FoldedWeights, _: Target) -> Result<Self, PredictError> {
        Err(PredictError::Unsupported {
            engine: "auto",
            what: "load without the engines to choose among (`Fastest::load`)".to_string(),
        })
    }

    /// The chosen engine's name; `auto` before the first batch.
    fn name(&self) -> &'static str {
        self.chosen(|engine| engine.name()).unwrap_or("auto")
    }

    fn choice() -> EngineChoice {
        EngineChoice::Auto
    }

    fn kernel(&self) -> &'static str {
        self.chosen(|engine| engine.kernel()).unwrap_or("auto")
    }

    fn device(&self) -> &'static str {
        self.chosen(|engine| engine.device()).unwrap_or(self.device)
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        let mut measuring = self.measuring.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = self.chosen.get() {
            return engine.forward(batch, output);
        }
        let candidates = std::mem::take(&mut *measuring);
        let mut timed = Vec::new();
        let mut failed = Vec::new();
        for engine in candidates {
            match time_warm(engine.as_ref(), batch, output) {
                Ok((seconds, values)) => timed.push((engine, seconds, values)),
                Err(err) => {
                    eprintln!(
                        "unet-core: engine auto: {} failed on the first batch: {err}",
                        engine.name()
                    );
                    failed.push((engine, err));
                }
            }
        }
        let Some(fastest) = fastest(timed.iter().map(|(_, seconds, _)| *seconds)) else {
            // Every candidate failed: the next batch (a smaller one, say) measures them again.
            let (engines, mut errors): (Vec<_>, Vec<_>) = failed.into_iter().unzip();
            *measuring = engines;
            return Err(errors.swap_remove(0));
        };
        let report: Vec<String> = timed
            .iter()
            .map(|(engine, seconds, _)| {
                let per_patch = seconds.as_secs_f64() * 1e3 / batch.len() as f64;
                format!("{} {per_patch:.2} ms/patch", engine.name())
            })
            .collect();
        let (engine, _, values) = timed.swap_remove(fastest);
        eprintln!(
            "unet-core: engine auto on {} {} at batch {}: {}; {} runs",
            self.device,
            self.precision,
            batch.len(),
            report.join(", "),
            engine.name()
        );
        // Under the lock, which every forward before the choice takes: set once.
        let _ = self.chosen.set(engine);
        Ok(values)
    }

    /// The chosen engine's submit; before the choice, the measuring forward.
    fn submit<'a>(
        &'a self,
        batch: &Batch,
        output: Output,
    ) -> Result<Box<dyn InFlight + 'a>, PredictError> {
        match self.chosen.get() {
            Some(engine) => engine.submit(batch, output),
            None => Ok(Box::new(Done(self.forward(batch, output)?))),
        }
    }
}

/// `engine`'s second forward of `batch`, timed (the first compiles and tunes), and its values.
/// A panic inside the engine (cubecl's, on a card it cannot serve) is an error here: the
/// engine is left out, and the job goes on on the others.
fn time_warm(
    engine: &dyn Engine,
    batch: &Batch,
    output: Output,
) -> Result<(Duration, Vec<f32>), PredictError> {
    let run = || {
        engine.forward(batch, output)?;
        // Every engine's forward ends with its values on the host: the device has finished.
        let start = Instant::now();
        let values = engine.forward(batch, output)?;
        Ok((start.elapsed(), values))
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let reason = format!("{} panicked: {}", engine.name(), panic_message(&*panic));
        Err(super::device_error(engine.device(), batch.len(), reason))
    })
}

/// The index of the shortest of `times`, the earliest on a tie; `None` where there are none.
fn fastest(times: impl Iterator<Item = Duration>) -> Option<usize> {
    times
        .enumerate()
        .min_by_key(|&(index, time)| (time, index))
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::RgbPatch;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An engine that answers `value` everywhere after `delay`, counting its forwards, or
    /// fails every forward.
    struct Fake {
        name: &'static str,
        value: f32,
        delay: Duration,
        fails: Failure,
        forwards: Arc<AtomicUsize>,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Failure {
        None,
        Error,
        Panic,
    }

    impl Fake {
        fn boxed(
            name: &'static str,
            value: f32,
            delay_ms: u64,
        ) -> (Box<dyn Engine>, Arc<AtomicUsize>) {
            let forwards = Arc::new(AtomicUsize::new(0));
            let fake = Fake {
                name,
                value,
                delay: Duration::from_millis(delay_ms),
                fails: Failure::None,
                forwards: forwards.clone(),
            };
            (Box::new(fake), forwards)
        }

        fn failing(name: &'static str, fails: Failure) -> Box<dyn Engine> {
            Box::new(Fake {
                name,
                value: 0.0,
                delay: Duration::ZERO,
                fails,
                forwards: Default::default(),
            })
        }
    }

    impl Engine for Fake {
        fn load(_: &FoldedWeights, _: Target) -> Result<Self, PredictError> {
            unreachable!("built by hand")
        }
        fn name(&self) -> &'static str {
            self.name
        }
        fn choice() -> EngineChoice {
            EngineChoice::Auto
        }
        fn device(&self) -> &'static str {
            "test"
        }
        fn precision(&self) -> Precision {
            Precision::F16
        }
        fn forward(&self, batch: &Batch, _: Output) -> Result<Vec<f32>, PredictError> {
            self.forwards.fetch_add(1, Ordering::SeqCst);
            if self.fails == Failure::Panic {
                panic!("{} cannot run here", self.name);
            }
            if self.fails == Failure::Error {
                return Err(PredictError::OutOfMemory {
                    device: "test",
                    batch: batch.len(),
                    try_batch: 1,
                });
            }
            std::thread::sleep(self.delay);
            Ok(vec![self.value; batch.len() * batch.plane()])
        }
    }

    /// `run` on a batch of one black 16x16 patch.
    fn on_a_patch<T>(run: impl FnOnce(&Batch) -> T) -> T {
        let pixels = vec![0u8; 16 * 16 * 3];
        let patches = [RgbPatch::new(16, 16, &pixels)];
        run(&Batch {
            patches: &patches,
            width: 16,
            height: 16,
        })
    }

    fn forward(engine: &dyn Engine) -> Result<Vec<f32>, PredictError> {
        on_a_patch(|batch| engine.forward(batch, Output::Probability))
    }

    #[test]
    fn the_fastest_of_the_first_batch_serves_every_batch() {
        // 150 ms against none: far beyond any drift of a shared machine.
        let (slow, slow_forwards) = Fake::boxed("slow", 1.0, 150);
        let (quick, quick_forwards) = Fake::boxed("quick", 2.0, 0);
        let fastest = Fastest::new(vec![slow, quick]);
        assert_eq!((fastest.name(), fastest.device()), ("auto", "test"));
        assert_eq!(forward(&fastest).unwrap(), vec![2.0; 256]);
        assert_eq!(fastest.name(), "quick");
        // Warm-up and timed run each; from now on the quick engine alone.
        assert_eq!(slow_forwards.load(Ordering::SeqCst), 2);
        assert_eq!(forward(&fastest).unwrap(), vec![2.0; 256]);
        assert_eq!(slow_forwards.load(Ordering::SeqCst), 2);
        assert_eq!(quick_forwards.load(Ordering::SeqCst), 3);
        // A submitted batch, too.
        let submitted = on_a_patch(|batch| fastest.submit(batch, Output::Probability).unwrap());
        assert_eq!(submitted.wait().unwrap(), vec![2.0; 256]);
        assert_eq!(slow_forwards.load(Ordering::SeqCst), 2);
        assert_eq!(quick_forwards.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn an_engine_that_fails_or_panics_on_the_first_batch_is_left_out() {
        let (slow, _) = Fake::boxed("slow", 1.0, 20);
        let fastest = Fastest::new(vec![
            Fake::failing("broken", Failure::Error),
            slow,
            Fake::failing("panics", Failure::Panic),
        ]);
        assert_eq!(forward(&fastest).unwrap(), vec![1.0; 256]);
        assert_eq!(fastest.name(), "slow");
    }

    #[test]
    fn where_every_engine_fails_the_first_error_is_the_answer() {
        let fastest = Fastest::new(vec![
            Fake::failing("one", Failure::Error),
            Fake::failing("two", Failure::Panic),
        ]);
        for _ in 0..2 {
            assert!(matches!(
                forward(&fastest),
                Err(PredictError::OutOfMemory { batch: 1, .. })
            ));
        }
        assert_eq!(fastest.name(), "auto");
    }

    #[test]
    fn a_tie_goes_to_the_earliest() {
        let times = |ms: &[u64]| fastest(ms.iter().map(|&m| Duration::from_millis(m)));
        assert_eq!(times(&[3, 1, 1]), Some(1));
        assert_eq!(times(&[2, 2]), Some(0));
        assert_eq!(times(&[]), None);
    }
}
