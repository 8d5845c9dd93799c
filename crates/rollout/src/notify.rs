//! Notifications: Slack-compatible webhooks, PagerDuty Events v2 and generic JSON webhooks.
//! Sent in the background with retries, so a slow receiver never holds the rollout; the
//! tasks belong to the [`Notifier`], which waits for them (boundedly) when the rollout ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::analysis::Reason;
use crate::spec::Notification;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The rollout began (or resumed after a restart).
    Started,
    /// It waits for a human.
    Paused,
    /// A metric cannot be measured: it holds.
    Unavailable,
    /// Metrics answer again.
    Available,
    /// The new version took all traffic.
    Promoted,
    /// Stopped by a human: rolled back.
    Aborted,
    /// Rolled back on its own.
    RolledBack,
}

/// One notification's content.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The rollout.
    pub rollout: String,
    /// What happened.
    pub kind: EventKind,
    /// In words.
    pub message: String,
    /// The rule that fired, with the metric and values.
    pub reason: Option<Reason>,
    /// The step index.
    pub step: usize,
    /// Percent of traffic on the new version.
    pub weight: u8,
    /// The stable version.
    pub stable_version: String,
    /// The new version.
    pub canary_version: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// Sends events to every configured channel.
#[derive(Clone)]
pub struct Notifier {
    channels: Arc<Vec<Notification>>,
    client: reqwest::Client,
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// Kinds told of rollbacks (`notify_oncall.channels`); empty means all.
    rollback_channels: Arc<Vec<String>>,
    /// PagerDuty severity of a rollback, overriding each channel's.
    severity: Option<String>,
}

fn kind_name(n: &Notification) -> &'static str {
    match n {
        Notification::Slack { .. } => "slack",
        Notification::Pagerduty { .. } => "pagerduty",
        Notification::Webhook { .. } => "webhook",
    }
}

impl Notifier {
    /// A notifier for `channels`.
    pub fn new(
        channels: Vec<Notification>,
        rollback_channels: Vec<String>,
        severity: Option<String>,
    ) -> Self {
        Notifier {
            channels: Arc::new(channels),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a reqwest client with default TLS"),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
            rollback_channels: Arc::new(rollback_channels),
            severity,
        }
    }

    /// Queues `event` for every channel that takes it; returns at once.
    pub fn send(&self, event: &Event) {
        for channel in self.channels.iter() {
            let rollback = matches!(event.kind, EventKind::RolledBack | EventKind::Aborted);
            if rollback
                && !self.rollback_channels.is_empty()
                && !self
                    .rollback_channels
                    .iter()
                    .any(|c| c == kind_name(channel))
            {
                continue;
            }
            let Some((url, body)) = self.payload(channel, event) else {
                continue;
            };
            let client = self.client.clone();
            let kind = kind_name(channel);
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            // Finished tasks are reaped as new ones come, so the set stays small.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(async move {
                let post = || async {
                    let r = client.post(&url).json(&body).send().await?;
                    r.error_for_status().map(|_| ())
                };
                let sent = post
                    .retry(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(200))
                            .with_max_delay(Duration::from_secs(5))
                            .with_max_times(5)
                            .with_jitter(),
                    )
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(channel = kind, error = %e.without_url(), "a rollout notification was not delivered");
                }
            });
        }
    }

    fn payload(&self, channel: &Notification, e: &Event) -> Option<(String, Value)> {
        let reason = e.reason.as_ref().map(ToString::to_string);
        let text = match &reason {
            Some(r) => format!("rollout {}: {} ({r})", e.rollout, e.message),
            None => format!("rollout {}: {}", e.rollout, e.message),
        };
        match channel {
            Notification::Slack { url } => Some((url.clone(), json!({ "text": text }))),
            Notification::Webhook { url } => Some((url.clone(), json!(e))),
            Notification::Pagerduty {
                routing_key,
                url,
                severity,
            } => {
                let action = match e.kind {
                    EventKind::RolledBack | EventKind::Aborted => "trigger",
                    EventKind::Promoted => "resolve",
                    _ => return None,
                };
                Some((
                    url.clone(),
                    json!({
                        "routing_key": routing_key,
                        "event_action": action,
                        "dedup_key": format!("flotilla-rollout-{}", e.rollout),
                        "payload": {
                            "summary": text,
                            "source": "flotilla rollout",
                            "severity": self.severity.as_deref().unwrap_or(severity),
                            "custom_details": e,
                        }
                    }),
                ))
            }
        }
    }

    /// Waits up to `within` for queued notifications.
    pub async fn finish(&self, within: Duration) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
            .await;
    }
}
