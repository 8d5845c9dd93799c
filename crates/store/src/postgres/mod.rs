//! PostgreSQL backend: any number of replicas share one database.
//!
//! Each commit is one statement on a pooled connection; commits that arrive while others
//! are in flight are merged into one (see `group`), and PostgreSQL's own group commit merges
//! the fsyncs of concurrent transactions. Writes that need not wait (a step's start)
//! go through one ordered background task. Migrations run under an advisory lock, so
//! replicas starting together apply them once.

mod group;
mod read;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::record::{
    BackupRecord, BackupStats, Claimed, CreateOutcome, EventRecord, MoveRuns, NewRun, PruneRule,
    RunQuery, RunRecord, RunSummary, StatusCounts, VersionFilter, WorkflowMatch, Write, usage_json,
};
use crate::{Result, Store, StoreError};

/// How the PostgreSQL store is opened.
#[derive(Debug, Clone, Copy)]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub pool_size: u32,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// The PostgreSQL [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    queued: mpsc::UnboundedSender<Vec<Write>>,
    /// Batches handed to the applier so far.
    sent: AtomicU64,
    /// Batches the applier has committed.
    applied: watch::Receiver<u64>,
    applier: tokio::task::JoinHandle<()>,
    /// Merges concurrent durable commits into one statement.
    committer: group::Committer,
    /// Woken by `NOTIFY flotilla_runs` from other replicas.
    wake: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
}

/// The channel replicas use to say that runs can be claimed.
const CHANNEL: &str = "flotilla_runs";

/// Listens on [`CHANNEL`] for as long as the store lives, reconnecting after outages.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
        };
        let err: sqlx::Error = match listening.await {
            Ok::<(), sqlx::Error>(()) => continue,
            Err(e) => e,
        };
        tracing::debug!(error = %err, retry_in = ?delay, "listening for released runs failed");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// Key of the advisory lock that serializes migrations across replicas.
const MIGRATION_LOCK: i64 = 0x666c_6f74_696c_6c61; // "flotilla"
/// Held (for a transaction) by the one replica pruning at a time.
const PRUNE_LOCK: i64 = 0x666c_6f74_7072_756e; // "flotprun"

/// The runs a [`PruneRule`] matches ($1 status, $2 finished before, $3 only this workflow or
/// NULL, $4 workflows left out).
macro_rules! prunable {
    () => {
        "FROM runs WHERE status = $1 AND finished_at < $2
           AND ($3::text IS NULL OR workflow = $3) AND NOT (workflow = ANY($4::text[]))"
    };
}

fn prunable_params(rule: &PruneRule) -> (Option<&str>, Vec<String>) {
    match &rule.workflows {
        WorkflowMatch::All => (None, Vec::new()),
        WorkflowMatch::Only(w) => (Some(w.as_str()), Vec::new()),
        WorkflowMatch::Except(ws) => (None, ws.clone()),
    }
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_leases.sql")),
    (3, include_str!("../../migrations/postgres/0003_usage.sql")),
    (4, include_str!("../../migrations/postgres/0004_epoch.sql")),
    (
        5,
        include_str!("../../migrations/postgres/0005_version.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_status_index.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_retention.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_backups.sql"),
    ),
];

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Merged commit statements in flight at once: half the pool, leaving the rest to reads,
/// submissions and claims.
fn commit_slots(pool_size: u32) -> usize {
    usize::try_from(pool_size / 2).unwrap_or(1).max(1)
}

