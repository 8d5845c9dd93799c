//! A run as one pure state machine: inputs in (the run starts, an attempt ended, a retry is
//! due, a user cancelled), typed effects out (persist, publish, dispatch, arm a timer,
//! finish). No I/O, no clock, no randomness: the driver passes the time in and carries the
//! effects out, in order. The machine owns everything that makes a run's record: step
//! outputs and errors, retries, the first failure, usage, event sequence numbers,
//! compensation and the final output.
//!
//! A run rebuilt from what was persisted ([`Machine::resume`]) goes on as if nothing had
//! happened: `crash_props` crashes it after every effect and checks that.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_spec::template;
use flotilla_store::{
    EventKind, EventRecord, RunKind, RunRecord, RunStatus, StepRecord, StepStatus, Usage, Write,
};
use serde_json::{Map, Value, json};

use super::context::{context, context_value, with_flags};
use super::scheduler::{self, Action, Condition, Event, Outcome, RunState, StopReason};
use super::{Compiled, RunOutcome};
use crate::call::agents::{AgentError, AgentResponse};
use crate::call::budget::Spend;
use crate::error::ErrorKind;

/// What happened to a run.
#[derive(Debug)]
pub(crate) enum Input {
    /// The run starts, or resumes after a restart or a takeover.
    Start,
    /// A user cancelled it.
    Cancel,
    /// Its SLA timeout passed.
    Deadline,
    /// An attempt ended.
    Attempt {
        step: usize,
        attempt: u32,
        /// Who served it, when an agent was chosen.
        agent: Option<String>,
        result: Result<AgentResponse, AgentError>,
    },
    /// A retry's backoff elapsed.
    RetryDue { step: usize },
    /// A compensation ended.
    Compensation {
        step: usize,
        result: Result<AgentResponse, AgentError>,
    },
}

/// What the driver does next, in this order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Records to write under the run's `epoch`. A `durable` batch is committed before any
    /// later effect is carried out (nothing may depend on a success that could be lost);
    /// the others may wait to ride along with the next commit.
    Persist {
        writes: Vec<Write>,
        epoch: i64,
        durable: bool,
    },
    /// Events for live subscribers (after their records were handed to the store).
    Publish(Vec<EventRecord>),
    /// Start an attempt.
    Dispatch(Request),
    /// Undo a succeeded step.
    Compensate(Request),
    /// Wait out a retry's backoff, then give [`Input::RetryDue`].
    ArmTimer { step: usize, failed_attempt: u32 },
    /// Stop every attempt in flight and every armed timer.
    AbortInFlight,
    /// The run is over.
    Finish(Box<Finished>),
}

/// A call the run wants made, with its templates rendered.
#[derive(Debug)]
pub(crate) struct Request {
    pub step: usize,
    pub attempt: u32,
    /// What to send, or why the step's templates could not be rendered (the attempt then
    /// fails for good without a call).
    pub rendered: Result<Rendered, String>,
}

/// A call's rendered content.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    pub action: String,
    pub input: Value,
    pub instructions: Option<String>,
    pub prompt: Option<String>,
}

/// How a run ended, and what it used.
#[derive(Debug)]
pub(crate) struct Finished {
    pub outcome: RunOutcome,
    pub usage: Usage,
}

/// One run.
pub(crate) struct Machine {
    /// A workflow run, or a task (one agent call).
    kind: RunKind,
    compiled: Arc<Compiled>,
    run_id: String,
    input: Value,
    metadata: Value,
    state: RunState,
    /// The last event's sequence number.
    seq: i64,
    epoch: i64,
    outputs: Vec<Option<Value>>,
    errors: Vec<Option<String>>,
    started: Vec<Option<i64>>,
    /// The agent of each step's last attempt.
    served_by: Vec<Option<String>>,
    /// Tokens and cost of each step's LLM calls.
    usage: Vec<Option<Usage>>,
    first_failure: Option<(usize, ErrorKind)>,
    last_agent: Option<String>,
}

