//! What a newcomer trips on, each held to a test: `--listen :PORT`, `--input -`, a clear
//! word when a server holds the database, `backup` that does not overwrite by surprise.

use std::process::{Command, Stdio};

use crate::app::{BIN, flotilla, flotilla_fed, spawn_app};

const CONFIG: &str = "agents: { echo: { kind: builtin, builtin: echo } }\nworkflows: { hello: { steps: [ { id: a, agent: echo } ] } }\n";

#[tokio::test]
async fn run_reads_stdin_and_says_what_to_do_when_a_server_holds_the_database() {
    let dir = demo_dir();
    let (code, out, err) = flotilla_fed(
        dir.path(),
        &["run", "hello", "--input", "-", "--config", "flotilla.yaml"],
        &[],
        br#"{"word": "from stdin"}"#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from stdin"), "{out}");
    // A server on the same SQLite file: `run` cannot have it, and says what to do instead.
    let server = spawn_app(CONFIG).await;
    let db = server.dir.path().join("flotilla.db");
    std::fs::write(
        dir.path().join("held.yaml"),
        format!(
            "storage: {{ url: \"sqlite://{}\" }}\n{CONFIG}",
            db.display()
        ),
    )
    .unwrap();
    let (code, _, err) = flotilla(dir.path(), &["run", "hello", "--config", "held.yaml"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("a server is using this database") && err.contains("flotilla runs start"),
        "{err}"
    );
}

#[test]
fn serve_listens_on_every_address_with_a_bare_port() {
    let dir = demo_dir();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "flotilla.yaml", "--listen", ":0"])
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .take(200)
        .find(|l| l.contains("listening on"));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("serve logs its address");
    assert!(line.contains("listening on 0.0.0.0:"), "{line}");
}

#[tokio::test]
async fn backup_does_not_replace_a_file_unless_told_to() {
    let app = spawn_app(CONFIG).await;
    let dir = app.dir.path();
    let config = app.config.display().to_string();
    std::fs::write(dir.join("backup.db"), "precious").unwrap();
    let (code, _, err) = flotilla(
        dir,
        &["backup", "--output", "backup.db", "--config", &config],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("backup.db exists; pass --force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("backup.db")).unwrap(),
        "precious"
    );
    let (code, _, err) = flotilla(
        dir,
        &[
            "backup",
            "--output",
            "backup.db",
            "--force",
            "--config",
            &config,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(dir.join("backup.db")).unwrap(), b"precious");
}

#[test]
fn errors_are_told_once_and_target_means_one_thing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let (code, _, err) = flotilla(
        dir.path(),
        &["monitoring", "generate", "--output", "afile"],
        &[],
    );
    assert_ne!(code, 0);
    assert_eq!(err.matches("File exists").count(), 1, "{err}");
    // `--target` is what deploy generates and what loadtest loads; monitoring scrapes.
    let (code, _, _) = flotilla(
        dir.path(),
        &[
            "monitoring",
            "generate",
            "--output",
            "mon",
            "--target",
            "h:1",
        ],
        &[],
    );
    assert_eq!(code, 2);
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "monitoring",
            "generate",
            "--output",
            "mon",
            "--scrape",
            "h:1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(dir.path().join("mon/prometheus.yml"))
            .unwrap()
            .contains("h:1")
    );
}

#[test]
fn run_logs_as_log_level_asks_without_colour_in_a_pipe() {
    let dir = demo_dir();
    let out = Command::new(BIN)
        .args(["run", "hello", "--config", "flotilla.yaml"])
        .current_dir(dir.path())
        .env_remove("LOG_LEVEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let quiet = String::from_utf8_lossy(&out.stderr);
    assert!(!quiet.contains("migration"), "{quiet}");
    std::fs::remove_file(dir.path().join("db.sqlite")).unwrap();
    let (code, _, err) = flotilla(
        dir.path(),
        &["run", "hello", "--config", "flotilla.yaml"],
        &[("LOG_LEVEL", "info")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("applied sqlite migration"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no ANSI colour when stderr is not a terminal: {err}"
    );
}

#[test]
fn every_bad_setting_variable_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = flotilla(
        dir.path(),
        &["validate"],
        &[
            ("FLOTILLA_SERVER__BODY_LIMIT", "lots"),
            ("FLOTILLA_ENGINE__MAX_CONCURRENCY", "many"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("env FLOTILLA_SERVER__BODY_LIMIT: server.body_limit"),
        "{err}"
    );
    assert!(
        err.contains("env FLOTILLA_ENGINE__MAX_CONCURRENCY: engine.max_concurrency"),
        "{err}"
    );
    assert!(err.contains("2 problems"), "{err}");
}

/// A directory holding `flotilla.yaml`: [`CONFIG`] on SQLite `db.sqlite` in it.
fn demo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flotilla.yaml"),
        format!("storage: {{ url: \"sqlite://db.sqlite\" }}\n{CONFIG}"),
    )
    .unwrap();
    dir
}
