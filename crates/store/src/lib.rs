//! flotilla-store: durable state behind one trait.
//!
//! [`Store`] is the boundary; [`SqliteStore`] implements it with one writer thread that owns
//! the write connection and group-commits: every change that arrives while a transaction is
//! committing goes into the next one, so one fsync covers many transitions and more
//! concurrency means more throughput, not more contention.
//!
//! ```no_run
//! # async fn demo() -> flotilla_store::Result<()> {
//! use flotilla_store::{SqliteStore, Store};
//! let store = SqliteStore::open("sqlite://flotilla.db", Default::default()).await?;
//! store.migrate().await?;
//! assert!(store.unfinished_runs().await?.is_empty());
//! # Ok(()) }
//! ```

pub mod backup;
mod postgres;
mod record;
mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use record::*;
pub use sqlite::{SqliteOptions, SqliteStore};

use async_trait::async_trait;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or used.
    #[error("database error: {0}")]
    Database(rusqlite::Error),
    /// Another process holds the database.
    #[error("{0}")]
    Locked(String),
    /// A URL flotilla cannot use.
    #[error("unsupported storage url: {0}")]
    Url(String),
    /// The store is shutting down or its writer stopped.
    #[error("the store is closed")]
    Closed,
    /// Stored data that does not parse.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A file operation (lock file, backup) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The operation was refused; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The database server cannot be reached or refused the operation.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A write under a lease that another replica has since taken over (a stale epoch);
    /// nothing of its batch was recorded.
    #[error("run {0} is held by another replica now; the write was refused")]
    Fenced(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // A column that does not parse as what flotilla stores is a corrupt record.
        if let rusqlite::Error::FromSqlConversionFailure(_, _, source) = &e
            && let Some(StoreError::Corrupt(what)) = source.downcast_ref::<StoreError>()
        {
            return StoreError::Corrupt(what.clone());
        }
        StoreError::Database(e)
    }
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable state of runs. Every method that writes returns only once the change is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Brings the schema up to date.
    async fn migrate(&self) -> Result<()>;
    /// Stores a new run (and its definition), or finds the run that used its idempotency key.
    async fn create_run(&self, run: NewRun) -> Result<CreateOutcome>;
    /// Applies changes and returns once they are committed.
    async fn commit(&self, writes: Vec<Write>) -> Result<()>;
    /// Queues changes behind every earlier one without waiting for their commit.
    fn enqueue(&self, writes: Vec<Write>);
    /// A run with its steps.
    async fn run(&self, id: &str) -> Result<Option<RunRecord>>;
    /// Runs, newest first.
    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunSummary>>;
    /// How many runs match `query`'s filters, per status (its status and cursor ignored).
    async fn count_runs(&self, query: &RunQuery) -> Result<StatusCounts>;
    /// Runs that are queued or running, with their steps.
    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>>;
    /// A pinned definition by hash.
    async fn definition(&self, hash: &str) -> Result<Option<String>>;
    /// Events of a run after `after_seq`, in order.
    async fn events(&self, run_id: &str, after_seq: i64) -> Result<Vec<EventRecord>>;
    /// Cheap check that the database answers.
    async fn ping(&self) -> Result<()>;
    /// A short name for logs and benchmarks (`sqlite`).
    fn backend(&self) -> &'static str;
    /// Whether several processes share this store, so that runs are held under leases.
    fn is_shared(&self) -> bool;
    /// Takes unfinished runs that nobody holds (no owner, or a lease expired before `now`)
    /// for `owner` until `lease_until`, at most `limit`; returns them with their steps and
    /// the new epoch each claim raised. Only runs whose version `versions` accepts are
    /// taken. A store one process owns returns every unfinished run at epoch 0 (it has no
    /// one else to leave them to) and never fences.
    async fn claim_runs(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
        versions: VersionFilter<'_>,
    ) -> Result<Vec<Claimed>>;
    /// Unfinished runs pinned to definition `hash`: (run id, workflow).
    async fn runs_on_definition(&self, hash: &str) -> Result<Vec<(String, String)>>;
    /// Moves the unfinished runs of `m.from_hash` to `m.to_hash`; returns their ids. On a
    /// shared store each moved run's epoch is raised and its lease released: whoever drives
    /// it is fenced off and stops, and a replica resumes it under the new definition.
    async fn move_runs(&self, m: MoveRuns) -> Result<Vec<String>>;
    /// Extends `owner`'s leases on `ids`; returns the ids it still holds.
    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<String>>;
    /// Gives up `owner`'s leases on unfinished runs, so that others take them at once.
    async fn release_leases(&self, owner: &str) -> Result<()>;
    /// Deletes up to `limit` finished runs that `rule` matches, oldest first, with their
    /// steps and events, in one short transaction; returns how many. A run in flight is
    /// never touched.
    async fn prune(&self, rule: &PruneRule, limit: u32) -> Result<u64>;
    /// How many finished runs `rule` matches (what a prune would delete).
    async fn count_prunable(&self, rule: &PruneRule) -> Result<u64>;
    /// The bytes the store takes on disk (SQLite: the database and its WAL; PostgreSQL:
    /// the database).
    async fn size_bytes(&self) -> Result<u64>;
    /// Records a backup's outcome.
    async fn record_backup(&self, backup: &BackupRecord) -> Result<()>;
    /// The latest successful backup and the failures.
    async fn backup_stats(&self) -> Result<BackupStats>;
    /// Resolves when another process signals runs to claim (leases released). A store that
    /// one process owns never signals.
    async fn work_available(&self) {
        std::future::pending::<()>().await
    }
}
