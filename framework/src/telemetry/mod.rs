//! Logging and trace export: `tracing` events and spans to stderr, as text
//! or JSON, each line written inside a call carrying the call's `trace_id`
//! and `span_id` ([`format`]); finished spans to an OTLP collector with the
//! `otel` feature ([`span`]). The trace context itself lives in
//! [`crate::context`], below every layer that reads it.
//!
//! The level comes from `log.level`; `RUST_LOG`, when set, is read as the
//! environment layer of that key (a file's `log.level` yields to it, a
//! `TRELLIS_LOG__LEVEL` or `--set log.level=...` beats it).

mod format;
#[cfg(feature = "otel")]
mod otlp;
pub mod span;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::Error;

/// Installs the global `tracing` subscriber described by `config`.
///
/// Does nothing if a subscriber is already installed (as in tests that set
/// their own).
///
/// # Errors
///
/// When `log.level` is not a valid filter.
pub fn init(config: &LogConfig) -> Result<(), Error> {
    // Targets decides from a callsite's level and target alone, so a
    // disabled callsite is never asked again: no per-call filtering.
    let parsed =
        check_filter(&config.level).and_then(|()| config.level.parse::<Targets>().map_err(|e| e.to_string()));
    let filter = parsed.map_err(|e| {
        Error::Config(format!(
            "`log.level`: `{}` is not a log filter ({e}); expected a level such as `info` \
             or directives such as `info,trellis=debug,h2=warn`",
            config.level
        ))
    })?;
    // The builder's own ceiling (INFO by default) would hide what `log.level`
    // asks for below it: the filter alone decides.
    // Colours only for a terminal: a file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::level_filters::LevelFilter::TRACE);
    let _ = match config.format {
        LogFormat::Text => builder.event_format(format::Text).finish().with(filter).try_init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(format::JsonLines::new())
            .finish()
            .with(filter)
            .try_init(),
    };
    Ok(())
}

/// Starts exporting spans as `service` when `config` names a collector.
///
/// # Errors
///
/// When `trace.otlp_endpoint` is not an `http://` URL, or is set in a
/// binary built without the `otel` feature.
pub fn init_export(config: &TraceConfig, service: &str) -> Result<(), Error> {
    let Some(endpoint) = config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(());
    };
    #[cfg(feature = "otel")]
    {
        otlp::install(endpoint, service)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = service;
        Err(Error::Config(format!(
            "`trace.otlp_endpoint` is `{endpoint}`, but this binary was built without OTLP export; \
             build it with the `otel` feature of trellis, or unset the key"
        )))
    }
}

/// Sends the spans still queued, waiting at most `timeout`; at exit.
pub fn flush(timeout: Duration) {
    #[cfg(feature = "otel")]
    otlp::flush(timeout);
    #[cfg(not(feature = "otel"))]
    let _ = timeout;
}

/// Rejects what `Targets` would read leniently: a directive is a level
/// (`info`), a target (`h2`), or `target=level`, and a target is a Rust path.
fn check_filter(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = directive.split_once('=').unwrap_or((directive, "info"));
        let path_like =
            target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
        if target.is_empty() || !path_like {
            return Err(format!("`{directive}` names no module path"));
        }
        level.parse::<tracing::level_filters::LevelFilter>().map_err(|e| format!("`{directive}`: {e}"))?;
    }
    Ok(())
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Human-readable lines or one JSON object per line.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,trellis=debug`.
    pub level: String,
    /// One `INFO` line per call served (target `trellis::access`), with
    /// method, status, duration, peer and the trace and span ids.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".to_owned(), access: false }
    }
}

/// Trace export settings (section `trace`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// The OTLP/gRPC collector spans are sent to, `http://HOST:PORT`; none
    /// by default. Needs the `otel` feature.
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
