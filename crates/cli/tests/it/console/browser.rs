//! The console in a real headless Chromium (Debian's, driven by playwright-core from npm):
//! `crates/cli/tests/console/console.cjs` signs in, filters runs, follows a run to green
//! without a reload, cancels one, sees a circuit open, evaluates a flag and promotes a
//! rollout paused by a real controller (nginx and Prometheus in front of real backends),
//! with axe-core auditing each page and a screenshot of each under `target/console/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::{OPERATOR, VIEWER, config, start, wait};
use crate::app::{installed, spawn_app_in};
use crate::rollout::fleet::{Controller, Fleet, Traffic};

const FLAGS: &str = r#"
gold_tier:
  enabled: true
  description: Gold customers get the new planner
  conditions:
    - { field: tier, operator: IN, values: [gold] }
new_checkout:
  enabled: true
  percentage: 25.0
  environment: production
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_works_the_console_in_a_real_browser() {
    let modules = workspace().join("target/tools/node/node_modules");
    if !installed("chromium", "chromium", &["--version"])
        || !installed("node", "node", &["--version"])
    {
        return;
    }
    assert!(
        modules.join("playwright-core").exists() && modules.join("axe-core").exists(),
        "playwright-core and axe-core are missing: scripts/test installs them"
    );
    let Some(fleet) = Fleet::start(&["stable"], &["stable"]).await else {
        return;
    };
    fleet.rollout(
        "canary",
        "  steps:\n    - set_weight: 50\n    - analysis: { templates: [success-rate-3] }\n    - pause: {}\n    - set_weight: 100\n",
    );
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    let controller = Controller::start(&fleet);

    // The console's server keeps its runs in the rollout's store, as `flotilla rollout`
    // does by default with one configuration file.
    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags.yaml");
    std::fs::write(&flags, FLAGS).unwrap();
    let yaml = format!(
        "storage: {{ url: \"sqlite://{}\" }}\nflags: {{ file: \"{}\", environment: production }}\n{}",
        fleet.dir.path().join("rollout.db").display(),
        flags.display(),
        config("")
    );
    let app = spawn_app_in(dir, &yaml).await;
    let mut done = Vec::new();
    let mut red = 0;
    for i in 0..12 {
        let team = if i % 3 == 0 { "red" } else { "blue" };
        red += usize::from(team == "red");
        done.push(start(&app, "pipeline", json!({"i": i}), json!({"team": team})).await);
    }
    for _ in 0..2 {
        done.push(start(&app, "brittle", json!({}), json!({})).await);
    }
    let stuck = start(&app, "stuck", json!({}), json!({})).await;
    let stuck2 = start(&app, "stuck", json!({}), json!({})).await;
    for id in &done {
        wait(&app, id, |r| r["finished_at"].is_string()).await;
    }
    for id in [&stuck, &stuck2] {
        wait(&app, id, |r| r["status"] == "running").await;
    }
    fleet
        .wait_status("paused at 50 %", Duration::from_secs(180), |s| {
            s["state"]["status"]["status"] == "paused" && s["state"]["weight"] == 50
        })
        .await;

    let shots = workspace().join("target/console");
    let run = tokio::process::Command::new("node")
        .arg(workspace().join("crates/cli/tests/console/console.cjs"))
        .env("NODE_PATH", &modules)
        .env("BASE", &app.addr)
        .env("OPERATOR", OPERATOR)
        .env("VIEWER", VIEWER)
        .env("STUCK", &stuck)
        .env("STUCK2", &stuck2)
        .env("RED", red.to_string())
        .env("SHOTS", &shots)
        .env("AXE", modules.join("axe-core/axe.min.js"))
        .env("CHROMIUM", "/usr/bin/chromium")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(420), run)
        .await
        .expect("the browser test ends within 7 minutes")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() {
        // What the controller saw, for the failure's message.
        let status = fleet.status();
        let (code, _, err) = controller.exit(Duration::from_secs(5)).await;
        panic!("{stdout}\n{stderr}\nrollout status: {status:#}\ncontroller ({code}):\n{err}");
    }
    for page in [
        "login",
        "runs",
        "run",
        "run-dag",
        "agents",
        "flags",
        "rollouts",
        "rollout",
        "runs-phone",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "screenshot of {page}"
        );
    }
    // The promote the browser sent reached the controller, which finished the rollout.
    let (code, out, err) = controller.exit(Duration::from_secs(120)).await;
    assert_eq!(code, 0, "promoted: {out}\n{err}");
    let (_, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(wait(&app, &stuck, |_| true).await["status"], "cancelled");
    assert_eq!(
        wait(&app, &stuck2, |_| true).await["status"],
        "running",
        "the viewer's cancel was refused"
    );
}
