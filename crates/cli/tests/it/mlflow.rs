//! Workflow runs become MLflow runs on a real `mlflow server` (PyPI, installed by
//! `scripts/test`, loopback, temporary backend store); with MLflow stopped, workflows still
//! succeed and the failure is logged once.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{installed, metric, spawn_app, wait_until_up};

/// `mlflow server` in its own process group (it starts workers that outlive it), killed
/// with the whole group.
struct MlflowServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl MlflowServer {
    async fn start() -> Option<Self> {
        if !installed("mlflow", "mlflow", &["--version"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = crate::app::free_port();
        let child = Command::new("mlflow")
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--default-artifact-root")
            .arg(dir.path().join("artifacts"))
            .current_dir(dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = MlflowServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_until_up(
            &format!("{}/health", server.url),
            Duration::from_secs(120),
            "mlflow server",
        )
        .await;
        Some(server)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn mlflow(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    client
        .post(format!("{base}/api/2.0/mlflow/{path}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_run_becomes_an_mlflow_run_and_an_outage_costs_nothing() {
    let Some(mut server) = MlflowServer::start().await else {
        return;
    };
    let app = spawn_app(&format!(
        r#"
observability: {{ mlflow: {{ tracking_uri: "{}", experiment: flotilla-tests }} }}
agents:
  echo: {{ kind: builtin, builtin: echo }}
workflows:
  greet:
    steps:
      - {{ id: one, agent: echo }}
      - {{ id: two, agent: echo, needs: [one] }}
"#,
        server.url
    ))
    .await;
    let id = app.start_run("greet", json!({"name": "Ada"})).await;
    assert_eq!(app.finished(&id).await["status"], "succeeded");

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let experiment: Value = client
            .get(format!(
                "{}/api/2.0/mlflow/experiments/get-by-name?experiment_name=flotilla-tests",
                server.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(exp) = experiment["experiment"]["experiment_id"].as_str() {
            let found = mlflow(
                &client,
                &server.url,
                "runs/search",
                json!({"experiment_ids": [exp], "filter": format!("tags.`flotilla.run_id` = '{id}'")}),
            )
            .await;
            let run = &found["runs"][0];
            if run["info"]["status"] == "FINISHED" {
                break run.clone();
            }
        }
        assert!(Instant::now() < deadline, "the run never reached MLflow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pairs = |key: &str| -> std::collections::HashMap<String, Value> {
        run["data"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["key"].as_str().unwrap().to_owned(), p["value"].clone()))
            .collect()
    };
    let (params, metrics, tags) = (pairs("params"), pairs("metrics"), pairs("tags"));
    assert_eq!(params["workflow"], "greet");
    assert_eq!(
        params["definition_hash"].as_str().unwrap().len(),
        64,
        "{params:?}"
    );
    assert!(params["input"].as_str().unwrap().contains("Ada"));
    assert_eq!(metrics["steps"], 2.0);
    assert!(metrics["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(metrics["cost_usd"], 0.0);
    assert_eq!(tags["status"], "succeeded");
    assert_eq!(tags["flotilla.version"], env!("CARGO_PKG_VERSION"));

    // MLflow goes away: workflows still succeed, the failure is logged once and counted.
    server.stop();
    let stopped = Instant::now();
    for i in 0..10 {
        let id = app.start_run("greet", json!({"i": i})).await;
        assert_eq!(app.finished(&id).await["status"], "succeeded");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        &app.text("/metrics").await,
        "mlflow_export_errors_total",
        &[],
    ) < 10.0
    {
        assert!(
            Instant::now() < deadline,
            "MLflow failures were not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warnings = app
        .log_text()
        .lines()
        .filter(|l| l.contains("MLflow tracking failed"))
        .count();
    // One warning a minute, however long this took on a busy machine; never one per run.
    let allowed = 1 + stopped.elapsed().as_secs() as usize / 60;
    assert!(
        (1..=allowed).contains(&warnings),
        "{warnings} warnings in {:?}: one per minute, not one per run",
        stopped.elapsed()
    );
}
