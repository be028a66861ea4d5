//! The fused engine: the whole forward on unet-kernels' CubeCL kernels, on one client, walking
//! the plan over bordered buffers that are allocated once per batch shape and kept between
//! batches. The host uploads the patches' bytes and reads back only the probability map.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use cubecl::bytes::Bytes;
use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl_environment::stream::StreamId;
use unet_kernels::{head, input_bordered, max_pool_bordered, replicate_border};

use self::main_loop::{Candidate, Conv, MainLoop, Op};

use crate::architecture::{Kind, LEVELS, Layer as PlanLayer, UnetConfig};
use crate::engine::{Batch, Engine, InFlight, Output};
use crate::predictor::PredictError;
use crate::target::{EngineChoice, Precision, Target};
use crate::weights::{FoldedWeights, WeightsError};

mod epilogue;
mod main_loop;

/// Units per cube for every kernel.
const UNITS: u32 = 256;

/// The most values a buffer may hold: the kernels index in 32 bits (cubecl's default address
/// type), units included, and a grid past 65 535 cubes adds up to a row of spare cubes.
const ADDRESSABLE: usize = u32::MAX as usize - 65_535 * UNITS as usize;

/// A layer's weights (`[tap][input][output]`) and bias on the device, as `F`.
#[derive(Clone)]
struct Layer {
    /// Its path in the plan (`conv1.first`).
    name: String,
    inputs: usize,
    outputs: usize,
    weight: Handle,
    bias: Handle,
    /// Its weights and bias as cubek's convolution reads them (`main_loop::gemm_form`), where
    /// the main loop may run on tensor cores (not in f32, nor for the head).
    gemm: Option<(Handle, Handle)>,
}

/// What a forward's convolutions share: where their times go when profiled.
struct Pass<'a> {
    times: Option<&'a mut Vec<LayerTime>>,
}

/// One convolution's time in [`FusedUnet::profile`].
#[derive(Debug, Clone)]
pub struct LayerTime {
    /// Its path in the plan (`conv1.first`, `up6`).
    pub layer: String,
    /// (batch, height, width, input channels, output channels), the height and width of its
    /// input.
    pub shape: (usize, usize, usize, usize, usize),
    /// Kernel taps: 9 for a 3x3 convolution, 4 for the 2x2 transposed one.
    pub taps: usize,
    /// What computed its products: `portable`, or cubek's algorithm and tile kind.
    pub main_loop: String,
    pub seconds: f64,
}

impl LayerTime {
    /// Multiply-adds counted twice, per second, in units of 10^12.
    pub fn tflops(&self) -> f64 {
        let (n, h, w, inputs, outputs) = self.shape;
        2.0 * (n * h * w * self.taps * inputs * outputs) as f64 / self.seconds / 1e12
    }
}

/// Where a 3x3 convolution stores: the last of the `stride` channels of each pixel of
/// `output` (a level's skip comes after the upsampled channels of the decoder's
/// concatenation), and the 2x2 max into `pooled` (the next level's input) if given.
struct Store<'a> {
    output: &'a Handle,
    stride: usize,
    pooled: Option<&'a Handle>,
}

impl<'a> Store<'a> {
    /// All of `output`, which holds `layer`'s channels alone.
    fn whole(output: &'a Handle, layer: &Layer) -> Store<'a> {
        Store {
            output,
            stride: layer.outputs,
            pooled: None,
        }
    }
}

/// The UNet on a CubeCL device: NHWC activations and weights stored as `F` (`f32` or
/// `half::f16`), sums in f32; per convolution a main loop that stores into the interior of
/// its bordered output (`fused/main_loop.rs`: a 3x3 convolution's through ReLU, a transposed
/// one's into its half of the decoder's concatenation), then a pass for the border and, where
/// a level ends, one for the pooling; one kernel for the input and one for the head; no host
/// synchronisation inside a forward. The kernels go on one stream, the patches' upload and the
/// map's copy back on two others (see `Streams`).
pub struct FusedUnet<F> {
    client: Client,
    /// What the client runs on (`wgpu`, `cuda`), for the engine's reports.
    device: &'static str,
    config: UnetConfig,
    /// The plan's encoder, two 3x3 convolutions a level, largest first.
    encoder: Vec<[Layer; 2]>,
    /// The plan's decoder, deepest first: the transposed convolution, then two 3x3.
    decoder: Vec<[Layer; 3]>,
    head: Layer,
    main_loop: MainLoop,
    /// The last batch shape's activations, reused while the shape stays.
    buffers: Mutex<Option<Buffers>>,
    streams: Streams,
    storage: PhantomData<F>,
}

/// The streams a forward's work goes on, whatever thread submits it. On one stream, a batch's
/// upload would wait for the kernels of the batch before it and its map's copy back would hold
/// up the kernels of the batch after; on streams of their own the copies overlap the kernels.
/// cubecl orders them: a stream that uses a buffer another stream wrote waits for that write,
/// and a buffer dropped on one stream is not reused before the streams that used it are done.
struct Streams {
    upload: StreamId,
    compute: StreamId,
    download: StreamId,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            upload: StreamId::allocate(),
            compute: StreamId::allocate(),
            download: StreamId::allocate(),
        }
    }
}

