//! Workflow runs recorded as MLflow runs, through MLflow's REST API.
//!
//! Finished runs are handed to a background task over a bounded queue and never waited
//! for: when MLflow is slow or down, summaries are dropped (counted, and a warning is logged
//! at most once a minute), and workflows go on at full speed. The sender ends when the
//! last [`Tracker`] is dropped, or at [`Tracker::shutdown`] after sending what is queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use flotilla_store::{RunStatus, Usage};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

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
    failures: Failures,
    /// The sender task and its stop signal: owned here, not by the task itself.
    worker: Arc<Worker>,
}

struct Worker {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Counts and (rarely) logs failed exports.
#[derive(Clone)]
struct Failures {
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
        let failures = Failures {
            warned_at: Arc::new(AtomicI64::new(i64::MIN / 2)),
            metrics,
        };
        let api = Api {
            base: format!("{}/api/2.0/mlflow", tracking_uri.trim_end_matches('/')),
            client,
            experiment: experiment.to_owned(),
            experiment_id: None,
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(api.run(rx, stopped, failures.clone()));
        Tracker {
            queue,
            failures,
            worker: Arc::new(Worker {
                stop,
                task: std::sync::Mutex::new(Some(task)),
            }),
        }
    }

    /// Queues a finished run; never waits.
    pub fn record(&self, summary: RunSummary) {
        if self.queue.try_send(summary).is_err() {
            self.failures
                .failed("the MLflow queue is full; run summaries are being dropped");
        }
    }

    /// Sends what is queued, for up to `within`, then stops the sender.
    pub async fn shutdown(&self, within: Duration) {
        let _ = self.worker.stop.send(true);
        let task = self
            .worker
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(within, &mut task).await.is_err()
        {
            task.abort();
            self.failures
                .failed("MLflow did not take the last run summaries before shutdown");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Failures {
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
    /// Sends summaries until every [`Tracker`] is gone, or until told to stop (then what is
    /// already queued still goes).
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<RunSummary>,
        mut stop: watch::Receiver<bool>,
        failures: Failures,
    ) {
        loop {
            let stopping = tokio::select! {
                s = rx.recv() => Some(s),
                _ = stop.wait_for(|s| *s) => None,
            };
            let summary = match stopping {
                Some(s) => s,
                None => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(summary) = summary else { return };
            if let Err(e) = self.send(&summary).await {
                failures.failed(&e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> RunSummary {
        RunSummary {
            run_id: "r".into(),
            workflow: "w".into(),
            definition_hash: "h".into(),
            input: Value::Null,
            status: RunStatus::Succeeded,
            started_at: 0,
            finished_at: 1,
            steps: 1,
            usage: Usage::default(),
        }
    }

    /// Alive tasks of the current runtime, once they settle at `want` (bounded wait).
    async fn settles_at(want: usize) -> bool {
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..500 {
            if metrics.num_alive_tasks() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_sender_ends_with_its_last_tracker() {
        let before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        // Nothing listens on port 9: sends fail fast.
        let tracker = Tracker::start(
            "http://127.0.0.1:9",
            "e",
            reqwest::Client::new(),
            Arc::new(Metrics::new()),
        );
        tracker.clone().record(summary());
        assert!(settles_at(before + 1).await, "the sender runs");
        drop(tracker);
        assert!(settles_at(before).await, "the sender outlived its tracker");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_queued_then_stops() {
        let metrics = Arc::new(Metrics::new());
        let tracker = Tracker::start(
            "http://127.0.0.1:9",
            "e",
            reqwest::Client::new(),
            metrics.clone(),
        );
        for _ in 0..3 {
            tracker.record(summary());
        }
        tracker.shutdown(Duration::from_secs(30)).await;
        // Each queued summary was tried (and failed: nothing listens) before the stop.
        assert!(metrics.mlflow_export_errors.get() >= 3);
        assert!(tracker.worker.task.lock().unwrap().is_none());
    }
}
