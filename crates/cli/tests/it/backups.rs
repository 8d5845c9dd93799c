//! Backup and restore round trips on both backends.

use serde_json::json;

use crate::app::{flotilla, postgres_database, spawn_app, spawn_app_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_while_serving_then_restore() {
    let mut app = spawn_app("agents: { e: { kind: builtin, builtin: echo } }\nworkflows: { w: { steps: [ { id: s, agent: e } ] } }\n").await;
    let id = app.start_run("w", json!({"keep": "me"})).await;
    app.finished(&id).await;
    let config = app.config.to_str().unwrap().to_owned();
    let dir = app.dir.path().to_owned();
    let file = dir.join("backup.db");
    let (code, out, err) = flotilla(
        &dir,
        &[
            "backup",
            "--config",
            &config,
            "--output",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "backup while serving: {err}");
    assert!(out.contains("backed up"));

    let (code, _, err) = flotilla(
        &dir,
        &["restore", "--config", &config, file.to_str().unwrap()],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("stop it before restoring"), "{err}");
    app.kill();

    let (code, _, err) = flotilla(
        &dir,
        &["restore", "--config", &config, file.to_str().unwrap()],
        &[],
    );
    assert_ne!(code, 0, "a store with runs is not replaced without --force");
    assert!(err.contains("--force"), "{err}");

    // Restoring into an empty store brings the run back.
    let empty = tempfile::tempdir().unwrap();
    let other = format!(
        "storage: {{ url: \"sqlite://{}\" }}\n",
        empty.path().join("new.db").display()
    );
    let other_config = empty.path().join("flotilla.yaml");
    std::fs::write(&other_config, &other).unwrap();
    let (code, _, err) = flotilla(
        &dir,
        &[
            "restore",
            "--config",
            other_config.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let restored = spawn_app_in(
        empty,
        &format!("{other}agents: {{ e: {{ kind: builtin, builtin: echo }} }}\n"),
    )
    .await;
    let (code, run) = restored.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(run["output"], json!({"keep": "me"}));
    let (code, _, _) = flotilla(
        &dir,
        &["restore", "--config", &config, "--force", "missing.db"],
        &[],
    );
    assert_ne!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_and_restore_round_trip() {
    let Some(url) = postgres_database() else {
        return;
    };
    let Some(target) = postgres_database() else {
        return;
    };
    let yaml = format!(
        "storage: {{ url: \"{url}\" }}\nagents: {{ e: {{ kind: builtin, builtin: echo }} }}\nworkflows: {{ w: {{ steps: [ {{ id: s, agent: e }} ] }} }}\n"
    );
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &yaml).await;
    let id = app.start_run("w", json!({"keep": "pg"})).await;
    app.finished(&id).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla.dump");
    let (code, _, err) = flotilla(
        dir.path(),
        &["backup", "--output", file.to_str().unwrap()],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = flotilla(
        dir.path(),
        &["restore", file.to_str().unwrap()],
        &[("DATABASE_URL", &url)],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    assert!(
        !err.contains("flotilla@"),
        "no connection string in errors: {err}"
    );
    let (code, _, err) = flotilla(
        dir.path(),
        &["restore", file.to_str().unwrap()],
        &[("DATABASE_URL", &target)],
    );
    assert_eq!(code, 0, "{err}");
    let restored = spawn_app_in(
        tempfile::tempdir().unwrap(),
        &format!("storage: {{ url: \"{target}\" }}\nagents: {{ e: {{ kind: builtin, builtin: echo }} }}\n"),
    )
    .await;
    let (code, run) = restored.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["output"], json!({"keep": "pg"}));
    let (code, _, err) = flotilla(
        dir.path(),
        &["restore", "--force", file.to_str().unwrap()],
        &[("DATABASE_URL", &target)],
    );
    assert_eq!(code, 0, "--force replaces: {err}");
}
