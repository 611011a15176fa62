//! Logging set-up: `tracing` events and spans to stderr, as text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
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
