//! `flotilla runs prune`: a one-off clean-up of finished runs, by age, status and workflow.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_engine::metrics::Metrics;
use flotilla_store::{PruneRule, RunStatus, WorkflowMatch};

use crate::settings::{self, ConfigArgs};

/// `flotilla runs prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Delete runs that finished longer ago than this (`30d`, `12h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Only runs that ended so: succeeded, failed, cancelled or timed_out (default: all four).
    #[arg(long, value_parser = final_status)]
    status: Option<RunStatus>,
    /// Only runs of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Count what would be deleted, and delete nothing.
    #[arg(long)]
    dry_run: bool,
}

fn final_status(s: &str) -> Result<RunStatus, String> {
    match RunStatus::parse(s) {
        Some(status) if status.is_terminal() => Ok(status),
        _ => Err(format!(
            "`{s}` is not a final status: succeeded, failed, cancelled or timed_out (runs in flight are never pruned)"
        )),
    }
}

/// Runs `flotilla runs prune`.
pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let config = loaded.config;
    let store = crate::serve::open_store(&config).await.map_err(|e| {
        if crate::serve::held_by_another(&e) {
            e.context(
                "a server is using this SQLite database: stop it first, or let it prune on its \
                 own with storage.retention in its configuration",
            )
        } else {
            e
        }
    })?;
    store.migrate().await.context("applying migrations")?;
    let before = flotilla_engine::now_ms().saturating_sub(args.older_than.as_millis() as i64);
    let workflows = match args.workflow {
        Some(w) => WorkflowMatch::Only(w),
        None => WorkflowMatch::All,
    };
    let rules: Vec<PruneRule> = RunStatus::ALL
        .iter()
        .filter(|s| s.is_terminal() && args.status.is_none_or(|only| only == **s))
        .map(|&status| PruneRule {
            status,
            finished_before: before,
            workflows: workflows.clone(),
        })
        .collect();
    let older = humantime::format_duration(args.older_than);
    if args.dry_run {
        for rule in &rules {
            let n = store.count_prunable(rule).await?;
            println!("{n} {} run(s) finished over {older} ago", rule.status);
        }
        println!("dry run: nothing deleted");
        return Ok(ExitCode::SUCCESS);
    }
    let batch = config.storage.retention.batch;
    let pruned =
        flotilla_engine::retention::prune(&*store, &rules, batch, &Metrics::new(), false).await?;
    println!("deleted {pruned} run(s) that finished over {older} ago, with their steps and events");
    Ok(ExitCode::SUCCESS)
}
