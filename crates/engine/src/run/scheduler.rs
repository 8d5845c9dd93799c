//! The pure scheduler: `decide(state, event) -> actions`, with no I/O.
//!
//! The driver feeds it events (start, attempt finished, retry due, cancel, deadline,
//! compensation done) and carries out the actions it returns. Everything that makes a run
//! correct — which step may run, when a run fails, the saga order — lives here, where
//! property tests can drive it directly.

use flotilla_store::{RunStatus, StepStatus};

/// A workflow's dependency graph, by step index.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Step ids, in declaration order.
    pub ids: Vec<String>,
    /// For each step, the steps it needs.
    pub needs: Vec<Vec<usize>>,
    /// For each step, the attempts allowed in all.
    pub max_attempts: Vec<u32>,
    /// For each step, whether it has a compensation.
    pub compensable: Vec<bool>,
}

impl Dag {
    /// Builds the graph from a (validated, acyclic) workflow.
    pub fn new(wf: &flotilla_spec::Workflow) -> Dag {
        let pos = |id: &str| wf.steps.iter().position(|s| s.id == id);
        Dag {
            ids: wf.steps.iter().map(|s| s.id.clone()).collect(),
            needs: wf
                .steps
                .iter()
                .map(|s| s.needs.iter().filter_map(|n| pos(n)).collect())
                .collect(),
            max_attempts: wf
                .steps
                .iter()
                .map(|s| s.retry.map_or(1, |r| r.attempts.max(1)))
                .collect(),
            compensable: wf.steps.iter().map(|s| s.compensate.is_some()).collect(),
        }
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A step as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepState {
    /// Status.
    pub status: StepStatus,
    /// Attempts started (the current one included).
    pub attempts: u32,
    /// An attempt is executing now.
    pub in_flight: bool,
}

/// The run's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Steps are executing.
    Running,
    /// Undoing succeeded steps, newest first; the run then ends with `outcome`.
    Compensating {
        /// Steps still to compensate, next last.
        queue: Vec<usize>,
        /// How the run ends afterwards.
        outcome: RunStatus,
    },
    /// Over.
    Finished(RunStatus),
}

/// A run as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct RunState {
    /// Per step.
    pub steps: Vec<StepState>,
    /// Steps in the order they succeeded (the saga undoes them in reverse).
    pub succeeded_order: Vec<usize>,
    /// Phase.
    pub phase: Phase,
}

