//! The agents a process knows: configured ones and remote ones that registered themselves,
//! each with its breaker, concurrency gate, load and health.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_spec::{AgentConfig, AgentKind, Config};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use flotilla_spec::Priority;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::call::agents::{self, Agent, AgentError, AgentRequest, AgentResponse, HttpAgent};
use crate::call::breaker::{Breaker, CircuitState, Transition};
use crate::call::gate::Gate;
use crate::call::observed::Observed;
use crate::metrics::{AgentIdLabels, AgentLabels, AgentStatusLabels, Metrics};

/// An agent's series in the metrics catalogue, looked up once rather than per call.
struct AgentSeries {
    in_progress: Gauge,
    duration: Histogram,
    success: Counter,
    error: Counter,
    circuit_state: Gauge,
    circuit_opened: Counter,
    health: Gauge,
}

impl AgentSeries {
    fn new(name: &str, m: &Metrics) -> Self {
        let agent = AgentLabels {
            agent: name.to_owned(),
        };
        let status = |s: &str| AgentStatusLabels {
            agent: name.to_owned(),
            status: s.into(),
        };
        // One statement per series: `get_or_create` holds the family's read lock until the end
        // of its statement, and creating a second series of the same family needs its write lock.
        let in_progress = m.agent_in_progress.get_or_create(&agent).clone();
        let duration = m.agent_duration.get_or_create(&agent).clone();
        let success = m.agent_tasks.get_or_create(&status("success")).clone();
        let error = m.agent_tasks.get_or_create(&status("error")).clone();
        let circuit_state = m.circuit_state.get_or_create(&agent).clone();
        let circuit_opened = m.circuit_opened.get_or_create(&agent).clone();
        let health = m
            .agent_health
            .get_or_create(&AgentIdLabels {
                agent_id: name.to_owned(),
            })
            .clone();
        Self {
            health,
            in_progress,
            duration,
            success,
            error,
            circuit_state,
            circuit_opened,
        }
    }
}

/// One agent with its runtime state.
pub struct AgentEntry {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Description.
    pub description: Option<String>,
    /// Capabilities offered.
    pub capabilities: Vec<String>,
    /// The runtime.
    pub runtime: Arc<dyn Agent>,
    /// Its live configuration (what a run's pinned behaviour is applied to).
    pub config: AgentConfig,
    /// Its circuit breaker.
    pub breaker: Breaker,
    /// Its concurrency limit, if any.
    pub gate: Option<Arc<Gate>>,
    /// Default attempt timeout.
    pub timeout: Option<Duration>,
    /// Result caching of its calls.
    pub cache: Option<flotilla_spec::CachePolicy>,
    /// Most one run may spend on its LLM calls.
    pub budget: Option<flotilla_spec::Budget>,
    /// Calls in flight.
    pub in_flight: AtomicU64,
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls failed.
    pub errors: AtomicU64,
    healthy: AtomicBool,
    expires: Option<Mutex<Instant>>,
    series: AgentSeries,
    observed: Observed,
}

/// A call in flight: counted in `in_flight` and `agent_tasks_in_progress` for as long as
/// it lives.
struct InFlight<'a>(&'a AgentEntry);

impl<'a> InFlight<'a> {
    fn new(entry: &'a AgentEntry) -> Self {
        entry.in_flight.fetch_add(1, Ordering::Relaxed);
        entry.series.in_progress.inc();
        InFlight(entry)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.series.in_progress.dec();
    }
}

