//! `flotilla monitoring generate`: the monitoring bundle into a directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use flotilla_deploy::monitoring::Bundle;

/// `flotilla monitoring …`
#[derive(Debug, Subcommand)]
pub enum MonitoringCommand {
    /// Write prometheus.yml, alerts.yml (with runbook links), a Grafana dashboard and the
    /// runbooks into a directory. Check them with `promtool check config prometheus.yml`
    /// and `promtool check rules alerts.yml`.
    Generate(GenerateArgs),
}

/// Options of `flotilla monitoring generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write into (created if missing).
    #[arg(long, short)]
    output: PathBuf,
    /// A flotilla instance to scrape, `host:port`; repeat for several.
    #[arg(long = "scrape", default_value = "localhost:8080")]
    targets: Vec<String>,
    /// Prometheus scrape and rule evaluation interval.
    #[arg(long, default_value = "15s")]
    scrape_interval: String,
    /// Base URL of the runbooks; each alert links to `<base>/<Alert>.md`.
    #[arg(long)]
    runbook_base: Option<String>,
    /// LLMSpendRateHigh fires above this spend, in USD per hour.
    #[arg(long, default_value_t = 10.0)]
    llm_usd_per_hour: f64,
    /// Overwrite files in a non-empty output directory.
    #[arg(long)]
    force: bool,
    /// The configuration whose backup.schedule sets when BackupStale fires (the alert is
    /// left out without scheduled backups).
    #[command(flatten)]
    config: crate::settings::ConfigArgs,
}

/// Runs a `monitoring` subcommand.
pub fn run(command: MonitoringCommand) -> anyhow::Result<ExitCode> {
    let MonitoringCommand::Generate(args) = command;
    if humantime::parse_duration(&args.scrape_interval).is_err() {
        anyhow::bail!(
            "--scrape-interval `{}` is not a duration (try 15s)",
            args.scrape_interval
        );
    }
    if !(args.llm_usd_per_hour.is_finite() && args.llm_usd_per_hour >= 0.0) {
        anyhow::bail!("--llm-usd-per-hour must be a non-negative number");
    }
    let loaded = match crate::settings::load(&args.config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(crate::settings::report(&e)),
    };
    let defaults = Bundle::default();
    let bundle = Bundle {
        backup_stale_after: Bundle::stale_after(&loaded.config),
        targets: args.targets,
        scrape_interval: args.scrape_interval,
        runbook_base: args.runbook_base.unwrap_or(defaults.runbook_base),
        llm_usd_per_hour: args.llm_usd_per_hour,
    };
    let files = bundle.files();
    flotilla_deploy::write_files(&args.output, &files, args.force)?;
    for f in &files {
        println!("{}", args.output.join(&f.path).display());
    }
    Ok(ExitCode::SUCCESS)
}
