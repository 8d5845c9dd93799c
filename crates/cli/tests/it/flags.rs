//! Feature flags through the real server and CLI: OFREP single and bulk evaluation, the
//! listing, `flag()` in step conditions, hot reload, and OpenFeature's own Python client.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, installed, metric, step};

const FLAGS: &str = r#"
multi_agent_workflow:
  enabled: true
  percentage: 100.0
  environment: production
experimental_cleo_optimization:
  enabled: true
  percentage: 25.0
  environment: production
  conditions:
    - type: "label"
      value: "priority=high"
      operator: "equals"
beta_rex_performance_mode:
  enabled: false
  percentage: 0.0
  environment: production
gold_tier:
  enabled: true
  conditions:
    - { field: tier, operator: IN, values: [gold] }
"#;

async fn app_with_flags(flags: &str, extra: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.yaml");
    std::fs::write(&file, flags).unwrap();
    let db = dir.path().join("flotilla.db");
    let yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\nflags: {{ file: \"{}\", environment: production }}\nagents: {{ echo: {{ kind: builtin, builtin: echo }} }}\n{extra}",
        db.display(),
        file.display()
    );
    crate::app::spawn_app_in(dir, &yaml).await
}

async fn ofrep(
    app: &TestApp,
    path: &str,
    body: Value,
    etag: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut req = app.client.post(app.url(path)).json(&body);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let tag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.json().await.unwrap_or(Value::Null);
    (code, body, tag)
}

#[tokio::test]
async fn ofrep_single_bulk_errors_and_etags() {
    let app = app_with_flags(FLAGS, "").await;
    let one = "/ofrep/v1/evaluate/flags";
    let (code, body, _) = ofrep(
        &app,
        &format!("{one}/multi_agent_workflow"),
        json!({"context": {"targetingKey": "u1"}}),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({"key": "multi_agent_workflow", "value": true, "reason": "TARGETING_MATCH", "variant": "on", "metadata": {}})
    );
    let (_, body, _) = ofrep(
        &app,
        &format!("{one}/beta_rex_performance_mode"),
        json!({"context": {"targetingKey": "u1"}}),
        None,
    )
    .await;
    assert_eq!(
        (body["value"].clone(), body["reason"].clone()),
        (json!(false), json!("DISABLED"))
    );
    let (_, body, _) = ofrep(
        &app,
        &format!("{one}/gold_tier"),
        json!({"context": {"targetingKey": "u1", "tier": "gold"}}),
        None,
    )
    .await;
    assert_eq!(body["value"], true);

    let (code, body, _) = ofrep(
        &app,
        &format!("{one}/nope"),
        json!({"context": {"targetingKey": "u1"}}),
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(body["errorCode"], "FLAG_NOT_FOUND");
    let (code, body, _) = ofrep(
        &app,
        &format!("{one}/experimental_cleo_optimization"),
        json!({"context": {"priority": "high"}}),
        None,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["errorCode"], "TARGETING_KEY_MISSING");
    let (code, body, _) = ofrep(
        &app,
        &format!("{one}/gold_tier"),
        json!({"context": "gold"}),
        None,
    )
    .await;
    assert_eq!(
        (code, body["errorCode"].as_str()),
        (400, Some("INVALID_CONTEXT"))
    );
    let r = app
        .client
        .post(app.url(&format!("{one}/gold_tier")))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], "PARSE_ERROR");

    let ctx = json!({"context": {"targetingKey": "u1", "priority": "high"}});
    let (code, bulk, etag) = ofrep(&app, one, ctx.clone(), None).await;
    assert_eq!(code, 200);
    assert_eq!(bulk["flags"].as_array().unwrap().len(), 4, "{bulk}");
    let etag = etag.expect("an ETag");
    let (code, _, again) = ofrep(&app, one, ctx.clone(), Some(&etag)).await;
    assert_eq!(code, 304);
    assert_eq!(again.as_deref(), Some(etag.as_str()));
    let (code, _, other) = ofrep(
        &app,
        one,
        json!({"context": {"targetingKey": "u2"}}),
        Some(&etag),
    )
    .await;
    assert_eq!(code, 200, "another context is another answer");
    assert_ne!(other.as_deref(), Some(etag.as_str()));

    let (code, list) = app.get("/api/v1/flags").await;
    assert_eq!(code, 200);
    assert_eq!(list["flags"].as_array().unwrap().len(), 4);
    let text = app.text("/metrics").await;
    assert!(
        metric(
            &text,
            "feature_flag_evaluations_total",
            &[("flag", "multi_agent_workflow"), ("result", "true")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn flags_gate_steps_and_reload_live() {
    let dir_flags = "beta_step:\n  enabled: true\n  conditions:\n    - { field: tier, operator: IN, values: [gold] }\n";
    let app = app_with_flags(
        dir_flags,
        "workflows:\n  gated:\n    steps:\n      - { id: always, agent: echo }\n      - { id: beta, agent: echo, needs: [always], when: \"flag('beta_step')\" }\n",
    )
    .await;
    let gold = app.start_run("gated", json!({"tier": "gold"})).await;
    let run = app.finished(&gold).await;
    assert_eq!(step(&run, "beta")["status"], "succeeded", "{run}");
    let plain = app.start_run("gated", json!({"tier": "silver"})).await;
    let run = app.finished(&plain).await;
    assert_eq!(step(&run, "beta")["status"], "skipped", "{run}");

    // Edit the file: within a second the new flags decide.
    let file = app.dir.path().join("flags.yaml");
    std::fs::write(&file, "beta_step:\n  enabled: false\n").unwrap();
    let body = json!({"context": {"targetingKey": "u", "tier": "gold"}});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, b, _) = ofrep(
            &app,
            "/ofrep/v1/evaluate/flags/beta_step",
            body.clone(),
            None,
        )
        .await;
        if b["value"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "the edit never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file is refused: the last good flags stay, the error is counted and logged.
    std::fs::write(&file, "beta_step:\n  enabled: maybe\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&app.text("/metrics").await, "flag_reload_errors_total", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, b, _) = ofrep(&app, "/ofrep/v1/evaluate/flags/beta_step", body, None).await;
    assert_eq!(b["reason"], "DISABLED");
    // The log line reaches the test through a pipe, a moment after the counter moves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.log_text().contains("flags.yaml:2:") {
        assert!(Instant::now() < deadline, "the position is logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_broken_flag_file_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flags.yaml"),
        "x:\n  enabled: true\n  percentage: 300\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("flotilla.yaml"),
        "flags: { file: flags.yaml }\n",
    )
    .unwrap();
    let (code, out, err) = flotilla(
        dir.path(),
        &["flags", "list", "--config", "flotilla.yaml"],
        &[],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("flags.yaml:3:3: x.percentage: percentage must be between 0 and 100"),
        "{err}"
    );
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "serve",
            "--config",
            "flotilla.yaml",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("flags.yaml:3:3: x.percentage"), "{err}");
}

#[test]
fn the_cli_lists_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(
        dir.path().join("flotilla.yaml"),
        "flags: { file: flags.yaml, environment: production }\n",
    )
    .unwrap();
    let cfg = ["--config", "flotilla.yaml"];
    let (code, out, err) = flotilla(dir.path(), &[&["flags", "list"][..], &cfg].concat(), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let (code, out, _) = flotilla(
        dir.path(),
        &[
            &[
                "flags",
                "eval",
                "gold_tier",
                "--context",
                "user_id=42",
                "--context",
                "tier=gold",
            ][..],
            &cfg,
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        json!({"flag": "gold_tier", "value": true, "reason": "TARGETING_MATCH", "variant": "on"})
    );
    let (code, _, _) = flotilla(
        dir.path(),
        &[
            &["flags", "eval", "gold_tier", "--context", "tier=tin"][..],
            &cfg,
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 1, "off is exit status 1");
    let (code, _, err) = flotilla(
        dir.path(),
        &[&["flags", "eval", "ghost"][..], &cfg].concat(),
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("no flag named `ghost`"));
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            &["flags", "eval", "gold_tier", "--context", "tier"][..],
            &cfg,
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 2, "a malformed context is a usage error, not `off`");
    assert!(err.contains("is not KEY=VALUE"), "{err}");
}

/// OpenFeature's Python SDK with its OFREP provider (PyPI, installed by `scripts/test`)
/// reads flags from a live flotilla.
#[tokio::test(flavor = "multi_thread")]
async fn an_openfeature_client_reads_flags_over_ofrep() {
    if !installed(
        "OpenFeature's OFREP provider",
        "python",
        &["-c", "import openfeature.contrib.provider.ofrep"],
    ) {
        return;
    }
    let app = app_with_flags(FLAGS, "").await;
    let script = r#"
import sys
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.ofrep import OFREPProvider
api.set_provider(OFREPProvider(sys.argv[1]))
client = api.get_client()
gold = client.get_boolean_details("gold_tier", False, EvaluationContext("user-1", {"tier": "gold"}))
tin = client.get_boolean_value("gold_tier", True, EvaluationContext("user-1", {"tier": "tin"}))
missing = client.get_boolean_details("ghost", False, EvaluationContext("user-1"))
print(gold.value, gold.reason, tin, missing.value, missing.error_code)
"#;
    let url = app.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python")
            .args(["-c", script, &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "True TARGETING_MATCH False False FLAG_NOT_FOUND"
    );
}
