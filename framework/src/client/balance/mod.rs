//! The balancer: picks an instance for each attempt.
//!
//! It follows the service's instances through the registry (a watch of
//! instances turned into tower `Change`s, `discover.rs`), keeps one
//! [`EndpointService`] per endpoint, and sends each attempt to one of them
//! (`pick.rs`): candidates are the endpoints whose server says it is
//! serving, not ejected, and not yet tried by this call (the [`Tried`] the
//! retry layer puts in the request). When more than half are ejected (the
//! panic threshold), ejection is ignored. An ejected endpoint whose
//! ejection period is over gets the next attempt as its probe. Among the
//! candidates, [`Balance`] picks: power of two choices over peak-EWMA x
//! (calls in flight + 1) (default), round robin, or rendezvous hashing on
//! the call's [`HashKey`].
//!
//! Each endpoint carries its instance's registered weight and zone
//! (`discover.rs`). The weight sets its share of calls: under power of two
//! choices both draws are in proportion to weight and load is compared per
//! unit of weight; round robin gives each endpoint its weight's share of
//! every cycle, interleaved; rendezvous hashing weighs its scores
//! (logarithmic method), so each endpoint wins its weight's share of keys.
//! Weight 0 drains an endpoint: it gets calls only when no other can take
//! them. A client in a zone ([`Clients::with_zone`](super::Clients::with_zone),
//! `instance.zone`) picks among its zone's candidates, unless none is left
//! or its zone's pick is more than twice as slow as another zone's plus
//! 5 ms (the lower of mean and decayed peak latency, or the age of its calls
//! in flight if it has stalled); then the call goes to another zone.
//! Consistent hashing ignores zones, so every client routes a key alike.
//!
//! In a fleet larger than the subset size (`clients."SERVICE".subset_size`,
//! default 32), a channel connects to, watches the health of and balances
//! over a subset only, chosen by weighted rendezvous hashing on a random
//! seed of its own (`discover.rs`): clients spread about evenly over the
//! fleet, an instance that comes or goes changes at most one member of a
//! subset, and a client in a zone takes three quarters of its subset from
//! its zone.
//!
//! An attempt made before any instance is known waits for one, until the
//! call's [`Deadline`]; then it fails with [`CallError::NoInstance`], which
//! says whether nothing is registered or the registry cannot be followed.
//! Every 200 ms the balancer also looks for an endpoint far slower than its
//! peers (its mean latency above 4x the median and 10 ms more) and ejects it
//! (`outlier.rs`).

mod discover;
mod hash;
pub(crate) mod hash_field;
mod outlier;
mod pick;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::util::Oneshot;
use tower_service::Service;

pub use self::hash::HashKey;
use self::pick::{Endpoints, Member};
use super::deadline::Deadline;
use super::endpoint::{EndpointService, EndpointState, OutlierLimit, Probe};
use super::stats::Counters;
use crate::error::{BoxError, CallError, Error};
use crate::metrics::{BreakerSnapshot, ChannelSnapshot, EndpointSnapshot};
use crate::registry::{AbortOnDrop, Endpoint, Registry};
use crate::transport::Connection;

/// How a channel spreads calls over endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices over peak-EWMA latency x calls in flight, both
    /// draws in proportion to weight, load compared per unit of weight.
    #[default]
    PeakEwma,
    /// Each endpoint in turn, as many turns per cycle as its weight's share.
    RoundRobin,
    /// The same endpoint for the same [`HashKey`], each endpoint owning its
    /// weight's share of keys.
    ConsistentHash,
}

/// How a balancer chooses: its strategy, the client's zone, and the most
/// endpoints it connects to (0: all).
#[derive(Debug, Clone, Default)]
pub(crate) struct Routing {
    pub(crate) balance: Balance,
    pub(crate) zone: Option<String>,
    pub(crate) subset_size: usize,
}

/// The endpoints one call has tried, so each retry or hedge goes elsewhere.
/// The retry layer puts one in the request; the balancer adds to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(pub(crate) Arc<Mutex<smallvec::SmallVec<[Arc<EndpointState>; 2]>>>);

/// Makes the transport to one endpoint, and the task that follows its
/// health, if any.
pub(crate) type Connector<S> =
    Arc<dyn Fn(&Arc<EndpointState>) -> Result<(S, Option<AbortOnDrop>), Error> + Send + Sync>;

