//! Logging set-up: `tracing` events and spans to stderr, as text or JSON.

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
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.finish().with(filter).try_init(),
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).finish().with(filter).try_init()
        }
    };
    Ok(())
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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".to_owned() }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
