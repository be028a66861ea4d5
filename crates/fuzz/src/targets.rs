//! The readers fuzzed, each with its seeds from the repository's fixtures and what it does
//! with a case: everything a user's command would do with such a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use infer::truth::Truth;
use wsi::Slide;

#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Pyramidal TIFF and Aperio SVS: open, every level, regions, thumbnail, associated images.
    Tiff,
    /// A DICOM-WSI instance, the same.
    Dicom,
    /// A PyTorch checkpoint, as `convert` reads it.
    Checkpoint,
    /// A converted model file, as `infer --model` reads it.
    Model,
    /// ASAP annotations, as `--truth` reads them.
    Asap,
    /// A mask image, as `--truth` and `--tissue` read it.
    Mask,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Tiff,
        Target::Dicom,
        Target::Checkpoint,
        Target::Model,
        Target::Asap,
        Target::Mask,
    ];

    pub fn named(name: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .with_context(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                format!("no target `{name}` (one of: {}, all)", names.join(", "))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Tiff => "tiff",
            Target::Dicom => "dicom",
            Target::Checkpoint => "checkpoint",
            Target::Model => "model",
            Target::Asap => "asap",
            Target::Mask => "mask",
        }
    }

    /// The name of the case in flight in the target's output folder: `current.EXT`, with the
    /// extension the readers go by.
    pub fn current_case(self) -> String {
        let extension = match self {
            Target::Tiff => "tif",
            Target::Dicom => "dcm",
            Target::Checkpoint => "pth",
            Target::Model => "bpk",
            Target::Asap => "xml",
            Target::Mask => "png",
        };
        format!("current.{extension}")
    }

    /// The fixtures a case starts from (files under 4 MB).
    pub fn seeds(self) -> Result<Vec<Vec<u8>>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let fixtures = root.join("tests/fixtures");
        let (dirs, suffixes): (Vec<PathBuf>, &[&str]) = match self {
            Target::Tiff => (
                vec![
                    fixtures.join("slides"),
                    fixtures.join("slides_more"),
                    fixtures.join("slides_codecs"),
                ],
                &[".tif", ".svs"],
            ),
            Target::Dicom => (
                vec![
                    fixtures.join("slides_more/tiny_dicom"),
                    fixtures.join("slides_more/odd_dicom"),
                ],
                &[".dcm"],
            ),
            Target::Checkpoint => (
                vec![fixtures.join("pytorch"), fixtures.join("bad")],
                &[".pth"],
            ),
            Target::Model => (vec![root.join("models")], &[".bpk"]),
            Target::Asap => (
                vec![fixtures.join("slides"), fixtures.join("pipeline")],
                &[".xml"],
            ),
            Target::Mask => (
                vec![fixtures.join("slides"), fixtures.join("pipeline")],
                &["_mask.png"],
            ),
        };
        let mut seeds = Vec::new();
        for dir in dirs {
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("{}: no seeds", dir.display()))?;
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
            paths.sort();
            for path in paths {
                let name = path.to_string_lossy();
                let small = path
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.len() < 4 << 20);
                if small && suffixes.iter().any(|s| name.ends_with(s)) {
                    seeds.push(std::fs::read(&path)?);
                }
            }
        }
        if seeds.is_empty() {
            bail!("no seed files for {}", self.name());
        }
        Ok(seeds)
    }

    /// Reads the case as the program would; errors are the expected outcome, only panics,
    /// crashes, hangs and runaway allocations are findings.
    pub fn run(self, path: &Path) {
        match self {
            Target::Tiff | Target::Dicom => read_slide(path),
            Target::Checkpoint => {
                let _ = unet_core::Checkpoint::read(path);
            }
            Target::Model => {
                let _ = unet_core::model_file::read_weights(path);
            }
            Target::Asap | Target::Mask => {
                if let Ok(truth) = Truth::load(path, 4096.0, 3072.0) {
                    let mut row = Vec::new();
                    for y in [0.0, 1500.0, 3071.0] {
                        truth.row(0.0, y, 4096, &mut row);
                    }
                }
            }
        }
    }
}

/// What `slide info`, `slide region` and `infer` ask of a slide.
fn read_slide(path: &Path) {
    let Ok(slide) = Slide::open(path) else {
        return;
    };
    let _ = slide.properties();
    for (level, size) in slide.levels().iter().enumerate() {
        let (w, h) = (size.width.min(256) as u32, size.height.min(256) as u32);
        let _ = slide.read_region(level, 0, 0, w, h);
        let (cx, cy) = (size.width as i64 / 2, size.height as i64 / 2);
        let _ = slide.read_region_extended(level, cx as u64, cy as u64, 300, 300);
    }
    let _ = slide.thumbnail(256);
    for (name, _, _) in slide.associated_images() {
        let _ = slide.read_associated_image(&name);
    }
}
