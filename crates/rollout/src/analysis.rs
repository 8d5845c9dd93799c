//! The analysis state machine: measurements in, phases and a verdict out. No I/O and no
//! clock: every function takes `now` (Unix milliseconds), so it is tested exhaustively.
//!
//! Semantics follow Argo Rollouts where users rely on them: a measurement is successful,
//! failed, inconclusive or an error by its conditions; a metric fails when its failed
//! measurements are **more than** `failure_limit` (strict `>`: the default 0 fails on the
//! first), is inconclusive past `inconclusive_limit`, errs past `consecutive_error_limit`
//! consecutive errors (4), and succeeds once `count` measurements are in. One phase is ours:
//! **unavailable** (the provider did not answer, or answered nothing). It is not a verdict on
//! the new version: it holds the rollout, and only after `unavailable_timeout` does the
//! metric's `on_unavailable` decide.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{Act, Metric, OnUnavailable};

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A scalar: `result` is a number.
    Scalar(f64),
    /// An instant vector: `result` is a list (`result[0]`).
    Vector(Vec<f64>),
}

/// The phase of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The success condition held (or the failure condition did not).
    Successful,
    /// The failure condition held (or the success condition did not).
    Failed,
    /// Both or neither held, with both conditions given.
    Inconclusive,
    /// The condition could not be evaluated on the value.
    Error,
    /// The provider failed, timed out or returned nothing.
    Unavailable,
}

/// One measurement, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Unix milliseconds.
    pub at: i64,
    /// Its phase.
    pub phase: Phase,
    /// The value (`[0.97]`, `0.5`, `"NaN"`), when there was one.
    pub value: Option<serde_json::Value>,
    /// Why it is an error or unavailable.
    pub message: Option<String>,
}

fn sample_json(sample: &Sample) -> serde_json::Value {
    fn num(x: f64) -> serde_json::Value {
        serde_json::Number::from_f64(x)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| serde_json::Value::String(x.to_string()))
    }
    match sample {
        Sample::Scalar(x) => num(*x),
        Sample::Vector(xs) => serde_json::Value::Array(xs.iter().map(|x| num(*x)).collect()),
    }
}

fn condition_env() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_function(
            "len",
            |v: minijinja::Value| -> Result<usize, minijinja::Error> {
                v.len().ok_or_else(|| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("len() of a {}", v.kind()),
                    )
                })
            },
        );
        env.add_function("isNaN", |v: f64| v.is_nan());
        env.add_function(
            "default",
            |v: minijinja::Value, fallback: minijinja::Value| {
                if v.is_undefined() || v.is_none() {
                    fallback
                } else {
                    v
                }
            },
        );
        env
    })
}

/// Argo's conditions are expr-lang: `&&`, `||` and `!` become `and`, `or` and `not`
/// (outside quoted strings); everything else minijinja reads as it is.
pub fn to_minijinja(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len() + 8);
    let mut quote: Option<char> = None;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                out.push(c);
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                out.push_str(" and ");
            }
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                out.push_str(" or ");
            }
            '!' if chars.peek() != Some(&'=') => out.push_str(" not "),
            _ => out.push(c),
        }
    }
    out
}

