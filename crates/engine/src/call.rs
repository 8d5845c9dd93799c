//! One agent call: target resolution, the budget check, the call span and its
//! `traceparent`, under the concurrency limits and the agent's circuit breaker.

use std::time::Duration;

use flotilla_spec::Priority;
use tracing::Instrument;

use crate::agents::{AgentError, AgentRequest, AgentResponse};
use crate::budget::Spend;
use crate::engine::Shared;

/// Who serves a call.
pub(crate) enum Target {
    Agent(String),
    Capability(String),
}

/// One agent call under the concurrency limits and the agent's circuit breaker; with
/// `spend`, refused before it is made when it would break a budget.
pub(crate) async fn call(
    shared: &Shared,
    target: Target,
    req: AgentRequest,
    timeout: Duration,
    priority: Priority,
    spend: Option<&Spend>,
) -> (Option<String>, Result<AgentResponse, AgentError>) {
    let entry = match &target {
        Target::Agent(name) => shared
            .registry
            .get(name)
            .ok_or_else(|| AgentError::Unavailable(format!("agent `{name}` is not available"))),
        Target::Capability(cap) => shared.registry.for_capability(cap),
    };
    let entry = match entry {
        Ok(e) => e,
        Err(e) => return (None, Err(e)),
    };
    if let Some(spend) = spend
        && let Err(e) = spend.check(&entry, &req, &shared.metrics)
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
    let mut req = req;
    if let Some(tp) = crate::trace::traceparent(&span) {
        req.traceparent = tp;
    }
    let result = entry
        .call(&shared.gate, &req, timeout, priority)
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