/// One batch shape's bordered activations, per level (largest first).
struct Buffers {
    /// (batch, height, width) of the patches.
    shape: (usize, usize, usize),
    /// The level's input: the normalised patches, or the level above's pooled skip.
    inputs: Vec<Handle>,
    /// The first convolution's output (the encoder's, later the decoder's).
    middles: Vec<Handle>,
    /// Above the deepest level: the decoder's concatenation, upsampled channels then skip.
    joins: Vec<Handle>,
    /// The level's last output: the encoder's at the deepest level, the decoder's above.
    outputs: Vec<Handle>,
}

/// `values` as `F` on the device.
fn upload<F: Float + CubeElement>(client: &Client, values: &[f32]) -> Handle {
    let converted: Vec<F> = values.iter().map(|&v| F::new(v)).collect();
    client.create_from_slice(F::as_bytes(&converted))
}

impl<F: Float + CubeElement> FusedUnet<F> {
    /// Uploads the folded weights, rearranged for the kernels and rounded to `F`; `device`
    /// names what the client runs on. The main loop is the one `UNET_FUSED_CONV` names (see
    /// [`FusedUnet::with_main_loop`]), tuned per layer shape where it is unset.
    pub fn new(
        client: Client,
        device: &'static str,
        weights: &FoldedWeights,
    ) -> Result<FusedUnet<F>, PredictError> {
        let main_loop = std::env::var("UNET_FUSED_CONV").unwrap_or_default();
        FusedUnet::with_main_loop(client, device, weights, &main_loop)
    }

