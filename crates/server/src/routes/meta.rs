//! `GET /version` and `GET /openapi.json`.

use axum::Json;
use serde_json::{Map, Value, json};

/// Version and build information.
pub async fn version() -> Json<Value> {
    Json(json!({
        "name": "flotilla",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("FLOTILLA_COMMIT").unwrap_or("unknown"),
    }))
}

/// (method, path, summary, request body schema, success status).
const ROUTES: &[(&str, &str, &str, Option<&str>, &str)] = &[
    (
        "post",
        "/api/v1/execute",
        "Run one task synchronously",
        Some("Task"),
        "200",
    ),
    (
        "post",
        "/api/v1/batch",
        "Run 1-100 tasks, each settled on its own",
        Some("Batch"),
        "200",
    ),
    (
        "get",
        "/api/v1/status/{id}",
        "A task's or run's status",
        None,
        "200",
    ),
    (
        "get",
        "/api/v1/agents",
        "Agents with health, circuit state, load and error rate",
        None,
        "200",
    ),
    (
        "post",
        "/api/v1/agents/register",
        "Register or refresh a remote agent (TTL heartbeat)",
        Some("Registration"),
        "200",
    ),
    (
        "get",
        "/api/v1/workflows",
        "Configured workflows",
        None,
        "200",
    ),
    (
        "post",
        "/api/v1/workflows/{name}/runs",
        "Start a run (Idempotency-Key honoured; ?wait=30s waits)",
        Some("StartRun"),
        "202",
    ),
    (
        "get",
        "/api/v1/runs",
        "List runs, newest first (workflow, status, limit, cursor)",
        None,
        "200",
    ),
    (
        "get",
        "/api/v1/runs/{id}",
        "A run with its steps",
        None,
        "200",
    ),
    (
        "post",
        "/api/v1/runs/{id}/cancel",
        "Cancel a run",
        None,
        "200",
    ),
    (
        "get",
        "/api/v1/runs/{id}/events",
        "Server-sent events of a run's transitions",
        None,
        "200",
    ),
    (
        "get",
        "/health",
        "Liveness with component detail",
        None,
        "200",
    ),
    ("get", "/livez", "Alias of /health", None, "200"),
    ("get", "/ready", "Readiness", None, "200"),
    ("get", "/readyz", "Alias of /ready", None, "200"),
    ("get", "/metrics", "Prometheus metrics", None, "200"),
    ("get", "/openapi.json", "This document", None, "200"),
    (
        "get",
        "/version",
        "Version and build information",
        None,
        "200",
    ),
];

fn schemas() -> Value {
    let priority = json!({"type": "string", "enum": ["low", "medium", "high"]});
    json!({
        "Error": {"type": "object", "required": ["error", "message", "details", "request_id"], "properties": {
            "error": {"type": "string"}, "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "string"}}, "request_id": {"type": "string"}}},
        "Task": {"type": "object", "additionalProperties": false, "required": ["input"], "properties": {
            "agent": {"type": "string"}, "capability": {"type": "string"}, "action": {"type": "string"},
            "input": {}, "instructions": {"type": "string", "maxLength": 5000}, "priority": priority,
            "timeout": {"type": "integer", "minimum": 1000, "maximum": 300000}, "metadata": {"type": "object"}}},
        "Batch": {"type": "object", "additionalProperties": false, "required": ["tasks"], "properties": {
            "tasks": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"$ref": "#/components/schemas/Task"}}}},
        "StartRun": {"type": "object", "additionalProperties": false, "properties": {
            "input": {}, "priority": priority, "metadata": {"type": "object"}}},
        "Registration": {"type": "object", "additionalProperties": false, "required": ["name", "endpoints"], "properties": {
            "name": {"type": "string"}, "endpoints": {"type": "array", "items": {"type": "string"}},
            "capabilities": {"type": "array", "items": {"type": "string"}}, "ttl_seconds": {"type": "integer", "minimum": 1},
            "description": {"type": "string"}}},
    })
}

/// The API description.
pub async fn openapi() -> Json<Value> {
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, summary, body, ok) in ROUTES {
        let mut op = json!({
            "summary": summary,
            "responses": {
                *ok: {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if let Some(schema) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "flotilla", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas()},
    }))
}
