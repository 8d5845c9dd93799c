//! The configuration model: what `flotilla.yaml` may contain.
//!
//! Every struct denies unknown fields, so a typo is an error with its position rather than a
//! silently ignored setting. Defaults are the ones documented in the README's reference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::units::{ByteSize, Dur};

mod agent;
mod auth;
mod backup;
mod retention;
pub use agent::*;
pub use auth::*;
pub use backup::*;
pub use retention::*;

/// A whole flotilla configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    // The top-level keys are listed in `Config::SECTIONS` too: keep the two in step.
    /// Format version; only `1` exists.
    #[serde(default = "one")]
    pub version: u32,
    /// The HTTP server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where durable state lives.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Scheduled backups of the store.
    #[serde(default)]
    pub backup: BackupConfig,
    /// Engine-wide limits.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Log output.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Traces and experiment tracking.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// Feature flags.
    #[serde(default)]
    pub flags: FlagsConfig,
    /// Who may call the API.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Requests per principal.
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// The result cache of steps and agents marked `cache:`.
    #[serde(default)]
    pub cache: CacheConfig,
    /// LLM providers and prices.
    #[serde(default)]
    pub llm: LlmConfig,
    /// Agents by name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Workflows by name.
    #[serde(default)]
    pub workflows: BTreeMap<String, Workflow>,
    /// What `flotilla deploy generate` builds artifacts from.
    #[serde(default)]
    pub deploy: crate::deploy::DeployConfig,
    /// A rollout for `flotilla rollout` (read and checked by the rollout crate; `validate`
    /// checks it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<serde_json::Value>,
}

impl Config {
    /// The top-level sections, as `FLOTILLA_<SECTION>__<FIELD>` overrides name them.
    pub const SECTIONS: &'static [&'static str] = &[
        "server",
        "storage",
        "backup",
        "engine",
        "logging",
        "observability",
        "flags",
        "auth",
        "rate_limits",
        "cache",
        "llm",
        "agents",
        "workflows",
        "deploy",
    ];
}

#[cfg(test)]
mod sections {
    use super::Config;

    #[test]
    fn sections_are_the_top_level_keys() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "version")
            .collect();
        keys.sort_unstable();
        let mut sections = Config::SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
    }
}

fn one() -> u32 {
    1
}

/// `server:` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port (the bound address is logged).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How long SIGTERM waits for in-flight requests and runs before exiting.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_body_limit")]
    pub body_limit: ByteSize,
    /// Longest a request may take, `?wait=` included, before 504.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// Origins browsers may call the API from (CORS); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
    /// Serve HTTPS with these PEM files (reloaded when they change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// After SIGTERM, how long to keep serving with `/ready` answering 503 before closing the
    /// listener, so that load balancers (a Kubernetes Service, nginx) stop sending first.
    /// Part of `shutdown_grace`.
    #[serde(default = "default_drain_delay")]
    pub drain_delay: Dur,
    /// How long a client may take to send a request's headers, from their first byte (a new
    /// connection's first request: from the connect).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// How long an idle keep-alive connection is kept open waiting for the next request.
    /// Longer than clients keep idle connections in their pools (90 s for reqwest and Go), so
    /// that the server is not the side that closes a connection a client is reusing.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Connections served at once; one more is closed as soon as it is accepted. Keep it
    /// below the process's open-file limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Largest response body of a list (`GET /api/v1/runs`); a page that would be larger is
    /// cut short and says so with `next_cursor`.
    #[serde(default = "default_max_list_bytes")]
    pub max_list_bytes: ByteSize,
}

fn default_drain_delay() -> Dur {
    Dur::secs(5)
}

fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}

fn default_idle_timeout() -> Dur {
    Dur::secs(120)
}

fn default_max_connections() -> u32 {
    10_000
}

fn default_max_list_bytes() -> ByteSize {
    ByteSize(4 * 1024 * 1024)
}

/// `server.tls:` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_grace() -> Dur {
    Dur::secs(30)
}
fn default_body_limit() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_request_timeout() -> Dur {
    Dur::secs(330)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace: default_grace(),
            body_limit: default_body_limit(),
            request_timeout: default_request_timeout(),
            cors_origins: Vec::new(),
            tls: None,
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            drain_delay: default_drain_delay(),
            max_connections: default_max_connections(),
            max_list_bytes: default_max_list_bytes(),
        }
    }
}

