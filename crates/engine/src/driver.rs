//! The run driver: one task per run that feeds events to the pure scheduler and carries out
//! its actions — persisting (a success is committed before anything that depends on it
//! starts), calling agents, arming timers and finishing the run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_spec::{Priority, template};
use flotilla_store::{EventRecord, RunKind, RunRecord, RunStatus, StepRecord, StepStatus, Write};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::agents::{AgentError, AgentRequest, AgentResponse, Usage};
use crate::backoff::retry_delay;
use crate::budget::Spend;
use crate::cache;
use crate::call::{Target, call};
use crate::clock::now_ms;
use crate::context::{context, context_value, with_flags};
use crate::engine::{Compiled, RunOutcome, Shared};
use crate::metrics::{WorkflowLabels, WorkflowStatusLabels, WorkflowStepLabels};
use crate::scheduler::{self, Action, Condition, Event, Outcome, RunState, StopReason};

/// Messages from the engine to a run.
#[derive(Debug)]
pub(crate) enum Control {
    Cancel,
}

/// What a spawned piece of work reports back.
enum Report {
    Attempt {
        step: usize,
        attempt: u32,
        agent: Option<String>,
        result: Result<AgentResponse, AgentError>,
    },
    RetryDue {
        step: usize,
    },
    Compensation {
        step: usize,
        result: Result<AgentResponse, AgentError>,
    },
}

/// Where a run is after a turn.
enum Turn {
    Running,
    Finished(RunOutcome),
    /// Another replica holds the run now (a newer claim fenced this one's writes).
    Lost,
}

/// Another replica holds the run now.
struct Lost;

