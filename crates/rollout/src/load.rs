//! Reading a rollout: the YAML, its templates (ours, Argo's AnalysisTemplates, seed-style
//! rollback policies), and checks that point at `file:line:col`.

use flotilla_spec::slo::Cmp;
use std::collections::BTreeMap;
use std::path::Path;

use flotilla_spec::yaml::{self, SpanIndex};
use flotilla_spec::{Diagnostic, Dur, Origin};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::analysis::check_condition;
use crate::spec::{
    Act, AnalysisRef, AnalysisTemplate, ArgDecl, Metric, OnUnavailable, Prometheus, Provider,
    RolloutSpec, Step, Strategy, TemplateSource, relative_to,
};

/// A rollout ready to run.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// As written.
    pub spec: RolloutSpec,
    /// Every template by name (files, inline and the compiled policies).
    pub templates: BTreeMap<String, AnalysisTemplate>,
    /// What the rollback policies add, when there are any.
    pub policies: Option<Policies>,
}

/// Seed 000's `rollback_conditions` and `rollback_actions`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    /// The template of `rollback_triggers` (run in the background).
    pub template: String,
    /// `min_observation_time`: no promotion before the rollout has run this long.
    pub min_observation: Dur,
    /// `max_rollback_time`: a rollback that takes longer is reported.
    pub max_rollback_time: Option<Dur>,
    /// `automatic_rollback.delay`: a failed trigger pauses this long, then rolls back.
    pub rollback_delay: Option<Dur>,
    /// `notify_oncall.channels`: the notification kinds told of a rollback.
    pub notify_channels: Vec<String>,
    /// `incident_creation.severity`: the PagerDuty severity of the rollback incident.
    pub incident_severity: Option<String>,
}

/// The name the compiled policies' template has.
pub const POLICIES_TEMPLATE: &str = "rollback-policies";

struct Reader<'a> {
    file: String,
    index: SpanIndex,
    diags: &'a mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn at(&mut self, path: &str, message: impl Into<String>) {
        let d = self.index.diagnostic(&self.file, path, message.into());
        self.diags.push(d);
    }

    fn de<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match inner.as_str() {
                    "." => path.to_owned(),
                    p if path.is_empty() => p.to_owned(),
                    p if p.starts_with('[') => format!("{path}{p}"),
                    p => format!("{path}.{p}"),
                };
                let message = e.into_inner().to_string();
                self.at(&full, message);
                None
            }
        }
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            origin: None,
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })
}

/// YAML documents of a file, each padded with blank lines so that positions stay true.
fn documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(std::mem::take(&mut current));
            // Keep the line count: this line becomes blank in the next document.
            let lines = docs.iter().map(|d| d.lines().count()).sum::<usize>() + docs.len();
            current = "\n".repeat(lines);
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push(current);
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// Reads the rollout in `file`: its `rollout:` section, or the whole file.
pub fn load(file: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let text = read(file)?;
    let name = file.display().to_string();
    let (value, index) = yaml::parse(&name, &text, &env_lookup)?;
    let mut diags = Vec::new();
    let (value, prefix) = match value {
        Value::Object(mut map) if map.contains_key("rollout") => {
            (map.remove("rollout").unwrap_or(Value::Null), "rollout")
        }
        other => (other, ""),
    };
    let mut r = Reader {
        file: name,
        index,
        diags: &mut diags,
    };
    let Some(spec) = r.de::<RolloutSpec>(&value, prefix) else {
        return Err(diags);
    };
    let mut templates = BTreeMap::new();
    for (i, source) in spec.analysis_templates.iter().enumerate() {
        let path = format!("{}analysis_templates[{i}]", dot(prefix));
        match source {
            TemplateSource::Inline(t) => add(&mut r, &mut templates, t.clone(), &path),
            TemplateSource::File { file: f } => {
                let f = relative_to(file, f);
                match template_file(&f) {
                    Ok(found) => {
                        for t in found {
                            add(&mut r, &mut templates, t, &path);
                        }
                    }
                    Err(d) => r.diags.extend(d),
                }
            }
        }
    }
    let policies = match &spec.policies {
        None => None,
        Some(p) => match policies_file(&relative_to(file, &p.file), &p.address, p.interval) {
            Ok((template, policies)) => {
                templates.insert(template.name.clone(), template);
                Some(policies)
            }
            Err(d) => {
                r.diags.extend(d);
                None
            }
        },
    };
    check(&mut r, &spec, &templates, prefix);
    if diags.is_empty() {
        Ok(Loaded {
            spec,
            templates,
            policies,
        })
    } else {
        Err(diags)
    }
}

