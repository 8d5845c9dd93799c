//! Secret redaction for anything shown to a person: `config show`, logs, errors.

use serde_json::Value;

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// Whether a key names a secret (`api_key`, `X-Api-Key`, `password`, `secret`, `token`,
/// `cookie`, …). Dashes count as underscores, so header names match too.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    [
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "private_key",
        "cookie",
        "credential",
        "session",
        "signature",
        "access_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Keys whose every value is hidden, whatever its name: an agent's extra request headers and
/// a command agent's environment carry credentials under names nobody can list in advance.
const ALL_VALUES_SECRET: &[&str] = &["headers", "env"];

/// Hides what a URL may carry as credentials: the password (or a lone user name, often a
/// token), and every query value (`?token=…`). Text that is not a URL comes back unchanged.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return text.to_owned();
    };
    if url.cannot_be_a_base() {
        return text.to_owned();
    }
    let mut changed = false;
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
        changed = true;
    } else if !url.username().is_empty() {
        let _ = url.set_username(REDACTED);
        changed = true;
    }
    if url.query().is_some_and(|q| !q.is_empty()) {
        let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(names.iter().map(|k| (k.as_str(), REDACTED)));
        changed = true;
    }
    if changed {
        // The query serializer escapes `*`; keep the marker readable.
        url.to_string().replace("%2A%2A%2A", REDACTED)
    } else {
        text.to_owned()
    }
}

/// Redacts every URL inside free text (an error message, a log line).
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| at + i);
        // Sentence punctuation after a URL is not part of it.
        let end = start
            + rest[start..end]
                .trim_end_matches(['.', ',', ';', ':', '!', '?'])
                .len();
        let end = end.max(at + 3);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Redacts secret-named keys, every value under `headers` and `env`, and credentials in
/// URLs throughout a JSON value.
pub fn redact_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if ALL_VALUES_SECRET.contains(&k.as_str()) {
                    hide_all(v);
                } else if is_secret_key(k) && !v.is_null() {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_value(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::String(s) if s.contains("://") => *s = redact_text(s),
        _ => {}
    }
}

fn hide_all(value: &mut Value) {
    match value {
        Value::Object(map) => map.values_mut().for_each(hide_all),
        Value::Array(items) => items.iter_mut().for_each(hide_all),
        Value::Null => {}
        other => *other = Value::String(REDACTED.into()),
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

    #[test]
    fn hides_query_values_userinfo_headers_and_env() {
        assert_eq!(
            redact_url("http://u:PW@host:9000/run?token=T&x=1"),
            "http://u:***@host:9000/run?token=***&x=***"
        );
        assert_eq!(redact_url("https://TOKEN@host/"), "https://***@host/");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_text("calling http://h/run?token=T: connection refused"),
            "calling http://h/run?token=***: connection refused"
        );
        let mut v = json!({"agents": {"a": {"headers": {"X-Custom": "s3cr3t"}, "env": {"K": "v"},
                           "endpoints": ["http://h/run?key=abc"]}},
                           "x": {"X-Api-Key": "k", "Cookie": "c"}});
        redact_value(&mut v);
        assert_eq!(v["agents"]["a"]["headers"]["X-Custom"], "***");
        assert_eq!(v["agents"]["a"]["env"]["K"], "***");
        assert_eq!(v["agents"]["a"]["endpoints"][0], "http://h/run?key=***");
        assert_eq!(v["x"]["X-Api-Key"], "***");
        assert_eq!(v["x"]["Cookie"], "***");
        // Sections named like auth settings are not secrets themselves.
        let mut v = json!({"auth": {"mode": "jwt"}, "rate_limits": {"failed_auth": {"burst": 10}}});
        redact_value(&mut v);
        assert_eq!(v["auth"]["mode"], "jwt");
        assert_eq!(v["rate_limits"]["failed_auth"]["burst"], 10);
    }
}