impl Machine {
    /// A new run, held under `epoch`.
    pub(crate) fn new(compiled: Arc<Compiled>, record: &RunRecord, epoch: i64) -> Machine {
        let n = compiled.dag.len();
        Machine {
            kind: record.kind,
            run_id: record.id.clone(),
            input: record.input.clone(),
            metadata: record.metadata.clone(),
            state: RunState::new(n),
            seq: 0,
            epoch,
            outputs: vec![None; n],
            errors: vec![None; n],
            started: vec![None; n],
            served_by: vec![None; n],
            usage: vec![None; n],
            first_failure: None,
            last_agent: None,
            compiled,
        }
    }

    /// A run rebuilt from its record (after a restart, or taken over from another replica),
    /// whose last stored event was `seq`.
    pub(crate) fn resume(
        compiled: Arc<Compiled>,
        record: &RunRecord,
        seq: i64,
        epoch: i64,
    ) -> Machine {
        let mut m = Machine::new(compiled, record, epoch);
        let dag = &m.compiled.dag;
        let stored: Vec<(usize, &StepRecord)> = record
            .steps
            .iter()
            .filter_map(|s| Some((dag.ids.iter().position(|id| *id == s.step_id)?, s)))
            .collect();
        m.state = scheduler::restore(dag, stored.iter().map(|(i, s)| (*i, s.status, s.attempts)));
        for (i, s) in stored {
            m.outputs[i] = s.output.clone();
            m.errors[i] = s.error.clone();
            m.started[i] = s.started_at;
            m.served_by[i] = s.agent.clone();
            m.usage[i] = s.usage;
        }
        m.seq = seq;
        m
    }

    /// The workflow.
    pub(crate) fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    /// The run's id.
    pub(crate) fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The epoch its writes carry.
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The run's input.
    pub(crate) fn input(&self) -> &Value {
        &self.input
    }

    /// Applies `inputs` at time `now` (unix milliseconds) and says what to do. `flags`
    /// answer `flag('name')` in `when:` conditions.
    pub(crate) fn handle(
        &mut self,
        inputs: Vec<Input>,
        now: i64,
        flags: &flotilla_flags::Flags,
    ) -> Vec<Effect> {
        let mut events = Vec::with_capacity(inputs.len());
        for input in inputs {
            events.push(self.absorb(input));
        }
        let mut actions = Vec::new();
        for ev in events {
            let Machine {
                compiled,
                state,
                outputs,
                input,
                metadata,
                run_id,
                ..
            } = self;
            let mut condition = |i: usize| match &compiled.workflow.steps[i].when {
                None => Condition::Run,
                Some(expr) => {
                    let base = context(compiled, outputs, input, metadata, run_id);
                    let ctx = with_flags(base, flags, input, metadata);
                    match template::eval_condition(expr, &ctx) {
                        Ok(true) => Condition::Run,
                        Ok(false) => Condition::Skip,
                        Err(e) => Condition::Error(format!("`when` failed: {e}")),
                    }
                }
            };
            actions.extend(scheduler::decide(&compiled.dag, state, ev, &mut condition));
        }
        self.effects(actions, now)
    }

    /// Records what an input says and turns it into a scheduler event.
    fn absorb(&mut self, input: Input) -> Event {
        match input {
            Input::Start => Event::Start,
            Input::Cancel => Event::Cancel,
            Input::Deadline => Event::Deadline,
            Input::RetryDue { step } => Event::RetryDue { step },
            Input::Attempt {
                step,
                attempt,
                agent,
                result,
            } => {
                if agent.is_some() {
                    self.served_by[step] = agent.clone();
                    self.last_agent = agent;
                }
                if let Ok(AgentResponse { usage: Some(u), .. }) = &result {
                    self.usage[step] = Some(self.usage[step].unwrap_or_default() + *u);
                }
                let outcome = match result {
                    Ok(resp) => {
                        self.outputs[step] = Some(resp.output);
                        self.errors[step] = None;
                        Outcome::Succeeded
                    }
                    Err(e) => {
                        let retryable = e.is_retryable();
                        let last = !(retryable && attempt < self.compiled.dag.max_attempts[step]);
                        let step_id = &self.compiled.dag.ids[step];
                        if last {
                            tracing::warn!(run_id = %self.run_id, step_id = %step_id, attempt, error = %e, "step failed");
                            self.first_failure.get_or_insert((step, e.kind()));
                        } else {
                            tracing::info!(run_id = %self.run_id, step_id = %step_id, attempt, error = %e, "attempt failed; retrying");
                        }
                        self.errors[step] = Some(e.to_string());
                        Outcome::Failed { retryable }
                    }
                };
                Event::AttemptFinished {
                    step,
                    attempt,
                    outcome,
                }
            }
            Input::Compensation { step, result } => {
                let ok = result.is_ok();
                if let Err(e) = result {
                    self.errors[step] = Some(format!("compensation failed: {e}"));
                }
                Event::CompensationFinished { step, ok }
            }
        }
    }

