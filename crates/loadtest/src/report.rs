//! The report: versioned JSON (`"schema": 1`, described by `docs/loadtest.schema.json`) and
//! its text form, SLO verdicts and the comparison with an earlier report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::{Breach, Percentiles, Second};

/// The report's schema version.
pub const SCHEMA: u32 = 1;

/// A load test's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    /// What was loaded: `workflow travel_planning`, `execute agent echo`, `GET /health`.
    pub target: String,
    pub url: String,
    /// `closed` or `open`.
    pub model: String,
    /// Closed loop: iterations in flight.
    pub concurrency: Option<u32>,
    /// Open loop: arrivals per second, and the most in flight.
    pub rate: Option<f64>,
    pub max_in_flight: Option<u32>,
    /// Seconds measured (warm-up excluded).
    pub duration_s: f64,
    pub warmup_s: f64,
    pub totals: Totals,
    /// Answers by HTTP status.
    pub status_codes: BTreeMap<String, u64>,
    /// Failures by kind (`timeout`, `http 503`, `run failed`, …).
    pub errors: BTreeMap<String, u64>,
    /// From each iteration's intended start to its end (open loop: no coordinated
    /// omission), in milliseconds.
    pub latency_ms: Percentiles,
    /// From each iteration's actual start to its end, in milliseconds.
    pub service_ms: Percentiles,
    pub series: Vec<Second>,
    /// Workflow runs: step durations by step id, read back from the runs.
    pub steps: BTreeMap<String, StepTimes>,
    pub usage: Usage,
    pub generator: Generator,
    pub slo: Vec<Verdict>,
    /// Against `--compare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// Every objective met and no regression.
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Iterations measured (ended inside the measured time).
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub rps: f64,
    /// Open loop: arrivals dropped because too many waited for a slot.
    pub dropped: u64,
    /// Iterations that started more than 5 ms after they were due.
    pub late_starts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepTimes {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// How the generator itself did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Generator {
    /// CPU seconds the process used while loading.
    pub cpu_s: f64,
    /// CPU microseconds per iteration.
    pub cpu_us_per_request: f64,
    /// Open loop: share of arrivals it issued more than 5 ms late by its own fault.
    pub behind_share: f64,
    /// Whether it fell behind enough to understate the offered load (over 1 %).
    pub fell_behind: bool,
}

/// One objective's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub objective: String,
    /// Over the whole run.
    pub value: String,
    pub passed: bool,
    /// The first sliding window that breached it, if any.
    pub window_breach: Option<Breach>,
}

/// Change against an earlier report, in percent (positive: higher now).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub p50_pct: f64,
    pub p95_pct: f64,
    pub p99_pct: f64,
    pub rps_pct: f64,
    pub error_rate_before: f64,
    pub max_regression_pct: f64,
    /// Latency up, or throughput down, by more than `max_regression_pct`.
    pub regressed: Vec<String>,
}

fn change(now: f64, before: f64) -> f64 {
    if before == 0.0 {
        0.0
    } else {
        (now - before) / before * 100.0
    }
}

impl Report {
    /// Compares with `before`; a latency rise or a throughput drop beyond `max_pct` fails.
    pub fn compare(&mut self, before: &Report, max_pct: f64) {
        let (l, b) = (&self.latency_ms, &before.latency_ms);
        let c = Comparison {
            p50_pct: change(l.p50, b.p50),
            p95_pct: change(l.p95, b.p95),
            p99_pct: change(l.p99, b.p99),
            rps_pct: change(self.totals.rps, before.totals.rps),
            error_rate_before: before.totals.error_rate,
            max_regression_pct: max_pct,
            regressed: Vec::new(),
        };
        let mut regressed = Vec::new();
        for (name, pct) in [("p50", c.p50_pct), ("p95", c.p95_pct), ("p99", c.p99_pct)] {
            if pct > max_pct {
                regressed.push(format!("{name} +{pct:.1}%"));
            }
        }
        if -c.rps_pct > max_pct {
            regressed.push(format!("rps {:.1}%", c.rps_pct));
        }
        if !regressed.is_empty() {
            self.passed = false;
        }
        self.comparison = Some(Comparison { regressed, ..c });
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{} at {} ({}), {:.1}s measured after {:.1}s warm-up",
            self.target,
            self.url,
            match (self.concurrency, self.rate) {
                (Some(c), _) => format!("closed loop, {c} in flight"),
                (_, Some(r)) => format!(
                    "open loop, {r:.1}/s, at most {} in flight",
                    self.max_in_flight.unwrap_or(0)
                ),
                _ => self.model.clone(),
            },
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            out,
            "  requests {}  ok {}  errors {} ({:.2}%)  {:.1}/s  dropped {}  late starts {}",
            t.requests,
            t.ok,
            t.errors,
            t.error_rate * 100.0,
            t.rps,
            t.dropped,
            t.late_starts
        );
        for (name, p) in [("latency", &self.latency_ms), ("service", &self.service_ms)] {
            let _ = writeln!(
                out,
                "  {name:<8} p50 {:.2}ms  p90 {:.2}ms  p95 {:.2}ms  p99 {:.2}ms  p99.9 {:.2}ms  max {:.2}ms",
                p.p50, p.p90, p.p95, p.p99, p.p99_9, p.max
            );
        }
        if !self.errors.is_empty() {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(out, "  errors: {}", kinds.join(", "));
        }
        for (step, s) in &self.steps {
            let _ = writeln!(
                out,
                "  step {step:<20} {} runs  p50 {:.2}ms  p99 {:.2}ms",
                s.count, s.p50_ms, s.p99_ms
            );
        }
        if self.usage.prompt_tokens + self.usage.completion_tokens > 0 {
            let u = &self.usage;
            let _ = writeln!(
                out,
                "  LLM tokens {} in, {} out, ${:.4}",
                u.prompt_tokens, u.completion_tokens, u.cost_usd
            );
        }
        let g = &self.generator;
        let _ = writeln!(
            out,
            "  generator CPU {:.2}s ({:.1}µs per request)",
            g.cpu_s, g.cpu_us_per_request
        );
        if g.fell_behind {
            let _ = writeln!(
                out,
                "  warning: the generator fell behind ({:.1}% of arrivals issued late): the offered rate is understated",
                g.behind_share * 100.0
            );
        }
        for v in &self.slo {
            let mark = if v.passed && v.window_breach.is_none() {
                "pass"
            } else {
                "FAIL"
            };
            let _ = write!(out, "  SLO {mark} {} (measured {})", v.objective, v.value);
            if let Some(b) = &v.window_breach {
                let _ = write!(
                    out,
                    "; breached over the window ending at {}s: {}",
                    b.at_second, b.value
                );
            }
            out.push('\n');
        }
        if let Some(c) = &self.comparison {
            let _ = writeln!(
                out,
                "  vs baseline: p50 {:+.1}%  p95 {:+.1}%  p99 {:+.1}%  rps {:+.1}%{}",
                c.p50_pct,
                c.p95_pct,
                c.p99_pct,
                c.rps_pct,
                if c.regressed.is_empty() {
                    String::new()
                } else {
                    format!("  REGRESSION: {}", c.regressed.join(", "))
                }
            );
        }
        let _ = writeln!(out, "{}", if self.passed { "PASSED" } else { "FAILED" });
        out
    }
}
