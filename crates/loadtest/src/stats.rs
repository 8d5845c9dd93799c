//! What a load test measured: HDR histograms of latency (from each iteration's intended
//! start) and service time (from its actual start), counts, a per-second series, sliding
//! windows for SLO gates, and per-step timings read back from workflow runs.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use flotilla_spec::slo::{Measured, Objective};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to an hour, at 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Per-second and window histograms: 2 significant figures keep them small.
fn coarse() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How one iteration ended.
#[derive(Debug)]
pub struct Sample {
    /// From the intended start (open loop) or the start (closed loop) to the end.
    pub latency: Duration,
    /// From the actual start to the end.
    pub service: Duration,
    /// Started more than [`LATE`] after it was due.
    pub late: bool,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Step durations of a finished workflow run, by step id.
    pub steps: Vec<(String, Duration)>,
    /// LLM usage of the run: prompt tokens, completion tokens, cost.
    pub usage: (u64, u64, f64),
}

/// A start this much after it was due is late.
pub const LATE: Duration = Duration::from_millis(5);

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    #[serde(rename = "p99.99")]
    pub p99_99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            p99_99: ms(h.value_at_quantile(0.9999)),
            min: ms(h.min()),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Second {
    /// Seconds since measuring began.
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Latency, errors and rate of some requests over some seconds, for objectives.
struct Span<'a> {
    latency: &'a Histogram<u64>,
    requests: u64,
    errors: u64,
    seconds: f64,
}

impl Measured for Span<'_> {
    fn percentile(&self, p: f64) -> f64 {
        self.latency.value_at_quantile(p / 100.0) as f64 / 1e6
    }
    fn max(&self) -> f64 {
        self.latency.max() as f64 / 1e6
    }
    fn mean(&self) -> f64 {
        self.latency.mean() / 1e6
    }
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
    fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The first breach of an objective over a sliding window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Breach {
    pub objective: String,
    /// The window's last second.
    pub at_second: u64,
    pub value: String,
}

/// Everything recorded.
pub struct Stats {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
    pub late_starts: u64,
    pub status_codes: BTreeMap<String, u64>,
    pub error_kinds: BTreeMap<String, u64>,
    pub series: Vec<Second>,
    steps: BTreeMap<String, Histogram<u64>>,
    pub usage: (u64, u64, f64),
    /// The second being filled: its histogram, requests, errors.
    current: (u64, Histogram<u64>, u64, u64),
    /// The last seconds, for window objectives.
    window: VecDeque<(Histogram<u64>, u64, u64)>,
    window_len: usize,
    window_objectives: Vec<Objective>,
    pub breaches: Vec<Breach>,
}

/// Most distinct error messages kept; others count under `other`.
const MAX_ERROR_KINDS: usize = 32;

impl Stats {
    /// `window` seconds of sliding window for `objectives` (none: no window checks).
    pub fn new(window: Duration, objectives: Vec<Objective>) -> Stats {
        Stats {
            latency: histogram(),
            service: histogram(),
            requests: 0,
            errors: 0,
            late_starts: 0,
            status_codes: BTreeMap::new(),
            error_kinds: BTreeMap::new(),
            series: Vec::new(),
            steps: BTreeMap::new(),
            usage: (0, 0, 0.0),
            current: (0, coarse(), 0, 0),
            window: VecDeque::new(),
            window_len: window.as_secs().max(1) as usize,
            window_objectives: objectives,
            breaches: Vec::new(),
        }
    }

    /// Records a sample that ended `at` after measuring began.
    pub fn record(&mut self, s: Sample, at: Duration) {
        self.roll_to(at.as_secs());
        let lat = micros(s.latency);
        let _ = self.latency.record(lat);
        let _ = self.service.record(micros(s.service));
        let _ = self.current.1.record(lat);
        self.requests += 1;
        self.current.2 += 1;
        self.late_starts += u64::from(s.late);
        if let Some(code) = s.status {
            *self.status_codes.entry(code.to_string()).or_default() += 1;
        }
        if let Some(e) = s.error {
            self.errors += 1;
            self.current.3 += 1;
            let key =
                if self.error_kinds.len() < MAX_ERROR_KINDS || self.error_kinds.contains_key(&e) {
                    e
                } else {
                    "other".into()
                };
            *self.error_kinds.entry(key).or_default() += 1;
        }
        for (step, d) in s.steps {
            let _ = self
                .steps
                .entry(step)
                .or_insert_with(coarse)
                .record(micros(d));
        }
        self.usage.0 += s.usage.0;
        self.usage.1 += s.usage.1;
        self.usage.2 += s.usage.2;
    }

    /// Closes seconds up to `second` (exclusive): series, window, window objectives.
    pub fn roll_to(&mut self, second: u64) {
        while self.current.0 < second {
            let next = (self.current.0 + 1, coarse(), 0, 0);
            let (n, h, requests, errors) = std::mem::replace(&mut self.current, next);
            self.series.push(Second {
                second: n,
                requests,
                errors,
                p50_ms: if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.5) as f64 / 1000.0
                },
                p99_ms: if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.99) as f64 / 1000.0
                },
            });
            self.window.push_back((h, requests, errors));
            if self.window.len() > self.window_len {
                self.window.pop_front();
            }
            if self.window.len() == self.window_len {
                self.check_window(n);
            }
        }
    }

    fn check_window(&mut self, at_second: u64) {
        if self.window_objectives.is_empty() {
            return;
        }
        let mut latency = coarse();
        let (mut requests, mut errors) = (0, 0);
        for (h, r, e) in &self.window {
            let _ = latency.add(h);
            requests += r;
            errors += e;
        }
        let span = Span {
            latency: &latency,
            requests,
            errors,
            seconds: self.window_len as f64,
        };
        for o in &self.window_objectives {
            let (met, value) = o.check(&span);
            if !met && !self.breaches.iter().any(|b| b.objective == o.text) {
                self.breaches.push(Breach {
                    objective: o.text.clone(),
                    at_second,
                    value: o.show(value),
                });
            }
        }
    }

    /// Checks `objective` over the whole run of `seconds`.
    pub fn check(&self, objective: &Objective, seconds: f64) -> (bool, f64) {
        objective.check(&Span {
            latency: &self.latency,
            requests: self.requests,
            errors: self.errors,
            seconds,
        })
    }

    /// Latency percentiles.
    pub fn latency(&self) -> Percentiles {
        Percentiles::of(&self.latency)
    }

    /// Service-time percentiles.
    pub fn service(&self) -> Percentiles {
        Percentiles::of(&self.service)
    }

    /// Step timings: count and percentiles, by step id.
    pub fn steps(&self) -> BTreeMap<String, (u64, Percentiles)> {
        self.steps
            .iter()
            .map(|(k, h)| (k.clone(), (h.len(), Percentiles::of(h))))
            .collect()
    }
}
