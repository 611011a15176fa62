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
//! | `instance.zone` (registered; its clients prefer instances in the same zone) | none | `[instance] zone = "eu-west-1a"` | `TRELLIS_INSTANCE__ZONE` | `--set` |
//! | `instance.weight` (registered; its share of calls, 0 drains it) | `100` | `[instance] weight = 50` | `TRELLIS_INSTANCE__WEIGHT` | `--set` |
//! | `log.format` | `text` | `[log] format = "json"` | `TRELLIS_LOG__FORMAT` | `--log-format` |
//! | `log.level` | `info` | `[log] level = "debug,h2=warn"` | `TRELLIS_LOG__LEVEL` or `RUST_LOG` | `--set log.level=...` |
//! | `log.access` | `false` | `[log] access = true` | `TRELLIS_LOG__ACCESS` | `--set log.access=true` |
//! | `trace.otlp_endpoint` | none | `[trace] otlp_endpoint = "http://127.0.0.1:4317"` | `TRELLIS_TRACE__OTLP_ENDPOINT` | `--set` |
//! | `shutdown.propagation_delay` | `1s` | `[shutdown] propagation_delay = "2s"` | `TRELLIS_SHUTDOWN__PROPAGATION_DELAY` | `--set` |
//! | `shutdown.drain_timeout` | `10s` | `[shutdown] drain_timeout = "30s"` | `TRELLIS_SHUTDOWN__DRAIN_TIMEOUT` | `--set` |
//! | `server.max_concurrent_calls` | `1024` | `[server] max_concurrent_calls = 256` | `TRELLIS_SERVER__MAX_CONCURRENT_CALLS` | `--set` |
//! | `server.http2.max_concurrent_streams` | `100` | `[server.http2] max_concurrent_streams = 200` | `TRELLIS_SERVER__HTTP2__MAX_CONCURRENT_STREAMS` | `--set` |
//! | `server.http2.max_header_list_size` | `16384` | `[server.http2] max_header_list_size = 32768` | `TRELLIS_SERVER__HTTP2__MAX_HEADER_LIST_SIZE` | `--set` |
//! | `server.http2.max_pending_accept_reset_streams` | `20` | `[server.http2] max_pending_accept_reset_streams = 50` | `TRELLIS_SERVER__HTTP2__MAX_PENDING_ACCEPT_RESET_STREAMS` | `--set` |
//! | `server.http2.max_local_error_reset_streams` | `1024` | `[server.http2] max_local_error_reset_streams = 512` | `TRELLIS_SERVER__HTTP2__MAX_LOCAL_ERROR_RESET_STREAMS` | `--set` |
//! | `server.http2.keepalive_interval` | `60s` | `[server.http2] keepalive_interval = "30s"` | `TRELLIS_SERVER__HTTP2__KEEPALIVE_INTERVAL` | `--set` |
//! | `server.http2.keepalive_timeout` | `20s` | `[server.http2] keepalive_timeout = "10s"` | `TRELLIS_SERVER__HTTP2__KEEPALIVE_TIMEOUT` | `--set` |
//! | `server.http2.idle_timeout` | `5m` | `[server.http2] idle_timeout = "15m"` | `TRELLIS_SERVER__HTTP2__IDLE_TIMEOUT` | `--set` |
//! | `server.http2.max_connection_age` | `1h` | `[server.http2] max_connection_age = "30m"` | `TRELLIS_SERVER__HTTP2__MAX_CONNECTION_AGE` | `--set` |
//! | `server.http2.max_connection_age_grace` | `30s` | `[server.http2] max_connection_age_grace = "1m"` | `TRELLIS_SERVER__HTTP2__MAX_CONNECTION_AGE_GRACE` | `--set` |
//! | `server.http2.max_frame_size` | `16384` | `[server.http2] max_frame_size = 65536` | `TRELLIS_SERVER__HTTP2__MAX_FRAME_SIZE` | `--set` |
//! | `server.http2.initial_stream_window_size` | `1048576` | `[server.http2] initial_stream_window_size = 262144` | `TRELLIS_SERVER__HTTP2__INITIAL_STREAM_WINDOW_SIZE` | `--set` |
//! | `server.http2.initial_connection_window_size` | `1048576` | `[server.http2] initial_connection_window_size = 4194304` | `TRELLIS_SERVER__HTTP2__INITIAL_CONNECTION_WINDOW_SIZE` | `--set` |
//! | `server.messages.max_decoding_size` | `4194304` (4 MiB) | `[server.messages] max_decoding_size = 16777216` | `TRELLIS_SERVER__MESSAGES__MAX_DECODING_SIZE` | `--set` |
//! | `server.messages.max_encoding_size` | `4194304` (4 MiB) | `[server.messages] max_encoding_size = 16777216` | `TRELLIS_SERVER__MESSAGES__MAX_ENCODING_SIZE` | `--set` |
//! | `clients."SERVICE".balance` | `peak_ewma` | `[clients."pkg.Svc"] balance = "round_robin"` | file only | file only |
//! | `clients."SERVICE".subset_size` | `32` (0: all) | `subset_size = 16` | file only | file only |
//! | `clients."SERVICE".max_decoding_size` | `4194304` (4 MiB) | `max_decoding_size = 16777216` | file only | file only |
//! | `clients."SERVICE".max_encoding_size` | `4194304` (4 MiB) | `max_encoding_size = 16777216` | file only | file only |
//! | `clients."SERVICE".methods.METHOD.timeout` | 10 s | `timeout = "500ms"` | file only | file only |
//! | `clients."SERVICE".methods.METHOD.max_attempts` | 3 | `max_attempts = 1` | file only | file only |
//! | `admin.listen` | off | `[admin] listen = "127.0.0.1:9090"` | `TRELLIS_ADMIN__LISTEN` | `--admin-listen` |
//! | `rest.listen` | the gRPC port | `[rest] listen = "0.0.0.0:8080"` | `TRELLIS_REST__LISTEN` | `--rest-listen` |
//! | `faults.delay` | `0s` | `[faults] delay = "50ms"` | `TRELLIS_FAULTS__DELAY` | `--set` |
//! | `faults.unavailable` | `false` | `[faults] unavailable = true` | `TRELLIS_FAULTS__UNAVAILABLE` | `--set` |
//! | `tls.cert`, `tls.key` | none (plaintext) | `[tls] cert = "svc.pem"` | `TRELLIS_TLS__CERT` | `--set` |
//! | `tls.client_ca` | none (no client certificates) | `[tls] client_ca = "ca.pem"` | `TRELLIS_TLS__CLIENT_CA` | `--set` |
//! | `tls.ca` | none | `[tls] ca = "ca.pem"` | `TRELLIS_TLS__CA` | `--set` |
//! | `tls.server_name` | each instance's host | `[tls] server_name = "payments.internal"` | `TRELLIS_TLS__SERVER_NAME` | `--set` |
//! | `tls.allow."SERVICE"` | any verified client | `[tls.allow] "pkg.Svc" = ["spiffe://..."]` | file only | file only |
//! | `tls.handshake_timeout` | `10s` (100ms to 60s) | `[tls] handshake_timeout = "5s"` | `TRELLIS_TLS__HANDSHAKE_TIMEOUT` | `--set` |
//! | `tls.max_handshakes` | `256` (1 to 65536) | `[tls] max_handshakes = 64` | `TRELLIS_TLS__MAX_HANDSHAKES` | `--set` |
//! | `tls.reload_interval` | `10s` (100ms to 1h) | `[tls] reload_interval = "1m"` | `TRELLIS_TLS__RELOAD_INTERVAL` | `--set` |
//!
//! The ranges of the `server.http2`, `server.messages` and message size
//! keys, and why each default: `docs/hardening.md`.
//!
//! A service's own settings live in a section named after it (for example
//! `[payment]`, `TRELLIS_PAYMENT__DATABASE`), read with
//! [`Context::section`](crate::Context::section). A double underscore in an
//! environment variable separates a section from its key. `--set KEY=VALUE`
//! sets any key from the command line. Client settings are keyed by full
//! service names, which contain dots, so they are set in the file (see
//! [`ClientConfig`]).
//!
//! # Misspelt keys
//!
//! Every key is checked, wherever it comes from, and a key nothing reads is
//! an error that names where it came from and the nearest known key:
//!
//! ```text
//! invalid configuration: `registy` (from environment variable TRELLIS_REGISTY): unknown key; did you mean `registry`?
//! ```
//!
//! - A key inside a known section (`[shutdown] drain_timout = "5s"`) is
//!   rejected when the configuration is loaded, as is a value of the wrong
//!   type.
//! - An unknown top-level key that is not a section (`registy = "..."`,
//!   `--set registy=...`, `TRELLIS_REGISTY`) is rejected when the
//!   configuration is loaded.
//! - An unknown section (`[shutdwn]`, `--set nosuch.key=1`) may be the
//!   service's own, so it is rejected once the service has had the chance to
//!   read it: when the server from [`Context::server`](crate::Context::server)
//!   binds, or when the setup code returns without serving. A binary that
//!   names its sections up front with [`App::sections`](crate::App::sections)
//!   has them checked as soon as the configuration is loaded.
//!
//! Keys inside a service's own section are checked by the type it is read
//! into: derive `#[serde(deny_unknown_fields)]` on it, as `order-payment`'s
//! `Settings` does. Every `TRELLIS_*` environment variable is read as
//! configuration (`TRELLIS_CONFIG` excepted), so an unrelated variable with
//! that prefix is rejected too.
//!
//! [`check_file`] checks a file alone, for tools that validate a file before
//! it is deployed.

