//! The run driver: one task per run, a thin loop around the pure [`Machine`]. It gathers
//! inputs (finished calls, timers, cancel, the deadline), hands them to the machine, and
//! carries its effects out in order: persisting (a durable batch is committed before
//! anything after it), publishing, calling agents, arming timers, finishing.

use std::sync::Arc;
use std::time::Duration;

use flotilla_spec::Priority;
use flotilla_store::{RunKind, RunRecord, RunStatus, StoreError, Write};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::backoff::retry_delay;
use super::machine::{Effect, Finished, Input, Machine, Request};
use super::{Control, Env, RunOutcome};
use crate::call::agents::{AgentError, AgentRequest, AgentResponse};
use crate::call::{Call, Target};
use crate::clock::now_ms;
use crate::metrics::{WorkflowLabels, WorkflowStatusLabels, WorkflowStepLabels};

/// How long a record that need not be durable may wait for a commit to ride along with.
const DEFER: Duration = Duration::from_millis(2);

/// Where a run is after a turn.
enum Turn {
    Running,
    Finished(RunOutcome),
    /// Another replica holds the run now (a newer claim fenced this one's writes).
    Lost,
}

pub(crate) struct Driver {
    env: Arc<Env>,
    machine: Machine,
    kind: RunKind,
    created_at: i64,
    priority: Priority,
    deadline: Option<Instant>,
    trace_id: String,
    /// Calls and timers in flight; each reports back as an input.
    work: JoinSet<Input>,
    /// Records that need not be durable yet (a step's start): they ride along with the next
    /// commit, or are queued on their own after [`DEFER`].
    deferred: Vec<Write>,
    deferred_since: Option<Instant>,
}

impl Driver {
    pub(crate) fn new(
        env: Arc<Env>,
        machine: Machine,
        record: &RunRecord,
        priority: Priority,
    ) -> Driver {
        let deadline = record.deadline_at.map(|at| {
            let left = u64::try_from(at - now_ms()).unwrap_or(0);
            Instant::now() + Duration::from_millis(left)
        });
        Driver {
            env,
            machine,
            kind: record.kind,
            created_at: record.created_at,
            priority,
            deadline,
            trace_id: format!("{:032x}", rand::random::<u128>()),
            work: JoinSet::new(),
            deferred: Vec::new(),
            deferred_since: None,
        }
    }

    /// The epoch of the claim it runs under.
    pub(crate) fn epoch(&self) -> i64 {
        self.machine.epoch()
    }

    /// The workflow's name.
    pub(crate) fn workflow(&self) -> &str {
        &self.machine.compiled().name
    }

