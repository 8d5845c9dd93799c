//! Several replicas on one real PostgreSQL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{TestApp, postgres_database, spawn_app_in};
use crate::fakes::fake_agent;

async fn replica(yaml: &str) -> TestApp {
    spawn_app_in(tempfile::tempdir().unwrap(), yaml).await
}

/// What `psql -At -c sql` prints.
fn psql(url: &str, sql: &str) -> String {
    let psql = std::env::var("PG_BIN")
        .map(|b| format!("{b}/psql"))
        .unwrap_or_else(|_| "psql".into());
    let out = std::process::Command::new(psql)
        .args([url, "-At", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Replicas on `url` with a 2 s lease, calling the fake agent at `agent` as `counter`.
fn counter_fleet(url: &str, agent: &str, engine: &str, workflows: &str) -> String {
    format!(
        "storage: {{ url: \"{url}\", pool_size: 8 }}
engine: {{ lease: 2s, claim_interval: 200ms{engine} }}
agents:
  counter: {{ kind: http, endpoints: [\"{agent}\"] }}
workflows:
{workflows}
"
    )
}

async fn status_of(app: &TestApp, id: &str) -> Option<String> {
    let (code, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    (code == 200).then(|| run["status"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_midway_loses_nothing_and_reruns_no_succeeded_step() {
    let Some(url) = postgres_database() else {
        return;
    };
    let fake = fake_agent().await;
    let yaml = counter_fleet(
        &url,
        &fake.url,
        ", max_concurrency: 8",
        "  three:
    steps:
      - { id: a, agent: counter }
      - { id: b, agent: counter, needs: [a], input: { sleep_ms: 200 } }
      - { id: c, agent: counter, needs: [b] }",
    );
    let mut first = replica(&yaml).await;
    let second = replica(&yaml).await;
    let mut ids = Vec::new();
    for chunk in 0..20 {
        let mut batch = Vec::new();
        for i in 0..50 {
            let app = if (chunk * 50 + i) % 2 == 0 {
                &first
            } else {
                &second
            };
            batch.push(app.post("/api/v1/workflows/three/runs", json!({"input": {"n": i}})));
        }
        for (code, body) in futures_util::future::join_all(batch).await {
            assert_eq!(code, 202, "{body}");
            ids.push(body["run_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 1000);
    // Midway: kill as soon as 100 runs are done, leaving most of the work (about ten
    // seconds of it) to be interrupted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, page) = second.get("/api/v1/runs?status=succeeded&limit=100").await;
        if page["runs"].as_array().map_or(0, Vec::len) >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    // What was durably succeeded at the kill (the survivor claims nothing before the killed
    // replica's leases lapse, two seconds on): none of these may ever run again.
    let succeeded_at_kill: std::collections::HashSet<String> = psql(
        &url,
        "SELECT run_id || '/' || step_id FROM steps WHERE status = 'succeeded'",
    )
    .lines()
    .map(str::to_owned)
    .collect();
    assert!(
        (300..3000).contains(&succeeded_at_kill.len()),
        "the kill came midway: {} of 3,000 steps had succeeded",
        succeeded_at_kill.len()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<String> = ids.clone();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            match status_of(&second, &id).await.as_deref() {
                Some("succeeded") => {}
                Some("queued" | "running") | None => still.push(id),
                Some(other) => panic!("run {id} ended {other}"),
            }
        }
        pending = still;
        assert!(
            Instant::now() < deadline,
            "{} runs never finished on the survivor",
            pending.len()
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every step ran; a step that had durably succeeded never ran again; others ran at most
    // twice (an attempt interrupted by the kill runs again).
    let calls: HashMap<String, u32> = fake.seen.lock().unwrap().calls.clone();
    let mut twice = 0;
    for id in &ids {
        for step in ["a", "b", "c"] {
            let key = format!("{id}/{step}");
            let n = calls.get(&key).copied().unwrap_or(0);
            assert!((1..=2).contains(&n), "{key} ran {n} times");
            if succeeded_at_kill.contains(&key) {
                assert_eq!(n, 1, "{key} had succeeded before the kill, yet ran again");
            }
            twice += usize::from(n == 2);
        }
    }
    eprintln!(
        "{} steps had succeeded at the kill; {twice} interrupted attempts ran again",
        succeeded_at_kill.len()
    );
    let (_, run) = second.get(&format!("/api/v1/runs/{}", ids[0])).await;
    assert_eq!(run["status"], Value::from("succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_released_by_a_clean_shutdown_are_taken_over_at_once() {
    let Some(url) = postgres_database() else {
        return;
    };
    // Leases and polling far longer than the test waits: only the release and its
    // notification can move the runs.
    let yaml = format!(
        r#"
storage: {{ url: "{url}" }}
server: {{ shutdown_grace: 100ms }}
engine: {{ lease: 10m, claim_interval: 2m }}
agents:
  sleepy: {{ kind: builtin, builtin: sleep }}
workflows:
  nap:
    steps:
      - {{ id: nap, agent: sleepy, input: {{ ms: 1500 }} }}
"#
    );
    let mut first = replica(&yaml).await;
    let second = replica(&yaml).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(first.start_run("nap", json!({})).await);
    }
    first
        .wait_run(&ids[4], |r| r["steps"][0]["status"] == "running")
        .await;
    assert!(first.terminate().success());
    for id in &ids {
        let run = second.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
}

/// Sends a signal to a replica's process.
fn signal(app: &TestApp, sig: &str) {
    let pid = app.child.as_ref().expect("running").id().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_records_nothing_after_another_took_over() {
    let Some(url) = postgres_database() else {
        return;
    };
    let fake = fake_agent().await;
    let yaml = counter_fleet(
        &url,
        &fake.url,
        "",
        "  two:
    steps:
      - { id: a, agent: counter, input: { sleep_ms: 1500 } }
      - { id: b, agent: counter, needs: [a] }",
    );
    let mut stale = replica(&yaml).await;
    let survivor = replica(&yaml).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(stale.start_run("two", json!({"n": i})).await);
    }
    // Every run's first call is in flight on `stale` when it stops; the answers arrive
    // while it is stopped and wait in its sockets.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.seen.lock().unwrap().calls.len() < ids.len() {
        assert!(Instant::now() < deadline, "the calls never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&stale, "-STOP");
    for id in &ids {
        let run = survivor.finished(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let record = |url: &str| {
        psql(
            url,
            "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
               SELECT concat_ws('|', run_id, step_id, status, attempts, output, error, started_at, finished_at, agent) AS x FROM steps
               UNION ALL SELECT concat_ws('|', run_id, seq, kind, step_id, data) FROM events
               UNION ALL SELECT concat_ws('|', id, status, output, error, updated_at, finished_at) FROM runs) t",
        )
    };
    let before = record(&url);
    signal(&stale, "-CONT");
    // The stale replica wakes with its calls answered and its leases lost: it must stop
    // every run it held, without recording anything.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, health) = stale.get("/health").await;
        if code == 200 && health["components"]["runs"]["active"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stale replica kept its runs: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A run through the stale replica commits behind every write it had queued.
    let probe = stale.start_run("two", json!({"n": "probe"})).await;
    assert_eq!(stale.finished(&probe).await["status"], "succeeded");
    let after = record(&url);
    let before: std::collections::BTreeSet<&str> = before.lines().collect();
    let after: std::collections::BTreeSet<&str> =
        after.lines().filter(|l| !l.contains(&probe)).collect();
    let changed: Vec<_> = after.symmetric_difference(&before).take(6).collect();
    assert!(
        changed.is_empty(),
        "the stale replica recorded something after another replica took its runs over: {changed:#?}"
    );
    // Every run finished once: its second step ran once, by the survivor.
    let calls = fake.seen.lock().unwrap().calls.clone();
    for id in &ids {
        assert_eq!(calls.get(&format!("{id}/b")), Some(&1), "{id}/b");
    }
    stale.kill();
}
