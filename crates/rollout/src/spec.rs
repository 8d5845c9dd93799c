//! The rollout description: what to roll out, how traffic moves, and how it is judged.
//!
//! It is read from a `rollout:` section of a YAML file (flotilla.yaml or a file of its own)
//! with every problem reported at `file:line:col`. Analysis templates are ours or Argo
//! Rollouts' `AnalysisTemplate` documents (as `flotilla deploy generate` writes them): the
//! metric fields take Argo's camelCase names as well as snake_case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_spec::Dur;
use serde::{Deserialize, Serialize};

/// One rollout.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Its name: `flotilla rollout status NAME` and the store key.
    pub name: String,
    /// How the new version replaces the old one.
    pub strategy: Strategy,
    /// The version serving now.
    pub stable: Version,
    /// The new version (the canary, the preview colour, or the version instances are
    /// replaced with).
    pub canary: Version,
    /// How traffic is shifted.
    pub traffic: Traffic,
    /// Canary steps, in order; blue-green runs its `analysis` steps before the switch.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Analysis that runs for the whole rollout, next to the steps.
    #[serde(default)]
    pub background_analysis: Option<AnalysisRef>,
    /// Templates the steps name: files (ours or Argo's) or inline.
    #[serde(default)]
    pub analysis_templates: Vec<TemplateSource>,
    /// Seed-style rollback policies (`rollback_triggers`, `rollback_conditions`,
    /// `rollback_actions`), compiled into a background analysis.
    #[serde(default)]
    pub policies: Option<PoliciesRef>,
    /// Where decisions are announced.
    #[serde(default)]
    pub notifications: Vec<Notification>,
    /// Blue-green settings.
    #[serde(default)]
    pub blue_green: BlueGreen,
    /// Rolling-update settings.
    #[serde(default)]
    pub rolling: Option<Rolling>,
    /// How long a metrics outage may hold the rollout before each metric's `on_unavailable`
    /// action is taken.
    #[serde(default = "ten_minutes")]
    pub unavailable_timeout: Dur,
    /// Where the rollout's state lives; by default the config's `storage.url`.
    #[serde(default)]
    pub store: Option<String>,
}

fn ten_minutes() -> Dur {
    Dur::secs(600)
}

/// canary | blue_green | rolling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Weighted traffic to the new version, step by step.
    Canary,
    /// The new colour beside the old one, switched at once.
    BlueGreen,
    /// Instances replaced a few at a time.
    Rolling,
}

/// A version and the addresses that serve it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Shown in status and notifications; `canary_version` in queries.
    pub version: String,
    /// `host:port` of each instance (none for a rolling update's new version, which
    /// replaces the stable instances in place).
    #[serde(default)]
    pub upstreams: Vec<String>,
}

/// How traffic moves.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// An nginx upstream block that flotilla owns.
    pub nginx: Nginx,
}

/// The nginx upstream flotilla rewrites.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Nginx {
    /// The file holding the upstream block (included by nginx's configuration).
    pub upstream_file: PathBuf,
    /// The upstream's name.
    pub upstream: String,
    /// The nginx binary.
    #[serde(default = "nginx_binary")]
    pub binary: String,
    /// Arguments given to both `nginx -t` and `nginx -s reload` (`-p`, `-c`).
    #[serde(default)]
    pub args: Vec<String>,
    /// nginx's pid file (`/run/nginx.pid` by default): after a reload the controller waits
    /// until the workers of the old configuration have left, so a step's traffic split is in
    /// force when the step is recorded.
    #[serde(default = "pid_file")]
    pub pid_file: PathBuf,
}

fn pid_file() -> PathBuf {
    PathBuf::from("/run/nginx.pid")
}

fn nginx_binary() -> String {
    "nginx".into()
}

/// One step of a canary.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Percent of requests to the new version.
    SetWeight(u8),
    /// Wait a while (`30s`) or, with `{}`, until `flotilla rollout promote`.
    Pause(Pause),
    /// Run analysis to its end before the next step.
    Analysis(AnalysisRef),
}

/// `pause: 30s` or `pause: {}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Pause {
    /// A fixed wait.
    For(Dur),
    /// Until promoted.
    UntilPromoted(Empty),
}

/// `{}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Templates to run and their arguments.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRef {
    /// Template names.
    pub templates: Vec<String>,
    /// Values of the templates' `args` (`{{args.NAME}}` in queries).
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Background analysis only: the step it starts at (Argo's `startingStep`). By default
    /// it starts once the new version has traffic (a canary's first weight above 0, a
    /// blue-green switch, a rolling update's start): before that there is nothing to judge.
    #[serde(default)]
    pub starting_step: Option<usize>,
}

/// A template from a file, or inline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TemplateSource {
    /// A YAML file of one or more templates (ours or Argo `AnalysisTemplate` documents).
    File {
        /// Its path, relative to the rollout file.
        file: PathBuf,
    },
    /// Written here.
    Inline(AnalysisTemplate),
}

/// Named metrics, judged together.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisTemplate {
    /// The name steps refer to.
    pub name: String,
    /// Declared arguments, with optional defaults.
    #[serde(default)]
    pub args: Vec<ArgDecl>,
    /// The metrics.
    pub metrics: Vec<Metric>,
}

/// An argument a template takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArgDecl {
    /// `{{args.NAME}}`.
    pub name: String,
    /// Used when the caller gives none.
    #[serde(default)]
    pub value: Option<String>,
}

