//! flotilla-deploy: artifacts generated from one configuration, byte for byte the same for
//! the same input.
//!
//! [`monitoring::Bundle`] is the monitoring bundle of `flotilla monitoring generate`:
//! `prometheus.yml`, the alert rules, a Grafana dashboard and one runbook per alert.
//! [`write_files`] writes any such set of files into a directory, refusing to overwrite a
//! non-empty one unless forced.
//!
//! ```
//! let files = flotilla_deploy::monitoring::Bundle::default().files();
//! assert!(files.iter().any(|f| f.path == "alerts.yml"));
//! ```

pub mod generate;
pub mod monitoring;

use std::path::{Path, PathBuf};

/// One generated file: a path relative to the output directory, and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative path with `/` separators.
    pub path: String,
    /// Contents.
    pub contents: String,
}

impl File {
    /// A file at `path` holding `contents`.
    pub fn new(path: impl Into<String>, contents: impl Into<String>) -> File {
        File {
            path: path.into(),
            contents: contents.into(),
        }
    }
}

/// Why files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The directory holds files and `force` was not given.
    #[error("{0} is not empty; pass --force to overwrite what is there")]
    NotEmpty(PathBuf),
    /// The file system refused.
    #[error("cannot write {path}: {cause}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause, told in the message (not as a source, which would tell it twice).
        cause: std::io::Error,
    },
}

/// Writes `files` under `dir` (created if missing). A non-empty `dir` is refused unless
/// `force`; with `force`, files of the same name are replaced and others left alone.
pub fn write_files(dir: &Path, files: &[File], force: bool) -> Result<(), WriteError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |cause| WriteError::Io { path, cause }
    };
    if !force
        && let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(WriteError::NotEmpty(dir.to_owned()));
    }
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, &f.contents).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_non_empty_directory_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let files = [File::new("a/b.txt", "one")];
        write_files(dir.path(), &files, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(),
            "one"
        );
        let again = [File::new("a/b.txt", "two")];
        let err = write_files(dir.path(), &again, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        write_files(dir.path(), &again, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(),
            "two"
        );
    }
}
