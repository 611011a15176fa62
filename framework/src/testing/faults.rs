//! The fault switch of a test server, and the service wrapper that obeys it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::descriptor::{DescribedService, ServiceDescriptor};

/// What is wrong with an instance right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    delay: Duration,
    unavailable: bool,
    drop: bool,
}

/// The faults injected into one test server's calls, changed while it runs.
/// Cloning gives another handle to the same switch.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<watch::Sender<State>>,
    calls: Arc<AtomicU64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { state: Arc::new(watch::Sender::new(State::default())), calls: Arc::new(AtomicU64::new(0)) }
    }
}

impl Faults {
    /// Delays every call by `delay` before its handler runs (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.state.send_modify(|s| s.delay = delay);
    }

    /// Answers every call with `UNAVAILABLE`, unrun, while `on`.
    pub fn set_unavailable(&self, on: bool) {
        self.state.send_modify(|s| s.unavailable = on);
    }

    /// Swallows every call while `on`: no answer comes until the caller gives
    /// up or the fault is lifted (then the call runs).
    pub fn set_drop(&self, on: bool) {
        self.state.send_modify(|s| s.drop = on);
    }

    /// Lifts every fault.
    pub fn lift(&self) {
        self.state.send_replace(State::default());
    }

    /// Whether any fault is set.
    pub fn is_faulty(&self) -> bool {
        *self.state.borrow() != State::default()
    }

    /// How many application calls reached this server, faulty or not.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A generated service behind a [`Faults`] switch. Made by
/// [`TestServerBuilder::add_service`](super::TestServerBuilder::add_service).
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    inner: S,
    faults: Faults,
}

impl<S> Faulty<S> {
    /// `inner`, obeying `faults`.
    pub fn new(inner: S, faults: Faults) -> Self {
        Faulty { inner, faults }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: NamedService> NamedService for Faulty<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: DescribedService> DescribedService for Faulty<S> {
    const DESCRIPTOR: &'static ServiceDescriptor = S::DESCRIPTOR;
}

impl<S> tower_service::Service<http::Request<Body>> for Faulty<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        self.faults.calls.fetch_add(1, Ordering::Relaxed);
        let mut state = self.faults.state.subscribe();
        Box::pin(async move {
            // Swallowed until the fault is lifted; a caller that gives up
            // drops this future.
            let _ = state.wait_for(|s| !s.drop).await;
            let now = *state.borrow();
            if !now.delay.is_zero() {
                tokio::time::sleep(now.delay).await;
            }
            if now.unavailable {
                return Ok(
                    tonic::Status::unavailable("injected fault: this test server is unavailable").into_http()
                );
            }
            inner.call(req).await
        })
    }
}
