//! Queries.

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use crate::Result;
use crate::record::{
    EventKind, EventRecord, RunKind, RunQuery, RunRecord, RunStatus, RunSummary, StepRecord,
    StepStatus,
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
pub(super) async fn list(pool: &PgPool, q: &RunQuery) -> Result<Vec<RunSummary>> {
    let rows = sqlx::query(
        "SELECT id, kind, workflow, definition_hash, status, priority,
                CASE WHEN octet_length(metadata::text) <= $5 THEN metadata::text END AS metadata,
                substr(error, 1, $6) AS error, created_at, updated_at, finished_at, deadline_at, version
         FROM runs WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
    )
    .bind(&q.workflow)
    .bind(q.status.map(RunStatus::as_str))
    .bind(&q.before)
    .bind(i64::from(q.limit.max(1)))
    .bind(RunSummary::MAX_METADATA as i32)
    .bind(RunSummary::MAX_ERROR as i32)
    .fetch_all(pool)
    .await?;
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