impl PostgresStore {
    /// Connects lazily: the pool opens connections when first used, so a database that is
    /// down at start makes readiness fail rather than the process.
    pub fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Url(format!("{}: {e}", flotilla_spec::redact::redact_url(url)))
            })?
            .options([(
                "statement_timeout",
                format!("{}", options.statement_timeout.as_millis()),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect);
        let (queued, mut rx) = mpsc::unbounded_channel::<Vec<Write>>();
        let (applied_tx, applied) = watch::channel(0u64);
        let apply_pool = pool.clone();
        let applier = tokio::spawn(async move {
            while let Some(writes) = rx.recv().await {
                let mut delay = Duration::from_millis(50);
                // Queued writes are not awaited by anyone; keep them in order and keep trying,
                // unless another replica holds the run now: then they must never land.
                loop {
                    match commit_on(&apply_pool, &writes).await {
                        Ok(()) => break,
                        Err(StoreError::Fenced(run)) => {
                            tracing::warn!(run_id = %run, "queued write refused: another replica holds the run");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "queued write failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                applied_tx.send_modify(|n| *n += 1);
            }
        });
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), wake.clone()));
        let committer = group::Committer::start(pool.clone(), commit_slots(options.pool_size));
        Ok(Self {
            pool,
            queued,
            sent: AtomicU64::new(0),
            applied,
            applier,
            committer,
            wake,
            listener,
        })
    }
}

impl PostgresStore {
    /// Whether the database already holds flotilla runs.
    pub async fn holds_runs(&self) -> Result<bool> {
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('runs')::text")
            .fetch_one(&self.pool)
            .await?;
        if table.is_none() {
            return Ok(false);
        }
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs)")
            .fetch_one(&self.pool)
            .await?)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.applier.abort();
        self.listener.abort();
    }
}

/// Applies a batch in one statement: [`commit_batch`], failing with [`StoreError::Fenced`]
/// when a run it writes is held by another replica now.
async fn commit_on(pool: &PgPool, writes: &[Write]) -> Result<()> {
    let all: Vec<&Write> = writes.iter().collect();
    match commit_batch(pool, &all).await?.into_iter().next() {
        Some(run) => Err(StoreError::Fenced(run)),
        None => Ok(()),
    }
}

