//! Upgrades never change a run in flight: a run keeps the graph and the agent behaviour it
//! started with (while a moved endpoint still reaches it), replicas take over only runs of
//! versions they may, and an operator moves runs to a new definition on purpose.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{flotilla, metric, postgres_database, spawn_app, spawn_app_in, step};
use crate::fakes::fake_agent;

/// An endpoint that accepts connections and never answers: a call to it hangs.
async fn hanging_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (url, task)
}

fn fleet(endpoint: &str, template: &str, graph: &str) -> String {
    format!(
        r#"
agents:
  first: {{ kind: builtin, builtin: echo }}
  remote: {{ kind: http, endpoints: ["{endpoint}"], timeout: 60s }}
  writer: {{ kind: builtin, builtin: template, format: text, template: "{template}" }}
workflows:
  report:
    steps:
{graph}
"#
    )
}

const THREE: &str = "      - { id: a, agent: first }
      - { id: b, agent: remote, needs: [a], input: { n: 1 } }
      - { id: c, agent: writer, needs: [b] }";
const TWO: &str = "      - { id: a, agent: first }
      - { id: c, agent: writer, needs: [a] }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_keeps_its_graph_and_agent_behaviour_across_a_config_change() {
    let (hanging, _held) = hanging_endpoint().await;
    let mut app = spawn_app(&fleet(&hanging, "old {{ action }}", THREE)).await;
    let id = app.start_run("report", json!({})).await;
    app.wait_run(&id, |r| step(r, "b")["status"] == "running")
        .await;
    app.kill();

    // The new configuration drops `b`, changes the template and moves `remote`.
    let moved = fake_agent().await;
    let storage = std::fs::read_to_string(&app.config).unwrap();
    let storage = storage.lines().next().unwrap().to_owned();
    std::fs::write(
        &app.config,
        format!("{storage}\n{}", fleet(&moved.url, "new {{ action }}", TWO)),
    )
    .unwrap();
    app.start().await;

    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The old graph (b ran, at its new address) and the old template.
    assert_eq!(run["output"], "old c", "{run}");
    assert_eq!(
        moved.seen.lock().unwrap().calls.get(&format!("{id}/b")),
        Some(&1)
    );
    // A new run gets the new definition.
    let fresh = app.start_run("report", json!({})).await;
    let fresh = app.finished(&fresh).await;
    assert_eq!(fresh["output"], "new c", "{fresh}");
    assert!(
        fresh["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != "b")
    );
    assert_ne!(fresh["definition_hash"], run["definition_hash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_migrate_moves_unfinished_runs_to_the_current_definition_on_purpose() {
    let (hanging, _held) = hanging_endpoint().await;
    let mut app = spawn_app(&fleet(&hanging, "old {{ action }}", THREE)).await;
    let id = app.start_run("report", json!({})).await;
    let run = app
        .wait_run(&id, |r| step(r, "b")["status"] == "running")
        .await;
    let from = run["definition_hash"].as_str().unwrap().to_owned();
    app.kill();
    let storage = std::fs::read_to_string(&app.config).unwrap();
    let storage = storage.lines().next().unwrap().to_owned();
    let moved = fake_agent().await;
    std::fs::write(
        &app.config,
        format!("{storage}\n{}", fleet(&moved.url, "new {{ action }}", TWO)),
    )
    .unwrap();
    let config = app.config.to_str().unwrap().to_owned();
    let args = |dry: bool| {
        let mut a = vec![
            "runs",
            "migrate",
            "--config",
            config.as_str(),
            "--from-hash",
            from.as_str(),
            "--to-current",
        ];
        if dry {
            a.push("--dry-run");
        }
        a
    };
    let (code, out, err) = flotilla(app.dir.path(), &args(true), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("steps removed (their records stay, unused): b"),
        "{out}"
    );
    assert!(
        out.contains("agents whose behaviour changes: writer"),
        "{out}"
    );
    assert!(out.contains(&format!("run {id}")), "{out}");
    assert!(out.contains("dry run: nothing changed"), "{out}");
    let (code, out, err) = flotilla(app.dir.path(), &args(false), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("moved 1 run(s)"), "{out}");
    // Nothing left on the old definition.
    let (_, again, _) = flotilla(app.dir.path(), &args(true), &[]);
    assert!(
        again.contains("no unfinished run pins definition"),
        "{again}"
    );

    app.start().await;
    let run = app.finished(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "new c", "{run}");
    assert_ne!(run["definition_hash"], Value::from(from));
    assert!(
        moved.seen.lock().unwrap().calls.is_empty(),
        "b is gone from the graph"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_lapsed_runs_only_of_versions_it_may() {
    let Some(url) = postgres_database() else {
        return;
    };
    let yaml = |version: &str, claim: &str| {
        format!(
            r#"
storage: {{ url: "{url}" }}
engine: {{ lease: 2s, claim_interval: 200ms, version: "{version}", claim_versions: "{claim}" }}
agents:
  sleepy: {{ kind: builtin, builtin: sleep }}
workflows:
  nap:
    steps:
      - {{ id: nap, agent: sleepy, input: {{ ms: 3000 }} }}
"#
        )
    };
    let replica =
        |yaml: String| async move { spawn_app_in(tempfile::tempdir().unwrap(), &yaml).await };
    let mut stable = replica(yaml("1.4.0", "same")).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(stable.start_run("nap", json!({})).await);
    }
    let (_, listed) = stable.get("/api/v1/runs?limit=5").await;
    assert_eq!(listed["runs"][0]["version"], "1.4.0", "{listed}");
    let text = stable.text("/metrics").await;
    assert_eq!(
        metric(&text, "workflow_runs_in_flight", &[("version", "1.4.0")]),
        5.0
    );
    stable.kill();

    // A canary of another version does not take stable's runs under `same`…
    let canary = replica(yaml("1.5.0-canary.1", "same")).await;
    let (_, run) = canary.get(&format!("/api/v1/runs/{}", ids[0])).await;
    assert_eq!(run["version"], "1.4.0");
    // Wait out the lease (2 s) and many claim rounds past it: the canary drives nothing.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let (_, health) = canary.get("/health").await;
        assert_eq!(
            health["components"]["runs"]["active"], 0,
            "the canary took a run of another version"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(canary);

    // …and does under a range that allows it; its drain metric then goes back to 0.
    let allowed = replica(yaml("1.5.0", ">=1.4.0, <2")).await;
    for id in &ids {
        let run = allowed.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = allowed.text("/metrics").await;
        if metric(&text, "workflow_runs_in_flight", &[("version", "1.4.0")]) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the drain metric stayed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
