//! Local HTTP fakes: a counting agent service and a fake OpenAI-compatible provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the fake agent saw.
#[derive(Default)]
pub struct Seen {
    /// Calls per `Idempotency-Key`.
    pub calls: HashMap<String, u32>,
    /// Every call in order: (key, action, headers of interest).
    pub log: Vec<(String, String, Value)>,
}

/// A counting http agent. Input fields script it: `fail_times` (fail the first N calls of a
/// key with 500), `sleep_ms` (answer after a delay), `sleep_first_ms` (delay only the first
/// call of a key), `fail` (always 422).
pub struct FakeAgent {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    pub fn calls(&self, key: &str) -> u32 {
        self.seen
            .lock()
            .unwrap()
            .calls
            .get(key)
            .copied()
            .unwrap_or(0)
    }
    pub fn actions(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(_, a, _)| a.clone())
            .collect()
    }
}

async fn agent(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let action = body["action"].as_str().unwrap_or("").to_owned();
    let n = {
        let mut s = seen.lock().unwrap();
        let n = {
            let c = s.calls.entry(key.clone()).or_insert(0);
            *c += 1;
            *c
        };
        s.log.push((
            key.clone(),
            action.clone(),
            json!({"traceparent": traceparent, "attempt": body["attempt"]}),
        ));
        n
    };
    let input = &body["input"];
    if let Some(ms) = input["sleep_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Holds the first call of a key (an attempt a test interrupts), answers later ones at once.
    if let Some(ms) = input["sleep_first_ms"].as_u64()
        && n == 1
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if input["fail"].as_bool() == Some(true) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "refused"})),
        );
    }
    if input["fail_times"]
        .as_u64()
        .is_some_and(|f| u64::from(n) <= f)
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "flaky"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"output": {"action": action, "call": n, "input": input}})),
    )
}

pub async fn fake_agent() -> FakeAgent {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/run", post(agent))
        .route("/health", get(|| async { "ok" }))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/run", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeAgent {
        url,
        seen,
        _task: task,
    }
}

/// A fake OpenAI-compatible chat-completions provider: answers `content` with fixed usage,
/// and records every request body and Authorization header (and when it came).
pub struct FakeLlm {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<(Value, String)>>>,
    _task: tokio::task::JoinHandle<()>,
}

pub async fn fake_llm(content: &'static str) -> FakeLlm {
    fake_llm_scripted(content, Vec::new()).await
}

/// The fake provider, answering its first calls with the scripted (status, Retry-After
/// seconds) pairs, then with `content`.
pub async fn fake_llm_scripted(content: &'static str, script: Vec<(u16, Option<u64>)>) -> FakeLlm {
    use axum::response::IntoResponse;
    let requests: Arc<Mutex<Vec<(Value, String)>>> = Arc::default();
    let r2 = requests.clone();
    let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let r2 = r2.clone();
            let script = script.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                r2.lock().unwrap().push((body, auth));
                if let Some((status, retry)) = script.lock().unwrap().pop_front() {
                    let mut resp = (
                        StatusCode::from_u16(status).unwrap(),
                        Json(json!({"error": {"message": "scripted failure"}})),
                    )
                        .into_response();
                    if let Some(r) = retry {
                        resp.headers_mut().insert("retry-after", r.into());
                    }
                    return resp;
                }
                Json(json!({
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
                }))
                .into_response()
            }
        }),
    );
    let (addr, task) = serve_fake(app).await;
    FakeLlm {
        base_url: format!("{addr}/v1"),
        requests,
        _task: task,
    }
}

/// A fake provider that takes one way of asking for structured output (`json_schema`,
/// `json_object`, `ollama` or `prompt`) and refuses the others with a 400 naming
/// `response_format`, as llama.cpp's server does; it answers `answers` in turn (the last
/// one repeats).
pub async fn fake_llm_picky(accepts: &'static str, answers: Vec<&'static str>) -> FakeLlm {
    use axum::response::IntoResponse;
    let requests: Arc<Mutex<Vec<(Value, String)>>> = Arc::default();
    let r2 = requests.clone();
    let answers = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let r2 = r2.clone();
            let answers = answers.clone();
            async move {
                let mode = match body["response_format"]["type"].as_str() {
                    Some(t) => t.to_owned(),
                    None if body.get("format").is_some() => "ollama".into(),
                    None => "prompt".into(),
                };
                r2.lock().unwrap().push((body, String::new()));
                if mode != accepts {
                    return (
                        StatusCode::BAD_REQUEST,
                        Json(json!({"error": {"message": format!("response_format type {mode} is not supported")}})),
                    )
                        .into_response();
                }
                let content = {
                    let mut a = answers.lock().unwrap();
                    if a.len() > 1 { a.pop_front().unwrap() } else { a[0] }
                };
                Json(json!({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                }))
                .into_response()
            }
        }),
    );
    let (addr, task) = serve_fake(app).await;
    FakeLlm {
        base_url: format!("{addr}/v1"),
        requests,
        _task: task,
    }
}

/// Serves a fake on a free loopback port: its `http://127.0.0.1:P`, and the task serving it
/// (which ends with the test's runtime).
pub async fn serve_fake(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}