/// Applies a batch in one statement (one round trip, one implicit transaction): each table
/// gets its rows through `unnest`, in data-modifying CTEs. A key written twice in a batch
/// keeps its last write, as applying the writes in order would.
///
/// Fencing: the batch's fenced runs are locked (`FOR SHARE`, in id order so that two
/// statements never wait on each other in a cycle; a concurrent claim waits for this
/// statement, and a claim committed first is seen) and compared with the epochs the batch
/// carries; nothing is written to a run whose epoch moved on. Returns those runs.
async fn commit_batch(pool: &PgPool, writes: &[&Write]) -> Result<Vec<String>> {
    use std::collections::HashMap;
    use std::collections::hash_map::Entry;
    let mut steps: Vec<(&str, &crate::record::StepRecord)> = Vec::new();
    let mut step_at: HashMap<(&str, &str), usize> = HashMap::new();
    let mut runs: Vec<&Write> = Vec::new();
    let mut run_at: HashMap<&str, usize> = HashMap::new();
    let mut events: Vec<&crate::record::EventRecord> = Vec::new();
    let mut fence_ids: Vec<&str> = Vec::new();
    let mut fence_epochs: Vec<i64> = Vec::new();
    for &w in writes {
        match w {
            Write::Fence { run_id, epoch } => {
                fence_ids.push(run_id);
                fence_epochs.push(*epoch);
            }
            Write::Step { run_id, step } => {
                match step_at.entry((run_id.as_str(), step.step_id.as_str())) {
                    Entry::Occupied(i) => steps[*i.get()] = (run_id, step),
                    Entry::Vacant(v) => {
                        v.insert(steps.len());
                        steps.push((run_id, step));
                    }
                }
            }
            Write::Run { run_id, .. } => match run_at.entry(run_id.as_str()) {
                Entry::Occupied(i) => runs[*i.get()] = w,
                Entry::Vacant(v) => {
                    v.insert(runs.len());
                    runs.push(w);
                }
            },
            Write::Event(e) => events.push(e),
        }
    }
    let mut run_ids = Vec::new();
    let mut run_status = Vec::new();
    let mut run_output = Vec::new();
    let mut run_error = Vec::new();
    let mut run_at = Vec::new();
    let mut run_finished = Vec::new();
    for w in runs {
        if let Write::Run {
            run_id,
            status,
            output,
            error,
            at,
        } = w
        {
            run_ids.push(run_id.as_str());
            run_status.push(status.as_str());
            run_output.push(output.as_ref().map(|v| v.to_string()));
            run_error.push(error.as_deref());
            run_at.push(*at);
            run_finished.push(status.is_terminal().then_some(*at));
        }
    }
    let stale: Option<Vec<String>> = sqlx::query_scalar(
        "WITH held AS (
            SELECT id, epoch FROM runs WHERE id = ANY($23::text[]) ORDER BY id FOR SHARE
         ), stale AS (
            SELECT f.id FROM unnest($23::text[], $24::int8[]) AS f(id, epoch)
            LEFT JOIN held ON held.id = f.id
            WHERE held.epoch IS DISTINCT FROM f.epoch
         ), s AS (
            INSERT INTO steps (run_id, step_id, status, attempts, output, error, started_at, finished_at, agent, usage)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], $7::int8[], $8::int8[], $21::text[], $22::text[])
                AS x(run_id, step_id, status, attempts, output, error, started_at, finished_at, agent, usage)
            WHERE x.run_id NOT IN (SELECT id FROM stale)
            ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status,
              attempts = excluded.attempts, output = excluded.output, error = excluded.error,
              started_at = excluded.started_at, finished_at = excluded.finished_at,
              agent = excluded.agent, usage = excluded.usage
            WHERE steps.status IN ('pending', 'running')
               OR (steps.status = 'succeeded' AND excluded.status IN ('succeeded', 'compensated'))
         ), e AS (
            INSERT INTO events (run_id, seq, at, kind, step_id, data)
            SELECT * FROM unnest($9::text[], $10::int8[], $11::int8[], $12::text[], $13::text[], $14::text[])
                AS x(run_id, seq, at, kind, step_id, data)
            WHERE x.run_id NOT IN (SELECT id FROM stale)
            ON CONFLICT DO NOTHING
         ), r AS (
            UPDATE runs SET status = u.status, output = COALESCE(u.output, runs.output),
              error = COALESCE(u.error, runs.error), updated_at = u.at,
              finished_at = COALESCE(u.finished, runs.finished_at)
            FROM unnest($15::text[], $16::text[], $17::text[], $18::text[], $19::int8[], $20::int8[])
                 AS u(id, status, output, error, at, finished)
            WHERE runs.id = u.id AND runs.status IN ('queued', 'running')
              AND u.id NOT IN (SELECT id FROM stale)
         )
         SELECT array_agg(id) FROM stale",
    )
    .bind(steps.iter().map(|(r, _)| *r).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.step_id.as_str()).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.status.as_str()).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.attempts as i32).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.output.as_ref().map(|v| v.to_string())).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.error.as_deref()).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.started_at).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.finished_at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.run_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.step_id.as_deref()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.data.to_string()).collect::<Vec<_>>())
    .bind(run_ids)
    .bind(run_status)
    .bind(run_output)
    .bind(run_error)
    .bind(run_at)
    .bind(run_finished)
    .bind(steps.iter().map(|(_, s)| s.agent.as_deref()).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.usage.map(|u| usage_json(&u))).collect::<Vec<_>>())
    .bind(fence_ids)
    .bind(fence_epochs)
    .fetch_one(pool)
    .await?;
    Ok(stale.unwrap_or_default())
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        let outcome = async {
            sqlx::query("CREATE TABLE IF NOT EXISTS flotilla_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
                .execute(&mut *conn)
                .await?;
            let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM flotilla_migrations")
                .fetch_one(&mut *conn)
                .await?;
            for (version, sql) in MIGRATIONS {
                if *version > current.unwrap_or(0) {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO flotilla_migrations (version, applied_at) VALUES ($1, (extract(epoch from now()) * 1000)::bigint)")
                        .bind(version)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    tracing::info!(version, "applied postgres migration");
                }
            }
            Ok::<_, StoreError>(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        outcome
    }

    async fn create_run(&self, run: NewRun) -> Result<CreateOutcome> {
        // One statement: the definition (once per hash) and the run.
        let created: Option<String> = sqlx::query_scalar(
            "WITH d AS (
                INSERT INTO definitions (hash, workflow, body, created_at)
                SELECT $4, $3, $14, $9 WHERE $14::text IS NOT NULL
                ON CONFLICT (hash) DO NOTHING
             )
             INSERT INTO runs (id, kind, workflow, definition_hash, status, priority, input, metadata,
                               idempotency_key, created_at, updated_at, deadline_at, owner, lease_until, version)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $9, $10, $11, $12, $13)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id",
        )
        .bind(&run.id)
        .bind(run.kind.as_str())
        .bind(&run.workflow)
        .bind(&run.definition_hash)
        .bind(&run.priority)
        .bind(run.input.to_string())
        .bind(run.metadata.to_string())
        .bind(&run.idempotency_key)
        .bind(run.created_at)
        .bind(run.deadline_at)
        .bind(&run.owner)
        .bind(run.lease_until)
        .bind(&run.version)
        .bind(&run.definition)
        .fetch_optional(&self.pool)
        .await?;
        if created.is_some() {
            return Ok(CreateOutcome::Created);
        }
        let existing: String = sqlx::query_scalar("SELECT id FROM runs WHERE idempotency_key = $1")
            .bind(&run.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
        Ok(CreateOutcome::Existing(existing))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<()> {
        // Writes queued earlier land first, as the trait promises.
        let sent = self.sent.load(Ordering::Acquire);
        let mut applied = self.applied.clone();
        applied
            .wait_for(|n| *n >= sent)
            .await
            .map_err(|_| StoreError::Closed)?;
        if writes.is_empty() {
            return Ok(());
        }
        self.committer.commit(writes).await
    }

    fn enqueue(&self, writes: Vec<Write>) {
        if self.queued.send(writes).is_ok() {
            self.sent.fetch_add(1, Ordering::AcqRel);
        } else {
            tracing::warn!("store closed; a non-critical write was dropped");
        }
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        read::run(&self.pool, id).await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<Vec<RunSummary>> {
        read::list(&self.pool, query).await
    }

    async fn count_runs(&self, query: &RunQuery) -> Result<StatusCounts> {
        read::count(&self.pool, query).await
    }

    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        read::unfinished(&self.pool).await
    }

    async fn definition(&self, hash: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT body FROM definitions WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn events(&self, run_id: &str, after_seq: i64) -> Result<Vec<EventRecord>> {
        read::events(&self.pool, run_id, after_seq).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
        versions: VersionFilter<'_>,
    ) -> Result<Vec<Claimed>> {
        // The versions of the runs up for taking, filtered here (a semver range is not SQL).
        let offered: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT DISTINCT version FROM runs
             WHERE status IN ('queued', 'running') AND (owner IS NULL OR lease_until < $1)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let any_unversioned = offered.iter().any(|v| v.is_none() && versions(None));
        let accepted: Vec<String> = offered
            .into_iter()
            .flatten()
            .filter(|v| versions(Some(v)))
            .collect();
        if accepted.is_empty() && !any_unversioned {
            return Ok(Vec::new());
        }
        let claimed: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE runs SET owner = $1, lease_until = $3, epoch = epoch + 1
             WHERE id IN (SELECT id FROM runs
                          WHERE status IN ('queued', 'running') AND (owner IS NULL OR lease_until < $2)
                            AND (version = ANY($5) OR (version IS NULL AND $6))
                          ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id, epoch",
        )
        .bind(owner)
        .bind(now)
        .bind(lease_until)
        .bind(i64::from(limit))
        .bind(&accepted)
        .bind(any_unversioned)
        .fetch_all(&self.pool)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = claimed.iter().map(|(id, _)| id.clone()).collect();
        let epochs: std::collections::HashMap<String, i64> = claimed.into_iter().collect();
        Ok(read::by_ids(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|run| Claimed {
                epoch: epochs.get(&run.id).copied().unwrap_or_default(),
                run,
            })
            .collect())
    }

    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            // Rows locked in id order, as commits lock them: the two never wait on each other
            // in a cycle.
            "UPDATE runs SET lease_until = $2 WHERE id IN (
                 SELECT id FROM runs WHERE owner = $1 AND id = ANY($3) ORDER BY id FOR NO KEY UPDATE
             ) RETURNING id",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn release_leases(&self, owner: &str) -> Result<()> {
        let released = sqlx::query(
            "UPDATE runs SET owner = NULL, lease_until = NULL WHERE owner = $1 AND status IN ('queued', 'running')",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if released > 0 {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn runs_on_definition(&self, hash: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, workflow FROM runs WHERE definition_hash = $1 AND status IN ('queued', 'running') ORDER BY id",
        )
        .bind(hash)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn move_runs(&self, m: MoveRuns) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO definitions (hash, workflow, body, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&m.to_hash)
        .bind(&m.workflow)
        .bind(&m.body)
        .bind(m.at)
        .execute(&mut *tx)
        .await?;
        // A new epoch fences off whoever drives these runs now; without an owner they are
        // claimed at once, under the new definition.
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE runs SET definition_hash = $2, updated_at = $3, epoch = epoch + 1, owner = NULL, lease_until = NULL
             WHERE definition_hash = $1 AND status IN ('queued', 'running') RETURNING id",
        )
        .bind(&m.from_hash)
        .bind(&m.to_hash)
        .bind(m.at)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if !ids.is_empty() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&self.pool)
                .await?;
        }
        Ok(ids)
    }

    /// One replica prunes at a time (the others find the lock taken and skip the round);
    /// rows another transaction holds are skipped, not waited for.
    async fn prune(&self, rule: &PruneRule, limit: u32) -> Result<u64> {
        if !rule.status.is_terminal() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            return Ok(0);
        }
        let (only, except) = prunable_params(rule);
        let pruned: i64 = sqlx::query_scalar(concat!(
            "WITH doomed AS (SELECT id ",
            prunable!(),
            " ORDER BY finished_at LIMIT $5 FOR UPDATE SKIP LOCKED),
                  events_gone AS (DELETE FROM events WHERE run_id IN (SELECT id FROM doomed)),
                  steps_gone AS (DELETE FROM steps WHERE run_id IN (SELECT id FROM doomed)),
                  runs_gone AS (DELETE FROM runs WHERE id IN (SELECT id FROM doomed) RETURNING 1)
             SELECT count(*) FROM runs_gone"
        ))
        .bind(rule.status.as_str())
        .bind(rule.finished_before)
        .bind(only)
        .bind(&except)
        .bind(i64::from(limit))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pruned as u64)
    }

    async fn count_prunable(&self, rule: &PruneRule) -> Result<u64> {
        let (only, except) = prunable_params(rule);
        let n: i64 = sqlx::query_scalar(concat!("SELECT count(*) ", prunable!()))
            .bind(rule.status.as_str())
            .bind(rule.finished_before)
            .bind(only)
            .bind(&except)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn record_backup(&self, b: &BackupRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO backups (started_at, finished_at, file, bytes, error) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(b.started_at)
        .bind(b.finished_at)
        .bind(&b.file)
        .bind(b.bytes as i64)
        .bind(&b.error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn backup_stats(&self) -> Result<BackupStats> {
        let last: Option<(i64, i64)> = sqlx::query_as(
            "SELECT finished_at, finished_at - started_at FROM backups WHERE error IS NULL
             ORDER BY finished_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let failures: i64 =
            sqlx::query_scalar("SELECT count(*) FROM backups WHERE error IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(BackupStats {
            last_success_at: last.map(|l| l.0),
            last_duration_ms: last.map(|l| l.1),
            failures: failures as u64,
        })
    }

    async fn size_bytes(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn work_available(&self) {
        self.wake.notified().await
    }
}
