//! `GET /api/v1/agents` and remote registration.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_engine::Registration;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// Agents with health, circuit state, load and error rate.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = state.engine()?;
    let agents = engine.agents();
    let healthy = agents.iter().filter(|a| a.status == "healthy").count();
    Ok(Json(
        json!({"agents": agents, "total": agents.len(), "healthy": healthy}),
    ))
}

/// `POST /api/v1/agents/register`: a remote agent announces itself; repeat before the TTL
/// runs out as a heartbeat.
pub async fn register(
    State(state): State<AppState>,
    ApiJson(reg): ApiJson<Registration>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let engine = state.engine()?;
    let status = engine.register_agent(reg)?;
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(status).map_err(|e| ApiError::Internal(e.to_string()))?),
    ))
}
