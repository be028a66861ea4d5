//! Outputs written as temporary files in the output directory and renamed together when the
//! job completes, so a failed or interrupted run leaves nothing behind: not even the output
//! directory, when the run created it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use output_file::NamedTempFile;

pub struct Staged {
    dir: PathBuf,
    /// Complete files under temporary names, with their final names.
    files: Vec<(NamedTempFile, PathBuf)>,
    /// Directories created for the outputs, deepest first: removed again (when empty) unless
    /// the outputs are committed.
    created: Vec<PathBuf>,
    committed: bool,
}

impl Staged {
    /// Outputs into `dir`, created (with its missing parents) if need be.
    pub fn create(dir: &Path) -> Result<Staged> {
        let mut staged = Staged {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            created: Vec::new(),
            committed: false,
        };
        staged.create_dir(dir)?;
        Ok(staged)
    }

    /// Creates `dir` and its missing parents, remembered for removal unless committed.
    fn create_dir(&mut self, dir: &Path) -> Result<()> {
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output directory", dir.display()))?;
        // Deeper than every directory created before.
        self.created.splice(0..0, missing);
        Ok(())
    }

    /// Where `name` will be once committed.
    pub fn final_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Keeps a complete temporary file, to be renamed to `name` on commit.
    pub fn keep(&mut self, file: NamedTempFile, name: &str) {
        self.files.push((file, self.dir.join(name)));
    }

    /// Writes `name` (which may name a subfolder, created if need be) through `write` into a
    /// temporary file, kept for the commit.
    pub fn write(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = self.dir.join(name);
        // A second file of the same name would sweep away the first's temporary file.
        if self.files.iter().any(|(_, staged)| *staged == path) {
            bail!("{}: two outputs of this run have that name", path.display());
        }
        if let Some(parent) = path.parent() {
            self.create_dir(parent)?;
        }
        let mut file = output_file::beside(&path)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        let mut buffered = std::io::BufWriter::new(&mut file);
        write(&mut buffered).with_context(|| format!("{}: cannot write", path.display()))?;
        buffered
            .flush()
            .with_context(|| format!("{}: cannot write", path.display()))?;
        drop(buffered);
        self.files.push((file, path));
        Ok(())
    }

    /// Writes `picture` as the PNG `name`.
    pub fn write_png<P>(
        &mut self,
        name: &str,
        picture: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    ) -> Result<()>
    where
        P: image::PixelWithColorType,
        [P::Subpixel]: image::EncodableLayout,
    {
        self.write_bytes(name, &png_bytes(picture)?)
    }

    /// Writes `bytes` as `name`.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write(name, |out| Ok(out.write_all(bytes)?))
    }

    /// Renames every file to its final name; if one fails, those already renamed are removed.
    pub fn commit(mut self) -> Result<()> {
        let mut done: Vec<PathBuf> = Vec::new();
        for (file, path) in std::mem::take(&mut self.files) {
            if let Err(err) = file.persist(&path) {
                for renamed in &done {
                    let _ = std::fs::remove_file(renamed);
                }
                return Err(err.error).with_context(|| format!("{}: cannot write", path.display()));
            }
            done.push(path);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // The temporary files first, so that the directories are empty.
            self.files.clear();
            for dir in &self.created {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// `picture` encoded as a PNG file (in memory: the encoder wants to seek).
fn png_bytes<P>(picture: &image::ImageBuffer<P, Vec<P::Subpixel>>) -> Result<Vec<u8>>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    let mut png = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second file of a name already written is refused: its temporary file would sweep the
    /// first's away, and the commit fail on a file that is not there.
    #[test]
    fn a_name_written_twice_is_refused_and_the_first_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut staged = Staged::create(dir.path()).unwrap();
        staged.write_bytes("a.csv", b"first").unwrap();
        let error = staged.write_bytes("a.csv", b"second").unwrap_err();
        assert!(error.to_string().contains("two outputs"), "{error}");
        staged.commit().unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.csv")).unwrap(), b"first");
    }
}