/// A call's rendered content.
struct Rendered {
    action: String,
    input: Value,
    instructions: Option<String>,
    prompt: Option<String>,
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    compiled: Arc<Compiled>,
    run_id: String,
    kind: RunKind,
    created_at: i64,
    input: Value,
    metadata: Value,
    priority: Priority,
    state: RunState,
    seq: i64,
    /// The epoch of the claim this process holds the run under (the fencing token every
    /// batch carries).
    epoch: i64,
    deadline: Option<Instant>,
    outputs: Vec<Option<Value>>,
    errors: Vec<Option<String>>,
    started: Vec<Option<i64>>,
    /// The agent of each step's last attempt.
    served_by: Vec<Option<String>>,
    /// Tokens and cost of each step's LLM calls.
    usage: Vec<Option<Usage>>,
    first_failure: Option<(usize, &'static str)>,
    last_agent: Option<String>,
    trace_id: String,
    work: JoinSet<Report>,
    /// Records that need not be durable yet (a step's start): they ride along with the next
    /// commit, or are queued on their own after [`DEFER`].
    deferred: Vec<Write>,
    deferred_since: Option<Instant>,
}

/// How long a record that need not be durable may wait for a commit to ride along with.
const DEFER: Duration = Duration::from_millis(2);

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        compiled: Arc<Compiled>,
        record: &RunRecord,
        priority: Priority,
        state: RunState,
        seq: i64,
        epoch: i64,
    ) -> Driver {
        let n = compiled.dag.len();
        let deadline = record.deadline_at.map(|at| {
            let left = u64::try_from(at - now_ms()).unwrap_or(0);
            Instant::now() + Duration::from_millis(left)
        });
        Driver {
            shared,
            compiled,
            run_id: record.id.clone(),
            kind: record.kind,
            created_at: record.created_at,
            input: record.input.clone(),
            metadata: record.metadata.clone(),
            priority,
            state,
            seq,
            epoch,
            deadline,
            outputs: vec![None; n],
            errors: vec![None; n],
            started: vec![None; n],
            served_by: vec![None; n],
            usage: vec![None; n],
            first_failure: None,
            last_agent: None,
            trace_id: format!("{:032x}", rand::random::<u128>()),
            work: JoinSet::new(),
            deferred: Vec::new(),
            deferred_since: None,
        }
    }

    /// The epoch of the claim it runs under.
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The workflow's name.
    pub(crate) fn workflow(&self) -> &str {
        &self.compiled.name
    }

    /// Loads a stored step's output and error (after a restart).
    pub(crate) fn restore_step(&mut self, i: usize, s: &StepRecord) {
        self.outputs[i] = s.output.clone();
        self.errors[i] = s.error.clone();
        self.started[i] = s.started_at;
        self.served_by[i] = s.agent.clone();
        self.usage[i] = s.usage;
    }

    pub(crate) async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        done: watch::Sender<Option<Arc<RunOutcome>>>,
    ) {
        let mut batch = vec![Event::Start];
        let mut reports = Vec::new();
        loop {
            let turn = self
                .handle(std::mem::take(&mut reports), std::mem::take(&mut batch))
                .await;
            if let Turn::Lost = turn {
                // Another replica took the run over: stop, and let only its record count.
                tracing::warn!(run_id = %self.run_id, "lease lost (a newer claim fenced this replica's writes); stopping the run here");
                self.shared.forget(&self.run_id, self.epoch);
                return;
            }
            if let Turn::Finished(outcome) = turn {
                let span = tracing::Span::current();
                span.record("flotilla.run.status", outcome.status.as_str());
                if outcome.status != RunStatus::Succeeded {
                    span.record("otel.status_code", "ERROR");
                }
                let _ = done.send(Some(Arc::new(outcome)));
                self.shared.forget(&self.run_id, self.epoch);
                return;
            }
            let deadline = self.deadline;
            let flush_at = self.deferred_since.map(|t| t + DEFER);
            tokio::select! {
                Some(joined) = self.work.join_next() => {
                    if let Ok(r) = joined {
                        reports.push(r);
                    }
                }
                Some(Control::Cancel) = control.recv() => batch.push(Event::Cancel),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.deadline = None;
                    batch.push(Event::Deadline);
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.deferred_since = None;
                    let deferred = std::mem::take(&mut self.deferred);
                    let writes = self.fenced(deferred);
                    self.shared.store.enqueue(writes);
                }
                else => {
                    tracing::error!(run_id = %self.run_id, "run has nothing left to wait for; failing it");
                    batch.push(Event::Deadline);
                }
            }
            // Everything else that is already done joins this round: one commit for all.
            while let Some(joined) = self.work.try_join_next() {
                if let Ok(r) = joined {
                    reports.push(r);
                }
            }
        }
    }

    /// Applies reports and events; says whether the run is over.
    async fn handle(&mut self, reports: Vec<Report>, mut events: Vec<Event>) -> Turn {
        for report in reports {
            events.push(self.absorb(report));
        }
        let mut actions = Vec::new();
        for ev in events {
            let Driver {
                compiled,
                state,
                outputs,
                input,
                metadata,
                run_id,
                ..
            } = self;
            let ctx_parts = (&*outputs, &*input, &*metadata, &*run_id);
            let flags = &self.shared.flags;
            let mut condition = |i: usize| match &compiled.workflow.steps[i].when {
                None => Condition::Run,
                Some(expr) => {
                    let base =
                        context(compiled, ctx_parts.0, ctx_parts.1, ctx_parts.2, ctx_parts.3);
                    let ctx = with_flags(base, flags, ctx_parts.1, ctx_parts.2);
                    match template::eval_condition(expr, &ctx) {
                        Ok(true) => Condition::Run,
                        Ok(false) => Condition::Skip,
                        Err(e) => Condition::Error(format!("`when` failed: {e}")),
                    }
                }
            };
            actions.extend(scheduler::decide(&compiled.dag, state, ev, &mut condition));
        }
        self.carry_out(actions).await
    }

    /// Records what a report says and turns it into a scheduler event.
    fn absorb(&mut self, report: Report) -> Event {
        match report {
            Report::Attempt {
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
                        let step_id = &self.compiled.dag.ids[step];
                        if retryable && attempt < self.compiled.dag.max_attempts[step] {
                            tracing::info!(run_id = %self.run_id, step = %step_id, attempt, error = %e, "attempt failed; retrying");
                        } else {
                            tracing::warn!(run_id = %self.run_id, step = %step_id, attempt, error = %e, "step failed");
                        }
                        if self.first_failure.is_none()
                            && !(retryable && attempt < self.compiled.dag.max_attempts[step])
                        {
                            self.first_failure = Some((step, e.kind()));
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
            Report::RetryDue { step } => Event::RetryDue { step },
            Report::Compensation { step, result } => {
                let ok = result.is_ok();
                if let Err(e) = result {
                    self.errors[step] = Some(format!("compensation failed: {e}"));
                }
                Event::CompensationFinished { step, ok }
            }
        }
    }

    fn event(&mut self, kind: &str, step: Option<usize>, data: Value) -> EventRecord {
        self.seq += 1;
        EventRecord {
            run_id: self.run_id.clone(),
            seq: self.seq,
            at: now_ms(),
            kind: kind.to_owned(),
            step_id: step.map(|i| self.compiled.dag.ids[i].clone()),
            data,
        }
    }

    fn step_write(&self, i: usize, status: StepStatus, finished: bool) -> Write {
        Write::Step {
            run_id: self.run_id.clone(),
            step: StepRecord {
                step_id: self.compiled.dag.ids[i].clone(),
                status,
                attempts: self.state.steps[i].attempts,
                output: self.outputs[i].clone(),
                error: self.errors[i].clone(),
                started_at: self.started[i],
                finished_at: finished.then(now_ms),
                agent: self.served_by[i].clone(),
                usage: self.usage[i],
            },
        }
    }

    async fn carry_out(&mut self, actions: Vec<Action>) -> Turn {
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let mut critical = false;
        let mut later = Vec::new();
        let mut finish = None;
        for action in actions {
            match action {
                Action::MarkRunning => {
                    writes.push(Write::Run {
                        run_id: self.run_id.clone(),
                        status: RunStatus::Running,
                        output: None,
                        error: None,
                        at: now_ms(),
                    });
                    events.push(self.event(
                        "run_started",
                        None,
                        json!({"workflow": self.compiled.name}),
                    ));
                }
                Action::Dispatch { step, attempt } => {
                    self.started[step].get_or_insert_with(now_ms);
                    writes.push(self.step_write(step, StepStatus::Running, false));
                    events.push(self.event(
                        "step_started",
                        Some(step),
                        json!({"attempt": attempt}),
                    ));
                    later.push(action);
                }
                Action::ScheduleRetry {
                    step,
                    failed_attempt,
                } => {
                    self.shared
                        .metrics
                        .step_retries
                        .get_or_create(&WorkflowStepLabels {
                            workflow: self.compiled.name.clone(),
                            step: self.compiled.dag.ids[step].clone(),
                        })
                        .inc();
                    let error = self.errors[step].clone();
                    writes.push(self.step_write(step, StepStatus::Running, false));
                    events.push(self.event(
                        "step_retrying",
                        Some(step),
                        json!({"attempt": failed_attempt, "error": error}),
                    ));
                    later.push(action);
                }
                Action::StepSucceeded { step } => {
                    critical = true;
                    writes.push(self.step_write(step, StepStatus::Succeeded, true));
                    events.push(self.event(
                        "step_succeeded",
                        Some(step),
                        json!({"attempt": self.state.steps[step].attempts}),
                    ));
                }
                Action::StepFailed { step, reason } => {
                    critical = true;
                    match reason {
                        StopReason::AttemptsExhausted => {}
                        StopReason::Condition(e) => {
                            self.errors[step] = Some(e);
                            self.first_failure.get_or_insert((step, "condition"));
                        }
                        StopReason::Aborted(status) => {
                            self.errors[step] = Some(format!("aborted: run {status}"));
                        }
                    }
                    let error = self.errors[step].clone();
                    writes.push(self.step_write(step, StepStatus::Failed, true));
                    events.push(self.event("step_failed", Some(step), json!({"error": error})));
                }
                Action::StepSkipped { step } => {
                    critical = true;
                    writes.push(self.step_write(step, StepStatus::Skipped, true));
                    events.push(self.event("step_skipped", Some(step), json!({})));
                }
                Action::AbortInFlight => later.push(action),
                Action::Compensate { step } => {
                    events.push(self.event("compensation_started", Some(step), json!({})));
                    later.push(action);
                }
                Action::StepCompensated { step, ok } => {
                    critical = true;
                    let status = if ok {
                        StepStatus::Compensated
                    } else {
                        StepStatus::Succeeded
                    };
                    writes.push(self.step_write(step, status, true));
                    let kind = if ok {
                        "step_compensated"
                    } else {
                        "compensation_failed"
                    };
                    let error = self.errors[step].clone();
                    events.push(self.event(kind, Some(step), json!({"error": error})));
                }
                Action::Finish(status) => {
                    critical = true;
                    let (output, error) = self.final_output(status);
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
                        at: now_ms(),
                    });
                    events.push(self.event(
                        "run_finished",
                        None,
                        json!({"status": status, "error": error}),
                    ));
                    finish = Some((status, output, error));
                }
            }
        }
        for w in &events {
            writes.push(Write::Event(w.clone()));
        }
        if critical {
            let mut all = std::mem::take(&mut self.deferred);
            self.deferred_since = None;
            all.extend(writes);
            if self.commit(all).await.is_err() {
                return Turn::Lost;
            }
        } else if !writes.is_empty() {
            self.deferred.extend(writes);
            self.deferred_since.get_or_insert_with(Instant::now);
        }
        for e in events {
            let _ = self.shared.events.send(e);
        }
        for action in later {
            match action {
                Action::Dispatch { step, attempt } => self.dispatch(step, attempt),
                Action::ScheduleRetry {
                    step,
                    failed_attempt,
                } => {
                    let policy = self.compiled.workflow.steps[step]
                        .retry
                        .expect("only steps with a retry policy are retried");
                    let delay = retry_delay(&policy, failed_attempt, rand::random::<f64>());
                    self.work.spawn(async move {
                        tokio::time::sleep(delay).await;
                        Report::RetryDue { step }
                    });
                }
                Action::AbortInFlight => self.work.abort_all(),
                Action::Compensate { step } => self.compensate(step),
                _ => {}
            }
        }
        let Some((status, output, error)) = finish else {
            return Turn::Running;
        };
        self.record_finish(status);
        let error_kind = self.first_failure.map(|(_, k)| k).or(match status {
            RunStatus::TimedOut => Some("timeout"),
            RunStatus::Cancelled => Some("cancelled"),
            _ => None,
        });
        Turn::Finished(RunOutcome {
            status,
            output,
            error_kind: if status == RunStatus::Succeeded {
                None
            } else {
                error_kind
            },
            error,
            agent: self.last_agent.clone(),
        })
    }

    /// The batch behind this run's fence: refused whole once another claim raised the epoch.
    fn fenced(&self, writes: Vec<Write>) -> Vec<Write> {
        let mut all = Vec::with_capacity(writes.len() + 1);
        all.push(Write::Fence {
            run_id: self.run_id.clone(),
            epoch: self.epoch,
        });
        all.extend(writes);
        all
    }

    /// Commits, retrying with backoff while the store is unavailable: nothing acknowledged
    /// may be lost, and nothing that depends on these writes may start before they land.
    /// Fails only when another replica holds the run now.
    async fn commit(&self, writes: Vec<Write>) -> Result<(), Lost> {
        let writes = self.fenced(writes);
        let mut delay = Duration::from_millis(50);
        loop {
            match self.shared.store.commit(writes.clone()).await {
                Ok(()) => return Ok(()),
                Err(flotilla_store::StoreError::Fenced(_)) => return Err(Lost),
                Err(e) => {
                    tracing::warn!(run_id = %self.run_id, error = %e, retry_in = ?delay, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
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

    fn context(&self) -> minijinja::Value {
        template::context(&self.context_value())
    }

    fn final_output(&self, status: RunStatus) -> (Option<Value>, Option<String>) {
        match status {
            RunStatus::Succeeded => {
                let ctx = self.context();
                match &self.compiled.workflow.output {
                    Some(tpl) => match template::render_value(tpl, &ctx) {
                        Ok(v) => (Some(v), None),
                        Err(e) => (None, Some(format!("rendering the workflow output: {e}"))),
                    },
                    None => (Some(self.sink_outputs()), None),
                }
            }
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

    fn record_finish(&self, status: RunStatus) {
        if self.kind != RunKind::Workflow {
            return;
        }
        let m = &self.shared.metrics;
        let workflow = self.compiled.name.clone();
        m.workflow_runs
            .get_or_create(&WorkflowStatusLabels {
                workflow: workflow.clone(),
                status: status.as_str().into(),
            })
            .inc();
        let secs = (now_ms() - self.created_at).max(0) as f64 / 1000.0;
        m.workflow_duration
            .get_or_create(&WorkflowLabels {
                workflow: workflow.clone(),
            })
            .observe(secs);
        if status == RunStatus::TimedOut {
            m.sla_breaches
                .get_or_create(&WorkflowLabels {
                    workflow: workflow.clone(),
                })
                .inc();
        }
        if let Some(tracker) = &self.shared.tracker {
            tracker.record(crate::mlflow::RunSummary {
                run_id: self.run_id.clone(),
                workflow,
                definition_hash: self.compiled.hash.clone(),
                input: self.input.clone(),
                status,
                started_at: self.created_at,
                finished_at: now_ms(),
                steps: self.compiled.dag.len(),
                usage: self
                    .usage
                    .iter()
                    .flatten()
                    .fold(Usage::default(), |a, b| a + *b),
            });
        }
    }

    fn request(
        &self,
        step: usize,
        attempt: u32,
        what: Rendered,
        timeout: Duration,
    ) -> AgentRequest {
        let Rendered {
            action,
            input,
            instructions,
            prompt,
        } = what;
        AgentRequest {
            run_id: self.run_id.clone(),
            step_id: self.compiled.dag.ids[step].clone(),
            action,
            input,
            attempt,
            deadline: now_ms() + timeout.as_millis() as i64,
            instructions,
            prompt,
            idempotency_key: format!("{}/{}", self.run_id, self.compiled.dag.ids[step]),
            traceparent: format!(
                "00-{}-{:016x}-01",
                self.trace_id,
                rand::random::<u64>().max(1)
            ),
        }
    }

    fn timeout_for(&self, step_timeout: Option<Duration>, target: &Target) -> Duration {
        let agent_timeout = match target {
            Target::Agent(name) => self.shared.registry.get(name).and_then(|a| a.timeout),
            Target::Capability(_) => None,
        };
        step_timeout
            .or(agent_timeout)
            .unwrap_or(self.shared.config.engine.default_timeout.0)
    }

    fn dispatch(&mut self, step: usize, attempt: u32) {
        let spec = &self.compiled.workflow.steps[step];
        let target = match (&spec.agent, &spec.capability) {
            (Some(a), _) => Target::Agent(a.clone()),
            (None, Some(c)) => Target::Capability(c.clone()),
            (None, None) => Target::Agent(String::new()),
        };
        let timeout = self.timeout_for(spec.timeout.map(|d| d.0), &target);
        let priority = spec.priority.unwrap_or(self.priority);
        let action = spec.action.clone().unwrap_or_else(|| spec.id.clone());
        let needs_ctx =
            spec.input.is_some() || spec.prompt.is_some() || spec.instructions.is_some();
        let rendered = if needs_ctx {
            let ctx = self.context();
            let render = |t: &Option<String>| {
                t.as_deref()
                    .map(|t| template::render_str(t, &ctx))
                    .transpose()
            };
            (|| {
                Ok::<_, flotilla_spec::SpecError>((
                    spec.input
                        .as_ref()
                        .map(|i| template::render_value(i, &ctx))
                        .transpose()?,
                    render(&spec.instructions)?,
                    render(&spec.prompt)?,
                ))
            })()
        } else {
            Ok((None, None, None))
        };
        let (input, instructions, prompt) = match rendered {
            Ok((input, instructions, prompt)) => (
                input.unwrap_or_else(|| self.input.clone()),
                instructions,
                prompt,
            ),
            Err(e) => {
                let result = Err(AgentError::permanent(format!(
                    "rendering the step's templates: {e}"
                )));
                self.work.spawn(async move {
                    Report::Attempt {
                        step,
                        attempt,
                        agent: None,
                        result,
                    }
                });
                return;
            }
        };
        let req = self.request(
            step,
            attempt,
            Rendered {
                action,
                input,
                instructions,
                prompt,
            },
            timeout,
        );
        let policy = spec.cache.or_else(|| match &target {
            Target::Agent(name) => self.shared.registry.get(name).and_then(|a| a.cache),
            Target::Capability(_) => None,
        });
        let cached = policy.map(|p| {
            let who = match &target {
                Target::Agent(name) => format!("agent:{name}"),
                Target::Capability(cap) => format!("capability:{cap}"),
            };
            (
                cache::key(&who, &req.action, &req.input, req.instructions.as_deref()),
                p.ttl.0,
            )
        });
        let shared = self.shared.clone();
        let spend = self.spend();
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {}", self.compiled.dag.ids[step]),
            "flotilla.step.id" = %self.compiled.dag.ids[step],
            "flotilla.attempt" = i64::from(attempt),
            "flotilla.agent.name" = tracing::field::Empty,
            "flotilla.outcome" = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let attempt_work = async move {
            if let Some((key, _)) = &cached
                && let Some(output) = shared.cache.get(key).await
            {
                let result = Ok(AgentResponse::output(output));
                return Report::Attempt {
                    step,
                    attempt,
                    agent: None,
                    result,
                };
            }
            let (agent, result) = call(&shared, target, req, timeout, priority, Some(&spend)).await;
            if let (Some((key, ttl)), Ok(resp)) = (cached, &result) {
                shared.cache.put(key, resp.output.clone(), ttl).await;
            }
            let span = tracing::Span::current();
            if let Some(a) = &agent {
                span.record("flotilla.agent.name", a.as_str());
            }
            match &result {
                Ok(_) => span.record("flotilla.outcome", "succeeded"),
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("flotilla.outcome", e.kind())
                }
            };
            Report::Attempt {
                step,
                attempt,
                agent,
                result,
            }
        };
        self.work.spawn(attempt_work.instrument(span));
    }

    /// What the run has spent so far, in total and by agent.
    fn spend(&self) -> Spend {
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

    fn compensate(&mut self, step: usize) {
        let spec = &self.compiled.workflow.steps[step];
        let Some(comp) = spec.compensate.clone() else {
            self.work.spawn(async move {
                Report::Compensation {
                    step,
                    result: Ok(AgentResponse::output(Value::Null)),
                }
            });
            return;
        };
        let target = match (&comp.agent, &comp.capability) {
            (Some(a), _) => Target::Agent(a.clone()),
            (None, Some(c)) => Target::Capability(c.clone()),
            (None, None) => Target::Agent(spec.agent.clone().unwrap_or_default()),
        };
        let timeout = self.timeout_for(spec.timeout.map(|d| d.0), &target);
        let output = self.outputs[step].clone().unwrap_or(Value::Null);
        let input = match &comp.input {
            Some(tpl) => {
                let mut ctx_value = self.context_value();
                ctx_value["output"] = output.clone();
                template::render_value(tpl, &template::context(&ctx_value)).unwrap_or(output)
            }
            None => output,
        };
        let req = self.request(
            step,
            1,
            Rendered {
                action: comp.action.clone(),
                input,
                instructions: None,
                prompt: None,
            },
            timeout,
        );
        let shared = self.shared.clone();
        let priority = Priority::High;
        self.work.spawn(async move {
            let (_, result) = call(&shared, target, req, timeout, priority, None).await;
            Report::Compensation { step, result }
        });
    }
}
