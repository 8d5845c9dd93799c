//! The write connection and its group commit: the writer thread, and callers that commit
//! on their own thread while commits come one at a time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::record::{BackupRecord, CreateOutcome, MoveRuns, NewRun, PruneRule, Write, usage_json};
use crate::{Result, StoreError};

/// Work for the writer.
pub(crate) enum Job {
    Create(Box<NewRun>, oneshot::Sender<Result<CreateOutcome>>),
    Move(Box<MoveRuns>, oneshot::Sender<Result<Vec<String>>>),
    Commit(Vec<Write>, Option<oneshot::Sender<Result<()>>>),
    Migrate(oneshot::Sender<Result<()>>),
    /// A write of this many bytes (one row of `write_probe`), to learn whether writes work
    /// again.
    Probe(usize, oneshot::Sender<Result<()>>),
    /// Delete up to this many finished runs a rule matches, then give freed pages back.
    Prune(Box<PruneRule>, u32, oneshot::Sender<Result<u64>>),
    /// Record a backup's outcome.
    Backup(Box<BackupRecord>, oneshot::Sender<Result<()>>),
    /// The write connection's journal mode and `synchronous` level.
    Pragmas(oneshot::Sender<Result<(String, i64)>>),
}

/// The last commit's error while commits fail (a full disk, a read-only file), `None` once
/// one succeeds: readiness reports it, so traffic moves elsewhere until writes work again.
pub(crate) type WriteHealth = std::sync::Arc<std::sync::Mutex<Option<Failing>>>;

/// Why writes fail, and the size of the largest write that failed: readiness comes back
/// only when a write that large fits again.
#[derive(Debug, Clone)]
pub(crate) struct Failing {
    pub error: String,
    pub bytes: usize,
}

/// Roughly how many bytes a new run writes (its JSON and definition).
fn size_of_run(run: &NewRun) -> usize {
    run.input.to_string().len()
        + run.metadata.to_string().len()
        + run.definition.as_ref().map_or(0, String::len)
}

/// Roughly how many bytes a batch of writes writes.
fn size_of_writes(writes: &[Write]) -> usize {
    writes
        .iter()
        .map(|w| match w {
            Write::Step { step, .. } => {
                step.output.as_ref().map_or(0, |o| o.to_string().len()) + 256
            }
            Write::Run { output, .. } => output.as_ref().map_or(0, |o| o.to_string().len()) + 64,
            Write::Event(e) => e.data.to_string().len() + 64,
            _ => 64,
        })
        .sum()
}

/// Most jobs folded into one transaction; bounds the latency of the first waiter.
const MAX_BATCH: usize = 2048;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_leases.sql")),
    (3, include_str!("../../migrations/sqlite/0003_usage.sql")),
    (4, include_str!("../../migrations/sqlite/0004_version.sql")),
    (
        5,
        include_str!("../../migrations/sqlite/0005_status_index.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_retention.sql"),
    ),
    (7, include_str!("../../migrations/sqlite/0007_backups.sql")),
];

