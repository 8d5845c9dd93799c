//! Request ids and HTTP metrics, as one middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use flotilla_engine::metrics::HttpLabels;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use axum::response::IntoResponse;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::request_id::{REQUEST_ID, current_request_id};

/// Longest request target (path and query) served; longer ones get a JSON 414.
const MAX_URI: usize = 8 * 1024;

fn usable(id: &HeaderValue) -> Option<String> {
    let s = id.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .then(|| s.to_owned())
}

/// The method as a metric label: the standard ones by name, anything a client invents as
/// `other`, so that a request cannot add series to `/metrics`.
fn method_label(method: &axum::http::Method) -> String {
    use axum::http::Method;
    let known = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    if known.contains(method) {
        method.as_str().to_owned()
    } else {
        "other".to_owned()
    }
}

/// Takes the caller's `x-request-id` (or makes one), echoes it on the response, and counts
/// the request in `http_requests_total` / `http_request_duration_seconds` by route template.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(usable)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = method_label(req.method());
    req.extensions_mut().insert(BodyLimit(state.body_limit));
    let started = Instant::now();
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.body_limit;
    let uri_len = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1);
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            // Refuse a body declared too large before reading any of it.
            match declared {
                _ if uri_len > MAX_URI => ApiError::UriTooLong(MAX_URI).into_response(),
                Some(len) if len > limit => ApiError::PayloadTooLarge(limit).into_response(),
                _ => next.run(req).await,
            }
        })
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let mut route = resp
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    if resp.extensions().get::<LongPoll>().is_some() {
        // Waiting is what the client asked for: keep it out of the route's latency.
        route.push_str("?wait");
    }
    let labels = HttpLabels {
        method,
        route,
        code: resp.status().as_u16().to_string(),
    };
    let m = &state.metrics;
    m.http_requests.get_or_create(&labels).inc();
    m.http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Runs a routed request in its server span (`POST /api/v1/execute`), a child of the
/// caller's `traceparent` when there is one, and copies the matched route template onto the
/// response, where [`layer`] reads it (routing happens inside `layer`).
pub async fn route_template(req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().cloned();
    let route = path.as_ref().map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        "http.request.method" = %req.method(),
        "http.route" = %route,
        "url.path" = %req.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
        "flotilla.request.id" = %current_request_id(),
        otel.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(flotilla_engine::trace::remote_parent)
    {
        let _ = span.set_parent(parent);
    }
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.record(
        "http.response.status_code",
        i64::from(resp.status().as_u16()),
    );
    if resp.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(p) = path {
        resp.extensions_mut().insert(p);
    }
    resp
}

/// Marks a response that waited on purpose (`?wait=`): its route label gets `?wait`, so
/// latency alerts and analysis can leave long polls out.
#[derive(Debug, Clone, Copy)]
pub struct LongPoll;

/// When the request's `server.request_timeout` runs out; handlers that wait (`?wait=`) stop
/// waiting before it, so that they can still answer with what they have.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub tokio::time::Instant);

impl Deadline {
    /// How long a handler may still wait and have time left to answer.
    pub fn remaining(&self) -> std::time::Duration {
        let left = self
            .0
            .saturating_duration_since(tokio::time::Instant::now());
        // Leave a tenth (at most a second) to build and send the answer.
        left.saturating_sub((left / 10).min(std::time::Duration::from_secs(1)))
    }
}

/// Answers 504 when a request takes longer than `server.request_timeout` (every route group
/// declared bounded: all but the event stream, which lasts as long as its run).
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.request_timeout;
    let mut req = req;
    req.extensions_mut()
        .insert(Deadline(tokio::time::Instant::now() + limit));
    tokio::time::timeout(limit, next.run(req))
        .await
        .unwrap_or_else(|_| {
            ApiError::Timeout(format!(
                "the request did not finish within server.request_timeout ({})",
                humantime::format_duration(limit)
            ))
            .into_response()
        })
}
