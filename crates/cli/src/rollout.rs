//! `flotilla rollout`: canary, blue-green and rolling updates through nginx, judged by
//! Prometheus, off Kubernetes. Data on stdout, progress on stderr.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use flotilla_rollout::controller::{Controller, now_ms};
use flotilla_rollout::provider::{PrometheusProvider, QueryContext, instances_regex};
use flotilla_rollout::store::{self, Command, StateStore};
use serde_json::json;

/// Output format of data on stdout.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// A strategy on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    /// Weighted steps.
    Canary,
    /// Switch colours.
    #[value(name = "blue_green", alias = "blue-green")]
    BlueGreen,
    /// Replace instances a few at a time.
    Rolling,
}

/// Which rollout, and where its state lives.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The rollout's name (default: the one in --config).
    pub name: Option<String>,
    /// The file with the rollout (a `rollout:` section, or the rollout alone).
    #[arg(long, short = 'c', env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// The state store (default: the rollout's `store`, else the file's `storage.url`, else
    /// sqlite://flotilla.db).
    #[arg(long, env = "FLOTILLA_ROLLOUT_STORE")]
    pub store: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Drive the rollout to its end in the foreground, resuming where it was if it was
    /// interrupted. Exit status: 0 promoted, 3 rolled back or aborted, 1 stopped on an error
    /// (nginx refused a configuration), 2 an invalid file.
    Run {
        /// The file with the rollout.
        #[arg(long, short = 'c', env = "FLOTILLA_CONFIG")]
        config: PathBuf,
        /// The state store (as for `status`).
        #[arg(long, env = "FLOTILLA_ROLLOUT_STORE")]
        store: Option<String>,
        /// Serve the controller's metrics (`rollout_decisions_total`, …) on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Use this strategy rather than the file's (chosen when a deploy is dispatched).
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
        /// The new version's name rather than the file's (a commit, a tag).
        #[arg(long)]
        canary_version: Option<String>,
        /// How the result is printed.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show the rollout: status, step, weight, measurements and decisions with reasons.
    Status {
        #[command(flatten)]
        target: Target,
        /// How many history entries to show.
        #[arg(long, default_value_t = 20)]
        history: u32,
        /// How the status is printed.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Go past the current pause (a `pause: {}` step, or a hold for a human).
    Promote(Target),
    /// Roll back to the stable version now.
    Abort(Target),
    /// Hold the rollout where it is until `resume`.
    Pause(Target),
    /// Go on after `pause`.
    Resume(Target),
    /// Run analysis templates once, as a CI gate. Exit status: 0 successful, 3 failed,
    /// 4 inconclusive or unavailable.
    Analyze {
        /// A file of templates (ours, or Argo AnalysisTemplates as `deploy generate` writes).
        #[arg(long)]
        template: PathBuf,
        /// Only these templates (default: every template in the file).
        #[arg(long = "name")]
        names: Vec<String>,
        /// A template argument, `NAME=VALUE` (repeatable).
        #[arg(long = "arg", value_parser = parse_arg)]
        args: Vec<(String, String)>,
        /// The new version's instances, for `{{ canary_instances }}` (repeatable).
        #[arg(long = "canary")]
        canary: Vec<String>,
        /// The stable instances, for `{{ stable_instances }}` (repeatable).
        #[arg(long = "stable")]
        stable: Vec<String>,
        /// Longest the gate runs; metrics without a count are judged on what they have then.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// How the result is printed.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Check a rollout file; problems are printed as file:line:col (exit status 2).
    Validate {
        /// The file with the rollout.
        #[arg(long, short = 'c', env = "FLOTILLA_CONFIG")]
        config: PathBuf,
    },
}

fn parse_arg(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

fn load(file: &Path) -> Result<flotilla_rollout::load::Loaded, ExitCode> {
    flotilla_rollout::load::load(file).map_err(|diags| {
        for d in &diags {
            eprintln!("{d}");
        }
        eprintln!(
            "error: {} problem{} in the rollout",
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(2)
    })
}

/// The store URL: the flag, the rollout's `store`, the file's `storage.url`, the default.
fn store_url(flag: Option<&str>, file: Option<&Path>, rollout_store: Option<&str>) -> String {
    if let Some(url) = flag.or(rollout_store) {
        return url.to_owned();
    }
    if let Some(file) = file
        && let Ok(text) = std::fs::read_to_string(file)
        && let Ok((value, _)) =
            flotilla_spec::yaml::parse(&file.display().to_string(), &text, &|name: &str| {
                std::env::var(name).ok()
            })
        && let Some(url) = value.pointer("/storage/url").and_then(|v| v.as_str())
    {
        return url.to_owned();
    }
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://flotilla.db".into())
}

type Opened = (
    String,
    Arc<dyn StateStore>,
    Option<flotilla_rollout::load::Loaded>,
);

async fn open_target(target: &Target) -> anyhow::Result<Opened> {
    let loaded = match &target.config {
        Some(f) => Some(load(f).map_err(|_| anyhow::anyhow!("the rollout file is invalid"))?),
        None => None,
    };
    let name = match (&target.name, &loaded) {
        (Some(n), _) => n.clone(),
        (None, Some(l)) => l.spec.name.clone(),
        (None, None) => anyhow::bail!("name the rollout, or give --config with it"),
    };
    let url = store_url(
        target.store.as_deref(),
        target.config.as_deref(),
        loaded.as_ref().and_then(|l| l.spec.store.as_deref()),
    );
    let store = store::open(&url).await?;
    Ok((name, store, loaded))
}

/// Runs a `flotilla rollout` subcommand.
pub async fn run(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    match command {
        RolloutCommand::Validate { config } => Ok(match load(&config) {
            Ok(l) => {
                println!(
                    "ok: rollout {} ({:?}, {} steps, {} templates)",
                    l.spec.name,
                    l.spec.strategy,
                    l.spec.steps.len(),
                    l.templates.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        RolloutCommand::Run {
            config,
            store,
            metrics_listen,
            strategy,
            canary_version,
            output,
        } => {
            let mut loaded = match load(&config) {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            if let Some(s) = strategy {
                use flotilla_rollout::spec::Strategy;
                loaded.spec.strategy = match s {
                    StrategyArg::Canary => Strategy::Canary,
                    StrategyArg::BlueGreen => Strategy::BlueGreen,
                    StrategyArg::Rolling => Strategy::Rolling,
                };
                if loaded.spec.strategy == Strategy::Rolling && loaded.spec.rolling.is_none() {
                    eprintln!(
                        "error: --strategy rolling needs a `rolling:` section in the rollout"
                    );
                    return Ok(ExitCode::from(2));
                }
            }
            if let Some(v) = canary_version {
                loaded.spec.canary.version = v;
            }
            let url = store_url(
                store.as_deref(),
                Some(&config),
                loaded.spec.store.as_deref(),
            );
            let state_store = store::open(&url).await?;
            let name = loaded.spec.name.clone();
            let mut controller = Controller::new(loaded, state_store.clone());
            controller.progress = Arc::new(|line: &str| eprintln!("{line}"));
            let metrics = controller.metrics.clone();
            let _server = match metrics_listen {
                Some(addr) => Some(serve_metrics(addr, metrics).await?),
                None => None,
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let outcome = controller.run(shutdown).await?;
            controller.notifier.finish(Duration::from_secs(15)).await;
            let state = state_store.load(&name).await?.unwrap_or_default();
            match output {
                Output::Json => println!("{}", json!({"rollout": name, "state": state})),
                Output::Text => println!(
                    "{name}: {}",
                    state["status"]["status"].as_str().unwrap_or("stopped")
                ),
            }
            Ok(match outcome {
                None => ExitCode::from(130),
                Some(o) => ExitCode::from(o.exit_code() as u8),
            })
        }
        RolloutCommand::Status {
            target,
            history,
            output,
        } => {
            let (name, store, loaded) = open_target(&target).await?;
            let Some(state) = store.load(&name).await? else {
                anyhow::bail!("no rollout named `{name}` in the store");
            };
            let entries = store.history(&name, history).await?;
            let steps = loaded
                .filter(|l| l.spec.name == name)
                .map(|l| l.spec.steps)
                .unwrap_or_default();
            match output {
                Output::Json => println!("{}", json!({"state": state, "history": entries})),
                Output::Text => print_status(&state, &steps, &entries),
            }
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Promote(t) => send(&t, Command::Promote).await,
        RolloutCommand::Abort(t) => send(&t, Command::Abort).await,
        RolloutCommand::Pause(t) => send(&t, Command::Pause).await,
        RolloutCommand::Resume(t) => send(&t, Command::Resume).await,
        RolloutCommand::Analyze {
            template,
            names,
            args,
            canary,
            stable,
            duration,
            output,
        } => analyze(&template, &names, args, &canary, &stable, duration, output).await,
    }
}

async fn send(target: &Target, command: Command) -> anyhow::Result<ExitCode> {
    let (name, store, _) = open_target(target).await?;
    if store.load(&name).await?.is_none() {
        anyhow::bail!("no rollout named `{name}` in the store");
    }
    store.send(&name, command, now_ms()).await?;
    eprintln!("{name}: {command:?} sent; the running controller acts on it within a second");
    Ok(ExitCode::SUCCESS)
}

fn print_status(
    state: &serde_json::Value,
    steps: &[flotilla_rollout::spec::Step],
    entries: &[store::Entry],
) {
    let status = &state["status"];
    println!("rollout:  {}", state["name"].as_str().unwrap_or("?"));
    println!(
        "versions: {} → {} ({})",
        state["stable_version"].as_str().unwrap_or("?"),
        state["canary_version"].as_str().unwrap_or("?"),
        state["strategy"].as_str().unwrap_or("?")
    );
    println!("status:   {}", status["status"].as_str().unwrap_or("?"));
    if let Some(since) = status["since"].as_i64() {
        let ago = (now_ms() - since).max(0) / 1000;
        println!("          unavailable since {ago}s ago");
    }
    for key in ["reason", "error"] {
        if let Some(r) = status[key].as_str() {
            println!("          {r}");
        }
    }
    println!("step:     {}   weight: {}%", state["step"], state["weight"]);
    let current = state["step"].as_u64().unwrap_or(0) as usize;
    for (i, step) in steps.iter().enumerate() {
        use flotilla_rollout::spec::{Pause, Step};
        let text = match step {
            Step::SetWeight(w) => format!("set_weight {w}"),
            Step::Pause(Pause::For(d)) => format!("pause {d}"),
            Step::Pause(Pause::UntilPromoted(_)) => "pause until promoted".into(),
            Step::Analysis(a) => format!("analysis {}", a.templates.join(", ")),
        };
        let mark = match i.cmp(&current) {
            std::cmp::Ordering::Less => "done",
            std::cmp::Ordering::Equal => " -> ",
            std::cmp::Ordering::Greater => "    ",
        };
        println!("  {mark} {i}: {text}");
    }
    for (title, key) in [("analysis", "step_analysis"), ("background", "background")] {
        for run in state[key].as_array().into_iter().flatten() {
            let ms = run["measurements"].as_array().cloned().unwrap_or_default();
            let recent: Vec<String> = ms
                .iter()
                .rev()
                .take(5)
                .rev()
                .map(|m| format!("{} {}", m["value"], m["phase"].as_str().unwrap_or("?")))
                .collect();
            println!(
                "{title}: {} ({} measurements): {}",
                run["metric"]["name"].as_str().unwrap_or("?"),
                ms.len(),
                recent.join(", ")
            );
        }
    }
    println!("history:");
    for e in entries {
        if e.kind == "decision" {
            let b = &e.body;
            let reason = match b.get("reason") {
                Some(r) if !r.is_null() => format!(
                    " [metric {}: {}; {}; values {}]",
                    r["metric"].as_str().unwrap_or("?"),
                    r["rule"].as_str().unwrap_or("?"),
                    r["condition"].as_str().unwrap_or("?"),
                    r["values"].as_str().unwrap_or("?")
                ),
                _ => String::new(),
            };
            println!(
                "  {} {} ({}): {}{reason}",
                e.at,
                b["decision"].as_str().unwrap_or("?"),
                b["cause"].as_str().unwrap_or("?"),
                b["message"].as_str().unwrap_or("")
            );
        } else {
            let m = &e.body["measurement"];
            println!(
                "  {} measured {}: {} {}{}",
                e.at,
                e.body["metric"].as_str().unwrap_or("?"),
                m["value"],
                m["phase"].as_str().unwrap_or("?"),
                m["message"]
                    .as_str()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            );
        }
    }
}

async fn analyze(
    file: &Path,
    names: &[String],
    args: Vec<(String, String)>,
    canary: &[String],
    stable: &[String],
    duration: Duration,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let templates = match flotilla_rollout::load::template_file(file) {
        Ok(t) => t,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let chosen: Vec<_> = templates
        .into_iter()
        .filter(|t| names.is_empty() || names.contains(&t.name))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("no template in {} matches", file.display());
    }
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for t in &chosen {
        for d in &t.args {
            if let Some(v) = &d.value {
                values.insert(d.name.clone(), v.clone());
            }
        }
    }
    values.extend(args);
    for t in &chosen {
        for d in &t.args {
            if !values.contains_key(&d.name) {
                anyhow::bail!("template `{}` needs --arg {}=VALUE", t.name, d.name);
            }
        }
    }
    let ctx = QueryContext {
        args: values,
        canary_instances: instances_regex(canary),
        stable_instances: instances_regex(stable),
        ..Default::default()
    };
    let provider = PrometheusProvider::default();
    let (outcome, runs) =
        flotilla_rollout::analyze(&chosen, &ctx, &provider, duration, |name, m| {
            eprintln!(
                "{name}: {} {:?}{}",
                m.value.clone().unwrap_or_default(),
                m.phase,
                m.message
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            );
        })
        .await;
    let (verdict, reason) = match &outcome {
        flotilla_rollout::AnalyzeOutcome::Successful => ("successful", None),
        flotilla_rollout::AnalyzeOutcome::Failed(r) => ("failed", Some(r)),
        flotilla_rollout::AnalyzeOutcome::Inconclusive(r) => ("inconclusive", Some(r)),
    };
    match output {
        Output::Json => println!(
            "{}",
            json!({"verdict": verdict, "reason": reason, "metrics": runs})
        ),
        Output::Text => match reason {
            Some(r) => println!("{verdict}: {r}"),
            None => println!("{verdict}"),
        },
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}

/// Serves `/metrics` for the controller's lifetime (the task stops when the handle drops).
async fn serve_metrics(
    addr: SocketAddr,
    metrics: flotilla_rollout::metrics::RolloutMetrics,
) -> anyhow::Result<AbortOnDrop> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { m.encode() }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(AbortOnDrop(task))
}

/// Stops a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
