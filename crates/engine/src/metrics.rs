//! The metrics catalogue (DESIGN §6). Names are what alerts, dashboards and rollout
//! analyses query: keep them stable, and add new ones here, nowhere else.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `method, route, code`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: String,
    /// Route template (`/api/v1/runs/{id}`), never the raw path.
    pub route: String,
    /// Status code.
    pub code: String,
}

/// `agent`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    /// Agent name.
    pub agent: String,
}

/// `agent, status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentStatusLabels {
    /// Agent name.
    pub agent: String,
    /// success | error.
    pub status: String,
}

/// `agent_id`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentIdLabels {
    /// Agent name.
    pub agent_id: String,
}

/// `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// success | error.
    pub status: String,
}

/// `workflow`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    /// Workflow name.
    pub workflow: String,
}

/// `workflow, status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowStatusLabels {
    /// Workflow name.
    pub workflow: String,
    /// Final run status.
    pub status: String,
}

/// `workflow, step`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowStepLabels {
    /// Workflow name.
    pub workflow: String,
    /// Step id.
    pub step: String,
}

/// `agent, model, kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmTokenLabels {
    /// Agent name.
    pub agent: String,
    /// Model.
    pub model: String,
    /// prompt | completion.
    pub kind: String,
}

/// `agent, model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmLabels {
    /// Agent name.
    pub agent: String,
    /// Model.
    pub model: String,
}

/// `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// hit | miss.
    pub result: String,
}

/// `group`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Route group: read, operate, admin.
    pub group: String,
}

/// `scope, name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// `workflow` or `agent`.
    pub scope: String,
    /// The workflow's or agent's name.
    pub name: String,
}

/// `version`: the version that started a run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// `engine.version`, or flotilla's version; `unknown` for runs started before versions
    /// were recorded.
    pub version: String,
}

/// `version, commit`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
    /// Git commit, when known at build time.
    pub commit: String,
}

/// The OpenTelemetry GenAI attributes of an LLM call, in Prometheus form.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    /// `chat`.
    pub gen_ai_operation_name: String,
    /// The configured provider's name.
    pub gen_ai_provider_name: String,
    /// The model asked for.
    pub gen_ai_request_model: String,
}

/// [`GenAiLabels`] and `gen_ai_token_type` (`input` | `output`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiTokenLabels {
    /// `chat`.
    pub gen_ai_operation_name: String,
    /// The configured provider's name.
    pub gen_ai_provider_name: String,
    /// The model asked for.
    pub gen_ai_request_model: String,
    /// `input` or `output`.
    pub gen_ai_token_type: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

/// The GenAI conventions' bucket boundaries for token counts.
fn token_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 14))
}

/// The GenAI conventions' bucket boundaries for operation durations (10 ms … 82 s).
fn genai_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Time to the first token: 1 ms … 16 s.
fn ttft_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn agent_histogram() -> Histogram {
    // 1 ms … ~8.7 min: an LLM call may take minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

fn run_histogram() -> Histogram {
    // 5 ms … ~5.7 h.
    Histogram::new(exponential_buckets(0.005, 3.0, 14))
}

/// Every metric flotilla exposes.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `http_requests_total`.
    pub http_requests: Family<HttpLabels, Counter>,
    /// `http_request_duration_seconds`.
    pub http_duration: Hist<HttpLabels>,
    /// `agent_tasks_total`.
    pub agent_tasks: Family<AgentStatusLabels, Counter>,
    /// `agent_tasks_in_progress`.
    pub agent_in_progress: Family<AgentLabels, Gauge>,
    /// `agent_task_duration_seconds`.
    pub agent_duration: Hist<AgentLabels>,
    /// `agent_batch_tasks_total`.
    pub batch_tasks: Family<StatusLabels, Counter>,
    /// `agent_health_status`.
    pub agent_health: Family<AgentIdLabels, Gauge>,
    /// `agent_queue_length`: calls waiting for a concurrency slot.
    pub queue_length: Gauge,
    /// `circuit_breaker_state`.
    pub circuit_state: Family<AgentLabels, Gauge>,
    /// `circuit_breaker_open_total`.
    pub circuit_opened: Family<AgentLabels, Counter>,
    /// `workflow_runs_total`.
    pub workflow_runs: Family<WorkflowStatusLabels, Counter>,
    /// `workflow_run_duration_seconds`.
    pub workflow_duration: Hist<WorkflowLabels>,
    /// `workflow_sla_breaches_total`.
    pub sla_breaches: Family<WorkflowLabels, Counter>,
    /// `workflow_runs_in_flight{version}`: runs (and tasks) this process drives, by the
    /// version that started them.
    pub runs_in_flight: Family<VersionLabels, Gauge>,
    /// `workflow_step_retries_total`.
    pub step_retries: Family<WorkflowStepLabels, Counter>,
    /// `llm_tokens_total`.
    pub llm_tokens: Family<LlmTokenLabels, Counter>,
    /// `llm_cost_usd_total`.
    pub llm_cost: Family<LlmLabels, Counter<f64, AtomicU64>>,
    /// `llm_structured_output_retries_total`: answers that did not match `response_schema`
    /// and were asked again.
    pub llm_structured_retries: Family<LlmLabels, Counter>,
    /// `gen_ai_client_token_usage` (OpenTelemetry GenAI): tokens per call.
    pub gen_ai_tokens: Hist<GenAiTokenLabels>,
    /// `gen_ai_client_operation_duration_seconds`: one call to the provider.
    pub gen_ai_duration: Hist<GenAiLabels>,
    /// `gen_ai_server_time_to_first_token_seconds`: streamed calls, as the client sees it.
    pub gen_ai_ttft: Hist<GenAiLabels>,
    /// `rate_limited_requests_total`.
    pub rate_limited: Family<GroupLabels, Counter>,
    /// `cache_requests_total`.
    pub cache_requests: Family<CacheLabels, Counter>,
    /// `feature_flag_evaluations_total{flag,result}` and `flag_reload_errors_total`.
    pub flags: flotilla_flags::FlagMetrics,
    /// `mlflow_export_errors_total`: run summaries MLflow did not get.
    pub mlflow_export_errors: Counter,
    /// `llm_budget_usd{scope,name}`: configured budgets.
    pub budget_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    /// `llm_budget_exceeded_total{scope,name}`: calls refused by a budget.
    pub budget_exceeded: Family<BudgetLabels, Counter>,
    /// `store_runs{status}`: runs the store holds, by status.
    pub store_runs: Family<StatusLabels, Gauge>,
    /// `store_size_bytes`: what the store takes on disk.
    pub store_size: Gauge,
    /// `runs_pruned_total{status}`: finished runs deleted by retention.
    pub runs_pruned: Family<StatusLabels, Counter>,
    /// `backup_last_success_timestamp_seconds`: when the latest backup succeeded.
    pub backup_last_success: Gauge<f64, AtomicU64>,
    /// `backup_duration_seconds`: how long the latest successful backup took.
    pub backup_duration: Gauge<f64, AtomicU64>,
    /// `backup_failures_total`: backups that failed.
    pub backup_failures: Counter,
}

