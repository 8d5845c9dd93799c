//! flotilla-server: the HTTP API.
//!
//! [`router`] builds the axum app over an [`AppState`]; [`serve`] binds, serves until the
//! shutdown signal, stops accepting, drains in-flight requests within the grace period and
//! returns. Every error is an [`ApiError`] with a stable JSON body; every response carries
//! `x-request-id`; every request is counted in the metrics catalogue by route template.
//!
//! ```no_run
//! # async fn demo(state: flotilla_server::AppState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! flotilla_server::serve(listener, state, std::future::pending(), std::time::Duration::from_secs(30)).await
//! # }
//! ```

pub mod auth;
mod error;
mod extract;
mod observe;
pub mod routes;
pub mod tls;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::{get, post};
use flotilla_engine::Engine;
use flotilla_engine::metrics::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;

pub use error::ApiError;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    /// Set once migrations ran and the engine started.
    pub engine: Arc<OnceLock<Engine>>,
    /// The metrics catalogue.
    pub metrics: Arc<Metrics>,
    /// Whether the process is ready to take traffic.
    pub ready: Arc<AtomicBool>,
    /// Turns true when shutdown begins.
    pub shutdown: watch::Receiver<bool>,
    /// Largest accepted body.
    pub body_limit: u64,
    /// Longest a request may wait (`?wait=`).
    pub request_timeout: Duration,
    /// Process start.
    pub started: Instant,
    /// Credentials, roles and rate limits.
    pub auth: Arc<auth::Auth>,
    /// Origins allowed by CORS (empty: no CORS headers).
    pub cors_origins: Vec<String>,
    /// Served over TLS (adds `Strict-Transport-Security`).
    pub tls: bool,
}

/// The client's address, as `ConnectInfo` sees it, whatever the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl AppState {
    /// The engine, or 503 while starting.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| ApiError::Unavailable {
            kind: "not_ready",
            message: "flotilla is starting (migrations and recovery in progress)".into(),
        })
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    use routes::*;
    let api = Router::new()
        .route("/api/v1/execute", post(tasks::execute))
        .route("/api/v1/batch", post(tasks::batch))
        .route("/api/v1/status/{id}", get(tasks::status))
        .route("/api/v1/agents", get(agents::list))
        .route("/api/v1/agents/register", post(agents::register))
        .route("/api/v1/workflows", get(runs::workflows))
        .route("/api/v1/workflows/{name}/runs", post(runs::start))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{id}", get(runs::get))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/events", get(events::stream))
        .route("/health", get(health::health))
        .route("/livez", get(health::health))
        .route("/ready", get(health::ready))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(meta::openapi))
        .route("/version", get(meta::version))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::layer,
        ))
        .route_layer(axum::middleware::from_fn(observe::route_template));
    let mut app = api
        .layer(DefaultBodyLimit::max(state.body_limit as usize))
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(security_header("x-content-type-options", "nosniff"))
        .layer(security_header("x-frame-options", "DENY"))
        .layer(security_header("referrer-policy", "no-referrer"));
    if state.tls {
        app = app.layer(security_header(
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ));
    }
    if !state.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                ]),
        );
    }
    app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        observe::layer,
    ))
    .with_state(state)
}

fn security_header(name: &'static str, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Serves until `shutdown` resolves, then stops accepting and waits up to `grace` for
/// in-flight requests.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    Peer: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let (stopping_tx, mut stopping_rx) = watch::channel(false);
    let app = router(state);
    let app = app.into_make_service_with_connect_info::<Peer>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    });
    let server = tokio::spawn(async move { server.await });
    let _ = stopping_rx.wait_for(|s| *s).await;
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
            Ok(())
        }
    }
}
