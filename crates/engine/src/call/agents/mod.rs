//! Agent runtimes: one file per kind.

mod builtin;
mod command;
mod http;
mod llm;

use std::sync::Arc;

use async_trait::async_trait;
use flotilla_spec::{AgentConfig, AgentKind, Config};
use serde::Serialize;
use serde_json::Value;

use crate::error::ErrorKind;
use crate::metrics::Metrics;

pub use http::HttpAgent;

/// What an agent is asked to do (also the JSON body sent to http and command agents).
#[derive(Debug, Clone, Serialize)]
pub struct AgentRequest {
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// Action name.
    pub action: String,
    /// Rendered input.
    pub input: Value,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Deadline of this attempt, unix milliseconds.
    pub deadline: i64,
    /// Rendered instructions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Rendered prompt (llm agents).
    #[serde(skip)]
    pub prompt: Option<String>,
    /// `Idempotency-Key`: `<run>/<step>`, the same for every attempt.
    #[serde(skip)]
    pub idempotency_key: String,
    /// W3C `traceparent` to propagate.
    #[serde(skip)]
    pub traceparent: String,
}

pub use flotilla_store::Usage;

/// An agent's answer.
#[derive(Debug, Clone)]
pub struct AgentResponse {
    /// The output.
    pub output: Value,
    /// Token usage, for llm agents.
    pub usage: Option<Usage>,
}

impl AgentResponse {
    /// An agent's answer: `{"output": …}` gives the output, anything else is the output.
    pub fn unwrapped(answer: Value) -> AgentResponse {
        let output = match answer {
            Value::Object(mut m) if m.contains_key("output") => {
                m.remove("output").unwrap_or(Value::Null)
            }
            other => other,
        };
        AgentResponse::output(output)
    }

    /// An output without usage.
    pub fn output(output: Value) -> Self {
        Self {
            output,
            usage: None,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error or an unusable answer.
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// The attempt ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The agent cannot be called now (circuit open, no healthy endpoint).
    #[error("{0}")]
    Unavailable(String),
}

impl AgentError {
    /// A failure that another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        AgentError::Failed {
            message: message.into(),
            retryable: true,
        }
    }
    /// A failure that another attempt will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        AgentError::Failed {
            message: message.into(),
            retryable: false,
        }
    }
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Failed { retryable, .. } => *retryable,
            AgentError::Timeout(_) | AgentError::Unavailable(_) => true,
        }
    }
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Failed { .. } => ErrorKind::AgentError,
            AgentError::Timeout(_) => ErrorKind::Timeout,
            AgentError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}

/// An agent runtime.
#[async_trait]
pub trait Agent: Send + Sync {
    /// Makes one call. The caller enforces the attempt timeout by dropping the future.
    async fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError>;

    /// The most this call may cost, estimated before it is made (llm agents): budgets refuse
    /// a call whose estimate would take the spend past them.
    fn estimate(&self, _req: &AgentRequest) -> Option<Usage> {
        None
    }

    /// The http runtime, for health probes and registration of endpoints.
    fn as_http(&self) -> Option<&HttpAgent> {
        None
    }
}

/// Builds the runtime for a configured agent.
pub fn build(
    name: &str,
    agent: &AgentConfig,
    config: &Config,
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Arc<dyn Agent> {
    match agent.kind {
        AgentKind::Builtin => Arc::new(builtin::Builtin::new(agent)),
        AgentKind::Http => Arc::new(HttpAgent::new(
            agent.endpoints.clone(),
            agent,
            client.clone(),
        )),
        AgentKind::Command => Arc::new(command::CommandAgent::new(name, agent)),
        AgentKind::Llm => Arc::new(llm::LlmAgent::new(
            name,
            agent,
            config,
            client.clone(),
            metrics.clone(),
        )),
    }
}

/// A reqwest error without the URL it carries (URLs may hold credentials; callers name the
/// endpoint themselves).
fn error_text(e: reqwest::Error) -> String {
    e.without_url().to_string()
}
