//! The command line: validation errors, config show, run.

use crate::app::flotilla;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn invalid_configs_list_every_problem_with_positions_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.yaml",
        "agents:\n  a: { kind: builtin, builtin: echo }\nworkflows:\n  w:\n    steps:\n      - id: one\n        agent: ghost\n      - id: two\n        agent: a\n        needs: [three]\n      - id: three\n        agent: a\n        needs: [two]\n",
    );
    let (code, _, stderr) = flotilla(dir.path(), &["validate", "--config", &path], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bad.yaml:7:9: step `one` uses unknown agent `ghost`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dependency cycle: two -> three -> two"),
        "{stderr}"
    );
    assert!(stderr.contains("2 problems"), "{stderr}");
}

#[test]
fn invalid_budgets_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "budget.yaml",
        "agents:\n  a: { kind: builtin, builtin: echo, budget: { usd: -1 } }\nworkflows:\n  w:\n    budget: {}\n    steps: [ { id: one, agent: a } ]\n",
    );
    let (code, _, stderr) = flotilla(dir.path(), &["validate", "--config", &path], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("budget.yaml:2:")
            && stderr.contains("budget.usd must be a positive number"),
        "{stderr}"
    );
    assert!(
        stderr.contains("budget.yaml:5:")
            && stderr.contains("a budget needs `usd`, `tokens` or both"),
        "{stderr}"
    );
}

#[test]
fn invalid_yaml_unknown_fields_and_missing_variables() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = write(dir.path(), "broken.yaml", "agents:\n  a: [unclosed\n");
    let (code, _, stderr) = flotilla(dir.path(), &["validate", "--config", &yaml], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("broken.yaml:") && stderr.contains("invalid YAML"),
        "{stderr}"
    );

    let unknown = write(dir.path(), "typo.yaml", "server:\n  listne: 1.2.3.4:5\n");
    let (code, _, stderr) = flotilla(dir.path(), &["validate", "--config", &unknown], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("typo.yaml:2:3: server.listne: unknown field `listne`"),
        "{stderr}"
    );

    let env = write(
        dir.path(),
        "env.yaml",
        "storage:\n  url: \"postgres://app:${DB_PASSWORD}@db/f\"\n",
    );
    let (code, _, stderr) = flotilla(dir.path(), &["validate", "--config", &env], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("env.yaml:2:8: environment variable `DB_PASSWORD` is not set"),
        "{stderr}"
    );

    let (code, _, stderr) = flotilla(dir.path(), &["validate", "--config", "missing.yaml"], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read config file missing.yaml"),
        "{stderr}"
    );
}

#[test]
fn layering_overlays_env_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "flotilla.yaml",
        "server: { listen: \"127.0.0.1:1000\" }\nllm:\n  providers: { openai: { base_url: \"https://api.example/v1\", api_key: \"${OPENAI_KEY}\" } }\n",
    );
    write(
        dir.path(),
        "flotilla.production.yaml",
        "server: { listen: \"127.0.0.1:2000\", shutdown_grace: 5s }\n",
    );
    let (code, out, stderr) = flotilla(
        dir.path(),
        &["config", "show", "--config", &base, "--env", "production"],
        &[
            ("OPENAI_KEY", "sk-live-canary-123"),
            ("FLOTILLA_STORAGE__URL", "sqlite://other.db"),
            ("FLOTILLA_ENGINE__MAX_CONCURRENCY", "7"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("listen: 127.0.0.1:2000"), "{out}");
    assert!(out.contains("shutdown_grace: 5s"), "{out}");
    assert!(out.contains("url: sqlite://other.db"), "{out}");
    assert!(out.contains("max_concurrency: 7"), "{out}");
    assert!(
        out.contains("api_key: '***'") || out.contains("api_key: \"***\""),
        "{out}"
    );
    assert!(!out.contains("sk-live-canary-123"));
    let (code, out, _) = flotilla(
        dir.path(),
        &["config", "show", "--config", &base],
        &[
            ("OPENAI_KEY", "x"),
            ("DATABASE_URL", "postgres://u:hunter2@db/f"),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("postgres://u:***@db/f"), "{out}");
    assert!(!out.contains("hunter2"));
}

#[test]
fn run_prints_the_output_on_stdout_and_progress_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = flotilla(
        dir.path(),
        &[
            "run",
            "travel_planning",
            "--input",
            r#"{"destination": "Oslo", "budget": 2000}"#,
        ],
        &[("LOG_LEVEL", "warn")],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["destination"], "Oslo");
    assert_eq!(v["accommodation"]["hotel"], "Hotel Oslo");
    assert!(err.contains("step_succeeded"), "{err}");
    assert!(
        dir.path().join("flotilla.db").exists(),
        "the demo uses ./flotilla.db"
    );

    let (code, _, err) = flotilla(
        dir.path(),
        &["run", "travel_planning", "--input", "{}"],
        &[("LOG_LEVEL", "warn")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("destination"), "{err}");
    let (code, _, err) = flotilla(
        dir.path(),
        &["run", "travel_planning", "--input", "{not json"],
        &[],
    );
    assert_eq!(code, 2, "bad input is a usage error");
    assert!(err.contains("--input is not JSON"), "{err}");
}

#[tokio::test]
async fn logs_also_go_to_a_rotated_file_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let app = crate::app::spawn_app(&format!(
        "logging: {{ file: {{ dir: \"{}\", rotation: hourly, keep: 3 }} }}\n",
        logs.display()
    ))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text: String = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("flotilla."))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        if text.contains("listening on") {
            let line = text.lines().find(|l| l.contains("listening on")).unwrap();
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["level"], "INFO");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log file in {}",
            logs.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(app);
}

