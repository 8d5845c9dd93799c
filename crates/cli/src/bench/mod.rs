//! `flotilla bench`: the peers' workloads through the real engine and store.
//!
//! Every step is a builtin echo; every transition is recorded in the store exactly as in
//! production (durable commits unless `--relaxed`), with the observability `flotilla serve`
//! runs with (its span layer and JSON logging; `--bare` leaves both out and says so). The
//! store is a file in the working directory, whose file system the JSON line names: a tmpfs
//! fsyncs for free, so it is refused unless `--allow-tmpfs`. Prints one JSON line, with
//! every setting that differs from `serve`'s defaults.

mod bound;
mod preload;

use flotilla_spec::storage::Backend;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use flotilla_engine::metrics::Metrics;
use flotilla_engine::{Engine, Submission};
use flotilla_spec::{Config, Durability, Loader, OtlpConfig, Source};
use flotilla_store::RunStatus;
use hdrhistogram::Histogram;
use serde_json::json;

/// The workloads of the peer comparison.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Workload {
    /// 10 sequential steps; workflows one after another.
    Chain,
    /// 1 step, then 20 in parallel, then a join; workflows one after another.
    Fanout,
    /// 10-step chains with many in flight.
    Concurrent,
}

/// Options of `flotilla bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which workload.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Store URL (default: a fresh SQLite file in the working directory, removed after).
    #[arg(long)]
    store: Option<String>,
    /// Workflows to run (default: 200 chain, 100 fanout, 5,000 concurrent: enough samples
    /// for a p99).
    #[arg(long, short = 'n')]
    workflows: Option<usize>,
    /// Workflows in flight at once (concurrent workload).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Skip fsync per commit (not power-loss safe; for comparison only).
    #[arg(long)]
    relaxed: bool,
    /// Engines sharing the store, each with its own connections and leases (PostgreSQL);
    /// workflows are submitted to them in turn.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Store connections per engine (storage.pool_size).
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
    /// Also export the spans over OTLP/HTTP to a local sink (the cost of tracing to a
    /// collector; `serve` exports only when an endpoint is configured).
    #[arg(long, conflicts_with = "bare")]
    tracing: bool,
    /// The bare engine: no span layer and no logging (not what `serve` runs; labelled so).
    #[arg(long)]
    bare: bool,
    /// Accept a store on tmpfs, where fsync costs nothing (the figures then flatter durability).
    #[arg(long)]
    allow_tmpfs: bool,
    /// Store this many finished 10-step runs (each with its steps and events, finished a
    /// day ago) before the workload: the workload then runs on a store that size.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Prune during the workload: storage.retention keeps succeeded runs an hour, so the
    /// preloaded runs are expired and the server's pruner deletes them while the workload
    /// runs (the JSON line counts them).
    #[arg(long, requires = "preload")]
    prune: bool,
}

