//! A JSON extractor whose rejections are [`ApiError`]s: 400 for malformed JSON, 413 for an
//! oversized body, 415 for a missing content type, 422 for valid JSON of the wrong shape;
//! and a query extractor whose rejections are 400s with the same body.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` with API errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::Unprocessable {
                    message: "the JSON body does not have the expected shape".into(),
                    details: vec![
                        e.body_text()
                            .trim_start_matches(
                                "Failed to deserialize the JSON body into the target type: ",
                            )
                            .to_owned(),
                    ],
                },
                JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest {
                    message: "the body is not valid JSON".into(),
                    details: vec![
                        e.body_text()
                            .trim_start_matches("Failed to parse the request body as JSON: ")
                            .to_owned(),
                    ],
                },
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "send the body as JSON with `Content-Type: application/json`".into(),
                ),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge(limit)
                }
                other => ApiError::bad_request(other.body_text()),
            }),
        }
    }
}

/// The configured body limit, put in request extensions so rejections can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// `Query<T>` with API errors: 400 naming the parameter that did not parse.
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
