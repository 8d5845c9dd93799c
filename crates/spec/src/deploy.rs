//! The `deploy:` section: what `flotilla deploy generate` builds artifacts from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::Dur;

/// `deploy:` image, size, scaling, rollout and environments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Application name: Kubernetes object names and labels.
    #[serde(default = "default_name")]
    pub name: String,
    /// The repository of the image this configuration builds and deploys (flotilla with the
    /// configuration, flags and command-agent files in it).
    #[serde(default = "default_image")]
    pub image: String,
    /// The flotilla image it is built `FROM` (flotilla's own Dockerfile builds it; default
    /// `flotilla:<this version>`).
    #[serde(default = "default_base_image")]
    pub base_image: String,
    /// Image tag (default: this flotilla's version).
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Pods (or compose replicas) when autoscaling does not decide.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Public host name (Ingress and smoke tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// CPU and memory per pod.
    #[serde(default)]
    pub resources: Resources,
    /// Horizontal autoscaling.
    #[serde(default)]
    pub autoscaling: Autoscaling,
    /// How new versions roll out.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Environment variables taken from Kubernetes Secrets (never values).
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Where ArgoCD finds the generated manifests.
    #[serde(default)]
    pub git: GitSource,
    /// What the ArgoCD Applications deploy.
    #[serde(default)]
    pub argocd: ArgocdConfig,
    /// Prometheus that rollout analysis queries.
    #[serde(default = "default_prometheus")]
    pub prometheus_url: String,
    /// Base URL of the runbooks the alerts link to (`<base>/<Alert>.md`). Default: the
    /// generated `runbooks/` in `git.repo` at `git.revision`, beside the `kubernetes/` tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook_base: Option<String>,
    /// Per-environment overrides (default: `staging` and `production`).
    #[serde(default = "default_environments")]
    pub environments: BTreeMap<String, EnvironmentOverride>,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            name: default_name(),
            image: default_image(),
            base_image: default_base_image(),
            tag: default_tag(),
            namespace: default_namespace(),
            replicas: default_replicas(),
            domain: None,
            resources: Resources::default(),
            autoscaling: Autoscaling::default(),
            rollout: RolloutConfig::default(),
            secrets: Vec::new(),
            git: GitSource::default(),
            argocd: ArgocdConfig::default(),
            prometheus_url: default_prometheus(),
            runbook_base: None,
            environments: default_environments(),
        }
    }
}

fn default_name() -> String {
    "flotilla".into()
}
fn default_image() -> String {
    "ghcr.io/example/flotilla".into()
}
fn default_base_image() -> String {
    concat!("flotilla:", env!("CARGO_PKG_VERSION")).into()
}
fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}
fn default_namespace() -> String {
    "flotilla".into()
}
fn default_replicas() -> u32 {
    3
}
fn default_prometheus() -> String {
    "http://prometheus-operated.monitoring.svc:9090".into()
}
fn default_environments() -> BTreeMap<String, EnvironmentOverride> {
    BTreeMap::from([
        (
            "staging".into(),
            EnvironmentOverride {
                replicas: Some(2),
                autoscaling: Some(ScalingBounds { min: 2, max: 4 }),
                ..Default::default()
            },
        ),
        ("production".into(), EnvironmentOverride::default()),
    ])
}

/// Requests and limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Guaranteed.
    #[serde(default = "default_requests")]
    pub requests: CpuMemory,
    /// Most.
    #[serde(default = "default_limits")]
    pub limits: CpuMemory,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            requests: default_requests(),
            limits: default_limits(),
        }
    }
}

fn default_requests() -> CpuMemory {
    CpuMemory {
        cpu: "250m".into(),
        memory: "256Mi".into(),
    }
}
fn default_limits() -> CpuMemory {
    CpuMemory {
        cpu: "1".into(),
        memory: "512Mi".into(),
    }
}

/// Kubernetes quantities.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuMemory {
    /// `250m`, `1`.
    pub cpu: String,
    /// `256Mi`.
    pub memory: String,
}

/// HPA settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    /// Whether to generate a HorizontalPodAutoscaler (a SQLite store cannot have one).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Fewest pods.
    #[serde(default = "default_min")]
    pub min: u32,
    /// Most pods.
    #[serde(default = "default_max")]
    pub max: u32,
    /// Target CPU utilisation, percent.
    #[serde(default = "default_cpu")]
    pub cpu_percent: u32,
    /// Target memory utilisation, percent.
    #[serde(default = "default_memory")]
    pub memory_percent: u32,
    /// Target `agent_queue_length` per pod.
    #[serde(default = "default_queue")]
    pub queue_length: u32,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling {
            enabled: default_enabled(),
            min: default_min(),
            max: default_max(),
            cpu_percent: default_cpu(),
            memory_percent: default_memory(),
            queue_length: default_queue(),
        }
    }
}