/// Checks a condition's syntax.
pub fn check_condition(expr: &str) -> Result<(), String> {
    condition_env()
        .compile_expression(&to_minijinja(expr))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn eval(expr: &str, sample: &Sample) -> Result<bool, String> {
    let result = match sample {
        Sample::Scalar(x) => minijinja::Value::from(*x),
        Sample::Vector(xs) => minijinja::Value::from(xs.clone()),
    };
    let ctx = minijinja::context! { result => result };
    let value = condition_env()
        .compile_expression(&to_minijinja(expr))
        .and_then(|e| e.eval(ctx))
        .map_err(|e| format!("`{expr}`: {e}"))?;
    if value.is_undefined() {
        return Err(format!("`{expr}` is undefined for result {sample:?}"));
    }
    Ok(value.is_true())
}

/// Judges one provider answer (`Err` is the provider's failure).
pub fn measure(metric: &Metric, answer: Result<Sample, String>, now: i64) -> Measurement {
    let sample = match answer {
        Ok(Sample::Vector(v)) if v.is_empty() => {
            return Measurement {
                at: now,
                phase: Phase::Unavailable,
                value: Some(serde_json::json!([])),
                message: Some("the query returned no series".into()),
            };
        }
        Ok(s) => s,
        Err(message) => {
            return Measurement {
                at: now,
                phase: Phase::Unavailable,
                value: None,
                message: Some(message),
            };
        }
    };
    let value = Some(sample_json(&sample));
    let success = metric
        .success_condition
        .as_deref()
        .map(|c| eval(c, &sample));
    let failure = metric
        .failure_condition
        .as_deref()
        .map(|c| eval(c, &sample));
    let phase = match (success, failure) {
        (Some(Err(m)), _) | (_, Some(Err(m))) => {
            return Measurement {
                at: now,
                phase: Phase::Error,
                value,
                message: Some(m),
            };
        }
        (None, None) => Phase::Successful,
        (Some(Ok(s)), None) => {
            if s {
                Phase::Successful
            } else {
                Phase::Failed
            }
        }
        (None, Some(Ok(f))) => {
            if f {
                Phase::Failed
            } else {
                Phase::Successful
            }
        }
        (Some(Ok(s)), Some(Ok(f))) => match (s, f) {
            (true, false) => Phase::Successful,
            (false, true) => Phase::Failed,
            _ => Phase::Inconclusive,
        },
    };
    Measurement {
        at: now,
        phase,
        value,
        message: None,
    }
}

/// Where a metric stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum MetricPhase {
    /// Measuring.
    Running,
    /// Every measurement it needs is in, within the limits.
    Successful,
    /// More failures than `failure_limit`.
    Failed,
    /// More inconclusive measurements than `inconclusive_limit`.
    Inconclusive,
    /// More consecutive errors than `consecutive_error_limit`.
    Error,
    /// The provider has not answered since `since`.
    Unavailable {
        /// Unix milliseconds of the first unanswered measurement.
        since: i64,
        /// Whether `unavailable_timeout` has passed.
        timed_out: bool,
    },
}

/// Tallies of a metric's measurements.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Successful measurements.
    pub successful: u32,
    /// Failed ones.
    pub failed: u32,
    /// Inconclusive ones.
    pub inconclusive: u32,
    /// Errors.
    pub error: u32,
    /// Errors in a row at the end.
    pub consecutive_errors: u32,
    /// Provider failures.
    pub unavailable: u32,
}

/// One metric of a running analysis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRun {
    /// The metric, its arguments already filled in.
    pub metric: Metric,
    /// When the analysis started (Unix ms).
    pub started: i64,
    /// Every measurement, oldest first.
    pub measurements: Vec<Measurement>,
}

impl MetricRun {
    /// Starts a metric at `now`.
    pub fn new(metric: Metric, now: i64) -> Self {
        MetricRun {
            metric,
            started: now,
            measurements: Vec::new(),
        }
    }

