//! The id of the request being handled, for error bodies and spans: set by the
//! observe middleware for the request's whole life.

tokio::task_local! {
    pub(crate) static REQUEST_ID: String;
}

/// The id of the request being handled (empty outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}
