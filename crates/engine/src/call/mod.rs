//! The one path of an agent call: target resolution, the result cache, the budget check,
//! the call span and its `traceparent`, under the concurrency gates and the agent's circuit
//! breaker. Everything a call takes (a gate slot, `in_flight`, a half-open probe) is given
//! back by a guard when the call is dropped mid-await.
//!
//! The folder holds the fleet: the [`registry`](registry) of agents and the four agent
//! kinds ([`agents`]), the [`gate`]s, the [`breaker`]s, the [`cache`] and the [`budget`]
//! check. It knows nothing of runs: a run hands it a [`Call`] and gets a result back.

pub mod agents;
pub mod breaker;
pub(crate) mod budget;
pub mod cache;
pub mod gate;
mod observed;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_spec::{AgentConfig, CachePolicy, Priority};
use tracing::Instrument;

use agents::{Agent, AgentError, AgentRequest, AgentResponse};
use budget::Spend;
use cache::ResultCache;
use gate::Gate;
use registry::{AgentEntry, Registry};

use crate::metrics::Metrics;

/// Who serves a call.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Agent(String),
    Capability(String),
}

impl Target {
    /// A step's (or compensation's) `agent:` or `capability:`; `fallback` when it names
    /// neither.
    pub(crate) fn of(
        agent: &Option<String>,
        capability: &Option<String>,
        fallback: &str,
    ) -> Target {
        match (agent, capability) {
            (Some(a), _) => Target::Agent(a.clone()),
            (None, Some(c)) => Target::Capability(c.clone()),
            (None, None) => Target::Agent(fallback.to_owned()),
        }
    }

    /// The cache's name for who answered.
    fn cache_name(&self) -> String {
        match self {
            Target::Agent(name) => format!("agent:{name}"),
            Target::Capability(cap) => format!("capability:{cap}"),
        }
    }
}

/// The agent behaviour a run pinned when it started, and the runtimes built from it (one
/// per agent, the first time the run's definition calls it).
pub(crate) struct Pins {
    behaviours: BTreeMap<String, AgentConfig>,
    /// `None`: the live agent does what was pinned.
    built: Mutex<HashMap<String, Option<Arc<dyn Agent>>>>,
}

impl Pins {
    pub(crate) fn new(behaviours: BTreeMap<String, AgentConfig>) -> Pins {
        Pins {
            behaviours,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The runtime to call `entry` with: `None` for its own (nothing pinned, or the live
    /// agent behaves as pinned).
    fn runtime(&self, entry: &AgentEntry, registry: &Registry) -> Option<Arc<dyn Agent>> {
        let pinned = self.behaviours.get(&entry.name)?;
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        // Every call after the first is a lookup: no allocation on the call path.
        if let Some(runtime) = built.get(&entry.name) {
            return runtime.clone();
        }
        let runtime =
            (!entry.config.behaves_as(pinned)).then(|| registry.build_pinned(entry, pinned));
        built.insert(entry.name.clone(), runtime.clone());
        runtime
    }
}

/// One call, fully described.
pub(crate) struct Call {
    pub target: Target,
    /// The behaviour the run pinned.
    pub pins: Arc<Pins>,
    pub req: AgentRequest,
    pub timeout: Duration,
    pub priority: Priority,
    /// Whether the result may come from, and go to, the result cache (not for a
    /// compensation, which must reach its agent).
    pub cacheable: bool,
    /// The step's `cache:`, when set (else the agent's).
    pub cache: Option<CachePolicy>,
    /// What the run spent so far, for the budget check (none for compensations).
    pub spend: Option<Spend>,
}

/// Who answered (when an agent was chosen) and what.
pub(crate) type Answer = (Option<String>, Result<AgentResponse, AgentError>);

/// The agents and what every call to them goes through.
pub(crate) struct Fleet {
    pub registry: Registry,
    pub gate: Arc<Gate>,
    pub cache: ResultCache,
    pub metrics: Arc<Metrics>,
    /// `engine.default_timeout`.
    pub default_timeout: Duration,
}

impl Fleet {
    /// A call's attempt timeout: the step's, else the agent's, else the engine's default.
    pub(crate) fn timeout_for(&self, step_timeout: Option<Duration>, target: &Target) -> Duration {
        let agent_timeout = match target {
            Target::Agent(name) => self.registry.get(name).and_then(|a| a.timeout),
            Target::Capability(_) => None,
        };
        step_timeout
            .or(agent_timeout)
            .unwrap_or(self.default_timeout)
    }

    /// Makes a call: from the result cache when it is marked `cache:` and a result is
    /// there, else through the agent (its result cached on success).
    pub(crate) async fn call(&self, call: Call) -> Answer {
        let policy = call.cache.or_else(|| match &call.target {
            Target::Agent(name) => self.registry.get(name).and_then(|a| a.cache),
            Target::Capability(_) => None,
        });
        let policy = policy.filter(|_| call.cacheable);
        let cached = policy.map(|p| {
            let req = &call.req;
            let key = cache::key(
                &call.target.cache_name(),
                &req.action,
                &req.input,
                req.instructions.as_deref(),
            );
            (key, p.ttl.0)
        });
        if let Some((key, _)) = &cached
            && let Some(output) = self.cache.get(key).await
        {
            return (None, Ok(AgentResponse::output(output)));
        }
        let answer = self.call_agent(call).await;
        if let (Some((key, ttl)), (_, Ok(resp))) = (cached, &answer) {
            self.cache.put(key, resp.output.clone(), ttl).await;
        }
        answer
    }

    /// One agent call under the concurrency limits and the agent's circuit breaker; with a
    /// spend, refused before it is made when it would break a budget.
    async fn call_agent(&self, call: Call) -> Answer {
        let Call {
            target,
            pins,
            mut req,
            timeout,
            priority,
            spend,
            ..
        } = call;
        let entry = match &target {
            Target::Agent(name) => self
                .registry
                .get(name)
                .ok_or_else(|| AgentError::Unavailable(format!("agent `{name}` is not available"))),
            Target::Capability(cap) => self.registry.for_capability(cap),
        };
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return (None, Err(e)),
        };
        if let Some(spend) = &spend
            && let Err(e) = spend.check(&entry, &req, &self.metrics)
        {
            return (Some(entry.name.clone()), Err(e));
        }
        let span = tracing::info_span!(
            "agent",
            otel.name = %format!("call {}", entry.name),
            otel.kind = "client",
            "flotilla.agent.name" = %entry.name,
            "flotilla.action" = %req.action,
            "gen_ai.usage.input_tokens" = tracing::field::Empty,
            "gen_ai.usage.output_tokens" = tracing::field::Empty,
            "gen_ai.server.time_to_first_token" = tracing::field::Empty,
            "gen_ai.output_tokens_per_second" = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(tp) = crate::trace::traceparent(&span) {
            req.traceparent = tp;
        }
        let runtime = pins.runtime(&entry, &self.registry);
        let result = entry
            .call(&self.gate, &req, timeout, priority, runtime.as_ref())
            .instrument(span.clone())
            .await;
        match &result {
            Ok(AgentResponse { usage: Some(u), .. }) => {
                let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                span.record("gen_ai.usage.input_tokens", count(u.prompt_tokens));
                span.record("gen_ai.usage.output_tokens", count(u.completion_tokens));
            }
            Ok(_) => {}
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        (Some(entry.name.clone()), result)
    }
}
