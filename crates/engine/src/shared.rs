//! The engine's state, shared by its handles and background tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use flotilla_spec::Config;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::run::{Compiled, Control, Env, RunOutcome};

/// Whose lapsed runs a replica may take over (`engine.claim_versions`).
#[derive(Debug, Clone)]
pub(crate) enum ClaimVersions {
    /// Only runs of this version.
    Same(String),
    /// Runs whose version is semver and in the range.
    Range(semver::VersionReq),
}

impl ClaimVersions {
    /// From the configuration (validated: `same` or a range).
    pub(crate) fn new(setting: &str, version: &str) -> ClaimVersions {
        match semver::VersionReq::parse(setting) {
            Ok(range) if setting != "same" => ClaimVersions::Range(range),
            _ => ClaimVersions::Same(version.to_owned()),
        }
    }

    /// Whether a run started by `version` may be taken over here; runs started before
    /// versions were recorded may be taken by any.
    pub(crate) fn accepts(&self, version: Option<&str>) -> bool {
        match (self, version) {
            (_, None) => true,
            (ClaimVersions::Same(own), Some(v)) => own == v,
            (ClaimVersions::Range(range), Some(v)) => {
                semver::Version::parse(v).is_ok_and(|v| range.matches(&v))
            }
        }
    }
}

/// A run executing in this process.
pub(crate) struct RunHandle {
    pub control: mpsc::UnboundedSender<Control>,
    pub done: watch::Receiver<Option<Arc<RunOutcome>>>,
    pub task: Option<AbortHandle>,
    /// The epoch of the claim its driver holds the run under.
    pub epoch: i64,
}

/// The engine's state: what its drivers use ([`Env`]), and the runs executing here.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    /// The store, the fleet, events, flags, metrics: what run drivers use.
    pub env: Arc<Env>,
    pub workflows: HashMap<String, Arc<Compiled>>,
    pub definitions: Mutex<HashMap<String, Arc<Compiled>>>,
    pub runs: Mutex<HashMap<String, RunHandle>>,
    pub accepting: AtomicBool,
    pub idle: tokio::sync::Notify,
    /// This process's name in run leases.
    pub replica: String,
    /// The version runs started here are tagged with.
    pub version: String,
    /// Whose lapsed runs this process may take over.
    pub claim_versions: ClaimVersions,
    /// Stops the flag file watcher.
    pub stop_flags: watch::Sender<bool>,
    /// Definition hashes this process has stored.
    pub stored_definitions: Mutex<HashSet<String>>,
    /// Compiled one-step workflows of `/execute`, by task shape.
    pub task_definitions: Mutex<HashMap<String, Arc<Compiled>>>,
}

impl Shared {
    pub(crate) fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunHandle>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the handle of a run whose driver stopped under `epoch` (a newer driver of the
    /// same run, after a re-claim, keeps its own).
    pub(crate) fn forget(&self, run_id: &str, epoch: i64) {
        let mut runs = self.runs();
        if runs.get(run_id).is_some_and(|h| h.epoch == epoch) {
            runs.remove(run_id);
        }
        drop(runs);
        self.idle.notify_waiters();
    }

    pub(crate) fn stored_definitions(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.stored_definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
