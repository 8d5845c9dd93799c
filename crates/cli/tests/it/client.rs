//! The client commands (`flotilla runs …`, `agents list`, `tasks execute`) against a live server:
//! every output format parsed back, and the exit codes.

use serde_json::Value;

use crate::app::{TestApp, flotilla, flotilla_fed, free_port, spawn_app};

const KEY: &str = "flk_client_operator_key";

pub(crate) async fn server() -> TestApp {
    spawn_app(&format!(
        r#"
auth:
  mode: api_key
  api_keys: [ {{ name: ops, role: operator, hash: "{}" }} ]
agents:
  echo: {{ kind: builtin, builtin: echo }}
  nap: {{ kind: builtin, builtin: sleep }}
  broken: {{ kind: builtin, builtin: fail, failure_rate: 1.0 }}
workflows:
  greet: {{ steps: [ {{ id: hello, agent: echo }} ] }}
  slow: {{ steps: [ {{ id: think, agent: nap, input: {{ ms: 1500 }} }}, {{ id: answer, agent: echo, needs: [think] }} ] }}
  stuck: {{ steps: [ {{ id: forever, agent: nap, input: {{ ms: 600000 }} }} ] }}
  broken: {{ steps: [ {{ id: call, agent: broken }} ] }}
"#,
        flotilla_server::auth::hash_key(KEY)
    ))
    .await
}

/// `flotilla <args>` against `app`, the key in the environment.
pub(crate) fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    flotilla(
        app.dir.path(),
        args,
        &[
            ("FLOTILLA_SERVER", app.addr.as_str()),
            ("FLOTILLA_API_KEY", KEY),
        ],
    )
}

pub(crate) fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn yaml(out: &str) -> Value {
    flotilla_spec::yaml::parse("out.yaml", out, &|_| None)
        .unwrap_or_else(|e| panic!("not YAML ({e:?}): {out}"))
        .0
}

