//! `agents:`: what each agent is (its kind and behaviour) and where it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Budget, CachePolicy};
use crate::units::Dur;

/// What runs an agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Built into flotilla (echo, template, sleep, fail).
    #[default]
    Builtin,
    /// A remote HTTP service.
    Http,
    /// A subprocess speaking JSON on stdin/stdout.
    Command,
    /// An OpenAI-compatible chat-completions model.
    Llm,
}

/// What a builtin template renders.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TemplateFormat {
    /// A JSON document, with every interpolated value JSON-encoded.
    Json,
    /// Plain text.
    Text,
}

impl TemplateFormat {
    /// The format a template is rendered in: the one given, else `json` when its text
    /// (outside `{% … %}` and `{# … #}` tags) starts with `{` (not `{{`) or `[`.
    pub fn of(template: &str, given: Option<TemplateFormat>) -> TemplateFormat {
        if let Some(f) = given {
            return f;
        }
        let mut rest = template.trim_start();
        loop {
            let tag_end = if rest.starts_with("{%") {
                rest.find("%}")
            } else if rest.starts_with("{#") {
                rest.find("#}")
            } else {
                break;
            };
            match tag_end {
                Some(i) => rest = rest[i + 2..].trim_start(),
                None => break,
            }
        }
        if (rest.starts_with('{') && !rest.starts_with("{{")) || rest.starts_with('[') {
            TemplateFormat::Json
        } else {
            TemplateFormat::Text
        }
    }
}

/// The builtin behaviours.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinKind {
    /// Returns its input.
    Echo,
    /// Renders `template` with the request (`input`, `action`, …) in scope.
    Template,
    /// Waits `delay` (or `input.ms` milliseconds), then returns its input.
    Sleep,
    /// Fails with probability `failure_rate` (default 1), else returns its input.
    Fail,
}

/// One agent. (`kind` is required in a file; `Default` serves agents built in code.)
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// builtin | http | command | llm.
    pub kind: AgentKind,
    /// What it is for, shown in `/api/v1/agents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Capabilities steps may ask for with `capability:`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Per-attempt timeout for steps using this agent that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Calls in flight to this agent at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Reuse results of identical calls (same action, input and instructions) for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// Fail fast after repeated failures.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// Most a single run may spend on this agent's LLM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// builtin: which behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinKind>,
    /// builtin template: a minijinja template; its rendering is the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// builtin template: `json` (every `{{ … }}` is written as a JSON value, so input cannot
    /// break out of a string, and the rendering must parse as JSON) or `text` (the output is
    /// the rendered string). Default: `json` when the template's text starts with `{` or `[`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TemplateFormat>,
    /// builtin sleep: how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
    /// builtin fail: probability of failing, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// http: endpoints, called least-connections first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// http: path of the health probe on each endpoint's origin (default `/health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// http: extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// command: program and arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// command: extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// command: working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// llm: provider name from `llm.providers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// llm: model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// llm: system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// llm: sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// llm: completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// llm: stream the answer (`stream: true`), which measures the time to the first token
    /// and the output tokens per second; the answer is used once complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// llm: JSON Schema the answer must follow (structured output); the output is then JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
}

/// Circuit breaker thresholds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the circuit.
    #[serde(default = "default_failures")]
    pub failure_threshold: u32,
    /// How long it stays open before letting a probe through (half-open).
    #[serde(default = "default_reset")]
    pub reset_timeout: Dur,
    /// Successes in half-open that close it again.
    #[serde(default = "default_half_open")]
    pub half_open_successes: u32,
}

fn default_failures() -> u32 {
    5
}
fn default_reset() -> Dur {
    Dur::secs(60)
}
fn default_half_open() -> u32 {
    3
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_failures(),
            reset_timeout: default_reset(),
            half_open_successes: default_half_open(),
        }
    }
}

impl AgentConfig {
    /// What the agent does, as a run pins it: its kind, the builtin settings, the command
    /// and its arguments, the LLM provider name, model, prompts and sampling. Where it is
    /// and how it is operated (endpoints, headers, env, health path, capabilities, timeout,
    /// concurrency, cache, breaker, budget) are left out: they stay live for runs in flight.
    pub fn behaviour(&self) -> AgentConfig {
        AgentConfig {
            kind: self.kind,
            builtin: self.builtin,
            template: self.template.clone(),
            format: self.format,
            delay: self.delay,
            failure_rate: self.failure_rate,
            command: self.command.clone(),
            working_dir: self.working_dir.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            system: self.system.clone(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            stream: self.stream,
            response_schema: self.response_schema.clone(),
            ..AgentConfig::default()
        }
    }

    /// This (live) agent doing what `pinned` (a [`behaviour`](Self::behaviour)) says.
    pub fn with_behaviour(&self, pinned: &AgentConfig) -> AgentConfig {
        let b = pinned.behaviour();
        AgentConfig {
            kind: b.kind,
            builtin: b.builtin,
            template: b.template,
            format: b.format,
            delay: b.delay,
            failure_rate: b.failure_rate,
            command: b.command,
            working_dir: b.working_dir,
            provider: b.provider,
            model: b.model,
            system: b.system,
            temperature: b.temperature,
            max_tokens: b.max_tokens,
            stream: b.stream,
            response_schema: b.response_schema,
            ..self.clone()
        }
    }

    /// Whether this agent does what `pinned` says.
    pub fn behaves_as(&self, pinned: &AgentConfig) -> bool {
        serde_json::to_value(self.behaviour()).ok() == serde_json::to_value(pinned.behaviour()).ok()
    }
}