    /// Drives the run until it is over, or another replica took it over.
    pub(crate) async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        done: watch::Sender<Option<Arc<RunOutcome>>>,
    ) {
        let run_id = self.machine.run_id().to_owned();
        let mut inputs = vec![Input::Start];
        loop {
            match self.turn(std::mem::take(&mut inputs)).await {
                Turn::Running => {}
                Turn::Lost => {
                    // Another replica took the run over: stop, and let only its record count.
                    tracing::warn!(run_id = %run_id, "lease lost (a newer claim fenced this replica's writes); stopping the run here");
                    return;
                }
                Turn::Finished(outcome) => {
                    let span = tracing::Span::current();
                    span.record("flotilla.run.status", outcome.status.as_str());
                    if outcome.status != RunStatus::Succeeded {
                        span.record("otel.status_code", "ERROR");
                    }
                    let _ = done.send(Some(Arc::new(outcome)));
                    return;
                }
            }
            let deadline = self.deadline;
            let flush_at = self.deferred_since.map(|t| t + DEFER);
            tokio::select! {
                Some(joined) = self.work.join_next() => {
                    if let Ok(input) = joined {
                        inputs.push(input);
                    }
                }
                Some(Control::Cancel) = control.recv() => inputs.push(Input::Cancel),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.deadline = None;
                    inputs.push(Input::Deadline);
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.deferred_since = None;
                    let deferred = std::mem::take(&mut self.deferred);
                    self.env.store.enqueue(fenced(&run_id, self.epoch(), deferred));
                }
                else => {
                    tracing::error!(run_id = %run_id, "run has nothing left to wait for; failing it");
                    inputs.push(Input::Deadline);
                }
            }
            // Everything else that is already done joins this turn: one commit for all.
            while let Some(joined) = self.work.try_join_next() {
                if let Ok(input) = joined {
                    inputs.push(input);
                }
            }
        }
    }

    /// Hands `inputs` to the machine and carries its effects out.
    async fn turn(&mut self, inputs: Vec<Input>) -> Turn {
        if inputs.is_empty() {
            return Turn::Running;
        }
        let effects = self.machine.handle(inputs, now_ms(), &self.env.flags);
        for effect in effects {
            match effect {
                Effect::Persist {
                    writes,
                    epoch,
                    durable,
                } => {
                    if durable {
                        let mut all = std::mem::take(&mut self.deferred);
                        self.deferred_since = None;
                        all.extend(writes);
                        if self
                            .commit(fenced(self.machine.run_id(), epoch, all))
                            .await
                            .is_err()
                        {
                            return Turn::Lost;
                        }
                    } else {
                        self.deferred.extend(writes);
                        self.deferred_since.get_or_insert_with(Instant::now);
                    }
                }
                Effect::Publish(events) => {
                    for e in events {
                        let _ = self.env.events.send(e);
                    }
                }
                Effect::Dispatch(request) => self.dispatch(request),
                Effect::Compensate(request) => self.compensate(request),
                Effect::ArmTimer {
                    step,
                    failed_attempt,
                } => self.arm_retry(step, failed_attempt),
                Effect::AbortInFlight => self.work.abort_all(),
                Effect::Finish(finished) => {
                    self.record_finish(&finished);
                    return Turn::Finished(finished.outcome);
                }
            }
        }
        Turn::Running
    }

    /// Commits, retrying with backoff while the store is unavailable: nothing acknowledged
    /// may be lost, and nothing that depends on these writes may start before they land.
    /// Fails only when another replica holds the run now.
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.env.store.commit(writes.clone()).await {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::Fenced(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(run_id = %self.machine.run_id(), error = %e, retry_in = ?delay, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn arm_retry(&mut self, step: usize, failed_attempt: u32) {
        let compiled = self.machine.compiled();
        self.env
            .metrics
            .step_retries
            .get_or_create(&WorkflowStepLabels {
                workflow: compiled.name.clone(),
                step: compiled.dag.ids[step].clone(),
            })
            .inc();
        let policy = compiled.workflow.steps[step]
            .retry
            .expect("only steps with a retry policy are retried");
        let delay = retry_delay(&policy, failed_attempt, rand::random::<f64>());
        self.work.spawn(async move {
            tokio::time::sleep(delay).await;
            Input::RetryDue { step }
        });
    }

    fn record_finish(&self, finished: &Finished) {
        if self.kind != RunKind::Workflow {
            return;
        }
        let status = finished.outcome.status;
        let m = &self.env.metrics;
        let compiled = self.machine.compiled();
        let workflow = compiled.name.clone();
        m.workflow_runs
            .get_or_create(&WorkflowStatusLabels {
                workflow: workflow.clone(),
                status: status.as_str().into(),
            })
            .inc();
        let secs = (now_ms() - self.created_at).max(0) as f64 / 1000.0;
        let labels = WorkflowLabels {
            workflow: workflow.clone(),
        };
        m.workflow_duration.get_or_create(&labels).observe(secs);
        if status == RunStatus::TimedOut {
            m.sla_breaches.get_or_create(&labels).inc();
        }
        if let Some(tracker) = &self.env.tracker {
            tracker.record(crate::mlflow::RunSummary {
                run_id: self.machine.run_id().to_owned(),
                workflow,
                definition_hash: compiled.hash.clone(),
                input: self.machine.input().clone(),
                status,
                started_at: self.created_at,
                finished_at: now_ms(),
                steps: compiled.dag.len(),
                usage: finished.usage,
            });
        }
    }

    /// The request of an attempt, given its rendered content and timeout.
    fn agent_request(
        &self,
        step: usize,
        attempt: u32,
        rendered: super::machine::Rendered,
        timeout: Duration,
    ) -> AgentRequest {
        let run_id = self.machine.run_id();
        let step_id = &self.machine.compiled().dag.ids[step];
        AgentRequest {
            run_id: run_id.to_owned(),
            step_id: step_id.clone(),
            action: rendered.action,
            input: rendered.input,
            attempt,
            deadline: now_ms() + timeout.as_millis() as i64,
            instructions: rendered.instructions,
            prompt: rendered.prompt,
            idempotency_key: format!("{run_id}/{step_id}"),
            traceparent: format!(
                "00-{}-{:016x}-01",
                self.trace_id,
                rand::random::<u64>().max(1)
            ),
        }
    }

    fn dispatch(&mut self, request: Request) {
        let Request {
            step,
            attempt,
            rendered,
        } = request;
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                let result = Err(AgentError::permanent(e));
                self.work.spawn(async move {
                    Input::Attempt {
                        step,
                        attempt,
                        agent: None,
                        result,
                    }
                });
                return;
            }
        };
        let spec = &self.machine.compiled().workflow.steps[step];
        let target = Target::of(&spec.agent, &spec.capability, "");
        let fleet = &self.env.fleet;
        let timeout = fleet.timeout_for(spec.timeout.map(|d| d.0), &target);
        let call = Call {
            pins: self.machine.compiled().pins.clone(),
            priority: spec.priority.unwrap_or(self.priority),
            cacheable: true,
            cache: spec.cache,
            spend: Some(self.machine.spend()),
            req: self.agent_request(step, attempt, rendered, timeout),
            target,
            timeout,
        };
        let step_id = &self.machine.compiled().dag.ids[step];
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {step_id}"),
            "flotilla.step.id" = %step_id,
            "flotilla.attempt" = i64::from(attempt),
            "flotilla.agent.name" = tracing::field::Empty,
            "flotilla.outcome" = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let env = self.env.clone();
        let attempt_work = async move {
            let (agent, result) = env.fleet.call(call).await;
            let span = tracing::Span::current();
            if let Some(a) = &agent {
                span.record("flotilla.agent.name", a.as_str());
            }
            match &result {
                Ok(_) => span.record("flotilla.outcome", "succeeded"),
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("flotilla.outcome", e.kind().as_str())
                }
            };
            Input::Attempt {
                step,
                attempt,
                agent,
                result,
            }
        };
        self.work.spawn(attempt_work.instrument(span));
    }

    fn compensate(&mut self, request: Request) {
        let step = request.step;
        let spec = &self.machine.compiled().workflow.steps[step];
        let (Some(comp), Ok(rendered)) = (&spec.compensate, request.rendered) else {
            self.work.spawn(async move {
                Input::Compensation {
                    step,
                    result: Ok(AgentResponse::output(serde_json::Value::Null)),
                }
            });
            return;
        };
        let fallback = spec.agent.clone().unwrap_or_default();
        let target = Target::of(&comp.agent, &comp.capability, &fallback);
        let timeout = self
            .env
            .fleet
            .timeout_for(spec.timeout.map(|d| d.0), &target);
        let call = Call {
            pins: self.machine.compiled().pins.clone(),
            req: self.agent_request(step, 1, rendered, timeout),
            target,
            timeout,
            priority: Priority::High,
            cacheable: false,
            cache: None,
            spend: None,
        };
        let env = self.env.clone();
        self.work.spawn(async move {
            let (_, result) = env.fleet.call(call).await;
            Input::Compensation { step, result }
        });
    }
}

/// `writes` behind the run's fence: refused whole once another claim raised the epoch.
fn fenced(run_id: &str, epoch: i64, writes: Vec<Write>) -> Vec<Write> {
    let mut all = Vec::with_capacity(writes.len() + 1);
    all.push(Write::Fence {
        run_id: run_id.to_owned(),
        epoch,
    });
    all.extend(writes);
    all
}
