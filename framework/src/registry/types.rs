//! The registry's shared vocabulary: what an instance is, the [`Backend`]
//! trait every kind of registry implements, and the [`Resolution`] it hands
//! out. Backends import this module; it imports none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tower::discover::Change;

use crate::error::Error;

/// How long a registration outlives its last renewal, unless its registry's
/// URL says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// A boxed, sendable future, as [`Backend`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an instance is spoken to: gRPC over plaintext HTTP/2, or over TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plaintext HTTP/2 (`h2c`).
    #[default]
    Http,
    /// HTTP/2 over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn is_http(&self) -> bool {
        *self == Scheme::Http
    }
}

/// Where one instance listens, and how it is spoken to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    host: String,
    port: u16,
    /// Absent (plaintext) in entries written before schemes existed.
    #[serde(default, skip_serializing_if = "Scheme::is_http")]
    scheme: Scheme,
}

impl Endpoint {
    /// An endpoint at `host` (a name or an IP address, without brackets) and `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint { host: host.into(), port, scheme: Scheme::Http }
    }

    /// The same endpoint, spoken to with `scheme`.
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// How the instance is spoken to.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host, a name or an IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URI a gRPC channel connects to, such as `http://10.0.0.7:50051`.
    pub fn uri(&self) -> String {
        format!("{}://{self}", self.scheme.as_str())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(addr: std::net::SocketAddr) -> Self {
        Endpoint::new(addr.ip().to_string(), addr.port())
    }
}

/// What an instance says about itself besides its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// The version of the service binary.
    pub version: Option<String>,
    /// The zone (rack, availability zone) the instance runs in.
    pub zone: Option<String>,
    /// Relative share of traffic; 100 is normal.
    pub weight: u32,
    /// Anything else.
    pub labels: BTreeMap<String, String>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata { version: None, zone: None, weight: 100, labels: BTreeMap::new() }
    }
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique among the instances of the service; chosen by the instance.
    pub id: String,
    /// The full service name, such as `order.payment.v1.OrderPayment`.
    pub service: String,
    /// Where it listens.
    pub endpoint: Endpoint,
    /// Version, zone, weight and labels.
    #[serde(default)]
    pub metadata: Metadata,
}

impl Instance {
    /// An instance of `service` at `endpoint`, with a fresh unique id.
    pub fn new(service: impl Into<String>, endpoint: Endpoint, metadata: Metadata) -> Self {
        Instance { id: unique_id(&endpoint), service: service.into(), endpoint, metadata }
    }
}

/// A process-unique, time-unique id such as `127.0.0.1-50051-8f3a09c1d2e4`.
fn unique_id(endpoint: &Endpoint) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    let host: String =
        endpoint.host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    format!("{host}-{}-{:012x}", endpoint.port, hasher.finish() & 0xffff_ffff_ffff)
}

/// A kind of registry. Implement this to add one; [`Registry`](super::Registry) wraps it.
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// Registers `instance` and keeps it registered (renewing any lease in
    /// the background, re-registering after an outage) until the returned
    /// [`Lease`] is [closed](Lease::deregister) or dropped.
    ///
    /// Fails if the registry cannot be reached now.
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>>;

    /// Follows the instances of `service`. The first answer is loaded before
    /// this returns, so a client started together with its servers sees them.
    ///
    /// Fails if the registry cannot be reached now.
    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>>;
}

/// A registration, kept alive until deregistered or dropped.
pub trait Lease: fmt::Debug + Send + Sync {
    /// Removes the instance from the registry now.
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
}

/// The lease of a registry that registers nothing (`static://`, `dns://`):
/// there is nothing to keep alive or remove.
#[derive(Debug)]
pub(super) struct NoLease;

impl Lease for NoLease {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// When a registry last answered for one resolution: each poll that
/// succeeded, each watch event or progress answer, whether or not anything
/// changed. Shared by the task that asks and whoever reports its age.
#[derive(Debug, Clone)]
pub struct Heartbeat(Option<Arc<std::sync::Mutex<std::time::Instant>>>);

impl Heartbeat {
    /// A heartbeat that answered just now.
    pub fn new() -> Self {
        Heartbeat(Some(Arc::new(std::sync::Mutex::new(std::time::Instant::now()))))
    }

