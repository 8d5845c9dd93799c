//! Crashes and shutdowns of the real process.

use serde_json::json;

use crate::app::{spawn_app, step};
use crate::fakes::fake_agent;

#[tokio::test]
async fn kill_9_mid_run_then_restart_runs_succeeded_steps_exactly_once() {
    let fake = fake_agent().await;
    let mut app = spawn_app(&format!(
        r#"
agents:
  counter: {{ kind: http, endpoints: ["{url}"] }}
workflows:
  three:
    steps:
      - {{ id: first, agent: counter }}
      - {{ id: second, agent: counter, needs: [first], input: {{ sleep_first_ms: 60000 }} }}
      - {{ id: third, agent: counter, needs: [second] }}
"#,
        url = fake.url
    ))
    .await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(app.start_run("three", json!({})).await);
        }
        v
    };
    for id in &ids {
        app.wait_run(id, |r| r["steps"][1]["status"] == "running")
            .await;
    }
    app.kill();
    app.start().await;
    for id in &ids {
        let run = app.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(
            step(&run, "second")["attempts"],
            1,
            "the interrupted attempt re-runs as itself"
        );
        assert_eq!(
            fake.calls(&format!("{id}/first")),
            1,
            "a succeeded step never runs again"
        );
        assert_eq!(
            fake.calls(&format!("{id}/second")),
            2,
            "the interrupted attempt ran again, same key"
        );
        assert_eq!(fake.calls(&format!("{id}/third")), 1);
    }
}

#[tokio::test]
async fn sigterm_drains_a_run_in_flight_and_exits_zero() {
    let mut app = spawn_app(
        r#"
server: { shutdown_grace: 20s }
agents:
  sleepy: { kind: builtin, builtin: sleep }
workflows:
  nap:
    steps:
      - { id: nap, agent: sleepy, input: { ms: 800 } }
      - { id: after, agent: sleepy, needs: [nap], input: { ms: 10 } }
"#,
    )
    .await;
    let id = app.start_run("nap", json!({})).await;
    app.wait_run(&id, |r| r["steps"][0]["status"] == "running")
        .await;
    let status = app.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        app.log_text()
    );
    let logs = app.log_text();
    assert!(logs.contains("shutdown requested"), "{logs}");
    app.start().await;
    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(
        run["status"], "succeeded",
        "the run finished during the grace period: {run}"
    );
}

#[tokio::test]
async fn sigterm_past_the_grace_period_leaves_runs_to_resume() {
    // The first attempt takes a minute; the one after the restart answers at once.
    let fake = fake_agent().await;
    let mut app = spawn_app(&format!(
        r#"
server: {{ shutdown_grace: 1s, drain_delay: 0s }}
agents:
  slow: {{ kind: http, endpoints: ["{url}"], timeout: 120s }}
workflows:
  nap:
    steps:
      - {{ id: nap, agent: slow, input: {{ sleep_first_ms: 60000 }} }}
"#,
        url = fake.url
    ))
    .await;
    let id = app.start_run("nap", json!({})).await;
    app.wait_run(&id, |r| r["steps"][0]["status"] == "running")
        .await;
    // The process ends when the grace is over, long before the step would have, and says so.
    let asked = std::time::Instant::now();
    assert!(app.terminate().success());
    let took = asked.elapsed();
    assert!(
        took < std::time::Duration::from_secs(30),
        "exited {took:?} after SIGTERM: the 60 s step was waited for"
    );
    assert!(
        app.log_text()
            .contains("grace period over; unfinished runs will resume at the next start"),
        "{}",
        app.log_text()
    );
    app.start().await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

#[tokio::test]
async fn a_second_server_on_the_same_database_refuses_to_start() {
    let app = spawn_app("agents: { e: { kind: builtin, builtin: echo } }\n").await;
    let (code, _, stderr) = crate::app::flotilla(
        app.dir.path(),
        &[
            "serve",
            "--config",
            app.config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("in use by another flotilla process"),
        "{stderr}"
    );
}
