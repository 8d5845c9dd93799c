//! `storage.retention:` how long finished runs are kept before the pruner deletes them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::Dur;

/// How long runs are kept after they finish, per final status; a status without a time is
/// kept forever.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeepFor {
    /// Runs that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<Dur>,
    /// Runs that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Dur>,
    /// Runs that were cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Dur>,
    /// Runs that timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<Dur>,
}

impl KeepFor {
    /// The time for a final status name (`succeeded`, `failed`, `cancelled`, `timed_out`).
    pub fn get(&self, status: &str) -> Option<Duration> {
        match status {
            "succeeded" => self.succeeded,
            "failed" => self.failed,
            "cancelled" => self.cancelled,
            "timed_out" => self.timed_out,
            _ => None,
        }
        .map(|d| d.0)
    }

    fn all(&self) -> impl Iterator<Item = Duration> {
        [self.succeeded, self.failed, self.cancelled, self.timed_out]
            .into_iter()
            .flatten()
            .map(|d| d.0)
    }
}

/// `storage.retention`: finished runs are deleted with their steps and events once older
/// than their status's time (per workflow where `workflows` says so); runs in flight never.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Runs that succeeded, of every workflow (and tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<Dur>,
    /// Runs that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Dur>,
    /// Runs that were cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Dur>,
    /// Runs that timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<Dur>,
    /// Times for one workflow, over the ones above (a status left out there falls back to
    /// the time above).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflows: BTreeMap<String, KeepFor>,
    /// How often the pruner looks for expired runs.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Runs deleted per transaction: small batches keep each one short, so that the write
    /// path never waits long behind a prune.
    #[serde(default = "default_batch")]
    pub batch: u32,
}

fn default_interval() -> Dur {
    Dur::secs(60)
}

fn default_batch() -> u32 {
    200
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            succeeded: None,
            failed: None,
            cancelled: None,
            timed_out: None,
            workflows: BTreeMap::new(),
            interval: default_interval(),
            batch: default_batch(),
        }
    }
}

impl Retention {
    /// The times for every workflow.
    pub fn keep(&self) -> KeepFor {
        KeepFor {
            succeeded: self.succeeded,
            failed: self.failed,
            cancelled: self.cancelled,
            timed_out: self.timed_out,
        }
    }

    /// Whether any run ever expires.
    pub fn is_off(&self) -> bool {
        self.shortest().is_none()
    }

    /// The shortest time any finished run is kept, if any run expires at all.
    pub fn shortest(&self) -> Option<Duration> {
        self.keep()
            .all()
            .chain(self.workflows.values().flat_map(KeepFor::all))
            .min()
    }
}
