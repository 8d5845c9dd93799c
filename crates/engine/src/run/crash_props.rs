//! Crash a run after any effect, rebuild it from what was persisted, and it ends as if
//! nothing had happened: no step that had durably succeeded runs again, and the final
//! status and output are those of an uncrashed run over the same agents.
//!
//! The agents are a table: each (step, attempt) succeeds (echoing its rendered input, so a
//! step's output depends on the outputs it was given), fails retryably or fails for good;
//! each compensation succeeds or fails. Calls finish in an order the test chooses, and
//! records that need not be durable land late or never.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use flotilla_store::{
    EventRecord, RunKind, RunRecord, RunStatus, StepRecord, StepStatus, Usage, Write,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::Compiled;
use super::machine::{Effect, Input, Machine, Rendered, Request};
use crate::call::agents::{AgentError, AgentResponse};

/// How an attempt ends.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Ok,
    Retryable,
    Permanent,
}

#[derive(Debug, Clone)]
struct Case {
    /// For each step: the earlier steps it needs.
    needs: Vec<Vec<usize>>,
    /// For each step: attempts allowed.
    attempts: Vec<u32>,
    /// For each step: whether it has a compensation, and whether that succeeds.
    compensation: Vec<Option<bool>>,
    /// For each step: the fate of each attempt.
    fates: Vec<Vec<Fate>>,
    /// Which pending call finishes next, by turn.
    order: Vec<usize>,
    /// Whether records that need not be durable land at the end of a turn, by turn.
    flush: Vec<bool>,
    /// The effect the process dies before.
    crash_at: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=6).prop_flat_map(|n| {
        let fate = prop_oneof![
            6 => Just(Fate::Ok),
            2 => Just(Fate::Retryable),
            1 => Just(Fate::Permanent)
        ];
        (
            proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
            proptest::collection::vec(1u32..=3, n),
            proptest::collection::vec(proptest::option::of(any::<bool>()), n),
            proptest::collection::vec(proptest::collection::vec(fate, 3), n),
            proptest::collection::vec(any::<usize>(), 64),
            proptest::collection::vec(any::<bool>(), 64),
            0usize..40,
        )
            .prop_map(
                |(mask, attempts, compensation, fates, order, flush, crash_at)| Case {
                    needs: (0..mask.len())
                        .map(|i| (0..i).filter(|&j| mask[i][j]).collect())
                        .collect(),
                    attempts,
                    compensation,
                    fates,
                    order,
                    flush,
                    crash_at,
                },
            )
    })
}

fn compiled(case: &Case) -> Arc<Compiled> {
    let steps: Vec<Value> = (0..case.needs.len())
        .map(|i| {
            let needs: Vec<String> = case.needs[i].iter().map(|j| format!("s{j}")).collect();
            let inputs: Vec<String> = needs
                .iter()
                .map(|n| format!("{{{{ steps.{n}.output.v }}}}"))
                .collect();
            let mut step = json!({
                "id": format!("s{i}"),
                "agent": "table",
                "needs": needs,
                "input": {"v": format!("s{i}"), "from": inputs},
            });
            if case.attempts[i] > 1 {
                step["retry"] = json!({"attempts": case.attempts[i]});
            }
            if case.compensation[i].is_some() {
                step["compensate"] = json!({"agent": "table", "action": "undo"});
            }
            step
        })
        .collect();
    let wf = serde_json::from_value(json!({ "steps": steps })).expect("a valid workflow");
    let definition = flotilla_spec::Definition {
        workflow: wf,
        agents: Default::default(),
    };
    Compiled::new("crashy", definition).expect("compiles")
}

fn record(compiled: &Compiled) -> RunRecord {
    RunRecord {
        id: "run".into(),
        kind: RunKind::Workflow,
        workflow: compiled.name.clone(),
        definition_hash: compiled.hash.clone(),
        status: RunStatus::Queued,
        priority: "normal".into(),
        input: json!({}),
        metadata: json!({}),
        output: None,
        error: None,
        created_at: 0,
        updated_at: 0,
        finished_at: None,
        deadline_at: None,
        version: None,
        steps: Vec::new(),
        usage: Usage::default(),
    }
}

/// What the store holds, with the store's rules for overwriting.
#[derive(Default)]
struct Model {
    status: Option<RunStatus>,
    output: Option<Value>,
    steps: BTreeMap<String, StepRecord>,
    events: BTreeMap<i64, EventRecord>,
}

impl Model {
    fn apply(&mut self, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::Step { step, .. } => {
                    let may = self.steps.get(&step.step_id).is_none_or(|old| {
                        matches!(old.status, StepStatus::Pending | StepStatus::Running)
                            || (old.status == StepStatus::Succeeded
                                && matches!(
                                    step.status,
                                    StepStatus::Succeeded | StepStatus::Compensated
                                ))
                    });
                    if may {
                        self.steps.insert(step.step_id.clone(), step);
                    }
                }
                Write::Run { status, output, .. } => {
                    if self.status.is_none_or(|s| !s.is_terminal()) {
                        self.status = Some(status);
                        self.output = output.or(self.output.take());
                    }
                }
                Write::Event(e) => {
                    self.events.entry(e.seq).or_insert(e);
                }
                Write::Fence { .. } => {}
            }
        }
    }

    fn succeeded(&self) -> HashSet<String> {
        self.steps
            .values()
            .filter(|s| s.status == StepStatus::Succeeded)
            .map(|s| s.step_id.clone())
            .collect()
    }
}

enum Work {
    Attempt(Request),
    Retry(usize),
    Compensation(usize),
}

/// How a simulated run ended.
#[derive(Debug, PartialEq)]
struct End {
    status: RunStatus,
    output: Option<Value>,
}