impl AgentEntry {
    /// One call under the global and the agent's own concurrency limits, its circuit breaker
    /// and the attempt timeout, recorded in the metrics.
    /// `runtime` replaces the agent's own when the run pinned another behaviour.
    pub async fn call(
        &self,
        global: &Arc<Gate>,
        req: &AgentRequest,
        timeout: Duration,
        priority: Priority,
        runtime: Option<&Arc<dyn Agent>>,
    ) -> Result<AgentResponse, AgentError> {
        // An open circuit refuses at once, before any slot is waited for. Everything taken
        // from here on is given back by a guard, however the call ends (a cancelled run
        // drops this future mid-call).
        let admission = match self.breaker.try_acquire(Instant::now()) {
            Ok(a) => a,
            Err(rejected) => {
                return Err(AgentError::Unavailable(format!(
                    "circuit open for agent `{}`; next probe in {:?}",
                    self.name, rejected.retry_in
                )));
            }
        };
        let _global = global.acquire(priority).await;
        let _own = match &self.gate {
            Some(g) => Some(g.acquire(priority).await),
            None => None,
        };
        let in_flight = InFlight::new(self);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let runtime = runtime.unwrap_or(&self.runtime);
        let result = match tokio::time::timeout(timeout, runtime.call(req)).await {
            Ok(r) => r,
            Err(_) => Err(AgentError::Timeout(timeout)),
        };
        drop(in_flight);
        let took = started.elapsed();
        self.series.duration.observe(took.as_secs_f64());
        self.observed
            .call(took, result.as_ref().ok().and_then(|r| r.usage.as_ref()));
        match &result {
            Ok(_) => self.series.success.inc(),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(run_id = %req.run_id, step_id = %req.step_id, agent = %self.name,
                    attempt = req.attempt, error = %e, "agent call failed");
                self.series.error.inc()
            }
        };
        let now = Instant::now();
        match admission.record(result.is_ok(), now) {
            Transition::Opened => {
                self.series.circuit_opened.inc();
                self.observed.circuit_opened();
                self.series.health.set(0);
                tracing::warn!(agent = %self.name, "circuit opened");
            }
            Transition::Closed => {
                self.observed.circuit_closed();
                self.series.health.set(i64::from(self.gauge_healthy()));
            }
            Transition::None => {}
        }
        self.series
            .circuit_state
            .set(self.breaker.state(now) as i64);
        result
    }

    /// What `agent_health_status` says: the probe passes and the circuit is closed (a
    /// half-open circuit is still recovering).
    fn gauge_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.breaker.state(Instant::now()) == CircuitState::Closed
    }

    /// How long calls to this agent are still refused by its open circuit.
    pub fn retry_in(&self) -> Option<Duration> {
        self.breaker.retry_in(Instant::now())
    }

    /// Healthy: its probe passes (http) and its circuit is not open.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.breaker.state(Instant::now()) != CircuitState::Open
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires
            .as_ref()
            .is_some_and(|e| *e.lock().unwrap_or_else(|p| p.into_inner()) <= now)
    }
}

/// What `GET /api/v1/agents` shows of an agent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentStatus {
    /// Name.
    pub id: String,
    /// Kind.
    pub kind: AgentKind,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// `healthy` or `unhealthy`.
    pub status: &'static str,
    /// Circuit state.
    pub circuit: &'static str,
    /// Calls in flight.
    pub in_flight: u64,
    /// Calls made since start.
    pub calls: u64,
    /// Share of calls that failed.
    pub error_rate: f64,
    /// Registered remotely (with a TTL) rather than configured.
    pub remote: bool,
    /// Endpoints, for http agents.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// How long the open circuit still refuses calls before it lets a probe through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_retry_in_ms: Option<u64>,
    /// Unix ms the circuit last opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_opened_at: Option<i64>,
    /// Unix ms the circuit last closed again after opening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_closed_at: Option<i64>,
    /// 95th percentile of the latest 128 calls' durations, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
    /// A remote agent: seconds until it is forgotten unless it registers again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// Most one run may spend on this agent's LLM calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub budget: Option<flotilla_spec::Budget>,
    /// Tokens its LLM calls used since start.
    pub spent_tokens: u64,
    /// USD its LLM calls cost since start.
    pub spent_usd: f64,
}

/// A remote agent announcing itself (`POST /api/v1/agents/register`); repeat it as a heartbeat.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Agent name: letters, digits, `_`, `-` and `.`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]+$")]
    pub name: String,
    /// Its endpoints: http:// or https:// URLs.
    #[schema(schema_with = endpoints_schema)]
    pub endpoints: Vec<String>,
    /// Capabilities it offers.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Seconds until it is forgotten unless it registers again (default 30).
    #[serde(default, deserialize_with = "flotilla_spec::whole::option_u64")]
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_seconds: Option<u64>,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// At least one http:// or https:// URL.
fn endpoints_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^https?://")),
        )
        .min_items(Some(1))
        .description(Some("Its endpoints: http:// or https:// URLs."))
        .build()
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The name belongs to a configured agent.
    #[error("agent `{0}` is configured in flotilla.yaml and cannot be registered remotely")]
    Configured(String),
    /// The request is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// All agents.
pub struct Registry {
    agents: RwLock<BTreeMap<String, Arc<AgentEntry>>>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    /// The configuration agents are built with (LLM providers).
    config: Arc<Config>,
}

