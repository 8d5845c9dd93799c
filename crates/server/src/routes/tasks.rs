//! Seed 003's task contract: `POST /api/v1/execute`, `POST /api/v1/batch`,
//! `GET /api/v1/status/{id}`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use flotilla_engine::metrics::StatusLabels;
use flotilla_engine::{ErrorKind, TaskRequest, TaskResult};
use flotilla_spec::Priority;
use flotilla_store::{RunKind, RunStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::rfc3339;
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, NoQuery};

/// Limits of seed 003.
const MAX_INPUT_CHARS: usize = 10_000;
const MAX_INSTRUCTIONS_CHARS: usize = 5_000;
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;
const MAX_BATCH: usize = 100;

/// One task: exactly one of `agent` and `capability`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// The agent to call.
    #[schema(min_length = 1)]
    agent: Option<String>,
    /// Any healthy agent offering this capability.
    #[schema(min_length = 1)]
    capability: Option<String>,
    /// The agent's action (default: its first).
    #[schema(min_length = 1)]
    action: Option<String>,
    /// What the agent works on; at most 10,000 characters once serialized.
    input: Value,
    /// At most 5,000 characters.
    #[schema(max_length = 5000)]
    instructions: Option<String>,
    /// Queue order.
    priority: Option<Priority>,
    /// Milliseconds, 1,000 to 300,000.
    #[serde(default, deserialize_with = "flotilla_spec::whole::option_u64")]
    #[schema(minimum = 1000, maximum = 300000)]
    timeout: Option<u64>,
    /// Free-form, kept with the task.
    #[serde(default)]
    metadata: Value,
}

/// A task that succeeded.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResponse {
    /// The task's id (also a run id).
    task_id: String,
    /// The agent's output.
    result: Option<Value>,
    /// Milliseconds from submission to the end.
    duration: u64,
    /// The agent that served it.
    agent_id: Option<String>,
    /// When it ended (RFC 3339).
    timestamp: String,
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
            id: None,
        }
    }
}

/// The answer for a finished task; `retry_in` says how long an open circuit still refuses
/// its agent, for `Retry-After`.
fn settle(
    result: TaskResult,
    retry_in: impl FnOnce() -> Option<Duration>,
) -> Result<TaskResponse, ApiError> {
    let o = &result.outcome;
    let message = || {
        o.error
            .clone()
            .unwrap_or_else(|| format!("task ended as {}", o.status))
    };
    match o.status {
        RunStatus::Succeeded => Ok(TaskResponse {
            task_id: result.task_id,
            result: o.output.clone(),
            duration: result.duration_ms,
            agent_id: o.agent.clone(),
            timestamp: rfc3339(flotilla_engine::now_ms()),
        }),
        _ => Err(match o.error_kind {
            Some(ErrorKind::Timeout) => ApiError::Timeout(message()),
            Some(ErrorKind::Unavailable) => ApiError::Unavailable {
                kind: "unavailable",
                message: message(),
                retry_after: retry_in().map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64),
            },
            _ => ApiError::AgentFailed(message()),
        }),
    }
}

/// Run one task synchronously.
///
/// Answers with the agent's result; 502 when the agent failed, 503 when no agent can take
/// it (circuit open, unhealthy), 504 when it did not finish within its timeout.
#[utoipa::path(post, path = "/api/v1/execute", operation_id = "execute", tag = "tasks", request_body = TaskBody,
    responses((status = 200, description = "The task succeeded", body = TaskResponse),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn execute(
    State(state): State<AppState>,
    _: NoQuery,
    ApiJson(body): ApiJson<TaskBody>,
) -> Result<Json<TaskResponse>, ApiError> {
    let engine = state.engine()?;
    let mut problems = Vec::new();
    let task = body.validate(&mut problems, "");
    if !problems.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid task".into(),
            details: problems,
        });
    }
    let (agent, capability) = (task.agent.clone(), task.capability.clone());
    let result = engine.execute(task).await?;
    Ok(Json(settle(result, || {
        engine.retry_in(agent.as_deref(), capability.as_deref())
    })?))
}

