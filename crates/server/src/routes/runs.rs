//! Workflow runs: start, list, inspect, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_engine::{Idempotency, Submission};
use flotilla_spec::Priority;
use flotilla_store::{RunQuery, RunRecord, RunStatus, RunSummary};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::parse_wait;
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, NoQuery};

/// Body of `POST /api/v1/workflows/{name}/runs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The run's input, checked against the workflow's `input_schema`.
    #[serde(default)]
    input: Value,
    /// Queue order.
    priority: Option<Priority>,
    /// Free-form, kept with the run.
    #[serde(default)]
    metadata: Value,
}

/// Query of `POST /api/v1/workflows/{name}/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Wait up to this long for the run to finish: `500ms`, `30s`, `2m`, or a number of seconds.
    #[param(pattern = r"^[0-9]{1,9}(ms|s|m)?$")]
    wait: Option<String>,
}

/// A run accepted and stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunAccepted {
    /// The run's id.
    run_id: String,
    /// Its status now.
    status: RunStatus,
}

/// What starting a run answers: the acceptance, or the run itself with `?wait=`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Started {
    /// Without `?wait=`.
    Accepted(RunAccepted),
    /// With `?wait=`.
    Run(Box<RunRecord>),
}

/// Start a run.
///
/// 202 `{run_id, status}` once the run is durable; with `?wait=`, 200 and the finished run
/// (202 and the run so far if it is still going when the wait, or `server.request_timeout`,
/// ends). An `Idempotency-Key` is scoped to the caller and the workflow: repeated with the
/// same body after the first run finished, it returns that run with
/// `Idempotent-Replayed: true`; with another body, 422; while the first run is in progress,
/// 409.
#[utoipa::path(post, path = "/api/v1/workflows/{name}/runs", operation_id = "startRun", tag = "runs", request_body = StartBody,
    params(("name" = String, Path, description = "Workflow name"), WaitQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses((status = 200, description = "The run finished (with `?wait=`)", body = RunRecord),
        (status = 202, description = "The run is stored", body = Started),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    deadline: Option<axum::Extension<crate::observe::Deadline>>,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let wait = q.wait.as_deref().map(parse_wait).transpose()?;
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1 to 255 characters",
                ));
            }
            Some(Idempotency {
                principal: principal.map(|p| p.0.name).unwrap_or_default(),
                key: k.to_owned(),
            })
        }
    };
    let sub = Submission {
        input: body.input,
        priority: body.priority,
        metadata: body.metadata,
        idempotency,
        id: None,
    };
    let submitted = engine.submit(&name, sub).await?;
    let replay = [(
        "idempotent-replayed",
        if submitted.existing { "true" } else { "false" },
    )];
    if let Some(wait) = wait {
        // The run exists now: answer with its id (202) when the wait or the request's own
        // deadline ends first, never with a bare 504 that invites a duplicate.
        let wait = match deadline {
            Some(d) => wait.min(d.0.remaining()),
            None => wait.min(state.request_timeout),
        };
        let run = engine.wait(&submitted.run_id, wait).await?;
        let code = if run.status.is_terminal() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let mut resp = (code, replay, Json(Started::Run(Box::new(run)))).into_response();
        resp.extensions_mut().insert(crate::observe::LongPoll);
        return Ok(resp);
    }
    let accepted = RunAccepted {
        run_id: submitted.run_id,
        status: submitted.status,
    };
    Ok((
        StatusCode::ACCEPTED,
        replay,
        Json(Started::Accepted(accepted)),
    )
        .into_response())
}

/// Filters of `GET /api/v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only runs of this workflow.
    workflow: Option<String>,
    /// Only runs in this status.
    status: Option<RunStatus>,
    /// `workflow` (the default: runs of workflows), `task` (`POST /api/v1/execute` and batch
    /// tasks) or `any`.
    kind: Option<KindFilter>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only runs created within this long: `15m`, `24h`, `7d` (humantime's syntax).
    #[param(example = "24h")]
    since: Option<String>,
}

/// Which runs `GET /api/v1/runs` lists.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindFilter {
    /// Runs of workflows.
    #[default]
    Workflow,
    /// One-step tasks.
    Task,
    /// Both.
    Any,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first, as summaries (`GET /api/v1/runs/{id}` has input, output and steps).
    runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; null on the last. A page is cut short, with a
    /// cursor, when it would exceed `server.max_list_bytes`.
    next_cursor: Option<String>,
}

/// List runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", operation_id = "listRuns", tag = "runs", params(ListQuery),
    responses((status = 200, description = "A page of runs", body = RunList),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let engine = state.engine()?;
    let status = q.status;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let created_from = match &q.since {
        None => None,
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid since `{s}`: use a duration such as 15m, 24h or 7d"
                ))
            })?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis());
            Some(i64::try_from(now.saturating_sub(d.as_millis())).unwrap_or(0))
        }
    };
    let mut runs = engine
        .list(&RunQuery {
            workflow: q.workflow,
            status,
            limit,
            before: q.cursor,
            created_from,
            kind: match q.kind.unwrap_or_default() {
                KindFilter::Workflow => Some(flotilla_store::RunKind::Workflow),
                KindFilter::Task => Some(flotilla_store::RunKind::Task),
                KindFilter::Any => None,
            },
            ..Default::default()
        })
        .await?;
    let mut full = runs.len() == limit as usize;
    // Cut the page where it would pass the response cap; the cursor picks up from there.
    let mut bytes = 0usize;
    if let Some(cut) = runs.iter().position(|r| {
        bytes += serde_json::to_vec(r).map_or(0, |v| v.len() + 1);
        bytes > state.max_list_bytes
    }) {
        runs.truncate(cut.max(1));
        full = true;
    }
    let next = full.then(|| runs.last().map(|r| r.id.clone())).flatten();
    Ok(Json(RunList {
        runs,
        next_cursor: next,
    }))
}

/// A run with its steps.
#[utoipa::path(get, path = "/api/v1/runs/{id}", operation_id = "getRun", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = RunRecord),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    _: NoQuery,
) -> Result<Json<RunRecord>, ApiError> {
    let engine = state.engine()?;
    let run = engine.run(&id).await?.ok_or_else(|| engine.missing(&id))?;
    Ok(Json(run))
}

/// Cancel a run: steps in flight are stopped and nothing further runs (no compensation: a
/// cancel is the caller's decision, not a failure); 409 when it already finished.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", operation_id = "cancelRun", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run, cancelled", body = RunRecord),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    _: NoQuery,
) -> Result<Json<RunRecord>, ApiError> {
    let engine = state.engine()?;
    Ok(Json(engine.cancel(&id).await?))
}

/// Configured workflows.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    /// Their names.
    workflows: Vec<String>,
}

/// Configured workflows.
#[utoipa::path(get, path = "/api/v1/workflows", operation_id = "listWorkflows", tag = "runs",
    responses((status = 200, description = "Workflow names", body = WorkflowList),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn workflows(
    State(state): State<AppState>,
    _: NoQuery,
) -> Result<Json<WorkflowList>, ApiError> {
    let engine = state.engine()?;
    Ok(Json(WorkflowList {
        workflows: engine.workflow_names(),
    }))
}
