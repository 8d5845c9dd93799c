//! LLM agents: OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, llama.cpp…).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_spec::{AgentConfig, Config, ModelPrice};
use serde_json::{Value, json};

use super::{Agent, AgentError, AgentRequest, AgentResponse, Usage};
use crate::metrics::{LlmLabels, LlmTokenLabels, Metrics};

/// Tries per call when the provider answers 429 or 5xx.
const PROVIDER_TRIES: u32 = 3;

pub(super) struct LlmAgent {
    name: String,
    url: String,
    api_key: Option<String>,
    model: String,
    system: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    response_schema: Option<Value>,
    price: Option<ModelPrice>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl LlmAgent {
    pub(super) fn new(
        name: &str,
        cfg: &AgentConfig,
        config: &Config,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        let provider = cfg
            .provider
            .as_deref()
            .and_then(|p| config.llm.providers.get(p));
        let model = cfg.model.clone().unwrap_or_default();
        Self {
            name: name.to_owned(),
            url: provider
                .map(|p| format!("{}/chat/completions", p.base_url.trim_end_matches('/')))
                .unwrap_or_default(),
            api_key: provider
                .and_then(|p| p.api_key.clone())
                .filter(|k| !k.is_empty()),
            price: config.llm.pricing.get(&model).copied(),
            model,
            system: cfg.system.clone(),
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            response_schema: cfg.response_schema.clone(),
            client,
            metrics,
        }
    }

    fn body(&self, req: &AgentRequest) -> Value {
        let user = match &req.prompt {
            Some(p) => p.clone(),
            None => {
                let mut text = String::new();
                if let Some(i) = &req.instructions {
                    text.push_str(i);
                    text.push_str("\n\n");
                }
                text.push_str(&format!("Action: {}\nInput: {}", req.action, req.input));
                text
            }
        };
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": user}));
        let mut body = json!({"model": self.model, "messages": messages});
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(schema) = &self.response_schema {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": true}
            });
        }
        body
    }

    /// USD for these tokens at the model's price (0 without one).
    fn cost(&self, prompt: u64, completion: u64) -> f64 {
        self.price.map_or(0.0, |p| {
            prompt as f64 / 1000.0 * p.prompt_per_1k
                + completion as f64 / 1000.0 * p.completion_per_1k
        })
    }

    fn record_usage(&self, usage: &Value) -> Usage {
        let prompt = usage
            .get("prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let completion = usage
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let cost = self.cost(prompt, completion);
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            self.metrics
                .llm_tokens
                .get_or_create(&LlmTokenLabels {
                    agent: self.name.clone(),
                    model: self.model.clone(),
                    kind: kind.into(),
                })
                .inc_by(n);
        }
        self.metrics
            .llm_cost
            .get_or_create(&LlmLabels {
                agent: self.name.clone(),
                model: self.model.clone(),
            })
            .inc_by(cost);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: cost,
        }
    }
}

/// Characters per token for estimates: English text averages about four.
const CHARS_PER_TOKEN: usize = 4;

#[async_trait]
impl Agent for LlmAgent {
    /// Prompt tokens from the length of the messages, completion tokens from `max_tokens`.
    fn estimate(&self, req: &AgentRequest) -> Option<Usage> {
        let chars: usize = self.body(req)["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str())
            .map(|c| c.chars().count())
            .sum();
        let prompt = chars.div_ceil(CHARS_PER_TOKEN) as u64;
        let completion = u64::from(self.max_tokens.unwrap_or(0));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: self.cost(prompt, completion),
        })
    }

    async fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
        let body = self.body(req);
        let mut tries = 0;
        let answer: Value = loop {
            tries += 1;
            let mut builder = self
                .client
                .post(&self.url)
                .header("traceparent", &req.traceparent)
                .json(&body);
            if let Some(key) = &self.api_key {
                builder = builder.bearer_auth(key);
            }
            let resp = builder.send().await.map_err(|e| {
                AgentError::retryable(format!(
                    "calling the {} provider: {}",
                    self.model,
                    super::error_text(&e)
                ))
            })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if status.is_success() {
                break resp.json().await.map_err(|e| {
                    AgentError::retryable(format!(
                        "provider answered invalid JSON: {}",
                        super::error_text(&e)
                    ))
                })?;
            }
            let text: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let retryable = status.as_u16() == 429 || status.is_server_error();
            if !retryable || tries >= PROVIDER_TRIES {
                return Err(AgentError::Failed {
                    message: format!("provider answered {status}: {text}"),
                    retryable,
                });
            }
            let wait = retry_after.unwrap_or(Duration::from_millis(250 * u64::from(tries)));
            let left = Duration::from_millis(
                u64::try_from(req.deadline - crate::clock::now_ms()).unwrap_or(0),
            );
            if wait >= left {
                return Err(AgentError::retryable(format!(
                    "provider answered {status}; Retry-After exceeds the attempt deadline"
                )));
            }
            tokio::time::sleep(wait).await;
        };
        let usage = answer.get("usage").map(|u| self.record_usage(u));
        let content = answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                AgentError::retryable("provider answer has no choices[0].message.content")
            })?;
        let output = if let Some(schema) = &self.response_schema {
            let parsed: Value = serde_json::from_str(content)
                .map_err(|e| AgentError::retryable(format!("model output is not JSON: {e}")))?;
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| AgentError::permanent(format!("invalid response_schema: {e}")))?;
            let problems: Vec<String> = validator
                .iter_errors(&parsed)
                .map(|e| e.to_string())
                .collect();
            if !problems.is_empty() {
                return Err(AgentError::retryable(format!(
                    "model output does not match response_schema: {}",
                    problems.join("; ")
                )));
            }
            parsed
        } else {
            Value::String(content.to_owned())
        };
        Ok(AgentResponse { output, usage })
    }
}
