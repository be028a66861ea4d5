//! A cohort: the slides of one run (slide files, folders searched for slides, manifests), each
//! slide's output stem, the part of them this task runs (its shard), and the cohort summary
//! (`cohort.csv`, `cohort.json`) that `infer merge` joins across shards.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use unet_core::model_file;

use crate::output::Staged;
use crate::pipeline::{Summary, output_stem};

/// File extensions searched for in folders (other vendors' formats open with the `openslide`
/// feature; without it, such a slide fails alone, saying so).
const SLIDE_EXTENSIONS: [&str; 9] = [
    "tif", "tiff", "btf", "svs", "ndpi", "mrxs", "scn", "bif", "vms",
];
/// Never taken for a slide in a folder: what `infer` itself writes, and tumour masks named as
/// Camelyon names them (`tumor_001_mask.tif`).
const NOT_SLIDES: [&str; 4] = [".prob.tif", ".prob.ome.tif", "_mask.tif", "_mask.tiff"];

/// One slide of the cohort.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub slide: PathBuf,
    /// Its outputs are `STEM.*`: the slide's name, made unique within the cohort.
    pub stem: String,
    /// Ground truth (a manifest's `truth`).
    pub truth: Option<PathBuf>,
    /// The slide's resolution, µm per pixel, when it records none or a wrong one.
    pub mpp: Option<f64>,
    /// Where its outputs go, when not the run's `--out`.
    pub out: Option<PathBuf>,
}

/// Whether `inputs` name a cohort rather than one slide: several inputs, a manifest, or a
/// folder that is not itself a DICOM slide.
pub fn is_cohort(inputs: &[PathBuf]) -> bool {
    inputs.len() > 1
        || inputs
            .iter()
            .any(|p| is_manifest(p) || (p.is_dir() && !is_dicom_folder(p)))
}

/// Every slide `inputs` name, sorted by path, each once, with stems unique across the cohort
/// (whatever the shard, the same slide gets the same stem). Folders are searched recursively,
/// skipping `skip` (the output folder) and `infer`'s own outputs.
pub fn collect(inputs: &[PathBuf], skip: Option<&Path>) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    for input in inputs {
        if is_manifest(input) {
            entries.extend(read_manifest(input)?);
        } else if input.is_dir() && !is_dicom_folder(input) {
            let mut found = Vec::new();
            search(input, skip, &mut found)?;
            entries.extend(found.into_iter().map(Entry::of));
        } else if input.exists() {
            entries.push(Entry::of(input.clone()));
        } else {
            bail!("{}: no such slide, folder or manifest", input.display());
        }
    }
    entries.sort_by(|a, b| a.slide.cmp(&b.slide));
    entries.dedup_by(|a, b| a.slide == b.slide);
    unique_stems(&mut entries);
    Ok(entries)
}

impl Entry {
    fn of(slide: PathBuf) -> Entry {
        Entry {
            stem: output_stem(&slide),
            slide,
            truth: None,
            mpp: None,
            out: None,
        }
    }
}

fn is_manifest(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// A folder holding DICOM files is one DICOM-WSI slide.
fn is_dicom_folder(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("dcm"))
        })
    })
}

