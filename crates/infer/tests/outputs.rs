//! What people open: the probability map as OME-TIFF (read by tifffile's OME parser, as
//! Bio-Formats would), the tumour contours as ASAP XML (read back as ground truth), and
//! test-time augmentation (d4 commutes with rotating the slide).

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixtures, infer_slide as infer, level0_map as map, read_json};
use image::{GrayImage, RgbImage};
use infer::truth::{Overlap, Truth};
use wsi::{Channels, PyramidWriter, Slide, WriterOptions};

/// The OME-TIFF map holds the plain map's pixels in every level, and tifffile finds its
/// pyramid, its physical pixel size (the slide's mpp) and its channel's name.
#[test]
fn ome_tiff_map_is_the_plain_map_with_its_physical_size() {
    let slide = fixtures().join("slides/tiny_vips_jpeg.tif");
    let dir = tempfile::tempdir().unwrap();
    infer(&slide, dir.path(), &["--prob-format", "tiff"]);
    let plain = dir.path().join("tiny_vips_jpeg.prob.tif");
    let kept = dir.path().join("plain.prob.tif");
    std::fs::rename(&plain, &kept).unwrap();
    infer(&slide, dir.path(), &["--prob-format", "ome-tiff"]);
    let ome = dir.path().join("tiny_vips_jpeg.prob.ome.tif");
    assert_eq!(map(&kept), map(&ome));
    let summary = read_json(&dir.path().join("tiny_vips_jpeg.summary.json"));
    assert_eq!(summary["outputs"][0], ome.display().to_string());

    let script = r#"
import sys, numpy, tifffile
ome = tifffile.TiffFile(sys.argv[1]); plain = tifffile.TiffFile(sys.argv[2])
pixels = tifffile.xml2dict(ome.ome_metadata)["OME"]["Image"]["Pixels"]
print(ome.is_ome, [l.shape for l in ome.series[0].levels])
print(round(float(pixels["PhysicalSizeX"]), 6), pixels["PhysicalSizeXUnit"], pixels["Channel"]["Name"])
print(all(numpy.array_equal(l.asarray(), p.asarray()) for l, p in zip(ome.series[0].levels, plain.pages)))
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&ome)
        .arg(&kept)
        .output();
    let printed = match output {
        Ok(output) if output.status.success() => String::from_utf8(output.stdout).unwrap(),
        other if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: python3 cannot run tifffile: {other:?}");
            return;
        }
        other => panic!("tifffile could not read the OME-TIFF map: {other:?}"),
    };
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        [
            "True [(1536, 2048), (768, 1024), (384, 512)]",
            "0.243 µm tumour probability (255 = 1)",
            "True"
        ]
    );
}

/// The ASAP XML contours, read back by our `--truth` reader, cover what the map says is
/// tumour: Dice >= 0.99 against the map thresholded at 128, the contours' own level.
#[test]
fn asap_xml_reads_back_as_the_thresholded_map() {
    let slide = fixtures().join("pipeline/demo_vips_jpeg.tif");
    let dir = tempfile::tempdir().unwrap();
    infer(&slide, dir.path(), &["--tissue", "off"]);
    let xml = dir.path().join("demo_vips_jpeg.tumour.xml");
    let map = map(&dir.path().join("demo_vips_jpeg.prob.tif"));
    let (width, height) = map.dimensions();
    let truth = Truth::load(&xml, width as f64, height as f64).unwrap();
    let mut overlap = Overlap::default();
    let mut row = Vec::new();
    for y in 0..height {
        truth.row(0.0, y as f64, width as usize, &mut row);
        let predicted: Vec<u8> = (0..width).map(|x| map.get_pixel(x, y).0[0]).collect();
        overlap.add_row(&predicted, &row);
    }
    assert!(
        overlap.true_positive > 100_000,
        "{overlap:?}: a tumour to outline"
    );
    assert!(overlap.dice() >= 0.99, "Dice {:.4}", overlap.dice());
}

/// Writes `image` as a lossless tiled pyramid at 0.243 µm/px.
fn write_slide(path: &Path, image: &RgbImage) {
    let options = WriterOptions {
        tile: 256,
        mpp: Some(0.243),
        ..WriterOptions::default()
    };
    let (width, height) = image.dimensions();
    let mut writer =
        PyramidWriter::create(path, width as u64, height as u64, Channels::Rgb, options).unwrap();
    writer.write_rows(image.as_raw()).unwrap();
    writer.finish().unwrap();
}

