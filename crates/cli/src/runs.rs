//! `flotilla runs`: runs on a live server (list, get, watch, cancel, start), and moving
//! stored runs to the current definition.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, FAILED, Failure, Output, ServerArgs, UNAVAILABLE, print, read_input};
use flotilla_spec::Definition;
use flotilla_store::MoveRuns;

use crate::serve::open_store;
use crate::settings::{self, ConfigArgs};

/// Runs: on a live server (`--server`, `FLOTILLA_SERVER`), or in the store.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List(ListArgs),
    /// Show one run with its steps.
    Get(IdArgs),
    /// Follow a run's events until it ends.
    ///
    /// Exit status: 0 succeeded, 1 failed, cancelled or timed out, 4 the stream broke off.
    Watch(IdArgs),
    /// Cancel a run (steps in flight stop; nothing is compensated).
    Cancel(IdArgs),
    /// Start a run of a workflow.
    ///
    /// With --wait, waits for it to end; exit status: 0 succeeded, 1 failed, cancelled or
    /// timed out, 4 still going when the wait ended.
    Start(StartArgs),
    /// Move unfinished runs from the definition they pinned to the current one.
    ///
    /// The current one: the workflow's steps and agent behaviour in this configuration. Runs
    /// never change definition
    /// on their own: this is for the rare case an operator wants it. Prints what changes
    /// (steps added, removed or changed; agents whose behaviour differs) and the runs; with
    /// --dry-run, changes nothing.
    ///
    /// On PostgreSQL it is safe while replicas serve: each moved run's lease is fenced off
    /// and released, so whoever drives it stops and a replica resumes it under the new
    /// definition. SQLite is one process's: stop the server first.
    Migrate(MigrateArgs),
    /// Delete finished runs older than --older-than, with their steps and events.
    ///
    /// Works on the store itself (SQLite: with the server stopped; PostgreSQL: any time).
    /// A server prunes on its own with storage.retention; this is for one-off clean-ups.
    Prune(crate::prune::PruneArgs),
}

/// `flotilla runs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only runs of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only runs in this status: queued, running, succeeded, failed, cancelled, timed_out.
    #[arg(long)]
    status: Option<String>,
    /// Only runs created within this long: `15m`, `24h`, `7d`.
    #[arg(long)]
    since: Option<String>,
    /// At most this many (1 to 500).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// table, json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// A command on one run.
#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The run's id.
    id: String,
    /// table, json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `flotilla runs start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The workflow.
    workflow: String,
    /// The run's input: JSON, `@file`, or `-` for stdin.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Wait up to this long for the run to end (`30s`, `5m`).
    #[arg(long)]
    wait: Option<String>,
    /// table, json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// `flotilla runs migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The definition hash the runs pinned (`definition_hash` in `GET /api/v1/runs`).
    #[arg(long)]
    from_hash: String,
    /// Move them to the workflow's definition in this configuration (the only target
    /// there is; say it to confirm).
    #[arg(long, required = true)]
    to_current: bool,
    /// Show what would change, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `flotilla runs …`.
pub async fn run(command: RunsCommand) -> anyhow::Result<ExitCode> {
    let result = match command {
        RunsCommand::Migrate(args) => return migrate(args).await,
        RunsCommand::Prune(args) => return crate::prune::prune(args).await,
        RunsCommand::List(args) => list(args).await,
        RunsCommand::Get(args) => on_run(args, reqwest::Method::GET, "").await,
        RunsCommand::Watch(args) => watch(args).await,
        RunsCommand::Cancel(args) => on_run(args, reqwest::Method::POST, "/cancel").await,
        RunsCommand::Start(args) => start(args).await,
    };
    Ok(result.unwrap_or_else(|f| f.report()))
}

const RUN_COLUMNS: [(&str, &str); 5] = [
    ("ID", "/id"),
    ("WORKFLOW", "/workflow"),
    ("STATUS", "/status"),
    ("CREATED", "/created_at"),
    ("ERROR", "/error"),
];

/// 0 when the run succeeded, 1 when it ended otherwise, 4 while it is still going.
fn status_code(run: &Value) -> ExitCode {
    match run["status"].as_str() {
        Some("succeeded") => ExitCode::SUCCESS,
        Some("queued" | "running") => ExitCode::from(UNAVAILABLE),
        _ => ExitCode::from(FAILED),
    }
}

fn show_run(output: Output, run: &Value) {
    print(output, run, std::slice::from_ref(run), &RUN_COLUMNS);
    if output == Output::Table {
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        if !steps.is_empty() {
            println!();
            print(
                output,
                run,
                &steps,
                &[
                    ("STEP", "/id"),
                    ("STATUS", "/status"),
                    ("ATTEMPTS", "/attempts"),
                    ("AGENT", "/agent"),
                    ("ERROR", "/error"),
                ],
            );
        }
    }
}

async fn list(args: ListArgs) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.server, Some(Duration::from_secs(30)))?;
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("limit", &args.limit.to_string());
    for (k, v) in [
        ("workflow", &args.workflow),
        ("status", &args.status),
        ("since", &args.since),
    ] {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let (_, page) = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/runs?{}", q.finish()),
            None,
        )
        .await?;
    let rows = page["runs"].as_array().cloned().unwrap_or_default();
    print(args.output, &page, &rows, &RUN_COLUMNS);
    Ok(ExitCode::SUCCESS)
}

