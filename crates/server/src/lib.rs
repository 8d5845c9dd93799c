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
//! let limits = flotilla_server::ConnLimits {
//!     header_read_timeout: std::time::Duration::from_secs(10),
//!     idle_timeout: std::time::Duration::from_secs(120),
//!     max_connections: 10_000,
//! };
//! flotilla_server::serve(listener, state, std::future::pending(), std::time::Duration::from_secs(30), limits).await
//! # }
//! ```

pub mod auth;
mod conn;
mod console;
mod error;
mod extract;
mod observe;
mod request_id;
pub mod routes;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use flotilla_engine::Engine;
use flotilla_engine::metrics::Metrics;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use console::Rollouts;
pub use error::ApiError;

/// What every handler sees; cloning it (axum does, per extractor) is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl AppState {
    /// The state of a server.
    pub fn new(shared: AppShared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppShared;
    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppShared {
    /// Set once migrations ran and the engine started.
    pub engine: Arc<OnceLock<Engine>>,
    /// The metrics catalogue.
    pub metrics: Arc<Metrics>,
    /// Whether the process is ready to take traffic.
    pub ready: Arc<AtomicBool>,
    /// Set on SIGTERM: still serving, but `/ready` says 503 so that traffic moves away.
    pub draining: Arc<AtomicBool>,
    /// Turns true when shutdown begins.
    pub shutdown: watch::Receiver<bool>,
    /// Largest accepted body.
    pub body_limit: u64,
    /// Longest a request may take, `?wait=` included.
    pub request_timeout: Duration,
    /// Largest list response body.
    pub max_list_bytes: usize,
    /// Process start.
    pub started: Instant,
    /// Credentials, roles and rate limits.
    pub auth: Arc<auth::Auth>,
    /// Origins allowed by CORS (empty: no CORS headers).
    pub cors_origins: Arc<[String]>,
    /// Served over TLS (adds `Strict-Transport-Security`).
    pub tls: bool,
    /// Where the console reads rollouts from.
    pub rollouts: Rollouts,
}

/// The client's address, as `ConnectInfo` sees it, whatever the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl AppState {
    /// The engine, or 503 while starting.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| ApiError::Unavailable {
            kind: "not_ready",
            message: "flotilla is starting (migrations and recovery in progress)".into(),
            retry_after: 1,
        })
    }
}

/// Every route with its OpenAPI description: a handler is documented by the same call that
/// routes it, so the two cannot drift apart.
/// Who may call a group of routes.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Always the same role group.
    Fixed(auth::Group),
    /// `/metrics`: open, or viewers only under `auth.protect_metrics`.
    Metrics,
}

/// Routes that share their access and their time limit.
struct RouteGroup {
    access: Access,
    /// Bounded by `server.request_timeout`; a stream lasts as long as what it follows.
    bounded: bool,
    routes: OpenApiRouter<AppState>,
}

/// Every route, declared with the access it needs and whether it is time-bounded.
fn routes() -> Vec<RouteGroup> {
    use auth::Group::{Admin, Open, Operate, Read};
    use routes::*;
    use utoipa_axum::routes;
    let group = |access, routes| RouteGroup {
        access,
        bounded: true,
        routes,
    };
    vec![
        group(
            Access::Fixed(Open),
            OpenApiRouter::new()
                .routes(routes!(health::health))
                .routes(routes!(health::livez))
                .routes(routes!(health::ready))
                .routes(routes!(health::readyz))
                .routes(routes!(meta::openapi))
                .routes(routes!(meta::version)),
        ),
        group(
            Access::Metrics,
            OpenApiRouter::new().routes(routes!(health::metrics)),
        ),
        group(
            Access::Fixed(Read),
            OpenApiRouter::new()
                .routes(routes!(tasks::status))
                .routes(routes!(agents::list))
                .routes(routes!(runs::workflows))
                .routes(routes!(runs::list))
                .routes(routes!(runs::get))
                .routes(routes!(flags::list))
                // Flag evaluation reads, though OFREP posts its context.
                .routes(routes!(flags::ofrep_one))
                .routes(routes!(flags::ofrep_bulk)),
        ),
        RouteGroup {
            access: Access::Fixed(Read),
            bounded: false,
            routes: OpenApiRouter::new().routes(routes!(events::stream)),
        },
        group(
            Access::Fixed(Operate),
            OpenApiRouter::new()
                .routes(routes!(tasks::execute))
                .routes(routes!(tasks::batch))
                .routes(routes!(runs::start))
                .routes(routes!(runs::cancel)),
        ),
        group(
            Access::Fixed(Admin),
            OpenApiRouter::new().routes(routes!(agents::register)),
        ),
    ]
}

