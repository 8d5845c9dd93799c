//! Secrets given inline or as `file:/path` references (a mounted Kubernetes Secret).

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output (256 bits).
pub const MIN_HMAC_SECRET: usize = 32;

/// Reads a `file:/path` reference, or returns the value itself; white space around the
/// secret (the newline an editor adds) is trimmed either way.
pub fn resolve(value: &str) -> Result<String, String> {
    match value.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("reading {path}: {e}")),
        None => Ok(value.trim().to_owned()),
    }
}