/// `runs get` (GET the run) and `runs cancel` (POST `/cancel`): both print the run.
async fn on_run(args: IdArgs, method: reqwest::Method, suffix: &str) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.server, Some(Duration::from_secs(30)))?;
    let path = format!("/api/v1/runs/{}{suffix}", args.id);
    let (_, run) = client.call(method, &path, None).await?;
    show_run(args.output, &run);
    Ok(ExitCode::SUCCESS)
}

async fn start(args: StartArgs) -> Result<ExitCode, Failure> {
    let input = read_input(&args.input)?;
    let wait = match &args.wait {
        Some(w) => Some(humantime::parse_duration(w).map_err(|e| Failure {
            message: format!("--wait `{w}`: {e}"),
            code: 2,
        })?),
        None => None,
    };
    // The server answers within its own request timeout; allow for it.
    let client = Client::new(
        &args.server,
        Some(wait.unwrap_or_default() + Duration::from_secs(60)),
    )?;
    let path = match &args.wait {
        Some(w) => format!("/api/v1/workflows/{}/runs?wait={w}", args.workflow),
        None => format!("/api/v1/workflows/{}/runs", args.workflow),
    };
    let (_, answer) = client
        .call(reqwest::Method::POST, &path, Some(&json!({"input": input})))
        .await?;
    if wait.is_none() {
        print(
            args.output,
            &answer,
            std::slice::from_ref(&answer),
            &[("RUN", "/run_id"), ("STATUS", "/status")],
        );
        return Ok(ExitCode::SUCCESS);
    }
    show_run(args.output, &answer);
    Ok(status_code(&answer))
}

/// Prints each event as it comes (a table line, or one JSON or YAML document per event),
/// then exits with the run's outcome.
async fn watch(args: IdArgs) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.server, None)?;
    let mut resp = client
        .stream(&format!("/api/v1/runs/{}/events", args.id))
        .await?;
    let mut buffer = String::new();
    if args.output == Output::Table {
        println!("{:<24}  {:<20}  STEP", "AT", "EVENT");
    }
    loop {
        let chunk = resp.chunk().await.map_err(|e| Failure {
            message: format!("the event stream broke off: {e}"),
            code: UNAVAILABLE,
        })?;
        let Some(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            match args.output {
                Output::Json => println!("{event}"),
                Output::Yaml => print!(
                    "---\n{}",
                    serde_saphyr::to_string(&event).unwrap_or_default()
                ),
                Output::Table => {
                    println!(
                        "{:<24}  {:<20}  {}",
                        event["at"].as_str().unwrap_or(""),
                        event["kind"].as_str().unwrap_or("?"),
                        event["step_id"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    let client = Client::new(&args.server, Some(Duration::from_secs(30)))?;
    let (_, run) = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/runs/{}", args.id),
            None,
        )
        .await?;
    if args.output == Output::Table {
        eprintln!("run {} {}", args.id, run["status"].as_str().unwrap_or("?"));
    }
    Ok(status_code(&run))
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let config = loaded.config;
    let store = open_store(&config).await?;
    store.migrate().await.context("applying migrations")?;
    let runs = store.runs_on_definition(&args.from_hash).await?;
    let Some((_, workflow)) = runs.first() else {
        println!("no unfinished run pins definition {}", args.from_hash);
        return Ok(ExitCode::SUCCESS);
    };
    let Some(current) = config.workflows.get(workflow) else {
        bail!("the runs are of workflow `{workflow}`, which this configuration does not define");
    };
    let body = store
        .definition(&args.from_hash)
        .await?
        .with_context(|| format!("definition {} is not stored", args.from_hash))?;
    let from = Definition::parse(&body)
        .with_context(|| format!("stored definition {} does not parse", args.from_hash))?;
    let to = Definition::pin(current.clone(), &config.agents);
    let (to_body, to_hash) = to.snapshot();
    let diff = from.diff(&to);
    let list = |what: &str, items: &[String]| {
        if !items.is_empty() {
            println!("  {what}: {}", items.join(", "));
        }
    };
    println!(
        "workflow `{workflow}`: {} unfinished run(s) on {} → {to_hash}",
        runs.len(),
        args.from_hash
    );
    if args.from_hash == to_hash || diff.is_empty() {
        println!("  the definitions do the same");
    }
    list("steps added", &diff.steps_added);
    list(
        "steps removed (their records stay, unused)",
        &diff.steps_removed,
    );
    list("steps changed", &diff.steps_changed);
    list("agents whose behaviour changes", &diff.agents_changed);
    for (id, _) in &runs {
        println!("  run {id}");
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    if args.from_hash == to_hash {
        return Ok(ExitCode::SUCCESS);
    }
    let moved = store
        .move_runs(MoveRuns {
            from_hash: args.from_hash.clone(),
            to_hash,
            workflow: workflow.clone(),
            body: to_body,
            at: flotilla_engine::now_ms(),
        })
        .await?;
    store.commit(Vec::new()).await.ok();
    println!("moved {} run(s)", moved.len());
    Ok(ExitCode::SUCCESS)
}
