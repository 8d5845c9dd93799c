//! Liveness, readiness and metrics.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// Liveness with component detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy`, `degraded` (some agent unhealthy) or `unhealthy` (the store is down).
    status: &'static str,
    /// flotilla's version.
    version: &'static str,
    /// Seconds since start.
    uptime_seconds: u64,
    /// Per component.
    components: Components,
}

/// The parts `/health` checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Components {
    /// The store.
    store: StoreHealth,
    /// The agents, once the engine started.
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<AgentsHealth>,
    /// Runs in flight, once the engine started.
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<RunsHealth>,
    /// The rate limiters' memory.
    rate_limits: RateLimitsHealth,
}

/// The rate limiters at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitsHealth {
    /// Clients (principals and addresses) whose buckets are remembered; idle ones are
    /// forgotten every few seconds.
    tracked_clients: usize,
}

/// The store's answer to a ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreHealth {
    /// `starting`, `healthy` or `unhealthy`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'static str>,
    /// Ping round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    /// Why it is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Agents at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentsHealth {
    /// `healthy` or `degraded`.
    status: &'static str,
    /// How many agents.
    total: usize,
    /// Names of the unhealthy ones.
    unhealthy: Vec<String>,
}

/// Runs at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunsHealth {
    /// Runs this process is driving.
    active: usize,
}

/// Liveness with component detail.
///
/// 200 while the store answers, 503 when it does not. Unhealthy agents make the status
/// `degraded` but not 503: restarting flotilla would not heal them.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "health", security(()),
    responses((status = 200, description = "Alive", body = Health),
        (status = 503, description = "The store does not answer", body = Health)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut components = Components {
        store: StoreHealth {
            status: "starting",
            backend: None,
            latency_ms: None,
            error: None,
        },
        agents: None,
        runs: None,
        rate_limits: RateLimitsHealth {
            tracked_clients: state.auth.remembered(),
        },
    };
    if let Some(engine) = state.engine.get() {
        let started = Instant::now();
        let backend = Some(engine.store().backend());
        let ping = tokio::time::timeout(Duration::from_secs(2), engine.store().ping()).await;
        components.store = match ping {
            Ok(Ok(())) => StoreHealth {
                status: "healthy",
                backend,
                latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
                error: None,
            },
            Ok(Err(e)) => StoreHealth {
                status: "unhealthy",
                backend,
                latency_ms: None,
                error: Some(e.to_string()),
            },
            Err(_) => StoreHealth {
                status: "unhealthy",
                backend,
                latency_ms: None,
                error: Some("no answer within 2s".into()),
            },
        };
        let agents = engine.agents();
        let unhealthy: Vec<String> = agents
            .iter()
            .filter(|a| a.status != "healthy")
            .map(|a| a.id.clone())
            .collect();
        components.agents = Some(AgentsHealth {
            status: if unhealthy.is_empty() {
                "healthy"
            } else {
                "degraded"
            },
            total: agents.len(),
            unhealthy,
        });
        components.runs = Some(RunsHealth {
            active: engine.active_runs(),
        });
    }
    let healthy = components.store.status != "unhealthy";
    let degraded = components
        .agents
        .as_ref()
        .is_some_and(|a| a.status == "degraded");
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
    let body = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        components,
    };
    (code, Json(body))
}

/// Readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether to send traffic here.
    ready: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Readiness.
///
/// 200 once migrations ran and the engine started; 503 before that, during shutdown, and
/// while the store does not answer.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "health", security(()),
    responses((status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, with the reason", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                reason: Some(reason.to_owned()),
            }),
        )
    };
    if *state.shutdown.borrow() {
        return not_ready("shutting down");
    }
    if state.draining.load(Ordering::Acquire) {
        return not_ready("draining: shutting down after in-flight requests");
    }
    let Some(engine) = state.engine.get() else {
        return not_ready("starting: migrations and recovery in progress");
    };
    if !state.ready.load(Ordering::Acquire) {
        return not_ready("starting");
    }
    match tokio::time::timeout(Duration::from_secs(2), engine.store().ping()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(Readiness {
                ready: true,
                reason: None,
            }),
        ),
        Ok(Err(e)) => not_ready(&format!("store unavailable: {e}")),
        Err(_) => not_ready("store unavailable: no answer within 2s"),
    }
}

/// The process itself, for a liveness probe: alive.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `alive`.
    status: &'static str,
    /// flotilla's version.
    version: &'static str,
    /// Seconds since start.
    uptime_seconds: u64,
}

/// Liveness: 200 whenever the process answers HTTP.
///
/// It checks no dependency: a database or agent outage is not healed by restarting
/// flotilla, so it turns `/ready` (and `/health`) to 503, never this. Point liveness probes
/// here.
#[utoipa::path(get, path = "/livez", operation_id = "livez", tag = "health", security(()),
    responses((status = 200, description = "The process answers", body = Liveness)))]
pub async fn livez(State(state): State<AppState>) -> Json<Liveness> {
    Json(Liveness {
        status: "alive",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}

/// The same as `/ready`, under the Kubernetes name.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health", security(()),
    responses((status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, with the reason", body = Readiness)))]
pub async fn readyz(state: State<AppState>) -> (StatusCode, Json<Readiness>) {
    ready(state).await
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health",
    security((), ("bearer" = []), ("api_key" = [])),
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String),
        (status = "default", description = "An error (when `/metrics` requires credentials)", body = crate::error::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
