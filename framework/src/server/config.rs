//! The server's own settings: limits, shutdown timings, what an instance
//! registers about itself, and injected faults. `trellis::config` composes
//! them into the configuration file's `[server]`, `[shutdown]`,
//! `[instance]` and `[faults]` sections.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limits::{Http2Config, MessageLimits};

/// The default cap on calls running at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// Server limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Application calls that may run at once; past that, calls are shed.
    pub max_concurrent_calls: usize,
    /// HTTP/2 limits per connection (`[server.http2]`).
    pub http2: Http2Config,
    /// Message size limits (`[server.messages]`).
    pub messages: MessageLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            http2: Http2Config::default(),
            messages: MessageLimits::default(),
        }
    }
}

/// Graceful shutdown timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to keep serving after turning `NOT_SERVING`, so that health
    /// checkers and registries stop sending traffic before the drain.
    #[serde(with = "crate::duration")]
    pub propagation_delay: Duration,
    /// How long in-flight calls may take to finish once draining starts.
    #[serde(with = "crate::duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { propagation_delay: Duration::from_secs(1), drain_timeout: Duration::from_secs(10) }
    }
}

/// What an instance registers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// The version; the binary's own when unset.
    pub version: Option<String>,
    /// The zone the instance runs in.
    pub zone: Option<String>,
    /// Relative share of traffic; 100 is normal.
    pub weight: u32,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig { version: None, zone: None, weight: 100 }
    }
}

/// Injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Added to every application call (not to health or reflection).
    #[serde(with = "crate::duration")]
    pub delay: Duration,
    /// Answer every application call with `UNAVAILABLE`.
    pub unavailable: bool,
}