struct Sim<'a> {
    case: &'a Case,
    compiled: Arc<Compiled>,
    flags: flotilla_flags::Flags,
    model: Model,
    deferred: Vec<Write>,
    pending: VecDeque<Work>,
    effects: usize,
    turns: usize,
    /// Steps dispatched (by id), in order.
    dispatched: Vec<String>,
}

impl Sim<'_> {
    fn answer(&self, work: Work) -> Input {
        match work {
            Work::Retry(step) => Input::RetryDue { step },
            Work::Compensation(step) => {
                let result = if self.case.compensation[step] == Some(true) {
                    Ok(AgentResponse::output(Value::Null))
                } else {
                    Err(AgentError::permanent("undo failed"))
                };
                Input::Compensation { step, result }
            }
            Work::Attempt(Request {
                step,
                attempt,
                rendered,
            }) => {
                let result = match (self.case.fates[step][attempt as usize - 1], rendered) {
                    (_, Err(e)) => Err(AgentError::permanent(e)),
                    (Fate::Ok, Ok(Rendered { input, .. })) => Ok(AgentResponse::output(
                        json!({"v": input["v"], "got": input}),
                    )),
                    (Fate::Retryable, _) => Err(AgentError::retryable("try again")),
                    (Fate::Permanent, _) => Err(AgentError::permanent("no")),
                };
                Input::Attempt {
                    step,
                    attempt,
                    agent: Some("table".into()),
                    result,
                }
            }
        }
    }

    /// Drives `machine` until it finishes (`Ok`) or the process dies at effect `crash_at`
    /// (`Err`, with the steps durably succeeded at that moment).
    fn drive(&mut self, machine: &mut Machine, crash_at: usize) -> Result<End, HashSet<String>> {
        let mut inputs = vec![Input::Start];
        loop {
            for effect in machine.handle(std::mem::take(&mut inputs), 1_000, &self.flags) {
                if self.effects == crash_at {
                    return Err(self.model.succeeded());
                }
                self.effects += 1;
                match effect {
                    Effect::Persist {
                        writes, durable, ..
                    } => {
                        self.deferred.extend(writes);
                        if durable {
                            self.model.apply(std::mem::take(&mut self.deferred));
                        }
                    }
                    Effect::Publish(_) => {}
                    Effect::Dispatch(r) => {
                        self.dispatched.push(self.compiled.dag.ids[r.step].clone());
                        self.pending.push_back(Work::Attempt(r));
                    }
                    Effect::Compensate(r) => self.pending.push_back(Work::Compensation(r.step)),
                    Effect::ArmTimer { step, .. } => self.pending.push_back(Work::Retry(step)),
                    Effect::AbortInFlight => self.pending.clear(),
                    Effect::Finish(f) => {
                        return Ok(End {
                            status: f.outcome.status,
                            output: f.outcome.output,
                        });
                    }
                }
            }
            let turn = self.turns % self.case.order.len();
            self.turns += 1;
            if self.case.flush[turn] {
                self.model.apply(std::mem::take(&mut self.deferred));
            }
            assert!(self.turns < 10_000, "the run never ends");
            let at = self.case.order[turn] % self.pending.len().max(1);
            let work = self
                .pending
                .remove(at)
                .expect("a run that is not over waits for work");
            inputs.push(self.answer(work));
        }
    }

    /// The record a replica (or this process, restarted) resumes from.
    fn stored(&self) -> (RunRecord, i64) {
        let mut r = record(&self.compiled);
        r.status = self.model.status.unwrap_or(RunStatus::Queued);
        r.output = self.model.output.clone();
        r.steps = self.model.steps.values().cloned().collect();
        let seq = self.model.events.keys().last().copied().unwrap_or(0);
        (r, seq)
    }
}

fn simulate(case: &Case, crash_at: usize) -> (End, Option<HashSet<String>>, Vec<String>) {
    let compiled = compiled(case);
    let metrics = crate::metrics::Metrics::new();
    let mut sim = Sim {
        case,
        compiled: compiled.clone(),
        flags: flotilla_flags::Flags::new(
            flotilla_flags::FlagSet::empty("test"),
            metrics.flags.clone(),
        ),
        model: Model::default(),
        deferred: Vec::new(),
        pending: VecDeque::new(),
        effects: 0,
        turns: 0,
        dispatched: Vec::new(),
    };
    let mut machine = Machine::new(compiled.clone(), &record(&compiled), 0);
    match sim.drive(&mut machine, crash_at) {
        Ok(end) => (end, None, Vec::new()),
        Err(succeeded) => {
            // The process dies: what was not committed is gone, and so are its calls.
            sim.deferred.clear();
            sim.pending.clear();
            let (stored, seq) = sim.stored();
            if stored.status.is_terminal() {
                let end = End {
                    status: stored.status,
                    output: stored.output,
                };
                return (end, Some(succeeded), Vec::new());
            }
            sim.dispatched.clear();
            let mut resumed = Machine::resume(compiled, &stored, seq, 1);
            let end = sim
                .drive(&mut resumed, usize::MAX)
                .expect("no second crash");
            let again = std::mem::take(&mut sim.dispatched);
            (end, Some(succeeded), again)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_run_rebuilt_after_a_crash_ends_as_if_nothing_happened(case in case()) {
        let (clean, _, _) = simulate(&case, usize::MAX);
        let (crashed, succeeded_at_crash, dispatched_after) = simulate(&case, case.crash_at);
        if let Some(succeeded) = succeeded_at_crash {
            for step in &dispatched_after {
                prop_assert!(
                    !succeeded.contains(step),
                    "{step} had durably succeeded before the crash, yet ran again"
                );
            }
        }
        prop_assert_eq!(&crashed.status, &clean.status);
        prop_assert_eq!(&crashed.output, &clean.output);
    }
}