fn default_enabled() -> bool {
    true
}
fn default_min() -> u32 {
    3
}
fn default_max() -> u32 {
    10
}
fn default_cpu() -> u32 {
    70
}
fn default_memory() -> u32 {
    80
}
fn default_queue() -> u32 {
    5
}

/// Rollout strategy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Shift traffic in steps with analysis between them (Argo Rollouts).
    #[default]
    Canary,
    /// Bring up the new version beside the old, analyse, switch.
    BlueGreen,
    /// Replace pods a few at a time.
    Rolling,
}

/// `deploy.rollout:`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// canary (default), blue_green or rolling.
    #[serde(default)]
    pub strategy: Strategy,
    /// Canary steps, in order.
    #[serde(default = "default_steps")]
    pub steps: Vec<RolloutStep>,
    /// Analysis: least request success rate.
    #[serde(default = "default_success")]
    pub min_success_rate: f64,
    /// Analysis: most p95 request latency, seconds.
    #[serde(default = "default_p95")]
    pub max_p95_seconds: f64,
    /// Analysis: least workflow success rate.
    #[serde(default = "default_workflow_success")]
    pub min_workflow_success_rate: f64,
    /// Analysis: time between measurements.
    #[serde(default = "default_interval")]
    pub analysis_interval: Dur,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            strategy: Strategy::default(),
            steps: default_steps(),
            min_success_rate: default_success(),
            max_p95_seconds: default_p95(),
            min_workflow_success_rate: default_workflow_success(),
            analysis_interval: default_interval(),
        }
    }
}

fn default_steps() -> Vec<RolloutStep> {
    let weight = |w| RolloutStep {
        set_weight: Some(w),
        ..Default::default()
    };
    let pause = |s| RolloutStep {
        pause: Some(Dur(std::time::Duration::from_secs(s))),
        ..Default::default()
    };
    let analysis = RolloutStep {
        analysis: Some(true),
        ..Default::default()
    };
    vec![
        weight(10),
        pause(120),
        analysis.clone(),
        weight(50),
        pause(300),
        analysis,
        weight(100),
    ]
}
fn default_success() -> f64 {
    0.95
}
fn default_p95() -> f64 {
    0.5
}
fn default_workflow_success() -> f64 {
    0.90
}
fn default_interval() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

/// One canary step: exactly one of the three.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    /// Send this percent of traffic to the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<u32>,
    /// Wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Dur>,
    /// Run the analysis; roll back when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<bool>,
}

/// An environment variable from a Kubernetes Secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The variable (`DB_PASSWORD`).
    pub env: String,
    /// The Secret's name.
    pub secret: String,
    /// The key within it.
    pub key: String,
}

/// What the ArgoCD Applications deploy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArgocdConfig {
    /// The Kustomize overlay of the environment, or the Helm chart with its values file.
    #[serde(default)]
    pub source: ManifestSource,
}

/// Which generated tree an ArgoCD Application points at.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ManifestSource {
    /// `<git.path>/overlays/<env>`.
    #[default]
    Kustomize,
    /// `helm/<name>` beside `<git.path>`, with `values-<env>.yaml`.
    Helm,
}

/// Git repository ArgoCD syncs from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Repository URL.
    #[serde(default = "default_repo")]
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Directory of the generated `kubernetes/` tree in it.
    #[serde(default = "default_path")]
    pub path: String,
}

impl Default for GitSource {
    fn default() -> Self {
        GitSource {
            repo: default_repo(),
            revision: default_revision(),
            path: default_path(),
        }
    }
}

fn default_repo() -> String {
    "https://github.com/example/flotilla-deploy.git".into()
}
fn default_revision() -> String {
    "main".into()
}
fn default_path() -> String {
    "deploy/kubernetes".into()
}

/// What an environment changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentOverride {
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Public host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// HPA bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<ScalingBounds>,
    /// Requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// HPA bounds of an environment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalingBounds {
    /// Fewest pods.
    pub min: u32,
    /// Most pods.
    pub max: u32,
}
