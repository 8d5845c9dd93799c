//! The controller's moves: decisions, pauses, weights, canary steps and the finish.

use super::{Controller, RolloutError, now_ms};
use crate::analysis::{self, Verdict};
use crate::notify::EventKind;
use crate::spec::{Pause, Step, Strategy};
use crate::state::{Cause, Decision, DecisionRecord, Outcome, State, Status};

impl Controller {
    pub(super) async fn decide(
        &self,
        state: &State,
        decision: Decision,
        cause: Cause,
        message: &str,
        reason: Option<analysis::Reason>,
    ) -> Result<(), RolloutError> {
        self.record_decision(
            state,
            DecisionRecord {
                decision,
                cause,
                message: message.to_owned(),
                reason,
                step: state.step,
                weight: state.weight,
            },
        )
        .await
    }

    /// Holds for a human because of a metric: the status says why, the decision is recorded
    /// and announced.
    pub(super) async fn pause_for_metric(
        &self,
        state: &mut State,
        status_reason: String,
        message: &str,
        reason: analysis::Reason,
    ) -> Result<(), RolloutError> {
        state.status = Status::Paused {
            reason: status_reason,
            by_human: false,
        };
        self.decide(
            state,
            Decision::Pause,
            Cause::of(&reason),
            message,
            Some(reason.clone()),
        )
        .await?;
        self.announce(state, EventKind::Paused, message, Some(reason));
        Ok(())
    }

    pub(super) fn next_step(&self, state: &mut State) {
        state.step += 1;
        state.step_started = now_ms();
        state.step_analysis.clear();
        if let Some(Step::Analysis(a)) = self.spec().steps.get(state.step) {
            state.step_analysis = self.start_analysis(a, state.step_started);
        }
    }

    pub(super) async fn set_weight(
        &self,
        state: &mut State,
        weight: u8,
    ) -> Result<Option<Outcome>, RolloutError> {
        let previous = state.weight;
        state.weight = weight;
        if let Err(e) = self.traffic.apply(&self.routing(state)).await {
            state.weight = previous;
            return self.fail(state, e.to_string()).await.map(Some);
        }
        Ok(None)
    }

    /// Works on the current step.
    pub(super) async fn step(
        &self,
        state: &mut State,
        step_verdict: &Verdict,
        changed: &mut bool,
    ) -> Result<Option<Outcome>, RolloutError> {
        let now = now_ms();
        if state.strategy == Strategy::Rolling {
            return crate::rolling::turn(self, state, changed).await;
        }
        let steps = &self.spec().steps;
        let Some(step) = steps.get(state.step) else {
            return self.finish(state, changed).await;
        };
        match step {
            Step::SetWeight(w) => {
                if state.strategy == Strategy::Canary
                    && let Some(o) = self.set_weight(state, *w).await?
                {
                    return Ok(Some(o));
                }
                let message = format!("step {}: set_weight {w}", state.step);
                self.next_step(state);
                self.decide(state, Decision::Advance, Cause::Step, &message, None)
                    .await?;
                *changed = true;
            }
            Step::Pause(Pause::For(d)) => {
                if now - state.step_started >= d.0.as_millis() as i64 {
                    let message = format!("step {}: paused {d}", state.step);
                    self.next_step(state);
                    self.decide(state, Decision::Advance, Cause::Step, &message, None)
                        .await?;
                    *changed = true;
                }
            }
            Step::Pause(Pause::UntilPromoted(_)) => {
                state.status = Status::Paused {
                    reason: format!(
                        "step {}: waiting for `flotilla rollout promote {}`",
                        state.step, state.name
                    ),
                    by_human: false,
                };
                let message = format!("step {}: waiting for promote", state.step);
                self.decide(state, Decision::Pause, Cause::PauseStep, &message, None)
                    .await?;
                self.announce(state, EventKind::Paused, &message, None);
                *changed = true;
            }
            Step::Analysis(a) => {
                if state.step_analysis.is_empty() {
                    state.step_analysis = self.start_analysis(a, now);
                    *changed = true;
                } else if *step_verdict == Verdict::Successful {
                    let message = format!(
                        "step {}: analysis {} successful",
                        state.step,
                        a.templates.join(", ")
                    );
                    self.next_step(state);
                    self.decide(state, Decision::Advance, Cause::Step, &message, None)
                        .await?;
                    *changed = true;
                }
            }
        }
        Ok(None)
    }

    /// After the last step: promote (blue-green switches and keeps the old colour for
    /// `scale_down_delay`).
    pub(super) async fn finish(
        &self,
        state: &mut State,
        changed: &mut bool,
    ) -> Result<Option<Outcome>, RolloutError> {
        let now = now_ms();
        if let Some(p) = &self.loaded.policies {
            // The seed's min_observation_time: judge the new version this long at least.
            if now - state.started < p.min_observation.0.as_millis() as i64 {
                return Ok(None);
            }
        }
        if state.strategy == Strategy::BlueGreen {
            match state.switched_at {
                None => {
                    // Without auto_promote, the preview waits for `promote` (which moves
                    // the step past the last one) before the switch.
                    if !self.spec().blue_green.auto_promote && state.step == self.spec().steps.len()
                    {
                        state.status = Status::Paused {
                            reason: format!(
                                "the preview ({}) is ready: waiting for `flotilla rollout promote {}`",
                                state.canary_version, state.name
                            ),
                            by_human: false,
                        };
                        self.decide(
                            state,
                            Decision::Pause,
                            Cause::PauseStep,
                            "blue-green: waiting for promote",
                            None,
                        )
                        .await?;
                        *changed = true;
                        return Ok(None);
                    }
                    if let Some(o) = self.set_weight(state, 100).await? {
                        return Ok(Some(o));
                    }
                    state.switched_at = Some(now);
                    self.decide(
                        state,
                        Decision::Advance,
                        Cause::Step,
                        "blue-green: switched to the new colour",
                        None,
                    )
                    .await?;
                    *changed = true;
                    return Ok(None);
                }
                Some(at) => {
                    if now - at < self.spec().blue_green.scale_down_delay.0.as_millis() as i64 {
                        return Ok(None);
                    }
                }
            }
        } else if let Some(o) = self.set_weight(state, 100).await? {
            return Ok(Some(o));
        }
        state.status = Status::Promoted;
        state.weight = 100;
        self.decide(
            state,
            Decision::Promote,
            Cause::Step,
            "promoted: every step passed",
            None,
        )
        .await?;
        self.announce(state, EventKind::Promoted, "promoted", None);
        self.save(state).await?;
        Ok(Some(Outcome::Promoted))
    }
}