impl RunState {
    /// A new run: every step pending.
    pub fn new(n: usize) -> RunState {
        RunState {
            steps: vec![
                StepState {
                    status: StepStatus::Pending,
                    attempts: 0,
                    in_flight: false
                };
                n
            ],
            succeeded_order: Vec::new(),
            phase: Phase::Running,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The run starts, or resumes after a restart.
    Start,
    /// An attempt ended.
    AttemptFinished {
        /// Step index.
        step: usize,
        /// Attempt number.
        attempt: u32,
        /// Whether it succeeded, and if not whether another attempt may help.
        outcome: Outcome,
    },
    /// A retry's backoff elapsed.
    RetryDue {
        /// Step index.
        step: usize,
    },
    /// A compensation ended.
    CompensationFinished {
        /// Step index.
        step: usize,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A user cancelled the run.
    Cancel,
    /// The run's SLA timeout passed.
    Deadline,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It produced an output.
    Succeeded,
    /// It failed; `retryable` says whether another attempt may succeed.
    Failed {
        /// Whether to retry.
        retryable: bool,
    },
}

/// What the `when:` condition of a ready step says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Run it.
    Run,
    /// Skip it.
    Skip,
    /// The condition could not be evaluated; the step fails.
    Error(String),
}

/// Why a step ended without succeeding, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Its own attempts failed (the driver knows the error).
    AttemptsExhausted,
    /// Its condition failed to evaluate.
    Condition(String),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record that the run is running.
    MarkRunning,
    /// Start an attempt (record the step as running, without waiting for the commit).
    Dispatch {
        /// Step index.
        step: usize,
        /// Attempt number (an interrupted attempt is re-run under its own number).
        attempt: u32,
    },
    /// Wait out a backoff, then send `RetryDue`.
    ScheduleRetry {
        /// Step index.
        step: usize,
        /// The attempt that failed.
        failed_attempt: u32,
    },
    /// Record a success (committed before anything depending on it starts).
    StepSucceeded {
        /// Step index.
        step: usize,
    },
    /// Record a failure.
    StepFailed {
        /// Step index.
        step: usize,
        /// Why.
        reason: StopReason,
    },
    /// Record that a running step was stopped because the run ended first.
    StepCancelled {
        /// Step index.
        step: usize,
        /// How the run ended.
        run: RunStatus,
    },
    /// Record a skip.
    StepSkipped {
        /// Step index.
        step: usize,
    },
    /// Stop every in-flight attempt and pending retry timer.
    AbortInFlight,
    /// Run a step's compensation.
    Compensate {
        /// Step index.
        step: usize,
    },
    /// Record a compensation's end.
    StepCompensated {
        /// Step index.
        step: usize,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The run is over.
    Finish(RunStatus),
}

/// Applies `event` to `state` and says what to do. `condition` evaluates a step's `when:`.
pub fn decide(
    dag: &Dag,
    state: &mut RunState,
    event: Event,
    condition: &mut dyn FnMut(usize) -> Condition,
) -> Vec<Action> {
    let mut out = Vec::new();
    if matches!(state.phase, Phase::Finished(_)) {
        return out;
    }
    match event {
        Event::Start => {
            out.push(Action::MarkRunning);
            if let Phase::Compensating { .. } = state.phase {
                next_compensation(state, &mut out);
                return out;
            }
            // An attempt that was in flight when the process stopped runs again, as itself.
            for (i, s) in state.steps.iter_mut().enumerate() {
                if s.status == StepStatus::Running {
                    s.in_flight = true;
                    s.attempts = s.attempts.max(1);
                    out.push(Action::Dispatch {
                        step: i,
                        attempt: s.attempts,
                    });
                }
            }
            advance(dag, state, condition, &mut out);
        }
        Event::AttemptFinished {
            step,
            attempt,
            outcome,
        } => {
            let s = &mut state.steps[step];
            if !s.in_flight || s.attempts != attempt || state.phase != Phase::Running {
                return out; // stale: aborted or superseded
            }
            s.in_flight = false;
            match outcome {
                Outcome::Succeeded => {
                    s.status = StepStatus::Succeeded;
                    state.succeeded_order.push(step);
                    out.push(Action::StepSucceeded { step });
                    advance(dag, state, condition, &mut out);
                }
                Outcome::Failed { retryable } if retryable && attempt < dag.max_attempts[step] => {
                    out.push(Action::ScheduleRetry {
                        step,
                        failed_attempt: attempt,
                    });
                }
                Outcome::Failed { .. } => {
                    s.status = StepStatus::Failed;
                    out.push(Action::StepFailed {
                        step,
                        reason: StopReason::AttemptsExhausted,
                    });
                    stop(dag, state, RunStatus::Failed, &mut out);
                }
            }
        }
        Event::RetryDue { step } => {
            let s = &mut state.steps[step];
            if state.phase == Phase::Running && s.status == StepStatus::Running && !s.in_flight {
                s.attempts += 1;
                s.in_flight = true;
                out.push(Action::Dispatch {
                    step,
                    attempt: s.attempts,
                });
            }
        }
        Event::CompensationFinished { step, ok } => {
            if let Phase::Compensating { .. } = state.phase {
                if ok {
                    state.steps[step].status = StepStatus::Compensated;
                }
                out.push(Action::StepCompensated { step, ok });
                next_compensation(state, &mut out);
            }
        }
        Event::Cancel => {
            if state.phase == Phase::Running {
                stop(dag, state, RunStatus::Cancelled, &mut out);
            } else {
                // Cancelling a compensation leaves the rest undone, on purpose.
                state.phase = Phase::Finished(RunStatus::Cancelled);
                out.push(Action::AbortInFlight);
                out.push(Action::Finish(RunStatus::Cancelled));
            }
        }
        Event::Deadline => {
            if state.phase == Phase::Running {
                stop(dag, state, RunStatus::TimedOut, &mut out);
            }
        }
    }
    out
}

/// Starts every step whose needs all succeeded; skips every step that can no longer run.
fn advance(
    dag: &Dag,
    state: &mut RunState,
    condition: &mut dyn FnMut(usize) -> Condition,
    out: &mut Vec<Action>,
) {
    loop {
        let mut changed = false;
        for i in 0..dag.len() {
            if state.steps[i].status != StepStatus::Pending {
                continue;
            }
            let needs = &dag.needs[i];
            if needs.iter().any(|&n| {
                matches!(
                    state.steps[n].status,
                    StepStatus::Failed | StepStatus::Skipped | StepStatus::Cancelled
                )
            }) {
                state.steps[i].status = StepStatus::Skipped;
                out.push(Action::StepSkipped { step: i });
                changed = true;
            } else if needs
                .iter()
                .all(|&n| state.steps[n].status == StepStatus::Succeeded)
            {
                changed = true;
                match condition(i) {
                    Condition::Run => {
                        let s = &mut state.steps[i];
                        s.status = StepStatus::Running;
                        s.attempts += 1;
                        s.in_flight = true;
                        out.push(Action::Dispatch {
                            step: i,
                            attempt: s.attempts,
                        });
                    }
                    Condition::Skip => {
                        state.steps[i].status = StepStatus::Skipped;
                        out.push(Action::StepSkipped { step: i });
                    }
                    Condition::Error(e) => {
                        state.steps[i].status = StepStatus::Failed;
                        out.push(Action::StepFailed {
                            step: i,
                            reason: StopReason::Condition(e),
                        });
                        stop(dag, state, RunStatus::Failed, out);
                        return;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if state.phase == Phase::Running && state.steps.iter().all(|s| s.status.is_terminal()) {
        state.phase = Phase::Finished(RunStatus::Succeeded);
        out.push(Action::Finish(RunStatus::Succeeded));
    }
}

/// Ends the forward phase: abort what runs, skip what waits, then compensate or finish.
fn stop(dag: &Dag, state: &mut RunState, outcome: RunStatus, out: &mut Vec<Action>) {
    if state.steps.iter().any(|s| s.status == StepStatus::Running) {
        out.push(Action::AbortInFlight);
    }
    for (i, s) in state.steps.iter_mut().enumerate() {
        match s.status {
            StepStatus::Running => {
                s.status = StepStatus::Cancelled;
                s.in_flight = false;
                out.push(Action::StepCancelled {
                    step: i,
                    run: outcome,
                });
            }
            StepStatus::Pending => {
                s.status = StepStatus::Skipped;
                out.push(Action::StepSkipped { step: i });
            }
            _ => {}
        }
    }
    if outcome == RunStatus::Cancelled {
        state.phase = Phase::Finished(outcome);
        out.push(Action::Finish(outcome));
        return;
    }
    state.phase = Phase::Compensating {
        queue: compensation_queue(dag, &state.succeeded_order),
        outcome,
    };
    next_compensation(state, out);
}

fn next_compensation(state: &mut RunState, out: &mut Vec<Action>) {
    let Phase::Compensating { queue, outcome } = &mut state.phase else {
        return;
    };
    let outcome = *outcome;
    // The queue holds compensable steps in the order they succeeded: undo the newest first.
    while let Some(step) = queue.pop() {
        if state.steps[step].status == StepStatus::Succeeded {
            out.push(Action::Compensate { step });
            return;
        }
    }
    state.phase = Phase::Finished(outcome);
    out.push(Action::Finish(outcome));
}

/// Rebuilds the scheduler's view of a run from stored step states (after a restart).
pub fn restore(dag: &Dag, steps: impl IntoIterator<Item = (usize, StepStatus, u32)>) -> RunState {
    let mut state = RunState::new(dag.len());
    for (i, status, attempts) in steps {
        state.steps[i] = StepState {
            status,
            attempts,
            in_flight: false,
        };
        if status == StepStatus::Succeeded {
            state.succeeded_order.push(i);
        }
    }
    // A run that stopped while failing or timing out: steps failed, were stopped or were
    // compensated, but the run is not finished. Resume its saga where it was. (A cancelled
    // run finishes in the same commit that stops its steps.)
    let has = |status| state.steps.iter().any(|s| s.status == status);
    let outcome = if has(StepStatus::Failed) {
        Some(RunStatus::Failed)
    } else if has(StepStatus::Cancelled) {
        Some(RunStatus::TimedOut)
    } else if has(StepStatus::Compensated) {
        Some(RunStatus::Failed)
    } else {
        None
    };
    if let Some(outcome) = outcome {
        for s in state.steps.iter_mut() {
            if matches!(s.status, StepStatus::Pending | StepStatus::Running) {
                s.status = StepStatus::Skipped;
            }
        }
        state.phase = Phase::Compensating {
            queue: compensation_queue(dag, &state.succeeded_order),
            outcome,
        };
    }
    state
}

/// Steps to compensate, in saga order, given the order they succeeded in.
pub fn compensation_queue(dag: &Dag, succeeded_order: &[usize]) -> Vec<usize> {
    succeeded_order
        .iter()
        .copied()
        .filter(|&i| dag.compensable[i])
        .collect()
}
