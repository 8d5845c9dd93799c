//! Execution semantics through the real server: parallelism, retries, timeouts, circuit
//! breakers, compensation, cancellation, conditions and SLAs.

use serde_json::{Value, json};

use crate::app::{metric, spawn_app, step};
use crate::fakes::fake_agent;

#[tokio::test]
async fn parallel_branches_run_at_the_same_time_and_join() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  remote: {{ kind: http, endpoints: ["{url}"] }}
workflows:
  diamond:
    steps:
      - {{ id: start, agent: remote }}
      - {{ id: left, agent: remote, needs: [start], input: {{ sleep_ms: 400 }} }}
      - {{ id: right, agent: remote, needs: [start], input: {{ sleep_ms: 400 }} }}
      - {{ id: join, agent: remote, needs: [left, right], input: {{ l: "{{{{ steps.left.output.action }}}}", r: "{{{{ steps.right.output.call }}}}" }} }}
"#,
        url = fake.url
    ))
    .await;
    let id = app.start_run("diamond", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (left, right, join) = (step(&run, "left"), step(&run, "right"), step(&run, "join"));
    // Each branch started before the other finished: they overlapped (RFC 3339 times of
    // one width compare as text).
    let at = |step: &Value, field: &str| step[field].as_str().expect(field).to_owned();
    assert!(at(left, "started_at") < at(right, "finished_at"));
    assert!(at(right, "started_at") < at(left, "finished_at"));
    assert!(at(join, "started_at") >= at(left, "finished_at"));
    assert!(at(join, "started_at") >= at(right, "finished_at"));
    assert_eq!(join["output"]["input"], json!({"l": "left", "r": 1}));
    assert_eq!(fake.calls(&format!("{id}/join")), 1);
}

#[tokio::test]
async fn retry_then_success() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  flaky: {{ kind: http, endpoints: ["{url}"] }}
workflows:
  retrying:
    steps:
      - {{ id: call, agent: flaky, input: {{ fail_times: 2 }}, retry: {{ attempts: 3, initial: 10ms, max: 50ms }} }}
  refused:
    steps:
      - {{ id: call, agent: flaky, input: {{ fail: true }}, retry: {{ attempts: 3, initial: 10ms }} }}
"#,
        url = fake.url
    ))
    .await;
    let id = app.start_run("retrying", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(step(&run, "call")["attempts"], 3);
    assert_eq!(
        fake.calls(&format!("{id}/call")),
        3,
        "same Idempotency-Key on every attempt"
    );
    let attempts: Vec<u64> = fake
        .seen
        .lock()
        .unwrap()
        .log
        .iter()
        .map(|(_, _, h)| h["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "workflow_step_retries_total",
            &[("workflow", "retrying"), ("step", "call")]
        ),
        2.0
    );

    // A 4xx answer is final: no retry.
    let id = app.start_run("refused", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(fake.calls(&format!("{id}/call")), 1);
}

#[tokio::test]
async fn attempt_timeout_fails_the_step() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  slow: {{ kind: http, endpoints: ["{url}"] }}
workflows:
  slow:
    steps:
      - {{ id: wait, agent: slow, input: {{ sleep_ms: 3000 }}, timeout: 200ms, retry: {{ attempts: 2, initial: 10ms }} }}
      - {{ id: after, agent: slow, needs: [wait] }}
"#,
        url = fake.url
    ))
    .await;
    let id = app.start_run("slow", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let wait = step(&run, "wait");
    assert_eq!(wait["status"], "failed");
    assert_eq!(wait["attempts"], 2);
    assert!(
        wait["error"].as_str().unwrap().contains("timed out"),
        "{wait}"
    );
    assert_eq!(step(&run, "after")["status"], "skipped");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("step `wait` failed")
    );
    assert_eq!(fake.calls(&format!("{id}/after")), 0);
}