/// With `--tta d4` the map of the slide turned a quarter turn is the map turned a quarter
/// turn (to within one level: the 8 copies are summed in another order); without it, not
/// quite, which is what the augmentation buys.
#[test]
fn d4_map_of_a_rotated_slide_is_the_rotated_map() {
    // A 1024 x 1024 piece of the demo slide around its tumour: a 2 x 2 grid of patches that
    // a quarter turn maps onto itself.
    let demo = Slide::open(fixtures().join("pipeline/demo_vips_jpeg.tif")).unwrap();
    let piece = demo.read_region(0, 1024, 2048, 1024, 1024).unwrap();
    let turned = image::imageops::rotate90(&piece);
    let dir = tempfile::tempdir().unwrap();
    let (upright, quarter) = (
        dir.path().join("upright.tif"),
        dir.path().join("quarter.tif"),
    );
    write_slide(&upright, &piece);
    write_slide(&quarter, &turned);
    let maps = |tta: &str| {
        let out = dir.path().join(tta);
        for slide in [&upright, &quarter] {
            infer(slide, &out, &["--tissue", "off", "--tta", tta]);
        }
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("quarter.summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["tta"], tta);
        (
            image::imageops::rotate90(&map(&out.join("upright.prob.tif"))),
            map(&out.join("quarter.prob.tif")),
        )
    };
    let largest_difference = |(a, b): (GrayImage, GrayImage)| {
        a.pixels()
            .zip(b.pixels())
            .map(|(p, q)| p.0[0].abs_diff(q.0[0]))
            .max()
            .unwrap()
    };
    let (with, without) = (maps("d4"), maps("off"));
    let tumour = with.0.pixels().filter(|p| p.0[0] >= 128).count();
    assert!(
        tumour > 10_000,
        "{tumour} tumour pixels: a piece with tumour"
    );
    assert!(largest_difference(with) <= 1);
    assert!(
        largest_difference(without) > 1,
        "the model alone is not equivariant"
    );
}

/// `--engine` picks what runs the model and the summary says which: Burn's f32 CPU path and
/// our CPU kernels (the default there) give the same map, within one level of 255.
#[test]
fn the_engine_asked_for_runs_and_is_recorded() {
    let out = tempfile::tempdir().unwrap();
    let slide = fixtures().join("pipeline/demo_vips_jpeg.tif");
    let (ours, burn) = (out.path().join("cpu"), out.path().join("burn"));
    let region = ["--region", "0,0,1024,512", "--tissue", "off"];
    infer(&slide, &ours, &region);
    infer(
        &slide,
        &burn,
        &[&region[..], &["--engine", "burn"]].concat(),
    );
    let summary = |dir: &Path| read_json(&dir.join("demo_vips_jpeg.summary.json"));
    assert_eq!(summary(&ours)["engine"], "cpu");
    assert_eq!(summary(&burn)["engine"], "burn");
    let (a, b) = (
        map(&ours.join("demo_vips_jpeg.prob.tif")),
        map(&burn.join("demo_vips_jpeg.prob.tif")),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    let largest = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| p.0[0].abs_diff(q.0[0]))
        .max()
        .unwrap();
    assert!(largest <= 1, "maps differ by {largest} levels");
}

/// The model's CPU threads, as the summary records them: `--threads`; else RAYON_NUM_THREADS;
/// else a Slurm job's `--cpus-per-task` (a job not confined by cgroups sees its whole node);
/// never more than the CPUs the process may use (it takes 2: CI's machine has 2).
#[test]
fn threads_come_from_the_flag_rayon_or_slurm() {
    let out = tempfile::tempdir().unwrap();
    let slide = fixtures().join("pipeline/demo_vips_jpeg.tif");
    let hardware = |name: &str, flags: &[&str], env: &[(&str, &str)]| {
        let dir = out.path().join(name);
        let output = common::infer_command()
            .arg(&slide)
            .arg("--out")
            .arg(&dir)
            .args(["--device", "cpu", "--precision", "f32", "--quiet"])
            .args(["--region", "0,0,512,512", "--tissue", "off"])
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{name}: {stderr}");
        let summary = read_json(&dir.join("demo_vips_jpeg.summary.json"));
        (summary["hardware"].as_str().unwrap().to_string(), stderr)
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "the test tells 1 thread from 2");
    let slurm = ("SLURM_CPUS_PER_TASK", "1");
    let (flag, _) = hardware("flag", &["--threads", "1"], &[]);
    assert!(flag.ends_with(", 1 thread"), "{flag}");
    let (from_slurm, _) = hardware("slurm", &[], &[slurm]);
    assert!(from_slurm.ends_with(", 1 thread"), "{from_slurm}");
    let (rayon, _) = hardware("rayon", &[], &[slurm, ("RAYON_NUM_THREADS", "2")]);
    assert!(rayon.ends_with(", 2 threads"), "{rayon}");
    let (flag_over_slurm, _) = hardware("flag over slurm", &["--threads", "2"], &[slurm]);
    assert!(
        flag_over_slurm.ends_with(", 2 threads"),
        "{flag_over_slurm}"
    );
    // A slip of the keyboard runs on the CPUs there are, and says so.
    let every_cpu = format!(", {cpus} threads");
    for (name, flags, env) in [
        ("many", &["--threads", "100000"][..], &[][..]),
        ("many from rayon", &[], &[("RAYON_NUM_THREADS", "100000")]),
    ] {
        let (many, stderr) = hardware(name, flags, env);
        assert!(many.ends_with(&every_cpu), "{name}: {many}");
        assert!(
            stderr.contains(&format!("100000 is more than the {cpus} CPUs")),
            "{name}: {stderr}"
        );
    }
}

/// Under a memory limit (a Slurm job's `--mem`, a container's), the CPU engine runs no more
/// images side by side than the limit has room for, and a limit too small for one image is
/// named before the kernel kills the process. A w = 32 model in f32 holds ~265 MB of
/// activations an image: on 2 threads two at once peaked at 539 MB and were killed under a
/// 450 MB limit before the engine read the limit (measured on the 2-core EPYC); one at a time
/// peaks at ~335 MB. The limit is a memory cgroup's, v1 or v2, which takes root and a writable
/// cgroup file system.
#[test]
fn a_memory_limit_runs_images_one_at_a_time_rather_than_be_killed() {
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("w32.bpk");
    let config = unet_core::UnetConfig::new(3, 3, 32);
    let weights = unet_core::FoldedWeights::random(config, 32);
    unet_core::model_file::save(&weights, "random weights", None, &model).unwrap();
    let run_under = |bytes: u64| {
        let name = format!("wsi-unet-test-{}-{bytes}", std::process::id());
        let cgroup = MemoryCgroup::new(&name, bytes)?;
        let dir = out.path().join(&name);
        // The shell moves itself into the cgroup, then becomes `infer`.
        let output = Command::new("sh")
            .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
            .arg(&cgroup.dir)
            .arg(env!("CARGO_BIN_EXE_infer"))
            .arg(fixtures().join("pipeline/demo_vips_jpeg.tif"))
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&dir)
            .args(["--device", "cpu", "--precision", "f32"])
            .args(["--threads", "2", "--batch", "2", "--quiet"])
            .args(["--region", "0,0,1024,512", "--tissue", "off"])
            .output()
            .unwrap();
        Ok::<_, String>((output, dir))
    };
    let (output, dir) = match run_under(450_000_000) {
        Ok(run) => run,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: no memory cgroup to run in: {why}");
            return;
        }
        Err(why) => panic!("no memory cgroup to run in: {why}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "under a 450 MB limit, {} (the limit kills with signal 9): {stderr}",
        output.status,
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    let summary = read_json(&dir.join("demo_vips_jpeg.summary.json"));
    assert_eq!(summary["patches_run"], 2, "{summary}");

    // ~90 MB of it are taken before the first patch: too little is left for one image.
    let (output, _) = run_under(250_000_000).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: a 512x512 patch may need up to 0.2")
            && stderr.contains("it may be killed"),
        "under a 250 MB limit, {}: {stderr}",
        output.status
    );
}

/// A memory cgroup limited to `bytes`, removed when dropped (once nothing runs in it).
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn new(name: &str, bytes: u64) -> Result<MemoryCgroup, String> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        // v1's memory hierarchy where mounted, else the unified (v2) one; swap off in either,
        // so that the limit kills rather than pages out.
        let (root, limit, swap) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, "memory.limit_in_bytes", "memory.swappiness")
        } else {
            (Path::new("/sys/fs/cgroup"), "memory.max", "memory.swap.max")
        };
        let dir = root.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup { dir };
        std::fs::write(cgroup.dir.join(limit), bytes.to_string())
            .map_err(|e| format!("{limit}: {e}"))?;
        // A machine without swap may lack the file.
        let _ = std::fs::write(cgroup.dir.join(swap), "0");
        Ok(cgroup)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