/// The transport of a real channel: a connection made on the first call,
/// with its server's `grpc.health.v1` status followed.
pub(crate) fn connect(tls: Option<Arc<crate::transport::tls::TlsConfig>>) -> Connector<Connection> {
    Arc::new(move |state: &Arc<EndpointState>| {
        let conn = Connection::new(state.endpoint(), tls.as_deref())?;
        let health = tokio::spawn(super::endpoint::watch_health(conn.clone(), Arc::downgrade(state)));
        Ok((conn, Some(AbortOnDrop(health))))
    })
}

/// What the balancer's clones share.
struct Shared<S> {
    service: &'static str,
    registry: String,
    balance: Balance,
    /// The client's own zone, whose endpoints it prefers.
    zone: Option<String>,
    /// The most endpoints connected to, and this channel's seed for choosing them.
    subset_size: usize,
    subset_seed: u64,
    /// The endpoints the registry lists, the subset's and others.
    instances: std::sync::atomic::AtomicUsize,
    endpoints: Endpoints<S>,
    /// Bumped on every change of endpoints, to wake attempts waiting for one.
    changed: watch::Receiver<u64>,
    /// Why the registry cannot be followed, while it cannot.
    registry_error: Mutex<Option<String>>,
    outliers: Arc<OutlierLimit>,
    counters: Arc<Counters>,
    tasks: Mutex<Vec<AbortOnDrop>>,
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.service)
            .field("registry", &self.registry)
            .field("balance", &self.balance)
            .field("endpoints", &self.endpoints.snapshot().len())
            .finish_non_exhaustive()
    }
}

/// Sends each attempt to one instance of a service; see the
/// [client stack](crate::client).
pub struct Balancer<S = Connection> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Balancer<S> {
    fn clone(&self) -> Self {
        Balancer { shared: Arc::clone(&self.shared) }
    }
}

impl<S> fmt::Debug for Balancer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<S: Send + Sync + 'static> Balancer<S> {
    /// A balancer over the instances of `service` in `registry`, connected
    /// with `connect`. Follows the registry and looks for outliers in the
    /// background until the last clone is dropped.
    pub(crate) fn new(
        registry: &Registry,
        service: &'static str,
        routing: Routing,
        connect: Connector<S>,
        counters: Arc<Counters>,
    ) -> Self {
        let Routing { balance, zone, subset_size } = routing;
        let (bump, changed) = watch::channel(0);
        let shared = Arc::new(Shared {
            service,
            registry: registry.url().to_owned(),
            balance,
            zone,
            subset_size,
            subset_seed: fastrand::u64(..),
            instances: std::sync::atomic::AtomicUsize::new(0),
            endpoints: Endpoints::default(),
            changed,
            registry_error: Mutex::new(None),
            outliers: Arc::default(),
            counters,
            tasks: Mutex::new(Vec::new()),
        });
        // The tasks hold only a weak reference: dropping the last clone of
        // the balancer stops them.
        let follower =
            tokio::spawn(discover::follow(registry.clone(), Arc::downgrade(&shared), connect, bump));
        let outliers = tokio::spawn(outlier::eject_outliers(Arc::downgrade(&shared)));
        shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([AbortOnDrop(follower), AbortOnDrop(outliers)]);
        Balancer { shared }
    }

    /// The endpoints it connects to now: every instance's, or in a fleet
    /// larger than the subset size, those of its subset.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.shared.endpoints.snapshot().iter().map(|m| m.endpoint.clone()).collect()
    }

    /// What the status page and the state gauges show of it.
    pub(crate) fn snapshot(&self, breakers: Vec<BreakerSnapshot>) -> ChannelSnapshot {
        let shared = &self.shared;
        let mut endpoints: Vec<EndpointSnapshot> =
            shared.endpoints.snapshot().iter().map(|m| m.state.snapshot()).collect();
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        let balance = serde_json::to_value(shared.balance).ok();
        ChannelSnapshot {
            service: shared.service,
            registry: shared.registry.clone(),
            balance: balance.as_ref().and_then(|b| b.as_str()).unwrap_or_default().to_owned(),
            zone: shared.zone.clone(),
            instances: shared.instances.load(std::sync::atomic::Ordering::Relaxed),
            registry_answered_seconds_ago: shared.counters.metrics.registry_answer_age(),
            registry_error: shared.registry_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            endpoints,
            breakers,
        }
    }
}