    /// Counts the measurements.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for m in &self.measurements {
            match m.phase {
                Phase::Successful => t.successful += 1,
                Phase::Failed => t.failed += 1,
                Phase::Inconclusive => t.inconclusive += 1,
                Phase::Error => t.error += 1,
                Phase::Unavailable => t.unavailable += 1,
            }
            match m.phase {
                Phase::Error => t.consecutive_errors += 1,
                // An unanswered query says nothing about the condition: it neither
                // continues nor breaks a run of errors.
                Phase::Unavailable => {}
                _ => t.consecutive_errors = 0,
            }
        }
        t
    }

    /// Measurements the metric takes in all; `None` runs until the rollout ends.
    fn wanted(&self) -> Option<u32> {
        match (self.metric.count, self.metric.interval) {
            (Some(n), _) => Some(n.max(1)),
            (None, Some(_)) => None,
            (None, None) => Some(1),
        }
    }

    /// When the current outage began: the first of the trailing unavailable measurements.
    fn unavailable_since(&self) -> Option<i64> {
        let mut since = None;
        for m in self.measurements.iter().rev() {
            if m.phase != Phase::Unavailable {
                break;
            }
            since = Some(m.at);
        }
        since
    }

    /// The metric's phase at `now`.
    pub fn phase(&self, now: i64, unavailable_timeout_ms: i64) -> MetricPhase {
        let t = self.tally();
        let m = &self.metric;
        if t.failed > m.failure_limit {
            return MetricPhase::Failed;
        }
        if t.consecutive_errors > m.consecutive_error_limit {
            return MetricPhase::Error;
        }
        if t.inconclusive > m.inconclusive_limit {
            return MetricPhase::Inconclusive;
        }
        let ignore = m.on_unavailable == OnUnavailable::Ignore;
        if !ignore && let Some(since) = self.unavailable_since() {
            return MetricPhase::Unavailable {
                since,
                timed_out: now - since >= unavailable_timeout_ms,
            };
        }
        let taken = t.successful + t.failed + t.inconclusive + t.error;
        let taken = if ignore { taken + t.unavailable } else { taken };
        match self.wanted() {
            Some(n) if taken >= n => MetricPhase::Successful,
            _ => MetricPhase::Running,
        }
    }

    /// When the next measurement is due (Unix ms), or `None` once the metric is decided.
    pub fn next_due(&self, now: i64, unavailable_timeout_ms: i64) -> Option<i64> {
        match self.phase(now, unavailable_timeout_ms) {
            MetricPhase::Running | MetricPhase::Unavailable { .. } => {}
            _ => return None,
        }
        let interval = self
            .metric
            .interval
            .map_or(5_000, |d| d.0.as_millis() as i64);
        Some(match self.measurements.last() {
            None => {
                self.started
                    + self
                        .metric
                        .initial_delay
                        .map_or(0, |d| d.0.as_millis() as i64)
            }
            Some(last) => last.at + interval.max(100),
        })
    }

    /// Values of the last few measurements, for reasons.
    fn recent_values(&self) -> String {
        let values: Vec<String> = self
            .measurements
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|m| match &m.value {
                Some(v) => format!("{v} ({})", phase_name(m.phase)),
                None => format!("- ({})", phase_name(m.phase)),
            })
            .collect();
        values.join(", ")
    }

    fn condition(&self) -> String {
        match (
            &self.metric.success_condition,
            &self.metric.failure_condition,
        ) {
            (Some(s), Some(f)) => format!("success_condition `{s}`, failure_condition `{f}`"),
            (Some(s), None) => format!("success_condition `{s}`"),
            (None, Some(f)) => format!("failure_condition `{f}`"),
            (None, None) => "no condition".into(),
        }
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Successful => "successful",
        Phase::Failed => "failed",
        Phase::Inconclusive => "inconclusive",
        Phase::Error => "error",
        Phase::Unavailable => "unavailable",
    }
}

/// Which rule of a metric fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Failed measurements > failure_limit.
    FailureLimit,
    /// Inconclusive measurements > inconclusive_limit.
    InconclusiveLimit,
    /// Consecutive errors > consecutive_error_limit.
    ErrorLimit,
    /// The provider does not answer.
    Unavailable,
    /// The provider has not answered for longer than unavailable_timeout.
    UnavailableTimeout,
}

/// Why a verdict was reached: the metric, the values seen, the condition and the rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The rule, as a kind.
    pub kind: Rule,
    /// The metric that decided.
    pub metric: String,
    /// The rule that fired (`failed 2 > failure_limit 1`).
    pub rule: String,
    /// The condition(s) the values were judged by.
    pub condition: String,
    /// The last values seen, with their phases.
    pub values: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metric {}: {} ({}; values: {})",
            self.metric, self.rule, self.condition, self.values
        )
    }
}

