//! The controller: steps, analysis, traffic and decisions, saved after every change so
//! that a killed controller resumes where it was.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::analysis::{self, MetricRun, Verdict};
use crate::load::Loaded;
use crate::metrics::RolloutMetrics;
use crate::notify::{Event, EventKind, Notifier};
use crate::provider::{MetricProvider, QueryContext, instances_regex};
use crate::spec::{AnalysisRef, Step, Strategy};
use crate::state::{Cause, Decision, DecisionRecord, Outcome, State, Status};
use crate::store::{Command, Entry, StateStore};
use crate::traffic::{Routing, TrafficRouter};

mod steps;

/// Errors that stop the controller (the rollout's own failures are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A saved state that does not parse.
    #[error("the saved state of rollout {0} does not parse: {1}")]
    Corrupt(String, String),
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Everything the controller works with.
pub struct Controller {
    /// The rollout.
    pub loaded: Loaded,
    /// Its state store.
    pub store: Arc<dyn StateStore>,
    /// Measures metrics.
    pub provider: Arc<dyn MetricProvider>,
    /// Moves traffic.
    pub traffic: Arc<dyn TrafficRouter>,
    /// Announces decisions.
    pub notifier: Notifier,
    /// Counts decisions.
    pub metrics: RolloutMetrics,
    /// How often commands are read and steps checked.
    pub tick: Duration,
    /// Progress lines go here (stderr in the CLI).
    pub progress: Arc<dyn Fn(&str) + Send + Sync>,
}

impl Controller {
    /// A controller with the real parts: Prometheus, nginx, the configured notifications,
    /// a 250 ms tick and progress to the log.
    pub fn new(loaded: Loaded, store: Arc<dyn StateStore>) -> Self {
        let spec = &loaded.spec;
        let (channels, severity) = match &loaded.policies {
            Some(p) => (p.notify_channels.clone(), p.incident_severity.clone()),
            None => (Vec::new(), None),
        };
        Controller {
            provider: Arc::new(crate::provider::PrometheusProvider::default()),
            traffic: Arc::new(crate::traffic::NginxRouter::new(
                spec.traffic.nginx.clone(),
                &spec.name,
            )),
            notifier: Notifier::new(spec.notifications.clone(), channels, severity),
            metrics: RolloutMetrics::default(),
            tick: Duration::from_millis(250),
            progress: Arc::new(|line: &str| tracing::info!("{line}")),
            store,
            loaded,
        }
    }

    fn spec(&self) -> &crate::spec::RolloutSpec {
        &self.loaded.spec
    }

    fn unavailable_timeout_ms(&self) -> i64 {
        self.spec().unavailable_timeout.0.as_millis() as i64
    }

    fn context(&self, args: &std::collections::BTreeMap<String, String>) -> QueryContext {
        let s = self.spec();
        QueryContext {
            args: args.clone(),
            canary_instances: instances_regex(&s.canary.upstreams),
            stable_instances: instances_regex(&s.stable.upstreams),
            canary_version: s.canary.version.clone(),
            stable_version: s.stable.version.clone(),
        }
    }

    /// The metric runs of an analysis reference, with template defaults under the caller's
    /// args.
    fn start_analysis(&self, a: &AnalysisRef, now: i64) -> Vec<MetricRun> {
        let mut runs = Vec::new();
        for name in &a.templates {
            let Some(t) = self.loaded.templates.get(name) else {
                continue;
            };
            for m in &t.metrics {
                runs.push(MetricRun::new(m.clone(), now));
            }
        }
        runs
    }

    fn args_of(&self, a: &AnalysisRef) -> std::collections::BTreeMap<String, String> {
        let mut args = std::collections::BTreeMap::new();
        for name in &a.templates {
            if let Some(t) = self.loaded.templates.get(name) {
                for d in &t.args {
                    if let Some(v) = &d.value {
                        args.insert(d.name.clone(), v.clone());
                    }
                }
            }
        }
        args.extend(a.args.clone());
        args
    }

    fn background_ref(&self) -> AnalysisRef {
        let mut r = self
            .spec()
            .background_analysis
            .clone()
            .unwrap_or(AnalysisRef {
                templates: Vec::new(),
                args: Default::default(),
                starting_step: None,
            });
        if let Some(p) = &self.loaded.policies {
            r.templates.push(p.template.clone());
        }
        r
    }

    fn fresh_state(&self, now: i64) -> State {
        let s = self.spec();
        State {
            name: s.name.clone(),
            strategy: s.strategy,
            stable_version: s.stable.version.clone(),
            canary_version: s.canary.version.clone(),
            status: Status::Progressing,
            step: 0,
            weight: 0,
            started: now,
            step_started: now,
            step_analysis: Vec::new(),
            background: Vec::new(),
            switched_at: None,
            rollback_at: None,
            updated: now,
        }
    }