/// Body of `POST /api/v1/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 100 tasks.
    #[schema(min_items = 1, max_items = 100)]
    tasks: Vec<TaskBody>,
}

/// How one task of a batch settled.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    /// The task's position in the request, from 0.
    task_index: usize,
    /// `fulfilled` or `rejected`.
    status: &'static str,
    /// The task's id (given to every task before it runs, so a rejected one has it too).
    task_id: String,
    /// The result, when fulfilled.
    result: Option<TaskResponse>,
    /// Why it was rejected.
    error: Option<String>,
}

/// A settled batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    /// Id of this batch.
    batch_id: String,
    /// Tasks submitted.
    total_tasks: usize,
    /// Tasks fulfilled.
    success_count: u64,
    /// Tasks rejected.
    error_count: u64,
    /// One entry per task, in order.
    results: Vec<BatchItem>,
    /// When the batch settled (RFC 3339).
    timestamp: String,
}

/// Run 1-100 tasks, each settled on its own.
#[utoipa::path(post, path = "/api/v1/batch", operation_id = "batch", tag = "tasks", request_body = BatchBody,
    responses((status = 200, description = "Every task settled", body = BatchResponse),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn batch(
    State(state): State<AppState>,
    _: NoQuery,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<BatchResponse>, ApiError> {
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
    let outcomes = futures_util::future::join_all(tasks.into_iter().map(|mut t| {
        let engine = engine.clone();
        let id = uuid::Uuid::now_v7().to_string();
        t.id = Some(id.clone());
        let (agent, capability) = (t.agent.clone(), t.capability.clone());
        async move {
            let settled = engine
                .execute(t)
                .await
                .map_err(ApiError::from)
                .and_then(|r| {
                    settle(r, || {
                        engine.retry_in(agent.as_deref(), capability.as_deref())
                    })
                });
            (id, settled)
        }
    }))
    .await;
    let mut ok = 0u64;
    let results: Vec<BatchItem> = outcomes
        .into_iter()
        .enumerate()
        .map(|(task_index, (task_id, r))| match r {
            Ok(v) => {
                ok += 1;
                BatchItem {
                    task_index,
                    status: "fulfilled",
                    task_id,
                    result: Some(v),
                    error: None,
                }
            }
            Err(e) => BatchItem {
                task_index,
                status: "rejected",
                task_id,
                result: None,
                error: Some(e.to_string()),
            },
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
    Ok(Json(BatchResponse {
        batch_id: format!("batch-{}", uuid::Uuid::now_v7()),
        total_tasks: total,
        success_count: ok,
        error_count: errors,
        results,
        timestamp: rfc3339(flotilla_engine::now_ms()),
    }))
}

/// A task's or run's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    /// Task or run id.
    task_id: String,
    /// `task` or `workflow`.
    kind: RunKind,
    /// Workflow name.
    workflow: String,
    /// Where it is.
    status: RunStatus,
    /// Output once succeeded.
    result: Option<Value>,
    /// Error once failed.
    error: Option<String>,
    /// Attempts made, for a task.
    attempts: Option<u32>,
    /// When it was accepted (RFC 3339).
    created_at: String,
    /// When it ended (RFC 3339).
    finished_at: Option<String>,
}

/// A task's or run's status.
#[utoipa::path(get, path = "/api/v1/status/{id}", operation_id = "getStatus", tag = "tasks",
    params(("id" = String, Path, description = "Task or run id")),
    responses((status = 200, description = "The task or run", body = StatusResponse),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    _: NoQuery,
) -> Result<Json<StatusResponse>, ApiError> {
    let engine = state.engine()?;
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task or run with id `{id}`")))?;
    let agent = run.steps.first().filter(|_| run.kind == RunKind::Task);
    Ok(Json(StatusResponse {
        attempts: agent.map(|s| s.attempts),
        task_id: run.id,
        kind: run.kind,
        workflow: run.workflow,
        status: run.status,
        result: run.output,
        error: run.error,
        created_at: rfc3339(run.created_at),
        finished_at: run.finished_at.map(rfc3339),
    }))
}
