//! Seed 003's task contract: `POST /api/v1/execute`, `POST /api/v1/batch`,
//! `GET /api/v1/status/{id}`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use flotilla_engine::metrics::StatusLabels;
use flotilla_engine::{TaskRequest, TaskResult};
use flotilla_spec::Priority;
use flotilla_store::{RunKind, RunStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rfc3339;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// Limits of seed 003.
const MAX_INPUT_CHARS: usize = 10_000;
const MAX_INSTRUCTIONS_CHARS: usize = 5_000;
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;
const MAX_BATCH: usize = 100;

/// One task.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    agent: Option<String>,
    capability: Option<String>,
    action: Option<String>,
    input: Value,
    instructions: Option<String>,
    priority: Option<Priority>,
    /// Milliseconds.
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Value,
}

impl TaskBody {
    fn validate(self, problems: &mut Vec<String>, prefix: &str) -> TaskRequest {
        for (field, value) in [
            ("agent", &self.agent),
            ("capability", &self.capability),
            ("action", &self.action),
        ] {
            if value.as_deref() == Some("") {
                problems.push(format!("{prefix}`{field}` must not be empty"));
            }
        }
        if self.agent.is_some() == self.capability.is_some() {
            problems.push(format!(
                "{prefix}give exactly one of `agent` and `capability`"
            ));
        }
        let input_len = match &self.input {
            Value::String(s) => s.chars().count(),
            other => other.to_string().chars().count(),
        };
        if input_len > MAX_INPUT_CHARS {
            problems.push(format!(
                "{prefix}`input` is {input_len} characters; the limit is {MAX_INPUT_CHARS}"
            ));
        }
        if let Some(i) = &self.instructions
            && i.chars().count() > MAX_INSTRUCTIONS_CHARS
        {
            problems.push(format!(
                "{prefix}`instructions` exceeds {MAX_INSTRUCTIONS_CHARS} characters"
            ));
        }
        if let Some(t) = self.timeout
            && !TIMEOUT_MS.contains(&t)
        {
            problems.push(format!(
                "{prefix}`timeout` must be between 1000 and 300000 milliseconds, got {t}"
            ));
        }
        TaskRequest {
            agent: self.agent,
            capability: self.capability,
            action: self.action,
            input: self.input,
            instructions: self.instructions,
            priority: self.priority,
            timeout: self.timeout.map(Duration::from_millis),
            metadata: self.metadata,
        }
    }
}

fn settle(result: TaskResult) -> Result<Value, ApiError> {
    let o = &result.outcome;
    let message = || {
        o.error
            .clone()
            .unwrap_or_else(|| format!("task ended as {}", o.status))
    };
    match o.status {
        RunStatus::Succeeded => Ok(json!({
            "taskId": result.task_id,
            "result": o.output,
            "duration": result.duration_ms,
            "agentId": o.agent,
            "timestamp": rfc3339(flotilla_engine::now_ms()),
        })),
        _ => Err(match o.error_kind {
            Some("timeout") => ApiError::Timeout(message()),
            Some("unavailable") => ApiError::Unavailable {
                kind: "unavailable",
                message: message(),
            },
            _ => ApiError::AgentFailed(message()),
        }),
    }
}

/// `POST /api/v1/execute`: runs one task and answers with its result.
pub async fn execute(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TaskBody>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let mut problems = Vec::new();
    let task = body.validate(&mut problems, "");
    if !problems.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid task".into(),
            details: problems,
        });
    }
    Ok(Json(settle(engine.execute(task).await?)?))
}

/// Body of `POST /api/v1/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    tasks: Vec<TaskBody>,
}

/// `POST /api/v1/batch`: 1–100 tasks, each settled on its own.
pub async fn batch(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    if body.tasks.is_empty() || body.tasks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} tasks, got {}",
            body.tasks.len()
        )));
    }
    let mut problems = Vec::new();
    let tasks: Vec<TaskRequest> = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.validate(&mut problems, &format!("tasks[{i}]: ")))
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid batch".into(),
            details: problems,
        });
    }
    let total = tasks.len();
    let outcomes = futures_util::future::join_all(tasks.into_iter().map(|t| {
        let engine = engine.clone();
        async move {
            engine
                .execute(t)
                .await
                .map_err(ApiError::from)
                .and_then(settle)
        }
    }))
    .await;
    let mut ok = 0u64;
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|r| match r {
            Ok(v) => {
                ok += 1;
                json!({"status": "fulfilled", "taskId": v["taskId"], "result": v, "error": null})
            }
            Err(e) => json!({"status": "rejected", "result": null, "error": e.to_string()}),
        })
        .collect();
    let errors = total as u64 - ok;
    let m = &state.metrics;
    m.batch_tasks
        .get_or_create(&StatusLabels {
            status: "success".into(),
        })
        .inc_by(ok);
    m.batch_tasks
        .get_or_create(&StatusLabels {
            status: "error".into(),
        })
        .inc_by(errors);
    Ok(Json(json!({
        "batchId": format!("batch-{}", uuid::Uuid::now_v7()),
        "totalTasks": total,
        "successCount": ok,
        "errorCount": errors,
        "results": results,
    })))
}

/// `GET /api/v1/status/{id}`: a task's or run's status.
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task or run with id `{id}`")))?;
    let agent = run.steps.first().filter(|_| run.kind == RunKind::Task);
    Ok(Json(json!({
        "taskId": run.id,
        "kind": run.kind,
        "workflow": run.workflow,
        "status": run.status,
        "result": run.output,
        "error": run.error,
        "attempts": agent.map(|s| s.attempts),
        "createdAt": rfc3339(run.created_at),
        "finishedAt": run.finished_at.map(rfc3339),
    })))
}
