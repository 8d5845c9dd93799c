//! Offering the load: workers (closed loop) or a dispatcher of arrivals (open loop), each
//! iteration's end sent to one collector that owns the statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flotilla_spec::slo::Objective;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::LoadError;
use crate::plan::{Model, Plan, Target, arrival};
use crate::report::{Generator, Report, SCHEMA, StepTimes, Totals, Usage, Verdict};
use crate::stats::{LATE, Sample, Stats};

/// The gates a run is judged by.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    pub objectives: Vec<Objective>,
    /// The sliding window objectives are also checked over.
    pub window: Option<Duration>,
    /// Stop offering load at the first window breach.
    pub abort_on_fail: bool,
}

/// An iteration's end, on its way to the collector.
struct Ended {
    sample: Sample,
    /// When it was due (open loop) or started (closed loop).
    due: Instant,
}

/// What every iteration shares.
struct Shared {
    client: reqwest::Client,
    request: Request,
    tx: mpsc::UnboundedSender<Ended>,
    /// Set when the run must stop early (a window breach with `abort_on_fail`).
    stop: Arc<AtomicBool>,
    started: AtomicU64,
    max_requests: u64,
}

/// The request each iteration sends, prepared once.
struct Request {
    method: reqwest::Method,
    url: reqwest::Url,
    /// Shared by every iteration (cloning it is a reference count).
    body: Option<bytes::Bytes>,
    headers: reqwest::header::HeaderMap,
    /// A workflow run: the answer is the run, judged and read for step timings.
    run: bool,
}

impl Request {
    fn new(plan: &Plan) -> Result<Request, LoadError> {
        let bad = |e: String| LoadError::Client(e);
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &plan.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| bad(format!("header `{k}`: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| bad(format!("header `{k}`: {e}")))?;
            headers.insert(name, value);
        }
        let json_body = |v: Value| Some(bytes::Bytes::from(v.to_string()));
        let wait = humantime::format_duration(plan.timeout)
            .to_string()
            .replace(' ', "");
        let (method, path, body, run) = match &plan.target {
            Target::Workflow { name, input } => (
                reqwest::Method::POST,
                format!("api/v1/workflows/{name}/runs?wait={wait}"),
                json_body(json!({ "input": input })),
                true,
            ),
            Target::Execute {
                agent,
                capability,
                input,
            } => {
                let mut b = json!({ "input": input, "timeout": plan.timeout.as_millis() as u64 });
                if let Some(a) = agent {
                    b["agent"] = json!(a);
                }
                if let Some(c) = capability {
                    b["capability"] = json!(c);
                }
                (
                    reqwest::Method::POST,
                    "api/v1/execute".into(),
                    json_body(b),
                    false,
                )
            }
            Target::Http { method, path, body } => (
                method.clone(),
                path.trim_start_matches('/').to_owned(),
                body.clone().map(bytes::Bytes::from),
                false,
            ),
        };
        if body.is_some() && !headers.contains_key(reqwest::header::CONTENT_TYPE) {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/json"),
            );
        }
        let url = plan
            .base
            .join(&path)
            .map_err(|e| bad(format!("`{path}`: {e}")))?;
        Ok(Request {
            method,
            url,
            body,
            headers,
            run,
        })
    }
}

/// Sends one iteration; `due` is when it should have started.
async fn iteration(shared: &Shared, due: Instant) {
    let started = Instant::now();
    let r = &shared.request;
    let mut req = shared.client.request(r.method.clone(), r.url.clone());
    if let Some(b) = &r.body {
        req = req.body(b.clone());
    }
    let mut sample = Sample {
        latency: Duration::ZERO,
        service: Duration::ZERO,
        late: started.saturating_duration_since(due) > LATE,
        status: None,
        error: None,
        steps: Vec::new(),
        usage: (0, 0, 0.0),
    };
    match req.send().await {
        Err(e) => {
            sample.error = Some(if e.is_timeout() {
                "timeout".into()
            } else if e.is_connect() {
                "connect".into()
            } else {
                e.without_url().to_string()
            });
        }
        Ok(resp) => {
            let status = resp.status();
            sample.status = Some(status.as_u16());
            let body = resp.bytes().await;
            match body {
                Err(e) => sample.error = Some(e.without_url().to_string()),
                Ok(_) if !status.is_success() => {
                    sample.error = Some(format!("http {}", status.as_u16()));
                }
                Ok(b) if r.run => judge_run(&mut sample, status.as_u16(), &b),
                Ok(_) => {}
            }
        }
    }
    let ended = Instant::now();
    // From when it was due, or from when it was sent if that was earlier (a tick early).
    sample.latency = ended.duration_since(due.min(started));
    sample.service = ended.duration_since(started);
    let _ = shared.tx.send(Ended { sample, due });
}

