//! The `flotilla` binary: clap subcommands wiring the crates together.

mod agents;
mod backup;
mod bench;
mod client;
mod deploy;
mod flags;
mod keys;
mod loadtest;
mod logging;
mod monitoring;
mod prune;
mod rollout;
mod run;
mod runs;
mod serve;
mod settings;
mod tasks;

/// mimalloc: with glibc's allocator a sixth of the request path was malloc and free;
/// mimalloc serves `POST /api/v1/execute` about 20 % faster (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use settings::ConfigArgs;

/// flotilla runs multi-agent workflows durably and serves them over HTTP.
///
/// With no config file, `flotilla serve` runs the embedded demo fleet (travel planning and
/// customer service, builtin agents) on SQLite `./flotilla.db`, port 8080.
#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about,
    long_about,
    after_help = "Exit status: 0 done; 1 what was asked about failed (a run, a task, a flag that is \
                  off) or the server refused; 2 usage or configuration error; 3 a gate failed \
                  (loadtest SLO, rollout analysis); 4 unavailable or inconclusive."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API and run workflows.
    Serve(serve::ServeArgs),
    /// Run one workflow locally: result on stdout, progress on stderr.
    Run(run::RunArgs),
    /// Check a configuration; every problem is printed as file:line:col (exit status 2).
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Inspect the effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Measure throughput and latency of the engine and store with no-op agents.
    Bench(bench::BenchArgs),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Back up the store (safe while serving): SQLite online backup, PostgreSQL pg_dump.
    Backup(backup::BackupArgs),
    /// Restore a backup into the store (refuses a store that holds runs unless --force).
    Restore(backup::RestoreArgs),
    /// Generate deployment artifacts: Docker, compose, Kubernetes, ArgoCD, CI.
    Deploy {
        #[command(subcommand)]
        command: deploy::DeployCommand,
    },
    /// List and evaluate feature flags.
    Flags {
        #[command(subcommand)]
        command: flags::FlagsCommand,
    },
    /// Generate the monitoring bundle: Prometheus config, alert rules, dashboard, runbooks.
    Monitoring {
        #[command(subcommand)]
        command: monitoring::MonitoringCommand,
    },
    /// Offer load to a server (workflow runs, tasks or any route) and judge it by SLOs.
    Loadtest(Box<loadtest::LoadtestArgs>),
    /// Runs on a live server (list, get, watch, cancel, start), and moving stored runs to
    /// the current definition.
    Runs {
        #[command(subcommand)]
        command: runs::RunsCommand,
    },
    /// The agents of a live server: health, circuit, load, latency.
    Agents {
        #[command(subcommand)]
        command: agents::AgentsCommand,
    },
    /// One task on a live server: an agent called by name or capability.
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// Canary, blue-green and rolling updates through nginx, judged by Prometheus and rolled
    /// back on their own (off Kubernetes; there, Argo Rollouts runs what `deploy` writes).
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (all layers merged), secrets redacted.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The load generator runs on one thread: no wake-ups across cores per request, and the
    // other cores stay with the server it loads (one core sustains what two-core servers
    // answer).
    let mut builder = match cli.command {
        Command::Loadtest(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let result = match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Validate { config } => settings::validate(&config),
            Command::Config {
                command: ConfigCommand::Show { config },
            } => settings::show(&config),
            Command::Migrate { config } => serve::migrate(&config).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Keys { command } => keys::run(command),
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Monitoring { command } => monitoring::run(command),
            Command::Flags { command } => flags::run(command),
            Command::Deploy { command } => deploy::run(command),
            Command::Rollout { command } => rollout::run(command).await,
            Command::Runs { command } => runs::run(command).await,
            Command::Agents { command } => agents::run(command).await,
            Command::Tasks { command } => tasks::run(command).await,
            Command::Loadtest(args) => loadtest::loadtest(*args).await,
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
