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

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled (empty outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

fn usable(id: &HeaderValue) -> Option<String> {
    let s = id.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .then(|| s.to_owned())
}

/// Takes the caller's `x-request-id` (or makes one), echoes it on the response, and counts
/// the request in `http_requests_total` / `http_request_duration_seconds` by route template.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(usable)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = req.method().to_string();
    req.extensions_mut().insert(BodyLimit(state.body_limit));
    let started = Instant::now();
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.body_limit;
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            // Refuse a body declared too large before reading any of it.
            match declared {
                Some(len) if len > limit => ApiError::PayloadTooLarge(limit).into_response(),
                _ => next.run(req).await,
            }
        })
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let route = resp
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
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

/// Answers 504 when a request takes longer than `server.request_timeout`. The event stream
/// is exempt: it lasts as long as its run.
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let streaming = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str().ends_with("/events"));
    if streaming {
        return next.run(req).await;
    }
    let limit = state.request_timeout;
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