#[tokio::test]
async fn circuit_opens_fails_fast_and_recovers_through_half_open() {
    let app = spawn_app(
        r#"
agents:
  chaos:
    kind: builtin
    builtin: fail
    circuit_breaker: { failure_threshold: 2, reset_timeout: 5s, half_open_successes: 2 }
"#,
    )
    .await;
    let exec = |fail: bool| {
        app.post(
            "/api/v1/execute",
            json!({"agent": "chaos", "input": {"fail": fail}}),
        )
    };
    assert_eq!(exec(true).await.0, 502);
    assert_eq!(exec(true).await.0, 502);
    let (code, body) = exec(false).await;
    assert_eq!(code, 503, "open circuit fails fast: {body}");
    assert!(body["message"].as_str().unwrap().contains("circuit open"));
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(agents["agents"][0]["circuit"], "open");
    assert_eq!(agents["agents"][0]["status"], "unhealthy");
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "circuit_breaker_state", &[("agent", "chaos")]),
        2.0
    );
    assert_eq!(
        metric(&text, "circuit_breaker_open_total", &[("agent", "chaos")]),
        1.0
    );

    // Half-open once the reset timeout has passed: polled, not slept for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, agents) = app.get("/api/v1/agents").await;
        if agents["agents"][0]["circuit"] == "half_open" {
            break;
        }
        assert_eq!(agents["agents"][0]["circuit"], "open", "{agents}");
        assert!(std::time::Instant::now() < deadline, "never half-open");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(exec(false).await.0, 200);
    assert_eq!(exec(false).await.0, 200);
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(agents["agents"][0]["circuit"], "closed");
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "circuit_breaker_state", &[("agent", "chaos")]),
        0.0
    );
}

#[tokio::test]
async fn compensation_runs_in_reverse_order() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  svc: {{ kind: http, endpoints: ["{url}"] }}
workflows:
  saga:
    steps:
      - {{ id: book_flight, agent: svc, action: book_flight, compensate: {{ action: cancel_flight }} }}
      - {{ id: book_hotel, agent: svc, action: book_hotel, needs: [book_flight], compensate: {{ action: cancel_hotel, input: {{ booking: "{{{{ output.call }}}}" }} }} }}
      - {{ id: notify, agent: svc, action: notify, needs: [book_flight] }}
      - {{ id: charge, agent: svc, action: charge, needs: [book_hotel, notify], input: {{ fail: true }} }}
"#,
        url = fake.url
    ))
    .await;
    let id = app.start_run("saga", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let actions = fake.actions();
    let undo: Vec<&str> = actions
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("cancel_"))
        .collect();
    assert_eq!(
        undo,
        ["cancel_hotel", "cancel_flight"],
        "newest first: {actions:?}"
    );
    assert_eq!(step(&run, "book_flight")["status"], "compensated");
    assert_eq!(step(&run, "book_hotel")["status"], "compensated");
    assert_eq!(
        step(&run, "notify")["status"],
        "succeeded",
        "no compensation configured"
    );
    assert_eq!(step(&run, "charge")["status"], "failed");
    let hotel_undo = fake
        .seen
        .lock()
        .unwrap()
        .log
        .iter()
        .find(|(_, a, _)| a == "cancel_hotel")
        .cloned()
        .unwrap();
    assert_eq!(hotel_undo.0, format!("{id}/book_hotel"));
}

