//! LLM agents: OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, llama.cpp…).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_spec::{AgentConfig, Config, ModelPrice, StructuredOutput};
use serde_json::{Value, json};

use super::{Agent, AgentError, AgentRequest, AgentResponse, Usage};
use crate::metrics::{GenAiLabels, GenAiTokenLabels, LlmLabels, LlmTokenLabels, Metrics};

/// Tries per call when the provider answers 429 or 5xx.
const PROVIDER_TRIES: u32 = 3;

/// Answers per call when the model's output does not match `response_schema`: each retry
/// gives the model its answer and the validation errors back.
const STRUCTURED_TRIES: u32 = 3;

/// What `auto` learned about each provider (by base URL): the mode that worked once the
/// provider refused `json_schema`. Keyed by configured providers only, so bounded.
static LEARNED: LazyLock<Mutex<HashMap<String, StructuredOutput>>> = LazyLock::new(Mutex::default);

/// The mode to try after `mode` was refused (`None`: nothing left).
fn fallback(mode: StructuredOutput) -> Option<StructuredOutput> {
    match mode {
        StructuredOutput::Auto | StructuredOutput::JsonSchema => Some(StructuredOutput::JsonObject),
        StructuredOutput::JsonObject => Some(StructuredOutput::Prompt),
        _ => None,
    }
}

pub(super) struct LlmAgent {
    name: String,
    url: String,
    base_url: String,
    provider: String,
    stream: bool,
    structured: StructuredOutput,
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
            base_url: provider.map(|p| p.base_url.clone()).unwrap_or_default(),
            provider: cfg.provider.clone().unwrap_or_default(),
            stream: cfg.stream,
            structured: provider.map(|p| p.structured_output).unwrap_or_default(),
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

