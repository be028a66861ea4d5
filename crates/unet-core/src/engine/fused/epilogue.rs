//! The convolutions' epilogues inside cubek's store. Each value cubek's implicit GEMM writes
//! (its sum, bias included, cast to the storage type) goes straight into the interior of the
//! layer's bordered output:
//! - a 3x3 convolution's through ReLU, at its pixel shifted past the border, at the layer's
//!   channels of the pixel;
//! - a 2x2 stride-2 transposed convolution's (one 1x1 GEMM to four times the channels over
//!   the bordered input) scattered: input pixel `(y, x)`'s product for sub-pixel `(dy, dx)`
//!   and channel `o` to output pixel `(2y + dy, 2x + dx)`, channel `o`, of an output twice the
//!   size.
//!
//! So no buffer of sums or products makes a round trip through memory; what is left for a
//! pass after is the one-pixel border and, where a level ends, the 2x2 max pooling
//! (unet-kernels' `replicate_border` and `max_pool_bordered`).
//!
//! cubek 0.3.1 has no epilogue hook of its own; its kernels take their arguments through
//! cubek-matmul's `MatmulArgs`, as Burn's fusion feeds its fused matmuls. [`StoreArgs`] wraps
//! cubek's own arguments (the same inputs and loaders): its output view is cubek's over
//! [`BorderedLayout`], wrapped so that every write is ReLU'd where `RELU`. [`launch`] is
//! cubek-convolution's forward launcher (`launch_ref` down to `launch_kernel_concrete`) with
//! these arguments.

use std::marker::PhantomData;

use cubecl::ir::VectorSize;
use cubecl::prelude::*;
use cubecl::std::FastDivmod;
use cubecl::std::tensor::launch::ViewArg;
use cubecl::std::tensor::layout::chain::{Chain, ChainLaunch};
use cubecl::std::tensor::layout::{Layout, LayoutExpand, VirtualLayoutLaunch};
use cubecl::std::tensor::{
    View, ViewMut, ViewMutExpand, ViewOperationsExpand, ViewOperationsMutExpand,
};
use cubecl::zspace::Shape;
use cubek::convolution::components::global::args::RuntimeArgs;
use cubek::convolution::components::global::layout::{NhwcCoords, NhwcLayout, NhwcLayoutLaunch};
use cubek::convolution::components::{
    ConvSetupError, ConvolutionOperation, ConvolutionProblem, Dimensionality,
};
use cubek::convolution::forward::args::{ConcreteArgs, ConcreteOutputFactory};
use cubek::convolution::kernels::forward::selector::launch_kernel_concrete;
use cubek::convolution::routines::Routine;
use cubek::convolution::routines::simple::{
    SimpleAsyncCyclicConv, SimpleAsyncStridedConv, SimpleAsyncTmaConv, SimpleSyncCyclicConv,
    SimpleSyncStridedConv, SimpleSyncTilewiseConv,
};
use cubek::convolution::routines::specialized::{
    SpecializedAsyncCyclicConv, SpecializedAsyncStridedConv, SpecializedTmaConv,
};
use cubek::convolution::{AcceleratedTileKind, ConvAlgorithm, Strategy};
use cubek::matmul::definition::{AvailableVectorSizes, MatmulElems};
use cubek::matmul::multi_level::BatchMatmulRoutine;
use cubek::matmul::multi_level::args::{
    BatchedCoords, MatmulArgs, TensorArgs, TensorMapArgs, TensorOutput, TensorOutputLaunch,
};
use cubek::matmul::multi_level::components::global::memory::{
    GlobalLayoutConfig, NoopLayout, NoopLayoutLaunch,
};
use cubek::matmul::multi_level::components::tile::TileMatmulKind;
use cubek::matmul::multi_level::definition::{BatchMatmulBlueprint, Blueprint as _};
use cubek::matmul::multi_level::routines::TilingArgs;
use cubek::matmul::routine::BlueprintStrategy;
use cubek::std::{InputBinding, MatrixLayout};

