//! PostgreSQL going away under load and coming back.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::spawn_app_in;
use crate::pg::PrivatePostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_turns_readiness_off_refuses_work_cleanly_and_loses_nothing() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let yaml = format!(
        r#"
storage: {{ url: "{url}", connect_timeout: 1s }}
agents:
  sleepy: {{ kind: builtin, builtin: sleep }}
workflows:
  steps3:
    steps:
      - {{ id: a, agent: sleepy, input: {{ ms: 200 }} }}
      - {{ id: b, agent: sleepy, needs: [a], input: {{ ms: 200 }} }}
      - {{ id: c, agent: sleepy, needs: [b], input: {{ ms: 200 }} }}
"#,
        url = pg.url()
    );
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &yaml).await;
    let mut acked = Vec::new();
    for _ in 0..20 {
        acked.push(app.start_run("steps3", json!({})).await);
    }

    pg.down();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = app.get("/ready").await;
        if code == 503 {
            assert!(
                body["reason"]
                    .as_str()
                    .unwrap()
                    .contains("store unavailable"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "readiness never turned off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, health) = app.get("/health").await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["components"]["store"]["status"], "unhealthy");
    // Liveness never depends on the database: restarting would not bring it back.
    let (code, live) = app.get("/livez").await;
    assert_eq!(code, 200, "{live}");
    assert_eq!(live["status"], "alive");
    // `/readyz`, which the generated readiness probes may use, says the same as `/ready`.
    assert_eq!(app.get("/readyz").await.0, 503);
    let started = Instant::now();
    let (code, body) = app
        .post("/api/v1/workflows/steps3/runs", json!({"input": {}}))
        .await;
    assert_eq!(
        code, 503,
        "a submission during the outage is refused cleanly: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "and promptly");
    let (code, _) = app.get("/api/v1/runs").await;
    assert_eq!(code, 503);

    // The outage lasts about ten seconds in all.
    tokio::time::sleep(Duration::from_secs(8)).await;
    pg.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "readiness never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("/readyz").await.0, 200);
    assert_eq!(app.get("/livez").await.0, 200);
    acked.push(app.start_run("steps3", json!({})).await);
    for id in &acked {
        let run = app.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
}
