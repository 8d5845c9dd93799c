//! `flotilla keys create`: a new API key, printed once, and the entry to add to the config.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key: the key goes to stdout once; only its hash goes into flotilla.yaml.
    Create {
        /// Who holds the key (shown in logs and rate limits).
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

/// Roles on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Read runs, agents and flags.
    Viewer,
    /// Also execute tasks, start and cancel runs.
    Operator,
    /// Everything, agent registration included.
    Admin,
}

/// Runs a keys subcommand.
pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create { name, role } => {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .context("reading random bytes for the key")?;
            let key = format!(
                "flk_{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            let role = format!("{role:?}").to_lowercase();
            println!("{key}");
            eprintln!(
                "The key above is shown once; store it now. Add this entry to auth.api_keys:"
            );
            eprintln!(
                "  - {{ name: {name}, role: {role}, hash: \"{}\" }}",
                flotilla_server::auth::hash_key(&key)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
