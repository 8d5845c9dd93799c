//! `flotilla tasks`: one task on a live server (`POST /api/v1/execute`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::client::{Client, Failure, Output, ServerArgs, print, read_input};

/// One task on a live server.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Execute one task on an agent, chosen by name or by capability, and print its result.
    ///
    /// Exit status: 0 the task succeeded, 1 it failed or the server refused it, 2 usage, 4
    /// the server is unavailable, no agent could take it, or it timed out.
    Execute(ExecuteArgs),
}

/// `flotilla tasks execute`.
#[derive(Debug, Args)]
pub struct ExecuteArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The agent to call.
    #[arg(
        long,
        conflicts_with = "capability",
        required_unless_present = "capability"
    )]
    agent: Option<String>,
    /// Any healthy agent with this capability (the least busy).
    #[arg(long)]
    capability: Option<String>,
    /// The action the agent performs (its capability when unset).
    #[arg(long)]
    action: Option<String>,
    /// The task's input: JSON, `@file`, or `-` for stdin.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Instructions for an LLM agent.
    #[arg(long)]
    instructions: Option<String>,
    /// low, normal, high or critical.
    #[arg(long)]
    priority: Option<String>,
    /// Give up after this long (`30s`, `2m`); the agent's own timeout otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// table, json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// Runs `flotilla tasks …`.
pub async fn run(command: TasksCommand) -> anyhow::Result<ExitCode> {
    let TasksCommand::Execute(args) = command;
    Ok(execute(args).await.unwrap_or_else(|f| f.report()))
}

async fn execute(args: ExecuteArgs) -> Result<ExitCode, Failure> {
    let mut body = Map::new();
    body.insert("input".into(), read_input(&args.input)?);
    for (key, value) in [
        ("agent", args.agent),
        ("capability", args.capability),
        ("action", args.action),
        ("instructions", args.instructions),
        ("priority", args.priority),
    ] {
        if let Some(v) = value {
            body.insert(key.into(), Value::String(v));
        }
    }
    if let Some(t) = args.timeout {
        body.insert("timeout".into(), json!(t.as_millis()));
    }
    // The server answers within the task's timeout or its own request timeout.
    let wait = args.timeout.unwrap_or_default() + Duration::from_secs(60);
    let client = Client::new(&args.server, Some(wait))?;
    let (_, answer) = client
        .call(
            reqwest::Method::POST,
            "/api/v1/execute",
            Some(&Value::Object(body)),
        )
        .await?;
    print(
        args.output,
        &answer,
        std::slice::from_ref(&answer),
        &[
            ("TASK", "/taskId"),
            ("AGENT", "/agentId"),
            ("MS", "/duration"),
            ("RESULT", "/result"),
        ],
    );
    Ok(ExitCode::SUCCESS)
}