mod tree;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::tree::{Node, Source};
use crate::admin::AdminConfig;
use crate::client::ClientConfig;
use crate::error::Error;
use crate::gateway::RestConfig;
use crate::registry::RegistryUrl;
use crate::server::{FaultsConfig, InstanceConfig, ServerConfig, ShutdownConfig};
use crate::telemetry::{LogConfig, TraceConfig};
use crate::transport::tls::TlsConfig;

/// The prefix of every environment variable Trellis reads.
pub const ENV_PREFIX: &str = "TRELLIS_";

/// The runtime's own settings. See the [module docs](self) for each key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the server listens; port 0 picks a free port.
    #[serde(with = "crate::listen")]
    pub listen: SocketAddr,
    /// The registry URL: where services register and find each other.
    /// Shown with its secrets (a password, `token=`) redacted.
    pub registry: RegistryUrl,
    /// The address registered for this instance: `HOST` (with the bound
    /// port) or `HOST:PORT`. By default the listen address; when listening on
    /// all interfaces (`0.0.0.0`, `[::]`), loopback, which only this machine
    /// can reach.
    pub advertise: Option<String>,
    /// What this instance registers about itself.
    pub instance: InstanceConfig,
    /// Logging.
    pub log: LogConfig,
    /// Trace export.
    pub trace: TraceConfig,
    /// Graceful shutdown timings.
    pub shutdown: ShutdownConfig,
    /// Server limits.
    pub server: ServerConfig,
    /// Client settings per called service, by full service name:
    /// `[clients."order.payment.v1.OrderPayment"]`.
    pub clients: BTreeMap<String, ClientConfig>,
    /// Injected faults, for chaos tests.
    pub faults: FaultsConfig,
    /// TLS and mutual TLS (`docs/tls.md`).
    pub tls: TlsConfig,
    /// The admin listener: metrics, health, readiness, status page.
    pub admin: AdminConfig,
    /// Where REST is served: the gRPC port, or a listener of its own.
    pub rest: RestConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry: "local://".into(),
            advertise: None,
            instance: InstanceConfig::default(),
            log: LogConfig::default(),
            trace: TraceConfig::default(),
            shutdown: ShutdownConfig::default(),
            server: ServerConfig::default(),
            clients: BTreeMap::new(),
            faults: FaultsConfig::default(),
            tls: TlsConfig::default(),
            admin: AdminConfig::default(),
            rest: RestConfig::default(),
        }
    }
}