    /// The heartbeat of a list that cannot change (`static://`): always current.
    pub fn always() -> Self {
        Heartbeat(None)
    }

    /// The registry answered.
    pub fn beat(&self) {
        if let Some(at) = &self.0 {
            *at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        }
    }

    /// How long ago the registry last answered.
    pub fn age(&self) -> Duration {
        match &self.0 {
            Some(at) => at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).elapsed(),
            None => Duration::ZERO,
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

/// The instances of one service, as a registry knows them, kept up to date
/// by a background task that stops when the resolution is dropped.
#[derive(Debug)]
pub struct Resolution {
    service: String,
    rx: watch::Receiver<Arc<[Instance]>>,
    heartbeat: Heartbeat,
    _task: AbortOnDrop,
}

impl Resolution {
    /// A resolution fed by `rx`, whose updates come from `task`.
    pub fn new(
        service: impl Into<String>,
        rx: watch::Receiver<Arc<[Instance]>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Resolution { service: service.into(), rx, heartbeat: Heartbeat::new(), _task: AbortOnDrop(task) }
    }

    /// The same, with the heartbeat `task` beats each time the registry answers.
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// When the registry last answered for this resolution; keep a clone
    /// before [`into_changes`](Self::into_changes) to report it.
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// A resolution that never changes.
    pub fn fixed(service: impl Into<String>, instances: Vec<Instance>) -> Self {
        let (tx, rx) = watch::channel(Arc::from(instances));
        // Keep the sender alive so `changed` waits instead of ending.
        let task = tokio::spawn(async move {
            tx.closed().await;
        });
        Resolution::new(service, rx, task).with_heartbeat(Heartbeat::always())
    }

    /// The service this follows.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The instances known now.
    pub fn current(&self) -> Arc<[Instance]> {
        self.rx.borrow().clone()
    }

    /// Waits for the next change and returns the instances after it; `None`
    /// when the resolution ended.
    pub async fn changed(&mut self) -> Option<Arc<[Instance]>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// The distinct endpoints known now (two instances may share one).
    pub fn endpoints(&self) -> BTreeSet<Endpoint> {
        self.rx.borrow().iter().map(|i| i.endpoint.clone()).collect()
    }

    /// Turns this into tower [`Change`]s of endpoints: an `Insert` for every
    /// endpoint known now, then an `Insert` or `Remove` as endpoints come and
    /// go. Endpoints shared by several instances are inserted once and
    /// removed when the last of them goes.
    pub fn into_changes(mut self) -> impl futures_core::Stream<Item = Change<Endpoint, Endpoint>> + Send {
        async_stream_changes(move |tx| async move {
            let mut known = BTreeSet::new();
            let mut next = Some(self.rx.borrow_and_update().clone());
            while let Some(instances) = next {
                let now: BTreeSet<Endpoint> = instances.iter().map(|i| i.endpoint.clone()).collect();
                for gone in known.difference(&now) {
                    if tx.send(Change::Remove(gone.clone())).await.is_err() {
                        return;
                    }
                }
                for new in now.difference(&known) {
                    if tx.send(Change::Insert(new.clone(), new.clone())).await.is_err() {
                        return;
                    }
                }
                known = now;
                next = self.changed().await;
            }
        })
    }
}

/// A stream fed by a task that sends into a channel.
fn async_stream_changes<T, F, Fut>(producer: F) -> impl futures_core::Stream<Item = T> + Send
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = AbortOnDrop(tokio::spawn(producer(tx)));
    ChangeStream { rx, _task: task }
}

struct ChangeStream<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
    _task: AbortOnDrop,
}

impl<T> futures_core::Stream for ChangeStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The error for a registry that cannot be reached.
pub(crate) fn unreachable(url: &str, err: impl fmt::Display, fix: &str) -> Error {
    Error::Registry { url: url.to_owned(), reason: format!("unreachable: {err}; {fix}") }
}
