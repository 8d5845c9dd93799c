//! `flotilla agents`: the agents of a live server.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::{Client, Output, ServerArgs, print};

/// The agents of a live server.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List the agents: health, circuit, calls in flight, error rate, latency p95.
    List(ListArgs),
}

/// `flotilla agents list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// table, json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// Runs `flotilla agents …`.
pub async fn run(command: AgentsCommand) -> anyhow::Result<ExitCode> {
    let AgentsCommand::List(args) = command;
    let listed = async {
        let client = Client::new(&args.server, Some(Duration::from_secs(30)))?;
        client
            .call(reqwest::Method::GET, "/api/v1/agents", None)
            .await
    };
    let (_, agents) = match listed.await {
        Ok(a) => a,
        Err(f) => return Ok(f.report()),
    };
    let rows = agents["agents"].as_array().cloned().unwrap_or_default();
    print(
        args.output,
        &agents,
        &rows,
        &[
            ("AGENT", "/id"),
            ("KIND", "/kind"),
            ("STATUS", "/status"),
            ("CIRCUIT", "/circuit"),
            ("IN FLIGHT", "/in_flight"),
            ("CALLS", "/calls"),
            ("ERROR RATE", "/error_rate"),
            ("P95 MS", "/latency_p95_ms"),
        ],
    );
    Ok(ExitCode::SUCCESS)
}