/// Every route in one router; with `state`, each group behind its access check and, when
/// bounded, its deadline.
fn all_routes(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    let all = OpenApiRouter::with_openapi(ApiDoc::openapi());
    routes().into_iter().fold(all, |all, g| {
        let Some(state) = state else {
            return all.merge(g.routes);
        };
        let group = match g.access {
            Access::Fixed(group) => group,
            Access::Metrics if state.auth.protect_metrics() => auth::Group::Read,
            Access::Metrics => auth::Group::Open,
        };
        let mut routes = g.routes.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), group),
            auth::layer,
        ));
        if g.bounded {
            routes = routes.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                observe::deadline,
            ));
        }
        all.merge(routes)
    })
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "flotilla", description = "Durable multi-agent workflows over HTTP."),
    modifiers(&Credentials),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "tasks", description = "Seed 003's task contract: one-step runs"),
        (name = "runs", description = "Workflow runs"),
        (name = "agents", description = "The agent fleet"),
        (name = "flags", description = "Feature flags, and OpenFeature remote evaluation (OFREP)"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "meta", description = "About this server"),
    )
)]
struct ApiDoc;

/// The two ways to authenticate: `Authorization: Bearer <JWT or API key>` and `X-API-Key`.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A JWT, or an API key from `flotilla keys create`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// The OpenAPI document of the whole API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    all_routes(None).split_for_parts().1
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let (api, _) = all_routes(Some(&state)).split_for_parts();
    let api = api
        .merge(console::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not answer {method}", uri.path()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time a client has to send a request's headers, from their first byte (and a new
    /// connection's first request, from the connect).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once; the next one is closed when accepted.
    pub max_connections: usize,
}

/// Serves until `shutdown` resolves, then stops accepting and waits up to `grace` for
/// in-flight requests.
///
/// Each connection holds one of `limits.max_connections` permits for as long as it lives (a
/// drop guard gives it back, however the connection ends); a client that sends no complete
/// request head within `limits.header_read_timeout` of its first byte (or of connecting) is
/// disconnected, and an idle keep-alive connection after `limits.idle_timeout`. The rate-limit maps are pruned on a timer owned by this call.
pub async fn serve<L>(
    mut listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: ConnLimits,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::Service as _;

    let auth = state.auth.clone();
    let app = router(state);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The HTTP/1 timer is set per connection (conn::ConnTimer).
    builder
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let mut prune = tokio::time::interval(Duration::from_secs(10));
    let mut refused_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            () = &mut shutdown => break,
            _ = prune.tick() => {
                auth.prune();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: close at once rather than let the connection wait unserved.
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; closing new connections"
                );
                refused_logged = Some(Instant::now());
            }
            drop(io);
            continue;
        };
        let app = app.clone();
        let requested = Arc::new(AtomicBool::new(false));
        let first = requested.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                first.store(true, Ordering::Relaxed);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(Peer(peer)));
                let mut app = app.clone();
                async move { app.call(req.map(axum::body::Body::new)).await }
            });
        let (io, reads) = conn::CountingIo::new(io);
        let mut builder = builder.clone();
        builder.http1().timer(conn::ConnTimer::new(
            reads,
            limits.header_read_timeout,
            limits.idle_timeout,
        ));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let first_request = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            // hyper's header timer starts once it knows the protocol, which takes a first
            // byte: a client that sends nothing at all is closed here.
            let ended = tokio::select! {
                ended = &mut conn => Some(ended),
                () = tokio::time::sleep(first_request) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None if !requested.load(Ordering::Relaxed) => return,
                None => conn.await,
            };
            if let Err(e) = ended {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => Ok(()),
        Err(_) => {
            tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
            Ok(())
        }
    }
}
