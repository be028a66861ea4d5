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

/// The tensor-core main loops, cubek's implicit GEMM on cooperative matrices, each that runs
/// on lavapipe (the synchronous loaders) and tuned among them: every fixture's map within
/// f16's tolerance of PyTorch's, every layer cubek takes run by it, the same image the same map
/// in a batch and in the next. Lavapipe has cooperative matrices from Mesa 26; where the
/// system's is older, the test runs itself again on the one `tools/install-test-deps.sh` puts
/// beside it ([`mesa_with_cooperative_matrices`]).
#[test]
fn f16_on_cooperative_matrices_matches_pytorch() {
    if client().properties().features.matmul.cmma.is_empty() {
        return on_mesa_with_cooperative_matrices("f16_on_cooperative_matrices_matches_pytorch");
    }
    for main_loop in [
        "simple_sync_cyclic_cmma",
        "simple_sync_strided_cmma",
        "simple_sync_tilewise_cmma",
        // The engine's own tilings (a cube's outputs and step, a plane's outputs), on
        // lavapipe's 8x8x8 tiles: planes of 2 x 2 and 4 x 2 tiles, two planes along N where a
        // layer has 32 outputs or more, one where fewer. (The tuner's tilings on a GPU, of
        // 64-wide planes, take minutes here.)
        "simple_sync_cyclic_cmma_32x32x16_w16x16",
        "simple_sync_cyclic_cmma_64x32x16_w32x16",
        "tuned",
    ] {
        for case in cases() {
            let checkpoint = Checkpoint::read(&case.checkpoint_path()).unwrap();
            let engine = || {
                FusedUnet::<half::f16>::with_main_loop(
                    client(),
                    "wgpu",
                    &checkpoint.weights,
                    main_loop,
                )
                .unwrap()
            };
            let image = case.input_image();
            let mirrored = image::imageops::flip_horizontal(&image);
            let patches = [&image, &mirrored, &image]
                .map(|i| RgbPatch::new(case.width, case.height, i.as_raw()));
            // On `tuned`, the first case's first batch tunes each layer shape (or reads what
            // a run before kept on disk) and checks each winner against the portable loop:
            // its map must still be the winners', as the next batch's is.
            let predictor = Predictor::from_engine(Box::new(engine()), checkpoint.weights.config);
            let maps = predictor.predict_batch(&patches).unwrap();
            assert_eq!(maps[0], maps[2], "{} on {main_loop}", case.name);
            let again = predictor.predict_batch(&patches).unwrap();
            assert_eq!(again, maps, "{} on {main_loop}: the next batch", case.name);
            // cubek takes every layer of a multiple of 8 channels in; the portable loop the
            // rest (the input's 3, w4's 4).
            let batch = unet_core::engine::Batch {
                patches: &patches,
                width: case.width,
                height: case.height,
            };
            for layer in engine().profile(&batch).unwrap() {
                let ran = layer.main_loop.as_str();
                let expected = match (layer.shape.3 % 8, main_loop) {
                    (0, "tuned") if ran.contains("_cmma") => ran,
                    (0, "tuned") => "a cmma candidate",
                    (0, fixed) => fixed,
                    _ => "portable",
                };
                assert_eq!(ran, expected, "{} on {main_loop}: {layer:?}", case.name);
            }
            let difference = max_abs_difference(&maps[0].values, &case.expected_probability());
            println!(
                "{} on {main_loop}: max abs difference {difference:.2e}",
                case.name
            );
            assert!(
                difference <= case.f16_tolerance(),
                "{} on {main_loop}: {difference}",
                case.name
            );
        }
    }
}

/// Where `tools/install-test-deps.sh` puts a Debian root with Mesa 26's lavapipe:
/// `UNET_MESA_ROOT`, else `~/.cache/wsi-unet/mesa-coopmat`.
fn mesa_with_cooperative_matrices() -> std::path::PathBuf {
    std::env::var_os("UNET_MESA_ROOT")
        .map(Into::into)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            std::path::Path::new(&home).join(".cache/wsi-unet/mesa-coopmat")
        })
}

/// Runs `test` of this binary again under that root's dynamic loader and libraries (its
/// lavapipe needs that root's C library), or skips it outside CI where there is no root.
fn on_mesa_with_cooperative_matrices(test: &str) {
    let root = mesa_with_cooperative_matrices();
    let loader = root.join("usr/lib64/ld-linux-x86-64.so.2");
    let again = std::env::var_os("UNET_ON_MESA_ROOT").is_some();
    if again || !loader.exists() {
        let why = if again {
            format!(
                "the lavapipe in {} has no cooperative matrices",
                root.display()
            )
        } else {
            format!(
                "no Mesa root with cooperative matrices at {}",
                root.display()
            )
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: tools/install-test-deps.sh makes it"
        );
        println!("SKIPPED: {why} (tools/install-test-deps.sh makes it)");
        return;
    }
    let output = std::process::Command::new(&loader)
        .arg("--library-path")
        .arg(root.join("usr/lib/x86_64-linux-gnu"))
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("UNET_ON_MESA_ROOT", "1")
        .env(
            "VK_DRIVER_FILES",
            root.join("usr/share/vulkan/icd.d/lvp_icd.json"),
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    println!("{printed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{test} under {}", root.display());
    assert!(
        printed.contains("1 passed"),
        "{test} ran under {}",
        root.display()
    );
}
