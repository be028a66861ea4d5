//! Outputs written as temporary files in the output directory and renamed together when the
//! job completes, so a failed or interrupted run leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use output_file::NamedTempFile;

pub struct Staged {
    dir: PathBuf,
    /// Complete files under temporary names, with their final names.
    files: Vec<(NamedTempFile, PathBuf)>,
}

impl Staged {
    pub fn new(dir: &Path) -> Staged {
        Staged {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }

    /// Where `name` will be once committed.
    pub fn final_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Keeps a complete temporary file, to be renamed to `name` on commit.
    pub fn keep(&mut self, file: NamedTempFile, name: &str) {
        self.files.push((file, self.dir.join(name)));
    }

    /// Writes `name` through `write` into a temporary file, kept for the commit.
    pub fn write(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = self.dir.join(name);
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
        // The PNG encoder wants to seek: encode in memory, then write.
        let mut png = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut png, image::ImageFormat::Png)?;
        self.write(name, |out| Ok(out.write_all(png.get_ref())?))
    }

    /// Renames every file to its final name; if one fails, those already renamed are removed.
    pub fn commit(self) -> Result<()> {
        let mut done: Vec<PathBuf> = Vec::new();
        for (file, path) in self.files {
            if let Err(err) = file.persist(&path) {
                for renamed in &done {
                    let _ = std::fs::remove_file(renamed);
                }
                return Err(err.error).with_context(|| format!("{}: cannot write", path.display()));
            }
            done.push(path);
        }
        Ok(())
    }
}
