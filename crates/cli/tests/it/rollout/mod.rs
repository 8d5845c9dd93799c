//! `flotilla rollout` against real nginx and a real Prometheus (Debian's, installed by
//! `scripts/test`), both started here on free loopback ports: two or three flotilla
//! backends behind nginx, Prometheus scraping them every second, bounded traffic through
//! nginx, and the controller as its own process. Only the PagerDuty receiver is a fake.

pub(crate) mod fleet;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{flotilla, free_port, try_metric};
use fleet::{Controller, Fleet, Traffic, fake_receiver, host, received, served};

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_canary_is_rolled_back_on_its_own() {
    let Some(fleet) = Fleet::start(&["stable"], &["bad"]).await else {
        return;
    };
    let (pd_url, pd, _pd_task) = fake_receiver("/v2/enqueue").await;
    fleet.rollout(
        "canary",
        &format!(
            r#"  steps:
    - set_weight: 50
    - pause: 10m
    - set_weight: 100
  background_analysis: {{ templates: [success-rate] }}
  notifications:
    - {{ kind: pagerduty, routing_key: test-key, url: "{pd_url}" }}
"#
        ),
    );
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    let started = Instant::now();
    let controller = Controller::start(&fleet);
    let (code, out, err) = controller.exit(Duration::from_secs(180)).await;
    let fault_to_stable = started.elapsed();
    assert_eq!(code, 3, "rolled back: {out}\n{err}");
    eprintln!("ROLLOUT_BENCH fault onset to traffic back on stable: {fault_to_stable:?}");
    let (_, failed, _) = traffic.stop().await;
    assert!(failed > 0, "the bad canary did fail requests");
    let status = fleet.status();
    assert_eq!(
        status["state"]["status"]["status"], "rolled_back",
        "{status:#}"
    );
    assert_eq!(status["state"]["weight"], 0);
    let decision = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "decision")
        .unwrap();
    assert_eq!(decision["body"]["decision"], "rollback", "{decision:#}");
    assert_eq!(decision["body"]["cause"], "failure_limit");
    assert_eq!(decision["body"]["reason"]["metric"], "success-rate");
    assert!(
        decision["body"]["reason"]["values"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{decision:#}"
    );
    // All traffic is on stable now: the canary answers nothing more.
    let canary_before = served(&fleet.canary[0]).await;
    let stable_before = served(&fleet.stable[0]).await;
    let client = reqwest::Client::new();
    for _ in 0..40 {
        let r = client
            .post(fleet.nginx.url("/api/v1/execute"))
            .json(&json!({"agent": "api", "input": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(served(&fleet.canary[0]).await, canary_before);
    assert_eq!(served(&fleet.stable[0]).await, stable_before + 40.0);
    // PagerDuty got a trigger naming the metric.
    let e = received(&pd, "a PagerDuty trigger", |e| {
        e["event_action"] == "trigger"
    })
    .await;
    assert_eq!(e["routing_key"], "test-key");
    let summary = e["payload"]["summary"].as_str().unwrap();
    assert!(summary.contains("success-rate"), "{e:#}");
    // The key never reaches the output.
    assert!(!out.contains("test-key") && !err.contains("test-key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_canary_is_promoted_through_every_step_without_a_failed_request() {
    let Some(fleet) = Fleet::start(&["stable"], &["stable"]).await else {
        return;
    };
    fleet.rollout(
        "canary",
        r#"  steps:
    - set_weight: 20
    - analysis: { templates: [success-rate-3] }
    - set_weight: 60
    - pause: {}
    - set_weight: 80
    - pause: 2s
"#,
    );
    let (code, _, err) = fleet.cli(&["rollout", "validate", "--config", "rollout.yaml"]);
    assert_eq!(code, 0, "{err}");
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    let metrics_port = free_port().to_string();
    let listen = format!("127.0.0.1:{metrics_port}");
    let controller = Controller::start_with(&fleet, &["--metrics-listen", &listen]);
    // It stops at the `pause: {}` step with 60 % on the canary, until promoted.
    fleet
        .wait_status("paused at 60 %", Duration::from_secs(120), |s| {
            s["state"]["status"]["status"] == "paused" && s["state"]["weight"] == 60
        })
        .await;
    // The controller's own metrics count its decisions by kind and reason.
    let exposition = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let advanced = try_metric(
        &exposition,
        "rollout_decisions_total",
        &[
            ("rollout", "api"),
            ("decision", "advance"),
            ("reason", "step"),
        ],
    );
    assert_eq!(advanced, Some(3.0), "{exposition}");
    assert!(
        exposition.contains("rollout_canary_weight{rollout=\"api\"} 60"),
        "{exposition}"
    );
    // pause and resume from another process, then promote.
    let (code, _, err) = fleet.cli(&["rollout", "promote", "api", "--config", "rollout.yaml"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = controller.exit(Duration::from_secs(120)).await;
    assert_eq!(code, 0, "promoted: {out}\n{err}");
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed: {errors:?}");
    assert!(sent > 50, "{sent}");
    let status = fleet.status();
    assert_eq!(status["state"]["status"]["status"], "promoted");
    assert_eq!(status["state"]["weight"], 100);
    let decisions: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| e["body"]["decision"].as_str().unwrap())
        .collect();
    assert!(decisions.contains(&"resume"), "{decisions:?}");
    assert_eq!(decisions.last(), Some(&"promote"), "{decisions:?}");
    // Everything goes to the canary now.
    let stable_before = served(&fleet.stable[0]).await;
    for _ in 0..20 {
        reqwest::Client::new()
            .post(fleet.nginx.url("/api/v1/execute"))
            .json(&json!({"agent": "api", "input": {}}))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(served(&fleet.stable[0]).await, stable_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_outage_holds_the_rollout_until_prometheus_answers() {
    let Some(mut fleet) = Fleet::start(&["stable"], &["stable"]).await else {
        return;
    };
    fleet.rollout(
        "canary",
        r#"  steps:
    - set_weight: 50
    - pause: 15s
    - set_weight: 100
  background_analysis: { templates: [success-rate] }
"#,
    );
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    let controller = Controller::start(&fleet);
    fleet
        .wait_status(
            "a successful background measurement",
            Duration::from_secs(90),
            |s| {
                s["state"]["background"][0]["measurements"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["phase"] == "successful"))
            },
        )
        .await;
    fleet.prometheus.stop();
    let held = fleet
        .wait_status("holding", Duration::from_secs(60), |s| {
            s["state"]["status"]["status"] == "holding"
        })
        .await;
    assert_eq!(held["state"]["weight"], 50, "{held:#}");
    let (code, text, err) = fleet.cli(&["rollout", "status", "--config", "rollout.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("unavailable since"), "{text}");
    assert!(
        text.contains("done 0: set_weight 50") && text.contains(" ->  1: pause 15s"),
        "{text}"
    );
    // Past the 15 s pause it still holds: no promotion, no rollback.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let still = fleet.status();
    assert_eq!(still["state"]["status"]["status"], "holding", "{still:#}");
    assert_eq!(still["state"]["weight"], 50);
    fleet.prometheus.restart().await;
    let (code, out, err) = controller.exit(Duration::from_secs(120)).await;
    assert_eq!(code, 0, "completed once Prometheus answered: {out}\n{err}");
    assert!(err.contains("metrics answer again"), "{err}");
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent}: {errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_controller_resumes_and_obeys_pause_resume_and_abort() {
    let Some(fleet) = Fleet::start(&["stable"], &["stable"]).await else {
        return;
    };
    let (slack_url, slack, _slack_task) = fake_receiver("/slack").await;
    fleet.rollout(
        "canary",
        &format!(
            r#"  steps:
    - set_weight: 30
    - pause: {{}}
    - set_weight: 100
  notifications: [ {{ kind: slack, url: "{slack_url}" }} ]
"#
        ),
    );
    let mut first = Controller::start(&fleet);
    // Each traffic change waits (up to 30 s) for nginx's old workers to leave: two of them
    // come before this pause, on a machine the rest of the suite keeps busy.
    fleet
        .wait_status("paused at 30 %", Duration::from_secs(180), |s| {
            s["state"]["status"]["status"] == "paused" && s["state"]["weight"] == 30
        })
        .await;
    // kill -9: nothing is given a chance to clean up.
    first.child.start_kill().unwrap();
    let _ = first.child.wait().await;
    let second = Controller::start(&fleet);
    let resumed = fleet
        .wait_status("paused by a human", Duration::from_secs(60), |s| {
            s["state"]["status"]["status"] == "paused" && s["state"]["step"] == 1
        })
        .await;
    assert_eq!(resumed["state"]["weight"], 30, "{resumed:#}");
    let (code, _, err) = fleet.cli(&["rollout", "pause", "api", "--config", "rollout.yaml"]);
    assert_eq!(code, 0, "{err}");
    fleet
        .wait_status("paused by a human", Duration::from_secs(30), |s| {
            s["state"]["status"]["by_human"] == true
        })
        .await;
    let (code, _, err) = fleet.cli(&["rollout", "resume", "api", "--config", "rollout.yaml"]);
    assert_eq!(code, 0, "{err}");
    // Resumed: back at the `pause: {}` step, which waits for promote again.
    fleet
        .wait_status("back at the pause step", Duration::from_secs(30), |s| {
            s["state"]["status"]["by_human"] == false
        })
        .await;
    let (code, _, err) = fleet.cli(&["rollout", "abort", "api", "--config", "rollout.yaml"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = second.exit(Duration::from_secs(60)).await;
    assert_eq!(code, 3, "aborted: {out}\n{err}");
    assert!(
        err.contains("resumed at step 1 with 30%") || err.contains("resume"),
        "{err}"
    );
    let status = fleet.status();
    assert_eq!(status["state"]["status"]["status"], "aborted", "{status:#}");
    // Slack heard of the start, the resumption, the pause and the abort.
    let text = |v: &Value| v["text"].as_str().unwrap_or("").to_owned();
    received(&slack, "start", |v| text(v).contains("started: 1.0.0")).await;
    received(&slack, "resumption", |v| {
        text(v).contains("resumed at step 1")
    })
    .await;
    received(&slack, "pause", |v| text(v).contains("waiting for promote")).await;
    received(&slack, "abort", |v| text(v).contains("aborted")).await;
    let upstream = std::fs::read_to_string(fleet.nginx.dir.join("upstream.conf")).unwrap();
    assert!(
        !upstream.contains(&host(&fleet.canary[0])),
        "the canary left the upstream: {upstream}"
    );
    // Commands for a rollout the store does not know are refused.
    let (code, _, err) = fleet.cli(&["rollout", "promote", "nope", "--config", "rollout.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("no rollout named `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blue_green_switches_without_a_failed_request() {
    let Some(fleet) = Fleet::start(&["stable"], &["stable"]).await else {
        return;
    };
    fleet.rollout("blue_green", "  blue_green: { scale_down_delay: 2s }\n");
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = Controller::start(&fleet)
        .exit(Duration::from_secs(60))
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent}: {errors:?}");
    let upstream = std::fs::read_to_string(fleet.nginx.dir.join("upstream.conf")).unwrap();
    assert!(upstream.contains(&host(&fleet.canary[0])), "{upstream}");
    assert!(!upstream.contains(&host(&fleet.stable[0])), "{upstream}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_replaces_three_instances_and_a_failed_check_restores_the_set() {
    let Some(fleet) = Fleet::start(&["stable", "stable", "stable"], &[]).await else {
        return;
    };
    let third = host(&fleet.stable[2]);
    fleet.rollout(
        "rolling",
        r#"  rolling:
    max_unavailable: 1
    drain: 1s
    replace: "echo {{ instance }} {{ version }} >> replaced.log"
"#,
    );
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    let (code, out, err) = Controller::start(&fleet)
        .exit(Duration::from_secs(90))
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent}: {errors:?}");
    let log = std::fs::read_to_string(fleet.dir.path().join("replaced.log")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(log.contains(&format!("{third} 2.0.0")), "{log}");
    // A new version whose third instance fails its check: stopped, the set restored.
    let path = fleet.dir.path().join("rollout.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"2.0.0\"", "\"3.0.0\"")
        .replace(
            "replace: \"echo {{ instance }} {{ version }} >> replaced.log\"",
            // The third instance is replaced, then fails its health check (a 404).
            &format!(
                "replace: \"echo {{{{ instance }}}} {{{{ version }}}} >> replaced.log\"\n    restore: \"echo {{{{ instance }}}} {{{{ version }}}} >> restored.log\"\n    health_url: \"http://{{{{ instance }}}}{{{{ '/nope' if instance == '{third}' else '/readyz' }}}}\"\n    health_timeout: 3s"
            ),
        );
    std::fs::write(&path, text).unwrap();
    let traffic = Traffic::start(fleet.nginx.url("/api/v1/execute"));
    let (code, out, err) = Controller::start(&fleet)
        .exit(Duration::from_secs(90))
        .await;
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains(&format!("instance {third} failed its check")),
        "{err}"
    );
    let (sent, failed, errors) = traffic.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent}: {errors:?}");
    // Every instance it replaced is back on the stable version: the failed one first.
    let restored = std::fs::read_to_string(fleet.dir.path().join("restored.log")).unwrap();
    let restored: Vec<&str> = restored.lines().collect();
    assert_eq!(restored.len(), 3, "{restored:?}");
    assert_eq!(restored[0], format!("{third} 1.0.0"));
    assert!(
        restored.iter().all(|l| l.ends_with(" 1.0.0")),
        "{restored:?}"
    );
    let upstream = std::fs::read_to_string(fleet.nginx.dir.join("upstream.conf")).unwrap();
    for app in &fleet.stable {
        assert!(upstream.contains(&host(app)), "{upstream}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_nginx_refuses_is_never_loaded() {
    let Some(fleet) = Fleet::start(&["stable"], &["stable"]).await else {
        return;
    };
    let path = fleet.rollout("canary", "  steps:\n    - set_weight: 50\n");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&host(&fleet.canary[0]), "127.0.0.1:99999");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = Controller::start(&fleet)
        .exit(Duration::from_secs(60))
        .await;
    assert_eq!(code, 1, "{out}\n{err}");
    let status = fleet.status();
    let error = status["state"]["status"]["error"].as_str().unwrap();
    assert!(
        error.contains("nginx -t") && error.contains("99999"),
        "{error}"
    );
    let upstream = std::fs::read_to_string(fleet.nginx.dir.join("upstream.conf")).unwrap();
    assert!(
        !upstream.contains("99999") && upstream.contains(&host(&fleet.stable[0])),
        "the refused file was put back: {upstream}"
    );
    // nginx still serves, on the stable version.
    let r = reqwest::Client::new()
        .post(fleet.nginx.url("/api/v1/execute"))
        .json(&json!({"agent": "api", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn analyze_is_a_ci_gate_and_reads_the_generated_analysis_templates() {
    let Some(fleet) = Fleet::start(&["stable"], &[]).await else {
        return;
    };
    let prom = &fleet.prometheus.url;
    let gates = fleet.dir.path().join("gates.yaml");
    std::fs::write(
        &gates,
        format!(
            r#"name: passes
metrics:
  - {{ name: one, success_condition: "result[0] >= 1", provider: {{ prometheus: {{ address: "{prom}", query: "vector(1)" }} }} }}
---
name: fails
metrics:
  - {{ name: zero, success_condition: "result[0] >= 1", provider: {{ prometheus: {{ address: "{prom}", query: "vector(0)" }} }} }}
---
name: dark
metrics:
  - {{ name: nobody, success_condition: "result[0] >= 1", provider: {{ prometheus: {{ address: "http://127.0.0.1:{dead}", query: "vector(1)" }} }} }}
"#,
            dead = free_port()
        ),
    )
    .unwrap();
    for (name, want) in [("passes", 0), ("fails", 3), ("dark", 4)] {
        let (code, out, err) = fleet.cli(&[
            "rollout",
            "analyze",
            "--template",
            "gates.yaml",
            "--name",
            name,
            "--duration",
            "3s",
        ]);
        assert_eq!(code, want, "{name}: {out}\n{err}");
    }
    // The AnalysisTemplates `deploy generate` writes load as they are (no series for them
    // here: inconclusive, exit 4).
    std::fs::write(
        fleet.dir.path().join("flotilla.yaml"),
        "storage: { url: \"postgres://flotilla@db/flotilla\" }\nagents: { echo: { kind: builtin, builtin: echo } }\n",
    )
    .unwrap();
    let (code, _, err) = fleet.cli(&[
        "deploy",
        "generate",
        "--config",
        "flotilla.yaml",
        "--target",
        "kubernetes",
        "--output",
        "deploy",
    ]);
    assert_eq!(code, 0, "{err}");
    let generated = fleet
        .dir
        .path()
        .join("deploy/kubernetes/base/analysistemplates.yaml");
    let text = std::fs::read_to_string(&generated)
        .unwrap()
        .replace("http://prometheus.monitoring.svc:9090", prom);
    std::fs::write(&generated, text).unwrap();
    let (code, out, err) = fleet.cli(&[
        "rollout",
        "analyze",
        "--template",
        generated.to_str().unwrap(),
        "--arg",
        "service-name=flotilla",
        "--arg",
        "namespace=default",
        "--arg",
        "canary-hash=abc",
        "--duration",
        "3s",
        "--output",
        "json",
    ]);
    assert_eq!(code, 4, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "inconclusive");
    assert_eq!(v["metrics"].as_array().unwrap().len(), 3, "{v:#}");
}

#[test]
fn rollout_files_are_checked_like_every_config_and_every_subcommand_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flotilla.yaml"),
        "agents: { echo: { kind: builtin, builtin: echo } }\nrollout:\n  name: api\n  strategy: canary\n  stable: { version: \"1\", upstreams: [\"127.0.0.1:1\"] }\n  canary: { version: \"2\", upstreams: [\"127.0.0.1:2\"] }\n  traffic: { nginx: { upstream_file: u.conf, upstream: api } }\n  steps: [ { set_weight: 150 } ]\n",
    )
    .unwrap();
    for args in [
        &["rollout", "validate", "--config", "flotilla.yaml"][..],
        &["validate", "--config", "flotilla.yaml"][..],
    ] {
        let (code, _, err) = flotilla(dir.path(), args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("flotilla.yaml:8:") && err.contains("150"),
            "{err}"
        );
    }
    for sub in [
        "run", "status", "promote", "abort", "pause", "resume", "analyze", "validate",
    ] {
        let (code, out, err) = flotilla(dir.path(), &["rollout", sub, "--help"], &[]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(out.len() > 200, "{sub} --help says too little: {out}");
    }
}
