//! `flotilla deploy generate`: deployment artifacts from the config's `deploy:` section.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use flotilla_deploy::generate::{Input, Target, generate};
use flotilla_spec::{Loader, Source};

use crate::settings;

/// `flotilla deploy …`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Write a Dockerfile, compose stack, Kubernetes base and overlays (with Argo Rollouts),
    /// ArgoCD Applications and CI workflows. The same input always gives the same bytes;
    /// secrets appear only as references.
    Generate(GenerateArgs),
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Dockerfile, compose.yaml behind nginx, PostgreSQL, Prometheus.
    Compose,
    /// Dockerfile, Kustomize base and overlays, Argo Rollouts.
    Kubernetes,
    /// ArgoCD Applications.
    Argocd,
    /// GitHub Actions workflows.
    Ci,
    /// A Helm chart (helm/<name>/) rendering the same objects as the Kustomize overlays.
    Helm,
    /// Everything.
    All,
}

/// Options of `flotilla deploy generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Config file (default: ./flotilla.yaml). The embedded demo is not a deployment: name
    /// a file.
    #[arg(long, short = 'c', env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// What to generate.
    #[arg(long, value_enum, default_value = "all")]
    target: TargetArg,
    /// The one environment to generate overlays and Applications for (default: every one in
    /// deploy.environments).
    #[arg(long)]
    env: Option<String>,
    /// Directory to write into.
    #[arg(long, short)]
    output: PathBuf,
    /// Overwrite files in a non-empty output directory.
    #[arg(long)]
    force: bool,
}

/// Runs a `deploy` subcommand.
pub fn run(command: DeployCommand) -> anyhow::Result<ExitCode> {
    let DeployCommand::Generate(args) = command;
    let path = args.config.clone().or_else(|| {
        Path::new("flotilla.yaml")
            .exists()
            .then(|| PathBuf::from("flotilla.yaml"))
    });
    let base = match &path {
        Some(p) => match Source::file(p) {
            Ok(s) => s,
            Err(e) => return Ok(settings::report(&e)),
        },
        None => {
            eprintln!(
                "error: no configuration: pass --config FILE, set FLOTILLA_CONFIG, or run where flotilla.yaml is"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let text = base.text.clone();
    // Generation needs no secret values: unset variables stay references.
    let lookup = |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| (name != "DATABASE_URL").then(|| format!("${{{name}}}")))
    };
    let loaded = Loader {
        base,
        env_name: None,
        vars: &lookup,
        var_names: Vec::new(),
        flags: Vec::new(),
    }
    .load();
    let config = match loaded {
        Ok(l) => l.config,
        Err(e) => return Ok(settings::report(&e)),
    };
    let flags_text = match &config.flags.file {
        None => None,
        Some(f) => {
            let dir = path
                .as_deref()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            let file = dir.join(f);
            Some(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading the flag file {}", file.display()))?,
            )
        }
    };
    let targets: Vec<Target> = match args.target {
        TargetArg::Compose => vec![Target::Compose],
        TargetArg::Kubernetes => vec![Target::Kubernetes],
        TargetArg::Argocd => vec![Target::Argocd],
        TargetArg::Ci => vec![Target::Ci],
        TargetArg::Helm => vec![Target::Helm],
        TargetArg::All => Target::ALL.to_vec(),
    };
    let dir = path
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let agent_files = command_files(&config, dir)?;
    let input = Input {
        config: &config,
        config_text: &text,
        flags_text: flags_text.as_deref(),
        agent_files: &agent_files,
    };
    let envs: Vec<String> = args.env.into_iter().collect();
    let files = match generate(&input, &targets, &envs) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    flotilla_deploy::write_files(&args.output, &files, args.force)?;
    for f in &files {
        println!("{}", args.output.join(&f.path).display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The files command agents name by a relative path that exists beside the configuration
/// (`command: [python3, agents/weather.py]`), to be copied into the image.
fn command_files(
    config: &flotilla_spec::Config,
    dir: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = std::collections::BTreeMap::new();
    for agent in config.agents.values() {
        if agent.kind != flotilla_spec::AgentKind::Command {
            continue;
        }
        for arg in agent.command.iter().skip(1).chain(agent.command.first()) {
            let rel = Path::new(arg);
            if rel.is_absolute() || arg.contains("..") || !dir.join(rel).is_file() {
                continue;
            }
            let text = std::fs::read_to_string(dir.join(rel))
                .with_context(|| format!("reading the command agent file {arg}"))?;
            files.insert(arg.replace('\\', "/"), text);
        }
    }
    Ok(files.into_iter().collect())
}
