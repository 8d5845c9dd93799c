//! Scheduled backups (`backup:`): taken by the server on SQLite while runs are submitted,
//! pruned past retention, each one verified, one restored with every acknowledged run; a
//! failing backup counted and logged while serving goes on; on PostgreSQL, what the
//! CronJob runs, verified by restoring into a temporary database.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, metric, postgres_database, spawn_app_in, try_metric};

const FLEET: &str = "agents: { e: { kind: builtin, builtin: echo } }\nworkflows: { w: { steps: [ { id: a, agent: e }, { id: b, agent: e, needs: [a] } ] } }\n";

/// `flotilla backup list -o json` of `app`'s configuration.
fn listed(app: &TestApp) -> Vec<Value> {
    let config = app.config.to_str().unwrap();
    let (code, out, err) = flotilla(
        app.dir.path(),
        &["backup", "list", "--config", config, "-o", "json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["backups"].as_array().unwrap().clone()
}

fn taken_at(b: &Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(b["taken_at"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_backs_up_on_schedule_prunes_and_a_backup_restores_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flotilla.db");
    let yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\nbackup: {{ schedule: \"*/2 * * * * *\", retention: 5s, dir: \"{}\" }}\n{FLEET}",
        db.display(),
        dir.path().join("backups").display()
    );
    let mut app = spawn_app_in(dir, &yaml).await;
    // Runs go in while backups are taken; each one is acknowledged when it finished.
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        let id = app.start_run("w", json!({"n": acknowledged.len()})).await;
        assert_eq!(app.finished(&id).await["status"], "succeeded");
        acknowledged.push(id);
    }
    let last_ack = std::time::SystemTime::now();
    // A backup taken after the last acknowledgement, and the old ones pruned: those left
    // are at most the retention (5 s) plus a firing (2 s) older than the newest.
    let deadline = Instant::now() + Duration::from_secs(60);
    while listed(&app)
        .last()
        .is_none_or(|n| taken_at(n) <= last_ack + Duration::from_secs(1))
    {
        assert!(Instant::now() < deadline, "no backup after the runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = app.text("/metrics").await;
    let last = metric(&text, "backup_last_success_timestamp_seconds", &[]);
    assert!(last > 1.7e9, "{last}");
    assert!(try_metric(&text, "backup_duration_seconds", &[]).is_some());
    assert_eq!(metric(&text, "backup_failures_total", &[]), 0.0);
    // Once the server has stopped, the backups stay as they are: the old ones were pruned,
    // those left are at most the retention (5 s) plus a firing (2 s) older than the newest.
    app.terminate();
    let backups = listed(&app);
    let newest = taken_at(backups.last().unwrap());
    for b in &backups {
        let age = newest.duration_since(taken_at(b)).unwrap();
        assert!(
            age <= Duration::from_secs(8),
            "{b} was not pruned ({age:?} older)"
        );
    }
    assert!(backups.len() >= 2, "{backups:?}");
    let config = app.config.to_str().unwrap().to_owned();
    for b in &backups {
        let file = b["file"].as_str().unwrap();
        let (code, out, err) = flotilla(
            app.dir.path(),
            &["backup", "verify", file, "--config", &config],
            &[],
        );
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains("sound (sqlite backup holding"), "{out}");
    }
    // The newest backup, restored into an empty store, holds every acknowledged run.
    let newest_file = backups.last().unwrap()["file"].as_str().unwrap().to_owned();
    let empty = tempfile::tempdir().unwrap();
    let restored_yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\n{FLEET}",
        empty.path().join("restored.db").display()
    );
    std::fs::write(empty.path().join("flotilla.yaml"), &restored_yaml).unwrap();
    let (code, _, err) = flotilla(empty.path(), &["restore", &newest_file], &[]);
    assert_eq!(code, 0, "{err}");
    let restored = spawn_app_in(empty, &restored_yaml).await;
    for id in &acknowledged {
        let (code, run) = restored.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(code, 200, "run {id} is not in the backup");
        assert_eq!(run["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_failing_backup_is_counted_and_logged_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the backup directory should be: every backup fails (root ignores
    // permissions, not this).
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let db = dir.path().join("flotilla.db");
    let yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\nbackup: {{ schedule: \"* * * * * *\", dir: \"{}\" }}\n{FLEET}",
        db.display(),
        blocker.join("backups").display()
    );
    let app = spawn_app_in(dir, &yaml).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.text("/metrics").await;
        if try_metric(&text, "backup_failures_total", &[]).is_some_and(|n| n >= 2.0) {
            assert!(try_metric(&text, "backup_last_success_timestamp_seconds", &[]) == Some(0.0));
            break;
        }
        assert!(Instant::now() < deadline, "failures not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        app.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("scheduled backup failed") && l.contains("not-a-dir")),
        "the failure is logged with its cause"
    );
    let id = app.start_run("w", json!({})).await;
    assert_eq!(app.finished(&id).await["status"], "succeeded");
    assert_eq!(app.get("/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backups_run_as_the_cronjob_does_and_verify_by_restoring() {
    let Some(url) = postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let yaml = format!(
        "storage: {{ url: \"{url}\", retention: {{ interval: 300ms }} }}\nbackup: {{ schedule: \"0 2 * * *\", retention: 30d, dir: \"{}\" }}\n{FLEET}",
        backups.display()
    );
    let app = spawn_app_in(dir, &yaml).await;
    let id = app.start_run("w", json!({})).await;
    app.finished(&id).await;
    let config = app.config.to_str().unwrap().to_owned();
    let (code, out, err) = flotilla(
        app.dir.path(),
        &["backup", "scheduled", "--config", &config],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".dump"), "{out}");
    assert!(!out.contains("flotilla@"), "no connection string: {out}");
    let listed = listed(&app);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let file = listed[0]["file"].as_str().unwrap();
    let (code, out, err) = flotilla(
        app.dir.path(),
        &["backup", "verify", file, "--config", &config],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("postgres backup holding 1 run(s), 2 step(s)"),
        "{out}"
    );
    // The servers read the CronJob's record: the backup metrics are the fleet's.
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_metric(
        &app.text("/metrics").await,
        "backup_last_success_timestamp_seconds",
        &[],
    )
    .is_none_or(|t| t < 1.7e9)
    {
        assert!(
            Instant::now() < deadline,
            "the record never reached the metrics"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A damaged file is refused.
    std::fs::write(
        backups.join("flotilla-20260101T000000Z.dump"),
        "PGDMP garbage",
    )
    .unwrap();
    let (code, _, err) = flotilla(
        app.dir.path(),
        &[
            "backup",
            "verify",
            "backups/flotilla-20260101T000000Z.dump",
            "--config",
            &config,
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pg_restore failed"), "{err}");
}