/// The file system type of the mount holding `path` (from /proc/self/mountinfo).
fn fs_type(path: &std::path::Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            let fs = right.split(' ').next()?;
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

/// A stand-in OTLP/HTTP collector on loopback that accepts every export and counts bytes.
async fn otlp_sink() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            count.fetch_add(body.len() as u64, Ordering::Relaxed);
            async { "" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

fn config(store: &str, relaxed: bool, pool_size: u32) -> anyhow::Result<Config> {
    let chain: Vec<String> = (0..10)
        .map(|i| {
            let needs = if i == 0 {
                String::new()
            } else {
                format!(", needs: [s{}]", i - 1)
            };
            format!("      - {{ id: s{i}, agent: noop{needs} }}")
        })
        .collect();
    let mut fan = vec!["      - { id: first, agent: noop }".to_owned()];
    fan.extend((0..20).map(|i| format!("      - {{ id: p{i}, agent: noop, needs: [first] }}")));
    let all: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    fan.push(format!(
        "      - {{ id: join, agent: noop, needs: [{}] }}",
        all.join(", ")
    ));
    let text = format!(
        "storage: {{ url: {store:?}, durability: {}, pool_size: {pool_size} }}\nengine: {{ max_concurrency: 4096 }}\nagents:\n  noop: {{ kind: builtin, builtin: echo }}\nworkflows:\n  chain:\n    steps:\n{}\n  fanout:\n    steps:\n{}\n",
        if relaxed { "relaxed" } else { "durable" },
        chain.join("\n"),
        fan.join("\n"),
    );
    let loaded = Loader {
        base: Source {
            name: "bench.yaml".into(),
            text,
            path: None,
        },
        env_name: None,
        vars: &|_| None,
        var_names: vec![],
        flags: vec![],
    }
    .load()
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(loaded.config)
}

async fn one(engine: &Engine, workflow: &str, i: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut sub = engine
        .submit(
            workflow,
            Submission {
                input: json!({"i": i}),
                ..Default::default()
            },
        )
        .await?;
    let outcome = sub
        .outcome(Duration::from_secs(60))
        .await
        .context("a workflow did not finish within 60s")?;
    if outcome.status != RunStatus::Succeeded {
        bail!(
            "workflow {} ended {}: {:?}",
            sub.run_id,
            outcome.status,
            outcome.error
        );
    }
    Ok(started.elapsed())
}

/// Runs the workload and prints `{"workload","workflows","steps","wall_s","workflows_per_s","steps_per_s","p50_ms","p99_ms","store"}`.
pub async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // In the working directory, where a user's data would live: /tmp is often a tmpfs.
    let dir = tempfile::Builder::new()
        .prefix(".flotilla-bench-")
        .tempdir_in(".")
        .context("creating the benchmark directory in the working directory")?;
    let url = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let backend = Backend::of(&url).map_err(|e| anyhow::anyhow!("--store {url}: {e}"))?;
    let filesystem = match &backend {
        Backend::Sqlite(file) => {
            let parent = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            fs_type(parent).unwrap_or_else(|| "unknown".into())
        }
        Backend::Postgres => "server".into(),
    };
    if filesystem == "tmpfs" && !args.allow_tmpfs {
        bail!(
            "the store would be on tmpfs, where fsync costs nothing and the figures mean little; \
             run from a directory on disk, or pass --allow-tmpfs"
        );
    }
    // The disk's bound, in the store's own directory, before the workload.
    let fsync = match &backend {
        Backend::Sqlite(file) => Some(
            bound::measure(
                file.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new(".")),
            )
            .context("timing fdatasync in the store's directory")?,
        ),
        Backend::Postgres => None,
    };
    let mut config = config(&url, args.relaxed, args.pool_size)?;
    if args.prune {
        config.storage.retention.succeeded = Some(flotilla_spec::Dur::secs(3600));
    }
    let config = Arc::new(config);
    if args.replicas > 1 && !backend.is_shared() {
        bail!("--replicas needs a shared store (--store postgres://…); SQLite serves one process");
    }
    let mut telemetry = None;
    let mut exported = None;
    if !args.bare {
        // What `serve` installs: the span layer and JSON logs (to stderr, at serve's level).
        let mut observed = (*config).clone();
        if args.tracing {
            let (endpoint, received) = otlp_sink().await?;
            observed.observability.otlp = Some(OtlpConfig { endpoint });
            exported = Some(received);
        }
        telemetry = Some(crate::logging::init(&observed)?);
    }
    let mut engines = Vec::new();
    let metrics = Arc::new(Metrics::new());
    let mut preload_s = 0.0;
    for i in 0..args.replicas.max(1) {
        let mut own = (*config).clone();
        own.engine.replica_id = Some(format!("bench-{i}-{}", uuid::Uuid::now_v7().simple()));
        let own = Arc::new(own);
        if i == 0 && args.preload > 0 {
            // Through its own handle, closed before the engine opens the store: the workload
            // starts on a settled database (SQLite's WAL checkpointed), as a server would.
            let store = crate::serve::open_store(&own).await?;
            store.migrate().await?;
            let started = Instant::now();
            preload::preload(store, args.preload).await?;
            preload_s = started.elapsed().as_secs_f64();
        }
        let store = crate::serve::open_store(&own).await?;
        store.migrate().await?;
        let own_metrics = if i == 0 {
            metrics.clone()
        } else {
            Arc::new(Metrics::new())
        };
        engines.push(Engine::start(own, store, own_metrics).await?);
    }
    let pruned = || {
        metrics
            .runs_pruned
            .get_or_create(&flotilla_engine::metrics::StatusLabels {
                status: "succeeded".into(),
            })
            .get()
    };
    let engine = engines[0].clone();
    let (workflow, steps, n) = match args.workload {
        Workload::Chain => ("chain", 10, args.workflows.unwrap_or(200)),
        Workload::Fanout => ("fanout", 22, args.workflows.unwrap_or(100)),
        Workload::Concurrent => ("chain", 10, args.workflows.unwrap_or(5_000)),
    };
    for i in 0..3 {
        one(&engines[i % engines.len()], workflow, i).await?;
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?;
    let pruned_before = pruned();
    let started = Instant::now();
    match args.workload {
        Workload::Chain | Workload::Fanout => {
            for i in 0..n {
                hist.record(
                    one(&engines[i % engines.len()], workflow, i)
                        .await?
                        .as_micros() as u64,
                )?;
            }
        }
        Workload::Concurrent => {
            let limit = Arc::new(tokio::sync::Semaphore::new(args.in_flight.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let permit = limit.clone().acquire_owned().await?;
                let engine = engines[i % engines.len()].clone();
                tasks.spawn(async move {
                    let r = one(&engine, workflow, i).await;
                    drop(permit);
                    r
                });
            }
            while let Some(r) = tasks.join_next().await {
                hist.record(r??.as_micros() as u64)?;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let pruned_during = pruned() - pruned_before;
    let durability = if config.storage.durability == Durability::Durable {
        "durable"
    } else {
        "relaxed"
    };
    let line = json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "workflows": n,
        "steps": n * steps,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "workflows_per_s": (n as f64 / wall * 10.0).round() / 10.0,
        "steps_per_s": (n as f64 * steps as f64 / wall).round(),
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "store": format!("{} ({durability})", engine.store().backend()),
        "filesystem": filesystem,
        "replicas": engines.len(),
        "observability": if args.bare { "bare (no spans, no logs: not what serve runs)" } else if args.tracing { "serve's, spans exported over OTLP" } else { "serve's (spans and JSON logs)" },
        // Settings that differ from `flotilla serve`'s defaults.
        "settings": {
            "engine.max_concurrency": config.engine.max_concurrency,
            "storage.pool_size": config.storage.pool_size,
            "storage.durability": durability,
            "in_flight": matches!(args.workload, Workload::Concurrent).then_some(args.in_flight),
        },
    });
    for e in &engines {
        e.shutdown(Duration::ZERO).await;
    }
    let mut line = line;
    if let Some(f) = &fsync {
        let bound = bound::bound(f);
        let key = match args.workload {
            Workload::Fanout => "fanout",
            Workload::Chain | Workload::Concurrent => "chain",
        };
        line["fsync_p50_us"] = json!(f.overwrite_p50_us);
        line["fsync_append_p50_us"] = json!(f.append_p50_us);
        line["bound_steps_per_s"] = bound.clone();
        if !matches!(args.workload, Workload::Concurrent) && !args.relaxed {
            let of =
                line["steps_per_s"].as_f64().unwrap_or(0.0) / bound[key].as_f64().unwrap_or(1.0);
            line["of_bound"] = json!((of * 1000.0).round() / 1000.0);
        }
    }
    if args.preload > 0 {
        line["preloaded_runs"] = json!(args.preload);
        line["preload_s"] = json!((preload_s * 10.0).round() / 10.0);
        line["pruned_runs_during_workload"] = json!(pruned_during);
    }
    if let (Some(t), Some(bytes)) = (telemetry, exported) {
        t.shutdown().await;
        line["otlp_bytes"] = json!(bytes.load(Ordering::Relaxed));
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