#[tokio::test]
async fn cancellation_stops_a_running_run() {
    let app = spawn_app(
        r#"
agents:
  sleepy: { kind: builtin, builtin: sleep }
workflows:
  long:
    steps:
      - { id: nap, agent: sleepy, input: { ms: 20000 } }
      - { id: after, agent: sleepy, needs: [nap] }
"#,
    )
    .await;
    let id = app.start_run("long", json!({})).await;
    app.wait_run(&id, |r| r["steps"][0]["status"] == "running")
        .await;
    let events = app
        .client
        .get(app.url(&format!("/api/v1/runs/{id}/events")))
        .send()
        .await
        .unwrap();
    let (code, run) = app
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "cancelled");
    assert_eq!(step(&run, "nap")["status"], "cancelled");
    assert_eq!(step(&run, "nap")["error"], "stopped: the run was cancelled");
    assert_eq!(step(&run, "after")["status"], "skipped");
    // The live stream ends with the run.
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), events.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("event: run_finished"), "{text}");
    assert!(text.contains("event: step_cancelled"), "{text}");
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "workflow_runs_total",
            &[("workflow", "long"), ("status", "cancelled")]
        ),
        1.0
    );
}

#[tokio::test]
async fn conditions_capabilities_and_sla() {
    let app = spawn_app(
        r#"
agents:
  a1: { kind: builtin, builtin: echo, capabilities: [shout] }
  a2: { kind: builtin, builtin: template, template: '{"loud": {{ input.word | upper | tojson }}}', capabilities: [shout] }
  sleepy: { kind: builtin, builtin: sleep }
workflows:
  cond:
    steps:
      - { id: maybe, capability: shout, when: "input.go == true", input: { word: "{{ input.word }}" } }
      - { id: after_maybe, agent: a1, needs: [maybe] }
      - { id: always, agent: a1 }
  sla:
    timeout: 300ms
    steps:
      - { id: nap, agent: sleepy, input: { ms: 5000 } }
"#,
    )
    .await;
    let id = app
        .start_run("cond", json!({"go": false, "word": "hi"}))
        .await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(step(&run, "maybe")["status"], "skipped");
    assert_eq!(step(&run, "after_maybe")["status"], "skipped");
    assert_eq!(step(&run, "always")["status"], "succeeded");

    let id = app
        .start_run("cond", json!({"go": true, "word": "hi"}))
        .await;
    let run = app.finished(&id).await;
    assert_eq!(step(&run, "maybe")["status"], "succeeded");

    let id = app.start_run("sla", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "timed_out", "{run}");
    assert!(run["error"].as_str().unwrap().contains("timeout"));
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "workflow_sla_breaches_total", &[("workflow", "sla")]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "workflow_runs_total",
            &[("workflow", "sla"), ("status", "timed_out")]
        ),
        1.0
    );
}

#[tokio::test]
async fn cached_results_are_reused_per_input_until_they_expire() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  svc: {{ kind: http, endpoints: ["{url}"], cache: {{ ttl: 3s }} }}
  fresh: {{ kind: http, endpoints: ["{url}"] }}
workflows:
  lookup:
    steps:
      - {{ id: get, agent: svc, action: lookup, input: {{ city: "{{{{ input.city }}}}" }} }}
      - {{ id: hour, agent: fresh, action: uncached, cache: {{ ttl: 1h }}, input: {{ city: "{{{{ input.city }}}}" }} }}
"#,
        url = fake.url
    ))
    .await;
    let run = |city: &'static str| {
        let app = &app;
        async move {
            let id = app.start_run("lookup", json!({"city": city})).await;
            app.finished(&id).await
        }
    };
    let first = run("Oslo").await;
    let second = run("Oslo").await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(
        step(&second, "get")["output"],
        step(&first, "get")["output"],
        "same input, cached output"
    );
    let lookups = || fake.actions().iter().filter(|a| *a == "lookup").count();
    assert_eq!(lookups(), 1);
    run("Rome").await;
    assert_eq!(lookups(), 2, "another input is another key");
    // Run Oslo again until its entry has expired (each run before that is a hit of both
    // steps): polled, with a bound, rather than a sleep sized to the ttl.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut early = 0.0;
    loop {
        run("Oslo").await;
        if lookups() == 3 {
            break;
        }
        early += 2.0;
        assert!(
            std::time::Instant::now() < deadline,
            "the entry never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        fake.actions().iter().filter(|a| *a == "uncached").count(),
        2,
        "the step's own cache (1h) holds Oslo and Rome"
    );
    let text = app.text("/metrics").await;
    // Hits: the second Oslo run's two steps, the early re-runs' two each, and the last's `hour`.
    assert_eq!(
        metric(&text, "cache_requests_total", &[("result", "hit")]),
        3.0 + early
    );
    assert_eq!(
        metric(&text, "cache_requests_total", &[("result", "miss")]),
        5.0
    );
}

