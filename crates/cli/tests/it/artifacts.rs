//! What `deploy generate` writes, run as its platform would run it.

use std::time::Duration;

use serde_json::Value;

use crate::app::{flotilla, postgres_database, spawn_app_env};

/// The Deployment's container environment, resolved as Kubernetes would: plain values as
/// written, secrets with stand-in values, the pod name from the downward API, and the
/// service links Kubernetes adds for every Service in the namespace.
fn pod_environment(deployment: &Value, services: &[&str], etc: &str) -> Vec<(String, String)> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = match (e.get("value"), e.get("valueFrom")) {
            (Some(v), _) => v.as_str().unwrap().replace("/etc/flotilla", etc),
            (None, Some(from)) if from.get("fieldRef").is_some() => "flotilla-7d9f-abcde".into(),
            (None, Some(_)) => "stand-in-secret-value".into(),
            (None, None) => String::new(),
        };
        env.push((name, value));
    }
    for (i, svc) in services.iter().enumerate() {
        let prefix = svc.to_ascii_uppercase().replace('-', "_");
        let ip = format!("10.96.0.{}", 10 + i);
        env.extend([
            (format!("{prefix}_SERVICE_HOST"), ip.clone()),
            (format!("{prefix}_SERVICE_PORT"), "80".into()),
            (format!("{prefix}_SERVICE_PORT_HTTP"), "80".into()),
            (format!("{prefix}_PORT"), format!("tcp://{ip}:80")),
            (format!("{prefix}_PORT_80_TCP"), format!("tcp://{ip}:80")),
            (format!("{prefix}_PORT_80_TCP_PROTO"), "tcp".into()),
            (format!("{prefix}_PORT_80_TCP_PORT"), "80".into()),
            (format!("{prefix}_PORT_80_TCP_ADDR"), ip.clone()),
        ]);
    }
    env
}

// The rendered Deployment's environment, service links included, does not stop `serve`.
#[tokio::test]
async fn a_rendered_pod_environment_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flotilla.yaml"),
        include_str!("../../../../examples/production.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("flags.yaml"),
        include_str!("../../../../examples/flags.yaml"),
    )
    .unwrap();
    let out = dir.path().join("deploy");
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--target",
            "kubernetes",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(out.join("kubernetes/base/deployment.yaml")).unwrap();
    let (deployment, _) = flotilla_spec::yaml::parse("deployment.yaml", &text, &|_| None).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["enableServiceLinks"],
        false
    );
    // The ConfigMap's files, where the pod mounts them.
    let etc = tempfile::tempdir().unwrap();
    let cm = std::fs::read_to_string(out.join("kubernetes/base/configmap.yaml")).unwrap();
    // Leave `${VAR}` as written: the pod interpolates them.
    let keep = |v: &str| Some(format!("${{{v}}}"));
    let (cm, _) = flotilla_spec::yaml::parse("configmap.yaml", &cm, &keep).unwrap();
    for (name, body) in cm["data"].as_object().unwrap() {
        std::fs::write(etc.path().join(name), body.as_str().unwrap()).unwrap();
    }
    let etc_path = etc.path().to_str().unwrap().to_owned();
    let mut env = pod_environment(
        &deployment,
        &["flotilla", "flotilla-canary", "flotilla-preview"],
        &etc_path,
    );
    assert!(env.iter().any(|(k, _)| k == "FLOTILLA_PORT"));
    // The database: the test PostgreSQL when there is one, else a SQLite file.
    let url = postgres_database()
        .unwrap_or_else(|| format!("sqlite://{}", etc.path().join("f.db").display()));
    env.push(("DATABASE_URL".into(), url));
    let config = std::fs::read_to_string(etc.path().join("flotilla.yaml")).unwrap();
    let app = spawn_app_env(
        etc,
        &config,
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        env,
    )
    .await;
    let (code, _) = app.get("/ready").await;
    assert_eq!(code, 200);
    let logs = app.log_text();
    assert!(
        logs.contains("ignored environment variables that are not settings"),
        "{logs}"
    );
    assert!(logs.contains("FLOTILLA_CANARY_PORT"), "{logs}");
}

// A long poll is counted under its own route label, out of the submit route's latency.
#[tokio::test]
async fn long_polls_have_their_own_route_label() {
    let app = crate::app::spawn_app(
        "agents: { nap: { kind: builtin, builtin: sleep, delay: 1500ms } }\nworkflows: { slow: { steps: [ { id: s, agent: nap } ] } }\n",
    )
    .await;
    let (code, _) = app
        .post(
            "/api/v1/workflows/slow/runs?wait=30s",
            serde_json::json!({"input": {}}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = app
        .post(
            "/api/v1/workflows/slow/runs",
            serde_json::json!({"input": {}}),
        )
        .await;
    assert_eq!(code, 202);
    let metrics = app.text("/metrics").await;
    let count = |route: &str| {
        crate::app::metric(
            &metrics,
            "http_request_duration_seconds_count",
            &[("route", route)],
        )
    };
    assert_eq!(
        count("/api/v1/workflows/{name}/runs?wait"),
        1.0,
        "{metrics}"
    );
    assert_eq!(count("/api/v1/workflows/{name}/runs"), 1.0, "{metrics}");
    // The quick submission's latency stays quick: its route saw no 1.5 s request.
    let slow = crate::app::metric(
        &metrics,
        "http_request_duration_seconds_bucket",
        &[("route", "/api/v1/workflows/{name}/runs"), ("le", "1.024")],
    );
    assert_eq!(slow, 1.0, "{metrics}");
}

// After SIGTERM the server keeps answering, with /ready 503, for the drain delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_while_still_serving() {
    let mut app = crate::app::spawn_app("server: { drain_delay: 3s, shutdown_grace: 10s }\n").await;
    let pid = app.child.as_ref().unwrap().id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let r = app.client.get(app.url("/ready")).send().await;
        if let Ok(r) = r
            && r.status() == 503
        {
            break r.json::<Value>().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/ready never said 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        body["reason"].as_str().unwrap_or("").contains("draining"),
        "{body}"
    );
    // Still serving other routes meanwhile.
    let (code, _) = app.get("/health").await;
    assert_eq!(code, 200);
    let status = app.terminate_wait();
    assert!(status.success(), "{status:?}");
}

// An open circuit makes agent_health_status 0, and its 503 says when the next probe is.
#[tokio::test]
async fn an_open_circuit_is_unhealthy_and_says_when_to_retry() {
    let app = crate::app::spawn_app(
        "agents: { flaky: { kind: builtin, builtin: fail, failure_rate: 1.0, circuit_breaker: { failure_threshold: 2, reset_timeout: 60s, half_open_successes: 1 } } }\n",
    )
    .await;
    for _ in 0..2 {
        let (code, _) = app
            .post(
                "/api/v1/execute",
                serde_json::json!({"agent": "flaky", "input": {}}),
            )
            .await;
        assert_eq!(code, 502);
    }
    let r = app
        .client
        .post(app.url("/api/v1/execute"))
        .json(&serde_json::json!({"agent": "flaky", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=60).contains(&retry), "Retry-After: {retry}");
    let metrics = app.text("/metrics").await;
    assert!(
        metrics.contains("agent_health_status{agent_id=\"flaky\"} 0"),
        "{metrics}"
    );
}