    fn event(
        &mut self,
        kind: EventKind,
        step: Option<usize>,
        data: Value,
        now: i64,
    ) -> EventRecord {
        self.seq += 1;
        EventRecord {
            run_id: self.run_id.clone(),
            seq: self.seq,
            at: now,
            kind,
            step_id: step.map(|i| self.compiled.dag.ids[i].clone()),
            data,
        }
    }

    fn step_write(&self, i: usize, status: StepStatus, finished_at: Option<i64>) -> Write {
        Write::Step {
            run_id: self.run_id.clone(),
            step: StepRecord {
                step_id: self.compiled.dag.ids[i].clone(),
                status,
                attempts: self.state.steps[i].attempts,
                output: self.outputs[i].clone(),
                error: self.errors[i].clone(),
                started_at: self.started[i],
                finished_at,
                agent: self.served_by[i].clone(),
                usage: self.usage[i],
            },
        }
    }

    /// Turns the scheduler's actions into effects: one persist (durable when it records an
    /// outcome), the events, then the calls and timers, then the end.
    fn effects(&mut self, actions: Vec<Action>, now: i64) -> Vec<Effect> {
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let mut durable = false;
        let mut after = Vec::new();
        let mut finished = None;
        for action in actions {
            match action {
                Action::MarkRunning => {
                    writes.push(Write::Run {
                        run_id: self.run_id.clone(),
                        status: RunStatus::Running,
                        output: None,
                        error: None,
                        at: now,
                    });
                    let data = json!({"workflow": self.compiled.name});
                    events.push(self.event(EventKind::RunStarted, None, data, now));
                }
                Action::Dispatch { step, attempt } => {
                    self.started[step].get_or_insert(now);
                    writes.push(self.step_write(step, StepStatus::Running, None));
                    let data = json!({"attempt": attempt});
                    events.push(self.event(EventKind::StepStarted, Some(step), data, now));
                    after.push(Effect::Dispatch(self.request(step, attempt)));
                }
                Action::ScheduleRetry {
                    step,
                    failed_attempt,
                } => {
                    writes.push(self.step_write(step, StepStatus::Running, None));
                    let data = json!({"attempt": failed_attempt, "error": self.errors[step]});
                    events.push(self.event(EventKind::StepRetrying, Some(step), data, now));
                    after.push(Effect::ArmTimer {
                        step,
                        failed_attempt,
                    });
                }
                Action::StepSucceeded { step } => {
                    durable = true;
                    writes.push(self.step_write(step, StepStatus::Succeeded, Some(now)));
                    let data = json!({"attempt": self.state.steps[step].attempts});
                    events.push(self.event(EventKind::StepSucceeded, Some(step), data, now));
                }
                Action::StepFailed { step, reason } => {
                    durable = true;
                    match reason {
                        StopReason::AttemptsExhausted => {}
                        StopReason::Condition(e) => {
                            self.errors[step] = Some(e);
                            self.first_failure
                                .get_or_insert((step, ErrorKind::Condition));
                        }
                    }
                    writes.push(self.step_write(step, StepStatus::Failed, Some(now)));
                    let data = json!({"error": self.errors[step]});
                    events.push(self.event(EventKind::StepFailed, Some(step), data, now));
                }
                Action::StepCancelled { step, run } => {
                    durable = true;
                    self.errors[step] = Some(format!("stopped: the run {}", run_ended(run)));
                    writes.push(self.step_write(step, StepStatus::Cancelled, Some(now)));
                    let data = json!({"error": self.errors[step]});
                    events.push(self.event(EventKind::StepCancelled, Some(step), data, now));
                }
                Action::StepSkipped { step } => {
                    durable = true;
                    writes.push(self.step_write(step, StepStatus::Skipped, Some(now)));
                    events.push(self.event(EventKind::StepSkipped, Some(step), json!({}), now));
                }
                Action::AbortInFlight => after.push(Effect::AbortInFlight),
                Action::Compensate { step } => {
                    let kind = EventKind::CompensationStarted;
                    events.push(self.event(kind, Some(step), json!({}), now));
                    after.push(Effect::Compensate(self.compensation(step)));
                }
                Action::StepCompensated { step, ok } => {
                    durable = true;
                    let (status, kind) = if ok {
                        (StepStatus::Compensated, EventKind::StepCompensated)
                    } else {
                        (StepStatus::Succeeded, EventKind::CompensationFailed)
                    };
                    writes.push(self.step_write(step, status, Some(now)));
                    let data = json!({"error": self.errors[step]});
                    events.push(self.event(kind, Some(step), data, now));
                }
                Action::Finish(status) => {
                    durable = true;
                    let (output, error) = self.final_output(status);
                    // A workflow output that does not render fails the run.
                    let status = if status == RunStatus::Succeeded && error.is_some() {
                        RunStatus::Failed
                    } else {
                        status
                    };
                    writes.push(Write::Run {
                        run_id: self.run_id.clone(),
                        status,
                        output: output.clone(),
                        error: error.clone(),
                        at: now,
                    });
                    let data = json!({"status": status, "error": error});
                    events.push(self.event(EventKind::RunFinished, None, data, now));
                    finished = Some(self.finished(status, output, error));
                }
            }
        }
        let mut out = Vec::with_capacity(after.len() + 3);
        writes.extend(events.iter().cloned().map(Write::Event));
        if !writes.is_empty() {
            out.push(Effect::Persist {
                writes,
                epoch: self.epoch,
                durable,
            });
        }
        if !events.is_empty() {
            out.push(Effect::Publish(events));
        }
        out.extend(after);
        out.extend(finished.map(|f| Effect::Finish(Box::new(f))));
        out
    }