// Cancelling runs whose calls are in flight gives every counted call back: the calls'
// futures are dropped mid-await, and their guards (not code after the await) undo the
// counts.
#[tokio::test]
async fn cancelled_runs_give_back_their_in_flight_calls() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  remote: {{ kind: http, endpoints: ["{url}"], timeout: 120s }}
workflows:
  long:
    steps:
      - {{ id: wait, agent: remote, input: {{ sleep_ms: 90000 }}, timeout: 120s }}
"#,
        url = fake.url
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.start_run("long", json!({})).await);
    }
    let in_progress = || async {
        metric(
            &app.text("/metrics").await,
            "agent_tasks_in_progress",
            &[("agent", "remote")],
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while in_progress().await < 5.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the calls never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for id in &ids {
        let (code, body) = app
            .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
            .await;
        assert_eq!(code, 200, "{body}");
    }
    // Well before the calls would have ended on their own (90 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while in_progress().await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "calls still counted in progress after their runs were cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, agents) = app.get("/api/v1/agents").await;
    let remote = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "remote")
        .unwrap_or_else(|| panic!("{agents}"));
    assert_eq!(remote["in_flight"], 0, "{remote}");
}

// A template that would loop for seconds stops with a clear error (the fuel bound), and
// rendering runs off the async workers, so other requests are answered meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn runaway_templates_are_bounded_and_never_stall_the_server() {
    let app = spawn_app(
        r#"
agents:
  loops:
    kind: builtin
    builtin: template
    format: text
    template: "{% for i in range(input.n) %}{% for j in range(input.n) %}{% endfor %}{% endfor %}done"
"#,
    )
    .await;
    let heavy = || {
        app.client
            .post(app.url("/api/v1/execute"))
            .json(&json!({"agent": "loops", "input": {"n": 10000}, "timeout": 30000}))
            .send()
    };
    let (a, b, health) = tokio::join!(heavy(), heavy(), app.client.get(app.url("/health")).send());
    assert_eq!(health.unwrap().status(), 200);
    for r in [a, b] {
        let r = r.unwrap();
        assert_eq!(r.status(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("too much work"),
            "{body}"
        );
    }
    // A modest loop is fine.
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"agent": "loops", "input": {"n": 30}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "done");
}

#[tokio::test]
async fn a_json_template_that_renders_broken_json_fails_its_step() {
    let app = spawn_app(
        r#"
agents:
  classify:
    kind: builtin
    builtin: template
    template: |
      {"category": {{ input.kind }}, "urgency": {% if input.urgent %}high{% else %}"normal"{% endif %}}
workflows:
  triage: { steps: [ { id: classify, agent: classify, input: "{{ input }}" } ] }
"#,
    )
    .await;
    // Each value written by `{{ }}` is JSON: the category is quoted whatever it holds.
    let id = app
        .start_run(
            "triage",
            json!({"kind": "billing \"vip\"", "urgent": false}),
        )
        .await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        step(&run, "classify")["output"],
        json!({"category": "billing \"vip\"", "urgency": "normal"})
    );
    // The literal `high` the template writes unquoted is not JSON: the step fails, saying so.
    let id = app
        .start_run("triage", json!({"kind": "billing", "urgent": true}))
        .await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(step(&run, "classify")["status"], "failed");
    let error = step(&run, "classify")["error"].as_str().unwrap().to_owned();
    assert!(error.contains("did not render valid JSON"), "{error}");
}