/// A workflow run's answer: 200 with the finished run (its steps timed, its usage read),
/// or 202 when it had not finished within the wait.
fn judge_run(sample: &mut Sample, status: u16, body: &[u8]) {
    if status == 202 {
        sample.error = Some("run unfinished within the timeout".into());
        return;
    }
    let Ok(run) = serde_json::from_slice::<Value>(body) else {
        sample.error = Some("answer is not a run".into());
        return;
    };
    match run["status"].as_str() {
        Some("succeeded") => {}
        Some(other) => sample.error = Some(format!("run {other}")),
        None => sample.error = Some("answer is not a run".into()),
    }
    for s in run["steps"].as_array().into_iter().flatten() {
        let at = |field: &str| humantime::parse_rfc3339(s[field].as_str()?).ok();
        if let (Some(id), Some(a), Some(b)) =
            (s["id"].as_str(), at("started_at"), at("finished_at"))
        {
            let took = b.duration_since(a).unwrap_or_default();
            sample.steps.push((id.to_owned(), took));
        }
    }
    let u = &run["usage"];
    sample.usage = (
        u["prompt_tokens"].as_u64().unwrap_or(0),
        u["completion_tokens"].as_u64().unwrap_or(0),
        u["cost_usd"].as_f64().unwrap_or(0.0),
    );
}