    /// The routing a state stands for.
    fn routing(&self, state: &State) -> Routing {
        let s = self.spec();
        match s.strategy {
            Strategy::Canary => Routing::Weighted {
                stable: s.stable.upstreams.clone(),
                canary: s.canary.upstreams.clone(),
                weight: state.weight,
            },
            Strategy::BlueGreen => {
                if state.weight >= 100 {
                    Routing::Only(s.canary.upstreams.clone())
                } else {
                    Routing::Only(s.stable.upstreams.clone())
                }
            }
            Strategy::Rolling => Routing::Only(s.stable.upstreams.clone()),
        }
    }

    /// Counts, logs and stores a decision.
    pub(crate) async fn record_decision(
        &self,
        state: &State,
        rec: DecisionRecord,
    ) -> Result<(), RolloutError> {
        self.metrics.decided(&state.name, rec.decision, rec.cause);
        (self.progress)(&format!(
            "{}: {} ({}) at step {}, weight {}%: {}",
            state.name,
            rec.decision.as_str(),
            rec.cause.as_str(),
            rec.step,
            rec.weight,
            match &rec.reason {
                Some(r) => format!("{}: {r}", rec.message),
                None => rec.message.clone(),
            }
        ));
        self.store
            .append(
                &state.name,
                &Entry {
                    at: now_ms(),
                    kind: "decision".into(),
                    body: serde_json::to_value(&rec).unwrap_or_default(),
                },
            )
            .await?;
        Ok(())
    }

    fn announce(
        &self,
        state: &State,
        kind: EventKind,
        message: &str,
        reason: Option<analysis::Reason>,
    ) {
        self.notifier.send(&Event {
            rollout: state.name.clone(),
            kind,
            message: message.to_owned(),
            reason,
            step: state.step,
            weight: state.weight,
            stable_version: state.stable_version.clone(),
            canary_version: state.canary_version.clone(),
            at: now_ms(),
        });
    }

    async fn save(&self, state: &mut State) -> Result<(), RolloutError> {
        state.updated = now_ms();
        self.metrics.weight(&state.name, state.weight);
        let value = serde_json::to_value(&*state).unwrap_or_default();
        self.store.save(&state.name, &value, state.updated).await?;
        Ok(())
    }

    /// Loads the saved state, or starts one. A finished rollout of the same versions stays
    /// finished; one of other versions starts over.
    pub async fn state(&self) -> Result<State, RolloutError> {
        let name = &self.spec().name;
        if let Some(v) = self.store.load(name).await? {
            let saved: State = serde_json::from_value(v)
                .map_err(|e| RolloutError::Corrupt(name.clone(), e.to_string()))?;
            if saved.canary_version == self.spec().canary.version
                && saved.stable_version == self.spec().stable.version
            {
                return Ok(saved);
            }
        }
        Ok(self.fresh_state(now_ms()))
    }

