//! Logs to stderr: JSON (default) or pretty, filtered by level; `LOG_FORMAT` and `LOG_LEVEL`
//! override the config.

use flotilla_spec::LoggingConfig;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(cfg: &LoggingConfig) {
    let format = std::env::var("LOG_FORMAT").unwrap_or_else(|_| cfg.format.clone());
    let level = std::env::var("LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| cfg.level.clone());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}
