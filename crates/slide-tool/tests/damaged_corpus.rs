//! Every damaged slide of `tests/fixtures/bad` (made by `tools/make_bad_inputs.py`): `slide
//! info` refuses it, or, where only pixel data is damaged, `slide region` over the damage
//! does; in one line naming the file, leaving no PNG. Those named `readable_` are damaged in
//! a way no reader can tell from a smaller slide: they open and read. None costs much memory.

use std::path::Path;
use std::process::{Command, Output};

use test_fixtures::damaged;

/// `slide ARGS` under a 2 GiB address-space cap, so that a runaway allocation cannot take the
/// test machine with it; below the cap it succeeds, and the peak memory check below sees it.
fn slide(args: &[&Path]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_slide"))
        .args(args)
        .output()
        .unwrap()
}

/// The one line of a refusal, which names the file.
fn refusal(output: &Output, file: &Path) -> String {
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{} was accepted", file.display());
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(message.contains(&*file.to_string_lossy()), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    message
}

#[test]
fn every_damaged_slide_is_refused_in_one_line() {
    let slides = damaged(&["slide_", "svs_", "dicom_"]);
    assert!(slides.len() >= 25, "{} damaged slides", slides.len());
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("region.png");
    // Reading level 0's first 1001 x 753 pixels meets any damage in the pixels.
    let region = |file: &Path| {
        slide(&[
            Path::new("region"),
            file,
            Path::new("0"),
            Path::new("0"),
            Path::new("0"),
            Path::new("1001"),
            Path::new("753"),
            &png,
        ])
    };
    for file in &slides {
        let info = slide(&[Path::new("info"), file]);
        let message = if info.status.success() {
            let message = refusal(&region(file), file);
            assert!(!png.exists(), "{}: a PNG was left", file.display());
            message
        } else {
            refusal(&info, file)
        };
        println!("{message}");
    }
    let readable = damaged(&["readable_"]);
    assert!(!readable.is_empty());
    for file in &readable {
        let info = slide(&[Path::new("info"), file]);
        let stderr = String::from_utf8_lossy(&info.stderr);
        assert!(info.status.success(), "{}: {stderr}", file.display());
        let read = region(file);
        let stderr = String::from_utf8_lossy(&read.stderr);
        assert!(read.status.success(), "{}: {stderr}", file.display());
        std::fs::remove_file(&png).unwrap();
    }
    // A damaged size field must not make a 30 kB file cost hundreds of megabytes
    // (`dicom_huge_value_length.dcm` declares a 768 MiB value, `dicom_unknown_vr.dcm` and
    // `dicom_meta_overrun.dcm` lead a parser to 775 MB and 1.1 GB ones,
    // `readable_dicom_attributes_cut_out.dcm` one of 3.4 GB to a parser that reads past the
    // pixel data).
    let peak_mib = largest_child_peak_rss_kib() / 1024;
    assert!(peak_mib < 200, "a damaged slide took {peak_mib} MiB");
}

/// The peak resident memory of the largest child process waited for so far, KiB.
fn largest_child_peak_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; getrusage only writes into it.
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(status, 0, "getrusage failed");
    // SAFETY: getrusage succeeded, so it filled the struct (which was zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    usage.ru_maxrss
}