/// Where cubek's output element `(m, n)` goes. GEMM row `m` is pixel `(y, x)` of an image
/// `height` x `width` (rows run over the images' pixels in order). For a 3x3 convolution
/// that is output pixel `(y + 1, x + 1)` of a bordered buffer, channel `channel_offset + n`.
/// With `scatter` (a transposed convolution's GEMM) it is a pixel of the bordered input and
/// column `n` is sub-pixel `n / outputs` = `dy * 2 + dx`, channel `o = n % outputs`: output
/// pixel `(2y + dy - 1, 2x + dx - 1)`, channel `channel_offset + o`, of a bordered buffer
/// `out_height` x `out_width`; the border's products are out of bounds, and where written
/// unchecked they land in the output's border (clamped to it), which the border pass
/// rewrites. The [`NhwcLayout`] under it turns a pixel and channel into an index.
#[derive(CubeType, CubeLaunch, Clone)]
pub struct BorderedLayout {
    width: FastDivmod<u32>,
    height: FastDivmod<u32>,
    outputs: FastDivmod<u32>,
    out_height: u32,
    out_width: u32,
    rows: u32,
    cols: u32,
    channel_offset: u32,
    #[cube(comptime)]
    scatter: bool,
    #[cube(comptime)]
    config: GlobalLayoutConfig,
}

#[cube]
impl Layout for BorderedLayout {
    type Coordinates = BatchedCoords;
    type SourceCoordinates = NhwcCoords;

    fn to_source_pos(&self, coords: Self::Coordinates) -> NhwcCoords {
        let (_, m, n) = coords;
        let (rest, x) = self.width.div_mod(m);
        let (image, y) = self.height.div_mod(rest);
        let mut spatial = Sequence::new();
        let mut channel = n;
        if self.scatter.comptime() {
            let (tap, o) = self.outputs.div_mod(n);
            let (dy, dx) = (tap / 2, tap % 2);
            let out_y = clamp(2 * y + dy, 1, self.out_height) - 1;
            let out_x = clamp(2 * x + dx, 1, self.out_width) - 1;
            spatial.push(out_y as i32);
            spatial.push(out_x as i32);
            channel = o;
        } else {
            spatial.push((y + 1) as i32);
            spatial.push((x + 1) as i32);
        }
        NhwcCoords {
            batch: image,
            spatial,
            channel: channel + self.channel_offset,
        }
    }

    fn to_source_pos_checked(&self, coords: Self::Coordinates) -> (NhwcCoords, bool) {
        (self.to_source_pos(coords), self.is_in_bounds(coords))
    }

    fn shape(&self) -> Self::Coordinates {
        (1, self.rows, self.cols)
    }

    fn is_in_bounds(&self, pos: Self::Coordinates) -> bool {
        let (_, row, col) = pos;
        let mut inside = true.runtime();
        if self.scatter.comptime() {
            // The bordered input's own border has no output pixels.
            let (rest, x) = self.width.div_mod(row);
            let y = self.height.div_mod(rest).1;
            let (high, wide) = (self.out_height / 2, self.out_width / 2);
            inside = y >= 1 && y < high && x >= 1 && x < wide;
        }
        inside
            && (!self.config.check_row_bounds || row < self.rows)
            && (!self.config.check_col_bounds || col < self.cols)
    }
}

/// cubek's output argument over a [`BorderedLayout`] (cubek-convolution's own output
/// factory would lay it out as a plain NHWC tensor).
#[derive(CubeType, CubeLaunch, Clone)]
#[expand(derive(Clone))]
pub struct BorderedOutput<EO: CubePrimitive> {
    out: TensorOutput<EO>,
}

impl<EO: CubePrimitive, A: BatchMatmulRoutine<RuntimeArgs>> ConcreteOutputFactory<A>
    for BorderedOutput<EO>
{
    /// `out` is the whole bordered output, `[batch, out_height, out_width, stride]`. A 3x3
    /// convolution's channels are the last `problem.n` of each pixel (a level's skip comes
    /// after the upsampled channels in the decoder's concatenation; any other output is all
    /// its own). A 1x1 GEMM here is a transposed convolution's: its channels, `problem.n / 4`,
    /// are the first of each pixel.
    fn create(
        out: TensorBinding,
        blueprint: &A::Blueprint,
        problem: &ConvolutionProblem,
        _dtypes: &MatmulElems,
    ) -> Self::RuntimeArg {
        let [height, width] = [problem.out_shape[0], problem.out_shape[1]].map(|s| s as u32);
        let scatter = problem.kernel_size[0] == 1;
        let (outputs, channel_offset) = if scatter {
            (problem.n / 4, 0)
        } else {
            (problem.n, out.shape[3] - problem.n)
        };
        let layout = BorderedLayoutLaunch::new(
            width,
            height,
            outputs as u32,
            out.shape[1] as u32,
            out.shape[2] as u32,
            problem.m as u32,
            problem.n as u32,
            channel_offset as u32,
            scatter,
            blueprint.out_global_layout_config(),
        );
        let layout = ChainLaunch::new(NhwcLayoutLaunch::unchecked(), layout);
        let view =
            ViewArg::new_tensor::<Chain<NhwcLayout, BorderedLayout>>(out.into_tensor_arg(), layout);
        let batch = VirtualLayoutLaunch::new::<NoopLayout>(NoopLayoutLaunch::new());
        BorderedOutputLaunch::new(TensorOutputLaunch::new(view, batch))
    }
}

