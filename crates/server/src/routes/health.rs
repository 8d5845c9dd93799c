//! Liveness, readiness and metrics.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::AppState;

/// `GET /health` (`/livez`): 200 while the store answers, 503 when it does not. Unhealthy
/// agents make the status `degraded` but not 503: restarting flotilla would not heal them.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut healthy = true;
    let mut components = serde_json::Map::new();
    match state.engine.get() {
        None => {
            components.insert("store".into(), json!({"status": "starting"}));
        }
        Some(engine) => {
            let started = Instant::now();
            let ping = tokio::time::timeout(Duration::from_secs(2), engine.store().ping()).await;
            let store = match ping {
                Ok(Ok(())) => {
                    json!({"status": "healthy", "backend": engine.store().backend(), "latency_ms": started.elapsed().as_secs_f64() * 1000.0})
                }
                Ok(Err(e)) => {
                    healthy = false;
                    json!({"status": "unhealthy", "backend": engine.store().backend(), "error": e.to_string()})
                }
                Err(_) => {
                    healthy = false;
                    json!({"status": "unhealthy", "backend": engine.store().backend(), "error": "no answer within 2s"})
                }
            };
            components.insert("store".into(), store);
            let agents = engine.agents();
            let unhealthy: Vec<&str> = agents
                .iter()
                .filter(|a| a.status != "healthy")
                .map(|a| a.id.as_str())
                .collect();
            components.insert(
                "agents".into(),
                json!({
                    "status": if unhealthy.is_empty() { "healthy" } else { "degraded" },
                    "total": agents.len(),
                    "unhealthy": unhealthy,
                }),
            );
            components.insert("runs".into(), json!({"active": engine.active_runs()}));
        }
    }
    let degraded = components
        .get("agents")
        .is_some_and(|a| a["status"] == "degraded");
    let status = if !healthy {
        "unhealthy"
    } else if degraded {
        "degraded"
    } else {
        "healthy"
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs(),
            "components": components,
        })),
    )
}

/// `GET /ready` (`/readyz`): 200 once migrations ran and the engine started, 503 before
/// that, during shutdown, and while the store does not answer.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
    };
    if *state.shutdown.borrow() {
        return not_ready("shutting down");
    }
    let Some(engine) = state.engine.get() else {
        return not_ready("starting: migrations and recovery in progress");
    };
    if !state.ready.load(Ordering::Acquire) {
        return not_ready("starting");
    }
    match tokio::time::timeout(Duration::from_secs(2), engine.store().ping()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"ready": true}))),
        Ok(Err(e)) => not_ready(&format!("store unavailable: {e}")),
        Err(_) => not_ready("store unavailable: no answer within 2s"),
    }
}

/// `GET /metrics`: the Prometheus text exposition (OpenMetrics).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