/// The write connection and the jobs waiting for it. The writer thread takes queued jobs
/// in batches (group commit); while commits come one at a time, a caller that finds nothing
/// else queued and the connection free commits its own job at once on its own thread
/// ([`Writer::lead`]): a sequential workflow's commits then cost no thread hand-off and no
/// wake-up, each of which costs about as much as the commit itself on a small VM. Once
/// commits arrive together, they go to the writer thread, which batches them.
pub(crate) struct Writer {
    queue: Mutex<Queue>,
    more: Condvar,
    conn: Mutex<Connection>,
    health: WriteHealth,
    /// Jobs in the latest batch committed.
    last_batch: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The writer thread waits for jobs (and must be woken).
    idle: bool,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    pub(crate) fn new(conn: Connection, health: WriteHealth) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            more: Condvar::new(),
            conn: Mutex::new(conn),
            health,
            last_batch: AtomicUsize::new(0),
        }
    }

    /// Queues `job` for the writer thread.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        let (_, idle) = self.push(job)?;
        self.wake(idle);
        Ok(())
    }

    /// Queues `job` and, when it is the only one queued, the latest batch held one job and
    /// the connection is free, commits it on this thread before returning (its reply is then
    /// ready); otherwise the writer thread takes it with the others. Meant for callers that
    /// wait for the reply anyway.
    pub(crate) fn lead(&self, job: Job) -> Result<()> {
        let (queued, idle) = self.push(job)?;
        if queued == 1
            && self.last_batch.load(Ordering::Relaxed) <= 1
            && let Ok(mut conn) = self.conn.try_lock()
        {
            self.commit(&mut conn, &mut Vec::new());
            return Ok(());
        }
        self.wake(idle);
        Ok(())
    }

    /// Queues `job`; returns how many are queued with it and whether the writer thread
    /// waits for work.
    fn push(&self, job: Job) -> Result<(usize, bool)> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(StoreError::Closed);
        }
        q.jobs.push_back(job);
        Ok((q.jobs.len(), q.idle))
    }

    /// Wakes the writer thread if it was waiting when the job was queued (it sets `idle`
    /// under the queue's lock and waits without letting go of it in between, so a job
    /// queued before it waits is seen, and one queued after finds it idle).
    fn wake(&self, idle: bool) {
        if idle {
            self.more.notify_one();
        }
    }

    /// Moves up to [`MAX_BATCH`] queued jobs into `batch`.
    fn take(&self, batch: &mut Vec<Job>) {
        let mut q = lock(&self.queue);
        let n = q.jobs.len().min(MAX_BATCH);
        batch.extend(q.jobs.drain(..n));
    }

    /// The writer thread: commits what is queued, in batches, until closed and drained.
    pub(crate) fn run(&self) {
        let mut batch = Vec::with_capacity(64);
        loop {
            {
                let mut q = lock(&self.queue);
                while q.jobs.is_empty() {
                    if q.closed {
                        return;
                    }
                    q.idle = true;
                    q = self.more.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.idle = false;
                }
            }
            self.commit(&mut lock(&self.conn), &mut batch);
        }
    }

    /// Commits what is queued (up to [`MAX_BATCH`] jobs) on `conn`.
    fn commit(&self, conn: &mut Connection, batch: &mut Vec<Job>) {
        self.take(batch);
        if !batch.is_empty() {
            self.last_batch.store(batch.len(), Ordering::Relaxed);
            process(conn, batch, &self.health);
        }
    }

    /// Refuses new jobs; the writer thread commits those queued, then ends.
    pub(crate) fn close(&self) {
        lock(&self.queue).closed = true;
        self.more.notify_all();
    }
}

enum Reply {
    Create(
        oneshot::Sender<Result<CreateOutcome>>,
        Result<CreateOutcome>,
    ),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Ids(oneshot::Sender<Result<Vec<String>>>, Result<Vec<String>>),
    Count(oneshot::Sender<Result<u64>>, Result<u64>),
}

/// Whether a job failed because the database cannot be written (a full disk, an I/O error,
/// a read-only file) rather than because of what it wrote: the store is then unhealthy even
/// if the batch's transaction commits (a large insert can fail alone, as its pages spill).
fn storage_failure<T>(r: &Result<T>) -> Option<String> {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    match r {
        Err(e @ StoreError::Database(rusqlite::Error::SqliteFailure(f, _)))
            if matches!(f.code, DiskFull | SystemIoFailure | ReadOnly | CannotOpen) =>
        {
            Some(e.to_string())
        }
        _ => None,
    }
}

