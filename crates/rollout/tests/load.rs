//! Rollout files, the seed's AnalysisTemplates and rollback policies load as they are
//! written; mistakes are reported at file:line:col.

use std::path::Path;

use flotilla_rollout::load::{POLICIES_TEMPLATE, load, policies_file, template_file};
use flotilla_rollout::spec::{Act, OnUnavailable};
use flotilla_spec::Dur;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn the_seed_analysis_templates_load() {
    let templates = template_file(&fixture("seed-analysis-templates.yaml")).unwrap();
    let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["success-rate-analysis", "comprehensive-analysis"]);
    let rate = &templates[0];
    assert_eq!(rate.args.len(), 2);
    let m = &rate.metrics[0];
    assert_eq!(m.name, "success-rate");
    assert_eq!(m.interval, Some(Dur::secs(60)));
    assert_eq!(m.count, Some(5));
    assert_eq!(m.failure_limit, 3);
    assert_eq!(m.success_condition.as_deref(), Some("result[0] >= 0.95"));
    assert!(
        m.provider
            .prometheus
            .query
            .contains("{{args.service-name}}")
    );
}

#[test]
fn the_seed_rollback_policies_compile_to_metrics_and_actions() {
    let (template, policies) = policies_file(
        &fixture("seed-rollback-policies.yaml"),
        "http://127.0.0.1:9090",
        Dur::secs(10),
    )
    .unwrap();
    assert_eq!(template.name, POLICIES_TEMPLATE);
    let names: Vec<&str> = template.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "error-rate-threshold",
            "pod-restart-rate",
            "response-time-p95-ms",
            "workflow-failure-rate"
        ]
    );
    let error_rate = &template.metrics[0];
    assert_eq!(
        error_rate.failure_condition.as_deref(),
        Some("result[0] > 0.05")
    );
    // confirmation_samples: 3 → the third failing sample fails the metric (2 > 2 is not).
    assert_eq!(error_rate.failure_limit, 2);
    assert_eq!(error_rate.act, Act::Abort);
    assert_eq!(error_rate.on_unavailable, OnUnavailable::Pause);
    assert!(
        error_rate
            .provider
            .prometheus
            .query
            .contains("http_requests_total")
    );
    let p95 = &template.metrics[2];
    assert_eq!(p95.failure_condition.as_deref(), Some("result[0] > 5000"));
    assert_eq!(policies.min_observation, Dur::secs(600));
    assert_eq!(policies.max_rollback_time, Some(Dur::secs(1800)));
    assert_eq!(policies.rollback_delay, Some(Dur::secs(300)));
    assert_eq!(policies.notify_channels, ["slack", "pagerduty"]);
    assert_eq!(policies.incident_severity.as_deref(), Some("high"));
}

#[test]
fn mistakes_point_at_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollout.yaml");
    std::fs::write(
        &path,
        r#"rollout:
  name: api
  strategy: canary
  stable: { version: "1", upstreams: ["127.0.0.1:8081"] }
  canary: { version: "2", upstreams: ["127.0.0.1:8082"] }
  traffic: { nginx: { upstream_file: up.conf, upstream: api } }
  steps:
    - set_weight: 20
    - analysis: { templates: [missing] }
    - set_weight: 120
"#,
    )
    .unwrap();
    let diags = load(&path).unwrap_err();
    let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    assert!(
        all.contains("rollout.yaml:9:") && all.contains("unknown template `missing`"),
        "{all}"
    );
    assert!(
        all.contains("rollout.yaml:10:") && all.contains("0..=100"),
        "{all}"
    );
    // An unknown field, and a strategy that does not exist.
    std::fs::write(
        &path,
        "name: api\nstrategy: sideways\nstable: { version: \"1\", upstreams: [a] }\ncanary: { version: \"2\", upstreams: [b] }\ntraffic: { nginx: { upstream_file: u, upstream: api } }\n",
    )
    .unwrap();
    let all = load(&path)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("rollout.yaml:2:") && all.contains("sideways"),
        "{all}"
    );
}
