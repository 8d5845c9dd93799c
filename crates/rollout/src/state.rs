//! A rollout's durable state and its typed decisions.

use serde::{Deserialize, Serialize};

use crate::analysis::{MetricRun, Reason, Rule};
use crate::spec::Strategy;

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Status {
    /// Going through its steps.
    Progressing,
    /// Waiting for `promote` (a `pause: {}` step, an inconclusive or pausing metric, or a
    /// human's `pause`).
    Paused {
        /// Why.
        reason: String,
        /// Paused by `flotilla rollout pause` (then `resume` goes on).
        by_human: bool,
    },
    /// A metric cannot be measured: no promotion, no rollback.
    Holding {
        /// Which metric and why.
        reason: String,
        /// Unix ms the outage began.
        since: i64,
    },
    /// The new version has all traffic.
    Promoted,
    /// Rolled back on its own.
    RolledBack {
        /// The rule that fired.
        reason: String,
    },
    /// Rolled back by a human.
    Aborted {
        /// Who or what asked.
        reason: String,
    },
    /// Stopped on an error it cannot get past (nginx refused its configuration); traffic is
    /// where it was before the failed change.
    Failed {
        /// The error.
        error: String,
    },
}

impl Status {
    /// Whether the rollout is over.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Status::Promoted
                | Status::RolledBack { .. }
                | Status::Aborted { .. }
                | Status::Failed { .. }
        )
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All traffic on the new version.
    Promoted,
    /// Back on the stable version (on its own or by a human).
    RolledBack,
    /// Stopped on an error.
    Failed,
}

impl Outcome {
    /// The exit code of `flotilla rollout run`: 0 promoted, 3 rolled back or aborted, 1
    /// stopped on an error.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Promoted => 0,
            Outcome::RolledBack => 3,
            Outcome::Failed => 1,
        }
    }
}

/// The saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The rollout's name.
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// The stable version.
    pub stable_version: String,
    /// The new version.
    pub canary_version: String,
    /// Where it is.
    pub status: Status,
    /// The current step (canary and blue-green) or the next instance group (rolling).
    pub step: usize,
    /// Percent of traffic on the new version.
    pub weight: u8,
    /// Unix ms the rollout began.
    pub started: i64,
    /// Unix ms the current step began.
    pub step_started: i64,
    /// The current analysis step's metrics.
    pub step_analysis: Vec<MetricRun>,
    /// Background metrics.
    pub background: Vec<MetricRun>,
    /// Blue-green: when traffic switched to the new colour.
    pub switched_at: Option<i64>,
    /// A rollback the rollback policies delayed (`automatic_rollback.delay`): Unix ms it
    /// happens at unless a human promotes or aborts first.
    #[serde(default)]
    pub rollback_at: Option<i64>,
    /// Unix ms of the last change.
    pub updated: i64,
}

impl State {
    /// The outcome of a finished rollout.
    pub fn outcome(&self) -> Option<Outcome> {
        Some(match self.status {
            Status::Promoted => Outcome::Promoted,
            Status::RolledBack { .. } | Status::Aborted { .. } => Outcome::RolledBack,
            Status::Failed { .. } => Outcome::Failed,
            _ => return None,
        })
    }
}

/// What the controller decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Went to the next step.
    Advance,
    /// Waits for a human.
    Pause,
    /// Holds for a metrics outage.
    Hold,
    /// Goes on (after a pause or a hold).
    Resume,
    /// Gave the new version all traffic.
    Promote,
    /// A human rolled back.
    Abort,
    /// Rolled back on its own.
    Rollback,
    /// An advisory metric failed; nothing changed.
    Advise,
    /// Stopped on an error.
    Fail,
}

impl Decision {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Advance => "advance",
            Decision::Pause => "pause",
            Decision::Hold => "hold",
            Decision::Resume => "resume",
            Decision::Promote => "promote",
            Decision::Abort => "abort",
            Decision::Rollback => "rollback",
            Decision::Advise => "advise",
            Decision::Fail => "fail",
        }
    }
}

/// Why, in a bounded set (the `reason` label of `rollout_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A step finished (weight set, pause over, analysis successful).
    Step,
    /// A `pause: {}` step.
    PauseStep,
    /// A command from `flotilla rollout`.
    Human,
    /// A metric failed past its failure_limit.
    FailureLimit,
    /// A metric was inconclusive past its limit.
    InconclusiveLimit,
    /// A metric erred past its consecutive_error_limit.
    ErrorLimit,
    /// A metric could not be measured.
    Unavailable,
    /// A metric could not be measured for longer than unavailable_timeout.
    UnavailableTimeout,
    /// A rolling instance failed its health check.
    HealthCheck,
    /// nginx refused or failed.
    Traffic,
}

impl Cause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Step => "step",
            Cause::PauseStep => "pause_step",
            Cause::Human => "human",
            Cause::FailureLimit => "failure_limit",
            Cause::InconclusiveLimit => "inconclusive_limit",
            Cause::ErrorLimit => "error_limit",
            Cause::Unavailable => "unavailable",
            Cause::UnavailableTimeout => "unavailable_timeout",
            Cause::HealthCheck => "health_check",
            Cause::Traffic => "traffic",
        }
    }

    /// The cause of an analysis reason.
    pub fn of(reason: &Reason) -> Cause {
        match reason.kind {
            Rule::FailureLimit => Cause::FailureLimit,
            Rule::InconclusiveLimit => Cause::InconclusiveLimit,
            Rule::ErrorLimit => Cause::ErrorLimit,
            Rule::Unavailable => Cause::Unavailable,
            Rule::UnavailableTimeout => Cause::UnavailableTimeout,
        }
    }
}

/// A decision as stored, shown and announced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// What.
    pub decision: Decision,
    /// Why, as a label.
    pub cause: Cause,
    /// Why, in words.
    pub message: String,
    /// The metric, values, condition and rule, when a metric decided.
    pub reason: Option<Reason>,
    /// The step at the time.
    pub step: usize,
    /// The weight after the decision.
    pub weight: u8,
}
