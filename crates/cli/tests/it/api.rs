//! Every route's success and error cases, and bad input.

use serde_json::{Value, json};

use crate::app::{metric, spawn_app};

const CONFIG: &str = r#"
agents:
  echo: { kind: builtin, builtin: echo, capabilities: [echo] }
  nope: { kind: builtin, builtin: fail }
workflows:
  greet:
    input_schema: { type: object, required: [name], properties: { name: { type: string }, age: { type: integer } } }
    steps:
      - { id: hello, agent: echo, input: { greeting: "hello {{ input.name }}" } }
"#;

#[tokio::test]
async fn health_ready_version_openapi_and_metrics() {
    let app = spawn_app(CONFIG).await;
    for path in [
        "/health",
        "/livez",
        "/ready",
        "/readyz",
        "/version",
        "/openapi.json",
    ] {
        let (code, body) = app.get(path).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (_, health) = app.get("/health").await;
    assert_eq!(health["components"]["store"]["status"], "healthy");
    assert_eq!(health["components"]["agents"]["total"], 2);
    let (_, doc) = app.get("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 21, "{:?}", paths.keys());
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(id),
                "{method} {path}: duplicate operationId {id}"
            );
            assert!(op["responses"]["200"].is_object() || op["responses"]["202"].is_object());
        }
    }
    let start = &paths["/api/v1/workflows/{name}/runs"]["post"];
    assert_eq!(
        start["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/StartBody"
    );
    let task = &doc["components"]["schemas"]["TaskBody"];
    assert_eq!(task["additionalProperties"], false, "{task}");
    assert_eq!(task["properties"]["instructions"]["maxLength"], 5000);
    assert_eq!(task["properties"]["timeout"]["minimum"], 1000);
    assert_eq!(
        doc["components"]["schemas"]["ErrorBody"]["required"],
        json!(["error", "message", "details", "request_id"])
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let text = app.text("/metrics").await;
    for name in [
        "http_requests_total",
        "http_request_duration_seconds",
        "agent_health_status",
        "agent_queue_length",
        "circuit_breaker_state",
        "flotilla_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(metric(&text, "process_resident_memory_bytes", &[]) > 1.0e6);
    // Every agent's latency histogram reaches minutes (LLM calls), and counters exist at 0
    // before anything happened.
    assert!(
        text.lines()
            .any(|l| l.starts_with("agent_task_duration_seconds_bucket")
                && l.contains("le=\"524.288\"")
                && l.contains("agent=\"echo\"")),
        "agent latency buckets reach minutes"
    );
    assert_eq!(
        metric(
            &text,
            "workflow_runs_total",
            &[("workflow", "greet"), ("status", "failed")]
        ),
        0.0,
        "run counters exist at 0 from the start"
    );
    assert_eq!(
        metric(&text, "agent_health_status", &[("agent_id", "echo")]),
        1.0
    );
}

#[tokio::test]
async fn execute_batch_and_status() {
    let app = spawn_app(CONFIG).await;
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"agent": "echo", "input": {"x": 1}, "priority": "high"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], json!({"x": 1}));
    assert_eq!(body["agentId"], "echo");
    let task = body["taskId"].as_str().unwrap();
    let (code, status) = app.get(&format!("/api/v1/status/{task}")).await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["kind"], "task");

    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"capability": "echo", "input": "plain text"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "plain text");

    let (code, body) = app
        .post(
            "/api/v1/batch",
            json!({"tasks": [
                {"agent": "echo", "input": 1},
                {"agent": "nope", "input": {"fail": true}},
                {"agent": "echo", "input": 3}
            ]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["totalTasks"], 3);
    assert_eq!(body["successCount"], 2);
    assert_eq!(body["errorCount"], 1);
    assert_eq!(body["results"][1]["status"], "rejected");
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "agent_batch_tasks_total", &[("status", "error")]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "agent_tasks_total",
            &[("agent", "echo"), ("status", "success")]
        ),
        4.0
    );
}