impl<S> Shared<S> {
    /// Why an attempt found no instance to go to.
    fn nowhere(&self) -> String {
        let registry_error = self.registry_error.lock().unwrap_or_else(PoisonError::into_inner);
        match &*registry_error {
            Some(err) => format!("cannot follow the registry: {err}"),
            None => format!(
                "no instance of {} is registered in {}; start one, or check that both sides use the same registry",
                self.service, self.registry
            ),
        }
    }

    /// Records the registry's state; true if this starts an outage.
    fn set_registry_error(&self, error: Option<String>) -> bool {
        let mut current = self.registry_error.lock().unwrap_or_else(PoisonError::into_inner);
        let started = current.is_none() && error.is_some();
        *current = error;
        started
    }
}

/// An attempt's routing inputs, read from its request.
struct Route {
    key: Option<u64>,
    tried: Option<Tried>,
}

impl Route {
    fn of<B>(req: &Request<B>) -> Self {
        Route {
            key: req.extensions().get::<HashKey>().map(|k| k.value()),
            tried: req.extensions().get::<Tried>().cloned(),
        }
    }
}

impl<S> Shared<S> {
    /// Picks an endpoint for `req` now, marking it tried and probing.
    fn pick_for<B>(&self, route: &Route, req: &mut Request<B>) -> Option<Arc<Member<S>>> {
        let mut rng = fastrand::Rng::new();
        let pick = match &route.tried {
            Some(Tried(tried)) => {
                // Picked and recorded under one lock, without copying the list.
                let mut tried = tried.lock().unwrap_or_else(PoisonError::into_inner);
                let pick = self.endpoints.pick(self.balance, &tried, route.key, &mut rng)?;
                tried.push(Arc::clone(&pick.member.state));
                pick
            }
            None => self.endpoints.pick(self.balance, &[], route.key, &mut rng)?,
        };
        if pick.probe {
            req.extensions_mut().insert(Probe);
        }
        Some(pick.member)
    }
}

impl<S, B, R> Service<Request<B>> for Balancer<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BalanceFuture<S, B, R>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Attempts wait for an endpoint inside `call`, bounded by their deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = Route::of(&req);
        if let Some(member) = self.shared.pick_for(&route, &mut req) {
            return BalanceFuture::Sent { inner: Oneshot::new(member.service.clone(), req) };
        }
        let shared = Arc::clone(&self.shared);
        BalanceFuture::Waiting { inner: Box::pin(wait_and_send(shared, route, req)) }
    }
}

/// Waits for an endpoint until the attempt's deadline, then sends to it.
async fn wait_and_send<S, B, R>(
    shared: Arc<Shared<S>>,
    route: Route,
    mut req: Request<B>,
) -> Result<Response<R>, BoxError>
where
    S: Clone,
    EndpointService<S>: Service<Request<B>, Response = Response<R>, Error = BoxError>,
{
    let deadline = Deadline::of(&req);
    let mut changed = shared.changed.clone();
    loop {
        let wait = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.at, changed.changed()).await.ok(),
                None => Some(changed.changed().await),
            }
        };
        match wait.await {
            Some(Ok(())) => {}
            // The deadline passed, or the balancer is gone.
            Some(Err(_)) | None => {
                let method = req.uri().path().to_owned();
                let timeout = deadline.map(|d| d.budget).unwrap_or_default();
                return Err(CallError::NoInstance { method, timeout, reason: shared.nowhere() }.into());
            }
        }
        if let Some(member) = shared.pick_for(&route, &mut req) {
            return Oneshot::new(member.service.clone(), req).await;
        }
    }
}

type Waiting<R> = Pin<Box<dyn Future<Output = Result<Response<R>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Balancer`].
    #[project = BalanceProj]
    pub enum BalanceFuture<S, B, R>
    where
        EndpointService<S>: Service<Request<B>>,
    {
        /// Sent to the endpoint picked at once.
        Sent { #[pin] inner: Oneshot<EndpointService<S>, Request<B>> },
        /// Waiting for an endpoint (none was known): the slow path, boxed.
        Waiting { inner: Waiting<R> },
    }
}

impl<S, B, R> Future for BalanceFuture<S, B, R>
where
    EndpointService<S>: Service<Request<B>, Response = Response<R>, Error = BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BalanceProj::Sent { inner } => inner.poll(cx),
            BalanceProj::Waiting { inner } => inner.as_mut().poll(cx),
        }
    }
}
