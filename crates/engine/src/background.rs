//! The engine's background work: agent health probes, scheduled backups, and on shared
//! stores claiming unfinished runs and renewing their leases.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_spec::Priority;

use crate::clock::now_ms;
use crate::engine::Engine;
use crate::error::Result;
use crate::run::driver::Driver;
use crate::run::machine::Machine;

impl Engine {
    /// On a store one process owns (SQLite), this process takes the scheduled backups; on a
    /// shared one, the deployment's CronJob does (`flotilla backup scheduled`).
    pub(crate) fn start_backups(&self) {
        let backup = &self.shared.config.backup;
        let Some(text) = backup.schedule.as_deref().filter(|_| backup.enabled) else {
            return;
        };
        if self.shared.env.store.is_shared() {
            tracing::info!(
                "backup.schedule is for `flotilla backup scheduled` (the generated CronJob) on a shared store; this server takes none"
            );
            return;
        }
        match flotilla_spec::schedule::Schedule::parse(text) {
            Ok(schedule) => {
                *self.backups.lock().unwrap_or_else(|e| e.into_inner()) = Some(
                    crate::backups::start(Arc::downgrade(&self.shared), schedule),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "backup.schedule does not parse; no scheduled backups")
            }
        }
    }

    pub(crate) fn start_prober(&self) {
        let shared = Arc::downgrade(&self.shared);
        let every = self
            .shared
            .config
            .engine
            .health_interval
            .0
            .max(Duration::from_millis(100));
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.env.fleet.registry.probe().await;
            }
        });
        *self.prober.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// Takes unfinished runs nobody holds (all of them, on a store one process owns) and
    /// resumes them here.
    pub(crate) async fn claim(&self) -> Result<usize> {
        const MOST_RUNS: usize = 4096;
        let shared = &self.shared;
        let room = MOST_RUNS.saturating_sub(shared.runs().len());
        if room == 0 {
            return Ok(0);
        }
        let now = now_ms();
        let lease_until = now + shared.config.engine.lease.0.as_millis() as i64;
        let runs = shared
            .env
            .store
            .claim_runs(&shared.replica, now, lease_until, room as u32, &|v| {
                shared.claim_versions.accepts(v)
            })
            .await?;
        let mut adopted = 0;
        for flotilla_store::Claimed { run: record, epoch } in runs {
            // Still executing here under an older claim (this process stalled past its
            // lease and nobody else took the run): that driver's writes are fenced now, so
            // it stops, and the run resumes from what is recorded.
            if let Some(stale) = shared.runs().remove(&record.id)
                && let Some(task) = stale.task
            {
                task.abort();
            }
            let compiled = self
                .definition(&record.definition_hash, &record.workflow)
                .await?;
            let seq = shared
                .env
                .store
                .events(&record.id, 0)
                .await?
                .last()
                .map_or(0, |e| e.seq);
            let priority = Priority::parse(&record.priority).unwrap_or_default();
            let machine = Machine::resume(compiled, &record, seq, epoch);
            let driver = Driver::new(shared.env.clone(), machine, &record, priority);
            let _ = self.spawn(record.id.clone(), record.version.as_deref(), driver);
            adopted += 1;
        }
        if adopted > 0 {
            tracing::info!(runs = adopted, replica = %shared.replica, "resuming unfinished runs");
        }
        Ok(adopted)
    }

    /// On a shared store: renews the leases of the runs executing here (stopping those another
    /// replica took over) and claims runs nobody holds, every `engine.claim_interval`.
    pub(crate) fn start_leases(&self) {
        if !self.shared.env.store.is_shared() {
            return;
        }
        let engine = Engine {
            shared: self.shared.clone(),
            prober: Arc::new(Mutex::new(None)),
            leases: Arc::new(Mutex::new(None)),
            pruner: Arc::new(Mutex::new(None)),
            backups: Arc::new(Mutex::new(None)),
        };
        let every = self
            .shared
            .config
            .engine
            .claim_interval
            .0
            .max(Duration::from_millis(50));
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Released runs are announced by the store; otherwise poll.
                tokio::select! {
                    _ = tick.tick() => {}
                    () = engine.shared.env.store.work_available() => {}
                }
                if let Err(e) = engine.renew().await {
                    tracing::warn!(error = %e, "renewing run leases failed");
                }
                if engine.shared.accepting.load(Ordering::Acquire)
                    && let Err(e) = engine.claim().await
                {
                    tracing::warn!(error = %e, "claiming runs failed");
                }
            }
        });
        *self.leases.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    async fn renew(&self) -> Result<()> {
        let shared = &self.shared;
        let held: Vec<String> = shared.runs().keys().cloned().collect();
        if held.is_empty() {
            return Ok(());
        }
        let lease_until = now_ms() + shared.config.engine.lease.0.as_millis() as i64;
        let kept: std::collections::HashSet<String> = shared
            .env
            .store
            .renew_leases(&shared.replica, &held, lease_until)
            .await?
            .into_iter()
            .collect();
        for id in held.iter().filter(|id| !kept.contains(*id)) {
            // Finished between listing and renewing, or taken over after our lease lapsed.
            let lost = shared.runs().remove(id);
            if let Some(task) = lost.and_then(|h| h.task) {
                tracing::warn!(run_id = %id, "lease lost; another replica continues this run");
                task.abort();
            }
        }
        Ok(())
    }
}
