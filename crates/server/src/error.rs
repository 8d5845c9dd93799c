//! The one error type of the API: every variant maps to a status and a stable JSON body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_engine::{EngineError, RegistrationError};
use serde::Serialize;

use crate::request_id::current_request_id;

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable kind: `invalid_request`, `unauthorized`, `not_found`, …
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// Every problem found (validation errors); empty otherwise.
    pub details: Vec<String>,
    /// The request's `x-request-id`.
    pub request_id: String,
}

/// An error answer: `{"error", "message", "details", "request_id"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `details` lists every problem.
    #[error("{message}")]
    BadRequest {
        /// Summary.
        message: String,
        /// Every problem found.
        details: Vec<String>,
    },
    /// 401: no usable credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials without the permission.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 414.
    #[error("the request target is longer than the limit of {0} bytes")]
    UriTooLong(usize),
    /// 413.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed JSON of the wrong shape.
    #[error("{message}")]
    Unprocessable {
        /// Summary.
        message: String,
        /// Every problem found.
        details: Vec<String>,
    },
    /// 429: the principal's rate limit for this route group is spent.
    #[error("too many requests to the {group} routes; retry in {retry_after}s")]
    TooManyRequests {
        /// Seconds until a request is admitted again.
        retry_after: u64,
        /// The route group.
        group: &'static str,
    },
    /// 502: the agent failed.
    #[error("{0}")]
    AgentFailed(String),
    /// 503: not ready, shutting down, circuit open, no healthy agent.
    #[error("{message}")]
    Unavailable {
        /// Machine-readable kind (`not_ready`, `circuit_open`, `unavailable`, `shutting_down`).
        kind: &'static str,
        /// Why.
        message: String,
        /// Seconds until trying again makes sense (`Retry-After`).
        retry_after: u64,
    },
    /// 504: a task did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// 500: a bug or a broken dependency; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 with one problem.
    pub fn bad_request(message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::BadRequest {
            details: vec![message.clone()],
            message,
        }
    }

    pub(crate) fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::AgentFailed(_) => (StatusCode::BAD_GATEWAY, "agent_error"),
            ApiError::Unavailable { kind, .. } => (StatusCode::SERVICE_UNAVAILABLE, kind),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.parts();
        let request_id = current_request_id();
        let details = match &self {
            ApiError::BadRequest { details, .. } | ApiError::Unprocessable { details, .. } => {
                details.clone()
            }
            _ => Vec::new(),
        };
        match &self {
            ApiError::Internal(detail) => {
                tracing::error!(request_id = %request_id, error = %detail, "internal error")
            }
            ApiError::Unavailable { message, .. } => {
                tracing::warn!(request_id = %request_id, "{message}")
            }
            _ => tracing::debug!(request_id = %request_id, status = status.as_u16(), "{self}"),
        }
        let body = ErrorBody {
            error: kind.to_owned(),
            message: self.to_string(),
            details,
            request_id,
        };
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            ApiError::Unavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnknownWorkflow(_)
            | EngineError::UnknownAgent(_)
            | EngineError::UnknownCapability(_)
            | EngineError::RunNotFound(_)
            | EngineError::RunPruned { .. } => ApiError::NotFound(e.to_string()),
            EngineError::InvalidInput(details) => ApiError::BadRequest {
                message: "the input does not match the workflow's input_schema".into(),
                details,
            },
            EngineError::BadRequest(m) => ApiError::bad_request(m),
            EngineError::AlreadyFinished(..) | EngineError::IdempotencyInProgress(_) => {
                ApiError::Conflict(e.to_string())
            }
            EngineError::IdempotencyMismatch(_) => ApiError::Unprocessable {
                message: e.to_string(),
                details: vec![
                    "an Idempotency-Key stands for one request: send a new key with a new body"
                        .into(),
                ],
            },
            EngineError::ShuttingDown => ApiError::Unavailable {
                kind: "shutting_down",
                message: e.to_string(),
                retry_after: 1,
            },
            EngineError::Store(s) => ApiError::Unavailable {
                kind: "store_unavailable",
                message: format!("the store is unavailable: {s}"),
                retry_after: 1,
            },
            EngineError::Definition(..) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::Configured(_) => ApiError::Conflict(e.to_string()),
            RegistrationError::Invalid(m) => ApiError::bad_request(m),
        }
    }
}