    /// Drives the rollout to its end (or until `shutdown`, leaving it to resume).
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Option<Outcome>, RolloutError> {
        let mut state = self.state().await?;
        if let Some(done) = state.outcome() {
            (self.progress)(&format!(
                "{}: already finished ({:?}); change the versions to roll out again",
                state.name, state.status
            ));
            return Ok(Some(done));
        }
        let resumed = state.step > 0 || state.weight > 0;
        // Make traffic match the state, whatever happened while nobody watched.
        if let Err(e) = self.traffic.apply(&self.routing(&state)).await {
            return self.fail(&mut state, e.to_string()).await.map(Some);
        }
        self.announce(
            &state,
            EventKind::Started,
            &if resumed {
                format!(
                    "resumed at step {} with {}% on {}",
                    state.step, state.weight, state.canary_version
                )
            } else {
                format!(
                    "started: {} → {} ({:?})",
                    state.stable_version, state.canary_version, state.strategy
                )
            },
            None,
        );
        self.save(&mut state).await?;
        tokio::pin!(shutdown);
        loop {
            if let Some(outcome) = self.turn(&mut state).await? {
                return Ok(Some(outcome));
            }
            tokio::select! {
                () = &mut shutdown => {
                    (self.progress)(&format!("{}: stopped; `flotilla rollout run` resumes it", state.name));
                    return Ok(None);
                }
                () = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    async fn fail(&self, state: &mut State, error: String) -> Result<Outcome, RolloutError> {
        state.status = Status::Failed {
            error: error.clone(),
        };
        self.record_decision(
            state,
            DecisionRecord {
                decision: Decision::Fail,
                cause: Cause::Traffic,
                message: error.clone(),
                reason: None,
                step: state.step,
                weight: state.weight,
            },
        )
        .await?;
        self.announce(state, EventKind::Paused, &format!("stopped: {error}"), None);
        self.save(state).await?;
        Ok(Outcome::Failed)
    }

    /// Rolls traffic back to stable and records why.
    async fn roll_back(
        &self,
        state: &mut State,
        decision: Decision,
        cause: Cause,
        message: String,
        reason: Option<analysis::Reason>,
    ) -> Result<Outcome, RolloutError> {
        let previous = state.weight;
        state.weight = 0;
        if let Err(e) = self.traffic.apply(&self.routing(state)).await {
            state.weight = previous;
            return self.fail(state, format!("could not roll back: {e}")).await;
        }
        state.status = match decision {
            Decision::Abort => Status::Aborted {
                reason: message.clone(),
            },
            _ => Status::RolledBack {
                reason: match &reason {
                    Some(r) => r.to_string(),
                    None => message.clone(),
                },
            },
        };
        self.record_decision(
            state,
            DecisionRecord {
                decision,
                cause,
                message: message.clone(),
                reason: reason.clone(),
                step: state.step,
                weight: 0,
            },
        )
        .await?;
        let kind = if decision == Decision::Abort {
            EventKind::Aborted
        } else {
            EventKind::RolledBack
        };
        self.announce(state, kind, &message, reason);
        self.save(state).await?;
        Ok(Outcome::RolledBack)
    }

    /// The rollback policies' delay, when `reason` is one of their metrics.
    fn delayed(&self, reason: &analysis::Reason) -> Option<Duration> {
        let p = self.loaded.policies.as_ref()?;
        let delay = p.rollback_delay?.0;
        let template = self.loaded.templates.get(&p.template)?;
        template
            .metrics
            .iter()
            .any(|m| m.name == reason.metric)
            .then_some(delay)
    }

    /// Whether background analysis should be running: from `starting_step`, or once the new
    /// version has traffic.
    fn background_due(&self, state: &State) -> bool {
        match self.background_ref().starting_step {
            Some(step) => state.step >= step,
            None => match state.strategy {
                Strategy::Canary => state.weight > 0,
                Strategy::BlueGreen => state.switched_at.is_some(),
                Strategy::Rolling => true,
            },
        }
    }

    /// Measures every metric that is due.
    async fn measure_due(&self, state: &mut State) -> Result<bool, RolloutError> {
        let now = now_ms();
        let timeout = self.unavailable_timeout_ms();
        let step_ref = match self.spec().steps.get(state.step) {
            Some(Step::Analysis(a)) => Some(a.clone()),
            _ => None,
        };
        let bg_ref = self.background_ref();
        let mut jobs = Vec::new();
        for (which, runs) in [(0usize, &state.background), (1usize, &state.step_analysis)] {
            for (i, run) in runs.iter().enumerate() {
                if run.next_due(now, timeout).is_some_and(|due| due <= now) {
                    let args = if which == 0 {
                        self.args_of(&bg_ref)
                    } else {
                        step_ref
                            .as_ref()
                            .map(|a| self.args_of(a))
                            .unwrap_or_default()
                    };
                    let ctx = self.context(&args);
                    let metric = run.metric.clone();
                    let provider = self.provider.clone();
                    jobs.push(async move {
                        let answer = provider.measure(&metric, &ctx).await;
                        (which, i, analysis::measure(&metric, answer, now_ms()))
                    });
                }
            }
        }
        if jobs.is_empty() {
            return Ok(false);
        }
        for (which, i, m) in futures_util::future::join_all(jobs).await {
            let runs = if which == 0 {
                &mut state.background
            } else {
                &mut state.step_analysis
            };
            let name = runs[i].metric.name.clone();
            self.metrics.measured(&state.name, &name, m.phase);
            self.store
                .append(
                    &state.name,
                    &Entry {
                        at: m.at,
                        kind: "measurement".into(),
                        body: json!({"metric": name, "measurement": m}),
                    },
                )
                .await?;
            runs[i].measurements.push(m);
        }
        Ok(true)
    }

    /// One turn: commands, measurements, verdicts, the current step. Returns the outcome
    /// once the rollout is over.
    async fn turn(&self, state: &mut State) -> Result<Option<Outcome>, RolloutError> {
        let mut changed = false;
        for command in self.store.take(&state.name).await? {
            changed = true;
            match command {
                Command::Abort => {
                    return self
                        .roll_back(
                            state,
                            Decision::Abort,
                            Cause::Human,
                            "aborted by `flotilla rollout abort`".into(),
                            None,
                        )
                        .await
                        .map(Some);
                }
                Command::Pause => {
                    state.status = Status::Paused {
                        reason: "paused by `flotilla rollout pause`".into(),
                        by_human: true,
                    };
                    self.decide(
                        state,
                        Decision::Pause,
                        Cause::Human,
                        "paused by a human",
                        None,
                    )
                    .await?;
                    self.announce(state, EventKind::Paused, "paused by a human", None);
                }
                Command::Resume | Command::Promote => {
                    if let Status::Paused { .. } = state.status {
                        state.status = Status::Progressing;
                        // Promoting past a pause step or a paused analysis goes on to the
                        // next step; a paused metric starts over.
                        if command == Command::Promote {
                            let at_switch = state.strategy == Strategy::BlueGreen
                                && state.step == self.spec().steps.len();
                            if at_switch
                                || matches!(
                                    self.spec().steps.get(state.step),
                                    Some(Step::Pause(_) | Step::Analysis(_))
                                )
                            {
                                self.next_step(state);
                            }
                            // A metric that paused the rollout starts over, and a delayed
                            // rollback is called off.
                            state.background.clear();
                            state.rollback_at = None;
                        }
                        self.decide(
                            state,
                            Decision::Resume,
                            Cause::Human,
                            &format!(
                                "{} by a human",
                                if command == Command::Promote {
                                    "promoted"
                                } else {
                                    "resumed"
                                }
                            ),
                            None,
                        )
                        .await?;
                    }
                }
            }
        }
        if state.background.is_empty() && self.background_due(state) {
            state.background = self.start_analysis(&self.background_ref(), now_ms());
            changed |= !state.background.is_empty();
        }
        changed |= self.measure_due(state).await?;
        let now = now_ms();
        let timeout = self.unavailable_timeout_ms();
        let mut all = state.background.clone();
        all.extend(state.step_analysis.iter().cloned());
        let (verdict, advisories) = analysis::verdict(&all, now, timeout);
        for a in advisories {
            // Once per metric and measurement count: advisories are not repeated each turn.
            let key = (a.reason.metric.clone(), a.reason.values.clone());
            if self.metrics.first_advice(&state.name, &key) {
                self.decide(
                    state,
                    Decision::Advise,
                    Cause::of(&a.reason),
                    "an advisory metric objects; nothing changes",
                    Some(a.reason),
                )
                .await?;
            }
        }
        match verdict {
            Verdict::Abort { reason } if self.delayed(&reason).is_some() => {
                let delay = self.delayed(&reason).unwrap_or_default();
                match state.rollback_at {
                    None => {
                        state.rollback_at = Some(now + delay.as_millis() as i64);
                        let delay = humantime::format_duration(delay);
                        self.pause_for_metric(
                            state,
                            format!("rolling back in {delay} unless promoted: {reason}"),
                            &format!("paused; the rollback policies roll back in {delay}"),
                            reason,
                        )
                        .await?;
                        changed = true;
                    }
                    Some(at) if now >= at => {
                        return self
                            .roll_back(
                                state,
                                Decision::Rollback,
                                Cause::of(&reason),
                                format!(
                                    "rolled back after the policies' delay: metric {} failed",
                                    reason.metric
                                ),
                                Some(reason),
                            )
                            .await
                            .map(Some);
                    }
                    Some(_) => {}
                }
            }
            Verdict::Abort { reason } => {
                return self
                    .roll_back(
                        state,
                        Decision::Rollback,
                        Cause::of(&reason),
                        format!("rolled back: metric {} failed", reason.metric),
                        Some(reason),
                    )
                    .await
                    .map(Some);
            }
            Verdict::Pause { reason } => {
                if !matches!(state.status, Status::Paused { .. }) {
                    let message = format!("paused for a human: metric {}", reason.metric);
                    self.pause_for_metric(state, reason.to_string(), &message, reason)
                        .await?;
                    changed = true;
                }
            }
            Verdict::Hold { reason, since } => {
                if state.status == Status::Progressing {
                    state.status = Status::Holding {
                        reason: reason.to_string(),
                        since,
                    };
                    let message = format!(
                        "holding at {}%: metric {} is unavailable",
                        state.weight, reason.metric
                    );
                    self.decide(
                        state,
                        Decision::Hold,
                        Cause::Unavailable,
                        &message,
                        Some(reason.clone()),
                    )
                    .await?;
                    self.announce(state, EventKind::Unavailable, &message, Some(reason));
                    changed = true;
                }
            }
            Verdict::Running | Verdict::Successful => {
                if let Status::Holding { .. } = state.status {
                    state.status = Status::Progressing;
                    self.decide(
                        state,
                        Decision::Resume,
                        Cause::Unavailable,
                        "metrics answer again",
                        None,
                    )
                    .await?;
                    self.announce(
                        state,
                        EventKind::Available,
                        "metrics answer again; going on",
                        None,
                    );
                    changed = true;
                }
            }
        }
        if state.status == Status::Progressing {
            let step_verdict = analysis::verdict(&state.step_analysis, now, timeout).0;
            if let Some(outcome) = self.step(state, &step_verdict, &mut changed).await? {
                self.save(state).await?;
                return Ok(Some(outcome));
            }
        }
        if changed {
            self.save(state).await?;
        }
        Ok(None)
    }
}
