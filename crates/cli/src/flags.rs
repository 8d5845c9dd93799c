//! `flotilla flags list|eval`: the configured flags, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use flotilla_flags::{Context, FlagSet};
use serde_json::json;

use crate::settings::{self, ConfigArgs};

/// `flotilla flags …`
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// List the flags of `flags.file` (or `--file`).
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// A flag file to read instead of the config's `flags.file`.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Evaluate one flag for a context and print `{"flag","value","reason","variant"}`.
    ///
    /// Exit status: 0 on, 1 off, 2 no such flag or a malformed --context. A percentage flag
    /// evaluated without `user_id` or `session_id` is off (reason DEFAULT), every time.
    Eval {
        /// The flag.
        name: String,
        /// A context field, `key=value` (`user_id=42`, `priority=high`); repeat for more.
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        #[command(flatten)]
        config: ConfigArgs,
        /// A flag file to read instead of the config's `flags.file`.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn load(config: &ConfigArgs, file: Option<PathBuf>) -> anyhow::Result<Result<FlagSet, ExitCode>> {
    let loaded = match settings::load(config, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(Err(settings::report(&e))),
    };
    let flags = &loaded.config.flags;
    let Some(path) = file.or_else(|| flags.file.as_ref().map(PathBuf::from)) else {
        bail!("no flag file: set flags.file in the config or pass --file");
    };
    let environment = flags
        .environment
        .clone()
        .unwrap_or_else(|| "development".into());
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    match FlagSet::parse(&path.display().to_string(), &text, &environment) {
        Ok(set) => Ok(Ok(set)),
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!(
                "error: the flag file has {} problem{}",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" }
            );
            Ok(Err(ExitCode::from(2)))
        }
    }
}

/// Runs a `flags` subcommand.
pub fn run(command: FlagsCommand) -> anyhow::Result<ExitCode> {
    match command {
        FlagsCommand::List { config, file } => {
            let set = match load(&config, file)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            for f in set.list() {
                println!("{}", serde_json::to_string(f)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        FlagsCommand::Eval {
            name,
            context,
            config,
            file,
        } => {
            let mut pairs = Vec::new();
            for c in &context {
                let Some((k, v)) = c.split_once('=') else {
                    eprintln!("error: --context `{c}` is not KEY=VALUE");
                    return Ok(ExitCode::from(2));
                };
                pairs.push((k.trim(), v.trim()));
            }
            let set = match load(&config, file)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let Some(e) = set.evaluate(&name, &Context::from_pairs(pairs)) else {
                eprintln!("error: no flag named `{name}`");
                return Ok(ExitCode::from(2));
            };
            // The variant as OFREP names it: the flag's variant, else `on` or `off`.
            let variant = e
                .variant
                .clone()
                .unwrap_or_else(|| if e.enabled { "on" } else { "off" }.into());
            println!(
                "{}",
                json!({"flag": name, "value": e.enabled, "reason": e.reason, "variant": variant})
            );
            Ok(if e.enabled {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
