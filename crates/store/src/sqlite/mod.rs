//! SQLite backend: WAL, one writer thread with group commit, a small pool of readers,
//! and a lock file so that only one process uses a database at a time.

mod read;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::record::{
    BackupRecord, BackupStats, Claimed, CreateOutcome, EventRecord, MoveRuns, NewRun, PruneRule,
    RunQuery, RunRecord, RunSummary, StatusCounts, VersionFilter, Write,
};
use crate::{Result, Store, StoreError};
use writer::Job;

/// How the SQLite store is opened.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    /// fsync every commit (`synchronous=FULL`); `false` trades power-loss safety for speed.
    pub durable: bool,
    /// Read connections kept open.
    pub read_pool: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durable: true,
            read_pool: 4,
        }
    }
}

/// The SQLite [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    jobs: Arc<writer::Writer>,
    write_health: writer::WriteHealth,
    writer: Option<JoinHandle<()>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    options: SqliteOptions,
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The lock that keeps a database to one process is held by another one.
pub(crate) struct Held(pub PathBuf);

/// Takes the lock that keeps a database to one process; it is held while the file lives.
pub(crate) fn take_lock(db: &Path) -> Result<std::result::Result<File, Held>> {
    let lock_path = PathBuf::from(format!("{}.lock", db.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    Ok(match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(_) => Err(Held(lock_path)),
    })
}

/// `sqlite://flotilla.db`, `sqlite:///abs/path.db`, `sqlite:flotilla.db` → a path.
fn path_from_url(url: &str) -> Result<PathBuf> {
    match flotilla_spec::storage::Backend::of(url) {
        Ok(flotilla_spec::storage::Backend::Sqlite(path)) => Ok(path),
        Ok(flotilla_spec::storage::Backend::Postgres) => Err(StoreError::Url(format!(
            "{}: not a SQLite URL",
            flotilla_spec::redact::redact_url(url)
        ))),
        Err(e) => Err(StoreError::Url(format!(
            "{}: {e}",
            flotilla_spec::redact::redact_url(url)
        ))),
    }
}

fn open_conn(path: &Path, durable: bool) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A WAL grown by a burst (or a large prune) is cut back to this at the next checkpoint.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Puts the database in incremental auto-vacuum, so that pages freed by retention go back to
/// the file system: rebuilt once (`VACUUM`: instant on a new database, about a second per
/// 100 MB on an older one, with as much free disk space as the file takes).
fn incremental_vacuum(conn: &Connection, path: &Path) -> Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    if tables > 0 {
        tracing::info!(
            file = %path.display(),
            "rebuilding the database once for incremental auto-vacuum (pruned runs then shrink the file)"
        );
    }
    // The mode changes only through a rebuild once the file has a header (WAL mode wrote
    // one); on a new database the rebuild is instant.
    conn.execute_batch("VACUUM")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at a `sqlite://` URL and takes its lock.
    pub async fn open(url: &str, options: SqliteOptions) -> Result<Self> {
        let path = path_from_url(url)?;
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    fn open_blocking(path: PathBuf, options: SqliteOptions) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = take_lock(&path)?.map_err(|Held(held)| {
            StoreError::Locked(format!(
                "database {} is in use by another flotilla process (lock {} is held); \
                 SQLite serves one process: stop the other one, or use PostgreSQL for several replicas",
                path.display(),
                held.display()
            ))
        })?;
        let conn = open_conn(&path, options.durable)?;
        incremental_vacuum(&conn, &path)?;
        let write_health = writer::WriteHealth::default();
        let jobs = Arc::new(writer::Writer::new(conn, write_health.clone()));
        let thread = jobs.clone();
        let writer = std::thread::Builder::new()
            .name("flotilla-sqlite-writer".into())
            .spawn(move || thread.run())?;
        Ok(Self {
            write_health,
            path,
            jobs,
            writer: Some(writer),
            readers: Arc::new(Mutex::new(Vec::new())),
            options,
            _lock: lock,
        })
    }

    /// The write connection's journal mode and `synchronous` level (2 = FULL: every commit
    /// is fsynced; 1 = NORMAL: the WAL is synced at checkpoints), as it runs.
    pub async fn write_pragmas(&self) -> Result<(String, i64)> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Pragmas(tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs.submit(job)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let durable = self.options.durable;
        let keep = self.options.read_pool.max(1);
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().map_err(|_| StoreError::Closed)?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&path, durable)?,
            };
            let out = f(&conn);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < keep
            {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing lets the writer finish what is queued; waiting for it makes every
        // enqueued write durable before the lock is released.
        self.jobs.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Migrate(tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn create_run(&self, run: NewRun) -> Result<CreateOutcome> {
        let (tx, rx) = oneshot::channel();
        self.jobs.lead(Job::Create(Box::new(run), tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.jobs.lead(Job::Commit(writes, Some(tx)))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn enqueue(&self, writes: Vec<Write>) {
        if self.send(Job::Commit(writes, None)).is_err() {
            tracing::warn!("store closed; a non-critical write was dropped");
        }
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        let id = id.to_owned();
        self.read(move |c| read::run(c, &id)).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunSummary>> {
        let q = query.clone();
        self.read(move |c| read::list(c, &q)).await
    }

    async fn count_runs(&self, query: &RunQuery) -> Result<StatusCounts> {
        let q = query.clone();
        self.read(move |c| read::count(c, &q)).await
    }

    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        self.read(read::unfinished).await
    }

    async fn definition(&self, hash: &str) -> Result<Option<String>> {
        let hash = hash.to_owned();
        self.read(move |c| read::definition(c, &hash)).await
    }

    async fn events(&self, run_id: &str, after_seq: i64) -> Result<Vec<EventRecord>> {
        let id = run_id.to_owned();
        self.read(move |c| read::events(c, &id, after_seq)).await
    }

    /// Reads answer, and writes too: after a failed commit, a probe write must succeed
    /// before the store counts as healthy again.
    async fn ping(&self) -> Result<()> {
        self.read(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
        .await?;
        let failing = self
            .write_health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(failing) = failing {
            let (tx, rx) = oneshot::channel();
            self.send(Job::Probe(failing.bytes, tx))?;
            if rx.await.map_err(|_| StoreError::Closed)?.is_err() {
                return Err(StoreError::Unavailable(format!(
                    "writes are failing: {}",
                    failing.error
                )));
            }
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        false
    }

    /// One process holds the database (its lock file says so): every unfinished run is its own.
    async fn claim_runs(
        &self,
        _owner: &str,
        _now: i64,
        _lease_until: i64,
        _limit: u32,
        _versions: VersionFilter<'_>,
    ) -> Result<Vec<Claimed>> {
        // One process owns this database: no other holder exists to fence off.
        Ok(self
            .unfinished_runs()
            .await?
            .into_iter()
            .map(|run| Claimed { run, epoch: 0 })
            .collect())
    }

    async fn renew_leases(
        &self,
        _owner: &str,
        ids: &[String],
        _lease_until: i64,
    ) -> Result<Vec<String>> {
        Ok(ids.to_vec())
    }

    async fn release_leases(&self, _owner: &str) -> Result<()> {
        Ok(())
    }

    async fn runs_on_definition(&self, hash: &str) -> Result<Vec<(String, String)>> {
        let hash = hash.to_owned();
        self.read(move |c| read::on_definition(c, &hash)).await
    }

    async fn move_runs(&self, m: MoveRuns) -> Result<Vec<String>> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Move(Box::new(m), tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn prune(&self, rule: &PruneRule, limit: u32) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Prune(Box::new(rule.clone()), limit, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn count_prunable(&self, rule: &PruneRule) -> Result<u64> {
        let rule = rule.clone();
        self.read(move |c| {
            let (status, before, only, except) = writer::prunable_params(&rule);
            let n: i64 = c
                .prepare_cached(&format!("SELECT count(*) {}", writer::PRUNABLE))?
                .query_row(rusqlite::params![status, before, only, except], |r| {
                    r.get(0)
                })?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_backup(&self, backup: &BackupRecord) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Backup(Box::new(backup.clone()), tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn backup_stats(&self) -> Result<BackupStats> {
        self.read(|c| {
            let last: Option<(i64, i64)> = c
                .prepare_cached(
                    "SELECT finished_at, finished_at - started_at FROM backups WHERE error IS NULL
                     ORDER BY finished_at DESC LIMIT 1",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let failures: i64 = c
                .prepare_cached("SELECT count(*) FROM backups WHERE error IS NOT NULL")?
                .query_row([], |r| r.get(0))?;
            Ok(BackupStats {
                last_success_at: last.map(|l| l.0),
                last_duration_ms: last.map(|l| l.1),
                failures: failures as u64,
            })
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64> {
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        Ok(len(&self.path) + len(&wal))
    }
}