    /// The mode to ask for a schema with now.
    fn mode(&self) -> StructuredOutput {
        match self.structured {
            StructuredOutput::Auto => LEARNED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.base_url)
                .copied()
                .unwrap_or(StructuredOutput::JsonSchema),
            m => m,
        }
    }

    fn body(&self, req: &AgentRequest) -> Value {
        self.body_in(req, self.mode(), &[])
    }

    /// The request in `mode`, with `extra` messages after the user's (earlier answers and
    /// what was wrong with them).
    fn body_in(&self, req: &AgentRequest, mode: StructuredOutput, extra: &[Value]) -> Value {
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
        let user = match (&self.response_schema, mode) {
            (Some(schema), StructuredOutput::Prompt) => format!(
                "{user}\n\nAnswer with only a JSON value (no prose, no code fence) that matches this JSON Schema:\n{schema}"
            ),
            _ => user,
        };
        messages.push(json!({"role": "user", "content": user}));
        messages.extend(extra.iter().cloned());
        let mut body = json!({"model": self.model, "messages": messages});
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if self.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        if let Some(schema) = &self.response_schema {
            match mode {
                StructuredOutput::Auto | StructuredOutput::JsonSchema => {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": {"name": "output", "schema": schema, "strict": true}
                    });
                }
                StructuredOutput::JsonObject => {
                    body["response_format"] = json!({"type": "json_object", "schema": schema});
                }
                StructuredOutput::Ollama => body["format"] = schema.clone(),
                StructuredOutput::Prompt => {}
            }
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
        for (kind, n) in [("input", prompt), ("output", completion)] {
            self.metrics
                .gen_ai_tokens
                .get_or_create(&GenAiTokenLabels {
                    gen_ai_operation_name: "chat".into(),
                    gen_ai_provider_name: self.provider.clone(),
                    gen_ai_request_model: self.model.clone(),
                    gen_ai_token_type: kind.into(),
                })
                .observe(n as f64);
        }
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_usd: cost,
        }
    }

    fn gen_ai(&self) -> GenAiLabels {
        GenAiLabels {
            gen_ai_operation_name: "chat".into(),
            gen_ai_provider_name: self.provider.clone(),
            gen_ai_request_model: self.model.clone(),
        }
    }

    /// Reads a streamed answer (server-sent events of chunks) into the shape of a whole one,
    /// recording the time to the first token and the output rate on the current span.
    async fn read_stream(
        &self,
        mut resp: reqwest::Response,
        started: std::time::Instant,
    ) -> Result<Value, AgentError> {
        let mut buffer = Vec::new();
        let mut content = String::new();
        let mut usage = Value::Null;
        let mut chunks = 0u64;
        let mut first: Option<std::time::Instant> = None;
        // Whether the answer is complete: `[DONE]`, or a choice's finish_reason (some servers
        // end the stream abruptly after it, which is then no error).
        let mut finished = false;
        let mut done = false;
        while !done {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) if finished => break,
                Err(e) => {
                    return Err(AgentError::retryable(format!(
                        "the {} stream broke: {}",
                        self.model,
                        super::error_text(e)
                    )));
                }
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let Ok(event) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if event
                    .pointer("/choices/0/finish_reason")
                    .is_some_and(|r| !r.is_null())
                {
                    finished = true;
                }
                if let Some(piece) = event
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                {
                    if first.is_none() {
                        let now = std::time::Instant::now();
                        first = Some(now);
                        self.metrics
                            .gen_ai_ttft
                            .get_or_create(&self.gen_ai())
                            .observe((now - started).as_secs_f64());
                        tracing::Span::current().record(
                            "gen_ai.server.time_to_first_token",
                            (now - started).as_secs_f64(),
                        );
                    }
                    chunks += 1;
                    content.push_str(piece);
                }
                if event.get("usage").is_some_and(|u| !u.is_null()) {
                    usage = event["usage"].clone();
                }
            }
        }
        if !done && !finished {
            // Cut off (llama.cpp's server interrupts a stream when another request comes,
            // unless started with --interrupt_requests false): not an answer.
            return Err(AgentError::retryable(format!(
                "the {} stream ended before the answer was complete",
                self.model
            )));
        }
        if usage.is_null() {
            // A server that sends no usage in its stream: each content chunk is a token.
            usage = json!({"prompt_tokens": 0, "completion_tokens": chunks});
        }
        if let (Some(first), Some(n)) = (first, usage["completion_tokens"].as_u64()) {
            let generating = first.elapsed().as_secs_f64();
            if generating > 0.0 {
                tracing::Span::current()
                    .record("gen_ai.output_tokens_per_second", n as f64 / generating);
            }
        }
        Ok(
            json!({"choices": [{"message": {"role": "assistant", "content": content}}], "usage": usage}),
        )
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
        let mut mode = self.mode();
        let mut extra: Vec<Value> = Vec::new();
        let mut total: Option<Usage> = None;
        let mut answers = 0;
        loop {
            let answer = match self.send(req, &self.body_in(req, mode, &extra)).await {
                Ok(a) => a,
                Err(Refusal::Format(text)) if self.response_schema.is_some() => {
                    // The provider does not take this way of asking for a schema: `auto`
                    // moves to the next one and remembers it for the provider.
                    let next = (self.structured == StructuredOutput::Auto)
                        .then(|| fallback(mode))
                        .flatten();
                    let Some(next) = next else {
                        return Err(AgentError::permanent(format!(
                            "the provider refused structured output ({mode:?}): {text}"
                        )));
                    };
                    tracing::info!(agent = %self.name, from = ?mode, to = ?next, "provider refused a structured-output mode; falling back");
                    LEARNED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(self.base_url.clone(), next);
                    mode = next;
                    continue;
                }
                Err(Refusal::Format(text)) => {
                    return Err(AgentError::permanent(format!("provider answered {text}")));
                }
                Err(Refusal::Error(e)) => return Err(e),
            };
            answers += 1;
            if let Some(u) = answer.get("usage").map(|u| self.record_usage(u)) {
                let t = total.get_or_insert(Usage {
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost_usd: 0.0,
                });
                t.prompt_tokens += u.prompt_tokens;
                t.completion_tokens += u.completion_tokens;
                t.cost_usd += u.cost_usd;
            }
            let content = answer
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    AgentError::retryable("provider answer has no choices[0].message.content")
                })?;
            let Some(schema) = &self.response_schema else {
                return Ok(AgentResponse {
                    output: Value::String(content.to_owned()),
                    usage: total,
                });
            };
            let problems = match check(schema, content) {
                Ok(output) => {
                    return Ok(AgentResponse {
                        output,
                        usage: total,
                    });
                }
                Err(CheckError::Schema(e)) => {
                    return Err(AgentError::permanent(format!(
                        "invalid response_schema: {e}"
                    )));
                }
                Err(CheckError::Output(problems)) => problems,
            };
            if answers >= STRUCTURED_TRIES {
                return Err(AgentError::Failed {
                    message: format!(
                        "model output does not match response_schema after {answers} answers: {}",
                        problems.join("; ")
                    ),
                    retryable: false,
                });
            }
            self.metrics
                .llm_structured_retries
                .get_or_create(&LlmLabels {
                    agent: self.name.clone(),
                    model: self.model.clone(),
                })
                .inc();
            extra.push(json!({"role": "assistant", "content": content}));
            extra.push(json!({"role": "user", "content": format!(
                "That answer does not match the JSON Schema: {}. Answer again with only the corrected JSON.",
                problems.join("; ")
            )}));
        }
    }
}

