//! A console failure, shown as a page with its status.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

use super::templates::{ENV, with_headers};
use crate::error::ApiError;

#[derive(Debug)]
pub(crate) struct ConsoleError {
    status: StatusCode,
    message: String,
}

impl ConsoleError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ConsoleError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Logged in full; the page says only that something broke.
    pub(crate) fn internal(detail: String) -> Self {
        tracing::error!(error = %detail, "console error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        let (status, _) = e.parts();
        if let ApiError::Internal(detail) = &e {
            return Self::internal(detail.clone());
        }
        Self::new(status, e.to_string())
    }
}

impl From<flotilla_engine::EngineError> for ConsoleError {
    fn from(e: flotilla_engine::EngineError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let html = ENV
            .get_template("error.html")
            .and_then(|t| {
                t.render(context! {
                    title => self.status.canonical_reason().unwrap_or("Error"),
                    status => self.status.as_u16(),
                    message => self.message,
                    user => context! {},
                    version => env!("CARGO_PKG_VERSION"),
                })
            })
            .unwrap_or_else(|_| "error".into());
        with_headers((self.status, Html(html)).into_response())
    }
}