impl Metrics {
    /// Creates a workflow's run counters at 0, one per final status, so that they are there
    /// (and `rate()` works) before the first run ends.
    pub fn prime_workflow(&self, workflow: &str) {
        for status in ["succeeded", "failed", "cancelled", "timed_out"] {
            drop(self.workflow_runs.get_or_create(&WorkflowStatusLabels {
                workflow: workflow.to_owned(),
                status: status.into(),
            }));
        }
    }

    /// Registers the catalogue.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            agent_tasks: Family::default(),
            agent_in_progress: Family::default(),
            agent_duration: Family::new_with_constructor(agent_histogram),
            batch_tasks: Family::default(),
            agent_health: Family::default(),
            queue_length: Gauge::default(),
            circuit_state: Family::default(),
            circuit_opened: Family::default(),
            workflow_runs: Family::default(),
            workflow_duration: Family::new_with_constructor(run_histogram),
            sla_breaches: Family::default(),
            runs_in_flight: Family::default(),
            step_retries: Family::default(),
            llm_tokens: Family::default(),
            llm_cost: Family::default(),
            llm_structured_retries: Family::default(),
            gen_ai_tokens: Family::new_with_constructor(token_histogram),
            gen_ai_duration: Family::new_with_constructor(genai_duration_histogram),
            gen_ai_ttft: Family::new_with_constructor(ttft_histogram),
            rate_limited: Family::default(),
            cache_requests: Family::default(),
            budget_usd: Family::default(),
            mlflow_export_errors: Counter::default(),
            flags: flotilla_flags::FlagMetrics::default(),
            budget_exceeded: Family::default(),
            store_runs: Family::default(),
            store_size: Gauge::default(),
            runs_pruned: Family::default(),
            backup_last_success: Gauge::default(),
            backup_duration: Gauge::default(),
            backup_failures: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        // prometheus-client appends `_total` to counters.
        r.register(
            "http_requests",
            "HTTP requests served",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            m.http_duration.clone(),
        );
        r.register(
            "agent_tasks",
            "Agent calls by outcome",
            m.agent_tasks.clone(),
        );
        r.register(
            "agent_tasks_in_progress",
            "Agent calls in flight",
            m.agent_in_progress.clone(),
        );
        r.register(
            "agent_task_duration_seconds",
            "Agent call latency",
            m.agent_duration.clone(),
        );
        r.register(
            "agent_batch_tasks",
            "Tasks submitted through /api/v1/batch by outcome",
            m.batch_tasks.clone(),
        );
        r.register(
            "agent_health_status",
            "Agent health (1 healthy, 0 not)",
            m.agent_health.clone(),
        );
        r.register(
            "agent_queue_length",
            "Agent calls waiting for a concurrency slot",
            m.queue_length.clone(),
        );
        r.register(
            "circuit_breaker_state",
            "Circuit state (0 closed, 1 half-open, 2 open)",
            m.circuit_state.clone(),
        );
        r.register(
            "circuit_breaker_open",
            "Times a circuit opened",
            m.circuit_opened.clone(),
        );
        r.register(
            "workflow_runs_in_flight",
            "Runs this process drives, by the version that started them",
            m.runs_in_flight.clone(),
        );
        r.register(
            "workflow_runs",
            "Finished workflow runs by status",
            m.workflow_runs.clone(),
        );
        r.register(
            "workflow_run_duration_seconds",
            "Workflow run duration",
            m.workflow_duration.clone(),
        );
        r.register(
            "workflow_sla_breaches",
            "Runs that exceeded their workflow timeout",
            m.sla_breaches.clone(),
        );
        r.register(
            "workflow_step_retries",
            "Step retries",
            m.step_retries.clone(),
        );
        r.register("llm_tokens", "LLM tokens by kind", m.llm_tokens.clone());
        r.register("llm_cost_usd", "LLM spend in USD", m.llm_cost.clone());
        r.register(
            "gen_ai_client_token_usage",
            "Tokens per LLM call (OpenTelemetry GenAI)",
            m.gen_ai_tokens.clone(),
        );
        r.register(
            "gen_ai_client_operation_duration_seconds",
            "LLM call duration (OpenTelemetry GenAI)",
            m.gen_ai_duration.clone(),
        );
        r.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of a streamed LLM call (OpenTelemetry GenAI)",
            m.gen_ai_ttft.clone(),
        );
        r.register(
            "llm_structured_output_retries",
            "LLM answers that did not match response_schema and were asked again",
            m.llm_structured_retries.clone(),
        );
        r.register(
            "rate_limited_requests",
            "Requests refused by a rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "cache_requests",
            "Result cache look-ups by outcome",
            m.cache_requests.clone(),
        );
        r.register(
            "feature_flag_evaluations",
            "Feature flag evaluations by flag and result",
            m.flags.evaluations.clone(),
        );
        r.register(
            "store_runs",
            "Runs the store holds, by status (refreshed every storage.retention.interval)",
            m.store_runs.clone(),
        );
        r.register(
            "store_size_bytes",
            "Bytes the store takes on disk (SQLite: database and WAL; PostgreSQL: the database)",
            m.store_size.clone(),
        );
        r.register(
            "runs_pruned",
            "Finished runs deleted by storage.retention (or flotilla runs prune), by status",
            m.runs_pruned.clone(),
        );
        r.register(
            "backup_last_success_timestamp_seconds",
            "When the latest scheduled backup succeeded (from the store's backup records)",
            m.backup_last_success.clone(),
        );
        r.register(
            "backup_duration_seconds",
            "How long the latest successful scheduled backup took",
            m.backup_duration.clone(),
        );
        r.register(
            "backup_failures",
            "Scheduled backups that failed (from the store's backup records)",
            m.backup_failures.clone(),
        );
        for status in ["succeeded", "failed", "cancelled", "timed_out"] {
            drop(m.runs_pruned.get_or_create(&StatusLabels {
                status: status.into(),
            }));
        }
        r.register(
            "flag_reload_errors",
            "Flag files rejected on reload (the last good flags stayed live)",
            m.flags.reload_errors.clone(),
        );
        r.register(
            "mlflow_export_errors",
            "Workflow run summaries that could not be sent to MLflow",
            m.mlflow_export_errors.clone(),
        );
        r.register(
            "llm_budget_usd",
            "LLM budgets per run in USD (scope workflow or agent)",
            m.budget_usd.clone(),
        );
        r.register(
            "llm_budget_exceeded",
            "LLM calls refused because they would exceed a budget",
            m.budget_exceeded.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                commit: option_env!("FLOTILLA_COMMIT").unwrap_or("unknown").into(),
            })
            .set(1);
        r.register("flotilla_build_info", "Build information", build);
        r.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        Metrics { registry, ..m }
    }

    /// Counts a call refused by a budget.
    pub fn budget_exceeded(&self, scope: &str, name: &str) {
        self.budget_exceeded
            .get_or_create(&BudgetLabels {
                scope: scope.into(),
                name: name.into(),
            })
            .inc();
    }

    /// Shows a configured budget.
    pub fn budget(&self, scope: &str, name: &str, usd: f64) {
        self.budget_usd
            .get_or_create(&BudgetLabels {
                scope: scope.into(),
                name: name.into(),
            })
            .set(usd);
    }

    /// Counts a request refused by the rate limit of `group`.
    pub fn rate_limited(&self, group: &str) {
        self.rate_limited
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .inc();
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One unit of a gauge, held while its owner lives: taken on creation, given back on drop
/// (however the owner ends: finished, aborted, dropped mid-await).
pub struct Held(Gauge);

impl Held {
    /// Raises `gauge` by one until the returned value is dropped.
    pub fn new(gauge: Gauge) -> Held {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
