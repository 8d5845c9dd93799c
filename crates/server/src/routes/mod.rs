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

/// Parses `?wait=`: `500ms`, `30s`, `2m`, or a bare number of seconds.
pub fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let invalid = || {
        ApiError::bad_request(format!(
            "invalid wait `{text}`: use a whole number with ms, s or m (`30s`)"
        ))
    };
    if digits == 0 || digits > 9 {
        return Err(invalid());
    }
    let n: u64 = number.parse().map_err(|_| invalid())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(invalid()),
    }
}

/// RFC 3339 time of a unix-millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}
