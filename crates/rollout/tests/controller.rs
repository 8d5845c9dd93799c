//! The controller driven without I/O: a scripted metric provider, a router that records
//! routings, the SQLite state store in a temporary directory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_rollout::analysis::Sample;
use flotilla_rollout::controller::Controller;
use flotilla_rollout::metrics::RolloutMetrics;
use flotilla_rollout::notify::Notifier;
use flotilla_rollout::provider::{MetricProvider, QueryContext};
use flotilla_rollout::spec::Metric;
use flotilla_rollout::state::Outcome;
use flotilla_rollout::traffic::{Routing, TrafficError, TrafficRouter};

/// Answers every query with `value`.
struct Fixed(f64);

#[async_trait]
impl MetricProvider for Fixed {
    async fn measure(&self, _: &Metric, _: &QueryContext) -> Result<Sample, String> {
        Ok(Sample::Vector(vec![self.0]))
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Routing>>);

#[async_trait]
impl TrafficRouter for Recorder {
    async fn apply(&self, routing: &Routing) -> Result<(), TrafficError> {
        self.0.lock().unwrap().push(routing.clone());
        Ok(())
    }
}

fn weight(r: &Routing) -> u8 {
    match r {
        Routing::Weighted { weight, .. } => *weight,
        Routing::Only(_) => 255,
    }
}

async fn controller(dir: &std::path::Path, value: f64, body: &str) -> (Controller, Arc<Recorder>) {
    std::fs::write(
        dir.join("policies.yaml"),
        "rollback_triggers: { error_rate_threshold: 0.05 }\nrollback_conditions: { confirmation_samples: 1 }\nrollback_actions:\n  - { type: automatic_rollback, delay: 1s }\n",
    )
    .unwrap();
    let path = dir.join("rollout.yaml");
    std::fs::write(
        &path,
        format!(
            r#"name: api
strategy: canary
stable: {{ version: "1", upstreams: ["127.0.0.1:1"] }}
canary: {{ version: "2", upstreams: ["127.0.0.1:2"] }}
traffic: {{ nginx: {{ upstream_file: up.conf, upstream: api }} }}
policies: {{ file: policies.yaml, address: "http://127.0.0.1:9", interval: 50ms }}
{body}"#
        ),
    )
    .unwrap();
    let loaded = flotilla_rollout::load::load(&path).unwrap();
    let store = flotilla_rollout::store::open(&format!("sqlite://{}", dir.join("s.db").display()))
        .await
        .unwrap();
    let router = Arc::new(Recorder::default());
    let c = Controller {
        loaded,
        store,
        provider: Arc::new(Fixed(value)),
        traffic: router.clone(),
        notifier: Notifier::new(Vec::new(), Vec::new(), None),
        metrics: RolloutMetrics::default(),
        tick: Duration::from_millis(20),
        progress: Arc::new(|_: &str| {}),
    };
    (c, router)
}

#[tokio::test]
async fn a_failing_policy_trigger_pauses_for_its_delay_then_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (c, router) = controller(
        dir.path(),
        0.5,
        "steps:\n  - set_weight: 40\n  - pause: 1h\n",
    )
    .await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), c.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Some(Outcome::RolledBack));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the delay"
    );
    let routings = router.0.lock().unwrap().clone();
    let weights: Vec<u8> = routings.iter().map(weight).collect();
    assert_eq!(weights, [0, 40, 0]);
    let history = c.store.history("api", 50).await.unwrap();
    let decisions: Vec<String> = history
        .iter()
        .filter(|e| e.kind == "decision")
        .map(|e| e.body["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["advance", "pause", "rollback"], "{history:#?}");
    let encoded = c.metrics.encode();
    assert!(
        encoded.contains(
            r#"rollout_decisions_total{rollout="api",decision="rollback",reason="failure_limit"} 1"#
        ),
        "{encoded}"
    );
}

#[tokio::test]
async fn healthy_metrics_promote_and_a_finished_rollout_stays_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (c, router) = controller(
        dir.path(),
        0.0,
        "steps:\n  - set_weight: 40\n  - pause: 200ms\n  - set_weight: 70\n",
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), c.run(std::future::pending()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Some(Outcome::Promoted));
    let weights: Vec<u8> = router.0.lock().unwrap().iter().map(weight).collect();
    assert_eq!(weights, [0, 40, 70, 100]);
    // Running it again does nothing: the same versions are already promoted.
    let again = c.run(std::future::pending()).await.unwrap();
    assert_eq!(again, Some(Outcome::Promoted));
    assert_eq!(router.0.lock().unwrap().len(), 4);
}
