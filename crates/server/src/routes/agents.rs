//! `GET /api/v1/agents` and remote registration.

use axum::Json;
use axum::extract::State;
use flotilla_engine::{AgentStatus, Registration};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, NoQuery};

/// Every agent, configured and registered.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    /// The agents.
    agents: Vec<AgentStatus>,
    /// How many.
    total: usize,
    /// How many are healthy.
    healthy: usize,
}

/// Agents with health, circuit state, load and error rate.
#[utoipa::path(get, path = "/api/v1/agents", operation_id = "listAgents", tag = "agents",
    responses((status = 200, description = "Every agent", body = AgentList),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, _: NoQuery) -> Result<Json<AgentList>, ApiError> {
    let engine = state.engine()?;
    let agents = engine.agents();
    let healthy = agents.iter().filter(|a| a.status == "healthy").count();
    Ok(Json(AgentList {
        total: agents.len(),
        healthy,
        agents,
    }))
}

/// Register or refresh a remote agent.
///
/// A remote agent announces itself; repeat before the TTL runs out as a heartbeat.
#[utoipa::path(post, path = "/api/v1/agents/register", operation_id = "registerAgent", tag = "agents", request_body = Registration,
    responses((status = 200, description = "The agent as registered", body = AgentStatus),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    _: NoQuery,
    ApiJson(reg): ApiJson<Registration>,
) -> Result<Json<AgentStatus>, ApiError> {
    let engine = state.engine()?;
    Ok(Json(engine.register_agent(reg)?))
}
