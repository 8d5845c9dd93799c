//! `auth:` and `rate_limits:`: who may call the API, and how often.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may call everything (logged loudly at startup).
    #[default]
    None,
    /// `Authorization: Bearer <key>` or `X-API-Key: <key>` with a key from `auth.api_keys`.
    ApiKey,
    /// `Authorization: Bearer <JWT>` checked against `auth.jwt`.
    Jwt,
    /// Either.
    Any,
}

/// A role: what a principal may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read runs, agents and flags.
    Viewer,
    /// Also execute tasks, start and cancel runs.
    Operator,
    /// Also register agents; everything.
    Admin,
}

impl Role {
    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// `auth:` settings.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// none | api_key | jwt | any.
    #[serde(default)]
    pub mode: AuthMode,
    /// API keys, stored as hashes (`flotilla keys create` prints a key and its entry).
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// JWT validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Whether `/metrics` needs credentials (viewer) too.
    #[serde(default)]
    pub protect_metrics: bool,
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it (the principal's name).
    pub name: String,
    /// `sha256:<hex>` of the key.
    pub hash: String,
    /// What it may do.
    pub role: Role,
}

/// JWT signature algorithms accepted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with `secret`.
    HS256,
    /// RSA with `public_key`.
    RS256,
    /// ECDSA P-256 with `public_key`.
    ES256,
}

/// `auth.jwt:` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 | RS256 | ES256.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (`${JWT_SECRET}` or `file:/path`). Redacted everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256/ES256 public key, PEM text or `file:/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim holding the role (default `role`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_role_claim() -> String {
    "role".into()
}

/// A token bucket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

/// `rate_limits:` settings: per principal (key name, token subject, or client IP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Every route group without its own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<RateLimit>,
    /// Per route group: `read`, `operate`, `admin`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, RateLimit>,
    /// Failed authentications per client address (default 0.2/s, burst 10): past it, the
    /// address gets 429 before its credentials are even looked at, so keys cannot be guessed
    /// at speed.
    #[serde(default = "default_failed_auth")]
    pub failed_auth: RateLimit,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default: None,
            groups: BTreeMap::new(),
            failed_auth: default_failed_auth(),
        }
    }
}

fn default_failed_auth() -> RateLimit {
    RateLimit {
        per_second: 0.2,
        burst: 10,
    }
}