/// cubek's arguments `Inner`, its output through [`BorderedOutput`], and ReLU if `RELU`.
#[derive(Clone)]
pub struct StoreArgs<Inner, const RELU: bool> {
    _inner: PhantomData<Inner>,
}

/// `MatmulArgs` for [`StoreArgs`] over one of cubek's argument types: everything as `$inner`
/// has it, but the output.
macro_rules! store_args {
    ($inner:ty, $inputs:ident) => {
        #[cube]
        impl<const RELU: bool> MatmulArgs for StoreArgs<$inner, RELU> {
            type Input<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive> =
                cubek::matmul::multi_level::args::$inputs<Lhs, Rhs, EO>;
            type Output<EO: CubePrimitive> = BorderedOutput<EO>;
            type Config = RuntimeArgs;
            type State<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive> =
                <$inner as MatmulArgs>::State<Lhs, Rhs, EO>;

            fn init_state<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                input: &Self::Input<Lhs, Rhs, EO>,
                output: &mut Self::Output<EO>,
                config: Self::Config,
                #[comptime] lhs_layout_config: GlobalLayoutConfig,
                #[comptime] rhs_layout_config: GlobalLayoutConfig,
                #[comptime] out_layout_config: GlobalLayoutConfig,
            ) -> Self::State<Lhs, Rhs, EO> {
                <$inner as MatmulArgs>::init_state::<Lhs, Rhs, EO>(
                    input,
                    &mut output.out,
                    config,
                    lhs_layout_config,
                    rhs_layout_config,
                    out_layout_config,
                )
            }

            fn view_lhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
            ) -> View<'_, Lhs, BatchedCoords> {
                <$inner as MatmulArgs>::view_lhs::<Lhs, Rhs, EO>(state)
            }

            fn batch_lhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
                batch: usize,
            ) -> usize {
                <$inner as MatmulArgs>::batch_lhs::<Lhs, Rhs, EO>(state, batch)
            }

            fn view_rhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
            ) -> View<'_, Rhs, BatchedCoords> {
                <$inner as MatmulArgs>::view_rhs::<Lhs, Rhs, EO>(state)
            }

            fn batch_rhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
                batch: usize,
            ) -> usize {
                <$inner as MatmulArgs>::batch_rhs::<Lhs, Rhs, EO>(state, batch)
            }

            fn view_acc<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
            ) -> ComptimeOption<View<'_, EO, BatchedCoords>> {
                <$inner as MatmulArgs>::view_acc::<Lhs, Rhs, EO>(state)
            }

            fn batch_acc<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
                batch: usize,
            ) -> usize {
                <$inner as MatmulArgs>::batch_acc::<Lhs, Rhs, EO>(state, batch)
            }

            fn view_out<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
            ) -> ViewMut<'_, EO, BatchedCoords> {
                activated::<RELU, EO>(<$inner as MatmulArgs>::view_out::<Lhs, Rhs, EO>(state))
            }

            fn batch_out<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
                batch: usize,
            ) -> usize {
                <$inner as MatmulArgs>::batch_out::<Lhs, Rhs, EO>(state, batch)
            }

            fn runtime_config<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
                state: &Self::State<Lhs, Rhs, EO>,
            ) -> Self::Config {
                <$inner as MatmulArgs>::runtime_config::<Lhs, Rhs, EO>(state)
            }
        }
    };
}

store_args!(TensorArgs<RuntimeArgs>, TensorInputs);
store_args!(TensorMapArgs<RuntimeArgs>, TensorMapInputs);

impl<A: BatchMatmulRoutine<RuntimeArgs>, const RELU: bool> ConcreteArgs<A>
    for StoreArgs<TensorArgs<RuntimeArgs>, RELU>
{
    fn adjust_problem(
        client: &Client,
        problem: ConvolutionProblem,
        blueprint: &A::Blueprint,
        dtypes: &MatmulElems,
    ) -> ConvolutionProblem {
        <TensorArgs<RuntimeArgs> as ConcreteArgs<A>>::adjust_problem(
            client, problem, blueprint, dtypes,
        )
    }
}

