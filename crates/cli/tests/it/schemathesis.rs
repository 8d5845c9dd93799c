//! schemathesis (installed by `scripts/test` from PyPI) fuzzes the live server from its own
//! `/openapi.json`, with credentials: no 5xx, no response outside the documented schemas,
//! no invalid request accepted, no route open that the document says is protected.

use std::process::Command;

use crate::app::{installed, metric, spawn_app};

const OPERATOR: &str = "flk_schemathesis_operator";
const ADMIN: &str = "flk_schemathesis_admin";

/// Every check except `positive_data_acceptance`: some rules are not expressible in JSON
/// Schema (a task names exactly one of `agent` and `capability`; its serialized `input` is
/// at most 10,000 characters), so a schema-valid request can rightly get a 400.
const CHECKS: [&str; 4] = [
    "--checks",
    "all",
    "--exclude-checks",
    "positive_data_acceptance",
];

fn schemathesis() -> Option<&'static str> {
    installed("schemathesis", "schemathesis", &["--version"]).then_some("schemathesis")
}

/// schemathesis' own configuration. Its "location-headers" link inference parses every URL
/// in every response body with Python's `urlsplit`, which raises on URLs it finds odd (the
/// agents it registers with fuzzed endpoints come back in bodies) and ends the whole run
/// with "Test Execution Error": only the dependency-analysis inference is kept.
const CONFIG: &str = "[phases.stateful.inference]\nalgorithms = [\"dependency-analysis\"]\n";

fn run(bin: &str, url: &str, key: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(bin)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", url, "--header"])
        .arg(format!("Authorization: Bearer {key}"))
        .args(CHECKS)
        .args(["--max-examples", "60", "--request-timeout", "20"])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(8)..].join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_api_matches_its_openapi_document() {
    let Some(bin) = schemathesis() else { return };
    let config = format!(
        r#"
auth:
  mode: api_key
  api_keys:
    - {{ name: operator, role: operator, hash: "{}" }}
    - {{ name: admin, role: admin, hash: "{}" }}
rate_limits:
  default: {{ per_second: 100000, burst: 100000 }}
  # schemathesis sends bad credentials on purpose; the guessing throttle would answer 429.
  failed_auth: {{ per_second: 100000, burst: 100000 }}
agents:
  echo: {{ kind: builtin, builtin: echo, capabilities: [echo] }}
  greeter: {{ kind: builtin, builtin: template, template: "hello {{{{ input.name | default('you') }}}}" }}
workflows:
  hello:
    input_schema: {{ type: object, properties: {{ name: {{ type: string }} }} }}
    steps:
      - {{ id: greet, agent: greeter }}
      - {{ id: echo, agent: echo, needs: [greet] }}
"#,
        flotilla_server::auth::hash_key(OPERATOR),
        flotilla_server::auth::hash_key(ADMIN),
    );
    let app = spawn_app(&config).await;
    let url = app.url("/openapi.json");
    let bin = bin.to_owned();
    let before = metric(&app.text("/metrics").await, "http_requests_total", &[]);
    // As an operator every operation: registration is 403, as documented. Tasks reach only
    // the configured agents, which succeed.
    let (b, u) = (bin.clone(), url.clone());
    tokio::task::spawn_blocking(move || run(&b, &u, OPERATOR, &[]))
        .await
        .unwrap();
    // As an admin, registration itself (tasks are left out: an agent the fuzzer registers at
    // a made-up URL rightly answers 502 when called).
    tokio::task::spawn_blocking(move || {
        run(
            &bin,
            &url,
            ADMIN,
            &["--include-operation-id", "registerAgent"],
        )
    })
    .await
    .unwrap();
    let after = metric(&app.text("/metrics").await, "http_requests_total", &[]);
    let requests = after - before;
    eprintln!("schemathesis sent {requests} requests");
    assert!(
        requests >= 500.0,
        "only {requests} requests reached the server"
    );
    let log = app.log_text();
    let lines: Vec<&str> = log.lines().collect();
    // A panic's message is on the line after its location.
    let internal: Vec<&str> = (0..lines.len())
        .filter(|&i| {
            lines[i].contains("internal error")
                || lines[i].contains("panicked")
                || (i > 0 && lines[i - 1].contains("panicked"))
        })
        .map(|i| lines[i])
        .collect();
    assert!(internal.is_empty(), "{}", internal.join("\n"));
}
