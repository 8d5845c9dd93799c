//! flotilla-rollout: the rollout controller for hosts without Kubernetes.
//!
//! On Kubernetes, Argo Rollouts is the engine and `flotilla deploy generate` writes its
//! resources. Elsewhere (one host, compose, VMs) this crate is the controller: it shifts
//! traffic through nginx ([`traffic`]), judges the new version with Prometheus
//! ([`provider`]) under Argo's analysis semantics ([`analysis`], pure and tested without
//! I/O), and promotes or rolls back on its own, recording every measurement and decision
//! with its reason in a store that outlives the process ([`store`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = flotilla_rollout::load::load(std::path::Path::new("rollout.yaml"))
//!     .map_err(|d| format!("{d:?}"))?;
//! let store = flotilla_rollout::store::open("sqlite://flotilla.db").await?;
//! let controller = flotilla_rollout::controller::Controller::new(loaded, store);
//! let outcome = controller.run(std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod analysis;
pub mod controller;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod provider;
mod rolling;
pub mod spec;
pub mod state;
pub mod store;
pub mod traffic;

use std::time::Duration;

use analysis::{MetricRun, Verdict};
use provider::{MetricProvider, QueryContext};
use spec::AnalysisTemplate;

/// How a one-off analysis ended (`flotilla rollout analyze`).
#[derive(Debug, Clone, PartialEq)]
pub enum AnalyzeOutcome {
    /// Every metric passed: exit 0.
    Successful,
    /// A metric failed or erred: exit 3.
    Failed(analysis::Reason),
    /// A metric was inconclusive, or could not be measured: exit 4.
    Inconclusive(analysis::Reason),
}

impl AnalyzeOutcome {
    /// The exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            AnalyzeOutcome::Successful => 0,
            AnalyzeOutcome::Failed(_) => 3,
            AnalyzeOutcome::Inconclusive(_) => 4,
        }
    }
}

/// Runs templates once, as a gate: metrics are measured on their schedule until each is
/// decided, or until `duration` (metrics without a count are then judged on what they
/// have). A metric still unavailable at the end is inconclusive.
pub async fn analyze(
    templates: &[AnalysisTemplate],
    ctx: &QueryContext,
    provider: &dyn MetricProvider,
    duration: Duration,
    mut on_measurement: impl FnMut(&str, &analysis::Measurement),
) -> (AnalyzeOutcome, Vec<MetricRun>) {
    let start = controller::now_ms();
    let end = start + duration.as_millis() as i64;
    let mut runs: Vec<MetricRun> = templates
        .iter()
        .flat_map(|t| t.metrics.iter().cloned())
        .map(|m| MetricRun::new(m, start))
        .collect();
    // An outage never ends a gate early: it is judged at the end.
    let never = i64::MAX / 4;
    loop {
        let now = controller::now_ms();
        for run in &mut runs {
            if run.next_due(now, never).is_some_and(|d| d <= now) {
                let answer = provider.measure(&run.metric, ctx).await;
                let m = analysis::measure(&run.metric, answer, controller::now_ms());
                on_measurement(&run.metric.name, &m);
                run.measurements.push(m);
            }
        }
        let now = controller::now_ms();
        let (verdict, _) = analysis::verdict(&runs, now, never);
        let decided = runs.iter().all(|r| r.next_due(now, never).is_none());
        match verdict {
            Verdict::Abort { reason } => return (AnalyzeOutcome::Failed(reason), runs),
            Verdict::Pause { reason } => return (AnalyzeOutcome::Inconclusive(reason), runs),
            _ if decided => return (AnalyzeOutcome::Successful, runs),
            Verdict::Hold { reason, .. } if now >= end => {
                return (AnalyzeOutcome::Inconclusive(reason), runs);
            }
            _ if now >= end => return (AnalyzeOutcome::Successful, runs),
            _ => {}
        }
        let next = runs
            .iter()
            .filter_map(|r| r.next_due(now, never))
            .min()
            .unwrap_or(end)
            .min(end);
        let wait = (next - now).clamp(10, 1_000) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
