//! Extractors whose rejections are [`ApiError`]s: 400 for malformed JSON, 413 for an
//! oversized body, 415 for a missing content type, 422 for valid JSON of the wrong shape
//! (a body must be a JSON object; fields are named by their JSON path, never by a Rust type);
//! a query extractor that refuses unknown parameters; a path extractor whose bad escapes are
//! 400s with the same body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` with API errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn is_json(parts: &axum::http::HeaderMap) -> bool {
    parts
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|mime| {
            mime.eq_ignore_ascii_case("application/json")
                || mime
                    .rsplit_once('+')
                    .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
        })
}

/// Rewrites serde's wording for people who wrote JSON: `struct StartBody` and friends are
/// Rust names a client never saw.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push_str("a JSON object");
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out.replace("enum ", "one of the allowed values ")
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        // Every body of this API is an object; serde would also take a positional array.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            // Valid JSON of another kind is a shape problem; anything else is a syntax one.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Ok(_) => ApiError::Unprocessable {
                        message: "the JSON body does not have the expected shape".into(),
                        details: vec!["the body must be a JSON object".into()],
                    },
                    Err(e) => ApiError::BadRequest {
                        message: "the body is not valid JSON".into(),
                        details: vec![e.to_string()],
                    },
                },
            );
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // serde_json reports a value that is no enum variant (a number where a name
            // belongs) as a syntax error; the body parses, so it is a shape problem.
            let parses = || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            let shape = inner.is_data() || parses();
            let what = if inner.is_data() || !shape {
                describe(&inner)
            } else {
                "not one of the allowed values".to_owned()
            };
            let problem = if path == "." || path.is_empty() {
                what
            } else {
                format!("{path}: {what}")
            };
            if shape {
                ApiError::Unprocessable {
                    message: "the JSON body does not have the expected shape".into(),
                    details: vec![problem],
                }
            } else {
                ApiError::BadRequest {
                    message: "the body is not valid JSON".into(),
                    details: vec![problem],
                }
            }
        })?;
        de.end().map_err(|e| ApiError::BadRequest {
            message: "the body is not valid JSON".into(),
            details: vec![e.to_string()],
        })?;
        Ok(ApiJson(value))
    }
}

/// The configured body limit, put in request extensions so rejections can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// `Query<T>` with API errors: 400 naming the parameter that did not parse. `T` denies
/// unknown fields, so a misspelt parameter (`?wiat=30s`) is an error, not silently ignored.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::BadRequest {
                message: "invalid query string".into(),
                details: vec![
                    e.body_text()
                        .trim_start_matches("Failed to deserialize query string: ")
                        .to_owned(),
                ],
            })
    }
}

/// For routes that take no query parameters: any given is a 400 naming it.
#[derive(Debug)]
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.uri.query().filter(|q| !q.is_empty()) {
            None => Ok(NoQuery),
            Some(q) => {
                let names: Vec<String> = q
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        format!(
                            "unknown query parameter `{}`",
                            p.split('=').next().unwrap_or(p)
                        )
                    })
                    .collect();
                Err(ApiError::BadRequest {
                    message: "this route takes no query parameters".into(),
                    details: names,
                })
            }
        }
    }
}

/// `Path<T>` with API errors: a bad percent-escape or a wrong type is a JSON 400.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::BadRequest {
                message: "invalid path".into(),
                details: vec![e.body_text()],
            })
    }
}