#[tokio::test]
async fn execute_errors() {
    let app = spawn_app(CONFIG).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"agent": "ghost", "input": 1}), 404, "not_found"),
        (
            json!({"agent": "echo", "capability": "echo", "input": 1}),
            400,
            "invalid_request",
        ),
        (json!({"input": 1}), 400, "invalid_request"),
        (
            json!({"agent": "echo", "input": 1, "timeout": 5}),
            400,
            "invalid_request",
        ),
        (
            json!({"agent": "echo", "input": 1, "priority": "urgent"}),
            422,
            "unprocessable",
        ),
        (
            json!({"agent": "echo", "input": 1, "colour": "red"}),
            422,
            "unprocessable",
        ),
        (json!({"agent": 7, "input": 1}), 422, "unprocessable"),
        (
            json!({"agent": "echo", "input": "x".repeat(10_001)}),
            400,
            "invalid_request",
        ),
        (
            json!({"agent": "nope", "input": {"fail": true}}),
            502,
            "agent_error",
        ),
        (
            json!({"capability": "teleport", "input": 1}),
            404,
            "not_found",
        ),
        (
            json!({"capability": "", "input": 1}),
            400,
            "invalid_request",
        ),
    ];
    for (body, code, kind) in cases {
        let (got, answer) = app.post("/api/v1/execute", body.clone()).await;
        assert_eq!(got, code, "{body} -> {answer}");
        assert_eq!(answer["error"], kind, "{answer}");
        assert!(answer["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A task is one agent call: its error is the agent's, naming no internal step.
    let (_, answer) = app
        .post("/api/v1/execute", json!({"agent": "nope", "input": {}}))
        .await;
    let message = answer["message"].as_str().unwrap();
    assert!(!message.contains("step"), "{message}");
    let (code, body) = app.post("/api/v1/batch", json!({"tasks": []})).await;
    assert_eq!(code, 400, "{body}");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"agent": "echo", "input": i}))
        .collect();
    let (code, _) = app.post("/api/v1/batch", json!({"tasks": many})).await;
    assert_eq!(code, 400);
    let (code, body) = app.get("/api/v1/status/does-not-exist").await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    for query in ["status=bogus", "limit=abc", "limit=0", "colour=red"] {
        let (code, body) = app.get(&format!("/api/v1/runs?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_request", "{query}: {body}");
    }
}

