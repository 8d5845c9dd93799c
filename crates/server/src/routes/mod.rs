//! One file per resource.

pub mod agents;
pub mod events;
pub mod flags;
pub mod health;
pub mod meta;
pub mod runs;
pub mod tasks;

use std::time::Duration;

use crate::error::ApiError;

/// Parses `?wait=`: a duration such as `500ms`, `30s` or `2m` (humantime's syntax), or a
/// bare number of seconds.
pub fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let parsed = match text.parse::<u32>() {
        Ok(secs) => Ok(Duration::from_secs(secs.into())),
        Err(_) => humantime::parse_duration(text),
    };
    parsed.map_err(|_| {
        ApiError::bad_request(format!(
            "invalid wait `{text}`: use a duration such as 500ms, 30s or 2m"
        ))
    })
}

pub use flotilla_store::timestamp::rfc3339;
