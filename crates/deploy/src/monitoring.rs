//! The monitoring bundle: Prometheus scrape config, alert rules with runbook links, a
//! Grafana dashboard, and the runbooks themselves.
//!
//! The rules use the metric names of the catalogue (DESIGN §6) and are unit-tested with
//! `promtool test rules` (`tests/alerts_test.yml`). The Kubernetes `PrometheusRule` of the
//! deployment artifacts embeds the same [`Bundle::alert_rules`].

use serde_json::{Value, json};

use crate::File;

/// The alert rules, with `__RUNBOOK_BASE__` and `__LLM_USD_PER_HOUR__` to fill in.
const ALERTS: &str = include_str!("monitoring/alerts.yml");

/// One runbook per alert, as `docs/runbooks/` holds them.
pub const RUNBOOKS: [(&str, &str); 11] = [
    (
        "README.md",
        include_str!("../../../docs/runbooks/README.md"),
    ),
    (
        "FlotillaDown.md",
        include_str!("../../../docs/runbooks/FlotillaDown.md"),
    ),
    (
        "HighErrorRate.md",
        include_str!("../../../docs/runbooks/HighErrorRate.md"),
    ),
    (
        "HighResponseTime.md",
        include_str!("../../../docs/runbooks/HighResponseTime.md"),
    ),
    (
        "AgentDown.md",
        include_str!("../../../docs/runbooks/AgentDown.md"),
    ),
    (
        "HighQueueLength.md",
        include_str!("../../../docs/runbooks/HighQueueLength.md"),
    ),
    (
        "CircuitBreakerOpen.md",
        include_str!("../../../docs/runbooks/CircuitBreakerOpen.md"),
    ),
    (
        "WorkflowFailureRateHigh.md",
        include_str!("../../../docs/runbooks/WorkflowFailureRateHigh.md"),
    ),
    (
        "WorkflowSLABreached.md",
        include_str!("../../../docs/runbooks/WorkflowSLABreached.md"),
    ),
    (
        "LLMSpendRateHigh.md",
        include_str!("../../../docs/runbooks/LLMSpendRateHigh.md"),
    ),
    (
        "BackupStale.md",
        include_str!("../../../docs/runbooks/BackupStale.md"),
    ),
];

/// The `BackupStale` rule, added to the group when backups are scheduled: no success for
/// `__BACKUP_STALE_SECONDS__`, or none at all that long after the servers started.
const BACKUP_ALERT: &str = r#"
      - alert: BackupStale
        expr: |
          (time() - max(backup_last_success_timestamp_seconds > 0) > __BACKUP_STALE_SECONDS__)
          or
          (max(backup_last_success_timestamp_seconds) == 0
            and on() (time() - min(process_start_time_seconds and on(instance) flotilla_build_info) > __BACKUP_STALE_SECONDS__))
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "No backup has succeeded for __BACKUP_STALE__"
          description: "The latest successful scheduled backup is older than one and a half times the schedule's longest gap; backup_failures_total says whether they fail or do not run."
          runbook_url: "__RUNBOOK_BASE__/BackupStale.md"
"#;

/// What to generate for.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// `host:port` of each flotilla instance to scrape.
    pub targets: Vec<String>,
    /// Prometheus scrape and rule evaluation interval (`15s`).
    pub scrape_interval: String,
    /// Where the runbooks live; each alert links to `<base>/<Alert>.md`.
    pub runbook_base: String,
    /// `LLMSpendRateHigh` fires above this many USD per hour.
    pub llm_usd_per_hour: f64,
    /// With scheduled backups, `BackupStale` fires when none succeeded for this long (one
    /// and a half times the schedule's longest gap).
    pub backup_stale_after: Option<std::time::Duration>,
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle {
            targets: vec!["localhost:8080".into()],
            scrape_interval: "15s".into(),
            // The runbooks the bundle writes beside its alerts.
            runbook_base: "runbooks".into(),
            llm_usd_per_hour: 10.0,
            backup_stale_after: None,
        }
    }
}

impl Bundle {
    /// Every file of the bundle.
    pub fn files(&self) -> Vec<File> {
        let mut files = vec![
            File::new("prometheus.yml", self.prometheus_config()),
            File::new("alerts.yml", self.alert_rules()),
            File::new(
                "grafana/flotilla-dashboard.json",
                serde_json::to_string_pretty(&dashboard()).unwrap_or_default() + "\n",
            ),
        ];
        files.extend(
            RUNBOOKS
                .iter()
                .map(|(name, text)| File::new(format!("runbooks/{name}"), *text)),
        );
        files
    }

    /// The alert rules file (`groups:` of Prometheus rules).
    pub fn alert_rules(&self) -> String {
        let mut rules = ALERTS.to_owned();
        if let Some(stale) = self.backup_stale_after {
            rules.push_str(
                &BACKUP_ALERT
                    .replace("__BACKUP_STALE_SECONDS__", &stale.as_secs().to_string())
                    .replace(
                        "__BACKUP_STALE__",
                        &humantime::format_duration(stale).to_string(),
                    ),
            );
        }
        rules
            .replace("__RUNBOOK_BASE__", self.runbook_base.trim_end_matches('/'))
            .replace("__LLM_USD_PER_HOUR__", &self.llm_usd_per_hour.to_string())
    }

