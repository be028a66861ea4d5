//! The kernels' forward computes what PyTorch computes, on every case of the PyTorch fixtures
//! (`tests/fixtures/pytorch`), in a batch, run on wgpu: on a machine without a GPU that is Mesa's
//! lavapipe (software Vulkan; `.ci/run` installs Debian's mesa-vulkan-drivers).

use std::path::{Path, PathBuf};

use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
use cubecl_runtime::runtime::Runtime;
use unet_core::Checkpoint;
use unet_core::patch::{RgbPatch, normalise_into};
use unet_kernels::GpuUnet;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pytorch")
}

/// The software Vulkan device: the same on every machine, GPU or not.
fn client() -> cubecl::prelude::Client {
    <WgpuRuntime>::client(&WgpuDevice::new(WgpuDeviceKind::Cpu))
}

#[test]
fn f32_forward_matches_pytorch_within_1e_4() {
    check::<f32>(|_| 1e-4);
}

/// Weights and activations stored in f16, sums in f32. The w4 case is ill-conditioned for f16
/// whatever the engine (README, "Precision"): it gets unet-core's f16 tolerance, 2e-2.
#[test]
fn f16_forward_matches_pytorch_within_5e_3() {
    check::<half::f16>(|name| {
        if name == "unet_w4_out1_dataparallel" {
            2e-2
        } else {
            5e-3
        }
    });
}

fn check<F: cubecl::prelude::Float + cubecl::prelude::CubeElement>(
    tolerance: impl Fn(&str) -> f32,
) {
    let client = client();
    for name in [
        "unet_w8_state_dict",
        "unet_w8_checkpoint",
        "unet_w4_out1_dataparallel",
    ] {
        let checkpoint = Checkpoint::read(&fixtures().join(format!("{name}.pth"))).unwrap();
        let image = image::open(fixtures().join(format!("{name}_input.png")))
            .unwrap()
            .to_rgb8();
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut input = Vec::new();
        normalise_into(&RgbPatch::new(width, height, image.as_raw()), &mut input);
        let bytes = std::fs::read(fixtures().join(format!("{name}_expected_f64.npy"))).unwrap();
        let sigmoid: Vec<f32> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
        // PyTorch's map: the max over output channels.
        let plane = width * height;
        let expected: Vec<f32> = (0..plane)
            .map(|p| {
                sigmoid[p..]
                    .iter()
                    .step_by(plane)
                    .fold(f32::MIN, |a, &b| a.max(b))
            })
            .collect();
        let model = GpuUnet::<F>::new(client.clone(), &checkpoint.weights);
        // A batch of three: the image, its mirror image, the image again; the first and
        // last must both be PyTorch's map (no image reads another's pixels).
        let mirrored: Vec<f32> = input
            .chunks_exact(width)
            .flat_map(|row| row.iter().rev().copied())
            .collect();
        let batch = [&input[..], &mirrored, &input].concat();
        let maps = model.forward(&batch, height, width);
        assert_eq!(maps.len(), 3 * plane);
        assert_eq!(
            maps[..plane],
            maps[2 * plane..],
            "{name}: same image, same map"
        );
        let map = &maps[..plane];
        let difference = map
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let tolerance = tolerance(name);
        let precision = std::any::type_name::<F>();
        println!("{name} {precision}: max abs difference {difference:.2e}");
        assert!(
            difference <= tolerance,
            "{name} {precision}: {difference} > {tolerance}"
        );
    }
}
