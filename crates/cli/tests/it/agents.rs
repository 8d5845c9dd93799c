//! Agent kinds against local fakes: http, command, llm, remote registration.

use serde_json::json;

use crate::app::{metric, spawn_app, step};
use crate::fakes::{fake_agent, fake_llm};

#[tokio::test]
async fn http_agent_sends_idempotency_key_and_traceparent() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        "agents:\n  remote: {{ kind: http, endpoints: [\"{}\"] }}\nworkflows:\n  one:\n    steps:\n      - {{ id: s, agent: remote, action: lookup }}\n",
        fake.url
    ))
    .await;
    let id = app.start_run("one", json!({"q": 1})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"]["input"], json!({"q": 1}));
    let seen = fake.seen.lock().unwrap();
    let (key, action, headers) = &seen.log[0];
    assert_eq!(key, &format!("{id}/s"));
    assert_eq!(action, "lookup");
    let tp = headers["traceparent"].as_str().unwrap();
    assert_eq!(tp.split('-').count(), 4, "{tp}");
    assert!(tp.starts_with("00-"));
}

#[tokio::test]
async fn http_agent_health_probe_marks_a_dead_endpoint_unhealthy() {
    let app = spawn_app(
        "engine: { health_interval: 100ms }\nagents:\n  gone: { kind: http, endpoints: [\"http://127.0.0.1:9/run\"] }\n",
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, agents) = app.get("/api/v1/agents").await;
        if agents["agents"][0]["status"] == "unhealthy" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{agents}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "agent_health_status", &[("agent_id", "gone")]),
        0.0
    );
    let (code, health) = app.get("/health").await;
    assert_eq!(
        code, 200,
        "an unhealthy agent degrades health but does not fail liveness"
    );
    assert_eq!(health["status"], "degraded");
}

#[tokio::test]
async fn command_agent_speaks_json_and_is_killed_on_timeout() {
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("stuck.pid");
    let app = spawn_app(&format!(
        r#"
agents:
  upper:
    kind: command
    command: ["python3", "-c", "import json,sys; r=json.load(sys.stdin); print('working', file=sys.stderr); print(json.dumps({{'output': {{'shout': r['input']['word'].upper(), 'action': r['action']}}}}))"]
  stuck:
    kind: command
    command: ["sh", "-c", "echo $$ > {pid}; exec sleep 30"]
    timeout: 300ms
  broken:
    kind: command
    command: ["sh", "-c", "echo nope >&2; exit 3"]
"#,
        pid = pid_file.display()
    ))
    .await;
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"agent": "upper", "action": "shout", "input": {"word": "hey"}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], json!({"shout": "HEY", "action": "shout"}));
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"agent": "stuck", "input": {}, "timeout": 1000}),
        )
        .await;
    assert_eq!(code, 504, "{body}");
    // The child itself is gone (dead, or a zombie awaiting its reaper), not left running.
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let alive = state
            .as_deref()
            .and_then(|s| s.rsplit(')').next())
            .is_some_and(|rest| !rest.trim_start().starts_with(['Z', 'X']));
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the timed-out command (pid {pid}) is still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, body) = app
        .post("/api/v1/execute", json!({"agent": "broken", "input": {}}))
        .await;
    assert_eq!(code, 502);
    assert!(
        body["message"].as_str().unwrap().contains("exited"),
        "{body}"
    );
    assert!(
        app.log_text().contains("working"),
        "stderr of command agents is logged"
    );
}

#[tokio::test]
async fn llm_agent_renders_prompts_checks_schema_and_counts_tokens() {
    let llm = fake_llm(r#"{"city": "Oslo", "days": 3}"#).await;
    let app = spawn_app(&format!(
        r#"
llm:
  providers: {{ fake: {{ base_url: "{base}", api_key: "sk-test-secret-value" }} }}
  pricing: {{ tiny-model: {{ prompt_per_1k: 0.5, completion_per_1k: 1.0 }} }}
agents:
  planner:
    kind: llm
    provider: fake
    model: tiny-model
    system: You plan trips.
    response_schema: {{ type: object, required: [city, days], properties: {{ city: {{ type: string }}, days: {{ type: integer }} }} }}
workflows:
  plan:
    steps:
      - {{ id: plan, agent: planner, prompt: "Plan {{{{ input.days }}}} days in {{{{ input.city }}}}" }}
"#,
        base = llm.base_url
    ))
    .await;
    let id = app
        .start_run("plan", json!({"city": "Oslo", "days": 3}))
        .await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"city": "Oslo", "days": 3}));
    let (body, auth) = llm.requests.lock().unwrap()[0].clone();
    assert_eq!(auth, "Bearer sk-test-secret-value");
    assert_eq!(body["model"], "tiny-model");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You plan trips."})
    );
    assert_eq!(body["messages"][1]["content"], "Plan 3 days in Oslo");
    assert_eq!(body["response_format"]["type"], "json_schema");
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "llm_tokens_total",
            &[("agent", "planner"), ("kind", "prompt")]
        ),
        120.0
    );
    assert_eq!(
        metric(
            &text,
            "llm_tokens_total",
            &[("agent", "planner"), ("kind", "completion")]
        ),
        30.0
    );
    let cost = metric(
        &text,
        "llm_cost_usd_total",
        &[("agent", "planner"), ("model", "tiny-model")],
    );
    assert!((cost - 0.09).abs() < 1e-9, "{cost}");
    assert!(
        !app.log_text().contains("sk-test-secret-value"),
        "the api key never reaches the logs"
    );
    let (_, agents) = app.get("/api/v1/agents").await;
    assert!(!agents.to_string().contains("sk-test-secret-value"));
    let plan = step(&run, "plan");
    assert_eq!(plan["status"], "succeeded", "{plan}");
    assert_eq!(plan["agent"], "planner", "{plan}");
    assert_eq!(plan["output"], json!({"city": "Oslo", "days": 3}), "{plan}");
}

