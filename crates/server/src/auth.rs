//! Authentication (API keys, JWT), authorization by role, and per-principal rate limits.
//!
//! Routes fall in groups: open (health, readiness, version, API description; metrics unless
//! protected), read (viewer), operate (operator: execute, start, cancel) and admin (agent
//! registration). A principal is an API key's name, a token's subject, or, without
//! credentials, the client's address; rate limits count per principal and group.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_spec::{AuthConfig, AuthMode, JwtAlgorithm, RateLimit, RateLimitConfig, Role};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// A route group and the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// No credentials needed.
    Open,
    /// Viewer.
    Read,
    /// Operator.
    Operate,
    /// Admin.
    Admin,
}

impl Group {
    fn needs(self) -> Option<Role> {
        match self {
            Group::Open => None,
            Group::Read => Some(Role::Viewer),
            Group::Operate => Some(Role::Operator),
            Group::Admin => Some(Role::Admin),
        }
    }

    /// The name used in configuration and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Group::Open => "open",
            Group::Read => "read",
            Group::Operate => "operate",
            Group::Admin => "admin",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Key name, token subject, or client address.
    pub name: String,
    /// What it may do; `None` for anonymous callers when auth is on.
    pub role: Option<Role>,
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
    role_claim: String,
}

/// Everything the auth middleware needs, built once from the configuration.
pub struct Auth {
    mode: AuthMode,
    keys: HashMap<String, (String, Role)>,
    jwt: Option<Jwt>,
    protect_metrics: bool,
    limits: HashMap<&'static str, DefaultKeyedRateLimiter<String>>,
    /// Failed authentications per client address.
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses that spent their failures, until when. Checked before credentials are, so a
    /// guesser learns nothing while throttled; pruned with the limiters.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of a key, as `auth.api_keys[].hash` holds it.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn limiter<K: std::hash::Hash + Eq + Clone>(limit: &RateLimit) -> DefaultKeyedRateLimiter<K> {
    // Validation keeps the rate within a day and a nanosecond per cell; these fallbacks only
    // guard against a panic should an unchecked value arrive.
    let period =
        Duration::try_from_secs_f64(1.0 / limit.per_second).unwrap_or(Duration::from_secs(86_400));
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    RateLimiter::keyed(quota)
}

impl Auth {
    /// Whether `auth.mode` is `none`: every caller is an admin.
    pub fn is_off(&self) -> bool {
        self.mode == AuthMode::None
    }

    /// Whether `/metrics` needs a viewer's credentials.
    pub fn protect_metrics(&self) -> bool {
        self.protect_metrics
    }