/// CPU seconds this process has used (user and system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15: 11 and 12 here; /proc counts in 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// Offers the load of `plan`, judges it by `gates`, and reports. `progress` draws a live
/// line on stderr (when it is a terminal).
pub async fn run(plan: &Plan, gates: &Gates, progress: bool) -> Result<Report, LoadError> {
    let concurrency = match plan.model {
        Model::Closed { concurrency } => concurrency,
        Model::Open { max_in_flight, .. } => max_in_flight,
    } as usize;
    let request = Request::new(plan)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency)
        .default_headers(request.headers.clone())
        .timeout(plan.timeout + Duration::from_secs(5))
        .build()
        .map_err(|e| LoadError::Client(e.to_string()))?;
    // One probe before any load: an unreachable target is an error, not a report.
    if let Err(e) = client
        .get(plan.base.clone())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        && (e.is_connect() || e.is_timeout())
    {
        return Err(LoadError::Unreachable(
            plan.base.to_string(),
            e.without_url().to_string(),
        ));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        client,
        request,
        tx,
        stop: stop.clone(),
        started: AtomicU64::new(0),
        max_requests: plan.max_requests,
    });
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let cpu_before = cpu_seconds();
    let dropped = Arc::new(AtomicU64::new(0));
    let behind = Arc::new(AtomicU64::new(0));
    let load = {
        let shared = shared.clone();
        let (dropped, behind) = (dropped.clone(), behind.clone());
        let model = plan.model;
        tokio::spawn(async move {
            match model {
                Model::Closed { concurrency } => closed(shared, concurrency, end).await,
                Model::Open {
                    rate,
                    ramp,
                    max_in_flight,
                } => {
                    open(
                        shared,
                        rate,
                        ramp,
                        max_in_flight,
                        start,
                        end,
                        dropped,
                        behind,
                    )
                    .await
                }
            }
        })
    };
    let mut stats = Stats::new(
        gates.window.unwrap_or(Duration::from_secs(30)),
        if gates.window.is_some() {
            gates.objectives.clone()
        } else {
            Vec::new()
        },
    );
    let bar = progress_bar(progress);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The load task holds one sender through `shared`; the collector ends when every
    // iteration reported and the load task is done.
    drop(shared);
    loop {
        tokio::select! {
            ended = rx.recv() => {
                let Some(Ended { sample, due }) = ended else { break };
                // Iterations due before measuring began are the warm-up.
                if due >= measure_from {
                    let at = Instant::now().saturating_duration_since(measure_from);
                    stats.record(sample, at.min(plan.duration.saturating_sub(Duration::from_micros(1))));
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now > measure_from {
                    stats.roll_to(now.duration_since(measure_from).as_secs().min(plan.duration.as_secs()));
                }
                if let Some(bar) = &bar {
                    let l = stats.latency();
                    bar.set_message(format!(
                        "{:>5.1}s  {} requests  {} errors  p50 {:.1}ms  p95 {:.1}ms  p99 {:.1}ms",
                        now.duration_since(start).as_secs_f64(), stats.requests, stats.errors, l.p50, l.p95, l.p99
                    ));
                }
                if gates.abort_on_fail && !stats.breaches.is_empty() {
                    // No new iterations; those in flight end and are counted.
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    let _ = load.await;
    stats.roll_to(plan.duration.as_secs());
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let measured = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-3);
    let cpu_s = cpu_seconds() - cpu_before;
    Ok(report(
        plan,
        gates,
        &stats,
        measured,
        cpu_s,
        dropped.load(Ordering::Relaxed),
        behind.load(Ordering::Relaxed),
    ))
}

fn progress_bar(show: bool) -> Option<indicatif::ProgressBar> {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Whether another iteration may start (the run is not stopped and under its cap).
fn may_start(shared: &Shared) -> bool {
    !shared.stop.load(Ordering::Relaxed)
        && shared.started.fetch_add(1, Ordering::Relaxed) < shared.max_requests
}

async fn closed(shared: Arc<Shared>, concurrency: u32, end: Instant) {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let shared = shared.clone();
        workers.spawn(async move {
            while Instant::now() < end && may_start(&shared) {
                iteration(&shared, Instant::now()).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// The runtime's timer ticks every millisecond: an arrival is sent on the tick before it is
/// due (at most this early) rather than the tick after (up to this late), and its latency
/// then counts from when it was sent.
const TICK: Duration = Duration::from_millis(1);

/// The open loop: arrivals on schedule, each waiting for one of `max_in_flight` slots.
#[allow(clippy::too_many_arguments)]
async fn open(
    shared: Arc<Shared>,
    rate: f64,
    ramp: Duration,
    max_in_flight: u32,
    start: Instant,
    end: Instant,
    dropped: Arc<AtomicU64>,
    behind: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1) as usize));
    // Arrivals waiting for a slot past this many are dropped (counted), so a stalled
    // target cannot grow the generator without bound.
    let max_backlog = u64::from(max_in_flight.max(1)) * 10;
    let waiting = Arc::new(AtomicU64::new(0));
    let mut inflight = tokio::task::JoinSet::new();
    let mut i = 0u64;
    loop {
        let due = start + arrival(i, rate, ramp);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now + TICK {
            tokio::time::sleep_until(due - TICK).await;
        } else if now.saturating_duration_since(due) > LATE {
            behind.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
        if !may_start(&shared) {
            break;
        }
        if waiting.load(Ordering::Relaxed) >= max_backlog {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (shared, slots, waiting) = (shared.clone(), slots.clone(), waiting.clone());
        waiting.fetch_add(1, Ordering::Relaxed);
        inflight.spawn(async move {
            let permit = slots.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::Relaxed);
            let _permit = permit;
            iteration(&shared, due).await;
        });
        // Reap finished iterations now and then, so the set stays small.
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
}

fn report(
    plan: &Plan,
    gates: &Gates,
    stats: &Stats,
    seconds: f64,
    cpu_s: f64,
    dropped: u64,
    behind: u64,
) -> Report {
    let slo: Vec<Verdict> = gates
        .objectives
        .iter()
        .map(|o| {
            let (passed, value) = stats.check(o, seconds);
            Verdict {
                objective: o.text.clone(),
                value: o.show(value),
                passed,
                window_breach: stats
                    .breaches
                    .iter()
                    .find(|b| b.objective == o.text)
                    .cloned(),
            }
        })
        .collect();
    let passed = slo.iter().all(|v| v.passed && v.window_breach.is_none());
    let requests = stats.requests;
    let offered = requests + dropped;
    let behind_share = if offered == 0 {
        0.0
    } else {
        behind as f64 / offered as f64
    };
    let (model, concurrency, rate, max_in_flight) = match plan.model {
        Model::Closed { concurrency } => ("closed", Some(concurrency), None, None),
        Model::Open {
            rate,
            max_in_flight,
            ..
        } => ("open", None, Some(rate), Some(max_in_flight)),
    };
    Report {
        schema: SCHEMA,
        target: match &plan.target {
            Target::Workflow { name, .. } => format!("workflow {name}"),
            Target::Execute { agent: Some(a), .. } => format!("execute agent {a}"),
            Target::Execute { capability, .. } => {
                format!("execute capability {}", capability.as_deref().unwrap_or(""))
            }
            Target::Http { method, path, .. } => format!("{method} {path}"),
        },
        url: plan.base.to_string(),
        model: model.into(),
        concurrency,
        rate,
        max_in_flight,
        duration_s: seconds,
        warmup_s: plan.warmup.as_secs_f64(),
        totals: Totals {
            requests,
            ok: requests - stats.errors,
            errors: stats.errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                stats.errors as f64 / requests as f64
            },
            rps: requests as f64 / seconds,
            dropped,
            late_starts: stats.late_starts,
        },
        status_codes: stats.status_codes.clone(),
        errors: stats.error_kinds.clone(),
        latency_ms: stats.latency(),
        service_ms: stats.service(),
        series: stats.series.clone(),
        steps: stats
            .steps()
            .into_iter()
            .map(|(k, (count, p))| {
                (
                    k,
                    StepTimes {
                        count,
                        p50_ms: p.p50,
                        p99_ms: p.p99,
                    },
                )
            })
            .collect(),
        usage: Usage {
            prompt_tokens: stats.usage.0,
            completion_tokens: stats.usage.1,
            cost_usd: stats.usage.2,
        },
        generator: Generator {
            cpu_s,
            cpu_us_per_request: if requests == 0 {
                0.0
            } else {
                cpu_s * 1e6 / requests as f64
            },
            behind_share,
            fell_behind: behind_share > 0.01,
        },
        slo,
        comparison: None,
        passed,
    }
}
