//! The monitoring bundle checked by the real `promtool` (Debian's `prometheus` package,
//! installed by `scripts/test`): the rules and the config load, and every alert fires on
//! the series that should fire it and stays silent otherwise (`alerts_test.yml`).

use std::path::Path;
use std::process::Command;

use flotilla_deploy::monitoring::Bundle;
use flotilla_deploy::write_files;

fn promtool() -> bool {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true but promtool is missing: scripts/test installs Debian's prometheus package"
    );
    eprintln!("skipped: promtool is not installed (scripts/test installs it)");
    false
}

fn run(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn bundle_in(dir: &Path) {
    let bundle = Bundle {
        runbook_base: "https://runbooks.test/".into(),
        llm_usd_per_hour: 10.0,
        // An hourly backup schedule: stale after an hour and a half.
        backup_stale_after: Some(std::time::Duration::from_secs(5400)),
        ..Bundle::default()
    };
    write_files(dir, &bundle.files(), false).unwrap();
}

#[test]
fn rules_and_config_pass_promtool_check() {
    if !promtool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    bundle_in(dir.path());
    let out = run(dir.path(), &["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    run(dir.path(), &["check", "config", "prometheus.yml"]);
}

#[test]
fn each_alert_fires_on_its_series_and_stays_silent_otherwise() {
    if !promtool() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    bundle_in(dir.path());
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alerts_test.yml"),
        dir.path().join("alerts_test.yml"),
    )
    .unwrap();
    let out = run(dir.path(), &["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file has a test case.
    let tests = std::fs::read_to_string(dir.path().join("alerts_test.yml")).unwrap();
    let rules = std::fs::read_to_string(dir.path().join("alerts.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no promtool test for {name}"
        );
    }
}

#[test]
fn the_bundle_is_deterministic_and_links_every_alert_to_its_runbook() {
    let a = Bundle::default().files();
    assert_eq!(a, Bundle::default().files());
    let rules = Bundle::default().alert_rules();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            a.iter().any(|f| f.path == format!("runbooks/{name}.md")),
            "no runbook for {name}"
        );
        assert!(
            rules.contains(&format!("/{name}.md\"")),
            "{name} has no runbook_url"
        );
    }
    let dashboard = a
        .iter()
        .find(|f| f.path == "grafana/flotilla-dashboard.json")
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard.contents).unwrap();
    assert_eq!(json["panels"].as_array().unwrap().len(), 12);
}
