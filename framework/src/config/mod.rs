//! Layered configuration: defaults < TOML file < environment < flags.
//!
//! Every key can be set in each layer:
//!
//! | key | default | file (`--config`) | environment | flag |
//! |---|---|---|---|---|
//! | `listen` | `127.0.0.1:0` | `listen = "0.0.0.0:50051"` | `TRELLIS_LISTEN` | `--listen` |
//! | `registry` | `local://` | `registry = "etcd://10.0.0.5:2379"` | `TRELLIS_REGISTRY` | `--registry` |
//! | `advertise` | the listen address | `advertise = "10.0.0.7"` | `TRELLIS_ADVERTISE` | `--set` |
//! | `instance.version` | the binary's version | `[instance] version = "1.4.2"` | `TRELLIS_INSTANCE__VERSION` | `--set` |
//! | `instance.zone` | none | `[instance] zone = "eu-west-1a"` | `TRELLIS_INSTANCE__ZONE` | `--set` |
//! | `instance.weight` | `100` | `[instance] weight = 50` | `TRELLIS_INSTANCE__WEIGHT` | `--set` |
//! | `log.format` | `text` | `[log] format = "json"` | `TRELLIS_LOG__FORMAT` | `--log-format` |
//! | `log.level` | `info` | `[log] level = "debug,h2=warn"` | `TRELLIS_LOG__LEVEL` | `--set log.level=...` |
//! | `shutdown.propagation_delay` | `1s` | `[shutdown] propagation_delay = "2s"` | `TRELLIS_SHUTDOWN__PROPAGATION_DELAY` | `--set` |
//! | `shutdown.drain_timeout` | `10s` | `[shutdown] drain_timeout = "30s"` | `TRELLIS_SHUTDOWN__DRAIN_TIMEOUT` | `--set` |
//! | `server.max_concurrent_calls` | `1024` | `[server] max_concurrent_calls = 256` | `TRELLIS_SERVER__MAX_CONCURRENT_CALLS` | `--set` |
//! | `clients."SERVICE".balance` | `peak_ewma` | `[clients."pkg.Svc"] balance = "round_robin"` | file only | file only |
//! | `clients."SERVICE".methods.METHOD.timeout` | 10 s | `timeout = "500ms"` | file only | file only |
//! | `clients."SERVICE".methods.METHOD.max_attempts` | 3 | `max_attempts = 1` | file only | file only |
//! | `faults.delay` | `0s` | `[faults] delay = "50ms"` | `TRELLIS_FAULTS__DELAY` | `--set` |
//! | `faults.unavailable` | `false` | `[faults] unavailable = true` | `TRELLIS_FAULTS__UNAVAILABLE` | `--set` |
//!
//! A service's own settings live in a section named after it (for example
//! `[payment]`, `TRELLIS_PAYMENT__DATABASE`), read with
//! [`Context::section`](crate::Context::section). A double underscore in an
//! environment variable separates a section from its key. `--set KEY=VALUE`
//! sets any key from the command line. Client settings are keyed by full
//! service names, which contain dots, so they are set in the file (see
//! [`ClientConfig`](crate::client::ClientConfig)).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::ClientConfig;
use crate::error::Error;
use crate::server::{FaultsConfig, InstanceConfig, ServerConfig, ShutdownConfig};
use crate::telemetry::LogConfig;

/// The prefix of every environment variable Trellis reads.
pub const ENV_PREFIX: &str = "TRELLIS_";

/// The runtime's own settings. See the [module docs](self) for each key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the server listens; port 0 picks a free port.
    #[serde(with = "listen_addr")]
    pub listen: SocketAddr,
    /// The registry URL: where services register and find each other.
    pub registry: String,
    /// The address registered for this instance: `HOST` (with the bound
    /// port) or `HOST:PORT`. By default the listen address; when listening on
    /// all interfaces (`0.0.0.0`, `[::]`), loopback, which only this machine
    /// can reach.
    pub advertise: Option<String>,
    /// What this instance registers about itself.
    pub instance: InstanceConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown timings.
    pub shutdown: ShutdownConfig,
    /// Server limits.
    pub server: ServerConfig,
    /// Client settings per called service, by full service name:
    /// `[clients."order.payment.v1.OrderPayment"]`.
    pub clients: BTreeMap<String, ClientConfig>,
    /// Injected faults, for chaos tests.
    pub faults: FaultsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry: "local://".to_owned(),
            advertise: None,
            instance: InstanceConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            server: ServerConfig::default(),
            clients: BTreeMap::new(),
            faults: FaultsConfig::default(),
        }
    }
}

/// The layers, before they are turned into a [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Layers {
    figment: Figment,
}

