//! Every output of this project is written whole or not at all: into a temporary file beside
//! its destination (same directory, so the final rename is atomic), renamed by
//! [`NamedTempFile::persist`] when complete, and removed if it is dropped before that. A
//! process killed outright (SIGKILL, a node lost) leaves its temporary files behind; they are
//! named after their destination (`.NAME.partial-XXXXXX`), and [`beside`] removes them when
//! the same output is written again.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use tempfile::NamedTempFile;

/// `println!` for what a program reports on stdout, which a reader may close early
/// (`infer ... | head`): a closed or failing stdout loses the line, where `println!` would
/// panic. The files a program writes are checked; these lines are only its account of them.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A temporary file in the directory of `destination`, with the permissions an ordinary new
/// file gets (0666 less the umask; tempfile's default, 0600, would carry over the rename).
///
/// What an earlier, killed process left of `destination` (its temporary files) goes first:
/// only one process may write a given destination at a time.
pub fn beside(destination: &Path) -> io::Result<NamedTempFile> {
    sweep(destination)?;
    tempfile::Builder::new()
        .prefix(&partial_prefix(destination))
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(folder_of(destination))
}

/// Removes the temporary files of `destination` in its folder.
fn sweep(destination: &Path) -> io::Result<()> {
    let prefix = partial_prefix(destination);
    let entries = match std::fs::read_dir(folder_of(destination)) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// `.NAME.partial-`: hidden, and naming the output it will become.
fn partial_prefix(destination: &Path) -> String {
    let name = destination
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    format!(".{name}.partial-")
}

fn folder_of(destination: &Path) -> &Path {
    destination
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
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

    /// A killed process's temporary file of `a.txt` is swept when `a.txt` is written again;
    /// `b.txt`'s is not.
    #[test]
    fn writing_again_removes_only_the_destinations_own_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        let (left_a, left_b) = (beside(&a).unwrap(), beside(&b).unwrap());
        // As SIGKILL leaves them: on disk, never removed.
        let (_, left_a) = left_a.keep().unwrap();
        let (_, left_b) = left_b.keep().unwrap();
        let again = beside(&a).unwrap();
        assert!(!left_a.exists());
        assert!(left_b.exists());
        assert!(again.path().exists());
        sweep(&dir.path().join("missing/c.txt")).unwrap();
    }
}
