//! Logging set-up: `tracing` events and spans to stderr, as text or JSON.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

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
    let filter = EnvFilter::try_new(&config.level).map_err(|e| {
        Error::Config(format!(
            "`log.level`: `{}` is not a log filter ({e}); expected a level such as `info` \
             or directives such as `info,trellis=debug`",
            config.level
        ))
    })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
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
