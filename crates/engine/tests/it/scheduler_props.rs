//! Property tests of the pure scheduler on random DAGs with random failures.

use std::collections::HashMap;

use flotilla_engine::scheduler::{Action, Condition, Dag, Event, Outcome, RunState, decide};
use flotilla_store::{RunStatus, StepStatus};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Succeed,
    /// Fails `n` times (retryable), then succeeds.
    Flaky(u32),
    /// Fails for good.
    Fail,
    /// Its condition is false.
    Skip,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => Just(Behaviour::Succeed),
        2 => (1u32..3).prop_map(Behaviour::Flaky),
        1 => Just(Behaviour::Fail),
        1 => Just(Behaviour::Skip),
    ]
}

fn dag_and_behaviours() -> impl Strategy<Value = (Dag, Vec<Behaviour>, Vec<u32>)> {
    (1usize..12).prop_flat_map(|n| {
        let needs = (0..n)
            .map(|i| {
                proptest::collection::vec(any::<bool>(), i).prop_map(|mask| {
                    mask.iter()
                        .enumerate()
                        .filter(|(_, b)| **b)
                        .map(|(j, _)| j)
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>();
        (
            needs,
            proptest::collection::vec(behaviour(), n),
            proptest::collection::vec(1u32..4, n),
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(any::<u32>(), 64),
        )
            .prop_map(
                move |(needs, behaviours, max_attempts, compensable, order)| {
                    let dag = Dag {
                        ids: (0..n).map(|i| format!("s{i}")).collect(),
                        needs,
                        max_attempts,
                        compensable,
                    };
                    (dag, behaviours, order)
                },
            )
    })
}

struct Trace {
    dispatches: Vec<(usize, u32)>,
    compensations: Vec<usize>,
    succeeded_order: Vec<usize>,
    finish: Option<RunStatus>,
}

/// Runs the scheduler to the end, finishing in-flight attempts in an order drawn from `order`.
fn simulate(dag: &Dag, behaviours: &[Behaviour], order: &[u32]) -> Trace {
    let mut state = RunState::new(dag.len());
    let mut failures_left: HashMap<usize, u32> = HashMap::new();
    let mut in_flight: Vec<(usize, u32)> = Vec::new();
    let mut pending: Vec<Event> = vec![Event::Start];
    let mut trace = Trace {
        dispatches: vec![],
        compensations: vec![],
        succeeded_order: vec![],
        finish: None,
    };
    let mut pick = order.iter().cycle();
    for _round in 0..10_000 {
        let event = if let Some(e) = pending.pop() {
            e
        } else if !in_flight.is_empty() {
            let k = *pick.next().unwrap() as usize % in_flight.len();
            let (step, attempt) = in_flight.swap_remove(k);
            let outcome = match behaviours[step] {
                Behaviour::Succeed | Behaviour::Skip => Outcome::Succeeded,
                Behaviour::Fail => Outcome::Failed { retryable: false },
                Behaviour::Flaky(n) => {
                    let left = failures_left.entry(step).or_insert(n);
                    if *left > 0 {
                        *left -= 1;
                        Outcome::Failed { retryable: true }
                    } else {
                        Outcome::Succeeded
                    }
                }
            };
            Event::AttemptFinished {
                step,
                attempt,
                outcome,
            }
        } else {
            break;
        };
        let mut cond = |i: usize| {
            if matches!(behaviours[i], Behaviour::Skip) {
                Condition::Skip
            } else {
                Condition::Run
            }
        };
        let actions = decide(dag, &mut state, event, &mut cond);
        for a in actions {
            match a {
                Action::Dispatch { step, attempt } => {
                    for &n in &dag.needs[step] {
                        assert_eq!(
                            state.steps[n].status,
                            StepStatus::Succeeded,
                            "step {step} dispatched before need {n} succeeded"
                        );
                    }
                    trace.dispatches.push((step, attempt));
                    in_flight.push((step, attempt));
                }
                Action::ScheduleRetry { step, .. } => pending.push(Event::RetryDue { step }),
                Action::StepSucceeded { step } => trace.succeeded_order.push(step),
                Action::AbortInFlight => in_flight.clear(),
                Action::Compensate { step } => {
                    trace.compensations.push(step);
                    pending.push(Event::CompensationFinished { step, ok: true });
                }
                Action::Finish(status) => {
                    assert!(trace.finish.is_none(), "finished twice");
                    trace.finish = Some(status);
                }
                _ => {}
            }
        }
    }
    trace
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn steps_run_only_after_their_needs_and_once_per_attempt((dag, behaviours, order) in dag_and_behaviours()) {
        let trace = simulate(&dag, &behaviours, &order);
        prop_assert!(trace.finish.is_some(), "the run always ends");

        // Attempts of a step are numbered 1, 2, 3… with no repeats.
        let mut attempts: HashMap<usize, Vec<u32>> = HashMap::new();
        for (s, a) in &trace.dispatches {
            attempts.entry(*s).or_default().push(*a);
        }
        for (s, list) in &attempts {
            let expected: Vec<u32> = (1..=list.len() as u32).collect();
            prop_assert_eq!(list, &expected, "attempts of step {}", s);
            prop_assert!(list.len() as u32 <= dag.max_attempts[*s]);
        }

        // A step whose need failed or was skipped never runs.
        let failed_or_skipped = |s: usize, trace: &Trace| !trace.succeeded_order.contains(&s);
        for (s, _) in &trace.dispatches {
            for &n in &dag.needs[*s] {
                prop_assert!(!failed_or_skipped(n, &trace), "step {} ran though need {} did not succeed", s, n);
            }
        }

        let any_failure = behaviours.iter().enumerate().any(|(i, b)| match b {
            Behaviour::Fail => true,
            Behaviour::Flaky(n) => *n >= dag.max_attempts[i],
            _ => false,
        });
        let any_skip = behaviours.iter().any(|b| matches!(b, Behaviour::Skip));
        if !any_failure && !any_skip {
            // Everything succeeds: every step runs its first attempt exactly once.
            prop_assert_eq!(trace.finish, Some(RunStatus::Succeeded));
            for s in 0..dag.len() {
                prop_assert_eq!(attempts.get(&s).map(|v| v[0]), Some(1));
            }
            prop_assert!(trace.compensations.is_empty());
        }
        if trace.finish == Some(RunStatus::Failed) {
            // The saga undoes compensable succeeded steps, newest first.
            let expected: Vec<usize> = trace.succeeded_order.iter().rev().copied().filter(|&s| dag.compensable[s]).collect();
            prop_assert_eq!(&trace.compensations, &expected);
        } else {
            prop_assert!(trace.compensations.is_empty());
        }
    }
}

#[test]
fn cancel_stops_everything_without_compensation() {
    let dag = Dag {
        ids: vec!["a".into(), "b".into()],
        needs: vec![vec![], vec![0]],
        max_attempts: vec![1, 1],
        compensable: vec![true, true],
    };
    let mut state = RunState::new(2);
    let mut run = |_: usize| Condition::Run;
    let first = decide(&dag, &mut state, Event::Start, &mut run);
    assert!(first.contains(&Action::Dispatch {
        step: 0,
        attempt: 1
    }));
    let actions = decide(&dag, &mut state, Event::Cancel, &mut run);
    assert!(actions.contains(&Action::AbortInFlight));
    assert!(actions.contains(&Action::StepCancelled {
        step: 0,
        run: RunStatus::Cancelled
    }));
    assert!(actions.contains(&Action::StepSkipped { step: 1 }));
    assert_eq!(actions.last(), Some(&Action::Finish(RunStatus::Cancelled)));
    // A late result changes nothing.
    let late = decide(
        &dag,
        &mut state,
        Event::AttemptFinished {
            step: 0,
            attempt: 1,
            outcome: Outcome::Succeeded,
        },
        &mut run,
    );
    assert!(late.is_empty());
}

#[test]
fn deadline_compensates_and_times_out() {
    let dag = Dag {
        ids: vec!["a".into(), "b".into()],
        needs: vec![vec![], vec![0]],
        max_attempts: vec![1, 1],
        compensable: vec![true, false],
    };
    let mut state = RunState::new(2);
    let mut run = |_: usize| Condition::Run;
    decide(&dag, &mut state, Event::Start, &mut run);
    decide(
        &dag,
        &mut state,
        Event::AttemptFinished {
            step: 0,
            attempt: 1,
            outcome: Outcome::Succeeded,
        },
        &mut run,
    );
    let actions = decide(&dag, &mut state, Event::Deadline, &mut run);
    assert!(actions.contains(&Action::Compensate { step: 0 }));
    let end = decide(
        &dag,
        &mut state,
        Event::CompensationFinished { step: 0, ok: true },
        &mut run,
    );
    assert_eq!(end.last(), Some(&Action::Finish(RunStatus::TimedOut)));
}

#[test]
fn restart_reruns_the_interrupted_attempt_under_its_own_number() {
    let dag = Dag {
        ids: vec!["a".into(), "b".into()],
        needs: vec![vec![], vec![0]],
        max_attempts: vec![3, 1],
        compensable: vec![false, false],
    };
    let mut state = flotilla_engine::scheduler::restore(
        &dag,
        [(0, StepStatus::Succeeded, 1), (1, StepStatus::Running, 1)],
    );
    let mut run = |_: usize| Condition::Run;
    let actions = decide(&dag, &mut state, Event::Start, &mut run);
    assert!(actions.contains(&Action::Dispatch {
        step: 1,
        attempt: 1
    }));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Dispatch { step: 0, .. })),
        "succeeded steps never run again"
    );
}

#[test]
fn a_restart_while_timing_out_finishes_compensating_and_times_out() {
    let dag = Dag {
        ids: vec!["a".into(), "b".into()],
        needs: vec![vec![], vec![]],
        max_attempts: vec![1, 1],
        compensable: vec![true, false],
    };
    // `a` succeeded, `b` was stopped by the deadline; the process died before `a` was undone.
    let mut state = flotilla_engine::scheduler::restore(
        &dag,
        [(0, StepStatus::Succeeded, 1), (1, StepStatus::Cancelled, 1)],
    );
    let mut run = |_: usize| Condition::Run;
    let actions = decide(&dag, &mut state, Event::Start, &mut run);
    assert!(
        actions.contains(&Action::Compensate { step: 0 }),
        "{actions:?}"
    );
    let end = decide(
        &dag,
        &mut state,
        Event::CompensationFinished { step: 0, ok: true },
        &mut run,
    );
    assert_eq!(end.last(), Some(&Action::Finish(RunStatus::TimedOut)));
}
