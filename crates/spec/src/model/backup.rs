//! `backup:` scheduled backups of the store, and how long they are kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::Dur;

/// `backup:`. On SQLite, `serve` takes the backups itself; on PostgreSQL the generated
/// CronJob (or compose service) runs `flotilla backup scheduled`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Whether scheduled backups run (when `schedule` is set).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When, as cron in UTC: `0 2 * * *` (02:00 daily), or six fields with seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Backups older than this are deleted after each new one (the newest always stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Dur>,
    /// Where backups are written, named by time (`flotilla-20261201T020000Z.db`).
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
}

fn yes() -> bool {
    true
}

fn default_dir() -> PathBuf {
    PathBuf::from("backups")
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            enabled: true,
            schedule: None,
            retention: None,
            dir: default_dir(),
        }
    }
}

impl BackupConfig {
    /// Whether backups run on a schedule.
    pub fn scheduled(&self) -> bool {
        self.enabled && self.schedule.is_some()
    }
}