/// Why a request got no answer.
enum Refusal {
    /// The provider refused the request's form (a 400 or 422 that names `response_format`
    /// or `format`): another structured-output mode may work.
    Format(String),
    /// Anything else.
    Error(AgentError),
}

enum CheckError {
    /// The configured schema does not compile.
    Schema(String),
    /// The output is not JSON or does not match: what is wrong.
    Output(Vec<String>),
}

/// Parses and validates a model's answer against the schema. A fenced answer
/// (```json … ```) is read inside its fence: small models add one.
fn check(schema: &Value, content: &str) -> Result<Value, CheckError> {
    let text = content.trim();
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .map_or(text, str::trim);
    let parsed: Value = serde_json::from_str(text)
        .map_err(|e| CheckError::Output(vec![format!("the answer is not JSON ({e})")]))?;
    let validator =
        jsonschema::validator_for(schema).map_err(|e| CheckError::Schema(e.to_string()))?;
    let problems: Vec<String> = validator
        .iter_errors(&parsed)
        .map(|e| e.to_string())
        .collect();
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(CheckError::Output(problems))
    }
}

impl LlmAgent {
    /// Sends one request, retrying 429 and 5xx as the provider asks.
    async fn send(&self, req: &AgentRequest, body: &Value) -> Result<Value, Refusal> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut builder = self
                .client
                .post(&self.url)
                .header("traceparent", &req.traceparent)
                .json(body);
            if let Some(key) = &self.api_key {
                builder = builder.bearer_auth(key);
            }
            let started = std::time::Instant::now();
            let sent = builder.send().await;
            let duration = self
                .metrics
                .gen_ai_duration
                .get_or_create(&self.gen_ai())
                .clone();
            let resp = sent.map_err(|e| {
                duration.observe(started.elapsed().as_secs_f64());
                Refusal::Error(AgentError::retryable(format!(
                    "calling the {} provider: {}",
                    self.model,
                    super::error_text(e)
                )))
            })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if status.is_success() {
                // A provider that does not stream answers whole JSON: read it as such.
                let streamed = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.contains("event-stream"));
                let answer = if self.stream && streamed {
                    self.read_stream(resp, started)
                        .await
                        .map_err(Refusal::Error)
                } else {
                    resp.json().await.map_err(|e| {
                        Refusal::Error(AgentError::retryable(format!(
                            "provider answered invalid JSON: {}",
                            super::error_text(e)
                        )))
                    })
                };
                duration.observe(started.elapsed().as_secs_f64());
                return answer;
            }
            duration.observe(started.elapsed().as_secs_f64());
            let text: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            // A refusal of the request's form names the field; llama.cpp's server answers
            // its validation errors with a 500.
            if (status.is_client_error() || status.is_server_error())
                && status.as_u16() != 429
                && (text.contains("response_format") || text.contains("json_schema"))
            {
                return Err(Refusal::Format(format!("{status}: {text}")));
            }
            let retryable = status.as_u16() == 429 || status.is_server_error();
            if !retryable || tries >= PROVIDER_TRIES {
                return Err(Refusal::Error(AgentError::Failed {
                    message: format!("provider answered {status}: {text}"),
                    retryable,
                }));
            }
            let wait = retry_after.unwrap_or(Duration::from_millis(250 * u64::from(tries)));
            let left = Duration::from_millis(
                u64::try_from(req.deadline - crate::clock::now_ms()).unwrap_or(0),
            );
            if wait >= left {
                return Err(Refusal::Error(AgentError::retryable(format!(
                    "provider answered {status}; Retry-After exceeds the attempt deadline"
                ))));
            }
            tokio::time::sleep(wait).await;
        }
    }
}
