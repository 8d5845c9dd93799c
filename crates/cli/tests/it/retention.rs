//! `storage.retention` on a live server, on both backends: expired runs disappear with their
//! steps and events, unexpired ones and runs in flight stay, and the store's gauges follow;
//! `flotilla runs prune` for one-off clean-ups.

use std::time::Duration;

use serde_json::json;

use crate::app::{TestApp, flotilla, metric, postgres_database, spawn_app_in, try_metric};

const FLEET: &str = r#"
agents:
  echo: { kind: builtin, builtin: echo }
  nap: { kind: builtin, builtin: sleep }
  broken: { kind: builtin, builtin: fail, failure_rate: 1.0 }
workflows:
  greet: { steps: [ { id: hello, agent: echo }, { id: bye, agent: echo, needs: [hello] } ] }
  audit: { steps: [ { id: hello, agent: echo } ] }
  stuck: { steps: [ { id: forever, agent: nap, input: { ms: 600000 } } ] }
  broken: { steps: [ { id: call, agent: broken } ] }
"#;

const RETENTION: &str = r#"
  retention:
    succeeded: 1s
    failed: 1h
    workflows: { audit: { succeeded: 1h } }
    interval: 200ms
    batch: 2
"#;

async fn server(url: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    spawn_app_in(
        dir,
        &format!("storage:\n  url: \"{url}\"\n{RETENTION}{FLEET}"),
    )
    .await
}

/// Polls `/metrics` until `check` holds (30 s at most).
async fn metrics_until(app: &TestApp, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.text("/metrics").await;
        if check(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expired_runs_go_and_the_rest_stay(app: &TestApp) {
    let mut greeted = Vec::new();
    for _ in 0..5 {
        greeted.push(app.start_run("greet", json!({"name": "Ada"})).await);
    }
    let audited = app.start_run("audit", json!({})).await;
    let broken = app.start_run("broken", json!({})).await;
    let stuck = app.start_run("stuck", json!({})).await;
    for id in greeted.iter().chain([&audited, &broken]) {
        app.finished(id).await;
    }
    app.wait_run(&stuck, |r| r["status"] == "running").await;
    // The five succeeded runs expire a second after they finish, in batches of two.
    let text = metrics_until(app, "five runs pruned", |t| {
        try_metric(t, "runs_pruned_total", &[("status", "succeeded")]) == Some(5.0)
    })
    .await;
    assert_eq!(
        metric(&text, "runs_pruned_total", &[("status", "failed")]),
        0.0
    );
    for id in &greeted {
        let (code, body) = app.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(code, 404, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("storage.retention") && message.contains("pruned"),
            "{message}"
        );
        let events = app
            .client
            .get(app.url(&format!("/api/v1/runs/{id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(events.status(), 404);
    }
    // Another workflow's own time, another status's time, and a run in flight: kept.
    for (id, status) in [
        (&audited, "succeeded"),
        (&broken, "failed"),
        (&stuck, "running"),
    ] {
        let (code, run) = app.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(code, 200, "{run}");
        assert_eq!(run["status"], status);
        assert!(!run["steps"].as_array().unwrap().is_empty(), "{run}");
    }
    // An id that was never there is a plain 404.
    let (code, body) = app.get("/api/v1/runs/no-such-run").await;
    assert_eq!(code, 404);
    assert!(!body["message"].as_str().unwrap().contains("pruned"));
    // The store's gauges: what is left, and its size.
    let text = metrics_until(app, "store gauges", |t| {
        try_metric(t, "store_runs", &[("status", "succeeded")]) == Some(1.0)
    })
    .await;
    assert_eq!(metric(&text, "store_runs", &[("status", "failed")]), 1.0);
    assert_eq!(metric(&text, "store_runs", &[("status", "running")]), 1.0);
    assert!(metric(&text, "store_size_bytes", &[]) > 0.0);
    app.post(&format!("/api/v1/runs/{stuck}/cancel"), json!({}))
        .await;
}

#[tokio::test]
async fn retention_prunes_expired_runs_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("flotilla.db").display());
    let app = server(&url).await;
    expired_runs_go_and_the_rest_stay(&app).await;
}

#[tokio::test]
async fn retention_prunes_expired_runs_on_postgres() {
    let Some(url) = postgres_database() else {
        return;
    };
    let app = server(&url).await;
    expired_runs_go_and_the_rest_stay(&app).await;
}

#[tokio::test]
async fn runs_prune_cleans_up_once_and_dry_run_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flotilla.db");
    let yaml = format!("storage: {{ url: \"sqlite://{}\" }}\n{FLEET}", db.display());
    let mut app = spawn_app_in(dir, &yaml).await;
    let ok = app.start_run("greet", json!({})).await;
    let failed = app.start_run("broken", json!({})).await;
    app.finished(&ok).await;
    app.finished(&failed).await;
    // SQLite belongs to the server while it runs: the command says what to do instead.
    let path = app.dir.path().to_owned();
    let config = app.config.to_str().unwrap().to_owned();
    let prune = |extra: &[&str]| {
        let args = [&["runs", "prune", "--config", &config][..], extra].concat();
        flotilla(&path, &args, &[])
    };
    let (code, _, err) = prune(&["--older-than", "0s"]);
    assert_ne!(code, 0);
    assert!(err.contains("storage.retention"), "{err}");
    app.terminate();
    let (code, out, err) = prune(&["--older-than", "0s", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 succeeded run(s)") && out.contains("1 failed run(s)"),
        "{out}"
    );
    let (code, out, err) = prune(&["--older-than", "0s", "--status", "failed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 1 run(s)"), "{out}");
    let (code, _, err) = prune(&["--older-than", "0s", "--status", "running"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a final status"), "{err}");
    let (code, out, _) = prune(&["--older-than", "30d"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 0 run(s)"), "{out}");
    app.start().await;
    assert_eq!(app.get(&format!("/api/v1/runs/{ok}")).await.0, 200);
    assert_eq!(app.get(&format!("/api/v1/runs/{failed}")).await.0, 404);
}