fn is_slide_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
    let Some(name) = name else { return false };
    !NOT_SLIDES.iter().any(|s| name.ends_with(s))
        && path
            .extension()
            .is_some_and(|e| SLIDE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Slides under `dir`: slide files, and DICOM folders as single slides. Symbolic links to
/// folders are not followed (a link loop would never end).
fn search(dir: &Path, skip: Option<&Path>, found: &mut Vec<PathBuf>) -> Result<()> {
    if skip.is_some_and(|skip| same_place(dir, skip)) {
        return Ok(());
    }
    if is_dicom_folder(dir) {
        found.push(dir.to_path_buf());
        return Ok(());
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if kind.is_dir() {
            search(&path, skip, found)?;
        } else if is_slide_file(&path) {
            found.push(path);
        }
    }
    Ok(())
}

fn same_place(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A manifest: CSV with a header naming `slide` and optionally `truth`, `mpp` and `out`;
/// relative paths are relative to the manifest's folder; empty cells are absent.
fn read_manifest(path: &Path) -> Result<Vec<Entry>> {
    let context = || format!("{}: not a readable manifest", path.display());
    let base = path.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(context)?;
    let header = reader.headers().with_context(context)?.clone();
    let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let Some(slide_column) = column("slide") else {
        bail!(
            "{}: the manifest has no `slide` column (its header is: {})",
            path.display(),
            header.iter().collect::<Vec<_>>().join(", ")
        );
    };
    let (truth, mpp, out) = (column("truth"), column("mpp"), column("out"));
    let mut entries = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.with_context(context)?;
        let cell = |c: Option<usize>| {
            c.and_then(|c| record.get(c))
                .filter(|v| !v.is_empty())
                .map(|v| base.join(v))
        };
        let Some(slide) = cell(Some(slide_column)) else {
            bail!("{}: line {line} names no slide", path.display());
        };
        let mpp = match mpp.and_then(|c| record.get(c)).filter(|v| !v.is_empty()) {
            None => None,
            Some(text) => match model_file::parse_mpp(text) {
                Ok(mpp) => Some(mpp),
                Err(why) => bail!("{}: line {line}: mpp {why}", path.display()),
            },
        };
        entries.push(Entry {
            truth: cell(truth),
            mpp,
            out: cell(out),
            ..Entry::of(slide)
        });
    }
    Ok(entries)
}

/// Slides with the same name (`a/s1.tif`, `b/s1.tif`) get their folder's name in front
/// (`a_s1`, `b_s1`), and a number after where that is not enough.
fn unique_stems(entries: &mut [Entry]) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for entry in entries.iter() {
        *count.entry(entry.stem.clone()).or_default() += 1;
    }
    for entry in entries.iter_mut() {
        if count[&entry.stem] > 1 {
            let parent = entry
                .slide
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            entry.stem = format!("{parent}_{}", entry.stem);
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in entries.iter_mut() {
        let n = seen.entry(entry.stem.clone()).or_default();
        *n += 1;
        if *n > 1 {
            entry.stem = format!("{}-{n}", entry.stem);
        }
    }
}

/// Part `index` (from 0) of `count` disjoint parts of the sorted slide list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, I from 0 to N - 1.
    fn from_str(text: &str) -> Result<Shard, String> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            _ => Err(format!(
                "`{text}`: expected I/N with 0 <= I < N (e.g. 0/4 for the first of four)"
            )),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard a job scheduler assigned, from its environment: a Slurm job array
    /// (`SLURM_ARRAY_TASK_ID`, `_MIN`, `_STEP`, `_COUNT`) or a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`, with `shards` or `INFER_SHARDS` saying how many).
    pub fn from_environment(shards: Option<usize>) -> Result<Option<(Shard, &'static str)>> {
        Shard::from_variables(|name| std::env::var(name).ok(), shards)
    }

    fn from_variables(
        var: impl Fn(&str) -> Option<String>,
        shards: Option<usize>,
    ) -> Result<Option<(Shard, &'static str)>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .with_context(|| format!("{name}={v:?} is not a whole number"))
                })
                .transpose()
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let count = match (
                number("SLURM_ARRAY_TASK_COUNT")?,
                number("SLURM_ARRAY_TASK_MAX")?,
            ) {
                (Some(count), _) => count,
                (None, Some(max)) => match max.checked_sub(min) {
                    Some(span) => span / step + 1,
                    None => bail!(
                        "SLURM_ARRAY_TASK_MAX {max} is below SLURM_ARRAY_TASK_MIN {min}: give --shard I/N"
                    ),
                },
                (None, None) => bail!(
                    "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX is: give --shard I/N"
                ),
            };
            let index = id.checked_sub(min).map(|d| d / step);
            return match index {
                Some(index) if index < count => {
                    Ok(Some((Shard { index, count }, "SLURM_ARRAY_TASK_ID")))
                }
                _ => bail!(
                    "Slurm array task {id} is outside the array's {count} tasks from {min}: give --shard I/N"
                ),
            };
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let Some(count) = shards.or(number("INFER_SHARDS")?) else {
                bail!(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): say how many shards with --shards N or INFER_SHARDS (the Job's `completions`)"
                );
            };
            if count == 0 {
                bail!("the number of shards (--shards or INFER_SHARDS) must be at least 1");
            }
            if index >= count {
                bail!("JOB_COMPLETION_INDEX {index} is not below the {count} shards");
            }
            return Ok(Some((Shard { index, count }, "JOB_COMPLETION_INDEX")));
        }
        Ok(None)
    }

    /// This shard's slides: every `count`-th of the sorted list from `index`, so that the
    /// shards are disjoint, together complete, and within one slide of each other in size.
    pub fn select(&self, entries: Vec<Entry>) -> Vec<Entry> {
        entries
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % self.count == self.index)
            .map(|(_, e)| e)
            .collect()
    }

    /// The file name (without extension) of this shard's cohort summary.
    fn file_stem(&self) -> String {
        format!("cohort.shard-{}-of-{}", self.index, self.count)
    }
}

