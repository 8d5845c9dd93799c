//! A real Prometheus (Debian's `prometheus`, installed by `scripts/test`) scrapes a live
//! flotilla every second with the config and rules of `flotilla monitoring generate`; the
//! seeds' queries then return sensible numbers through Prometheus's HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, installed, spawn_app, wait_until_up};

/// A Prometheus on a free loopback port, killed when dropped.
pub struct PrometheusServer {
    child: Child,
    pub url: String,
    client: reqwest::Client,
    command: Vec<String>,
}

impl PrometheusServer {
    /// Starts `prometheus` on `config` (in `dir`, which also holds its TSDB). `None` when
    /// Prometheus is not installed outside CI.
    pub async fn start(dir: &std::path::Path, config: &std::path::Path) -> Option<Self> {
        if !installed("prometheus", "prometheus", &["--version"]) {
            return None;
        }
        let port = crate::app::free_port();
        let command = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let server = PrometheusServer {
            child: spawn_prometheus(&command),
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            command,
        };
        wait_until_up(
            &format!("{}/-/ready", server.url),
            Duration::from_secs(30),
            "prometheus",
        )
        .await;
        Some(server)
    }

    /// Stops Prometheus (an outage); [`PrometheusServer::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts Prometheus again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = spawn_prometheus(&self.command);
        wait_until_up(
            &format!("{}/-/ready", self.url),
            Duration::from_secs(30),
            "prometheus (restarted)",
        )
        .await;
    }

    /// `GET /api/v1/<path>`; panics unless Prometheus answers `success`.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = self
            .client
            .get(
                reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), query)
                    .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The single value of an instant query, once it has one (waits up to 30 s).
    pub async fn value(&self, promql: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.api("query", &[("query", promql)]).await;
            let v = data["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if let Some(v) = v.filter(|v| v.is_finite()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no value for {promql} within 30 s: {data}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn spawn_prometheus(args: &[String]) -> Child {
    Command::new("prometheus")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A flotilla with a healthy and a failing agent, one workflow of each, and a Prometheus
/// scraping it every second with the generated bundle.
pub async fn monitored_app() -> Option<(TestApp, PrometheusServer, tempfile::TempDir)> {
    let app = spawn_app(
        r#"
agents:
  echo: { kind: builtin, builtin: echo }
  broken: { kind: builtin, builtin: fail, circuit_breaker: { failure_threshold: 1000 } }
workflows:
  fine:
    steps: [ { id: one, agent: echo } ]
  doomed:
    steps: [ { id: one, agent: broken } ]
"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("monitoring");
    let target = app.addr.trim_start_matches("http://").to_owned();
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "monitoring",
            "generate",
            "--output",
            out.to_str().unwrap(),
            "--scrape",
            &target,
            "--scrape-interval",
            "1s",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let prometheus = PrometheusServer::start(dir.path(), &out.join("prometheus.yml")).await?;
    Some((app, prometheus, dir))
}

/// Traffic over a few seconds, so that several scrapes see the counters rise: per round,
/// 4 tasks that succeed, 1 that fails (502), 1 run that succeeds and 1 that fails.
pub async fn drive_traffic(app: &TestApp, rounds: usize) {
    for _ in 0..rounds {
        for _ in 0..4 {
            let (code, _) = app
                .post("/api/v1/execute", json!({"agent": "echo", "input": 1}))
                .await;
            assert_eq!(code, 200);
        }
        let (code, _) = app
            .post("/api/v1/execute", json!({"agent": "broken", "input": 1}))
            .await;
        assert_eq!(code, 502);
        app.start_run("fine", json!({})).await;
        app.start_run("doomed", json!({})).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_flotilla_and_the_seed_queries_answer() {
    let Some((app, prom, _dir)) = monitored_app().await else {
        return;
    };
    // The target is up and the generated rules are loaded.
    assert_eq!(prom.value("up{job=\"flotilla\"}").await, 1.0);
    let rules = prom.api("rules", &[]).await;
    let loaded: usize = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    assert_eq!(loaded, 9, "{rules}");

    drive_traffic(&app, 8).await;
    // Wait until Prometheus has seen all of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.value("sum(workflow_runs_total)").await.lt(&16.0) {
        assert!(Instant::now() < deadline, "Prometheus never saw all runs");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let success = prom
        .value(
            "sum(rate(http_requests_total{code!~\"5..\"}[1m])) / sum(rate(http_requests_total[1m]))",
        )
        .await;
    assert!(success > 0.5 && success < 1.0, "success rate {success}");
    let p95 = prom
        .value(
            "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))",
        )
        .await;
    assert!(p95 > 0.0 && p95 < 10.0, "p95 {p95}");
    let workflows = prom
        .value(
            "sum(rate(workflow_runs_total{status=\"succeeded\"}[1m])) / sum(rate(workflow_runs_total[1m]))",
        )
        .await;
    assert!(
        workflows > 0.2 && workflows < 0.8,
        "workflow success rate {workflows}"
    );
    let agent_errors = prom
        .value(
            "sum(rate(agent_tasks_total{status=\"error\"}[1m])) / sum(rate(agent_tasks_total[1m]))",
        )
        .await;
    assert!(
        agent_errors > 0.0 && agent_errors < 1.0,
        "agent error rate {agent_errors}"
    );
    assert_eq!(prom.value("sum(agent_queue_length)").await, 0.0);
    assert_eq!(
        prom.value("agent_health_status{agent_id=\"echo\"}").await,
        1.0
    );
}

/// The AnalysisTemplates' PromQL (as `flotilla deploy generate` writes it, args rendered as
/// Argo Rollouts would) returns numbers from a real Prometheus scraping a live flotilla.
#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_analysis_queries_return_numbers() {
    let Some((app, prom, _dir)) = monitored_app().await else {
        return;
    };
    assert_eq!(prom.value("up{job=\"flotilla\"}").await, 1.0);
    drive_traffic(&app, 8).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.value("sum(workflow_runs_total)").await < 16.0 {
        assert!(Instant::now() < deadline, "Prometheus never saw all runs");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deploy = flotilla_spec::DeployConfig::default();
    let queries = flotilla_deploy::generate::analysis_queries(&deploy);
    assert_eq!(queries.len(), 3);
    for (name, query, success, _) in queries {
        // Outside Kubernetes there is no namespace or pod template hash label: match any.
        assert!(query.contains("{{args.canary-hash}}"), "{query}");
        let promql = query
            .replace("{{args.service-name}}", "flotilla")
            .replace("{{args.namespace}}", ".*")
            .replace("{{args.canary-hash}}", ".*");
        let v = prom.value(&promql).await;
        assert!(v.is_finite() && v >= 0.0, "{name}: {promql} = {v}");
        if name.ends_with("-latency") {
            assert!(v < 10.0, "{name}: {v}");
        } else {
            assert!(
                v > 0.0 && v < 1.0,
                "{name}: {v} (some requests and runs failed)"
            );
        }
        assert!(
            success.starts_with("len(result) > 0 && result[0]"),
            "{success}"
        );
    }
}
