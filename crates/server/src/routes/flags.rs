//! Feature flags: `GET /api/v1/flags` and OpenFeature's remote evaluation protocol (OFREP
//! v0.3): `POST /ofrep/v1/evaluate/flags/{key}` and bulk `POST /ofrep/v1/evaluate/flags`
//! with `ETag` / `If-None-Match`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_flags::{Context, FlagInfo, FlagSet, Reason};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiPath;

/// A flag as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagView {
    /// Name.
    name: String,
    /// Switched on at all.
    enabled: bool,
    /// Rollout percentage, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    percentage: Option<f64>,
    /// Environment it is limited to.
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    /// Conditions or strategies, counted.
    rules: usize,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

impl From<&FlagInfo> for FlagView {
    fn from(f: &FlagInfo) -> Self {
        FlagView {
            name: f.name.clone(),
            enabled: f.enabled,
            percentage: f.percentage,
            environment: f.environment.clone(),
            rules: f.rules,
            description: f.description.clone(),
        }
    }
}

/// The configured flags.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagList {
    /// Every flag.
    flags: Vec<FlagView>,
}

/// Feature flags and how they are set up.
#[utoipa::path(get, path = "/api/v1/flags", operation_id = "listFlags", tag = "flags",
    responses((status = 200, description = "The flags", body = FlagList),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<FlagList>, ApiError> {
    let engine = state.engine()?;
    let set = engine.flags().snapshot();
    Ok(Json(FlagList {
        flags: set.list().iter().map(FlagView::from).collect(),
    }))
}

/// An OFREP evaluation request: `{"context": {"targetingKey": "…", …}}` (read by
/// `context`, which tells a missing context from a null one).
#[derive(Debug, ToSchema)]
#[expect(
    dead_code,
    reason = "describes the request body for the OpenAPI document"
)]
pub struct OfrepRequest {
    /// The evaluation context: `targetingKey` plus any fields conditions use.
    #[schema(value_type = Object, required = false)]
    context: Option<Value>,
}

/// A successful evaluation.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfrepSuccess {
    /// The flag.
    key: String,
    /// Its value.
    value: bool,
    /// Why: STATIC, TARGETING_MATCH, SPLIT, DISABLED or DEFAULT.
    reason: String,
    /// `on`, `off`, or the flag's variant.
    variant: String,
    /// Nothing yet.
    #[schema(value_type = Object)]
    metadata: Value,
}

/// A failed evaluation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepError {
    /// The flag, when the failure is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// FLAG_NOT_FOUND, TARGETING_KEY_MISSING, INVALID_CONTEXT or PARSE_ERROR.
    error_code: String,
    /// What went wrong.
    error_details: String,
}

/// The bulk answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfrepBulk {
    /// One entry per flag: an evaluation or an error.
    #[schema(value_type = Vec<Object>)]
    flags: Vec<Value>,
}

fn ofrep_error(status: StatusCode, key: Option<&str>, code: &str, details: String) -> Response {
    (
        status,
        Json(OfrepError {
            key: key.map(str::to_owned),
            error_code: code.to_owned(),
            error_details: details,
        }),
    )
        .into_response()
}

/// Parses the request body's context, or answers 400 the OFREP way.
fn context(
    key: Option<&str>,
    body: &Bytes,
) -> Result<(Context, Map<String, Value>), Box<Response>> {
    let bad = |code: &str, details: String| {
        Box::new(ofrep_error(StatusCode::BAD_REQUEST, key, code, details))
    };
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            "PARSE_ERROR",
            format!("send {{\"context\": {{…}}}} as JSON: {e}"),
        )
    })?;
    let Value::Object(mut req) = req else {
        return Err(bad(
            "PARSE_ERROR",
            "the body must be an object: {\"context\": {…}}".into(),
        ));
    };
    let fields = match req.remove("context") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("INVALID_CONTEXT", "`context` must be an object".into())),
    };
    if fields.get("targetingKey").is_some_and(|k| !k.is_string()) {
        return Err(bad(
            "INVALID_CONTEXT",
            "`targetingKey` must be a string".into(),
        ));
    }
    Ok((Context::from_json(&fields), fields))
}

fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Static => "STATIC",
        Reason::TargetingMatch => "TARGETING_MATCH",
        Reason::Split => "SPLIT",
        Reason::Disabled => "DISABLED",
        Reason::Default => "DEFAULT",
    }
}

/// Evaluates one flag: `Ok(success)` or `Err((status, code, details))`.
fn evaluate(
    state: &AppState,
    set: &FlagSet,
    key: &str,
    ctx: &Context,
) -> Result<OfrepSuccess, (StatusCode, &'static str, String)> {
    if !set.contains(key) {
        return Err((
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!("no flag named `{key}`"),
        ));
    }
    if set.needs_targeting_key(key) && !ctx.has_targeting_key() {
        return Err((
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            format!("`{key}` is a percentage rollout: give context.targetingKey"),
        ));
    }
    let e = set.evaluate(key, ctx);
    if let Ok(engine) = state.engine() {
        engine.flags().record(key, e.as_ref());
    }
    let e = e.ok_or((
        StatusCode::NOT_FOUND,
        "FLAG_NOT_FOUND",
        format!("no flag named `{key}`"),
    ))?;
    Ok(OfrepSuccess {
        key: key.to_owned(),
        value: e.enabled,
        reason: reason(e.reason).to_owned(),
        variant: e
            .variant
            .unwrap_or_else(|| if e.enabled { "on" } else { "off" }.to_owned()),
        metadata: json!({}),
    })
}

/// Evaluate one flag (OFREP).
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", operation_id = "ofrepEvaluateFlag", tag = "flags",
    params(("key" = String, Path, description = "Flag name")),
    request_body(content = OfrepRequest, content_type = "application/json"),
    responses((status = 200, description = "The flag's value", body = OfrepSuccess),
        (status = 400, description = "Bad context or missing targeting key", body = OfrepError),
        (status = 404, description = "No such flag", body = OfrepError),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn ofrep_one(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    body: Bytes,
) -> Response {
    let set = match state.engine() {
        Ok(e) => e.flags().snapshot(),
        Err(e) => return e.into_response(),
    };
    let (ctx, _) = match context(Some(&key), &body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match evaluate(&state, &set, &key, &ctx) {
        Ok(ok) => Json(ok).into_response(),
        Err((status, code, details)) => ofrep_error(status, Some(&key), code, details),
    }
}

/// Evaluate every flag (OFREP bulk); `If-None-Match` with the last `ETag` answers 304 while
/// neither the flags nor the context changed.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", operation_id = "ofrepEvaluateFlags", tag = "flags",
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of an earlier answer")),
    request_body(content = OfrepRequest, content_type = "application/json"),
    responses((status = 200, description = "Every flag", body = OfrepBulk,
            headers(("ETag" = String, description = "Send back as If-None-Match"))),
        (status = 304, description = "Nothing changed"),
        (status = 400, description = "Bad context", body = OfrepError),
        (status = "default", description = "An error", body = ErrorBody)))]
pub async fn ofrep_bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let set = match state.engine() {
        Ok(e) => e.flags().snapshot(),
        Err(e) => return e.into_response(),
    };
    let (ctx, fields) = match context(None, &body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut hash = Sha256::new();
    hash.update(set.digest.as_bytes());
    hash.update(Value::Object(fields).to_string().as_bytes());
    let etag = format!("\"{}\"", hex_prefix(&hash.finalize()));
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let etag_header = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_header)]).into_response();
    }
    let flags: Vec<Value> = set
        .list()
        .iter()
        .map(|f| match evaluate(&state, &set, &f.name, &ctx) {
            Ok(ok) => serde_json::to_value(ok).unwrap_or(Value::Null),
            Err((_, code, details)) => {
                json!({"key": f.name, "errorCode": code, "errorDetails": details})
            }
        })
        .collect();
    ([(header::ETAG, etag_header)], Json(OfrepBulk { flags })).into_response()
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
