//! `flotilla loadtest` against a live server: counts that match the server's own metrics,
//! SLO gates, latency corrected for coordinated omission, and the published JSON Schema.

use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, metric, spawn_app};

/// The demo fleet, on the test's own database.
async fn demo() -> TestApp {
    let demo = include_str!("../../../../examples/demo.yaml");
    let without_storage = demo.replace("storage:\n  url: \"sqlite://flotilla.db\"\n", "");
    spawn_app(&without_storage).await
}

/// Runs `flotilla loadtest` against `app` with `args` (split at spaces) and `more` (kept
/// whole); returns the exit code, stdout and stderr.
fn loadtest(app: &TestApp, args: &str, more: &[&str]) -> (i32, String, String) {
    let mut all = vec!["loadtest", "--target", app.addr.as_str()];
    all.extend(args.split_whitespace());
    all.extend_from_slice(more);
    flotilla(app.dir.path(), &all, &[])
}

fn report(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{out}"))
}

/// Sums a counter's series matching `labels`.
fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const INPUT: &str = r#"{"destination": "Oslo", "nights": 2}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loop_runs_match_the_servers_own_counts() {
    let app = demo().await;
    let (code, out, err) = loadtest(
        &app,
        "--workflow travel_planning --concurrency 4 --duration 3s --output json",
        &["--input", INPUT],
    );
    assert_eq!(code, 0, "{out}{err}");
    let closed = report(&out);
    assert_eq!(closed["model"], "closed");
    let closed_n = closed["totals"]["requests"].as_u64().unwrap();
    assert!(closed_n > 0);
    assert_eq!(closed["totals"]["errors"], 0, "{out}");
    assert_eq!(
        closed["steps"]["weather_check"]["count"].as_u64(),
        Some(closed_n)
    );

    let (code, out, err) = loadtest(
        &app,
        "--workflow travel_planning --rate 20/s --duration 3s --output json",
        &["--input", INPUT],
    );
    assert_eq!(code, 0, "{out}{err}");
    let open = report(&out);
    assert_eq!(open["model"], "open");
    let open_n = open["totals"]["requests"].as_u64().unwrap();
    assert!(
        (50..=61).contains(&open_n),
        "{open_n} arrivals at 20/s for 3 s"
    );

    // Every iteration is one run and one request, as the server counted them.
    let text = app.text("/metrics").await;
    let runs = metric(
        &text,
        "workflow_runs_total",
        &[("workflow", "travel_planning"), ("status", "succeeded")],
    );
    assert_eq!(runs as u64, closed_n + open_n);
    let requests = total(
        &text,
        "http_requests_total",
        &[
            ("method", "POST"),
            ("route", "/api/v1/workflows/{name}/runs?wait"),
            ("code", "200"),
        ],
    );
    assert_eq!(requests as u64, closed_n + open_n, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breached_objective_fails_the_run_and_is_named() {
    let app = spawn_app(
        "agents: { nap: { kind: builtin, builtin: sleep, delay: 50ms } }\nworkflows: { w: { steps: [ { id: s, agent: nap } ] } }\n",
    )
    .await;
    let (code, out, err) = loadtest(
        &app,
        "--workflow w --concurrency 2 --duration 2s --slo p99<10ms,errors<1%",
        &[],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("SLO FAIL p99<10ms"), "{out}");
    assert!(out.contains("SLO pass errors<1%"), "{out}");
    // A usage error is 2.
    let (code, _, err) = loadtest(&app, "--workflow w --slo p99<fast", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p99<fast"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_shows_in_latency_not_only_in_service_time() {
    // One call at a time, 100 ms each: 10 runs/s. Offering 20/s backs arrivals up; their
    // wait counts in latency (from the intended start), not in service time.
    let app = spawn_app(
        "agents: { nap: { kind: builtin, builtin: sleep, delay: 100ms, max_concurrency: 1 } }\nworkflows: { w: { steps: [ { id: s, agent: nap } ] } }\n",
    )
    .await;
    let (code, out, err) = loadtest(
        &app,
        "--workflow w --rate 20/s --max-in-flight 1 --duration 3s --output json",
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r = report(&out);
    let latency = r["latency_ms"]["p50"].as_f64().unwrap();
    let service = r["service_ms"]["p50"].as_f64().unwrap();
    assert!(service >= 90.0, "{out}");
    assert!(
        latency > 2.0 * service,
        "latency p50 {latency} ms, service p50 {service} ms"
    );
    assert!(r["totals"]["late_starts"].as_u64().unwrap() > 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_follows_its_published_schema_and_compares() {
    let app = demo().await;
    let baseline = app.dir.path().join("baseline.json");
    let (code, out, err) = loadtest(
        &app,
        "--http GET /health --concurrency 2 --duration 1s --slo-window 1s --slo p99<5s --output json",
        &["--report", baseline.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let schema: Value =
        serde_json::from_str(include_str!("../../../../docs/loadtest.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let first = report(&out);
    let problems: Vec<String> = validator
        .iter_errors(&first)
        .map(|e| e.to_string())
        .collect();
    assert!(problems.is_empty(), "{problems:#?}\n{out}");
    assert_eq!(first, report(&std::fs::read_to_string(&baseline).unwrap()));

    // Against a baseline far better than any run: the comparison fails the gate.
    let mut better = first.clone();
    better["latency_ms"]["p99"] = json!(0.001);
    better["totals"]["rps"] = json!(1e9);
    std::fs::write(&baseline, better.to_string()).unwrap();
    let (code, out, err) = loadtest(
        &app,
        "--http GET /health --concurrency 2 --duration 1s --output json",
        &["--compare", baseline.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{out}{err}");
    let second = report(&out);
    assert!(validator.iter_errors(&second).next().is_none(), "{out}");
    assert!(
        !second["comparison"]["regressed"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{out}"
    );
}
