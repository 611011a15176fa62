//! The client's own settings, per called service: `trellis::config`
//! composes them into the configuration file's `[clients."SERVICE"]`
//! sections.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Balance;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::transport::tls::TlsConfig;

/// How this service calls one other service. Overrides what the proto says.
///
/// ```toml
/// [clients."order.payment.v1.OrderPayment"]
/// balance = "round_robin"            # peak_ewma (default), round_robin, consistent_hash
/// subset_size = 16                   # connect to at most 16 instances (default 32, 0 for all)
///
/// [clients."order.payment.v1.OrderPayment".methods.GetPayment]
/// timeout = "500ms"                  # the call's default deadline
/// max_attempts = 2                   # attempts when retrying is safe, the first included
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// How calls are spread over the instances.
    pub balance: Option<Balance>,
    /// The most instances a channel connects to (and watches the health
    /// of): in a larger fleet, a subset chosen by rendezvous hashing on a
    /// random per-channel seed, so clients spread evenly over the fleet and
    /// a change of one instance changes at most one member of a subset.
    /// Default [`DEFAULT_SUBSET_SIZE`]; 0 connects to every instance.
    pub subset_size: Option<usize>,
    /// Per-method overrides, by method name as in the proto.
    pub methods: BTreeMap<String, MethodConfig>,
    /// The largest response message taken, in bytes; 1 KiB to 256 MiB,
    /// default 4 MiB. A larger one fails the call with `OUT_OF_RANGE`.
    #[serde(deserialize_with = "message_size")]
    pub max_decoding_size: Option<usize>,
    /// The largest request message sent, in bytes; 1 KiB to 256 MiB,
    /// default 4 MiB. A larger one fails the call before it is sent.
    #[serde(deserialize_with = "message_size")]
    pub max_encoding_size: Option<usize>,
}

/// The default [`ClientConfig::subset_size`].
pub const DEFAULT_SUBSET_SIZE: usize = 32;

impl ClientConfig {
    /// The message size limits, (decoding, encoding), defaults filled in.
    pub fn message_limits(&self) -> (usize, usize) {
        let or_default = |size: Option<usize>| size.unwrap_or(crate::protocol::DEFAULT_MAX_MESSAGE_SIZE);
        (or_default(self.max_decoding_size), or_default(self.max_encoding_size))
    }
}

/// A message size in 1 KiB ..= 256 MiB.
fn message_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    const RANGE: std::ops::RangeInclusive<u64> = 1024..=256 * 1024 * 1024;
    let value = u64::deserialize(d)?;
    if !RANGE.contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "{value} is out of range; expected a whole number of bytes from {} to {}",
            RANGE.start(),
            RANGE.end()
        )));
    }
    usize::try_from(value).map(Some).map_err(|_| serde::de::Error::custom("too large for this machine"))
}

/// Overrides for one method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodConfig {
    /// The default deadline of a call.
    #[serde(with = "crate::duration::optional")]
    pub timeout: Option<Duration>,
    /// Attempts when retrying is safe, the first included (1 disables retries).
    pub max_attempts: Option<u32>,
}

/// What channels are made from: the registry their instances are found in,
/// and the configured settings per called service. A [`Registry`] alone
/// converts into one with no settings (each method's policy from its proto
/// applies); the application [`Context`](crate::Context) converts into one
/// with the `[clients."SERVICE"]` sections of its configuration.
///
/// ```
/// use trellis::client::{Balance, ClientConfig, Clients};
///
/// let registry = trellis::Registry::from_url("static://").unwrap();
/// let clients = Clients::new(registry).with_config(
///     "order.payment.v1.OrderPayment",
///     ClientConfig { balance: Some(Balance::RoundRobin), ..ClientConfig::default() },
/// );
/// assert_eq!(clients.config("order.payment.v1.OrderPayment").balance, Some(Balance::RoundRobin));
/// ```
#[derive(Debug, Clone)]
pub struct Clients {
    registry: Registry,
    /// By lowercased service name, as environment variables are lowercased.
    configs: Arc<BTreeMap<String, ClientConfig>>,
    /// The `[tls]` settings for `https` instances.
    tls: Option<Arc<TlsConfig>>,
    metrics: Option<Metrics>,
    /// The zone this process runs in, whose instances its calls prefer.
    zone: Option<String>,
}

impl Clients {
    /// Channels through `registry`, with no settings of their own.
    pub fn new(registry: Registry) -> Self {
        Clients { registry, configs: Arc::default(), tls: None, metrics: None, zone: None }
    }

    /// The same, reaching `https` instances with `tls` (`tls.ca`, and
    /// `tls.cert`/`tls.key` as the client's identity; see `docs/tls.md`).
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// The TLS settings for `https` instances.
    pub(crate) fn tls(&self) -> Option<Arc<TlsConfig>> {
        self.tls.clone()
    }

    /// The same, with `configs` by full service name.
    pub fn with_configs(mut self, configs: BTreeMap<String, ClientConfig>) -> Self {
        let normalized = configs.into_iter().map(|(service, config)| (service.to_ascii_lowercase(), config));
        Arc::make_mut(&mut self.configs).extend(normalized);
        self
    }

    /// The same, with `config` for calls to `service` (a full name).
    pub fn with_config(self, service: &str, config: ClientConfig) -> Self {
        self.with_configs(BTreeMap::from([(service.to_owned(), config)]))
    }

    /// The same, with every channel counting into `metrics` and shown on
    /// its status page (the application [`Context`](crate::Context) does this).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The same, for a process running in `zone`: its channels prefer the
    /// instances registered in the same zone while those are healthy and
    /// not overloaded (the application [`Context`](crate::Context) sets
    /// this from `instance.zone`). See [`Balance`] for the rule.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The zone channels prefer, if any.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The metrics channels count into, if any.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// The registry instances are found in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The settings for calls to `service` (matched ignoring case).
    pub fn config(&self, service: &str) -> ClientConfig {
        self.configs.get(&service.to_ascii_lowercase()).cloned().unwrap_or_default()
    }
}

impl From<Registry> for Clients {
    fn from(registry: Registry) -> Self {
        Clients::new(registry)
    }
}

impl From<&Registry> for Clients {
    fn from(registry: &Registry) -> Self {
        Clients::new(registry.clone())
    }
}

impl From<&Clients> for Clients {
    fn from(clients: &Clients) -> Self {
        clients.clone()
    }
}
