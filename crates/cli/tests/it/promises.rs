//! README promises, each held to a test: provider retries honouring Retry-After, least-busy
//! endpoint choice, compensation after an SLA breach and none on cancel.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::{spawn_app, step};
use crate::fakes::{fake_agent, fake_llm_scripted};

// An llm provider's 429 and 503 are retried, waiting as long as Retry-After says.
#[tokio::test]
async fn llm_provider_429_and_5xx_are_retried_after_retry_after() {
    let llm = fake_llm_scripted("fine", vec![(429, Some(2)), (503, Some(1))]).await;
    let app = spawn_app(&format!(
        "llm:\n  providers: {{ fake: {{ base_url: \"{}\" }} }}\nagents:\n  talk: {{ kind: llm, provider: fake, model: m, timeout: 60s }}\n",
        llm.base_url
    ))
    .await;
    let started = Instant::now();
    let (code, body) = app
        .post(
            "/api/v1/execute",
            json!({"agent": "talk", "input": "hi", "timeout": 60000}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "fine");
    assert_eq!(
        llm.requests.lock().unwrap().len(),
        3,
        "two refusals, then the answer"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the retries waited Retry-After (2 s, then 1 s): {:?}",
        started.elapsed()
    );
}

// An http agent's calls go to its least busy healthy endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_agents_pick_the_least_busy_endpoint() {
    let (a, b) = (fake_agent().await, fake_agent().await);
    let app = spawn_app(&format!(
        "agents:\n  pair: {{ kind: http, endpoints: [\"{}\", \"{}\"], timeout: 60s }}\n",
        a.url, b.url
    ))
    .await;
    // One long call occupies an endpoint; every call while it runs goes to the other.
    let long = {
        let client = app.client.clone();
        let url = app.url("/api/v1/execute");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"agent": "pair", "input": {"sleep_ms": 8000}, "timeout": 60000}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let busy = loop {
        match (a.actions().len(), b.actions().len()) {
            (1, 0) => break &b,
            (0, 1) => break &a,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the long call never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for i in 0..4 {
        let (code, body) = app
            .post(
                "/api/v1/execute",
                json!({"agent": "pair", "input": {"i": i}}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    assert!(!long.is_finished(), "the long call was still running");
    assert_eq!(
        busy.actions().len(),
        4,
        "every short call went to the idle endpoint"
    );
    assert_eq!(long.await.unwrap(), 200);
}

// A run past its SLA compensates what succeeded; a cancelled run compensates nothing.
#[tokio::test]
async fn compensation_after_an_sla_breach_and_none_on_cancel() {
    let fake = fake_agent().await;
    let app = spawn_app(&format!(
        r#"
agents:
  svc: {{ kind: http, endpoints: ["{url}"], timeout: 60s }}
workflows:
  booked:
    timeout: 2s
    steps:
      - {{ id: book, agent: svc, action: book, compensate: {{ agent: svc, action: unbook }} }}
      - {{ id: wait, agent: svc, action: wait, needs: [book], input: {{ sleep_ms: 30000 }} }}
  held:
    steps:
      - {{ id: book, agent: svc, action: book, compensate: {{ agent: svc, action: unbook }} }}
      - {{ id: wait, agent: svc, action: wait, needs: [book], input: {{ sleep_ms: 30000 }} }}
"#,
        url = fake.url
    ))
    .await;
    let id = app.start_run("booked", json!({})).await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "timed_out", "{run}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while step(&app.get(&format!("/api/v1/runs/{id}")).await.1, "book")["status"] != "compensated" {
        assert!(
            Instant::now() < deadline,
            "the SLA breach did not compensate `book`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fake.actions().contains(&"unbook".to_owned()));

    let before = fake.actions().iter().filter(|a| *a == "unbook").count();
    let id = app.start_run("held", json!({})).await;
    app.wait_run(&id, |r| r["steps"][1]["status"] == "running")
        .await;
    let (code, run) = app
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "cancelled");
    let run = app.finished(&id).await;
    assert_eq!(step(&run, "book")["status"], "succeeded", "{run}");
    assert_eq!(
        fake.actions().iter().filter(|a| *a == "unbook").count(),
        before,
        "a cancel compensates nothing"
    );
}
