//! `flotilla serve` and `flotilla migrate`.

use flotilla_spec::storage::Backend;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use flotilla_engine::Engine;
use flotilla_engine::metrics::Metrics;
use flotilla_spec::{Config, Durability};
use flotilla_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store};
use tokio::sync::watch;

use crate::settings::{self, ConfigArgs};

/// Options of `flotilla serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on (overrides server.listen): `127.0.0.1:8080`, `localhost:8080`, or
    /// `:8080` for every address; port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = &config.storage.url;
    let backend = Backend::of(url)
        .map_err(|e| anyhow::anyhow!("{}: {e}", flotilla_spec::redact::redact_url(url)))?;
    if backend.is_shared() {
        let options = PostgresOptions {
            pool_size: config.storage.pool_size,
            connect_timeout: config.storage.connect_timeout.0,
            statement_timeout: config.storage.statement_timeout.0,
        };
        let store = PostgresStore::connect(url, options)
            .with_context(|| format!("opening {}", flotilla_spec::redact::redact_url(url)))?;
        return Ok(Arc::new(store));
    }
    let options = SqliteOptions {
        durable: config.storage.durability == Durability::Durable,
        read_pool: config.storage.pool_size.max(1) as usize,
    };
    let store = SqliteStore::open(url, options)
        .await
        .with_context(|| format!("opening {}", flotilla_spec::redact::redact_url(url)))?;
    Ok(Arc::new(store))
}

/// Whether opening the store failed because another process (a server) holds the SQLite
/// database.
pub fn held_by_another(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<flotilla_store::StoreError>(),
            Some(flotilla_store::StoreError::Locked(_))
        )
    })
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serves until SIGTERM/SIGINT, then drains and exits 0.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = args
        .listen
        .iter()
        .map(|l| {
            (
                "server.listen".to_owned(),
                // `:8080` is every address, as Go and many servers read it.
                serde_json::Value::String(match l.strip_prefix(':') {
                    Some(port) => format!("0.0.0.0:{port}"),
                    None => l.clone(),
                }),
                "--listen".to_owned(),
            )
        })
        .collect();
    let loaded = match settings::load(&args.config, flags) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let config = Arc::new(loaded.config);
    let telemetry = crate::logging::init(&config)?;
    tracing::info!(config = %loaded.files.join(" + "), "starting flotilla {}", env!("CARGO_PKG_VERSION"));
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let result = serve_config(config).await;
    telemetry.shutdown().await;
    result
}

/// Serves `config` until a shutdown signal.
async fn serve_config(config: Arc<Config>) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(address = %addr, scheme, "listening on {addr}");

    let auth = match flotilla_server::auth::Auth::new(&config.auth, &config.rate_limits) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if config.auth.mode == flotilla_spec::AuthMode::None {
        tracing::warn!(
            "AUTHENTICATION IS OFF (auth.mode: none): anyone who can reach {} may run workflows and register agents; \
             set auth.mode to api_key, jwt or any before exposing this server",
            config.server.listen
        );
    }
    let metrics = Arc::new(Metrics::new());
    let draining = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = flotilla_server::AppState::new(flotilla_server::AppShared {
        engine: Arc::new(OnceLock::new()),
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        draining: draining.clone(),
        shutdown: shutdown_rx.clone(),
        body_limit: config.server.body_limit.0,
        request_timeout: config.server.request_timeout.0,
        max_list_bytes: config.server.max_list_bytes.0 as usize,
        started: Instant::now(),
        auth,
        cors_origins: config.server.cors_origins.clone().into(),
        tls: config.server.tls.is_some(),
        rollouts: flotilla_server::Rollouts::new(config.storage.url.clone()),
    });
    let grace = config.server.shutdown_grace.0;
    let limits = flotilla_server::ConnLimits {
        header_read_timeout: config.server.header_read_timeout.0,
        idle_timeout: config.server.idle_timeout.0,
        max_connections: config.server.max_connections as usize,
    };
    let mut stop = shutdown_rx.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let server = match &config.server.tls {
        None => tokio::spawn(flotilla_server::serve(
            listener,
            state.clone(),
            stopped,
            grace,
            limits,
        )),
        Some(tls) => {
            let files = flotilla_server::tls::TlsFiles {
                cert: tls.cert.clone().into(),
                key: tls.key.clone().into(),
            };
            let listener = match flotilla_server::tls::TlsListener::new(listener, files) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: server.tls: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            tokio::spawn(flotilla_server::serve(
                listener,
                state.clone(),
                stopped,
                grace,
                limits,
            ))
        }
    };

    let startup = async {
        let store = open_store(&config).await?;
        store.migrate().await.context("applying migrations")?;
        let engine = Engine::start(config.clone(), store, metrics.clone())
            .await
            .context("starting the engine")?;
        anyhow::Ok(engine)
    };
    let engine = tokio::select! {
        r = startup => r?,
        _ = signal() => {
            let _ = shutdown_tx.send(true);
            let _ = server.await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let _ = state.engine.set(engine.clone());
    state.ready.store(true, Ordering::Release);
    tracing::info!(address = %addr, workflows = ?engine.workflow_names(), "ready");

    signal().await;
    // Readiness turns false at once, but the listener stays open for the drain delay: load
    // balancers take a moment to stop sending, and a closed port would refuse what they send.
    let delay = config.server.drain_delay.0.min(grace);
    tracing::info!(grace = ?grace, delay = ?delay, "shutdown requested: readiness off, draining");
    state.ready.store(false, Ordering::Release);
    draining.store(true, Ordering::Release);
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = signal() => tracing::info!("second signal: not waiting for the drain delay"),
    }
    let grace = grace.saturating_sub(delay);
    tracing::info!("no new requests; finishing in-flight ones");
    let _ = shutdown_tx.send(true);
    let (served, ()) = tokio::join!(server, engine.shutdown(grace));
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "server error during shutdown"),
        Err(e) => tracing::error!(error = %e, "server task failed"),
    }
    // Everything queued behind the last commit lands before the process exits.
    if let Err(e) = engine.store().commit(Vec::new()).await {
        tracing::error!(error = %e, "final flush failed");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `flotilla migrate`.
pub async fn migrate(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let loaded = match settings::load(args, Vec::new()) {
        Ok(l) => l,
        Err(e) => return Ok(settings::report(&e)),
    };
    let store = open_store(&loaded.config).await?;
    store.migrate().await.context("applying migrations")?;
    println!("migrations applied ({})", store.backend());
    Ok(ExitCode::SUCCESS)
}