impl Layers {
    /// Stacks defaults, the file (if any), the `TRELLIS_*` environment
    /// variables and the flags, in that order of precedence.
    pub(crate) fn load(file: Option<&Path>, flags: Vec<(String, String)>) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "config file `{}` does not exist (check the path given to --config)",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(|key| key.as_str() != "config")
                .lowercase(true)
                .map(|key| key.as_str().to_owned().into())
                .global(),
        );
        for (key, value) in flags {
            figment = figment.merge(Serialized::global(&key, parse_value(&value)));
        }
        let layers = Layers { figment };
        layers.config()?;
        Ok(layers)
    }

    /// The runtime's settings.
    pub(crate) fn config(&self) -> Result<Config, Error> {
        self.figment.extract().map_err(config_error)
    }

    /// The section `key`, deserialized into `T` (a missing section is empty,
    /// so `#[serde(default)]` fields take their defaults).
    pub(crate) fn section<T: DeserializeOwned>(&self, key: &str) -> Result<T, Error> {
        self.figment.focus(key).extract().map_err(|err| {
            let messages: Vec<String> = err
                .into_iter()
                .map(|mut e| {
                    e.path.insert(0, key.to_owned());
                    describe(&e)
                })
                .collect();
            Error::Config(messages.join("; "))
        })
    }
}

/// A flag's value: a TOML scalar (`5`, `true`) when it parses as one,
/// otherwise the string as given.
fn parse_value(raw: &str) -> figment::value::Value {
    raw.parse::<figment::value::Value>().unwrap_or_else(|_| raw.into())
}

fn config_error(err: figment::Error) -> Error {
    let messages: Vec<String> = err.into_iter().map(|e| describe(&e)).collect();
    Error::Config(messages.join("; "))
}

/// One error as "`key` (from SOURCE): what is wrong; what is accepted".
fn describe(err: &figment::Error) -> String {
    use figment::error::Kind;
    let key = err.path.join(".");
    let what = if key.is_empty() { "configuration".to_owned() } else { format!("`{key}`") };
    let one_of = |options: &[&str]| options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
    let problem = match &err.kind {
        Kind::UnknownVariant(found, expected) => {
            format!("`{found}` is not accepted; expected one of {}", one_of(expected))
        }
        Kind::UnknownField(found, []) => {
            format!("unknown field `{found}`; this section takes no settings")
        }
        Kind::UnknownField(found, expected) => {
            format!("unknown field `{found}`; expected one of {}", one_of(expected))
        }
        Kind::InvalidType(actual, expected) => format!("found {actual}, expected {expected}"),
        other => other.to_string(),
    };
    let source = err.metadata.as_ref().map(|meta| match &meta.source {
        Some(figment::Source::File(path)) => format!("file `{}`", path.display()),
        _ if meta.name.contains("environment") => {
            format!("environment variable {ENV_PREFIX}{}", err.path.join("__").to_uppercase())
        }
        // Defaults cannot be wrong, so anything else came from a flag.
        _ => "the command line".to_owned(),
    });
    match source {
        Some(source) => format!("{what} (from {source}): {problem}"),
        None => format!("{what}: {problem}"),
    }
}

mod listen_addr {
    use std::net::{SocketAddr, ToSocketAddrs};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let raw = String::deserialize(d)?;
        if let Ok(addr) = raw.parse() {
            return Ok(addr);
        }
        raw.to_socket_addrs().ok().and_then(|mut addrs| addrs.next()).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{raw}` is not an address to listen on; expected HOST:PORT such as \
                 127.0.0.1:50051, 0.0.0.0:8080 or [::]:0 (port 0 picks a free port)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(toml: &str) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trellis.toml");
        std::fs::write(&path, toml).unwrap();
        Layers::load(Some(&path), Vec::new())?.config()
    }

    #[test]
    fn client_settings_come_from_the_file() {
        let config = load(
            "[clients.\"order.payment.v1.OrderPayment\"]\nbalance = \"round_robin\"\n\
             [clients.\"order.payment.v1.OrderPayment\".methods.GetPayment]\ntimeout = \"250ms\"\nmax_attempts = 2\n",
        )
        .unwrap();
        let client = &config.clients["order.payment.v1.OrderPayment"];
        assert_eq!(client.balance, Some(crate::client::Balance::RoundRobin));
        let method = client.methods["GetPayment"];
        assert_eq!((method.timeout, method.max_attempts), (Some(Duration::from_millis(250)), Some(2)));
    }

    #[test]
    fn bad_client_settings_name_the_key_and_the_choices() {
        let err = load("[clients.\"a.v1.A\"]\nbalance = \"random\"\n").unwrap_err().to_string();
        assert!(err.contains("balance") && err.contains("random") && err.contains("`round_robin`"), "{err}");
        let err = load("[clients.\"a.v1.A\".methods.M]\ntimeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("timeout") && err.contains("soon") && err.contains("trellis.toml"), "{err}");
    }
}
