//! Workflow runs: start, list, inspect, cancel.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_engine::Submission;
use flotilla_spec::Priority;
use flotilla_store::{RunQuery, RunRecord, RunStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::parse_wait;
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};

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
/// (202 and the run so far if it is still going). An `Idempotency-Key` seen before returns
/// the first run, with `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/api/v1/workflows/{name}/runs", operation_id = "startRun", tag = "runs", request_body = StartBody,
    params(("name" = String, Path, description = "Workflow name"), WaitQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters")),
    responses((status = 200, description = "The run finished (with `?wait=`)", body = RunRecord),
        (status = 202, description = "The run is stored", body = Started),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let wait = q.wait.as_deref().map(parse_wait).transpose()?;
    let idempotency_key = match headers.get("idempotency-key") {
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
            Some(k.to_owned())
        }
    };
    let sub = Submission {
        input: body.input,
        priority: body.priority,
        metadata: body.metadata,
        idempotency_key,
    };
    let submitted = engine.submit(&name, sub).await?;
    let replay = [(
        "idempotent-replayed",
        if submitted.existing { "true" } else { "false" },
    )];
    if let Some(wait) = wait {
        let wait = wait.min(state.request_timeout);
        let run = engine.wait(&submitted.run_id, wait).await?;
        let code = if run.status.is_terminal() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok((code, replay, Json(Started::Run(Box::new(run)))).into_response());
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
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next page; null on the last.
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
    let runs = engine
        .list(&RunQuery {
            workflow: q.workflow,
            status,
            limit,
            before: q.cursor,
        })
        .await?;
    let next = (runs.len() == limit as usize)
        .then(|| runs.last().map(|r| r.id.clone()))
        .flatten();
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
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    let engine = state.engine()?;
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))?;
    Ok(Json(run))
}

/// Cancel a run: compensation runs for what succeeded; 409 when it already finished.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", operation_id = "cancelRun", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run, cancelled", body = RunRecord),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
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
pub async fn workflows(State(state): State<AppState>) -> Result<Json<WorkflowList>, ApiError> {
    let engine = state.engine()?;
    Ok(Json(WorkflowList {
        workflows: engine.workflow_names(),
    }))
}
