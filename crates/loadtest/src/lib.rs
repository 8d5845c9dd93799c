//! flotilla-loadtest: load that knows a workflow run from an HTTP request.
//!
//! A [`Plan`] says what each iteration sends ([`Target`]: a workflow run waited for to its
//! end, a task, or any route) and how load is offered ([`Model`]: closed loop at a
//! concurrency, or open loop at an arrival rate). [`run`] offers it for a duration and
//! returns a [`Report`]: HDR latency percentiles measured from each iteration's *intended*
//! start (so a stalled server cannot hide behind a slowed generator: no coordinated
//! omission), service time from the actual start, counts, a per-second series, per-step
//! timings read back from the runs, and SLO verdicts over the run and over sliding windows.

mod generator;
pub mod plan;
pub mod report;
pub mod stats;

pub use generator::{Gates, run};
pub use plan::{Model, Plan, Profile, Target};
pub use report::Report;
pub use reqwest::Url;

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
    /// The target is unreachable before any load is offered.
    #[error("the target {0} does not answer: {1}")]
    Unreachable(String, String),
}
