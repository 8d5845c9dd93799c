//! `flotilla backup` and `flotilla restore`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use flotilla_engine::backups;
use flotilla_engine::metrics::Metrics;
use flotilla_spec::redact::redact_url;
use flotilla_spec::schedule::Schedule;
use flotilla_store::backup::files;
use serde_json::{Value, json};

use crate::client::{Output, print};
use crate::settings::{self, ConfigArgs};

/// Options of `flotilla backup`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// Where to write the backup (SQLite: a database file; PostgreSQL: a pg_dump archive).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Replace the file at --output if there is one.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Scheduled backups: list them, check one, take one.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// List the backups in backup.dir, oldest first, with their time and size.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// table, json or yaml.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Check a backup: restore it into a temporary store and read it back.
    ///
    /// A SQLite backup is copied and must pass SQLite's integrity check; a pg_dump archive is
    /// restored into a temporary database on the server of storage.url (dropped after).
    /// Prints the runs, steps and events it holds. Exit status: 0 sound, 1 not.
    Verify {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Take one backup now into backup.dir, named by time, record it, and delete those past
    /// backup.retention (what the generated Kubernetes CronJob runs).
    ///
    /// With --loop, take one at each firing of backup.schedule instead, until stopped (the
    /// generated compose service). On SQLite, `flotilla serve` does this itself.
    Scheduled {
        #[command(flatten)]
        config: ConfigArgs,
        /// Keep going: one backup at each firing of backup.schedule.
        #[arg(long = "loop")]
        repeat: bool,
    },
}

/// Options of `flotilla restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to restore.
    file: PathBuf,
    /// Replace a store that already holds runs.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Backs up the configured store; safe while a server is running.
pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(BackupCommand::List { config, output }) => return list(&config, output),
        Some(BackupCommand::Verify { file, config }) => return verify(&file, &config).await,
        Some(BackupCommand::Scheduled { config, repeat }) => {
            return scheduled(&config, repeat).await;
        }
        None => {}
    }
    let Some(output) = args.output else {
        eprintln!(
            "error: say where: flotilla backup --output FILE (or backup list | verify | scheduled)"
        );
        return Ok(ExitCode::from(2));
    };
    let loaded = match settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let url = &loaded.config.storage.url;
    let args = Resolved {
        output,
        force: args.force,
    };
    if args.output.exists() {
        if !args.force {
            eprintln!(
                "error: {} exists; pass --force to replace it",
                args.output.display()
            );
            return Ok(ExitCode::from(2));
        }
        std::fs::remove_file(&args.output)
            .with_context(|| format!("removing {}", args.output.display()))?;
    }
    flotilla_store::backup::backup(url, &args.output)
        .await
        .with_context(|| {
            format!(
                "backing up {} to {}",
                redact_url(url),
                args.output.display()
            )
        })?;
    println!("backed up {} to {}", redact_url(url), args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// `flotilla backup --output FILE` once its arguments are checked.
struct Resolved {
    output: PathBuf,
    force: bool,
}

fn list(config: &ConfigArgs, output: Output) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let dir = &loaded.config.backup.dir;
    let found = files::list(dir).with_context(|| format!("reading {}", dir.display()))?;
    let now = flotilla_engine::now_ms();
    let rows: Vec<Value> = found
        .iter()
        .map(|b| {
            let age = Duration::from_secs(u64::try_from((now - b.taken_at) / 1000).unwrap_or(0));
            json!({
                "file": b.path.display().to_string(),
                "taken_at": flotilla_store::timestamp::rfc3339(b.taken_at),
                "bytes": b.bytes,
                "age": humantime::format_duration(age).to_string(),
            })
        })
        .collect();
    let data = json!({"dir": dir.display().to_string(), "backups": rows});
    print(
        output,
        &data,
        &rows,
        &[
            ("FILE", "/file"),
            ("TAKEN", "/taken_at"),
            ("BYTES", "/bytes"),
            ("AGE", "/age"),
        ],
    );
    Ok(ExitCode::SUCCESS)
}

async fn verify(file: &std::path::Path, config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    if !file.is_file() {
        eprintln!("error: {} is not a file", file.display());
        return Ok(ExitCode::from(2));
    }
    let url = &loaded.config.storage.url;
    let pg = flotilla_spec::storage::Backend::of(url)
        .is_ok_and(|b| b.is_shared())
        .then_some(url.as_str());
    match flotilla_store::backup::verify(file, pg).await {
        Ok(v) => {
            println!(
                "{}: sound ({} backup holding {} run(s), {} step(s), {} event(s))",
                file.display(),
                v.kind,
                v.runs,
                v.steps,
                v.events
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}

async fn scheduled(config: &ConfigArgs, repeat: bool) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let config = loaded.config;
    let store = crate::serve::open_store(&config).await?;
    store.migrate().await.context("applying migrations")?;
    let url = &config.storage.url;
    if !repeat {
        return match backups::take(&*store, url, &config.backup).await {
            Ok(t) => {
                println!(
                    "backed up {} to {} ({} bytes, {} ms); {} old backup(s) deleted",
                    redact_url(url),
                    t.file.display(),
                    t.bytes,
                    t.took.as_millis(),
                    t.pruned.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    let Some(text) = config.backup.schedule.as_deref() else {
        eprintln!("error: --loop needs backup.schedule in the configuration");
        return Ok(ExitCode::from(2));
    };
    let schedule = Schedule::parse(text).map_err(|e| anyhow::anyhow!("backup.schedule: {e}"))?;
    let _telemetry = crate::logging::init(&config)?;
    let metrics = Metrics::new();
    tracing::info!(schedule = text, dir = %config.backup.dir.display(), "taking backups on schedule");
    while backups::next_firing(&schedule).await.is_some() {
        backups::scheduled_once(&*store, url, &config.backup, &metrics).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Restores a backup into the configured store.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let url = &loaded.config.storage.url;
    flotilla_store::backup::restore(url, &args.file, args.force)
        .await
        .with_context(|| format!("restoring {} into {}", args.file.display(), redact_url(url)))?;
    println!("restored {} into {}", args.file.display(), redact_url(url));
    Ok(ExitCode::SUCCESS)
}