impl<A: BatchMatmulRoutine<RuntimeArgs, Blueprint = BatchMatmulBlueprint>, const RELU: bool>
    ConcreteArgs<A> for StoreArgs<TensorMapArgs<RuntimeArgs>, RELU>
{
    fn adjust_problem(
        client: &Client,
        problem: ConvolutionProblem,
        blueprint: &BatchMatmulBlueprint,
        dtypes: &MatmulElems,
    ) -> ConvolutionProblem {
        <TensorMapArgs<RuntimeArgs> as ConcreteArgs<A>>::adjust_problem(
            client, problem, blueprint, dtypes,
        )
    }
}

/// `inner`, with every value written through ReLU if `RELU`.
#[cube]
#[allow(unused_variables)]
fn activated<'a, const RELU: bool, E: CubePrimitive>(
    inner: ViewMut<'a, E, BatchedCoords>,
) -> ViewMut<'a, E, BatchedCoords> {
    intrinsic!(|scope| match RELU {
        true => ViewMutExpand::new(scope, ReluViewExpand { inner }),
        false => inner,
    })
}

/// `max(value, 0)`, in f32 (exact for f16 and f32 storage, ReLU's 0 included).
#[cube]
fn relu<E: CubePrimitive>(value: E) -> E {
    let value = Vector::<f32, E::Size>::cast_from(value);
    E::cast_from(max(value, Vector::new(0.0)))
}

/// The expand side of [`activated`]'s ReLU view: reads and everything else as `inner`'s.
#[derive(Clone)]
struct ReluViewExpand<'a, E: CubePrimitive> {
    inner: ViewMutExpand<'a, E, BatchedCoords>,
}

type Pos = <BatchedCoords as CubeType>::ExpandType;

impl<E: CubePrimitive> VectorizedExpand for ReluViewExpand<'_, E> {
    fn __expand_vector_size_method(&self, scope: &Scope) -> VectorSize {
        self.inner.__expand_vector_size_method(scope)
    }
}

impl<E: CubePrimitive> ViewOperationsExpand<E, BatchedCoords> for ReluViewExpand<'_, E> {
    fn __expand_read_method(&self, scope: &Scope, pos: Pos) -> NativeExpand<E> {
        self.inner.__expand_read_method(scope, pos)
    }

    fn __expand_read_checked_method(&self, scope: &Scope, pos: Pos) -> NativeExpand<E> {
        self.inner.__expand_read_checked_method(scope, pos)
    }

    fn __expand_read_masked_method(
        &self,
        scope: &Scope,
        pos: Pos,
        value: NativeExpand<E>,
    ) -> NativeExpand<E> {
        self.inner.__expand_read_masked_method(scope, pos, value)
    }

    fn __expand_read_unchecked_method(&self, scope: &Scope, pos: Pos) -> NativeExpand<E> {
        self.inner.__expand_read_unchecked_method(scope, pos)
    }

    fn __expand_as_linear_slice_method(
        &self,
        scope: &Scope,
        pos: Pos,
        end: Pos,
    ) -> &SliceExpand<E> {
        ViewOperationsExpand::__expand_as_linear_slice_method(&self.inner, scope, pos, end)
    }

    fn __expand_tensor_map_load_method(
        &self,
        scope: &Scope,
        barrier: &NativeExpand<barrier::Barrier>,
        shared_memory: &mut SliceExpand<E>,
        pos: Pos,
    ) {
        self.inner
            .__expand_tensor_map_load_method(scope, barrier, shared_memory, pos)
    }

    fn __expand_shape_method(&self, scope: &Scope) -> Pos {
        self.inner.__expand_shape_method(scope)
    }

    fn __expand_is_in_bounds_method(&self, scope: &Scope, pos: Pos) -> NativeExpand<bool> {
        self.inner.__expand_is_in_bounds_method(scope, pos)
    }
}

