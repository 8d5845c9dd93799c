//! Queries.

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use crate::Result;
use crate::record::{
    EventKind, EventRecord, RunKind, RunQuery, RunRecord, RunStatus, RunSummary, StatusCounts,
    StepRecord, StepStatus,
};
use crate::record::{parse_json as json, parse_usage};

macro_rules! run_columns {
    () => {
        "id, kind, workflow, definition_hash, status, priority, input, metadata, output, error, \
         created_at, updated_at, finished_at, deadline_at, version"
    };
}

fn run_row(row: &PgRow) -> Result<RunRecord> {
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    Ok(RunRecord {
        id: row.try_get("id")?,
        kind: RunKind::stored(&kind)?,
        workflow: row.try_get("workflow")?,
        definition_hash: row.try_get("definition_hash")?,
        status: RunStatus::stored(&status)?,
        priority: row.try_get("priority")?,
        input: json(row.try_get("input")?)?.unwrap_or(Value::Null),
        metadata: json(row.try_get("metadata")?)?.unwrap_or(Value::Null),
        output: json(row.try_get("output")?)?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        deadline_at: row.try_get("deadline_at")?,
        version: row.try_get("version")?,
        steps: Vec::new(),
        usage: Default::default(),
    })
}

async fn with_steps(pool: &PgPool, rows: Vec<PgRow>) -> Result<Vec<RunRecord>> {
    let mut runs = rows.iter().map(run_row).collect::<Result<Vec<_>>>()?;
    if runs.is_empty() {
        return Ok(runs);
    }
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let steps = sqlx::query(
        "SELECT run_id, step_id, status, attempts, output, error, started_at, finished_at, agent, usage
         FROM steps WHERE run_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for row in steps {
        let run_id: String = row.try_get("run_id")?;
        let status: String = row.try_get("status")?;
        let step = StepRecord {
            step_id: row.try_get("step_id")?,
            status: StepStatus::stored(&status)?,
            attempts: row.try_get::<i32, _>("attempts")? as u32,
            output: json(row.try_get("output")?)?,
            error: row.try_get("error")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            agent: row.try_get("agent")?,
            usage: parse_usage(row.try_get("usage")?)?,
        };
        if let Some(run) = runs.iter_mut().find(|r| r.id == run_id) {
            run.steps.push(step);
        }
    }
    runs.iter_mut().for_each(RunRecord::tally);
    Ok(runs)
}

pub(super) async fn run(pool: &PgPool, id: &str) -> Result<Option<RunRecord>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE id = $1"
    ))
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(with_steps(pool, rows).await?.pop())
}

/// Summaries only: input, output and steps are never read, whatever their size.
/// `SELECT … WHERE` and the filters of a run query that are set, bound: only those, so that
/// the planner picks the index that fits.
fn filtered(select: &str, q: &RunQuery, paged: bool) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut b = sqlx::QueryBuilder::new(select);
    b.push(" WHERE true");
    if let Some(w) = &q.workflow {
        b.push(" AND workflow = ").push_bind(w.clone());
    }
    if let Some(k) = q.kind {
        b.push(" AND kind = ").push_bind(k.as_str());
    }
    if let Some(from) = q.created_from {
        b.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(to) = q.created_to {
        b.push(" AND created_at < ").push_bind(to);
    }
    if let Some(m) = &q.metadata {
        b.push(" AND metadata::jsonb ->> ")
            .push_bind(m.key().to_owned())
            .push(" = ")
            .push_bind(m.value.clone());
    }
    if paged {
        if let Some(s) = q.status {
            b.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(before) = &q.before {
            b.push(" AND id < ").push_bind(before.clone());
        }
    }
    b
}

pub(super) async fn list(pool: &PgPool, q: &RunQuery) -> Result<Vec<RunSummary>> {
    let select = format!(
        "SELECT id, kind, workflow, definition_hash, status, priority,
                CASE WHEN octet_length(metadata::text) <= {} THEN metadata::text END AS metadata,
                substr(error, 1, {}) AS error, created_at, updated_at, finished_at, deadline_at, version
         FROM runs",
        RunSummary::MAX_METADATA,
        RunSummary::MAX_ERROR
    );
    let mut b = filtered(&select, q, true);
    b.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(q.limit.max(1)));
    let rows = b.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get("kind")?;
            let status: String = row.try_get("status")?;
            Ok(RunSummary {
                id: row.try_get("id")?,
                kind: RunKind::stored(&kind)?,
                workflow: row.try_get("workflow")?,
                definition_hash: row.try_get("definition_hash")?,
                status: RunStatus::stored(&status)?,
                priority: row.try_get("priority")?,
                metadata: json(row.try_get("metadata")?)?.unwrap_or(Value::Null),
                error: row.try_get("error")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                finished_at: row.try_get("finished_at")?,
                deadline_at: row.try_get("deadline_at")?,
                version: row.try_get("version")?,
            })
        })
        .collect()
}

/// Runs per status under a query's filters.
pub(super) async fn count(pool: &PgPool, q: &RunQuery) -> Result<StatusCounts> {
    let mut b = filtered("SELECT status, count(*) AS n FROM runs", q, false);
    b.push(" GROUP BY status");
    let rows = b.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            Ok((RunStatus::stored(&status)?, u64::try_from(n).unwrap_or(0)))
        })
        .collect()
}

pub(super) async fn unfinished(pool: &PgPool) -> Result<Vec<RunRecord>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE status IN ('queued', 'running') ORDER BY id"
    ))
    .fetch_all(pool)
    .await?;
    with_steps(pool, rows).await
}

pub(super) async fn events(pool: &PgPool, run_id: &str, after: i64) -> Result<Vec<EventRecord>> {
    let rows = sqlx::query("SELECT seq, at, kind, step_id, data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq")
        .bind(run_id)
        .bind(after)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(EventRecord {
                run_id: run_id.to_owned(),
                seq: r.try_get("seq")?,
                at: r.try_get("at")?,
                kind: EventKind::stored(&r.try_get::<String, _>("kind")?)?,
                step_id: r.try_get("step_id")?,
                data: json(r.try_get("data")?)?.unwrap_or(Value::Null),
            })
        })
        .collect()
}

pub(super) async fn by_ids(pool: &PgPool, ids: &[String]) -> Result<Vec<RunRecord>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE id = ANY($1) ORDER BY id"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    with_steps(pool, rows).await
}
