//! The controller's own metrics: `rollout_decisions_total{rollout,decision,reason}`,
//! `rollout_measurements_total{rollout,metric,phase}` and `rollout_canary_weight{rollout}`.
//! Labels come from the rollout file and typed enums, never from a client.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::analysis::Phase;
use crate::state::{Cause, Decision};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rollout: String,
    decision: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeasurementLabels {
    rollout: String,
    metric: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    rollout: String,
}

/// The metrics, and the registry that exposes them.
#[derive(Clone)]
pub struct RolloutMetrics {
    registry: Arc<Registry>,
    decisions: Family<DecisionLabels, Counter>,
    measurements: Family<MeasurementLabels, Counter>,
    weights: Family<RolloutLabels, Gauge>,
    advised: Arc<Mutex<HashSet<(String, String, String)>>>,
}

impl Default for RolloutMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let measurements = Family::<MeasurementLabels, Counter>::default();
        let weights = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_decisions",
            "Rollout decisions by kind and reason",
            decisions.clone(),
        );
        registry.register(
            "rollout_measurements",
            "Analysis measurements by metric and phase",
            measurements.clone(),
        );
        registry.register(
            "rollout_canary_weight",
            "Percent of traffic on the new version",
            weights.clone(),
        );
        RolloutMetrics {
            registry: Arc::new(registry),
            decisions,
            measurements,
            weights,
            advised: Arc::default(),
        }
    }
}

impl RolloutMetrics {
    /// Counts a decision.
    pub fn decided(&self, rollout: &str, decision: Decision, cause: Cause) {
        self.decisions
            .get_or_create(&DecisionLabels {
                rollout: rollout.to_owned(),
                decision: decision.as_str().to_owned(),
                reason: cause.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a measurement.
    pub fn measured(&self, rollout: &str, metric: &str, phase: Phase) {
        let phase = serde_json::to_value(phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.measurements
            .get_or_create(&MeasurementLabels {
                rollout: rollout.to_owned(),
                metric: metric.to_owned(),
                phase,
            })
            .inc();
    }

    /// Sets the weight.
    pub fn weight(&self, rollout: &str, weight: u8) {
        self.weights
            .get_or_create(&RolloutLabels {
                rollout: rollout.to_owned(),
            })
            .set(i64::from(weight));
    }

    /// Whether this advisory (metric, values) is new: advisories are recorded once.
    pub fn first_advice(&self, rollout: &str, key: &(String, String)) -> bool {
        let mut seen = self.advised.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert((rollout.to_owned(), key.0.clone(), key.1.clone()))
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