impl<E: CubePrimitive> ViewOperationsMutExpand<E, BatchedCoords> for ReluViewExpand<'_, E> {
    fn __expand_write_method(&self, scope: &Scope, pos: Pos, value: NativeExpand<E>) {
        let value = relu::expand::<E>(scope, value);
        self.inner.__expand_write_method(scope, pos, value)
    }

    fn __expand_write_checked_method(&self, scope: &Scope, pos: Pos, value: NativeExpand<E>) {
        let value = relu::expand::<E>(scope, value);
        self.inner.__expand_write_checked_method(scope, pos, value)
    }

    /// Writes through a slice would skip ReLU: cubek's writers never take one.
    fn __expand_as_linear_slice_mut_method(
        &self,
        _scope: &Scope,
        _pos: Pos,
        _end: Pos,
    ) -> &mut SliceExpand<E> {
        unimplemented!("the ReLU'd output is written value by value")
    }

    /// A tensor-map store would skip ReLU: cubek's writers never issue one.
    fn __expand_tensor_map_store_method(
        &self,
        _scope: &Scope,
        _shared_memory: &SliceExpand<E>,
        _pos: Pos,
    ) {
        unimplemented!("the ReLU'd output is written value by value")
    }
}

/// A convolution of `input` (bordered, `[batch, height + 2, width + 2, inputs]`, read with
/// no padding: the border is the padding) by `weight` plus `bias`, into `out`'s interior
/// (bordered, pixels of `stride` channels), by cubek's `algorithm` on `tile_kind` tiles, or
/// the blueprint a `Strategy::Forced` gives. A 3x3 `weight`, `[outputs, 3, 3, inputs]`, is a
/// 3x3 convolution, stored through ReLU into the last `outputs` channels of an output of the
/// input's size; a 1x1 one, `[4 * outputs, 1, 1, inputs]`, a 2x2 stride-2 transposed
/// convolution's GEMM, scattered into the first `outputs` channels of an output twice the
/// size (no ReLU: the decoder concatenates it as it is).
pub fn launch(
    strategy: &Strategy,
    client: &Client,
    [input, weight, bias]: [InputBinding; 3],
    out: TensorBinding,
    dtypes: MatmulElems,
) -> Result<(), ConvSetupError> {
    let (algorithm, forced) = match strategy {
        Strategy::Inferred {
            algorithm,
            tile_kind,
        } => (*algorithm, Err(*tile_kind)),
        Strategy::Forced {
            algorithm,
            blueprint,
        } => (*algorithm, Ok(blueprint.matmul().clone())),
    };
    let operands = Operands {
        client,
        input,
        weight,
        bias,
        out,
        dtypes,
    };
    match algorithm {
        ConvAlgorithm::SimpleSyncCyclic => operands.launch::<SimpleSyncCyclicConv>(forced),
        ConvAlgorithm::SimpleSyncStrided => operands.launch::<SimpleSyncStridedConv>(forced),
        ConvAlgorithm::SimpleSyncTilewise => operands.launch::<SimpleSyncTilewiseConv>(forced),
        ConvAlgorithm::SimpleAsyncCyclic => operands.launch::<SimpleAsyncCyclicConv>(forced),
        ConvAlgorithm::SimpleAsyncStrided => operands.launch::<SimpleAsyncStridedConv>(forced),
        ConvAlgorithm::SimpleAsyncTma => operands.launch::<SimpleAsyncTmaConv>(forced),
        ConvAlgorithm::SpecializedAsyncCyclic => {
            operands.launch::<SpecializedAsyncCyclicConv>(forced)
        }
        ConvAlgorithm::SpecializedAsyncStrided => {
            operands.launch::<SpecializedAsyncStridedConv>(forced)
        }
        ConvAlgorithm::SpecializedTma => operands.launch::<SpecializedTmaConv>(forced),
    }
}

/// What [`launch`] hands every routine.
struct Operands<'a> {
    client: &'a Client,
    input: InputBinding,
    weight: InputBinding,
    bias: InputBinding,
    out: TensorBinding,
    dtypes: MatmulElems,
}