    /// [`FusedUnet::new`] with the main loop `main_loop` names: `tuned` (per layer shape, in
    /// f16), `portable`, or one of cubek's algorithms with a tile kind
    /// (`simple_sync_cyclic_cmma`, `specialized_tma_mma`).
    pub fn with_main_loop(
        client: Client,
        device: &'static str,
        weights: &FoldedWeights,
        main_loop: &str,
    ) -> Result<FusedUnet<F>, PredictError> {
        let main_loop =
            MainLoop::choose(&client, device, precision_of::<F>(), main_loop).map_err(|what| {
                PredictError::Unsupported {
                    engine: "fused",
                    what,
                }
            })?;
        let plan = weights.plan();
        let layer = |layer: &PlanLayer| -> Result<Layer, WeightsError> {
            let tap_major = weights.tap_major(layer)?;
            let bias = weights.bias(layer)?;
            let gemm = (main_loop.may_use_tensor_cores()
                && layer.kind != Kind::Head1x1
                && main_loop::tensor_cores_take(layer.inputs))
            .then(|| {
                let (weight, bias) = main_loop::gemm_form(layer.kind, &tap_major, bias);
                (upload::<F>(&client, &weight), upload::<F>(&client, &bias))
            });
            Ok(Layer {
                name: layer.path.clone(),
                inputs: layer.inputs,
                outputs: layer.outputs,
                weight: upload::<F>(&client, &tap_major.values),
                bias: upload::<F>(&client, bias),
                gemm,
            })
        };
        let streams = Streams::new();
        // Uploaded on the compute stream, where the kernels read them: a buffer of another
        // stream would have cubecl order the two at every launch that reads it.
        let (encoder, decoder, head) = streams.compute.executes(|| {
            let encoder = plan
                .encoder
                .iter()
                .map(|level| Ok([layer(&level.convs[0])?, layer(&level.convs[1])?]))
                .collect::<Result<_, WeightsError>>()?;
            let decoder = plan
                .decoder
                .iter()
                .map(|level| {
                    let [first, second] = &level.convs.convs;
                    Ok([layer(&level.up)?, layer(first)?, layer(second)?])
                })
                .collect::<Result<_, WeightsError>>()?;
            Ok::<_, WeightsError>((encoder, decoder, layer(&plan.head)?))
        })?;
        Ok(FusedUnet {
            client,
            device,
            config: weights.config,
            encoder,
            decoder,
            head,
            main_loop,
            buffers: Mutex::new(None),
            streams,
            storage: PhantomData,
        })
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// What computes the convolutions' products: `tuned per layer shape` (what each ran is in
    /// [`FusedUnet::profile`]), `portable`, or cubek's algorithm and tile kind.
    pub fn main_loop(&self) -> String {
        self.main_loop.to_string()
    }

    /// The decoder level that goes back up to `level`.
    fn decoder_at(&self, level: usize) -> &[Layer; 3] {
        &self.decoder[LEVELS - 2 - level]
    }

    /// Bordered buffers for `batch` patches of `height` x `width`; an error where the largest
    /// would hold more values than the kernels address.
    fn allocate(&self, batch: usize, height: usize, width: usize) -> Result<Buffers, PredictError> {
        // Values per image, buffer by buffer.
        let bordered = |level: usize, channels: usize| {
            ((height >> level) + 2) * ((width >> level) + 2) * channels
        };
        let levels = 0..LEVELS;
        let inputs: Vec<usize> = levels
            .clone()
            .map(|l| bordered(l, self.encoder[l][0].inputs))
            .collect();
        let middles: Vec<usize> = levels
            .clone()
            .map(|l| bordered(l, self.encoder[l][0].outputs))
            .collect();
        let joins: Vec<usize> = (0..LEVELS - 1)
            .map(|l| bordered(l, self.decoder_at(l)[1].inputs))
            .collect();
        let outputs: Vec<usize> = levels
            .clone()
            .map(|l| match l {
                l if l == LEVELS - 1 => bordered(l, self.encoder[l][1].outputs),
                l => bordered(l, self.decoder_at(l)[2].outputs),
            })
            .collect();
        let largest = [&inputs, &middles, &joins, &outputs]
            .into_iter()
            .flatten()
            .fold(0, |largest, &values| largest.max(values));
        let most = ADDRESSABLE / largest.max(1);
        if batch > most {
            return Err(PredictError::BatchTooLarge {
                engine: "fused",
                batch,
                width,
                height,
                most,
            });
        }
        let empty = |values: &usize| self.client.empty(batch * values * size_of::<F>());
        Ok(Buffers {
            shape: (batch, height, width),
            inputs: inputs.iter().map(empty).collect(),
            middles: middles.iter().map(empty).collect(),
            joins: joins.iter().map(empty).collect(),
            outputs: outputs.iter().map(empty).collect(),
        })
    }

    /// A batch of patches to `output`: the per-pixel probabilities (max over output channels),
    /// `[n, height, width]`, or every channel's sigmoid, `[n, channels, height, width]`.
    pub fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        self.submit(batch, output)?.wait()
    }