/// `storage:` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://PATH` (relative to the working directory) or `postgres://…`.
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// Read connections kept open.
    #[serde(default = "default_pool")]
    pub pool_size: u32,
    /// `durable` (default): every commit is fsync'd before it is acknowledged.
    /// `relaxed`: commits survive a process crash but not a power loss.
    #[serde(default)]
    pub durability: Durability,
    /// PostgreSQL: longest wait for a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// PostgreSQL: longest a statement may run.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: Dur,
    /// How long finished runs are kept (forever unless set).
    #[serde(default, skip_serializing_if = "Retention::is_off")]
    pub retention: Retention,
}

fn default_connect_timeout() -> Dur {
    Dur::secs(5)
}
fn default_statement_timeout() -> Dur {
    Dur::secs(30)
}

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync on every commit (power-loss safe).
    #[default]
    Durable,
    /// No fsync per commit; a crash of the process loses nothing, a power loss may.
    Relaxed,
}

fn default_storage_url() -> String {
    "sqlite://flotilla.db".into()
}
fn default_pool() -> u32 {
    10
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: default_storage_url(),
            pool_size: default_pool(),
            durability: Durability::Durable,
            connect_timeout: default_connect_timeout(),
            statement_timeout: default_statement_timeout(),
            retention: Retention::default(),
        }
    }
}

/// `engine:` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Agent calls in flight at once across all agents.
    #[serde(default = "default_global_concurrency")]
    pub max_concurrency: u32,
    /// Per-attempt timeout of steps and agents that set none.
    #[serde(default = "default_step_timeout")]
    pub default_timeout: Dur,
    /// How often http agents' health endpoints are probed.
    #[serde(default = "default_health_interval")]
    pub health_interval: Dur,
    /// Shared stores: how long a replica holds a run without renewing its lease. A replica
    /// that dies loses its runs to the others after this long.
    #[serde(default = "default_lease")]
    pub lease: Dur,
    /// Shared stores: how often leases are renewed and unheld runs are claimed.
    #[serde(default = "default_claim_interval")]
    pub claim_interval: Dur,
    /// This process's name in leases (default: a new random id per start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// The version runs started here are tagged with, and that claims compare (default:
    /// this binary's version). Set it to the release (an image tag such as `1.4.0-canary.1`)
    /// when configuration changes ship without a new binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Shared stores: whose lapsed runs this replica may take over. `same` (the default):
    /// only runs of its own version; or a semver range such as `>=1.4.0, <2` (runs whose
    /// version matches). Runs started before versions were recorded match any.
    #[serde(default = "default_claim_versions")]
    pub claim_versions: String,
}

fn default_claim_versions() -> String {
    "same".into()
}

fn default_lease() -> Dur {
    Dur::secs(15)
}
fn default_claim_interval() -> Dur {
    Dur::secs(1)
}

fn default_global_concurrency() -> u32 {
    512
}
fn default_step_timeout() -> Dur {
    Dur::secs(60)
}
fn default_health_interval() -> Dur {
    Dur::secs(10)
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrency: default_global_concurrency(),
            default_timeout: default_step_timeout(),
            health_interval: default_health_interval(),
            lease: default_lease(),
            claim_interval: default_claim_interval(),
            replica_id: None,
            version: None,
            claim_versions: default_claim_versions(),
        }
    }
}

/// `logging:` settings (`LOG_FORMAT` and `LOG_LEVEL` override them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `json` (default) or `pretty`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter: `info`, `debug`, `flotilla_engine=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Also write the log to files in this directory (`flotilla.log.<date>`), rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<LogFileConfig>,
}

/// `logging.file:` a rotated log file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogFileConfig {
    /// Directory of the log files.
    pub dir: String,
    /// `daily` (default), `hourly` or `never`.
    #[serde(default = "default_rotation")]
    pub rotation: String,
    /// Files kept after rotation (default 7).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_rotation() -> String {
    "daily".into()
}
fn default_keep() -> usize {
    7
}

/// `flags:` where feature flags come from.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlagsConfig {
    /// A `flags.yaml` (or Unleash features document), reloaded when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The environment flags limited to one are evaluated in, when the caller does not say
    /// (default: `FLOTILLA_ENV` or `--env`, else `development`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// `observability:` traces (OpenTelemetry) and experiment tracking (MLflow).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Export traces over OTLP/HTTP (protobuf). `OTEL_EXPORTER_OTLP_ENDPOINT` also enables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
    /// Share of new traces recorded, 0 to 1 (default 1); a caller's sampled flag wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// `service.name` of the exported spans (default `flotilla`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Record each workflow run as an MLflow run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowConfig>,
}