fn dot(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    }
}

fn add(
    r: &mut Reader<'_>,
    templates: &mut BTreeMap<String, AnalysisTemplate>,
    t: AnalysisTemplate,
    path: &str,
) {
    if templates.contains_key(&t.name) {
        r.at(path, format!("template `{}` is defined twice", t.name));
    }
    templates.insert(t.name.clone(), t);
}

/// Templates in a file: Argo `AnalysisTemplate` / `ClusterAnalysisTemplate` documents, or
/// ours (`name` and `metrics`); other documents are skipped.
pub fn template_file(path: &Path) -> Result<Vec<AnalysisTemplate>, Vec<Diagnostic>> {
    let text = read(path)?;
    let name = path.display().to_string();
    let mut found = Vec::new();
    let mut diags = Vec::new();
    for doc in documents(&text) {
        let (value, index) = match yaml::parse(&name, &doc, &env_lookup) {
            Ok(parsed) => parsed,
            Err(d) => {
                diags.extend(d);
                continue;
            }
        };
        let mut r = Reader {
            file: name.clone(),
            index,
            diags: &mut diags,
        };
        let kind = value.get("kind").and_then(Value::as_str);
        match kind {
            Some("AnalysisTemplate" | "ClusterAnalysisTemplate") => {
                let Some(tname) = value.pointer("/metadata/name").and_then(Value::as_str) else {
                    r.at("metadata", "an AnalysisTemplate needs metadata.name");
                    continue;
                };
                let spec = value.get("spec").cloned().unwrap_or(Value::Null);
                let args: Option<Vec<ArgDecl>> = match spec.get("args") {
                    Some(a) => r.de(a, "spec.args"),
                    None => Some(Vec::new()),
                };
                let metrics: Option<Vec<Metric>> = match spec.get("metrics") {
                    Some(m) => r.de(m, "spec.metrics"),
                    None => {
                        r.at("spec", "an AnalysisTemplate needs spec.metrics");
                        None
                    }
                };
                if let (Some(args), Some(metrics)) = (args, metrics) {
                    found.push(AnalysisTemplate {
                        name: tname.to_owned(),
                        args,
                        metrics,
                    });
                }
            }
            Some(_) => {}
            None => {
                if let Some(t) = r.de::<AnalysisTemplate>(&value, "") {
                    found.push(t);
                }
            }
        }
    }
    if diags.is_empty() {
        Ok(found)
    } else {
        Err(diags)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rollback_triggers: BTreeMap<String, f64>,
    #[serde(default)]
    rollback_conditions: Conditions,
    #[serde(default)]
    rollback_actions: Vec<Action>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Conditions {
    #[serde(default)]
    min_observation_time: Option<Dur>,
    #[serde(default)]
    max_rollback_time: Option<Dur>,
    #[serde(default)]
    confirmation_samples: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Action {
    PauseRollout {
        #[serde(default)]
        #[allow(dead_code)]
        immediate: bool,
    },
    NotifyOncall {
        #[serde(default)]
        channels: Vec<String>,
    },
    AutomaticRollback {
        #[serde(default)]
        delay: Option<Dur>,
        #[serde(default)]
        confirmation_required: bool,
    },
    IncidentCreation {
        #[serde(default)]
        severity: Option<String>,
        #[serde(default)]
        #[allow(dead_code)]
        auto_assign: bool,
    },
}

/// The queries of seed 000's triggers, against flotilla's metric names (DESIGN §6), on the
/// canary's instances.
fn trigger_query(name: &str) -> Option<&'static str> {
    Some(match name {
        "error_rate_threshold" => {
            r#"sum(rate(http_requests_total{instance=~"{{ canary_instances }}",code=~"5.."}[1m])) / sum(rate(http_requests_total{instance=~"{{ canary_instances }}"}[1m]))"#
        }
        "response_time_p95_ms" => {
            r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{instance=~"{{ canary_instances }}"}[1m]))) * 1000"#
        }
        "workflow_failure_rate" => {
            r#"sum(rate(workflow_runs_total{instance=~"{{ canary_instances }}",status="failed"}[5m])) / sum(rate(workflow_runs_total{instance=~"{{ canary_instances }}"}[5m]))"#
        }
        "pod_restart_rate" => {
            r#"changes(process_start_time_seconds{instance=~"{{ canary_instances }}"}[10m])"#
        }
        _ => return None,
    })
}

