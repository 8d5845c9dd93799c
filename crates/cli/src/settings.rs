//! Finding and loading the configuration the way every subcommand does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use flotilla_spec::{Loaded, Loader, Source, SpecError};

/// The demo fleet, compiled in.
pub const DEMO: &str = include_str!("../../../examples/demo.yaml");

/// Where the configuration comes from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Config file (default: ./flotilla.yaml if present, else the embedded demo fleet).
    #[arg(long, short = 'c', env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Environment: also reads <config>.<env>.yaml beside the config file.
    #[arg(long, env = "FLOTILLA_ENV")]
    pub env: Option<String>,
}

/// Loads the layered configuration; flags are (path, value, flag name) overrides.
pub fn load(
    args: &ConfigArgs,
    flags: Vec<(String, serde_json::Value, String)>,
) -> Result<Loaded, SpecError> {
    let base = match &args.config {
        Some(path) => Source::file(path)?,
        None if std::path::Path::new("flotilla.yaml").exists() => {
            Source::file(std::path::Path::new("flotilla.yaml"))?
        }
        None => Source {
            name: "examples/demo.yaml (embedded)".into(),
            text: DEMO.into(),
            path: None,
        },
    };
    let lookup = |name: &str| std::env::var(name).ok();
    Loader {
        base,
        env_name: args.env.clone(),
        vars: &lookup,
        var_names: std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect(),
        flags,
    }
    .load()
}

/// Prints every problem and returns exit status 2, as compilers do.
pub fn report(e: &SpecError) -> ExitCode {
    match e {
        SpecError::Invalid(diags) => {
            for d in diags {
                eprintln!("{d}");
            }
            eprintln!(
                "error: the configuration has {} problem{}",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" }
            );
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(2)
}

/// `flotilla validate`.
pub fn validate(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    match load(args, Vec::new()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            // A `rollout:` section is the rollout crate's to read: check it the same way.
            if loaded.config.rollout.is_some()
                && let Some(path) = &args.config
                && let Err(diags) = flotilla_rollout::load::load(path)
            {
                for d in &diags {
                    eprintln!("{d}");
                }
                eprintln!("error: {} problem(s) in the rollout section", diags.len());
                return Ok(ExitCode::from(2));
            }
            if let Some(code) = check_flag_file(&loaded) {
                return Ok(code);
            }
            println!(
                "ok: {} ({} agents, {} workflows)",
                loaded.files.join(" + "),
                loaded.config.agents.len(),
                loaded.config.workflows.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(&e)),
    }
}

/// The flag file parses, and every `flag('name')` in the workflows names one of its flags;
/// `Some(exit status)` when not.
fn check_flag_file(loaded: &flotilla_spec::Loaded) -> Option<ExitCode> {
    let file = loaded.config.flags.file.as_ref()?;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: flags.file {file}: {e}");
            return Some(ExitCode::from(2));
        }
    };
    let environment = loaded
        .config
        .flags
        .environment
        .clone()
        .unwrap_or_else(|| "development".into());
    let diags = match flotilla_flags::FlagSet::parse(file, &text, &environment) {
        Ok(set) => {
            let known = set.list().iter().map(|f| f.name.clone()).collect();
            flotilla_spec::check_flag_references(&loaded.config, &loaded.index, &known)
                .into_iter()
                .map(|d| d.to_string())
                .collect()
        }
        Err(diags) => diags.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    if diags.is_empty() {
        return None;
    }
    for d in &diags {
        eprintln!("{d}");
    }
    eprintln!("error: {} problem(s) with flags", diags.len());
    Some(ExitCode::from(2))
}

/// `flotilla config show`.
pub fn show(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let loaded = match load(args, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(report(&e)),
    };
    let mut value =
        serde_json::to_value(&loaded.config).context("serializing the configuration")?;
    flotilla_spec::redact::redact_value(&mut value);
    let yaml = serde_saphyr::to_string(&value).context("writing the configuration as YAML")?;
    println!(
        "# effective configuration from {}",
        loaded.files.join(" + ")
    );
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}