/// What happened to one slide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    /// Its outputs were there, made by the same model with the same options.
    Skipped,
    Failed,
}

/// One row of the cohort summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideRecord {
    pub slide: String,
    pub stem: String,
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    pub patches: Option<usize>,
    pub seconds: Option<f64>,
    pub tumour_area_mm2: Option<f64>,
    pub max_probability: Option<f64>,
    pub dice: Option<f64>,
    pub iou: Option<f64>,
}

impl SlideRecord {
    /// The record of `entry`, with the figures of its summary when it has one.
    pub fn new(
        entry: &Entry,
        status: Status,
        summary: Option<&Summary>,
        error: Option<String>,
    ) -> SlideRecord {
        SlideRecord {
            slide: entry.slide.display().to_string(),
            stem: entry.stem.clone(),
            status,
            error,
            patches: summary.map(|s| s.patches_run),
            seconds: summary.map(|s| s.seconds),
            tumour_area_mm2: summary.and_then(|s| s.tumour_area_mm2),
            max_probability: summary.map(|s| s.max_probability),
            dice: summary.and_then(|s| s.dice),
            iou: summary.and_then(|s| s.iou),
        }
    }
}

/// The overall progress line after each slide of a cohort: slides so far, patches per second
/// over the slides run, and the time left at that pace.
pub struct CohortProgress {
    total: usize,
    seen: usize,
    run: usize,
    patches: usize,
    started: Instant,
}

impl CohortProgress {
    pub fn new(total: usize) -> CohortProgress {
        CohortProgress {
            total,
            seen: 0,
            run: 0,
            patches: 0,
            started: Instant::now(),
        }
    }

    pub fn add(&mut self, record: &SlideRecord) {
        self.seen += 1;
        if record.status != Status::Skipped {
            self.run += 1;
            self.patches += record.patches.unwrap_or(0);
        }
        if self.total < 2 {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = self.total - self.seen;
        let eta = if self.run == 0 {
            "-".to_string()
        } else {
            format!("{:.0} s", elapsed / self.run as f64 * left as f64)
        };
        eprintln!(
            "[{}/{}] {}: {:?}; {:.1} patches/s; ETA {eta}",
            self.seen,
            self.total,
            record.stem,
            record.status,
            self.patches as f64 / elapsed.max(1e-9),
        );
    }
}

/// The cohort summary: every slide's record, and totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortReport {
    /// The shard this summary covers (none: the whole cohort).
    pub shard: Option<Shard>,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub slides: Vec<SlideRecord>,
}

impl CohortReport {
    pub fn new(shard: Option<Shard>, slides: Vec<SlideRecord>) -> CohortReport {
        let count = |status| slides.iter().filter(|s| s.status == status).count();
        CohortReport {
            shard,
            done: count(Status::Done),
            skipped: count(Status::Skipped),
            failed: count(Status::Failed),
            slides,
        }
    }