#[tokio::test]
async fn runs_start_list_get_and_agents_in_every_format() {
    let app = server().await;
    let (code, out, err) = cli(
        &app,
        &[
            "runs",
            "start",
            "greet",
            "--input",
            r#"{"name": "Ada"}"#,
            "--wait",
            "30s",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run = json(&out);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["input"]["name"], "Ada");
    let id = run["id"].as_str().unwrap().to_owned();
    // Input from a file and from stdin.
    let file = app.dir.path().join("input.json");
    std::fs::write(&file, r#"{"name": "Grace"}"#).unwrap();
    let (code, out, _) = cli(
        &app,
        &[
            "runs",
            "start",
            "greet",
            "--input",
            &format!("@{}", file.display()),
            "--wait",
            "30s",
            "-o",
            "yaml",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(yaml(&out)["input"]["name"], "Grace");
    let (code, out, err) = flotilla_fed(
        app.dir.path(),
        &[
            "runs", "start", "greet", "--input", "-", "--wait", "30s", "-o", "json",
        ],
        &[
            ("FLOTILLA_SERVER", app.addr.as_str()),
            ("FLOTILLA_API_KEY", KEY),
        ],
        br#"{"name": "Edsger"}"#,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["input"]["name"], "Edsger");
    // A failing run: exit status 1, and the run is printed all the same.
    let (code, out, _) = cli(
        &app,
        &["runs", "start", "broken", "--wait", "30s", "-o", "json"],
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(json(&out)["status"], "failed");
    // Without --wait: the id, at once.
    let (code, out, _) = cli(&app, &["runs", "start", "greet", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(json(&out)["run_id"].is_string());

    let (code, out, _) = cli(&app, &["runs", "list", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["runs"].as_array().unwrap().len(), 5);
    let (_, out, _) = cli(
        &app,
        &[
            "runs", "list", "--status", "failed", "--since", "1h", "-o", "yaml",
        ],
    );
    let failed = yaml(&out);
    assert_eq!(failed["runs"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(failed["runs"][0]["workflow"], "broken");
    let (_, out, _) = cli(
        &app,
        &["runs", "list", "--workflow", "greet", "--limit", "2"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two runs: {out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{out}"
    );

    let (code, out, _) = cli(&app, &["runs", "get", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&id) && out.contains("succeeded") && out.contains("STEP"),
        "{out}"
    );
    assert!(out.contains("hello"), "{out}");
    let (_, out, _) = cli(&app, &["runs", "get", &id, "-o", "yaml"]);
    assert_eq!(yaml(&out)["steps"][0]["id"], "hello");

    let (code, out, _) = cli(&app, &["agents", "list", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["total"], 3);
    let (_, out, _) = cli(&app, &["agents", "list"]);
    assert!(
        out.starts_with("AGENT") && out.contains("broken") && out.contains("closed"),
        "{out}"
    );
}

#[tokio::test]
async fn tasks_execute_in_every_format() {
    let app = server().await;
    let input = r#"{"city": "Oslo"}"#;
    let (code, out, err) = cli(
        &app,
        &[
            "tasks", "execute", "--agent", "echo", "--input", input, "-o", "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let task = json(&out);
    assert_eq!(task["agentId"], "echo");
    assert_eq!(task["result"]["city"], "Oslo", "{task}");
    assert!(task["taskId"].is_string(), "{task}");
    let (code, out, _) = cli(
        &app,
        &[
            "tasks", "execute", "--agent", "echo", "--input", input, "-o", "yaml",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(yaml(&out)["result"]["city"], "Oslo", "{out}");
    let (code, out, _) = cli(
        &app,
        &["tasks", "execute", "--agent", "echo", "--input", input],
    );
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("TASK"), "{out}");
    assert!(lines.next().unwrap().contains("Oslo"), "{out}");
}

#[tokio::test]
async fn watch_follows_a_run_to_its_end_and_exits_with_its_outcome() {
    let app = server().await;
    let (_, out, _) = cli(&app, &["runs", "start", "slow", "-o", "json"]);
    let id = json(&out)["run_id"].as_str().unwrap().to_owned();
    let (code, out, err) = cli(&app, &["runs", "watch", &id]);
    assert_eq!(code, 0, "{err}");
    for kind in [
        "run_started",
        "step_started",
        "step_succeeded",
        "run_finished",
    ] {
        assert!(out.contains(kind), "{kind}: {out}");
    }
    assert!(err.contains("succeeded"), "{err}");
    // JSON: one event per line, the last one the end.
    let (code, out, _) = cli(&app, &["runs", "watch", &id, "-o", "json"]);
    assert_eq!(code, 0);
    let events: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(events.last().unwrap()["kind"], "run_finished");
    // A cancelled run: watch ends with exit status 1.
    let (_, out, _) = cli(&app, &["runs", "start", "stuck", "-o", "json"]);
    let stuck = json(&out)["run_id"].as_str().unwrap().to_owned();
    let (code, out, _) = cli(&app, &["runs", "cancel", &stuck, "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["status"], "cancelled");
    let (code, _, _) = cli(&app, &["runs", "watch", &stuck]);
    assert_eq!(code, 1);
}

#[tokio::test]
async fn client_errors_have_their_own_exit_codes() {
    let app = server().await;
    // What was asked about does not exist, or was refused: 1, with the server's words.
    let (code, _, err) = cli(&app, &["runs", "get", "no-such-run"]);
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("no-such-run"), "{err}");
    let (code, _, err) = flotilla(
        app.dir.path(),
        &["runs", "list", "--server", &app.addr],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&app, &["runs", "cancel", "no-such-run"]);
    assert_eq!(code, 1, "{err}");
    // Usage: 2.
    let (code, _, err) = cli(&app, &["runs", "start", "greet", "--input", "{nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("--input is not JSON"), "{err}");
    let (code, _, err) = cli(&app, &["runs", "list", "--server", "ftp://example"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(&app, &["runs", "list", "-o", "xml"]);
    assert_eq!(code, 2);
    // No server there: 4.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = cli(&app, &["runs", "list", "--server", &nobody]);
    assert_eq!(code, 4);
    assert!(err.contains("cannot be reached"), "{err}");
}
