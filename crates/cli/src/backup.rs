//! `flotilla backup` and `flotilla restore`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use flotilla_spec::redact::redact_url;

use crate::settings::{self, ConfigArgs};

/// Options of `flotilla backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup (SQLite: a database file; PostgreSQL: a pg_dump archive).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Replace the file at --output if there is one.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    config: ConfigArgs,
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
    let loaded = match settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let url = &loaded.config.storage.url;
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