#[tokio::test]
async fn remote_agents_register_with_a_ttl_and_serve_capabilities() {
    let fake = fake_agent().await;
    let app = spawn_app("agents:\n  local: { kind: builtin, builtin: echo }\n").await;
    let (code, body) = app
        .post("/api/v1/agents/register", json!({"name": "weather-eu", "endpoints": [fake.url], "capabilities": ["forecast"], "ttl_seconds": 3}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["remote"], true);
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"capability": "forecast", "input": {"city": "Oslo"}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["agentId"], "weather-eu");
    let (code, _) = app
        .post(
            "/api/v1/agents/register",
            json!({"name": "local", "endpoints": [fake.url]}),
        )
        .await;
    assert_eq!(code, 409, "configured names cannot be taken over");
    let (code, _) = app
        .post(
            "/api/v1/agents/register",
            json!({"name": "x", "endpoints": []}),
        )
        .await;
    assert_eq!(code, 400);
    // Expired after its ttl: polled, with a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, body) = app
            .post(
                "/api/v1/execute",
                json!({"capability": "forecast", "input": {}}),
            )
            .await;
        if code == 404 {
            break;
        }
        // 503 at the instant of expiry: accepted while the agent was live, called after.
        assert!(
            code == 200
                || code == 503
                    && body["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("no agent offers")),
            "{code} {body}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the registration never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(agents["total"], 1);
}

#[tokio::test]
async fn a_call_that_would_cross_a_budget_is_refused_before_it_is_made() {
    // Each fake call uses 120 prompt + 30 completion tokens: 0.18 USD at these prices. The
    // estimate before a call counts max_tokens (100) as completion: about 0.2 USD.
    let llm = fake_llm("ok").await;
    let app = spawn_app(&format!(
        r#"
llm:
  providers: {{ fake: {{ base_url: "{base}" }} }}
  pricing: {{ tiny-model: {{ prompt_per_1k: 1.0, completion_per_1k: 2.0 }} }}
agents:
  writer: {{ kind: llm, provider: fake, model: tiny-model, max_tokens: 100 }}
  capped: {{ kind: llm, provider: fake, model: tiny-model, max_tokens: 100, budget: {{ tokens: 200 }} }}
workflows:
  essay:
    budget: {{ usd: 0.5 }}
    steps:
      - {{ id: one, agent: writer, prompt: "first" }}
      - {{ id: two, agent: writer, prompt: "second", needs: [one] }}
      - {{ id: three, agent: writer, prompt: "third", needs: [two], retry: {{ attempts: 3, initial: 10ms }} }}
      - {{ id: four, agent: writer, prompt: "fourth", needs: [three] }}
  notes:
    steps:
      - {{ id: one, agent: capped, prompt: "first" }}
      - {{ id: two, agent: capped, prompt: "second", needs: [one] }}
"#,
        base = llm.base_url
    ))
    .await;
    let id = app.start_run("essay", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("budget exceeded: workflow `essay` allows 0.5 USD per run"),
        "{error}"
    );
    assert_eq!(
        llm.requests.lock().unwrap().len(),
        2,
        "the third call was never made"
    );
    assert_eq!(step(&run, "three")["status"], "failed");
    assert_eq!(
        step(&run, "three")["attempts"],
        1,
        "a budget refusal is not retried"
    );
    assert_eq!(step(&run, "one")["usage"]["prompt_tokens"], 120);
    assert_eq!(step(&run, "one")["agent"], "writer");
    assert_eq!(run["usage"]["prompt_tokens"], 240);
    assert_eq!(run["usage"]["completion_tokens"], 60);
    assert!(
        (run["usage"]["cost_usd"].as_f64().unwrap() - 0.36).abs() < 1e-9,
        "{run}"
    );

    let id = app.start_run("notes", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("agent `capped` allows 200 tokens per run; 150 spent"),
        "{run}"
    );
    assert_eq!(llm.requests.lock().unwrap().len(), 3);

    let text = app.text("/metrics").await;
    let exceeded = |scope, name| {
        metric(
            &text,
            "llm_budget_exceeded_total",
            &[("scope", scope), ("name", name)],
        )
    };
    assert_eq!(exceeded("workflow", "essay"), 1.0);
    assert_eq!(exceeded("agent", "capped"), 1.0);
    assert_eq!(
        metric(
            &text,
            "llm_budget_usd",
            &[("scope", "workflow"), ("name", "essay")]
        ),
        0.5
    );
    assert_eq!(
        metric(&text, "llm_tokens_total", &[("agent", "writer")]),
        300.0
    );
}