    /// `backup_stale_after` for a configuration: one and a half times its backup schedule's
    /// longest gap, when backups are scheduled.
    pub fn stale_after(config: &flotilla_spec::Config) -> Option<std::time::Duration> {
        let text = config
            .backup
            .schedule
            .as_deref()
            .filter(|_| config.backup.enabled)?;
        let schedule = flotilla_spec::schedule::Schedule::parse(text).ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Some(schedule.period(now).mul_f64(1.5))
    }

    /// `prometheus.yml`: scrapes every target as job `flotilla` and loads `alerts.yml`.
    pub fn prometheus_config(&self) -> String {
        let targets = self
            .targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "# Generated by `flotilla monitoring generate`.\n\
             global:\n  scrape_interval: {i}\n  evaluation_interval: {i}\n\
             rule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: flotilla\n    metrics_path: /metrics\n\
             \x20   # With auth.protect_metrics, add: authorization: {{ credentials_file: /path/to/key }}\n\
             \x20   static_configs:\n      - targets: [{targets}]\n",
            i = self.scrape_interval,
        )
    }
}

/// One dashboard panel drawing `queries` (PromQL, legend) at grid position `(x, y)`.
fn panel(id: u32, title: &str, unit: &str, (x, y): (u32, u32), queries: &[(&str, &str)]) -> Value {
    let targets: Vec<Value> = queries
        .iter()
        .zip('A'..)
        .map(|((expr, legend), ref_id)| {
            json!({
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
                "refId": ref_id.to_string(),
            })
        })
        .collect();
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": targets,
    })
}

/// The Grafana dashboard: traffic, latency, agents, circuits, workflows, LLM spend, the
/// store's size and the age of the latest backup.
pub fn dashboard() -> Value {
    let panels = vec![
        panel(
            1,
            "Request rate by status",
            "reqps",
            (0, 0),
            &[("sum by (code) (rate(http_requests_total[5m]))", "{{code}}")],
        ),
        panel(
            2,
            "Request latency",
            "s",
            (12, 0),
            &[
                (
                    "histogram_quantile(0.50, sum by (le) (rate(http_request_duration_seconds_bucket{route!~\".*[?]wait\"}[5m])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{route!~\".*[?]wait\"}[5m])))",
                    "p95",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{route!~\".*[?]wait\"}[5m])))",
                    "p99",
                ),
            ],
        ),
        panel(
            3,
            "Agent health (1 healthy)",
            "none",
            (0, 8),
            &[("agent_health_status", "{{agent_id}}")],
        ),
        panel(
            4,
            "Agent task success rate",
            "percentunit",
            (12, 8),
            &[(
                "sum by (agent) (rate(agent_tasks_total{status=\"success\"}[5m])) / sum by (agent) (rate(agent_tasks_total[5m]))",
                "{{agent}}",
            )],
        ),
        panel(
            5,
            "Queue length and calls in flight",
            "none",
            (0, 16),
            &[
                ("sum(agent_queue_length)", "waiting"),
                (
                    "sum by (agent) (agent_tasks_in_progress)",
                    "{{agent}} in flight",
                ),
            ],
        ),
        panel(
            6,
            "Circuit state (0 closed, 1 half-open, 2 open)",
            "none",
            (12, 16),
            &[("circuit_breaker_state", "{{agent}}")],
        ),
        panel(
            7,
            "Workflow outcomes",
            "ops",
            (0, 24),
            &[(
                "sum by (workflow, status) (rate(workflow_runs_total[5m]))",
                "{{workflow}} {{status}}",
            )],
        ),
        panel(
            8,
            "Workflow success rate and p95 duration",
            "percentunit",
            (12, 24),
            &[
                (
                    "sum(rate(workflow_runs_total{status=\"succeeded\"}[5m])) / sum(rate(workflow_runs_total[5m]))",
                    "success rate",
                ),
                (
                    "histogram_quantile(0.95, sum by (le) (rate(workflow_run_duration_seconds_bucket[5m])))",
                    "p95 duration (s)",
                ),
            ],
        ),
        panel(
            9,
            "LLM tokens",
            "short",
            (0, 32),
            &[(
                "sum by (model, kind) (rate(llm_tokens_total[5m]))",
                "{{model}} {{kind}}",
            )],
        ),
        panel(
            10,
            "LLM spend (USD per hour)",
            "currencyUSD",
            (12, 32),
            &[(
                "sum by (agent, model) (rate(llm_cost_usd_total[15m])) * 3600",
                "{{agent}} {{model}}",
            )],
        ),
        panel(
            11,
            "Store size",
            "bytes",
            (0, 40),
            &[("max(store_size_bytes)", "on disk")],
        ),
        panel(
            12,
            "Age of the latest backup",
            "s",
            (12, 40),
            &[(
                "time() - max(backup_last_success_timestamp_seconds > 0)",
                "since the latest successful backup",
            )],
        ),
    ];
    json!({
        "title": "flotilla",
        "uid": "flotilla-overview",
        "tags": ["flotilla"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
        }]},
        "panels": panels,
    })
}
