//! The fused engine's forward computes what PyTorch computes, on every case of the PyTorch fixtures
//! (`tests/fixtures/pytorch`), in a batch, run on wgpu through `Predictor` (the engine seam):
//! on a machine without a GPU that is Mesa's lavapipe (software Vulkan; `.ci/run` installs
//! Debian's mesa-vulkan-drivers).

use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
use cubecl_runtime::runtime::Runtime;
use test_fixtures::{Case, cases, max_abs_difference};
use unet_core::{
    Checkpoint, CpuUnet, Device, Engine, Fastest, FusedUnet, Precision, Predictor, RgbPatch, Target,
};

/// The software Vulkan device: the same on every machine, GPU or not.
fn client() -> cubecl::prelude::Client {
    <WgpuRuntime>::client(&WgpuDevice::new(WgpuDeviceKind::Cpu))
}

#[test]
fn f32_forward_matches_pytorch_within_1e_4() {
    check::<f32>(|_| 1e-4);
}

/// Weights and activations stored in f16, sums in f32.
#[test]
fn f16_forward_matches_pytorch_within_5e_3() {
    check::<half::f16>(Case::f16_tolerance);
}

fn check<F: cubecl::prelude::Float + cubecl::prelude::CubeElement>(
    tolerance: impl Fn(&Case) -> f32,
) {
    let client = client();
    for case in cases() {
        let checkpoint = Checkpoint::read(&case.checkpoint_path()).unwrap();
        let engine = FusedUnet::<F>::new(client.clone(), "wgpu", &checkpoint.weights).unwrap();
        let predictor = Predictor::from_engine(Box::new(engine), checkpoint.weights.config);
        assert_eq!(
            (predictor.engine_name(), predictor.device_name()),
            ("fused", "wgpu")
        );
        // A batch of three: the image, its mirror image, the image again; the first and
        // last must both be PyTorch's map (no image reads another's pixels).
        let image = case.input_image();
        let mirrored = image::imageops::flip_horizontal(&image);
        let patches =
            [&image, &mirrored, &image].map(|i| RgbPatch::new(case.width, case.height, i.as_raw()));
        let maps = predictor.predict_batch(&patches).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0], maps[2], "{}: same image, same map", case.name);
        // The engine keeps its buffers while the batch shape stays and makes new ones when it
        // changes: nothing of one batch may show in the next.
        let again = predictor.predict_batch(&patches[1..]).unwrap();
        assert_eq!(
            again[..],
            maps[1..],
            "{}: a batch of two after three",
            case.name
        );
        let alone = predictor.predict_batch(&patches[..1]).unwrap();
        assert_eq!(alone[0], maps[0], "{}: a batch of one", case.name);
        // Batches in flight at once, submitted before any is waited for, on the buffers they
        // share (the third of another shape, whose new buffers replace them): each is what it
        // was alone.
        let in_flight = [&patches[..], &patches[..], &patches[1..]]
            .map(|batch| predictor.submit_maps(batch).unwrap());
        let expected = [&maps[..], &maps[..], &maps[1..]];
        for (pending, expected) in in_flight.into_iter().zip(expected) {
            assert_eq!(
                pending.wait().unwrap().into_maps(),
                expected,
                "{}: batches in flight",
                case.name
            );
        }
        // One dropped unread (a job that ends on an error) leaves the next batch as it was.
        drop(predictor.submit_maps(&patches).unwrap());
        let after = predictor.predict_batch(&patches[..1]).unwrap();
        assert_eq!(after[0], maps[0], "{}: after a dropped batch", case.name);
        // Profiled: every 3x3 and transposed convolution timed, in the order they run, with
        // what ran it.
        let profile = engine_profile::<F>(&checkpoint, &client, &patches);
        assert_eq!(
            profile.len(),
            22,
            "{}: 2 per level, encoder and decoder, and the decoder's 4 transposed",
            case.name
        );
        assert_eq!(profile[0].layer, "conv1.first");
        assert_eq!((profile[10].layer.as_str(), profile[10].taps), ("up6", 4));
        assert!(profile.iter().all(|l| l.seconds > 0.0 && l.tflops() > 0.0));
        // f16 is tuned per layer shape among cubek's tensor-core algorithms and the portable
        // loop; a device without tensor cores (lavapipe) can run only the portable one, which
        // the tuner must find rather than fail. f32 always runs the portable loop.
        let tensor_cores = client.properties().features.matmul.cmma.iter().next();
        for layer in &profile {
            if tensor_cores.is_none() {
                assert_eq!(
                    layer.main_loop, "portable",
                    "{}: {}",
                    case.name, layer.layer
                );
            }
        }
        // Every channel's sigmoid (the `predict` example's raw output).
        let raw = predictor.predict_raw(&patches[..1]).unwrap();
        let (_, expected_raw) = case.expected_sigmoid();
        let raw_difference = max_abs_difference(&raw, &expected_raw);
        assert!(
            raw_difference <= tolerance(&case),
            "{}: raw output {raw_difference}",
            case.name
        );
        let difference = max_abs_difference(&maps[0].values, &case.expected_probability());
        let tolerance = tolerance(&case);
        let precision = std::any::type_name::<F>();
        println!(
            "{} {precision}: max abs difference {difference:.2e}",
            case.name
        );
        assert!(
            difference <= tolerance,
            "{} {precision}: {difference} > {tolerance}",
            case.name
        );
    }
}