fn process(conn: &mut Connection, batch: &mut Vec<Job>, health: &WriteHealth) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut failing: Option<Failing> = None;
    let mut failed = |error: Option<String>, bytes: usize| {
        if let Some(error) = error {
            let bytes = bytes.max(failing.as_ref().map_or(0, |f| f.bytes));
            failing = Some(Failing { error, bytes });
        }
    };
    let outcome = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in batch.drain(..) {
            match job {
                Job::Create(run, reply) => {
                    let r = savepoint(&tx, |tx| create(tx, &run));
                    failed(storage_failure(&r), size_of_run(&run));
                    replies.push(Reply::Create(reply, r));
                }
                Job::Move(m, reply) => {
                    let r = savepoint(&tx, |tx| move_runs(tx, &m));
                    replies.push(Reply::Ids(reply, r));
                }
                Job::Commit(writes, reply) => {
                    let r = savepoint(&tx, |tx| apply(tx, &writes));
                    failed(storage_failure(&r), size_of_writes(&writes));
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "store write failed");
                    }
                    if let Some(reply) = reply {
                        replies.push(Reply::Unit(reply, r));
                    }
                }
                Job::Prune(rule, limit, reply) => {
                    let r = savepoint(&tx, |tx| prune(tx, &rule, limit));
                    replies.push(Reply::Count(reply, r));
                }
                Job::Backup(b, reply) => {
                    let r = savepoint(&tx, |tx| {
                        tx.prepare_cached(
                            "INSERT INTO backups (started_at, finished_at, file, bytes, error) VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![b.started_at, b.finished_at, b.file, b.bytes as i64, b.error])?;
                        Ok(())
                    });
                    replies.push(Reply::Unit(reply, r));
                }
                Job::Migrate(reply) => {
                    let r = savepoint(&tx, migrate);
                    replies.push(Reply::Unit(reply, r));
                }
                Job::Pragmas(reply) => {
                    let read = || -> rusqlite::Result<(String, i64)> {
                        let mode = tx.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                        let sync = tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                        Ok((mode, sync))
                    };
                    let _ = reply.send(read().map_err(StoreError::from));
                }
                Job::Probe(bytes, reply) => {
                    // Twice the largest write that failed (256 KiB at least): a failed write
                    // grew the WAL before it ran out of room, and the next transaction
                    // reuses that space, so a probe no larger than the failed write fits
                    // while the write itself still would not.
                    let r = savepoint(&tx, |tx| {
                        tx.execute_batch(
                            "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, data BLOB);",
                        )?;
                        tx.execute(
                            "INSERT OR REPLACE INTO write_probe (id, data) VALUES (1, randomblob(?1))",
                            [i64::try_from(bytes.saturating_mul(2).max(262_144)).unwrap_or(i64::MAX)],
                        )?;
                        Ok(())
                    });
                    replies.push(Reply::Unit(reply, r));
                }
            }
        }
        tx.commit()
    })();
    // Health first, replies after: a caller told its write failed must find the store
    // unhealthy when it asks next.
    let result = match &outcome {
        Err(e) => {
            tracing::error!(error = %e, "store commit failed");
            Err(Failing {
                error: e.to_string(),
                bytes: failing.map_or(0, |f| f.bytes),
            })
        }
        Ok(()) => failing.map_or(Ok(()), Err),
    };
    *health.lock().unwrap_or_else(|e| e.into_inner()) = result.err();
    for reply in replies {
        match (reply, &outcome) {
            (Reply::Create(tx, r), Ok(())) => drop(tx.send(r)),
            (Reply::Unit(tx, r), Ok(())) => drop(tx.send(r)),
            (Reply::Create(tx, _), Err(e)) => drop(tx.send(Err(commit_error(e)))),
            (Reply::Unit(tx, _), Err(e)) => drop(tx.send(Err(commit_error(e)))),
            (Reply::Ids(tx, r), Ok(())) => drop(tx.send(r)),
            (Reply::Ids(tx, _), Err(e)) => drop(tx.send(Err(commit_error(e)))),
            (Reply::Count(tx, r), Ok(())) => drop(tx.send(r)),
            (Reply::Count(tx, _), Err(e)) => drop(tx.send(Err(commit_error(e)))),
        }
    }
}

fn commit_error(e: &rusqlite::Error) -> StoreError {
    StoreError::Corrupt(format!("commit failed: {e}"))
}

/// Runs `f` inside a savepoint so that one failing job does not undo the others.
fn savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    tx.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(tx) {
        Ok(v) => {
            tx.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(e)
        }
    }
}

fn migrate(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS {
        if *version > current {
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
            tracing::info!(version, "applied sqlite migration");
        }
    }
    Ok(())
}

fn create(tx: &rusqlite::Transaction<'_>, run: &NewRun) -> Result<CreateOutcome> {
    if let Some(key) = &run.idempotency_key {
        let existing: Option<String> = tx
            .prepare_cached("SELECT id FROM runs WHERE idempotency_key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(CreateOutcome::Existing(id));
        }
    }
    if let Some(definition) = &run.definition {
        tx.prepare_cached(
            "INSERT INTO definitions (hash, workflow, body, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(hash) DO NOTHING",
        )?
        .execute(params![
            run.definition_hash,
            run.workflow,
            definition,
            run.created_at
        ])?;
    }
    tx.prepare_cached(
        "INSERT INTO runs (id, kind, workflow, definition_hash, status, priority, input, metadata,
                           idempotency_key, created_at, updated_at, deadline_at, owner, lease_until, version)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        run.id,
        run.kind.as_str(),
        run.workflow,
        run.definition_hash,
        run.priority,
        run.input.to_string(),
        run.metadata.to_string(),
        run.idempotency_key,
        run.created_at,
        run.deadline_at,
        run.owner,
        run.lease_until,
        run.version,
    ])?;
    Ok(CreateOutcome::Created)
}

