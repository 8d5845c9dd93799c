//! One file per resource.

pub mod agents;
pub mod events;
pub mod health;
pub mod meta;
pub mod runs;
pub mod tasks;

use std::time::Duration;

use crate::error::ApiError;

/// Parses `?wait=30s` (or a bare number of seconds).
pub fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| ApiError::bad_request(format!("invalid wait `{t}`: {e}")))
}

/// RFC 3339 time of a unix-millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}