impl Registry {
    /// The configured agents.
    pub fn new(config: &Arc<Config>, client: reqwest::Client, metrics: Arc<Metrics>) -> Registry {
        let mut agents = BTreeMap::new();
        for (name, cfg) in &config.agents {
            let runtime = agents::build(name, cfg, config, &client, &metrics);
            agents.insert(
                name.clone(),
                Arc::new(Self::entry(name, cfg, runtime, None, &metrics)),
            );
        }
        for name in agents.keys() {
            metrics
                .agent_health
                .get_or_create(&AgentIdLabels {
                    agent_id: name.clone(),
                })
                .set(1);
            metrics
                .circuit_state
                .get_or_create(&AgentLabels {
                    agent: name.clone(),
                })
                .set(0);
        }
        Registry {
            agents: RwLock::new(agents),
            metrics,
            client,
            config: config.clone(),
        }
    }

    /// A runtime for `entry` (where it is: endpoints, credentials) doing what `pinned`
    /// says (a run's pinned behaviour).
    pub(crate) fn build_pinned(&self, entry: &AgentEntry, pinned: &AgentConfig) -> Arc<dyn Agent> {
        let cfg = entry.config.with_behaviour(pinned);
        agents::build(&entry.name, &cfg, &self.config, &self.client, &self.metrics)
    }

    /// The live configuration of every agent, by name.
    pub(crate) fn configs(&self) -> BTreeMap<String, AgentConfig> {
        self.read()
            .iter()
            .map(|(name, a)| (name.clone(), a.config.clone()))
            .collect()
    }

    fn entry(
        name: &str,
        cfg: &AgentConfig,
        runtime: Arc<dyn Agent>,
        expires: Option<Instant>,
        metrics: &Metrics,
    ) -> AgentEntry {
        AgentEntry {
            name: name.to_owned(),
            kind: cfg.kind,
            description: cfg.description.clone(),
            capabilities: cfg.capabilities.clone(),
            runtime,
            config: cfg.clone(),
            breaker: Breaker::new(cfg.circuit_breaker),
            gate: cfg
                .max_concurrency
                .map(|n| Gate::new(n as usize, metrics.queue_length.clone())),
            timeout: cfg.timeout.map(|d| d.0),
            cache: cfg.cache,
            budget: cfg.budget,
            in_flight: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            expires: expires.map(Mutex::new),
            observed: Observed::default(),
            series: AgentSeries::new(name, metrics),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<AgentEntry>>> {
        self.agents.read().unwrap_or_else(|e| e.into_inner())
    }

    /// An agent by name (a remote one only while its TTL lasts).
    pub fn get(&self, name: &str) -> Option<Arc<AgentEntry>> {
        self.read()
            .get(name)
            .filter(|a| !a.expired(Instant::now()))
            .cloned()
    }

    /// How long an open circuit still refuses calls: of the agent by that name, or the
    /// soonest of the agents offering that capability.
    pub fn retry_in(&self, agent: Option<&str>, capability: Option<&str>) -> Option<Duration> {
        let agents = self.read();
        agents
            .values()
            .filter(|a| {
                agent.is_some_and(|n| n == a.name)
                    || capability.is_some_and(|c| a.capabilities.iter().any(|x| x == c))
            })
            .map(|a| a.retry_in())
            .min()
            .flatten()
    }

    /// Whether any live agent, healthy or not, offers `capability`.
    pub fn offers(&self, capability: &str) -> bool {
        let now = Instant::now();
        self.read()
            .values()
            .any(|a| !a.expired(now) && a.capabilities.iter().any(|c| c == capability))
    }

    /// The least-loaded healthy agent offering `capability`.
    pub fn for_capability(&self, capability: &str) -> Result<Arc<AgentEntry>, AgentError> {
        let now = Instant::now();
        let agents = self.read();
        let offering: Vec<&Arc<AgentEntry>> = agents
            .values()
            .filter(|a| !a.expired(now) && a.capabilities.iter().any(|c| c == capability))
            .collect();
        if offering.is_empty() {
            return Err(AgentError::Unavailable(format!(
                "no agent offers capability `{capability}`"
            )));
        }
        offering
            .iter()
            .filter(|a| a.is_healthy())
            .min_by_key(|a| a.in_flight.load(Ordering::Relaxed))
            .map(|a| Arc::clone(a))
            .ok_or_else(|| {
                AgentError::Unavailable(format!(
                    "no healthy agent offers capability `{capability}`"
                ))
            })
    }

    /// Adds or refreshes a remote http agent.
    pub fn register(&self, reg: Registration) -> Result<AgentStatus, RegistrationError> {
        if reg.endpoints.is_empty() {
            return Err(RegistrationError::Invalid(
                "`endpoints` must list at least one URL".into(),
            ));
        }
        if let Some(bad) = reg
            .endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(RegistrationError::Invalid(format!(
                "endpoint `{bad}` must be an http:// or https:// URL"
            )));
        }
        if reg.name.is_empty()
            || !reg
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(RegistrationError::Invalid(
                "`name` may only use letters, digits, `_`, `-` and `.`".into(),
            ));
        }
        let ttl = reg.ttl_seconds.unwrap_or(30);
        if !(1..=3600).contains(&ttl) {
            return Err(RegistrationError::Invalid(format!(
                "`ttl_seconds` must be 1 to 3600, got {ttl}"
            )));
        }
        let ttl = Duration::from_secs(ttl);
        let expires = Instant::now() + ttl;
        let mut agents = self.agents.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = agents.get(&reg.name) {
            let Some(exp) = &existing.expires else {
                return Err(RegistrationError::Configured(reg.name));
            };
            if existing.capabilities == reg.capabilities
                && let Some(http) = existing.runtime.as_http()
            {
                *exp.lock().unwrap_or_else(|e| e.into_inner()) = expires;
                http.set_endpoints(&reg.endpoints);
                return Ok(status(existing));
            }
        }
        let cfg = AgentConfig {
            kind: AgentKind::Http,
            description: reg.description.clone(),
            capabilities: reg.capabilities.clone(),
            endpoints: reg.endpoints.clone(),
            ..AgentConfig::default()
        };
        let runtime: Arc<dyn Agent> = Arc::new(HttpAgent::new(
            reg.endpoints.clone(),
            &cfg,
            self.client.clone(),
        ));
        let entry = Arc::new(Self::entry(
            &reg.name,
            &cfg,
            runtime,
            Some(expires),
            &self.metrics,
        ));
        self.metrics
            .agent_health
            .get_or_create(&AgentIdLabels {
                agent_id: reg.name.clone(),
            })
            .set(1);
        let shown = status(&entry);
        agents.insert(reg.name, entry);
        Ok(shown)
    }