    fn finished(
        &self,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Finished {
        let error_kind = match status {
            RunStatus::Succeeded => None,
            RunStatus::TimedOut => self.failure_kind().or(Some(ErrorKind::Timeout)),
            RunStatus::Cancelled => self.failure_kind().or(Some(ErrorKind::Cancelled)),
            _ => self.failure_kind(),
        };
        Finished {
            outcome: RunOutcome {
                status,
                output,
                error_kind,
                error,
                agent: self.last_agent.clone(),
            },
            usage: self
                .usage
                .iter()
                .flatten()
                .fold(Usage::default(), |a, b| a + *b),
        }
    }

    fn failure_kind(&self) -> Option<ErrorKind> {
        self.first_failure.map(|(_, k)| k)
    }

    fn context_value(&self) -> Value {
        context_value(
            &self.compiled,
            &self.outputs,
            &self.input,
            &self.metadata,
            &self.run_id,
        )
    }

    /// A step's call, rendered against what the run knows now.
    fn request(&self, step: usize, attempt: u32) -> Request {
        let spec = &self.compiled.workflow.steps[step];
        let action = spec.action.clone().unwrap_or_else(|| spec.id.clone());
        let needs_ctx =
            spec.input.is_some() || spec.prompt.is_some() || spec.instructions.is_some();
        if !needs_ctx {
            let rendered = Rendered {
                action,
                input: self.input.clone(),
                instructions: None,
                prompt: None,
            };
            return Request {
                step,
                attempt,
                rendered: Ok(rendered),
            };
        }
        let ctx = template::context(&self.context_value());
        let render = |t: &Option<String>| {
            t.as_deref()
                .map(|t| template::render_str(t, &ctx))
                .transpose()
        };
        let rendered = (|| {
            Ok::<_, flotilla_spec::SpecError>(Rendered {
                action,
                input: match &spec.input {
                    Some(i) => template::render_value(i, &ctx)?,
                    None => self.input.clone(),
                },
                instructions: render(&spec.instructions)?,
                prompt: render(&spec.prompt)?,
            })
        })()
        .map_err(|e| format!("rendering the step's templates: {e}"));
        Request {
            step,
            attempt,
            rendered,
        }
    }

    /// A step's compensation call: its `input:` rendered with the step's `output` (the
    /// output itself when there is no template, or it does not render).
    fn compensation(&self, step: usize) -> Request {
        let output = self.outputs[step].clone().unwrap_or(Value::Null);
        let comp = self.compiled.workflow.steps[step].compensate.as_ref();
        let input = match comp.and_then(|c| c.input.as_ref()) {
            Some(tpl) => {
                let mut ctx_value = self.context_value();
                ctx_value["output"] = output.clone();
                template::render_value(tpl, &template::context(&ctx_value)).unwrap_or(output)
            }
            None => output,
        };
        let rendered = Rendered {
            action: comp.map(|c| c.action.clone()).unwrap_or_default(),
            input,
            instructions: None,
            prompt: None,
        };
        Request {
            step,
            attempt: 1,
            rendered: Ok(rendered),
        }
    }

    fn final_output(&self, status: RunStatus) -> (Option<Value>, Option<String>) {
        match status {
            RunStatus::Succeeded => match &self.compiled.workflow.output {
                Some(tpl) => {
                    let ctx = template::context(&self.context_value());
                    match template::render_value(tpl, &ctx) {
                        Ok(v) => (Some(v), None),
                        Err(e) => (None, Some(format!("rendering the workflow output: {e}"))),
                    }
                }
                None => (Some(self.sink_outputs()), None),
            },
            RunStatus::Cancelled => (None, Some("cancelled".into())),
            RunStatus::TimedOut => {
                let t = self
                    .compiled
                    .workflow
                    .timeout
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                (None, Some(format!("run exceeded its timeout of {t}")))
            }
            _ => {
                let error = match self.first_failure {
                    // A task is one agent call: its error is the call's, with no step named.
                    Some((i, _)) if self.kind == RunKind::Task => self.errors[i]
                        .clone()
                        .unwrap_or_else(|| "the agent call failed".into()),
                    Some((i, _)) => format!(
                        "step `{}` failed: {}",
                        self.compiled.dag.ids[i],
                        self.errors[i].as_deref().unwrap_or("unknown error")
                    ),
                    None => "run failed".into(),
                };
                (None, Some(error))
            }
        }
    }

    /// The outputs of the steps nothing depends on: one value for one such step, else a map.
    fn sink_outputs(&self) -> Value {
        let dag = &self.compiled.dag;
        let sinks: Vec<usize> = (0..dag.len())
            .filter(|&i| !dag.needs.iter().any(|n| n.contains(&i)))
            .collect();
        if let [only] = sinks[..] {
            return self.outputs[only].clone().unwrap_or(Value::Null);
        }
        let map: Map<String, Value> = sinks
            .into_iter()
            .map(|i| {
                (
                    dag.ids[i].clone(),
                    self.outputs[i].clone().unwrap_or(Value::Null),
                )
            })
            .collect();
        Value::Object(map)
    }

    /// What the run has spent so far, in total and by agent.
    pub(crate) fn spend(&self) -> Spend {
        let mut by_agent: HashMap<String, Usage> = HashMap::new();
        let mut total = Usage::default();
        for (agent, usage) in self.served_by.iter().zip(&self.usage) {
            if let (Some(agent), Some(u)) = (agent, usage) {
                let e = by_agent.entry(agent.clone()).or_default();
                *e = *e + *u;
                total = total + *u;
            }
        }
        Spend {
            workflow: self.compiled.name.clone(),
            budget: self.compiled.workflow.budget,
            total,
            by_agent,
        }
    }
}

/// How a run ended, as the rest of a sentence ("the run …").
fn run_ended(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Cancelled => "was cancelled",
        RunStatus::TimedOut => "timed out",
        RunStatus::Failed => "failed at another step",
        RunStatus::Queued | RunStatus::Running | RunStatus::Succeeded => "ended",
    }
}