/// One measured quantity and how it is judged, with Argo Rollouts' semantics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Its name in status and decisions.
    pub name: String,
    /// Time between measurements; without it one measurement is taken.
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Measurements to take; without it (and with an interval) the metric runs until the
    /// rollout ends, as background analysis does.
    #[serde(default)]
    pub count: Option<u32>,
    /// Wait before the first measurement.
    #[serde(default, alias = "initialDelay")]
    pub initial_delay: Option<Dur>,
    /// A measurement is successful when this holds (`result[0] >= 0.95`).
    #[serde(default, alias = "successCondition")]
    pub success_condition: Option<String>,
    /// A measurement has failed when this holds.
    #[serde(default, alias = "failureCondition")]
    pub failure_condition: Option<String>,
    /// The metric fails when failed measurements are **more than** this (Argo's strict `>`):
    /// 0, the default, fails on the first failure.
    #[serde(default, alias = "failureLimit")]
    pub failure_limit: u32,
    /// The metric is inconclusive when inconclusive measurements are more than this.
    #[serde(default, alias = "inconclusiveLimit")]
    pub inconclusive_limit: u32,
    /// The metric errs when consecutive errors are more than this.
    #[serde(default = "four", alias = "consecutiveErrorLimit")]
    pub consecutive_error_limit: u32,
    /// What a metrics outage longer than `unavailable_timeout` does.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// What a failed metric does.
    #[serde(default)]
    pub act: Act,
    /// Where the value comes from.
    pub provider: Provider,
}

fn four() -> u32 {
    4
}

/// What a metrics outage does once `unavailable_timeout` has passed (until then, the rollout
/// holds whatever this says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Hold for a human (`promote` goes on, `abort` rolls back).
    #[default]
    Pause,
    /// Fail the metric (the rollout is rolled back).
    Fail,
    /// Carry on without the metric: it never holds the rollout.
    Ignore,
}

/// What a failed metric does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// Recorded and announced; never changes the rollout.
    Advisory,
    /// Holds the rollout for a human.
    Pause,
    /// Rolls back.
    #[default]
    Abort,
}

/// A metric source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Prometheus' instant query API.
    pub prometheus: Prometheus,
}

/// A Prometheus query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    /// `http://host:9090`.
    pub address: String,
    /// PromQL; a template over `args`, `canary_instances`, `stable_instances`,
    /// `canary_version` and `stable_version`.
    pub query: String,
    /// Longest wait for an answer (10 s by default); Argo's whole seconds work too.
    #[serde(default)]
    pub timeout: Option<Timeout>,
    /// Request headers (`Authorization`), as Argo lists them.
    #[serde(default)]
    pub headers: Vec<Header>,
}

/// `10s` or Argo's `10` (seconds).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Timeout {
    /// Whole seconds.
    Seconds(u64),
    /// A duration.
    Duration(Dur),
}

impl Timeout {
    /// As a duration.
    pub fn get(self) -> std::time::Duration {
        match self {
            Timeout::Seconds(s) => std::time::Duration::from_secs(s),
            Timeout::Duration(d) => d.0,
        }
    }
}

/// A request header.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Name.
    pub key: String,
    /// Value (redacted in everything flotilla prints).
    pub value: String,
}

/// Seed-style rollback policies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesRef {
    /// The policies file (`policies.yaml`, or a ConfigMap holding it).
    pub file: PathBuf,
    /// The Prometheus the compiled metrics query.
    pub address: String,
    /// Time between measurements.
    #[serde(default = "ten_seconds")]
    pub interval: Dur,
}

fn ten_seconds() -> Dur {
    Dur::secs(10)
}

/// Blue-green settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// How long the old colour stays ready for an instant switch back after promotion.
    #[serde(default = "thirty_seconds")]
    pub scale_down_delay: Dur,
    /// Switch without waiting for `promote` once pre-promotion analysis passes.
    #[serde(default = "yes")]
    pub auto_promote: bool,
}

impl Default for BlueGreen {
    fn default() -> Self {
        BlueGreen {
            scale_down_delay: thirty_seconds(),
            auto_promote: true,
        }
    }
}

fn thirty_seconds() -> Dur {
    Dur::secs(30)
}

fn yes() -> bool {
    true
}

/// Rolling-update settings: each instance of `stable.upstreams` is drained, replaced by
/// `replace`, checked, and re-added.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Instances out of the upstream at once.
    #[serde(default = "one")]
    pub max_unavailable: u32,
    /// Shell command that replaces an instance; `{{ instance }}` and `{{ version }}` are
    /// filled in.
    pub replace: String,
    /// Shell command that restores an instance to the stable version after a failed check.
    #[serde(default)]
    pub restore: Option<String>,
    /// `http://{{ instance }}/readyz` by default: must answer 2xx.
    #[serde(default = "health_url")]
    pub health_url: String,
    /// How long an instance may take to pass its check.
    #[serde(default = "thirty_seconds")]
    pub health_timeout: Dur,
    /// Time for in-flight requests to finish after an instance leaves the upstream.
    #[serde(default = "two_seconds")]
    pub drain: Dur,
}

fn one() -> u32 {
    1
}

fn health_url() -> String {
    "http://{{ instance }}/readyz".into()
}

fn two_seconds() -> Dur {
    Dur::secs(2)
}

/// Where decisions are announced.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notification {
    /// A Slack-compatible incoming webhook.
    Slack {
        /// The webhook URL (a secret: never printed).
        url: String,
    },
    /// PagerDuty Events API v2: `trigger` on rollback, `resolve` on promotion.
    Pagerduty {
        /// The integration's routing key (a secret).
        routing_key: String,
        /// The events endpoint.
        #[serde(default = "pagerduty_url")]
        url: String,
        /// Severity of the triggered incident.
        #[serde(default = "critical")]
        severity: String,
    },
    /// Any endpoint that takes the event as JSON.
    Webhook {
        /// Where to POST.
        url: String,
    },
}

fn pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

fn critical() -> String {
    "critical".into()
}

/// Resolves a path named in a file relative to that file's directory.
pub fn relative_to(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(path)
    }
}
