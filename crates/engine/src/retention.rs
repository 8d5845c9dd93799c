//! Retention: deleting finished runs past `storage.retention`, and the store's gauges.
//!
//! The pruner deletes in batches of `storage.retention.batch` runs, each one short
//! transaction, and rests between batches nine times as long as the batch took: pruning takes
//! at most a tenth of the store's time, however large the backlog, so the write path never
//! waits long behind it.

use std::sync::Weak;
use std::time::{Duration, Instant};

use flotilla_spec::Retention;
use flotilla_store::{PruneRule, RunQuery, RunStatus, Store, WorkflowMatch};

use crate::metrics::{Metrics, StatusLabels};
use crate::shared::Shared;

/// The final statuses, in the order rules are listed.
const FINAL: [RunStatus; 4] = [
    RunStatus::Succeeded,
    RunStatus::Failed,
    RunStatus::Cancelled,
    RunStatus::TimedOut,
];

/// The prune rules `retention` means at `now` (unix milliseconds): per final status, one for
/// every workflow without a time of its own for that status, and one per workflow with one.
pub fn rules(retention: &Retention, now: i64) -> Vec<PruneRule> {
    let before = |keep: Duration| now.saturating_sub(keep.as_millis() as i64);
    let mut out = Vec::new();
    for status in FINAL {
        let own: Vec<(&String, Duration)> = retention
            .workflows
            .iter()
            .filter_map(|(w, k)| k.get(status.as_str()).map(|d| (w, d)))
            .collect();
        if let Some(keep) = retention.keep().get(status.as_str()) {
            let except: Vec<String> = own.iter().map(|(w, _)| (*w).clone()).collect();
            out.push(PruneRule {
                status,
                finished_before: before(keep),
                workflows: if except.is_empty() {
                    WorkflowMatch::All
                } else {
                    WorkflowMatch::Except(except)
                },
            });
        }
        for (workflow, keep) in own {
            out.push(PruneRule {
                status,
                finished_before: before(keep),
                workflows: WorkflowMatch::Only(workflow.clone()),
            });
        }
    }
    out
}

/// Why there is no run `id`: when its id (a UUIDv7, which holds its creation time) is
/// older than the shortest retention time, it was probably pruned; else it never existed.
pub fn missing(id: &str, retention: &Retention, now: i64) -> crate::EngineError {
    let created = uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        });
    match (created, retention.shortest()) {
        (Some(at), Some(keep)) if now - at > keep.as_millis() as i64 => {
            let age = Duration::from_secs(((now - at) / 1000) as u64);
            crate::EngineError::RunPruned {
                id: id.to_owned(),
                age: humantime::format_duration(age).to_string(),
                keep: humantime::format_duration(keep).to_string(),
            }
        }
        _ => crate::EngineError::RunNotFound(id.to_owned()),
    }
}

/// How long to rest after a batch that took `took`, so that pruning keeps to a tenth of
/// the store's time.
fn rest_after(took: Duration) -> Duration {
    (took * 9).clamp(Duration::from_millis(1), Duration::from_secs(5))
}

/// Deletes every run the rules match, `batch` at a time, counting them in
/// `runs_pruned_total`; with `pace`, rests between batches (see the module's note).
pub async fn prune(
    store: &dyn Store,
    rules: &[PruneRule],
    batch: u32,
    metrics: &Metrics,
    pace: bool,
) -> flotilla_store::Result<u64> {
    let mut total = 0;
    for rule in rules {
        let labels = StatusLabels {
            status: rule.status.as_str().into(),
        };
        loop {
            let started = Instant::now();
            let n = store.prune(rule, batch).await?;
            metrics.runs_pruned.get_or_create(&labels).inc_by(n);
            total += n;
            if n < u64::from(batch) {
                break;
            }
            if pace {
                tokio::time::sleep(rest_after(started.elapsed())).await;
            }
        }
    }
    Ok(total)
}

/// Sets `store_runs{status}` and `store_size_bytes`.
pub async fn measure(store: &dyn Store, metrics: &Metrics) -> flotilla_store::Result<()> {
    let counts = store.count_runs(&RunQuery::default()).await?;
    for status in RunStatus::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics
            .store_runs
            .get_or_create(&StatusLabels {
                status: status.as_str().into(),
            })
            .set(n as i64);
    }
    metrics.store_size.set(store.size_bytes().await? as i64);
    Ok(())
}

/// Every `storage.retention.interval` (a minute when retention is off): prunes what expired,
/// then measures the store and reads its backup records. Ends when the engine is dropped.
pub(crate) fn start(shared: Weak<Shared>, retention: Retention) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(retention.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let (store, metrics) = (&*shared.env.store, &*shared.env.metrics);
            let now = crate::now_ms();
            match prune(
                store,
                &rules(&retention, now),
                retention.batch,
                metrics,
                true,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "pruned finished runs past storage.retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "pruning expired runs failed; next try in one interval")
                }
            }
            if let Err(e) = measure(store, metrics).await {
                tracing::debug!(error = %e, "measuring the store failed");
            }
            if let Err(e) = crate::backups::measure(store, metrics).await {
                tracing::debug!(error = %e, "reading the backup records failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::Dur;
    use flotilla_spec::KeepFor;

    #[test]
    fn a_workflow_with_its_own_time_is_left_out_of_the_general_rule() {
        let mut retention = Retention {
            succeeded: Some(Dur::secs(10)),
            failed: Some(Dur::secs(100)),
            ..Retention::default()
        };
        retention.workflows.insert(
            "audit".into(),
            KeepFor {
                succeeded: Some(Dur::secs(1000)),
                ..KeepFor::default()
            },
        );
        let rules = rules(&retention, 1_000_000);
        assert_eq!(
            rules,
            vec![
                PruneRule {
                    status: RunStatus::Succeeded,
                    finished_before: 990_000,
                    workflows: WorkflowMatch::Except(vec!["audit".into()]),
                },
                PruneRule {
                    status: RunStatus::Succeeded,
                    finished_before: 0,
                    workflows: WorkflowMatch::Only("audit".into()),
                },
                // `audit` has no failed time of its own: the general one applies.
                PruneRule {
                    status: RunStatus::Failed,
                    finished_before: 900_000,
                    workflows: WorkflowMatch::All,
                },
            ]
        );
    }

    #[test]
    fn pruning_rests_nine_times_as_long_as_it_worked() {
        assert_eq!(
            rest_after(Duration::from_millis(10)),
            Duration::from_millis(90)
        );
        assert_eq!(rest_after(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(rest_after(Duration::from_secs(60)), Duration::from_secs(5));
    }

    #[test]
    fn an_id_older_than_retention_was_probably_pruned() {
        let retention = Retention {
            failed: Some(Dur::secs(3600)),
            ..Retention::default()
        };
        let id = uuid::Uuid::now_v7().to_string();
        let now = crate::now_ms();
        assert!(matches!(
            missing(&id, &retention, now + 2 * 3_600_000),
            crate::EngineError::RunPruned { .. }
        ));
        let text = missing(&id, &retention, now + 2 * 3_600_000).to_string();
        assert!(
            text.contains("started 2h") && text.contains("after 1h"),
            "{text}"
        );
        assert!(matches!(
            missing(&id, &retention, now),
            crate::EngineError::RunNotFound(_)
        ));
        assert!(matches!(
            missing("not-a-uuid", &retention, now + 9_999_999_999),
            crate::EngineError::RunNotFound(_)
        ));
        assert!(matches!(
            missing(&id, &Retention::default(), now + 9_999_999_999),
            crate::EngineError::RunNotFound(_)
        ));
    }
}
