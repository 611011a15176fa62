//! Where services register and find each other, chosen by one URL.
//!
//! | URL | backend |
//! |---|---|
//! | `local://[DIR]` | the default: a directory of leased entries on this machine; nothing to run |
//! | `etcd://HOST:PORT[,HOST:PORT...]` | etcd v3, for clusters (cargo feature `etcd`) |
//! | `dns://[SERVER:PORT/]NAME[:PORT][?interval=5s]` | A/AAAA or SRV records, re-resolved periodically; read-only. `NAME:PORT` through the system's resolver in every build; SRV names and `SERVER:PORT/` need the cargo feature `dns` |
//! | `consul://HOST:PORT` | a Consul agent's HTTP API: TTL or gRPC health checks, blocking queries (cargo feature `consul`) |
//! | `eureka://HOST:PORT/PATH` | a Eureka server's REST API, Netflix (`/eureka/v2`) or Spring Cloud (`/eureka`) (cargo feature `eureka`) |
//! | `static://SERVICE=HOST:PORT[,HOST:PORT...][;SERVICE=...]` | fixed endpoints |
//!
//! Both sides use the same [`Registry`]: a server [registers](Registry::register)
//! an [`Instance`] of each service it serves and keeps it alive until it
//! shuts down; a client [resolves](Registry::resolve) a service name into a
//! [`Resolution`], which holds the current instances (loaded before
//! `resolve` returns) and follows every change.
//!
//! When the registry becomes unreachable, a resolution keeps the last
//! instances it knew, and a registration keeps trying to renew itself; each
//! logs the outage once and the recovery once.
//!
//! The Consul and Eureka backends are tested against in-process fakes of
//! the parts of those APIs they use (`tests/src/fakes`, each listing what it
//! does not model), and the fakes are checked with third-party clients that
//! were written against the real servers: `py-consul`, `py-eureka-client`
//! and `eureka-js-client`. No test here runs a real Consul agent or Eureka
//! server.
//!
//! Inside this module: `types` holds what every backend shares (imported by
//! the backends, importing none of them); `url` reads URLs; `poll` holds the
//! background loops (following by polling, renewing, outage logging);
//! `http` is the HTTP client of Consul and Eureka; `schemes` is the scheme
//! table, the one place that names every backend. Nothing below `schemes`
//! imports it, and nothing imports this file but through its re-exports.

#[cfg(feature = "consul")]
mod consul;
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "eureka")]
mod eureka;
mod fixed;
#[cfg(any(feature = "consul", feature = "eureka"))]
mod http;
mod local;
mod poll;
mod schemes;
mod types;
mod url;

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

pub(crate) use types::AbortOnDrop;
pub use types::{
    Backend, BoxFuture, DEFAULT_TTL, Endpoint, Heartbeat, Instance, Lease, Metadata, Resolution, Scheme,
};
pub use url::RegistryUrl;
pub(crate) use url::parse_endpoint;

/// A registry, chosen by URL. Cheap to clone: clones share the backend.
#[derive(Clone)]
pub struct Registry {
    url: Arc<str>,
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).field("backend", &self.backend).finish()
    }
}

impl Registry {
    /// Opens the registry that `url` names (see the [module docs](self)).
    /// Nothing is contacted yet.
    ///
    /// # Errors
    ///
    /// A malformed URL or an unknown scheme, with what is expected.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Ok(Registry { url: url::redact(url).into(), backend: schemes::open(url)? })
    }

    /// A registry over a custom backend.
    pub fn with_backend(url: impl Into<Arc<str>>, backend: impl Backend) -> Self {
        Registry { url: url.into(), backend: Arc::new(backend) }
    }

    /// The URL the registry was opened from, with secrets such as
    /// `token=...` replaced by `REDACTED`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `instance` until the lease is closed or dropped.
    ///
    /// # Errors
    ///
    /// When the registry cannot be reached.
    pub async fn register(&self, instance: Instance) -> Result<Box<dyn Lease>, Error> {
        self.backend.register(instance).await
    }

    /// Follows the instances of `service`; the first answer is loaded.
    ///
    /// # Errors
    ///
    /// When the registry cannot be reached.
    pub async fn resolve(&self, service: &str) -> Result<Resolution, Error> {
        self.backend.resolve(service).await
    }
}

impl std::str::FromStr for Registry {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        Registry::from_url(url)
    }
}

/// The parsers of what registries answer, for the fuzz targets
/// (`framework/fuzz/`): reached through [`crate::fuzzing`] only.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz {
    use super::Instance;

    /// A `local://` entry file or an etcd value: one instance as JSON.
    pub(crate) fn entry(json: &[u8]) -> Result<Instance, String> {
        serde_json::from_slice(json).map_err(|e| e.to_string())
    }

    /// The body of a Consul `/v1/health/service/SERVICE` answer.
    #[cfg(feature = "consul")]
    pub(crate) fn consul(body: &[u8], service: &str) -> Result<Vec<Instance>, String> {
        super::consul::decode_health(body, service, &mut std::collections::HashSet::new())
    }

    /// The body of a Eureka `/apps/APP` or `/apps/delta` answer.
    #[cfg(feature = "eureka")]
    pub(crate) fn eureka(body: &[u8], service: &str) -> Result<(Vec<Instance>, usize), String> {
        super::eureka::fuzz_body(body, service)
    }

    /// A DNS answer in wire format: its SRV targets.
    #[cfg(feature = "dns")]
    pub(crate) fn dns(message: &[u8]) -> Result<Vec<(String, u16, u32)>, String> {
        super::dns::fuzz_answer(message)
    }
}