impl Config {
    /// The top-level keys the runtime reads itself. Any other top-level key
    /// must be a service's own section.
    pub const KEYS: &'static [&'static str] = &[
        "listen",
        "registry",
        "advertise",
        "instance",
        "log",
        "trace",
        "shutdown",
        "server",
        "clients",
        "faults",
        "tls",
        "admin",
        "rest",
    ];
}

/// Checks the configuration file at `path` alone (no environment, no flags):
/// every unknown key and section, with the nearest known one, and every bad
/// value of the runtime's own keys and the registry URL. `own_sections` are
/// the sections the service reads itself; their values are the service's to
/// check.
///
/// # Errors
///
/// [`Error::Config`] with one message per problem, each naming the key, the
/// file and what is accepted.
pub fn check_file(path: &Path, own_sections: &[&str]) -> Result<(), Error> {
    let layers = Layers { root: file(path)? };
    let mut problems = layers.problems(Some(own_sections))?;
    if let Ok(url) = layers.extract::<String>("registry")
        && let Err(err) = crate::registry::Registry::from_url(&url)
    {
        problems.push(format!("`registry` (from file `{}`): {err}", path.display()));
    }
    into_result(problems)
}

/// The layers, before they are turned into a [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Layers {
    /// Every key set, with where it was set; what is not set takes its
    /// default when read.
    root: Node,
}