/// `--engine auto`'s measured choice, here between the CPU engine and the fused one on
/// lavapipe: whichever the first batch finds faster, every batch's map is PyTorch's.
#[test]
fn the_fastest_engine_of_the_first_batch_computes_what_pytorch_computes() {
    let client = client();
    for case in cases() {
        let weights = Checkpoint::read(&case.checkpoint_path()).unwrap().weights;
        let cpu = Target {
            device: Device::Cpu,
            precision: Precision::F32,
        };
        let candidates: Vec<Box<dyn Engine>> = vec![
            Box::new(CpuUnet::load(&weights, cpu).unwrap()),
            Box::new(FusedUnet::<f32>::new(client.clone(), "wgpu", &weights).unwrap()),
        ];
        let predictor = Predictor::from_engine(Box::new(Fastest::new(candidates)), weights.config);
        assert_eq!(predictor.engine_name(), "auto");
        let image = case.input_image();
        let patch = RgbPatch::new(case.width, case.height, image.as_raw());
        let expected = case.expected_probability();
        let first = predictor.predict_batch(&[patch]).unwrap();
        let chosen = predictor.engine_name();
        assert!(
            ["cpu", "fused"].contains(&chosen),
            "{}: {chosen}",
            case.name
        );
        let second = predictor.predict_batch(&[patch, patch]).unwrap();
        assert_eq!(
            predictor.engine_name(),
            chosen,
            "{}: chosen once",
            case.name
        );
        for map in first.iter().chain(&second) {
            let difference = max_abs_difference(&map.values, &expected);
            assert!(
                difference <= 1e-4,
                "{} on {chosen}: {difference}",
                case.name
            );
        }
    }
}

/// Each 3x3 convolution's time in one forward of `patches` on a fresh engine.
fn engine_profile<F: cubecl::prelude::Float + cubecl::prelude::CubeElement>(
    checkpoint: &Checkpoint,
    client: &cubecl::prelude::Client,
    patches: &[RgbPatch],
) -> Vec<unet_core::engine::LayerTime> {
    let engine = FusedUnet::<F>::new(client.clone(), "wgpu", &checkpoint.weights).unwrap();
    let tuned = size_of::<F>() == 2;
    assert_eq!(
        engine.main_loop(),
        if tuned {
            "tuned per layer shape"
        } else {
            "portable"
        }
    );
    let (width, height) = (patches[0].width, patches[0].height);
    let batch = unet_core::engine::Batch {
        patches,
        width,
        height,
    };
    engine.profile(&batch).unwrap()
}