#[tokio::test]
async fn a_request_past_request_timeout_is_504() {
    let app = spawn_app(
        "server: { request_timeout: 1s }\nagents: { slow: { kind: builtin, builtin: sleep, delay: 5s } }\n",
    )
    .await;
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"agent": "slow", "input": 1, "timeout": 10000}),
        )
        .await;
    assert_eq!(code, 504, "{body}");
    assert_eq!(body["error"], "timeout");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("request_timeout"),
        "{body}"
    );
    let (code, _) = app.get("/health").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn malformed_json_missing_content_type_and_oversized_bodies() {
    let app = spawn_app(CONFIG).await;
    let r = app
        .client
        .post(app.url("/api/v1/execute"))
        .header("content-type", "application/json")
        .body("{\"agent\": \"echo\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let r = app
        .client
        .post(app.url("/api/v1/execute"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // An 11 MB body: the server answers 413 from the declared length, before reading it.
    let (status, body) =
        oversized_post(&app.addr, "/api/v1/workflows/greet/runs", 11 * 1024 * 1024).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert!(body["message"].as_str().unwrap().contains("10485760"));

    // Nothing was half-stored by any of it.
    let (_, runs) = app.get("/api/v1/runs?kind=any").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn runs_start_wait_list_get_cancel() {
    let app = spawn_app(CONFIG).await;
    let (code, run) = app
        .post(
            "/api/v1/workflows/greet/runs?wait=10s",
            json!({"input": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"], json!({"greeting": "hello Ada"}));
    assert_eq!(run["steps"][0]["status"], "succeeded");
    let id = run["id"].as_str().unwrap().to_owned();

    let (code, got) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(got["output"], run["output"]);

    let second = app.start_run("greet", json!({"name": "Bob"})).await;
    app.finished(&second).await;
    let (code, page) = app.get("/api/v1/runs?workflow=greet&limit=1").await;
    assert_eq!(code, 200);
    assert_eq!(page["runs"][0]["id"], second.as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = app
        .get(&format!(
            "/api/v1/runs?workflow=greet&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(next["runs"][0]["id"], id.as_str());
    let (_, failed) = app.get("/api/v1/runs?status=failed").await;
    assert_eq!(failed["runs"].as_array().unwrap().len(), 0);
    let (code, body) = app.get("/api/v1/runs?status=sideways").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (code, _) = app.get("/api/v1/runs?limit=0").await;
    assert_eq!(code, 400);

    let (code, body) = app
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (code, _) = app.post("/api/v1/runs/nope/cancel", json!({})).await;
    assert_eq!(code, 404);
    let (code, _) = app.get("/api/v1/runs/nope").await;
    assert_eq!(code, 404);
    let (code, wf) = app.get("/api/v1/workflows").await;
    assert_eq!((code, wf["workflows"].clone()), (200, json!(["greet"])));
}

#[tokio::test]
async fn submission_errors_store_nothing() {
    let app = spawn_app(CONFIG).await;
    let (code, body) = app
        .post("/api/v1/workflows/nope/runs", json!({"input": {}}))
        .await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, body) = app
        .post(
            "/api/v1/workflows/greet/runs",
            json!({"input": {"age": "old"}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let details = body["details"].as_array().unwrap();
    assert_eq!(details.len(), 2, "every violation is listed: {body}");
    assert!(details.iter().any(|d| d.as_str().unwrap().contains("/age")));
    assert!(details.iter().any(|d| d.as_str().unwrap().contains("name")));
    let (code, _) = app
        .post(
            "/api/v1/workflows/greet/runs",
            json!({"input": {"name": "x"}, "extra": 1}),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = app
        .post(
            "/api/v1/workflows/greet/runs?wait=soon",
            json!({"input": {"name": "x"}}),
        )
        .await;
    assert_eq!(code, 400);
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs}");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_run() {
    let app = spawn_app(CONFIG).await;
    let send = || {
        app.client
            .post(app.url("/api/v1/workflows/greet/runs"))
            .header("idempotency-key", "order-42")
            .json(&json!({"input": {"name": "Ada"}}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    // Replayed once the first run has finished (while it runs, a repeat is 409: see
    // hostile::idempotency_keys_never_cross_callers_or_workflows).
    app.finished(first["run_id"].as_str().unwrap()).await;
    let r = send().await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let second: Value = r.json().await.unwrap();
    assert_eq!(first["run_id"], second["run_id"]);
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn request_ids_unknown_routes_and_events_stream() {
    let app = spawn_app(CONFIG).await;
    let r = app
        .client
        .get(app.url("/version"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let r = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    let id = app.start_run("greet", json!({"name": "Ada"})).await;
    app.finished(&id).await;
    let text = app.text(&format!("/api/v1/runs/{id}/events")).await;
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "step_started",
            "step_succeeded",
            "run_finished"
        ],
        "{text}"
    );
    assert!(text.contains("id: 4"));
    // Resuming after event 2 replays the rest only.
    let rest = app
        .client
        .get(app.url(&format!("/api/v1/runs/{id}/events")))
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let kinds: Vec<&str> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds, ["step_succeeded", "run_finished"]);
    let (code, _) = app.get("/api/v1/runs/nope/events").await;
    assert_eq!(code, 404);
    let text = app.text("/metrics").await;
    assert!(
        metric(
            &text,
            "http_requests_total",
            &[("route", "/api/v1/runs/{id}/events"), ("code", "200")]
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &text,
            "workflow_runs_total",
            &[("workflow", "greet"), ("status", "succeeded")]
        ),
        1.0
    );
}

/// Sends the headers of a POST declaring `len` bytes and the first chunk of the body, then
/// reads the answer: what a client sees when it streams a body that is too large.
async fn oversized_post(base: &str, path: &str, len: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{{\"input\": \""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn runs_lists_workflow_runs_unless_asked_for_tasks() {
    let app = spawn_app(CONFIG).await;
    let run = app.start_run("greet", json!({"name": "Ada"})).await;
    app.finished(&run).await;
    let (code, task) = app
        .post("/api/v1/execute", json!({"agent": "echo", "input": 1}))
        .await;
    assert_eq!(code, 200, "{task}");
    let ids = |page: &Value| -> Vec<String> {
        page["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = app.get("/api/v1/runs").await;
    assert_eq!(ids(&page), [run]);
    let (_, page) = app.get("/api/v1/runs?kind=task").await;
    assert_eq!(ids(&page), [task["taskId"].as_str().unwrap()]);
    let (_, page) = app.get("/api/v1/runs?kind=any").await;
    assert_eq!(ids(&page).len(), 2);
    let (code, body) = app.get("/api/v1/runs?kind=jobs").await;
    assert_eq!(code, 400, "{body}");
}
