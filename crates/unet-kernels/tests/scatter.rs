//! The transposed convolution computed as the fused engine runs it on tensor cores — one 1x1
//! convolution to four times the channels (here summed on the host, in the layout
//! `unet_core`'s GEMM form gives cubek), then `scatter2x2` — stores what the direct kernel
//! `up2x2` stores: the same values at the same places of a concatenation buffer, borders
//! included, the other channels untouched. (The direct kernel is checked against PyTorch
//! through the whole model in `pytorch_parity.rs`.) On Mesa's lavapipe, as there.

use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
use cubecl_runtime::runtime::Runtime;
use unet_kernels::{scatter2x2, up2x2};

#[test]
fn scatter_of_gemm_products_stores_what_the_direct_kernel_stores() {
    let client = <WgpuRuntime>::client(&WgpuDevice::new(WgpuDeviceKind::Cpu));
    // Odd sides, a batch of two, and a concatenation with two more channels after ours.
    let (n, h, w, inputs, outputs) = (2usize, 3usize, 5usize, 3usize, 4usize);
    let stride = outputs + 2;
    let noise = |i: usize, salt: usize| {
        let x = (i * 2_654_435_761 + salt * 40_503) % 1_000_003;
        x as f32 / 1_000_003.0 - 0.5
    };
    let bordered = n * (h + 2) * (w + 2);
    let input: Vec<f32> = (0..bordered * inputs).map(|i| noise(i, 1)).collect();
    // `[(dy * 2 + dx) * inputs + c][o]`, as the direct kernel reads it.
    let weight: Vec<f32> = (0..4 * inputs * outputs).map(|i| noise(i, 2)).collect();
    let bias: Vec<f32> = (0..outputs).map(|i| noise(i, 3)).collect();
    // The GEMM's products at every bordered pixel, `[(dy * 2 + dx) * outputs + o]`, bias
    // included.
    let mut products = vec![0.0f32; bordered * 4 * outputs];
    for pixel in 0..bordered {
        for tap in 0..4 {
            for o in 0..outputs {
                let mut sum = bias[o];
                for c in 0..inputs {
                    sum += input[pixel * inputs + c] * weight[(tap * inputs + c) * outputs + o];
                }
                products[(pixel * 4 + tap) * outputs + o] = sum;
            }
        }
    }
    let out_len = n * (2 * h + 2) * (2 * w + 2) * stride;
    let sentinel = vec![-7.0f32; out_len];
    let units = 4 * n * h * w * outputs;
    let cubes = CubeCount::Static((units as u32).div_ceil(64), 1, 1);

    let direct = client.create_from_slice(f32::as_bytes(&sentinel));
    let scattered = client.create_from_slice(f32::as_bytes(&sentinel));
    let upload = |values: &[f32]| client.create_from_slice(f32::as_bytes(values));
    // SAFETY: every buffer holds the length given with it.
    unsafe {
        up2x2::launch_unchecked::<f32>(
            &client,
            cubes.clone(),
            CubeDim::new_1d(64),
            BufferArg::from_raw_parts(upload(&input), input.len()),
            BufferArg::from_raw_parts(upload(&weight), weight.len()),
            BufferArg::from_raw_parts(upload(&bias), bias.len()),
            BufferArg::from_raw_parts(direct.clone(), out_len),
            units,
            h,
            w,
            inputs,
            outputs,
            stride,
        );
        scatter2x2::launch_unchecked::<f32>(
            &client,
            cubes,
            CubeDim::new_1d(64),
            BufferArg::from_raw_parts(upload(&products), products.len()),
            BufferArg::from_raw_parts(scattered.clone(), out_len),
            units,
            h,
            w,
            outputs,
            stride,
        );
    }
    let read = |handle| f32::from_bytes(&client.read_one(handle).unwrap()).to_vec();
    let (direct, scattered) = (read(direct), read(scattered));
    let mut written = 0;
    for (at, (d, s)) in direct.iter().zip(&scattered).enumerate() {
        assert!(
            (d - s).abs() <= 1e-5,
            "value {at}: direct {d}, scattered {s}"
        );
        let channel = at % stride;
        if channel >= outputs {
            assert_eq!(*s, -7.0, "value {at}: another layer's channel was written");
        } else if *s != -7.0 {
            written += 1;
        }
    }
    // Every pixel of the bordered output, border included, holds our channels.
    assert_eq!(written, n * (2 * h + 2) * (2 * w + 2) * outputs);
}