impl Layers {
    /// Stacks defaults, the file (if any), the `TRELLIS_*` environment
    /// variables and the flags, in that order of precedence, and checks every
    /// key. Unknown sections are checked now against `own_sections` when the
    /// service named its sections, and otherwise later with
    /// [`check_sections`].
    pub(crate) fn load(
        path: Option<&Path>,
        flags: Vec<(String, String)>,
        own_sections: Option<&[&str]>,
    ) -> Result<Self, Error> {
        let mut root = match path {
            Some(path) => file(path)?,
            None => Node::empty(),
        };
        let mut set = |path: Vec<String>, node: Node| root.insert(&path, node);
        // The conventional `RUST_LOG`, below Trellis's own variables.
        if let Some(level) = std::env::var("RUST_LOG").ok().filter(|l| !l.trim().is_empty()) {
            set(
                vec!["log".to_owned(), "level".to_owned()],
                Node::scalar(&level, Source::Env("RUST_LOG".to_owned())),
            );
        }
        // `TRELLIS_SHUTDOWN__DRAIN_TIMEOUT` is `shutdown.drain_timeout`.
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
                continue;
            };
            let key = name[ENV_PREFIX.len()..].to_lowercase();
            if key == "config" || key.is_empty() {
                continue;
            }
            let value = value.into_string().map_err(|_| {
                Error::Config(format!(
                    "environment variable {name} is not valid UTF-8; set it to text or unset it"
                ))
            })?;
            let path = key.split("__").map(str::to_owned).collect();
            set(path, Node::scalar(&value, Source::Env(name.to_owned())));
        }
        for (key, value) in flags {
            set(key.split('.').map(str::to_owned).collect(), Node::scalar(&value, Source::Flag));
        }
        let layers = Layers { root };
        into_result(layers.problems(own_sections)?)?;
        layers.config()?;
        Ok(layers)
    }

    /// A configuration file's text alone over the defaults, checked as a
    /// file is: what the fuzz target reads.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_toml(text: &str) -> Result<Config, Error> {
        let source = Source::File(Path::new("(input)").into());
        let root =
            Node::parse_toml(text, &source).map_err(|err| Error::Config(format!("not valid TOML: {err}")))?;
        let layers = Layers { root };
        into_result(layers.problems(None)?)?;
        layers.config()
    }

    /// The runtime's settings.
    pub(crate) fn config(&self) -> Result<Config, Error> {
        self.root.deserialize().map_err(|err| Error::Config(err.to_string()))
    }

    /// The section `key`, deserialized into `T` (a missing section is empty,
    /// so `#[serde(default)]` fields take their defaults).
    pub(crate) fn section<T: DeserializeOwned>(&self, key: &str) -> Result<T, Error> {
        self.extract(key).map_err(|messages| Error::Config(messages.join("; ")))
    }

    /// The top-level keys that are neither the runtime's nor in
    /// `own_sections`, where each came from, and whether it is a section.
    pub(crate) fn unknown(&self, own_sections: &[&str]) -> Result<Vec<Unknown>, Error> {
        let unknown = self.root.entries().filter(|(key, _)| {
            !Config::KEYS.contains(&key.as_str()) && !own_sections.contains(&key.as_str())
        });
        Ok(unknown
            .map(|(key, node)| Unknown {
                key: key.clone(),
                section: node.is_table(),
                sources: node.sources().iter().map(ToString::to_string).collect(),
            })
            .collect())
    }

    /// Every unknown key and every bad value of the runtime's own keys, one
    /// message each. Unknown sections are included only when the service's
    /// sections are known.
    fn problems(&self, own_sections: Option<&[&str]>) -> Result<Vec<String>, Error> {
        let unknown = self.unknown(own_sections.unwrap_or_default())?;
        let reported = unknown.iter().filter(|u| own_sections.is_some() || !u.section);
        let mut problems = describe_unknown(reported, own_sections.unwrap_or_default());
        let mut check = |result: Result<(), Vec<String>>| problems.extend(result.err().into_iter().flatten());
        check(self.check::<Listen>("listen"));
        check(self.check::<String>("registry"));
        check(self.check::<Option<String>>("advertise"));
        check(self.check::<InstanceConfig>("instance"));
        check(self.check::<LogConfig>("log"));
        check(self.check::<TraceConfig>("trace"));
        check(self.check::<ShutdownConfig>("shutdown"));
        check(self.check::<ServerConfig>("server"));
        check(self.check::<BTreeMap<String, ClientConfig>>("clients"));
        check(self.check::<FaultsConfig>("faults"));
        check(self.check::<TlsConfig>("tls").and_then(|()| self.tls_problems()));
        check(self.check::<AdminConfig>("admin"));
        check(self.check::<RestConfig>("rest"));
        Ok(problems)
    }

    /// The `[tls]` settings' problems taken together, each with where it
    /// was set.
    fn tls_problems(&self) -> Result<(), Vec<String>> {
        let tls: TlsConfig = self.extract("tls")?;
        let from = match self.root.get("tls").and_then(Node::source) {
            Some(source) => format!(" (from {source})"),
            None => String::new(),
        };
        let problems = tls.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems.into_iter().map(|p| format!("{p}{from}")).collect())
    }

    /// Whether the value at `key`, if there is one, is a `T`.
    fn check<T: DeserializeOwned>(&self, key: &str) -> Result<(), Vec<String>> {
        if self.root.get(key).is_some() { self.extract::<T>(key).map(drop) } else { Ok(()) }
    }

    /// The value at top-level `key` as a `T`, a missing section as an empty
    /// one.
    fn extract<T: DeserializeOwned>(&self, key: &str) -> Result<T, Vec<String>> {
        let empty = Node::empty();
        let node = self.root.get(key).unwrap_or(&empty);
        node.deserialize().map_err(|err| vec![err.under(key).to_string()])
    }
}

