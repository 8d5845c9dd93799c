//! Secret redaction for anything shown to a person: `config show`, logs, errors.

use serde_json::Value;

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// Whether a key names a secret (`api_key`, `password`, `secret`, `token`, …).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "api_key",
        "apikey",
        "password",
        "secret",
        "token",
        "authorization",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Hides the password of a URL with credentials (`postgres://u:pw@h/db` → `postgres://u:***@h/db`).
pub fn redact_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let hidden = if userinfo.contains(':') {
        format!("{user}:{REDACTED}")
    } else {
        REDACTED.to_owned()
    };
    format!("{}://{hidden}{}", &text[..scheme_end], &rest[at..])
}

/// Redacts secret-named keys and credentials in URLs throughout a JSON value.
pub fn redact_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !v.is_null() {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_value(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::String(s) if s.contains("://") => *s = redact_url(s),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hides_secrets() {
        let mut v = json!({"llm": {"providers": {"o": {"api_key": "sk-1", "base_url": "https://x"}}},
                          "storage": {"url": "postgres://app:hunter2@db:5432/f"}});
        redact_value(&mut v);
        assert_eq!(v["llm"]["providers"]["o"]["api_key"], "***");
        assert_eq!(v["storage"]["url"], "postgres://app:***@db:5432/f");
        assert_eq!(v["llm"]["providers"]["o"]["base_url"], "https://x");
    }
}
