//! `flotilla runs`: operations on stored runs.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use flotilla_spec::Definition;
use flotilla_store::MoveRuns;

use crate::serve::open_store;
use crate::settings::{self, ConfigArgs};

/// Operations on stored runs.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Move unfinished runs from the definition they pinned to the workflow's current one
    /// (its steps and agent behaviour in this configuration). Runs never change definition
    /// on their own: this is for the rare case an operator wants it. Prints what changes
    /// (steps added, removed or changed; agents whose behaviour differs) and the runs; with
    /// --dry-run, changes nothing.
    ///
    /// On PostgreSQL it is safe while replicas serve: each moved run's lease is fenced off
    /// and released, so whoever drives it stops and a replica resumes it under the new
    /// definition. SQLite is one process's: stop the server first.
    Migrate(MigrateArgs),
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
    match command {
        RunsCommand::Migrate(args) => migrate(args).await,
    }
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
