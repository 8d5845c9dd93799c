//! `flotilla loadtest`: load that knows a workflow run from an HTTP request.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use flotilla_loadtest::{Gates, Model, Plan, Profile, Report, Target};
use flotilla_spec::slo::Objective;
use serde_json::Value;

/// Exit status of a run whose gates failed.
const GATE_FAILED: u8 = 3;
/// Exit status of a command line that cannot run.
const USAGE: u8 = 2;

/// Offer load to a flotilla server and judge it.
///
/// Each iteration is a workflow run waited for to its end (`--workflow`), a task
/// (`--execute`, `--capability`) or any route (`--http GET /health`). Closed loop
/// (`--concurrency N`) keeps N in flight; open loop (`--rate 200/s`) offers arrivals on a
/// schedule whatever the latency, and measures latency from each arrival's intended start,
/// so a stalled server shows up as latency instead of slowing the generator (no
/// coordinated omission): use it for SLO gates. Profiles (`--profile`) give the seed's
/// stages; flags override them. Exit status: 0 passed, 3 an objective or the comparison
/// failed, 2 usage error, 1 the target could not be loaded.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: flotilla_loadtest::Url,
    /// Run this workflow (`?wait` for each run, so latency is the whole run).
    #[arg(long, group = "what")]
    workflow: Option<String>,
    /// Execute a task on this agent.
    #[arg(long, group = "what")]
    execute: Option<String>,
    /// Execute a task on any agent offering this capability.
    #[arg(long, group = "what")]
    capability: Option<String>,
    /// Send METHOD PATH (e.g. `--http GET /health`).
    #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"], group = "what")]
    http: Option<Vec<String>>,
    /// Run or task input: JSON, or @file.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Body of `--http` requests: text, or @file.
    #[arg(long)]
    body: Option<String>,
    /// smoke (2 in flight, 30 s), baseline (10, 10 min), stress (50, 30 min),
    /// endurance (25, 4 h).
    #[arg(long, value_enum, default_value = "smoke")]
    profile: ProfileArg,
    /// Closed loop: iterations in flight.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<u32>,
    /// Open loop: arrivals per second (`200`, `200/s`, `6000/m`).
    #[arg(long)]
    rate: Option<String>,
    /// Open loop: reach the rate linearly over this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    ramp: Duration,
    /// Open loop: most iterations in flight; later arrivals wait (counted as late starts).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: u32,
    /// How long to offer load (default: the profile's).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Load offered first and not measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Most iterations started in all.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// A request's timeout (and a workflow run's wait).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    timeout: Duration,
    /// Sent as `X-API-Key`.
    #[arg(long, env = "FLOTILLA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// Objectives, e.g. `p95<200ms,p99<1s,errors<1%,rps>100`.
    #[arg(long)]
    slo: Option<String>,
    /// Also check the objectives over every sliding window this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    slo_window: Option<Duration>,
    /// Stop at the first window that breaches an objective.
    #[arg(long, requires = "slo_window")]
    abort_on_fail: bool,
    /// An earlier JSON report to compare with.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Largest latency rise or throughput drop against --compare that passes.
    #[arg(long, default_value = "10%")]
    max_regression: String,
    /// text (default) or json on stdout.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Also write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Smoke,
    Baseline,
    Stress,
    Endurance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(USAGE)
}

/// Text, or the contents of @file.
fn text_or_file(arg: &str) -> Result<String, String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}")),
        None => Ok(arg.to_owned()),
    }
}

fn plan(args: &LoadtestArgs) -> Result<(Plan, Gates, f64), String> {
    let input: Value = serde_json::from_str(&text_or_file(&args.input)?)
        .map_err(|e| format!("--input is not JSON: {e}"))?;
    let target = match (&args.workflow, &args.execute, &args.capability, &args.http) {
        (Some(name), ..) => Target::Workflow {
            name: name.clone(),
            input,
        },
        (_, Some(agent), ..) => Target::Execute {
            agent: Some(agent.clone()),
            capability: None,
            input,
        },
        (_, _, Some(cap), _) => Target::Execute {
            agent: None,
            capability: Some(cap.clone()),
            input,
        },
        (_, _, _, Some(mp)) => Target::Http {
            method: mp[0]
                .to_uppercase()
                .parse()
                .map_err(|_| format!("`{}` is not an HTTP method", mp[0]))?,
            path: mp[1].clone(),
            body: args.body.as_deref().map(text_or_file).transpose()?,
        },
        _ => return Err("say what to load: --workflow, --execute, --capability or --http".into()),
    };
    let profile = match args.profile {
        ProfileArg::Smoke => Profile::Smoke,
        ProfileArg::Baseline => Profile::Baseline,
        ProfileArg::Stress => Profile::Stress,
        ProfileArg::Endurance => Profile::Endurance,
    };
    let (concurrency, duration) = profile.shape();
    let model = match &args.rate {
        Some(rate) => Model::Open {
            rate: flotilla_loadtest::plan::parse_rate(rate)?,
            ramp: args.ramp,
            max_in_flight: args.max_in_flight.max(1),
        },
        None => Model::Closed {
            concurrency: args.concurrency.unwrap_or(concurrency).max(1),
        },
    };
    let mut headers = Vec::new();
    if let Some(key) = &args.api_key {
        headers.push(("x-api-key".to_owned(), key.clone()));
    }
    for h in &args.header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header `{h}`: expected `Name: value`"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let objectives = args
        .slo
        .as_deref()
        .map(Objective::parse_list)
        .transpose()?
        .unwrap_or_default();
    let max_regression = args
        .max_regression
        .trim_end_matches('%')
        .parse::<f64>()
        .ok()
        .filter(|p| *p >= 0.0)
        .ok_or_else(|| {
            format!(
                "--max-regression `{}` is not a percentage such as 10%",
                args.max_regression
            )
        })?;
    let plan = Plan {
        base: args.target.clone(),
        target,
        model,
        duration: args.duration.unwrap_or(duration),
        warmup: args.warmup,
        max_requests: args.max_requests,
        timeout: args.timeout,
        headers,
    };
    let gates = Gates {
        objectives,
        window: args.slo_window,
        abort_on_fail: args.abort_on_fail,
    };
    Ok((plan, gates, max_regression))
}

/// Runs `flotilla loadtest`.
pub async fn loadtest(args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    let (plan, gates, max_regression) = match plan(&args) {
        Ok(p) => p,
        Err(e) => return Ok(usage(e)),
    };
    let baseline: Option<Report> = match &args.compare {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            match serde_json::from_str(&text) {
                Ok(r) => Some(r),
                Err(e) => {
                    return Ok(usage(format!(
                        "{} is not a loadtest report: {e}",
                        path.display()
                    )));
                }
            }
        }
    };
    let mut report = flotilla_loadtest::run(&plan, &gates, args.output == Output::Text).await?;
    if let Some(before) = &baseline {
        report.compare(before, max_regression);
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    match args.output {
        Output::Json => println!("{json}"),
        Output::Text => print!("{}", report.text()),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(GATE_FAILED)
    })
}
