//! `flotilla run <workflow> --input '{…}'`: one run, in this process.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_engine::metrics::Metrics;
use flotilla_engine::{Engine, Submission};
use flotilla_store::RunStatus;

use crate::settings::{self, ConfigArgs};

/// Options of `flotilla run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workflow name.
    workflow: String,
    /// Input JSON (`@file.json` reads a file, `-` reads stdin).
    #[arg(long, short = 'i', default_value = "{}")]
    input: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// Give up waiting after this long (the run stays stored and resumes at the next start).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// Runs the workflow and prints its output.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    crate::logging::init_for_command()?;
    let input = match crate::client::read_input(&args.input) {
        Ok(v) => v,
        Err(f) => return Ok(f.report()),
    };
    let config = Arc::new(loaded.config);
    let store = crate::serve::open_store(&config).await.map_err(|e| {
        // SQLite is one process's: a running server holds it.
        if crate::serve::held_by_another(&e) {
            e.context("a server is using this database: stop it, or run the workflow on it with `flotilla runs start WORKFLOW --wait 5m`, or point this run at another store with FLOTILLA_STORAGE__URL")
        } else {
            e
        }
    })?;
    store.migrate().await.context("applying migrations")?;
    let engine = Engine::start(config, store, Arc::new(Metrics::new()))
        .await
        .context("starting the engine")?;
    let mut events = engine.subscribe();
    let submitted = match engine
        .submit(
            &args.workflow,
            Submission {
                input,
                ..Default::default()
            },
        )
        .await
    {
        Ok(s) => s,
        Err(flotilla_engine::EngineError::InvalidInput(problems)) => {
            for p in problems {
                eprintln!("input{p}");
            }
            eprintln!(
                "error: the input does not match workflow `{}`'s input_schema",
                args.workflow
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let run_id = submitted.run_id.clone();
    eprintln!("run {run_id} of {} started", args.workflow);
    let progress = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if e.run_id != run_id {
                continue;
            }
            let step = e.step_id.as_deref().unwrap_or("");
            eprintln!("  {:<22} {step}", e.kind);
            if e.kind == flotilla_store::EventKind::RunFinished {
                break;
            }
        }
    });
    let view = engine.wait(&submitted.run_id, args.wait).await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), progress).await;
    engine.shutdown(Duration::ZERO).await;
    engine.store().commit(Vec::new()).await.ok();
    match view.status {
        RunStatus::Succeeded => {
            println!(
                "{}",
                serde_json::to_string_pretty(&view.output).context("printing the output")?
            );
            Ok(ExitCode::SUCCESS)
        }
        status => {
            eprintln!(
                "run {} {status}: {}",
                view.id,
                view.error.unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
