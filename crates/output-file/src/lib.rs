//! Every output of this project is written whole or not at all: into a temporary file beside
//! its destination (same directory, so the final rename is atomic), renamed by
//! [`NamedTempFile::persist`] when complete, and removed if it is dropped before that.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use tempfile::NamedTempFile;

/// A temporary file in the directory of `destination`, with the permissions an ordinary new
/// file gets (0666 less the umask; tempfile's default, 0600, would carry over the rename).
pub fn beside(destination: &Path) -> io::Result<NamedTempFile> {
    let dir = destination
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".partial")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn complete_files_are_renamed_and_dropped_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.txt");
        let mut file = beside(&kept).unwrap();
        file.write_all(b"whole").unwrap();
        file.persist(&kept).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"whole");
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o044,
            0o044,
            "readable by others like any new file: {mode:o}"
        );

        drop(beside(&dir.path().join("dropped.txt")).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kept.txt"]);
    }
}
