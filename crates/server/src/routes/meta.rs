//! `GET /version` and `GET /openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// Version and build information.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    /// Always `flotilla`.
    name: &'static str,
    /// The release.
    version: &'static str,
    /// The commit it was built from, when known.
    commit: &'static str,
    /// What the deployment calls this build (`FLOTILLA_REVISION`, set by the image `deploy
    /// generate` writes: the configuration repository's commit), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
}

/// Version and build information.
#[utoipa::path(get, path = "/version", operation_id = "version", tag = "meta", security(()),
    responses((status = 200, description = "The build", body = Version)))]
pub async fn version() -> Json<Version> {
    Json(Version {
        name: "flotilla",
        version: env!("CARGO_PKG_VERSION"),
        commit: option_env!("FLOTILLA_COMMIT").unwrap_or("unknown"),
        revision: std::env::var("FLOTILLA_REVISION").ok(),
    })
}

/// The OpenAPI 3.1 document of this API, generated from the handlers and their types.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "meta", security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        crate::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}