    /// Writes `cohort.json` and `cohort.csv` (a shard's: `cohort.shard-I-of-N.*`) into
    /// `dir`, each whole or not at all; returns the CSV's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let stem = self
            .shard
            .map_or_else(|| "cohort".to_string(), |s| s.file_stem());
        let mut staged = Staged::create(dir)?;
        staged.write(&format!("{stem}.json"), |out| {
            Ok(serde_json::to_writer_pretty(out, self)?)
        })?;
        let csv_name = format!("{stem}.csv");
        staged.write(&csv_name, |out| {
            let mut writer = csv::Writer::from_writer(out);
            for slide in &self.slides {
                writer.serialize(slide)?;
            }
            Ok(writer.flush()?)
        })?;
        staged.commit()?;
        Ok(dir.join(csv_name))
    }

    /// The shards' summaries in `dir` (`cohort.shard-I-of-N.json`) joined into one; every
    /// shard must be there.
    pub fn merge(dir: &Path) -> Result<CohortReport> {
        let mut shards: BTreeMap<usize, CohortReport> = BTreeMap::new();
        let mut count = None;
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if !(name.starts_with("cohort.shard-") && name.ends_with(".json")) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let report: CohortReport = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a cohort summary", path.display()))?;
            let Some(shard) = report.shard else {
                bail!("{}: not a shard's summary", path.display());
            };
            if *count.get_or_insert(shard.count) != shard.count {
                bail!(
                    "{}: a shard of {} where the others are of {}: summaries of two different runs?",
                    path.display(),
                    shard.count,
                    count.unwrap_or_default()
                );
            }
            shards.insert(shard.index, report);
        }
        let Some(count) = count else {
            bail!(
                "{}: no shard summaries (cohort.shard-I-of-N.json)",
                dir.display()
            );
        };
        let missing: Vec<String> = (0..count)
            .filter(|i| !shards.contains_key(i))
            .map(|i| i.to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}: shard {} of {count} has no summary: has it run?",
                dir.display(),
                missing.join(", ")
            );
        }
        let mut slides: Vec<SlideRecord> = shards.into_values().flat_map(|r| r.slides).collect();
        slides.sort_by(|a, b| a.slide.cmp(&b.slide));
        Ok(CohortReport::new(None, slides))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<Entry> {
        names.iter().map(|n| Entry::of(PathBuf::from(n))).collect()
    }

    #[test]
    fn shards_are_disjoint_and_complete() {
        let all = entries(&["a", "b", "c", "d", "e", "f", "g"]);
        let mut seen: Vec<PathBuf> = Vec::new();
        for index in 0..3 {
            let part = Shard { index, count: 3 }.select(all.clone());
            assert!((2..=3).contains(&part.len()));
            seen.extend(part.into_iter().map(|e| e.slide));
        }
        seen.sort();
        assert_eq!(seen, all.into_iter().map(|e| e.slide).collect::<Vec<_>>());
    }

    #[test]
    fn the_shard_comes_from_slurm_or_kubernetes() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
        ]);
        let (shard, _) = Shard::from_variables(slurm, None).unwrap().unwrap();
        assert_eq!(shard, Shard { index: 2, count: 4 });
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        let (shard, _) = Shard::from_variables(stepped, None).unwrap().unwrap();
        assert_eq!(shard, Shard { index: 2, count: 3 });
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1"), ("INFER_SHARDS", "3")]);
        let (shard, _) = Shard::from_variables(k8s, None).unwrap().unwrap();
        assert_eq!(shard, Shard { index: 1, count: 3 });
        let k8s_without_count = env(&[("JOB_COMPLETION_INDEX", "1")]);
        let error = Shard::from_variables(k8s_without_count, None).unwrap_err();
        assert!(error.to_string().contains("--shards"), "{error}");
        assert_eq!(Shard::from_variables(env(&[]), Some(3)).unwrap(), None);
        // Variables that contradict each other are refused, not wrapped round.
        let backwards = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_MAX", "0"),
        ]);
        let error = Shard::from_variables(backwards, None).unwrap_err();
        assert!(error.to_string().contains("MAX 0 is below"), "{error}");
        let error = Shard::from_variables(k8s, Some(0)).unwrap_err();
        assert!(error.to_string().contains("at least 1"), "{error}");
        assert!("3/3".parse::<Shard>().is_err());
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
    }

    #[test]
    fn slides_of_the_same_name_get_distinct_stems() {
        let mut all = entries(&["x/a/s1.tif", "x/b/s1.tif", "y/a/s1.tif", "x/s2.svs"]);
        unique_stems(&mut all);
        let stems: Vec<&str> = all.iter().map(|e| e.stem.as_str()).collect();
        assert_eq!(stems, ["a_s1", "b_s1", "a_s1-2", "s2"]);
    }
}
