//! Logs and traces.
//!
//! Logs go to stderr, JSON (default) or pretty, filtered by `logging.level` (`LOG_FORMAT`
//! and `LOG_LEVEL` override the config), and optionally to rotated files. JSON lines carry
//! the `trace_id` and `span_id` of the span they were written in.
//!
//! Spans (request → run → step → agent call) always get OpenTelemetry ids, so callers'
//! `traceparent` headers are continued and agents receive ours; they are exported over
//! OTLP/HTTP (protobuf) when `observability.otlp.endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, sampled by `observability.sample_ratio` unless the caller decided.

use std::fmt;

use anyhow::Context as _;
use flotilla_spec::Config;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter and the log file writer alive; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    provider: SdkTracerProvider,
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Where spans are exported: the config, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
/// is), else `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`).
fn traces_endpoint(config: &Config) -> Option<String> {
    let base = |b: &str| format!("{}/v1/traces", b.trim_end_matches('/'));
    if let Some(otlp) = &config.observability.otlp {
        return Some(base(&otlp.endpoint));
    }
    if let Ok(full) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        && !full.is_empty()
    {
        return Some(full);
    }
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|b| !b.is_empty())
        .map(|b| base(&b))
}

fn tracer_provider(config: &Config) -> anyhow::Result<(SdkTracerProvider, Option<String>)> {
    let o = &config.observability;
    let ratio = o.sample_ratio.unwrap_or(1.0);
    let name = o.service_name.clone().unwrap_or_else(|| "flotilla".into());
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(name)
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        );
    let endpoint = traces_endpoint(config);
    if let Some(url) = &endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .build()
            .with_context(|| format!("building the OTLP exporter for {url}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok((builder.build(), endpoint))
}

/// Logs of a command that is not a server (`flotilla run`): none unless `LOG_LEVEL` (or
/// `RUST_LOG`) asks, then readable lines on stderr, coloured only on a terminal.
pub fn init_for_command() -> anyhow::Result<()> {
    let Ok(level) = std::env::var("LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG")) else {
        return Ok(());
    };
    let filter = EnvFilter::try_new(&level).with_context(|| {
        format!("invalid LOG_LEVEL `{level}` (try info, or flotilla_engine=debug,info)")
    })?;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
    Ok(())
}

/// Installs the global subscriber: stderr (and file) logs plus OpenTelemetry spans.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let cfg = &config.logging;
    let format = std::env::var("LOG_FORMAT").unwrap_or_else(|_| cfg.format.clone());
    let level = std::env::var("LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| cfg.level.clone());
    let filter = |level: &str| {
        EnvFilter::try_new(level).with_context(|| {
            format!(
                "invalid log level or filter `{level}` (try info, or flotilla_engine=debug,info)"
            )
        })
    };
    let (provider, endpoint) = tracer_provider(config)?;
    // Our spans (targets `flotilla*`), whatever the log level: they carry the trace context.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flotilla"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target("flotilla", LevelFilter::INFO));
    let stderr = if format == "pretty" {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter(&level)?)
            .boxed()
    } else {
        json_layer(std::io::stderr)
            .with_filter(filter(&level)?)
            .boxed()
    };
    let (file, guard) = match &cfg.file {
        None => (None, None),
        Some(f) => {
            let rotation = match f.rotation.as_str() {
                "hourly" => tracing_appender::rolling::Rotation::HOURLY,
                "never" => tracing_appender::rolling::Rotation::NEVER,
                _ => tracing_appender::rolling::Rotation::DAILY,
            };
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix("flotilla")
                .filename_suffix("log")
                .max_log_files(f.keep.max(1))
                .build(&f.dir)
                .with_context(|| format!("opening log files in {}", f.dir))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (
                Some(json_layer(writer).with_filter(filter(&level)?).boxed()),
                Some(guard),
            )
        }
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(stderr)
        .with(file)
        .try_init()
        .context("installing the log subscriber")?;
    if let Some(url) = endpoint {
        tracing::info!(endpoint = %url, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry {
        provider,
        _file: guard,
    })
}

/// JSON lines with `trace_id` and `span_id`.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .map_event_format(WithTraceIds)
}

/// Adds the current span's OpenTelemetry `trace_id` and `span_id` to each JSON line.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            let cx = tracing::dispatcher::get_default(|d| {
                tracing_opentelemetry::get_otel_context(&span.id(), d)
            })?;
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(body) => writeln!(
                writer,
                "{body},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}