#[test]
fn deploy_generate_writes_refuses_to_overwrite_and_explains_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy");
    let out_s = out.to_str().unwrap();
    // No configuration: an error, not the demo.
    let (code, _, err) = flotilla(dir.path(), &["deploy", "generate", "--output", out_s], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FLOTILLA_CONFIG"), "{err}");
    // The demo's SQLite store behind replicas: refused, with what to do.
    write(
        dir.path(),
        "demo.yaml",
        include_str!("../../../../examples/demo.yaml"),
    );
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--target",
            "kubernetes",
            "--output",
            out_s,
        ],
        &[("FLOTILLA_CONFIG", "demo.yaml")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SQLite") && err.contains("PostgreSQL"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    write(
        dir.path(),
        "flotilla.yaml",
        include_str!("../../../../examples/production.yaml"),
    );
    write(
        dir.path(),
        "flags.yaml",
        include_str!("../../../../examples/flags.yaml"),
    );
    let (code, stdout, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--target",
            "kubernetes",
            "--env",
            "staging",
            "--output",
            out_s,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("kubernetes/overlays/staging/kustomization.yaml"),
        "{stdout}"
    );
    assert!(!out.join("kubernetes/overlays/production").exists());
    assert!(out.join("image/Dockerfile").exists());
    let first = std::fs::read(out.join("kubernetes/base/deployment.yaml")).unwrap();
    let (code, _, err) = flotilla(dir.path(), &["deploy", "generate", "--output", out_s], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--target",
            "kubernetes",
            "--env",
            "staging",
            "--output",
            out_s,
            "--force",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        first,
        std::fs::read(out.join("kubernetes/base/deployment.yaml")).unwrap(),
        "same input, same bytes"
    );
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--env",
            "qa",
            "--output",
            dir.path().join("x").to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown environment `qa` (deploy.environments has: production, staging)"),
        "{err}"
    );
    let bad = write(
        dir.path(),
        "bad.yaml",
        "deploy:\n  name: Flotilla_App\n  rollout:\n    steps:\n      - { set_weight: 20, pause: 1m }\n",
    );
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--config",
            &bad,
            "--output",
            dir.path().join("y").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.yaml:2:3: `Flotilla_App` must be a DNS label"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:5:9: each step is one of `set_weight`"),
        "{err}"
    );
}

// `flotilla bench` runs every workload (a few workflows each) and says what it measured.
#[test]
fn bench_runs_each_workload_and_discloses_its_set_up() {
    let dir = tempfile::tempdir().unwrap();
    for (workload, extra) in [
        ("chain", vec![]),
        ("fanout", vec![]),
        ("concurrent", vec!["--in-flight", "2"]),
    ] {
        let mut args = vec!["bench", "--workload", workload, "-n", "3", "--allow-tmpfs"];
        args.extend(extra);
        let (code, out, err) = flotilla(dir.path(), &args, &[]);
        assert_eq!(code, 0, "{workload}: {err}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["workload"], workload, "{line}");
        assert_eq!(line["workflows"], 3, "{line}");
        assert!(line["steps_per_s"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["filesystem"].as_str().is_some(), "{line}");
        assert_eq!(line["settings"]["storage.durability"], "durable", "{line}");
        assert!(
            line["observability"]
                .as_str()
                .unwrap()
                .starts_with("serve's"),
            "{line}"
        );
    }
    let (code, out, err) = flotilla(
        dir.path(),
        &[
            "bench",
            "--workload",
            "chain",
            "-n",
            "2",
            "--bare",
            "--allow-tmpfs",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bare"), "{out}");
    // Nothing is left in the working directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
