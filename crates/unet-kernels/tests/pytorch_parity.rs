//! The kernels' forward computes what PyTorch computes, on every case of the PyTorch fixtures
//! (`tests/fixtures/pytorch`), in a batch, run on wgpu through `Predictor` (the engine seam):
//! on a machine without a GPU that is Mesa's lavapipe (software Vulkan; `.ci/run` installs
//! Debian's mesa-vulkan-drivers).

use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
use cubecl_runtime::runtime::Runtime;
use test_fixtures::{Case, cases, max_abs_difference};
use unet_core::{Checkpoint, Predictor, RgbPatch};
use unet_kernels::GpuUnet;

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
        let engine = GpuUnet::<F>::new(client.clone(), "wgpu", &checkpoint.weights).unwrap();
        let predictor = Predictor::from_engine(Box::new(engine), checkpoint.weights.config);
        assert_eq!(
            (predictor.engine_name(), predictor.device_name()),
            ("cubecl", "wgpu")
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
