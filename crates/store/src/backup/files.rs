//! Scheduled backups on disk: named by the time they were taken, listed, and pruned past
//! their retention (the newest always stays).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A backup file in the backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Where it is.
    pub path: PathBuf,
    /// When it was taken, unix milliseconds (from its name).
    pub taken_at: i64,
    /// Its size.
    pub bytes: u64,
}

/// The file name of a backup taken at `ms`: `flotilla-20261201T020000Z.db` (SQLite) or
/// `.dump` (PostgreSQL's `pg_dump` archive).
pub fn name(ms: i64, postgres: bool) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let stamp: String = humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("flotilla-{stamp}.{}", if postgres { "dump" } else { "db" })
}

/// When a backup named as [`name`] writes was taken; `None` for any other file.
fn taken_at(file: &str) -> Option<i64> {
    let stamp = file
        .strip_prefix("flotilla-")?
        .strip_suffix(".db")
        .or_else(|| file.strip_prefix("flotilla-")?.strip_suffix(".dump"))?;
    // 20261201T020000Z → 2026-12-01T02:00:00Z
    let b = stamp.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    let t = humantime::parse_rfc3339(&text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// The backups in `dir`, oldest first (a directory that does not exist holds none).
pub fn list(dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(at) = entry.file_name().to_str().and_then(taken_at) else {
            continue;
        };
        out.push(BackupFile {
            path: entry.path(),
            taken_at: at,
            bytes: entry.metadata()?.len(),
        });
    }
    out.sort_by_key(|b| b.taken_at);
    Ok(out)
}

/// Deletes the backups in `dir` taken more than `keep` before `now` (unix milliseconds),
/// never the newest; returns what it deleted.
pub fn prune(dir: &Path, keep: Duration, now: i64) -> std::io::Result<Vec<PathBuf>> {
    let mut all = list(dir)?;
    all.pop(); // the newest stays, however old
    let cutoff = now.saturating_sub(keep.as_millis() as i64);
    let mut gone = Vec::new();
    for b in all.into_iter().filter(|b| b.taken_at < cutoff) {
        std::fs::remove_file(&b.path)?;
        gone.push(b.path);
    }
    Ok(gone)
}

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_pruning_keeps_the_newest() {
        let at = 1_796_090_400_000; // 2026-12-01T02:00:00Z
        assert_eq!(name(at, false), "flotilla-20261201T020000Z.db");
        assert_eq!(taken_at(&name(at, true)), Some(at));
        assert_eq!(taken_at("flotilla.db"), None);
        let dir = tempfile::tempdir().unwrap();
        for days in [0, 1, 2, 40] {
            std::fs::write(dir.path().join(name(at - days * 86_400_000, false)), "x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "kept").unwrap();
        let gone = prune(dir.path(), Duration::from_secs(30 * 86_400), at).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(list(dir.path()).unwrap().len(), 3);
        // Everything past retention, but the newest stays.
        prune(dir.path(), Duration::ZERO, at + 1).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        assert!(dir.path().join("notes.txt").exists());
    }
}
