//! Queries on a read connection.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::Result;
use crate::record::{
    EventKind, EventRecord, RunQuery, RunRecord, RunStatus, RunSummary, StatusCounts, StepRecord,
    StepStatus,
};
use crate::record::{parse_json as json, parse_usage};

const RUN_COLUMNS: &str =
    "id, kind, workflow, definition_hash, status, priority, input, metadata, output, error,
                           created_at, updated_at, finished_at, deadline_at, version";

fn run_row(row: &Row<'_>) -> rusqlite::Result<(RunRecord, [Option<String>; 3])> {
    let texts = [row.get::<_, Option<String>>(6)?, row.get(7)?, row.get(8)?];
    Ok((
        RunRecord {
            id: row.get(0)?,
            kind: row.get(1)?,
            workflow: row.get(2)?,
            definition_hash: row.get(3)?,
            status: row.get(4)?,
            priority: row.get(5)?,
            input: Value::Null,
            metadata: Value::Null,
            output: None,
            error: row.get(9)?,
            created_at: row.get(10)?,
            updated_at: row.get(11)?,
            finished_at: row.get(12)?,
            deadline_at: row.get(13)?,
            version: row.get(14)?,
            steps: Vec::new(),
            usage: Default::default(),
        },
        texts,
    ))
}

fn finish_run(
    conn: &Connection,
    (mut run, [input, metadata, output]): (RunRecord, [Option<String>; 3]),
) -> Result<RunRecord> {
    run.input = json(input)?.unwrap_or(Value::Null);
    run.metadata = json(metadata)?.unwrap_or(Value::Null);
    run.output = json(output)?;
    run.steps = steps(conn, &run.id)?;
    run.tally();
    Ok(run)
}

pub(crate) fn run(conn: &Connection, id: &str) -> Result<Option<RunRecord>> {
    let row = conn
        .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
        .query_row([id], run_row)
        .optional()?;
    row.map(|r| finish_run(conn, r)).transpose()
}

/// The WHERE clause of a run query and its parameters: only the filters that are set, so
/// that the planner picks the index that fits (a status, a workflow, or the id order).
fn filter(q: &RunQuery, paged: bool) -> (String, Vec<SqlValue>) {
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut params: Vec<SqlValue> = Vec::new();
    let mut bind = |v: SqlValue| {
        params.push(v);
        format!("?{}", params.len())
    };
    if let Some(w) = &q.workflow {
        clauses.push(format!("workflow = {}", bind(SqlValue::Text(w.clone()))));
    }
    if let Some(k) = q.kind {
        clauses.push(format!(
            "kind = {}",
            bind(SqlValue::Text(k.as_str().into()))
        ));
    }
    if let Some(from) = q.created_from {
        clauses.push(format!("created_at >= {}", bind(SqlValue::Integer(from))));
    }
    if let Some(to) = q.created_to {
        clauses.push(format!("created_at < {}", bind(SqlValue::Integer(to))));
    }
    if let Some(m) = &q.metadata {
        let path = bind(SqlValue::Text(m.json_path()));
        let value = bind(SqlValue::Text(m.value.clone()));
        clauses.push(format!(
            "CAST(json_extract(metadata, {path}) AS TEXT) = {value}"
        ));
    }
    if paged {
        if let Some(s) = q.status {
            clauses.push(format!(
                "status = {}",
                bind(SqlValue::Text(s.as_str().into()))
            ));
        }
        if let Some(b) = &q.before {
            clauses.push(format!("id < {}", bind(SqlValue::Text(b.clone()))));
        }
    }
    (clauses.join(" AND "), params)
}

/// Summaries only: input, output and steps are never read, whatever their size.
pub(crate) fn list(conn: &Connection, q: &RunQuery) -> Result<Vec<RunSummary>> {
    let (filter, mut params) = filter(q, true);
    let n = params.len();
    params.push(SqlValue::Integer(RunSummary::MAX_METADATA as i64));
    params.push(SqlValue::Integer(RunSummary::MAX_ERROR as i64));
    params.push(SqlValue::Integer(i64::from(q.limit.max(1))));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, kind, workflow, definition_hash, status, priority,
                CASE WHEN length(metadata) <= ?{} THEN metadata END, substr(error, 1, ?{}),
                created_at, updated_at, finished_at, deadline_at, version
         FROM runs WHERE {filter} ORDER BY id DESC LIMIT ?{}",
        n + 1,
        n + 2,
        n + 3
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |row| {
            Ok((
                RunSummary {
                    id: row.get(0)?,
                    kind: row.get(1)?,
                    workflow: row.get(2)?,
                    definition_hash: row.get(3)?,
                    status: row.get(4)?,
                    priority: row.get(5)?,
                    metadata: Value::Null,
                    error: row.get(7)?,
                    created_at: row.get(8)?,
                    updated_at: row.get(9)?,
                    finished_at: row.get(10)?,
                    deadline_at: row.get(11)?,
                    version: row.get(12)?,
                },
                row.get::<_, Option<String>>(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(mut s, metadata)| {
            s.metadata = json(metadata)?.unwrap_or(Value::Null);
            Ok(s)
        })
        .collect()
}

/// Runs per status under a query's filters.
pub(crate) fn count(conn: &Connection, q: &RunQuery) -> Result<StatusCounts> {
    let (filter, params) = filter(q, false);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT status, count(*) FROM runs WHERE {filter} GROUP BY status"
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |row| {
            Ok((row.get::<_, RunStatus>(0)?, row.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect())
}

pub(crate) fn unfinished(conn: &Connection) -> Result<Vec<RunRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running') ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([], run_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(|r| finish_run(conn, r)).collect()
}

fn steps(conn: &Connection, run_id: &str) -> Result<Vec<StepRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT step_id, status, attempts, output, error, started_at, finished_at, agent, usage
         FROM steps WHERE run_id = ?1",
    )?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(
            |(step_id, status, attempts, output, error, started_at, finished_at, agent, usage)| {
                Ok(StepRecord {
                    step_id,
                    status: StepStatus::stored(&status)?,
                    attempts,
                    output: json(output)?,
                    error,
                    started_at,
                    finished_at,
                    agent,
                    usage: parse_usage(usage)?,
                })
            },
        )
        .collect()
}

pub(crate) fn on_definition(conn: &Connection, hash: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, workflow FROM runs WHERE definition_hash = ?1 AND status IN ('queued', 'running') ORDER BY id",
    )?;
    let rows = stmt.query_map([hash], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn definition(conn: &Connection, hash: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT body FROM definitions WHERE hash = ?1")?
        .query_row([hash], |r| r.get(0))
        .optional()?)
}

pub(crate) fn events(conn: &Connection, run_id: &str, after: i64) -> Result<Vec<EventRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, kind, step_id, data FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let rows = stmt
        .query_map(params![run_id, after], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, EventKind>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(seq, at, kind, step_id, data)| {
            Ok(EventRecord {
                run_id: run_id.to_owned(),
                seq,
                at,
                kind,
                step_id,
                data: json(Some(data))?.unwrap_or(Value::Null),
            })
        })
        .collect()
}