fn move_runs(tx: &rusqlite::Transaction<'_>, m: &MoveRuns) -> Result<Vec<String>> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO definitions (hash, workflow, body, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![m.to_hash, m.workflow, m.body, m.at])?;
    let mut stmt = tx.prepare_cached(
        "UPDATE runs SET definition_hash = ?2, updated_at = ?3
         WHERE definition_hash = ?1 AND status IN ('queued', 'running') RETURNING id",
    )?;
    let ids = stmt.query_map(params![m.from_hash, m.to_hash, m.at], |r| r.get(0))?;
    Ok(ids.collect::<rusqlite::Result<Vec<String>>>()?)
}

/// The runs a [`PruneRule`] matches (parameters: status, finished before, only this
/// workflow or NULL, a JSON array of workflows left out), oldest first.
pub(crate) const PRUNABLE: &str = "FROM runs WHERE status = ?1 AND finished_at < ?2
       AND (?3 IS NULL OR workflow = ?3) AND workflow NOT IN (SELECT value FROM json_each(?4))";

/// A rule's parameters in [`PRUNABLE`]'s order.
pub(crate) fn prunable_params(rule: &PruneRule) -> (&'static str, i64, Option<&str>, String) {
    use crate::record::WorkflowMatch;
    let (only, except) = match &rule.workflows {
        WorkflowMatch::All => (None, "[]".to_owned()),
        WorkflowMatch::Only(w) => (Some(w.as_str()), "[]".to_owned()),
        WorkflowMatch::Except(ws) => (None, serde_json::to_string(ws).unwrap_or_default()),
    };
    (rule.status.as_str(), rule.finished_before, only, except)
}

/// Pages handed back to the file system after each prune batch (4 KiB each).
const VACUUM_PAGES: u32 = 4096;

fn prune(tx: &rusqlite::Transaction<'_>, rule: &PruneRule, limit: u32) -> Result<u64> {
    if !rule.status.is_terminal() {
        return Ok(0);
    }
    let (status, before, only, except) = prunable_params(rule);
    let ids: Vec<String> = tx
        .prepare_cached(&format!(
            "SELECT id {PRUNABLE} ORDER BY finished_at LIMIT ?5"
        ))?
        .query_map(params![status, before, only, except, limit], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        tx.prepare_cached("DELETE FROM events WHERE run_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM steps WHERE run_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM runs WHERE id = ?1")?
            .execute([id])?;
    }
    if !ids.is_empty() {
        // With incremental auto-vacuum, free pages go back to the file system (the file
        // shrinks at the next checkpoint); without it this does nothing.
        // Each step of the pragma frees one page: step it to the end.
        let mut vacuum =
            tx.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
        let mut steps = vacuum.raw_query();
        while steps.next()?.is_some() {}
    }
    Ok(ids.len() as u64)
}

fn apply(tx: &rusqlite::Transaction<'_>, writes: &[Write]) -> Result<()> {
    for w in writes {
        match w {
            Write::Step { run_id, step } => {
                tx.prepare_cached(
                    "INSERT INTO steps (run_id, step_id, status, attempts, output, error, started_at, finished_at, agent, usage)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT(run_id, step_id) DO UPDATE SET status = excluded.status,
                       attempts = excluded.attempts, output = excluded.output, error = excluded.error,
                       started_at = excluded.started_at, finished_at = excluded.finished_at,
                       agent = excluded.agent, usage = excluded.usage
                     WHERE steps.status IN ('pending', 'running')
                        OR (steps.status = 'succeeded' AND excluded.status IN ('succeeded', 'compensated'))",
                )?
                .execute(params![
                    run_id,
                    step.step_id,
                    step.status.as_str(),
                    step.attempts,
                    step.output.as_ref().map(|v| v.to_string()),
                    step.error,
                    step.started_at,
                    step.finished_at,
                    step.agent,
                    step.usage.map(|u| usage_json(&u)),
                ])?;
            }
            Write::Run {
                run_id,
                status,
                output,
                error,
                at,
            } => {
                let finished = status.is_terminal().then_some(*at);
                tx.prepare_cached(
                    "UPDATE runs SET status = ?2, output = COALESCE(?3, output), error = COALESCE(?4, error),
                       updated_at = ?5, finished_at = COALESCE(?6, finished_at)
                     WHERE id = ?1 AND status IN ('queued', 'running')",
                )?
                .execute(params![
                    run_id,
                    status.as_str(),
                    output.as_ref().map(|v| v.to_string()),
                    error,
                    at,
                    finished,
                ])?;
            }
            Write::Event(ev) => {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO events (run_id, seq, at, kind, step_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![ev.run_id, ev.seq, ev.at, ev.kind.as_str(), ev.step_id, ev.data.to_string()])?;
            }
            // One process owns the database (its lock file says so): nobody to fence off.
            Write::Fence { .. } => {}
        }
    }
    Ok(())
}