/// Compiles a policies file (the bare `policies.yaml`, or the seed's ConfigMap holding it)
/// into a background template and the rollout-level rules.
pub fn policies_file(
    path: &Path,
    address: &str,
    interval: Dur,
) -> Result<(AnalysisTemplate, Policies), Vec<Diagnostic>> {
    let text = read(path)?;
    let name = path.display().to_string();
    let (mut value, mut index) = yaml::parse(&name, &text, &env_lookup)?;
    let mut diags = Vec::new();
    // The seed ships it inside a ConfigMap: data."policies.yaml" is the text.
    if value.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
        let Some(inner) = value.pointer("/data/policies.yaml").and_then(Value::as_str) else {
            return Err(vec![Diagnostic {
                origin: index.find("data").cloned(),
                message: "the ConfigMap has no data.\"policies.yaml\"".into(),
            }]);
        };
        // Positions inside the block scalar are relative to it; the block starts a line
        // below its key.
        let offset = match index.find("data") {
            Some(Origin::File { line, .. }) => *line,
            _ => 0,
        };
        let padded = format!("{}{inner}", "\n".repeat(offset + 1));
        (value, index) = yaml::parse(&name, &padded, &env_lookup)?;
    }
    let mut r = Reader {
        file: name,
        index,
        diags: &mut diags,
    };
    let Some(file) = r.de::<PolicyFile>(&value, "") else {
        return Err(diags);
    };
    let samples = file.rollback_conditions.confirmation_samples.unwrap_or(1);
    if samples == 0 {
        r.at(
            "rollback_conditions.confirmation_samples",
            "must be at least 1",
        );
    }
    let mut policies = Policies {
        template: POLICIES_TEMPLATE.into(),
        min_observation: file
            .rollback_conditions
            .min_observation_time
            .unwrap_or(Dur::secs(0)),
        max_rollback_time: file.rollback_conditions.max_rollback_time,
        rollback_delay: None,
        notify_channels: Vec::new(),
        incident_severity: None,
    };
    let mut act = Act::Advisory;
    for a in &file.rollback_actions {
        match a {
            Action::PauseRollout { .. } => {
                if act == Act::Advisory {
                    act = Act::Pause;
                }
            }
            Action::NotifyOncall { channels } => policies.notify_channels.clone_from(channels),
            Action::AutomaticRollback {
                delay,
                confirmation_required,
            } => {
                // A rollback that needs confirmation is a pause for a human.
                if !confirmation_required {
                    act = Act::Abort;
                    policies.rollback_delay = delay.filter(|d| !d.0.is_zero());
                } else {
                    act = Act::Pause;
                }
            }
            Action::IncidentCreation { severity, .. } => {
                policies.incident_severity.clone_from(severity)
            }
        }
    }
    let mut metrics = Vec::new();
    for (trigger, threshold) in &file.rollback_triggers {
        let Some(query) = trigger_query(trigger) else {
            r.at(
                &format!("rollback_triggers.{trigger}"),
                "unknown trigger; known: error_rate_threshold, response_time_p95_ms, workflow_failure_rate, pod_restart_rate",
            );
            continue;
        };
        // Without traffic, or with no workflows run, there is nothing to judge: such an
        // outage of data never holds the rollout.
        let on_unavailable =
            if trigger == "error_rate_threshold" || trigger == "response_time_p95_ms" {
                OnUnavailable::Pause
            } else {
                OnUnavailable::Ignore
            };
        let threshold = if trigger == "pod_restart_rate" {
            // A rate of restarts per instance over the window: any restart past it.
            threshold.ceil()
        } else {
            *threshold
        };
        metrics.push(Metric {
            name: trigger.replace('_', "-"),
            interval: Some(interval),
            count: None,
            initial_delay: None,
            success_condition: None,
            // Each trigger is an objective the canary must meet (value <= threshold);
            // the comparison that breaks it fails the measurement.
            failure_condition: Some(format!(
                "result[0] {} {threshold}",
                Cmp::Le.negated().as_str()
            )),
            failure_limit: samples.saturating_sub(1),
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            on_unavailable,
            act,
            provider: Provider {
                prometheus: Prometheus {
                    address: address.to_owned(),
                    query: query.to_owned(),
                    timeout: None,
                    headers: Vec::new(),
                },
            },
        });
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok((
        AnalysisTemplate {
            name: POLICIES_TEMPLATE.into(),
            args: Vec::new(),
            metrics,
        },
        policies,
    ))
}