    /// Builds the checker; errors name the setting at fault (never a secret).
    pub fn new(cfg: &AuthConfig, limits: &RateLimitConfig) -> Result<Auth, String> {
        let keys = cfg
            .api_keys
            .iter()
            .map(|k| (k.hash.clone(), (k.name.clone(), k.role)))
            .collect();
        let jwt = match &cfg.jwt {
            None => None,
            Some(j) => {
                let (algorithm, key) = match j.algorithm {
                    JwtAlgorithm::HS256 => {
                        let secret =
                            flotilla_spec::secret::resolve(j.secret.as_deref().unwrap_or_default())
                                .map_err(|e| format!("auth.jwt.secret: {e}"))?;
                        if secret.len() < flotilla_spec::secret::MIN_HMAC_SECRET {
                            return Err(format!(
                                "auth.jwt.secret is {} bytes; an HS256 secret needs at least {}",
                                secret.len(),
                                flotilla_spec::secret::MIN_HMAC_SECRET
                            ));
                        }
                        (
                            Algorithm::HS256,
                            DecodingKey::from_secret(secret.as_bytes()),
                        )
                    }
                    JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                        let pem = flotilla_spec::secret::resolve(
                            j.public_key.as_deref().unwrap_or_default(),
                        )
                        .map_err(|e| format!("auth.jwt.public_key: {e}"))?;
                        let key = if j.algorithm == JwtAlgorithm::RS256 {
                            DecodingKey::from_rsa_pem(pem.as_bytes())
                        } else {
                            DecodingKey::from_ec_pem(pem.as_bytes())
                        }
                        .map_err(|e| {
                            format!("auth.jwt.public_key is not a usable PEM public key: {e}")
                        })?;
                        let alg = if j.algorithm == JwtAlgorithm::RS256 {
                            Algorithm::RS256
                        } else {
                            Algorithm::ES256
                        };
                        (alg, key)
                    }
                };
                let mut validation = Validation::new(algorithm);
                validation.leeway = 5;
                validation.validate_nbf = true;
                // A configured issuer or audience is required, not merely checked when present.
                let mut required = vec!["exp"];
                if j.issuer.is_some() {
                    required.push("iss");
                }
                if j.audience.is_some() {
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                if let Some(iss) = &j.issuer {
                    validation.set_issuer(&[iss]);
                }
                match &j.audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                Some(Jwt {
                    key,
                    validation,
                    role_claim: j.role_claim.clone(),
                })
            }
        };
        let mut built = HashMap::new();
        for group in [Group::Read, Group::Operate, Group::Admin] {
            if let Some(limit) = limits.groups.get(group.name()).or(limits.default.as_ref()) {
                built.insert(group.name(), limiter(limit));
            }
        }
        Ok(Auth {
            mode: cfg.mode,
            keys,
            jwt,
            protect_metrics: cfg.protect_metrics,
            limits: built,
            failures: limiter(&limits.failed_auth),
            blocked: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets rate-limit state that no longer limits anyone: buckets refilled to full, and
    /// blocks that expired. A server calls it on a timer so that the maps stay as large as
    /// the set of recently active clients, not every address ever seen.
    pub fn prune(&self) {
        for l in self.limits.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }

    /// How many clients the limiters remember (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.limits.values().map(|l| l.len()).sum::<usize>() + self.failures.len()
    }

    /// 429 while `client` is throttled for failed authentications.
    fn check_blocked(&self, client: IpAddr) -> Result<(), ApiError> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        match blocked.get(&client) {
            Some(until) if *until > Instant::now() => Err(ApiError::TooManyRequests {
                retry_after: until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
                group: "failed_auth",
            }),
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `client`; past the allowance, blocks it.
    fn failed(&self, client: IpAddr) -> Option<ApiError> {
        let Err(not_until) = self.failures.check_key(&client) else {
            return None;
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, Instant::now() + wait);
        Some(ApiError::TooManyRequests {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            group: "failed_auth",
        })
    }

    fn identify(&self, req: &Request) -> Result<Option<Principal>, ApiError> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let api_key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let Some(credential) = bearer.or(api_key) else {
            return Ok(None);
        };
        let keys_on = matches!(self.mode, AuthMode::ApiKey | AuthMode::Any);
        let jwt_on = matches!(self.mode, AuthMode::Jwt | AuthMode::Any);
        if keys_on && let Some((name, role)) = self.keys.get(&hash_key(credential)) {
            return Ok(Some(Principal {
                name: name.clone(),
                role: Some(*role),
            }));
        }
        if jwt_on
            && let Some(jwt) = &self.jwt
            && credential.matches('.').count() == 2
        {
            let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                credential,
                &jwt.key,
                &jwt.validation,
            )
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {}", token_problem(&e))))?;
            let claims = data.claims;
            let name = claims
                .get("sub")
                .and_then(|s| s.as_str())
                .unwrap_or("token")
                .to_owned();
            let role = claims
                .get(&jwt.role_claim)
                .and_then(|r| r.as_str())
                .and_then(Role::parse);
            return Ok(Some(Principal { name, role }));
        }
        Err(ApiError::Unauthorized("invalid credentials".into()))
    }

    fn admit(&self, group: Group, principal: &str) -> Result<(), ApiError> {
        let Some(limiter) = self.limits.get(group.name()) else {
            return Ok(());
        };
        match limiter.check_key(&principal.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::TooManyRequests {
                    retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                    group: group.name(),
                })
            }
        }
    }
}

fn token_problem(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed",
    }
}

/// The middleware of one route group (declared with the routes, in `routes()`): identifies
/// the caller, checks the role the group needs, counts the rate.
pub async fn layer(
    State((state, group)): State<(AppState, Group)>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&state.auth, group, &mut req) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            if let ApiError::TooManyRequests { group, .. } = &e {
                state.metrics.rate_limited(group);
            }
            e.into_response()
        }
    }
}

pub(crate) fn check(auth: &Arc<Auth>, group: Group, req: &mut Request) -> Result<(), ApiError> {
    let ip = req
        .extensions()
        .get::<ConnectInfo<crate::Peer>>()
        .map(|c| c.0.0.ip());
    let client = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    if auth.mode == AuthMode::None {
        let principal = Principal {
            name: client.clone(),
            role: Some(Role::Admin),
        };
        req.extensions_mut().insert(principal);
        return if group == Group::Open {
            Ok(())
        } else {
            auth.admit(group, &client)
        };
    }
    if group == Group::Open {
        return Ok(());
    }
    if let Some(ip) = ip {
        auth.check_blocked(ip)?;
    }
    let principal = match auth.identify(req) {
        Ok(p) => p,
        Err(e) => return Err(ip.and_then(|ip| auth.failed(ip)).unwrap_or(e)),
    };
    let name = principal.as_ref().map_or(client, |p| p.name.clone());
    auth.admit(group, &name)?;
    let needed = group.needs().unwrap_or(Role::Viewer);
    match principal {
        None => Err(ApiError::Unauthorized(
            "credentials required: `Authorization: Bearer <key or token>`".into(),
        )),
        Some(p) if p.role.is_some_and(|r| r >= needed) => {
            req.extensions_mut().insert(p);
            Ok(())
        }
        Some(p) => Err(ApiError::Forbidden(format!(
            "`{}` may not do this: the {} routes need role {}",
            p.name,
            group.name(),
            match needed {
                Role::Viewer => "viewer",
                Role::Operator => "operator",
                Role::Admin => "admin",
            }
        ))),
    }
}
