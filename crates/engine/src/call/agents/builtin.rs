//! Builtin agents: echo, template, sleep, fail — enough to run every example without keys.

use std::time::Duration;

use async_trait::async_trait;
use flotilla_spec::{AgentConfig, BuiltinKind, TemplateFormat, template};
use serde_json::{Value, json};

use super::{Agent, AgentError, AgentRequest, AgentResponse};

pub(super) struct Builtin {
    kind: BuiltinKind,
    template: Option<String>,
    format: TemplateFormat,
    delay: Option<Duration>,
    failure_rate: f64,
}

impl Builtin {
    pub(super) fn new(cfg: &AgentConfig) -> Self {
        Self {
            kind: cfg.builtin.unwrap_or(BuiltinKind::Echo),
            template: cfg.template.clone(),
            format: TemplateFormat::of(cfg.template.as_deref().unwrap_or(""), cfg.format),
            delay: cfg.delay.map(|d| d.0),
            failure_rate: cfg.failure_rate.unwrap_or(1.0),
        }
    }
}

#[async_trait]
impl Agent for Builtin {
    async fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
        match self.kind {
            BuiltinKind::Echo => Ok(AgentResponse::output(req.input.clone())),
            BuiltinKind::Template => {
                let ctx = template::context(&json!({
                    "input": req.input,
                    "action": req.action,
                    "instructions": req.instructions,
                    "run_id": req.run_id,
                    "step_id": req.step_id,
                    "attempt": req.attempt,
                }));
                let source = self.template.clone().unwrap_or_default();
                let format = self.format;
                // Rendering is CPU work of unknown size: off the async workers, so that it
                // never stalls other requests, and bounded by the template fuel.
                let output = tokio::task::spawn_blocking(move || match format {
                    TemplateFormat::Json => template::render_json(&source, &ctx),
                    TemplateFormat::Text => template::render_str(&source, &ctx).map(Value::String),
                })
                .await
                .map_err(|e| AgentError::permanent(format!("the template rendering stopped: {e}")))?
                .map_err(|e| AgentError::permanent(e.to_string()))?;
                Ok(AgentResponse::output(output))
            }
            BuiltinKind::Sleep => {
                let delay = req
                    .input
                    .get("ms")
                    .and_then(Value::as_u64)
                    .map(Duration::from_millis)
                    .or(self.delay)
                    .unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(delay).await;
                Ok(AgentResponse::output(req.input.clone()))
            }
            BuiltinKind::Fail => {
                // `input.fail: true|false` forces the outcome, for drills and tests.
                let fail = match req.input.get("fail").and_then(Value::as_bool) {
                    Some(forced) => forced,
                    None => rand::random::<f64>() < self.failure_rate,
                };
                if fail {
                    Err(AgentError::retryable(format!(
                        "injected failure in action `{}`",
                        req.action
                    )))
                } else {
                    Ok(AgentResponse::output(req.input.clone()))
                }
            }
        }
    }
}