/// What an analysis says the rollout should do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// Every metric is decided and none objects.
    Successful,
    /// Still measuring.
    Running,
    /// A metric cannot be measured: hold where the rollout is.
    Hold {
        /// Which metric and since when.
        reason: Reason,
        /// Unix ms the outage began.
        since: i64,
    },
    /// Wait for a human.
    Pause {
        /// Why.
        reason: Reason,
    },
    /// Roll back.
    Abort {
        /// Why.
        reason: Reason,
    },
}

impl Verdict {
    fn rank(&self) -> u8 {
        match self {
            Verdict::Successful => 0,
            Verdict::Running => 1,
            Verdict::Hold { .. } => 2,
            Verdict::Pause { .. } => 3,
            Verdict::Abort { .. } => 4,
        }
    }
}

/// A metric that decided something the rollout does not act on (an `advisory` metric).
#[derive(Debug, Clone, PartialEq)]
pub struct Advisory {
    /// What it would have done and why.
    pub reason: Reason,
}

/// The verdict over several metrics (the worst of them) and the advisories seen.
pub fn verdict(
    metrics: &[MetricRun],
    now: i64,
    unavailable_timeout_ms: i64,
) -> (Verdict, Vec<Advisory>) {
    let mut worst = Verdict::Successful;
    let mut advisories = Vec::new();
    for run in metrics {
        let t = run.tally();
        let m = &run.metric;
        let reason = |kind: Rule, rule: String| Reason {
            kind,
            metric: m.name.clone(),
            rule,
            condition: run.condition(),
            values: run.recent_values(),
        };
        let (failing, kind, rule) = match run.phase(now, unavailable_timeout_ms) {
            MetricPhase::Successful => continue,
            MetricPhase::Running => {
                if worst.rank() < Verdict::Running.rank() {
                    worst = Verdict::Running;
                }
                continue;
            }
            MetricPhase::Failed => (
                m.act,
                Rule::FailureLimit,
                format!(
                    "{} failed measurements > failure_limit {}",
                    t.failed, m.failure_limit
                ),
            ),
            MetricPhase::Error => (
                m.act,
                Rule::ErrorLimit,
                format!(
                    "{} consecutive errors > consecutive_error_limit {}",
                    t.consecutive_errors, m.consecutive_error_limit
                ),
            ),
            MetricPhase::Inconclusive => (
                Act::Pause.min_with(m.act),
                Rule::InconclusiveLimit,
                format!(
                    "{} inconclusive measurements > inconclusive_limit {}",
                    t.inconclusive, m.inconclusive_limit
                ),
            ),
            MetricPhase::Unavailable { since, timed_out } => {
                let last = run
                    .measurements
                    .last()
                    .and_then(|x| x.message.clone())
                    .unwrap_or_default();
                if !timed_out {
                    let v = Verdict::Hold {
                        reason: reason(Rule::Unavailable, format!("unavailable: {last}")),
                        since,
                    };
                    if v.rank() > worst.rank() {
                        worst = v;
                    }
                    continue;
                }
                let act = match m.on_unavailable {
                    OnUnavailable::Fail => m.act,
                    _ => Act::Pause.min_with(m.act),
                };
                (
                    act,
                    Rule::UnavailableTimeout,
                    format!("unavailable for longer than unavailable_timeout: {last}"),
                )
            }
        };
        let v = match failing {
            Act::Advisory => {
                advisories.push(Advisory {
                    reason: reason(kind, rule),
                });
                continue;
            }
            Act::Pause => Verdict::Pause {
                reason: reason(kind, rule),
            },
            Act::Abort => Verdict::Abort {
                reason: reason(kind, rule),
            },
        };
        if v.rank() > worst.rank() {
            worst = v;
        }
    }
    (worst, advisories)
}

impl Act {
    /// The milder of `self` and `other` (advisory < pause < abort).
    fn min_with(self, other: Act) -> Act {
        let rank = |a: Act| match a {
            Act::Advisory => 0,
            Act::Pause => 1,
            Act::Abort => 2,
        };
        if rank(self) <= rank(other) {
            self
        } else {
            other
        }
    }
}

#[cfg(test)]
#[path = "analysis_tests.rs"]
mod tests;