/// Rejects the `unknown` keys that are not in `sections` (the sections the
/// service read or named), with the nearest known key or section for each.
pub(crate) fn check_sections(unknown: &[Unknown], sections: &[&str]) -> Result<(), Error> {
    let left = unknown.iter().filter(|u| !sections.contains(&u.key.as_str()));
    into_result(describe_unknown(left, sections))
}

/// A top-level key that is not one of [`Config::KEYS`].
#[derive(Debug, Clone)]
pub(crate) struct Unknown {
    key: String,
    /// A table, which may be a service's own section.
    section: bool,
    /// Where it was set: `file `x.toml``, `environment variable TRELLIS_X`, ...
    sources: Vec<String>,
}

/// One message per unknown key: "`key` (from SOURCE): unknown key; did you
/// mean `nearest`?".
fn describe_unknown<'a>(unknown: impl Iterator<Item = &'a Unknown>, sections: &[&str]) -> Vec<String> {
    let mut known: Vec<&str> = Config::KEYS.iter().chain(sections).copied().collect();
    known.sort_unstable();
    known.dedup();
    unknown
        .map(|u| {
            let what = if u.section { "section" } else { "key" };
            let hint = match nearest(&u.key, &known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "expected one of {}",
                    known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            };
            format!("`{}` (from {}): unknown {what}; {hint}", u.key, u.sources.join(" and "))
        })
        .collect()
}

