//! Scheduled backups: one at each firing of `backup.schedule`, named by time in
//! `backup.dir`, recorded in the store (the backup metrics read the record, whichever
//! process took the backup), and those past `backup.retention` deleted.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use flotilla_spec::BackupConfig;
use flotilla_spec::schedule::Schedule;
use flotilla_spec::storage::Backend;
use flotilla_store::backup::files;
use flotilla_store::{BackupRecord, Store};

use crate::metrics::Metrics;
use crate::shared::Shared;

/// A backup taken.
#[derive(Debug)]
pub struct Taken {
    /// The file written.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// How long it took.
    pub took: Duration,
    /// Older backups deleted after it.
    pub pruned: Vec<PathBuf>,
}

/// Takes one backup of the store at `url` into `cfg.dir` now, records it, and deletes the
/// backups past `cfg.retention`. A failure is recorded too, and returned as its message.
pub async fn take(store: &dyn Store, url: &str, cfg: &BackupConfig) -> Result<Taken, String> {
    let started_at = crate::now_ms();
    let started = Instant::now();
    let postgres = Backend::of(url).is_ok_and(|b| b.is_shared());
    let file = cfg.dir.join(files::name(started_at, postgres));
    let written = async {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| format!("creating {}: {e}", cfg.dir.display()))?;
        flotilla_store::backup::backup(url, &file)
            .await
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        std::fs::metadata(&file)
            .map(|m| m.len())
            .map_err(|e| format!("reading {}: {e}", file.display()))
    }
    .await;
    let record = BackupRecord {
        started_at,
        finished_at: crate::now_ms(),
        file: file.display().to_string(),
        bytes: *written.as_ref().unwrap_or(&0),
        error: written.as_ref().err().cloned(),
    };
    if let Err(e) = store.record_backup(&record).await {
        tracing::warn!(error = %e, "the backup's outcome could not be recorded in the store");
    }
    let bytes = written?;
    let pruned = match cfg.retention {
        Some(keep) => files::prune(&cfg.dir, keep.0, crate::now_ms())
            .map_err(|e| format!("pruning {}: {e}", cfg.dir.display()))?,
        None => Vec::new(),
    };
    Ok(Taken {
        file,
        bytes,
        took: started.elapsed(),
        pruned,
    })
}

/// Sets the backup metrics from what the store recorded.
pub async fn measure(store: &dyn Store, metrics: &Metrics) -> flotilla_store::Result<()> {
    let stats = store.backup_stats().await?;
    if let Some(at) = stats.last_success_at {
        metrics.backup_last_success.set(at as f64 / 1000.0);
    }
    if let Some(ms) = stats.last_duration_ms {
        metrics.backup_duration.set(ms as f64 / 1000.0);
    }
    let seen = metrics.backup_failures.get();
    if stats.failures > seen {
        metrics.backup_failures.inc_by(stats.failures - seen);
    }
    Ok(())
}

/// Takes a backup, logs how it went and updates the metrics.
pub async fn scheduled_once(store: &dyn Store, url: &str, cfg: &BackupConfig, metrics: &Metrics) {
    match take(store, url, cfg).await {
        Ok(t) => tracing::info!(
            file = %t.file.display(),
            bytes = t.bytes,
            took_ms = t.took.as_millis() as u64,
            pruned = t.pruned.len(),
            "scheduled backup taken"
        ),
        Err(e) => tracing::error!(error = %e, "scheduled backup failed"),
    }
    if let Err(e) = measure(store, metrics).await {
        tracing::debug!(error = %e, "reading the backup records failed");
    }
}

/// Waits for the schedule's next firing; `None` when it never fires again.
pub async fn next_firing(schedule: &Schedule) -> Option<()> {
    let now = crate::now_ms();
    let at = schedule.next_after(now)?;
    tokio::time::sleep(Duration::from_millis(u64::try_from(at - now).unwrap_or(0))).await;
    Some(())
}

/// The server's schedule (SQLite: one process owns the file, so it takes the backups).
/// Ends when the engine is dropped.
pub(crate) fn start(shared: Weak<Shared>, schedule: Schedule) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while next_firing(&schedule).await.is_some() {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let config = Arc::clone(&shared.config);
            scheduled_once(
                &*shared.env.store,
                &config.storage.url,
                &config.backup,
                &shared.env.metrics,
            )
            .await;
        }
    })
}