    /// Every live agent's status.
    pub fn statuses(&self) -> Vec<AgentStatus> {
        let now = Instant::now();
        self.read()
            .values()
            .filter(|a| !a.expired(now))
            .map(|a| status(a))
            .collect()
    }

    /// Probes http agents, forgets expired remote agents and refreshes the health gauges.
    pub async fn probe(&self) {
        let now = Instant::now();
        let all: Vec<Arc<AgentEntry>> = self.read().values().cloned().collect();
        for agent in all {
            if agent.expired(now) {
                self.agents
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&agent.name);
                self.metrics
                    .agent_health
                    .get_or_create(&AgentIdLabels {
                        agent_id: agent.name.clone(),
                    })
                    .set(0);
                continue;
            }
            if let Some(http) = agent.runtime.as_http() {
                let ok = http.probe().await;
                agent.healthy.store(ok, Ordering::Relaxed);
            }
            self.metrics
                .agent_health
                .get_or_create(&AgentIdLabels {
                    agent_id: agent.name.clone(),
                })
                .set(i64::from(agent.gauge_healthy()));
        }
    }

    /// Whether every configured agent is healthy.
    pub fn all_healthy(&self) -> bool {
        self.read().values().all(|a| a.is_healthy())
    }
}

fn status(a: &AgentEntry) -> AgentStatus {
    let calls = a.calls.load(Ordering::Relaxed);
    let errors = a.errors.load(Ordering::Relaxed);
    let now = Instant::now();
    let (circuit_opened_at, circuit_closed_at) = a.observed.circuit_times();
    let (spent_tokens, spent_usd) = a.observed.spent();
    AgentStatus {
        circuit_retry_in_ms: a
            .breaker
            .retry_in(now)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        circuit_opened_at,
        circuit_closed_at,
        latency_p95_ms: a.observed.p95_ms(),
        expires_in_s: a.expires.as_ref().map(|e| {
            let at = *e.lock().unwrap_or_else(|p| p.into_inner());
            at.saturating_duration_since(now).as_secs()
        }),
        budget: a.budget,
        spent_tokens,
        spent_usd,
        id: a.name.clone(),
        kind: a.kind,
        description: a.description.clone(),
        capabilities: a.capabilities.clone(),
        status: if a.is_healthy() {
            "healthy"
        } else {
            "unhealthy"
        },
        circuit: a.breaker.state(Instant::now()).as_str(),
        in_flight: a.in_flight.load(Ordering::Relaxed),
        calls,
        error_rate: if calls == 0 {
            0.0
        } else {
            errors as f64 / calls as f64
        },
        remote: a.expires.is_some(),
        endpoints: a
            .runtime
            .as_http()
            .map(|h| {
                h.endpoint_urls()
                    .iter()
                    .map(|u| flotilla_spec::redact::redact_url(u))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