/// `observability.otlp:` where spans go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://otel-collector:4318`); spans go to `/v1/traces`.
    pub endpoint: String,
}

/// `observability.mlflow:` an MLflow tracking server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlflowConfig {
    /// The tracking server (`http://mlflow:5000`).
    pub tracking_uri: String,
    /// Experiment the runs go to, created if missing (default `flotilla`).
    #[serde(default = "default_experiment")]
    pub experiment: String,
}

fn default_experiment() -> String {
    "flotilla".into()
}

fn default_log_format() -> String {
    "json".into()
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
            file: None,
        }
    }
}

/// `cache:` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most results kept in memory; the oldest go first.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// `redis://host:6379/0`: keep results in Redis, shared by replicas (redacted in output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn default_cache_entries() -> usize {
    10_000
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            url: None,
        }
    }
}

/// Caching of one step's or agent's results.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// How long a result is reused for the same agent, action, input and instructions.
    pub ttl: Dur,
}

/// `llm:` settings.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// OpenAI-compatible providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, LlmProvider>,
    /// Prices per 1,000 tokens by model name.
    #[serde(default)]
    pub pricing: BTreeMap<String, ModelPrice>,
}

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmProvider {
    /// Base URL; `/chat/completions` is appended.
    pub base_url: String,
    /// Bearer token; usually `${OPENAI_API_KEY}`. Redacted everywhere.
    #[serde(default)]
    pub api_key: Option<String>,
    /// How a `response_schema` is asked for: providers differ.
    #[serde(default)]
    pub structured_output: StructuredOutput,
}

/// How an llm agent's `response_schema` reaches the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `json_schema` first; when the provider refuses a `response_format`, the next mode
    /// that works (`json_object`, then `prompt`), remembered for the provider.
    #[default]
    Auto,
    /// `response_format: {type: json_schema, json_schema: {schema}}` (OpenAI, vLLM).
    JsonSchema,
    /// `response_format: {type: json_object, schema}` (llama.cpp's server).
    JsonObject,
    /// `format: <schema>` (Ollama).
    Ollama,
    /// The schema in the prompt, nothing in the request (any model).
    Prompt,
}

/// Price of a model per 1,000 tokens, in USD.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// USD per 1,000 prompt tokens.
    pub prompt_per_1k: f64,
    /// USD per 1,000 completion tokens.
    pub completion_per_1k: f64,
}

/// A spending limit on LLM calls: a call that would take the spend past it is refused
/// before it is made.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// USD, from the price table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// Prompt and completion tokens together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// Ready-queue order.
#[derive(
    Debug,
    Clone,
    Copy,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served last.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Served first.
    High,
}

impl Priority {
    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "medium" => Some(Priority::Medium),
            "high" => Some(Priority::High),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

/// A workflow: a DAG of steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema the run input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// SLA: a run still unfinished after this ends as `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Default priority of its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The steps; order does not matter, `needs` does.
    pub steps: Vec<Step>,
    /// The run's output, templated (default: the outputs of the steps nothing depends on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Most one run may spend on LLM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// One step of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the workflow: letters, digits, `_` and `-`.
    pub id: String,
    /// The agent to call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Or: any healthy agent offering this capability (least loaded first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// The action name sent to the agent (default: the step id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The agent's input; strings are templates (default: the run's input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// For llm agents: the user prompt template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Free-text instructions passed to the agent (templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Steps that must succeed first (alias `dependencies`).
    #[serde(default, alias = "dependencies", skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Expression; the step is skipped when it is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Per-attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Retries with exponential backoff and full jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Overrides the run's priority for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Undo action run if the workflow fails after this step succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensation>,
    /// Reuse results of identical calls for a while (overrides the agent's `cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
}

/// How a failed attempt is retried.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Backoff ceiling of the first retry.
    #[serde(default = "default_initial")]
    pub initial: Dur,
    /// Largest backoff.
    #[serde(default = "default_max_backoff")]
    pub max: Dur,
    /// Growth factor per retry.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_initial() -> Dur {
    Dur::secs(1)
}
fn default_max_backoff() -> Dur {
    Dur::secs(30)
}
fn default_multiplier() -> f64 {
    2.0
}

/// A compensating action (saga).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    /// Agent to call (default: the step's agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Or a capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Action name.
    pub action: String,
    /// Input (templated; default: the step's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}