impl Operands<'_> {
    /// cubek-convolution 0.3.1's forward launch (`launch_with_routine`, `launch_kernel`) for
    /// routine `Rt`, a stride-1, unpadded, undilated 2-d convolution: its GEMM's rows are the
    /// output pixels of a 3x3 convolution (the input's less the border), or every bordered
    /// input pixel of a transposed convolution's 1x1 GEMM. `forced` is a blueprint, or the
    /// tile kind for cubek to infer one with.
    fn launch<Rt: Routine<Blueprint = BatchMatmulBlueprint>>(
        self,
        forced: Result<BatchMatmulBlueprint, AcceleratedTileKind>,
    ) -> Result<(), ConvSetupError>
    where
        StoreArgs<Rt::Args, true>: ConcreteArgs<Rt::MatmulRoutine>,
        StoreArgs<Rt::Args, false>: ConcreteArgs<Rt::MatmulRoutine>,
        Rt::Strategy: TilingArgs,
    {
        let Operands {
            client,
            mut input,
            mut weight,
            bias,
            out,
            dtypes,
        } = self;
        let strategy = match forced {
            Ok(blueprint) => BlueprintStrategy::Forced(blueprint),
            Err(tile_kind) => {
                let mut strategy = Rt::Strategy::default();
                strategy.set_tile_matmul(tile_matmul(tile_kind));
                BlueprintStrategy::Inferred(strategy)
            }
        };
        let operation = ConvolutionOperation::Forward;
        let input_data = Rt::correct_layout(
            client,
            input.clone().into_data(),
            dtypes.lhs_global,
            operation,
        )?;
        let weight_data = Rt::correct_layout(
            client,
            weight.clone().into_data(),
            dtypes.rhs_global,
            operation,
        )?;
        *input.data_mut() = input_data;
        *weight.data_mut() = weight_data;

        let in_shape = &input.data().shape;
        let (batch, channels) = (in_shape[0], in_shape[3]);
        let (out_channels, kernel) = (weight.data().shape[0], weight.data().shape[1]);
        let conv3x3 = kernel == 3;
        let (out_shape, per_pixel) = if conv3x3 {
            ([in_shape[1] - 2, in_shape[2] - 2], out_channels)
        } else {
            ([in_shape[1], in_shape[2]], out_channels / 4)
        };
        let address_type = input
            .required_address_type()
            .max(weight.required_address_type())
            .max(bias.required_address_type())
            .max(out.required_address_type(dtypes.acc_global.size()));
        let problem = ConvolutionProblem {
            m: batch * out_shape[0] * out_shape[1],
            n: out_channels,
            k: channels * kernel * kernel,
            lhs_strides: input.data().strides.clone(),
            rhs_strides: weight.data().strides.clone(),
            lhs_layout: MatrixLayout::RowMajor,
            rhs_layout: MatrixLayout::ColMajor,
            kernel_size: vec![kernel as u32; 2],
            stride: vec![1, 1],
            padding: vec![0, 0],
            dilation: vec![1, 1],
            batches: batch,
            in_shape: Shape::new([in_shape[1], in_shape[2]]),
            out_shape: Shape::new(out_shape),
            channels,
            out_channels,
            padded_channels: channels,
            operation,
            dimensionality: Dimensionality::Dim2,
            global_dtypes: dtypes.as_global_elems(),
            address_type,
        };

        // The output's vectors run along one output pixel's channels: `out`'s strides and the
        // channels a GEMM row gives each pixel bound them.
        let vector_sizes = AvailableVectorSizes::from_type_sizes(
            client,
            input.data_elem_size(),
            weight.data_elem_size(),
            dtypes.acc_global.size(),
        )
        .filter_lhs_with_tensor(
            &input.data().strides,
            &input.data().shape,
            MatrixLayout::RowMajor,
        )
        .filter_rhs_with_tensor(
            &weight.data().strides,
            &weight.data().shape,
            MatrixLayout::RowMajor,
        )
        .filter_out_with_tensor(&out.strides, &out.shape)
        .filter_out(|vector| per_pixel.is_multiple_of(*vector));
        let vector_sizes = Rt::filter_vector_sizes(vector_sizes).pick_max()?;

        let (bias, strategy) = (Some(bias), &strategy);
        // The ReLU is in the kernel's type: one instantiation with it, one without.
        if conv3x3 {
            launch_kernel_concrete::<StoreArgs<Rt::Args, true>, Rt::MatmulRoutine>(
                client,
                input,
                weight,
                bias,
                out,
                problem,
                vector_sizes,
                strategy,
                &dtypes,
            )
        } else {
            launch_kernel_concrete::<StoreArgs<Rt::Args, false>, Rt::MatmulRoutine>(
                client,
                input,
                weight,
                bias,
                out,
                problem,
                vector_sizes,
                strategy,
                &dtypes,
            )
        }
    }
}

/// cubek-matmul's name for a tile kind cubek-convolution's strategies name.
pub fn tile_matmul(kind: AcceleratedTileKind) -> TileMatmulKind {
    match kind {
        AcceleratedTileKind::Cmma => TileMatmulKind::Cmma,
        AcceleratedTileKind::Mma => TileMatmulKind::Mma,
    }
}