/// The known key most like `key`, if one is alike enough to be a misspelling.
pub(crate) fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn into_result(problems: Vec<String>) -> Result<(), Error> {
    if problems.is_empty() { Ok(()) } else { Err(Error::Config(problems.join("; "))) }
}

/// The file layer; a missing file is an error rather than an empty layer.
fn file(path: &Path) -> Result<Node, Error> {
    if !path.is_file() {
        return Err(Error::Config(format!(
            "config file `{}` does not exist (check the path given to --config)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::Config(format!("cannot read config file `{}`: {err}", path.display())))?;
    Node::parse_toml(&text, &Source::File(path.into()))
        .map_err(|err| Error::Config(format!("config file `{}` is not valid TOML: {err}", path.display())))
}

/// `listen`, checked on its own.
#[derive(Deserialize)]
#[expect(dead_code, reason = "only deserialized, to check the value")]
#[serde(transparent)]
struct Listen(#[serde(with = "crate::listen")] SocketAddr);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(toml: &str) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trellis.toml");
        std::fs::write(&path, toml).unwrap();
        Layers::load(Some(&path), Vec::new(), None)?.config()
    }

    /// Writes `toml` to `trellis.toml` in a new directory.
    fn file(toml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trellis.toml");
        std::fs::write(&path, toml).unwrap();
        (dir, path)
    }

    fn flags(flags: &[(&str, &str)]) -> Vec<(String, String)> {
        flags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn message(err: Error) -> String {
        match err {
            Error::Config(message) => message,
            other => panic!("expected a configuration error, got {other}"),
        }
    }

    #[test]
    fn http2_and_message_limits_are_read_and_checked_against_their_ranges() {
        let config = load(
            "[server.http2]\nmax_concurrent_streams = 8\nidle_timeout = \"10m\"\n\
             [server.messages]\nmax_decoding_size = 65536\n",
        )
        .unwrap();
        assert_eq!(config.server.http2.max_concurrent_streams, 8);
        assert_eq!(config.server.http2.idle_timeout, Duration::from_secs(600));
        assert_eq!(config.server.http2.max_pending_accept_reset_streams, 20);
        assert_eq!(config.server.messages.max_decoding_size, 65536);

        let err = message(load("[server.http2]\nmax_concurrent_streams = 0\n").unwrap_err());
        assert!(err.starts_with("`server.http2.max_concurrent_streams` (from file `"), "{err}");
        assert!(err.ends_with("0 is out of range; expected a whole number from 1 to 10000"), "{err}");
        let err = message(
            Layers::load(None, flags(&[("server.http2.keepalive_timeout", "1ms")]), None)
                .and_then(|layers| layers.config())
                .unwrap_err(),
        );
        assert_eq!(
            err,
            "`server.http2.keepalive_timeout` (from the command line): `1ms` is out of range; \
             expected a duration from 1s to 10m"
        );
        let err = message(load("[server.messages]\nmax_encoding_size = 12\n").unwrap_err());
        assert!(
            err.contains("`server.messages.max_encoding_size`") && err.contains("from 1024 to 268435456"),
            "{err}"
        );
        let err = message(load("[server.http2]\nmax_concurent_streams = 1\n").unwrap_err());
        assert!(err.contains("did you mean `max_concurrent_streams`?"), "{err}");
    }

    #[test]
    fn keys_are_the_fields_of_config() {
        let config = Config { advertise: Some("10.0.0.7".to_owned()), ..Config::default() };
        let value = serde_json::to_value(&config).unwrap();
        let mut fields: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = Config::KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn an_unknown_key_in_the_file_names_the_file_and_the_nearest_key() {
        let (_dir, path) = file("registy = \"etcd://10.0.0.5:2379\"\n");
        let err = message(Layers::load(Some(&path), Vec::new(), None).unwrap_err());
        assert_eq!(
            err,
            format!("`registy` (from file `{}`): unknown key; did you mean `registry`?", path.display())
        );
    }

    #[test]
    fn an_unknown_key_from_a_flag_names_the_command_line() {
        let err = message(Layers::load(None, flags(&[("lisen", "0.0.0.0:1")]), None).unwrap_err());
        assert_eq!(err, "`lisen` (from the command line): unknown key; did you mean `listen`?");
    }

    #[test]
    fn a_key_like_nothing_known_lists_the_known_keys() {
        let err = message(Layers::load(None, flags(&[("colour", "blue")]), None).unwrap_err());
        assert!(err.starts_with("`colour` (from the command line): unknown key; expected one of "), "{err}");
        for key in Config::KEYS {
            assert!(err.contains(&format!("`{key}`")), "{key} missing from {err}");
        }
    }

    #[test]
    fn an_unknown_section_waits_for_the_service_then_names_its_source() {
        let (_dir, path) = file("[shutdwn]\ndrain_timeout = \"30s\"\n");
        let layers = Layers::load(Some(&path), flags(&[("nosuch.key", "1")]), None).unwrap();
        let unknown = layers.unknown(&[]).unwrap();
        let err = message(check_sections(&unknown, &[]).unwrap_err());
        let shutdwn =
            format!("`shutdwn` (from file `{}`): unknown section; did you mean `shutdown`?", path.display());
        assert!(err.contains(&shutdwn), "{err}");
        assert!(err.contains("`nosuch` (from the command line): unknown section; expected one of "), "{err}");

        // Once the service reads `nosuch`, only the misspelling is left.
        assert_eq!(message(check_sections(&unknown, &["nosuch"]).unwrap_err()), shutdwn);
        check_sections(&unknown, &["nosuch", "shutdwn"]).unwrap();
    }

    #[test]
    fn a_section_set_in_two_layers_names_both() {
        let (_dir, path) = file("[paymnt]\ndatabase = \"p.sqlite3\"\n");
        let layers = Layers::load(Some(&path), flags(&[("paymnt.pool", "4")]), None).unwrap();
        let err = message(check_sections(&layers.unknown(&[]).unwrap(), &["payment"]).unwrap_err());
        assert_eq!(
            err,
            format!(
                "`paymnt` (from file `{}` and the command line): unknown section; did you mean `payment`?",
                path.display()
            )
        );
    }

    #[test]
    fn named_sections_are_checked_at_load_and_read_as_sections() {
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Payment {
            database: String,
        }
        let (_dir, path) = file("[payment]\ndatabase = \"p.sqlite3\"\n");
        let layers = Layers::load(Some(&path), Vec::new(), Some(&["payment"])).unwrap();
        assert!(layers.unknown(&["payment"]).unwrap().is_empty());
        assert_eq!(layers.section::<Payment>("payment").unwrap(), Payment { database: "p.sqlite3".into() });

        let err = message(Layers::load(Some(&path), Vec::new(), Some(&["status"])).unwrap_err());
        assert!(err.starts_with("`payment` (from file"), "{err}");
        assert!(err.ends_with("unknown section; expected one of `admin`, `advertise`, `clients`, `faults`, `instance`, `listen`, `log`, `registry`, `rest`, `server`, `shutdown`, `status`, `tls`, `trace`"), "{err}");
    }

    #[test]
    fn a_section_given_as_a_value_is_a_type_error() {
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        struct Payment {
            database: String,
        }
        let layers = Layers::load(None, flags(&[("payment", "x")]), Some(&["payment"])).unwrap();
        let err = message(layers.section::<Payment>("payment").unwrap_err());
        assert!(err.starts_with("`payment` (from the command line): found string \"x\""), "{err}");
    }

    #[test]
    fn a_misspelt_field_suggests_the_nearest() {
        let err = message(Layers::load(None, flags(&[("shutdown.drain_timout", "5s")]), None).unwrap_err());
        assert_eq!(
            err,
            "`shutdown.drain_timout` (from the command line): unknown field `drain_timout`; \
             did you mean `drain_timeout`?"
        );
    }

    #[test]
    fn check_file_accepts_a_good_file() {
        let (_dir, path) = file(
            "listen = \"0.0.0.0:50051\"\nregistry = \"static://order.payment.v1.OrderPayment=127.0.0.1:1\"\n\
             [shutdown]\ndrain_timeout = \"30s\"\n[log]\nformat = \"json\"\n\
             [clients.\"order.payment.v1.OrderPayment\"]\nbalance = \"round_robin\"\n\
             [clients.\"order.payment.v1.OrderPayment\".methods.Pay]\ntimeout = \"250ms\"\n\
             [payment]\ndatabase = \"p.sqlite3\"\n",
        );
        check_file(&path, &["payment"]).unwrap();
    }

    #[test]
    fn check_file_reports_every_problem() {
        let (_dir, path) = file(
            "registy = \"local://\"\nlisten = \"nowhere\"\n\
             [shutdwn]\ndrain_timeout = \"30s\"\n[shutdown]\ndrain_timeout = \"soon\"\n\
             [log]\nformat = \"xml\"\n[clients.\"a.v1.A\"]\nbalance = \"random\"\n\
             [payment]\ndatabase = \"p.sqlite3\"\n",
        );
        let err = message(check_file(&path, &["payment"]).unwrap_err());
        let from = format!("(from file `{}`)", path.display());
        for needle in [
            format!("`registy` {from}: unknown key; did you mean `registry`?"),
            format!("`shutdwn` {from}: unknown section; did you mean `shutdown`?"),
            format!("`listen` {from}: `nowhere` is not an address"),
            format!("`shutdown.drain_timeout` {from}"),
            format!("`log.format` {from}: `xml` is not accepted"),
            format!("`clients.\"a.v1.A\".balance` {from}: `random` is not accepted"),
        ] {
            assert!(err.contains(&needle), "{needle:?} missing from {err}");
        }
        assert!(!err.contains("payment"), "{err}");
        assert_eq!(err.matches(&from).count(), 6, "one message per problem: {err}");
    }

    #[test]
    fn check_file_checks_the_registry_url() {
        let (_dir, path) = file("registry = \"zookeeper://x:1\"\n");
        let err = message(check_file(&path, &[]).unwrap_err());
        assert!(err.starts_with("`registry` (from file"), "{err}");
        assert!(err.contains("zookeeper://x:1") && err.contains("scheme"), "{err}");
        let missing = path.with_file_name("missing.toml");
        assert!(message(check_file(&missing, &[]).unwrap_err()).contains("does not exist"));
    }

    #[test]
    fn tls_settings_are_checked_at_load() {
        let (_dir, path) = file("[tls]\ncert = \"svc.pem\"\nhandshake_timeout = \"5m\"\n");
        let err = message(Layers::load(Some(&path), Vec::new(), None).unwrap_err());
        let from = format!("(from file `{}`)", path.display());
        assert!(
            err.contains(&format!(
                "`tls.handshake_timeout` {from}: `5m` is out of range; expected from 100ms to 1m"
            )),
            "{err}"
        );
        let (_dir, path) = file("[tls]\ncert = \"svc.pem\"\n[tls.allow]\n\"a.v1.A\" = [\"spiffe://x/y\"]\n");
        let err = message(Layers::load(Some(&path), Vec::new(), None).unwrap_err());
        let from = format!("(from file `{}`)", path.display());
        assert!(err.contains("`tls.key` is missing") && err.contains(&from), "{err}");
        assert!(err.contains("`tls.allow` is set but `tls.client_ca` is not"), "{err}");
        let err = message(load("[tls]\nmax_handshakes = 0\n").unwrap_err());
        assert!(
            err.contains("`tls.max_handshakes`")
                && err.ends_with("0 is out of range; expected a whole number from 1 to 65536"),
            "{err}"
        );
        let config = load("[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\nreload_interval = \"1s\"\n").unwrap();
        assert_eq!(config.tls.reload_interval, Duration::from_secs(1));
        assert!(config.tls.serves_tls());
    }

    #[test]
    fn rest_listen_is_an_address_and_nothing_else() {
        let config = load("[rest]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert_eq!(config.rest.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(load("").unwrap().rest.listen, None, "REST shares the gRPC port by default");
        let err = message(
            Layers::load(None, flags(&[("rest.listen", "localhost")]), None)
                .and_then(|layers| layers.config())
                .unwrap_err(),
        );
        assert!(err.starts_with("`rest.listen` (from the command line)"), "{err}");
        assert!(err.contains("localhost"), "{err}");
        let err = message(load("[rest]\nlisen = \"127.0.0.1:1\"\n").unwrap_err());
        assert!(err.contains("did you mean `listen`?"), "{err}");
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
