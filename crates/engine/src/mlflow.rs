//! Workflow runs recorded as MLflow runs, through MLflow's REST API.
//!
//! Finished runs are handed to a background task over a bounded queue and never waited
//! for: when MLflow is slow or down, summaries are dropped (counted, and a warning is logged
//! at most once a minute), and workflows go on at full speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use flotilla_store::{RunStatus, Usage};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::metrics::Metrics;

/// Summaries waiting to be sent; beyond this they are dropped.
const QUEUE: usize = 1024;
/// Longest one MLflow request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two warnings about MLflow.
const WARN_EVERY_MS: i64 = 60_000;
/// Longest input summary kept as a parameter.
const INPUT_SUMMARY_CHARS: usize = 250;

/// What MLflow is told about a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// flotilla's run id.
    pub run_id: String,
    /// Workflow name.
    pub workflow: String,
    /// Hash of the definition the run pinned.
    pub definition_hash: String,
    /// Run input.
    pub input: Value,
    /// How it ended.
    pub status: RunStatus,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds.
    pub finished_at: i64,
    /// Steps in the workflow.
    pub steps: usize,
    /// LLM tokens and cost.
    pub usage: Usage,
}

/// Sends run summaries to an MLflow tracking server in the background.
#[derive(Clone)]
pub struct Tracker {
    queue: mpsc::Sender<RunSummary>,
    warned_at: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
}

impl Tracker {
    /// Starts the background sender for `tracking_uri`, runs going to `experiment`.
    pub fn start(
        tracking_uri: &str,
        experiment: &str,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Tracker {
        let (queue, rx) = mpsc::channel(QUEUE);
        let warned_at = Arc::new(AtomicI64::new(i64::MIN / 2));
        let tracker = Tracker {
            queue,
            warned_at,
            metrics,
        };
        let api = Api {
            base: format!("{}/api/2.0/mlflow", tracking_uri.trim_end_matches('/')),
            client,
            experiment: experiment.to_owned(),
            experiment_id: None,
        };
        tokio::spawn(api.run(rx, tracker.clone()));
        tracker
    }

    /// Queues a finished run; never waits.
    pub fn record(&self, summary: RunSummary) {
        if self.queue.try_send(summary).is_err() {
            self.failed("the MLflow queue is full; run summaries are being dropped");
        }
    }

    fn failed(&self, why: &str) {
        self.metrics.mlflow_export_errors.inc();
        let now = now_ms();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %why, "MLflow tracking failed; workflows are unaffected (further failures are counted in mlflow_export_errors_total)");
        }
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
    experiment: String,
    experiment_id: Option<String>,
}

impl Api {
    async fn run(mut self, mut rx: mpsc::Receiver<RunSummary>, tracker: Tracker) {
        while let Some(summary) = rx.recv().await {
            if let Err(e) = self.send(&summary).await {
                tracker.failed(&e);
            }
        }
    }

    /// POSTs `body` to `path`, or GETs `path` with `query` when there is no body.
    async fn call(
        &self,
        path: &str,
        body: Option<Value>,
        query: &[(&str, &str)],
    ) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}/{path}", self.base), query)
            .map_err(|e| format!("{path}: {e}"))?;
        let req = match body {
            Some(b) => self.client.post(url).json(&b),
            None => self.client.get(url),
        };
        let resp = req
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{path} answered {status}: {}",
                value["error_code"].as_str().unwrap_or("")
            ))
        }
    }

    async fn experiment_id(&mut self) -> Result<String, String> {
        if let Some(id) = &self.experiment_id {
            return Ok(id.clone());
        }
        let found = self
            .call(
                "experiments/get-by-name",
                None,
                &[("experiment_name", self.experiment.as_str())],
            )
            .await;
        let id = match found {
            Ok(v) => v["experiment"]["experiment_id"].as_str().map(str::to_owned),
            Err(_) => self
                .call(
                    "experiments/create",
                    Some(json!({"name": self.experiment})),
                    &[],
                )
                .await?["experiment_id"]
                .as_str()
                .map(str::to_owned),
        }
        .ok_or("MLflow answered without an experiment id")?;
        self.experiment_id = Some(id.clone());
        Ok(id)
    }

    async fn send(&mut self, s: &RunSummary) -> Result<(), String> {
        let experiment_id = self.experiment_id().await?;
        let created = self
            .call(
                "runs/create",
                Some(json!({
                    "experiment_id": experiment_id,
                    "run_name": format!("{} {}", s.workflow, s.run_id),
                    "start_time": s.started_at,
                    "tags": [
                        {"key": "flotilla.run_id", "value": s.run_id},
                        {"key": "flotilla.version", "value": env!("CARGO_PKG_VERSION")},
                    ],
                })),
                &[],
            )
            .await?;
        let run_id = created["run"]["info"]["run_id"]
            .as_str()
            .ok_or("MLflow answered without a run id")?
            .to_owned();
        let input: String = s
            .input
            .to_string()
            .chars()
            .take(INPUT_SUMMARY_CHARS)
            .collect();
        let at = s.finished_at;
        let metric =
            |key: &str, value: f64| json!({"key": key, "value": value, "timestamp": at, "step": 0});
        self.call(
            "runs/log-batch",
            Some(json!({
                "run_id": run_id,
                "params": [
                    {"key": "workflow", "value": s.workflow},
                    {"key": "definition_hash", "value": s.definition_hash},
                    {"key": "input", "value": input},
                ],
                "metrics": [
                    metric("duration_seconds", (s.finished_at - s.started_at).max(0) as f64 / 1000.0),
                    metric("steps", s.steps as f64),
                    metric("prompt_tokens", s.usage.prompt_tokens as f64),
                    metric("completion_tokens", s.usage.completion_tokens as f64),
                    metric("cost_usd", s.usage.cost_usd),
                ],
                "tags": [{"key": "status", "value": s.status.as_str()}],
            })),
            &[],
        )
        .await?;
        let status = match s.status {
            RunStatus::Succeeded => "FINISHED",
            RunStatus::Cancelled => "KILLED",
            _ => "FAILED",
        };
        self.call(
            "runs/update",
            Some(json!({"run_id": run_id, "status": status, "end_time": s.finished_at})),
            &[],
        )
        .await?;
        Ok(())
    }
}
