//! Outputs written under temporary names and renamed together when the job completes, so a
//! failed or interrupted run leaves nothing behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Staged {
    dir: PathBuf,
    /// (temporary, final) paths, in the order they were added.
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staged {
    pub fn new(dir: &Path) -> Staged {
        Staged {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            committed: false,
        }
    }

    /// The temporary path to write `name` to.
    pub fn add(&mut self, name: String) -> PathBuf {
        let temporary = self.dir.join(format!(".{name}.partial"));
        self.files.push((temporary.clone(), self.dir.join(name)));
        temporary
    }

    /// Renames every file to its final name.
    pub fn commit(mut self) -> Result<()> {
        for (temporary, last) in &self.files {
            std::fs::rename(temporary, last)
                .with_context(|| format!("{}: cannot write", last.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            for (temporary, _) in &self.files {
                let _ = std::fs::remove_file(temporary);
            }
        }
    }
}