fn check(
    r: &mut Reader<'_>,
    spec: &RolloutSpec,
    templates: &BTreeMap<String, AnalysisTemplate>,
    prefix: &str,
) {
    let p = dot(prefix);
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.at(
            &format!("{p}name"),
            "a rollout name is letters, digits, `-` and `_`",
        );
    }
    for (which, v) in [("stable", &spec.stable), ("canary", &spec.canary)] {
        // A rolling update replaces the stable instances in place: it has no others.
        let needed = which == "stable" || spec.strategy != Strategy::Rolling;
        if needed && v.upstreams.is_empty() {
            r.at(
                &format!("{p}{which}.upstreams"),
                "needs at least one `host:port`",
            );
        }
        for (i, u) in v.upstreams.iter().enumerate() {
            if u.contains(char::is_whitespace) || u.contains(';') || u.contains('{') {
                r.at(
                    &format!("{p}{which}.upstreams[{i}]"),
                    format!("`{u}` is not a `host:port`"),
                );
            }
        }
    }
    let n = &spec.traffic.nginx;
    if n.upstream.is_empty()
        || !n
            .upstream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.at(
            &format!("{p}traffic.nginx.upstream"),
            "an upstream name is letters, digits, `-` and `_`",
        );
    }
    let mut refs: Vec<(String, &AnalysisRef)> = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        match step {
            Step::SetWeight(w) if *w > 100 => r.at(
                &format!("{p}steps[{i}].set_weight"),
                format!("a weight is 0..=100, not {w}"),
            ),
            Step::Analysis(a) => refs.push((format!("{p}steps[{i}].analysis"), a)),
            _ => {}
        }
    }
    if let Some(b) = &spec.background_analysis {
        refs.push((format!("{p}background_analysis"), b));
    }
    for (path, a) in refs {
        for (i, t) in a.templates.iter().enumerate() {
            match templates.get(t) {
                None => r.at(
                    &format!("{path}.templates[{i}]"),
                    format!(
                        "unknown template `{t}`; defined: {}",
                        templates.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(tpl) => {
                    for decl in &tpl.args {
                        if decl.value.is_none() && !a.args.contains_key(&decl.name) {
                            r.at(
                                &format!("{path}.args"),
                                format!("template `{t}` needs the argument `{}`", decl.name),
                            );
                        }
                    }
                }
            }
        }
    }
    for t in templates.values() {
        for m in &t.metrics {
            for c in [&m.success_condition, &m.failure_condition]
                .into_iter()
                .flatten()
            {
                if let Err(e) = check_condition(c) {
                    r.at(
                        &format!("{p}analysis_templates"),
                        format!(
                            "template `{}` metric `{}`: condition `{c}`: {e}",
                            t.name, m.name
                        ),
                    );
                }
            }
            if let Err(e) = url::Url::parse(&m.provider.prometheus.address) {
                r.at(
                    &format!("{p}analysis_templates"),
                    format!("template `{}` metric `{}`: address: {e}", t.name, m.name),
                );
            }
        }
    }
    match spec.strategy {
        Strategy::Rolling if spec.rolling.is_none() => r.at(
            &format!("{p}strategy"),
            "a rolling update needs a `rolling:` section (`replace:` at least)",
        ),
        _ => {}
    }
}