    /// [`FusedUnet::forward`] launched, its output's copy to the host queued behind it.
    pub fn submit<'a>(
        &'a self,
        batch: &Batch,
        output: Output,
    ) -> Result<FusedInFlight<'a>, PredictError> {
        let result = (self.streams.compute).executes(|| self.launch(batch, output, None))?;
        let (device, n) = (self.device, batch.len());
        let read = (self.streams.download).executes(|| self.client.read_async(vec![result]));
        Ok(FusedInFlight {
            read: Some(Box::pin(async move {
                let bytes = read
                    .await
                    .map_err(|source| super::device_error(device, n, source))?;
                Ok(f32::from_bytes(&bytes[0]).to_vec())
            })),
        })
    }

    /// The time of each 3x3 convolution (main loop, border and pooling) and transposed convolution
    /// in a forward of `batch`, in the order they run, the device waited for before and after
    /// each.
    pub fn profile(&self, batch: &Batch) -> Result<Vec<LayerTime>, PredictError> {
        (self.streams.compute).executes(|| {
            let mut times = Vec::new();
            self.launch(batch, Output::Probability, Some(&mut times))?;
            self.wait(batch.len())?;
            Ok(times)
        })
    }

    /// The forward's kernels queued on the device, on the stream of the caller's scope (the
    /// compute stream), the patches uploaded on the upload stream; each 3x3 convolution timed
    /// into `times` when given. Returns the buffer its output will be in.
    fn launch(
        &self,
        batch: &Batch,
        output: Output,
        times: Option<&mut Vec<LayerTime>>,
    ) -> Result<Handle, PredictError> {
        let (n, height, width) = (batch.len(), batch.height, batch.width);
        let mut cached = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().map(|b| b.shape) != Some((n, height, width)) {
            // Drop the old shape's buffers before allocating the new ones.
            *cached = None;
            *cached = Some(self.allocate(n, height, width)?);
        }
        let buffers = cached.as_ref().expect("allocated above");
        let mut pass = Pass { times };

        // The bytes as they are, read by the kernel four to a little-endian word (every
        // runtime reads words), the last word padded. Gathered into words and handed over
        // whole, they are copied once more, by cubecl into pinned memory (25 MB a batch of
        // 32): `create_from_slice` would copy them first, and cubecl copies bytes in a
        // `Vec<u8>` into an allocation of its own 16-byte alignment.
        let patch_bytes = batch.plane() * 3;
        let mut words = vec![0u32; (n * patch_bytes).div_ceil(4)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        for (patch, to) in batch.patches.iter().zip(bytes.chunks_mut(patch_bytes)) {
            to.copy_from_slice(patch.pixels);
        }
        let words_len = words.len();
        let rgb = (self.streams.upload).executes(|| self.client.create(Bytes::from_elems(words)));
        let units = n * (height + 2) * (width + 2) * 3;
        // SAFETY: every buffer holds the length given with it (`allocate`, `words_len` words of
        // bytes), and the kernel's `units` keep it inside them.
        unsafe {
            input_bordered::launch_unchecked::<F>(
                &self.client,
                cube_count(units),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(rgb, words_len),
                BufferArg::from_raw_parts(buffers.inputs[0].clone(), units),
                units,
                height,
                width,
            )
        };

        for (level, [first, second]) in self.encoder.iter().enumerate() {
            let shape = (n, height >> level, width >> level);
            let middle = Store::whole(&buffers.middles[level], first);
            self.conv(first, &buffers.inputs[level], middle, shape, &mut pass)?;
            let store = if level == LEVELS - 1 {
                Store::whole(&buffers.outputs[level], second)
            } else {
                // The skip goes after the upsampled channels of the level's concatenation,
                // and its 2x2 max into the next level's input.
                let up = self.decoder_at(level)[0].outputs;
                Store {
                    output: &buffers.joins[level],
                    stride: up + second.outputs,
                    pooled: Some(&buffers.inputs[level + 1]),
                }
            };
            self.conv(second, &buffers.middles[level], store, shape, &mut pass)?;
        }
        for level in (0..LEVELS - 1).rev() {
            let [up, first, second] = self.decoder_at(level);
            let shape = (n, height >> level, width >> level);
            let join = &buffers.joins[level];
            let below = (n, shape.1 / 2, shape.2 / 2);
            let below_output = &buffers.outputs[level + 1];
            self.up2x2(up, below_output, join, below, first.inputs, &mut pass)?;
            let middle = Store::whole(&buffers.middles[level], first);
            self.conv(first, join, middle, shape, &mut pass)?;
            let output = Store::whole(&buffers.outputs[level], second);
            self.conv(second, &buffers.middles[level], output, shape, &mut pass)?;
        }

        let pixels = n * height * width;
        let values = match output {
            Output::Probability => pixels,
            Output::Sigmoid => pixels * self.head.outputs,
        };
        let result = self.client.empty(values * size_of::<f32>());
        let (inputs, outputs) = (self.head.inputs, self.head.outputs);
        let (client, cubes) = (&self.client, cube_count(values));
        // SAFETY: every buffer holds the length given with it (`allocate`, `values`), and the
        // kernel's `units` keep it inside them.
        unsafe {
            let input = BufferArg::from_raw_parts(
                buffers.outputs[0].clone(),
                n * (height + 2) * (width + 2) * inputs,
            );
            let weight = BufferArg::from_raw_parts(self.head.weight.clone(), inputs * outputs);
            let bias = BufferArg::from_raw_parts(self.head.bias.clone(), outputs);
            let result = BufferArg::from_raw_parts(result.clone(), values);
            head::launch_unchecked::<F>(
                client,
                cubes,
                CubeDim::new_1d(UNITS),
                input,
                weight,
                bias,
                result,
                values,
                height,
                width,
                inputs,
                outputs,
                output == Output::Sigmoid,
            )
        };
        Ok(result)
    }

    /// The 3x3 convolution `layer` on `input` (bordered, an image of `shape` = (batch,
    /// height, width)) into `store`: its main loop into the interior, then the border, then
    /// the pooling if the store has it.
    fn conv(
        &self,
        layer: &Layer,
        input: &Handle,
        store: Store,
        shape: (usize, usize, usize),
        pass: &mut Pass,
    ) -> Result<(), PredictError> {
        self.timed(layer, shape, 9, pass, || {
            let (n, h, w) = shape;
            let (channels, stride) = (layer.outputs, store.stride);
            let op = Op::Conv3x3 {
                output: store.output.clone(),
                stride,
            };
            let ran = self.launch_main_loop(layer, input, shape, op)?;
            let offset = stride - channels;
            self.replicate_border(store.output, shape, channels, stride, offset);
            if let Some(pooled) = store.pooled {
                let units = n * (h / 2) * (w / 2) * channels;
                // SAFETY: every buffer holds the length given with it (`allocate`), and the
                // kernel's `units` keep it inside them.
                unsafe {
                    max_pool_bordered::launch_unchecked::<F>(
                        &self.client,
                        cube_count(units),
                        CubeDim::new_1d(UNITS),
                        BufferArg::from_raw_parts(
                            store.output.clone(),
                            n * (h + 2) * (w + 2) * stride,
                        ),
                        BufferArg::from_raw_parts(
                            pooled.clone(),
                            n * (h / 2 + 2) * (w / 2 + 2) * channels,
                        ),
                        units,
                        h,
                        w,
                        channels,
                        stride,
                        offset,
                    )
                };
            }
            Ok(ran)
        })
    }

    /// The transposed convolution `layer` on `input` (an image of `shape`) into channels `0..`
    /// of `output`, twice the size, whose pixels hold `stride` channels.
    fn up2x2(
        &self,
        layer: &Layer,
        input: &Handle,
        output: &Handle,
        shape: (usize, usize, usize),
        stride: usize,
        pass: &mut Pass,
    ) -> Result<(), PredictError> {
        let op = Op::Up2x2 {
            output: output.clone(),
            stride,
        };
        self.timed(layer, shape, 4, pass, || {
            let ran = self.launch_main_loop(layer, input, shape, op)?;
            let (n, h, w) = shape;
            self.replicate_border(output, (n, 2 * h, 2 * w), layer.outputs, stride, 0);
            Ok(ran)
        })
    }

    /// Writes the border around channels `offset..offset + channels` of `output`, bordered
    /// images of `shape` = (batch, height, width) whose pixels hold `stride` channels.
    fn replicate_border(
        &self,
        output: &Handle,
        (n, h, w): (usize, usize, usize),
        channels: usize,
        stride: usize,
        offset: usize,
    ) {
        let units = n * (2 * (w + 2) + 2 * h) * channels;
        // SAFETY: the buffer holds the length given with it (`allocate`), and the kernel's
        // `units` keep it inside it.
        unsafe {
            replicate_border::launch_unchecked::<F>(
                &self.client,
                cube_count(units),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(output.clone(), n * (h + 2) * (w + 2) * stride),
                units,
                h,
                w,
                channels,
                stride,
                offset,
            )
        };
    }

    /// Launches `layer`'s main loop for `op`; returns what ran it.
    fn launch_main_loop(
        &self,
        layer: &Layer,
        input: &Handle,
        shape: (usize, usize, usize),
        op: Op,
    ) -> Result<Candidate, PredictError> {
        let conv = Conv {
            client: self.client.clone(),
            layer: layer.clone(),
            input: input.clone(),
            shape,
            op,
        };
        self.main_loop
            .run::<F>(conv)
            .map_err(|reason| super::device_error(self.device, shape.0, reason))
    }

    /// Runs `launch` (`layer`, on an input of `shape`, a kernel of `taps` taps), timed into
    /// the pass's times when profiling: the device waited for before and after.
    fn timed(
        &self,
        layer: &Layer,
        shape: (usize, usize, usize),
        taps: usize,
        pass: &mut Pass,
        launch: impl FnOnce() -> Result<Candidate, PredictError>,
    ) -> Result<(), PredictError> {
        let (n, h, w) = shape;
        let Some(times) = pass.times.as_deref_mut() else {
            return launch().map(|_| ());
        };
        self.wait(n)?;
        let started = Instant::now();
        let ran = launch()?;
        self.wait(n)?;
        times.push(LayerTime {
            layer: layer.name.clone(),
            shape: (n, h, w, layer.inputs, layer.outputs),
            taps,
            main_loop: ran.to_string(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Waits for the device to finish the kernels it was given (a batch of `n`): on the compute
    /// stream, as everything that calls it runs.
    fn wait(&self, n: usize) -> Result<(), PredictError> {
        cubecl::future::block_on(self.client.sync())
            .map_err(|source| super::device_error(self.device, n, source))
    }
}

impl<F: Float + CubeElement> Engine for FusedUnet<F> {
    /// CUDA device 0 with the `cuda` feature; other runtimes (wgpu in the tests) through
    /// [`FusedUnet::new`] with their client.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn load(weights: &FoldedWeights, target: Target) -> Result<Self, PredictError> {
        let unsupported = |what: String| PredictError::Unsupported {
            engine: "fused",
            what,
        };
        if target.precision != precision_of::<F>() {
            return Err(unsupported(format!(
                "run in {} with {} storage",
                target.precision,
                precision_of::<F>()
            )));
        }
        match target.device {
            #[cfg(feature = "cuda")]
            crate::Device::Cuda(index) => {
                use cubecl_runtime::runtime::Runtime;
                let client = cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice { index });
                Ok(FusedUnet::new(client, "cuda", weights)?)
            }
            device => Err(unsupported(format!(
                "run on {} in this build",
                device.name()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        "fused"
    }

    fn choice() -> EngineChoice {
        EngineChoice::Fused
    }

    fn device(&self) -> &'static str {
        self.device
    }

    fn precision(&self) -> Precision {
        precision_of::<F>()
    }

    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        self.forward(batch, output)
    }

    fn submit<'a>(
        &'a self,
        batch: &Batch,
        output: Output,
    ) -> Result<Box<dyn InFlight + 'a>, PredictError> {
        Ok(Box::new(self.submit(batch, output)?))
    }
}

/// A forward [`FusedUnet::submit`] queued: its output's copy to pinned host memory, which
/// waits on that forward alone (a fence), not on the forwards queued after it.
pub struct FusedInFlight<'a> {
    /// `None` once waited for.
    read: Option<ReadBack<'a>>,
}

type ReadBack<'a> = Pin<Box<dyn Future<Output = Result<Vec<f32>, PredictError>> + Send + 'a>>;

impl FusedInFlight<'_> {
    pub fn wait(mut self) -> Result<Vec<f32>, PredictError> {
        let read = self.read.take().expect("a forward is waited for once");
        cubecl::future::block_on(read)
    }
}

impl Drop for FusedInFlight<'_> {
    /// A forward dropped unread (a job ending on an error) is waited for all the same: the
    /// copy into pinned memory is queued already, and that memory must not go back to cubecl's
    /// pool, for the next read, while the device still writes it.
    fn drop(&mut self) {
        if let Some(read) = self.read.take() {
            let _ = cubecl::future::block_on(read);
        }
    }
}

impl InFlight for FusedInFlight<'_> {
    fn wait(self: Box<Self>) -> Result<Vec<f32>, PredictError> {
        FusedInFlight::wait(*self)
    }
}

/// F16 for half-precision storage, else F32.
fn precision_of<F: 'static>() -> Precision {
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<half::f16>() {
        Precision::F16
    } else {
        Precision::F32
    }
}

/// Cubes for `units` units, `UNITS` each, spread over two dimensions past 65 535.
fn cube_count(units: usize) -> CubeCount {
    let cubes = units.div_ceil(UNITS as usize) as u32;
    let x = cubes.min(65_535);
    CubeCount::Static(x, cubes.div_ceil(x), 1)
}
