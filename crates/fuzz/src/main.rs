//! `fuzz TARGET --seconds N`: mutation fuzzing of one reader of untrusted input, on stable
//! Rust (no sanitizer runtime, no nightly): the fixtures are the seeds; each case is a seed
//! mutated (bit flips, boundary values in 1-, 2-, 4- and 8-byte fields, truncation, copied or
//! removed runs, a splice of two seeds), written to a file and handed to the reader.
//!
//! The cases run in a worker process started under `ulimit -v` (4 GiB by default), so that an
//! allocation sized by a damaged field kills the worker instead of the machine; below that
//! cap, a case whose peak resident memory passes `--rss-mib` is a finding too (the worker
//! reads its high-water mark after each case and resets it through `/proc`). The worker
//! writes each case to `OUT/TARGET/current.EXT` (the extension the reader goes by) and runs
//! the reader on that file, reporting progress on stdout; the parent restarts a worker that
//! died (a crash, an abort on a refused allocation) or went silent (a hang) and keeps its
//! case in `OUT/TARGET/findings/`. A panic is caught in the worker and kept the same way.
//! Exit status 1 when anything was found.
#![forbid(unsafe_code)]

mod mutate;
mod targets;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::mutate::Mutator;
use crate::targets::Target;

#[derive(Parser)]
#[command(about)]
struct Cli {
    /// tiff, dicom, checkpoint, model, asap, mask (or `all`, one after another).
    target: String,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Address-space cap of the worker, MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
    /// A case whose peak resident memory passes this, MiB, is a finding (a small damaged
    /// file must not cost hundreds of megabytes; the readers' own caps allow 64 MiB a tile
    /// and a 256 MiB tile cache).
    #[arg(long, default_value_t = 512)]
    rss_mib: u64,
    /// A case running longer than this is a hang.
    #[arg(long, default_value_t = 10)]
    hang_seconds: u64,
    /// Where findings (and the case in flight) go.
    #[arg(long, default_value = "target/fuzz")]
    out: PathBuf,
    /// The worker: run cases from this random seed (set by the parent).
    #[arg(long, hide = true)]
    worker: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.worker {
        Some(seed) => worker(&cli, seed).map(|()| true),
        None => parent(&cli),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every requested target for its time; true when nothing was found.
fn parent(cli: &Cli) -> Result<bool> {
    let targets = if cli.target == "all" {
        Target::ALL.to_vec()
    } else {
        vec![Target::named(&cli.target)?]
    };
    let mut clean = true;
    for target in targets {
        clean &= fuzz_target(cli, target)?;
    }
    Ok(clean)
}

fn fuzz_target(cli: &Cli, target: Target) -> Result<bool> {
    let out = cli.out.join(target.name());
    std::fs::create_dir_all(out.join("findings"))
        .with_context(|| format!("{}: cannot create", out.display()))?;
    let exe = std::env::current_exe().context("cannot find this program")?;
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    let current = target.current_case();
    let (mut cases, mut findings, mut restarts) = (0u64, 0usize, 0u64);
    while Instant::now() < deadline {
        // The case in flight; none yet for this worker.
        let _ = std::fs::remove_file(out.join(&current));
        // A worker under the memory cap, reporting one line per case.
        let script = format!("ulimit -v {} && exec \"$0\" \"$@\"", cli.memory_mib * 1024);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&exe)
            .arg(target.name())
            .arg("--out")
            .arg(&cli.out)
            .arg("--rss-mib")
            .arg(cli.rss_mib.to_string())
            .arg("--worker")
            .arg((restarts * 7919 + cases).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start a worker")?;
        restarts += 1;
        let stdout = child.stdout.take().expect("piped");
        let (lines, received) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let hang = Duration::from_secs(cli.hang_seconds);
        let fault = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                break None;
            }
            match received.recv_timeout(hang.min(left + Duration::from_millis(100))) {
                Ok(line) if line == "case" => cases += 1,
                Ok(line) => {
                    // A panic the worker caught: it kept the case itself.
                    findings += 1;
                    println!("{}: {line}", target.name());
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    let _ = child.kill();
                    break Some(format!("no progress for {} s (a hang)", cli.hang_seconds));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    break None;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().context("the worker")?;
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    break Some(format!(
                        "the worker died ({status}): {}",
                        last_line(&stderr)
                    ));
                }
            }
        };
        let _ = child.wait();
        if let Some(fault) = fault {
            if !out.join(&current).exists() {
                bail!(
                    "{}: the worker failed before its first case: {fault}",
                    target.name()
                );
            }
            findings += 1;
            let kept = keep(&out, &current, findings)?;
            println!(
                "{}: {fault}; case kept as {}",
                target.name(),
                kept.display()
            );
        }
    }
    println!(
        "{}: {cases} cases in {} s, {findings} findings, {} worker starts",
        target.name(),
        cli.seconds,
        restarts
    );
    Ok(findings == 0)
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// Copies `OUT/name` into `OUT/findings/` as finding `n`.
fn keep(out: &Path, name: &str, n: usize) -> Result<PathBuf> {
    let kept = out.join("findings").join(format!("{n:04}-{name}"));
    std::fs::copy(out.join(name), &kept)
        .with_context(|| format!("{}: cannot keep the case", kept.display()))?;
    Ok(kept)
}

/// The worker: mutates seeds and runs cases until killed.
fn worker(cli: &Cli, seed: u64) -> Result<()> {
    let target = Target::named(&cli.target)?;
    let out = cli.out.join(target.name());
    let seeds = target.seeds()?;
    if seeds.is_empty() {
        bail!("no seeds for {}", target.name());
    }
    // In the output folder, not a temporary one: the worker is killed, never dropped.
    let case_path = out.join(target.current_case());
    let mut mutator = Mutator::new(seed);
    // Panics are caught and reported; their default message would only repeat it.
    std::panic::set_hook(Box::new(|_| {}));
    let mut stdout = std::io::stdout();
    let mut found = 0usize;
    let mut keep = |kind: &str, case: &[u8]| -> Result<String> {
        found += 1;
        let name = format!("{kind}-{seed}-{found}");
        std::fs::write(out.join("findings").join(&name), case)?;
        Ok(name)
    };
    reset_peak_memory()?;
    loop {
        let case = mutator.case(&seeds);
        std::fs::write(&case_path, &case)?;
        let outcome = std::panic::catch_unwind(|| target.run(&case_path));
        if let Err(payload) = outcome {
            let name = keep("panic", &case)?;
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            writeln!(stdout, "panic ({message}); case kept as findings/{name}")?;
        }
        let peak_mib = peak_memory_kib()? >> 10;
        if peak_mib > cli.rss_mib {
            let name = keep("memory", &case)?;
            writeln!(
                stdout,
                "{peak_mib} MiB resident for a {} kB case; kept as findings/{name}",
                case.len() >> 10
            )?;
        }
        reset_peak_memory()?;
        writeln!(stdout, "case")?;
        stdout.flush()?;
    }
}

/// This process's peak resident memory since the last reset, KiB (`VmHWM`).
fn peak_memory_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// Sets the peak resident memory back to the current (Linux: `5` to `clear_refs`).
fn reset_peak_memory() -> Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("/proc/self/clear_refs")
}
