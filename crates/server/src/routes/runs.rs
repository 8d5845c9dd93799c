//! Workflow runs: start, list, inspect, cancel.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_engine::Submission;
use flotilla_spec::Priority;
use flotilla_store::{RunQuery, RunStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_wait;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// Body of `POST /api/v1/workflows/{name}/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    #[serde(default)]
    input: Value,
    priority: Option<Priority>,
    #[serde(default)]
    metadata: Value,
}

/// `?wait=30s`.
#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    wait: Option<String>,
}

/// `POST /api/v1/workflows/{name}/runs`: 202 `{run_id, status}` once the run is durable;
/// with `?wait=`, 200 and the finished run (202 and the run so far if it is still going).
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
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
        return Ok((code, replay, Json(run)).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        replay,
        Json(json!({"run_id": submitted.run_id, "status": submitted.status})),
    )
        .into_response())
}

/// Filters of `GET /api/v1/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/runs?workflow=&status=&limit=&cursor=`: newest first, paginated.
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            RunStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("unknown status `{s}` (queued, running, succeeded, failed, cancelled, timed_out)"))
            })
        })
        .transpose()?;
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
    Ok(Json(json!({"runs": runs, "next_cursor": next})))
}

/// `GET /api/v1/runs/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let run = engine
        .run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))?;
    Ok(Json(
        serde_json::to_value(run).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

/// `POST /api/v1/runs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let run = engine.cancel(&id).await?;
    Ok(Json(
        serde_json::to_value(run).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

/// `GET /api/v1/workflows`: configured workflow names.
pub async fn workflows(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    Ok(Json(json!({"workflows": engine.workflow_names()})))
}
