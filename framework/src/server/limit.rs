//! Load shedding: a cap on the calls an instance runs at once.
//!
//! Past the cap, a call is refused at once with `RESOURCE_EXHAUSTED` and a
//! `grpc-retry-pushback-ms` hint, instead of queueing until its deadline:
//! an overloaded instance answers fast, and the client's retry goes to
//! another instance. A call holds its slot until its response ends (for a
//! stream, until the stream ends). Health and reflection (`/grpc.*`) are
//! never shed, so an overloaded instance still answers its health checks.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tower_layer::Layer;
use tower_service::Service;

use crate::protocol::{self, RETRY_PUSHBACK_MS, UNPROCESSED};

/// The pushback hint sent with a shed call.
pub(crate) const SHED_PUSHBACK: Duration = Duration::from_millis(100);

/// Caps the calls in flight at `max`.
///
/// A call never waits for a slot, so the count is one atomic counter: taking
/// and freeing a slot are one atomic add each, with no lock (a semaphore
/// would lock its waiters' list on every release).
#[derive(Debug, Clone)]
pub(crate) struct LoadShedLayer {
    in_flight: Arc<AtomicUsize>,
    max: usize,
}

impl LoadShedLayer {
    pub(crate) fn new(max: usize) -> Self {
        LoadShedLayer { in_flight: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A slot, if fewer than `max` calls hold one.
    fn try_take(&self) -> Option<Slot> {
        // Taken first and given back if over: two calls racing for the last
        // slot cannot both get it.
        if self.in_flight.fetch_add(1, Ordering::Acquire) < self.max {
            Some(Slot(Arc::clone(&self.in_flight)))
        } else {
            self.in_flight.fetch_sub(1, Ordering::Release);
            None
        }
    }
}

/// One call's slot, freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed { inner, layer: self.clone() }
    }
}

/// The service made by [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub(crate) struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

impl<S, B> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<SlotBody<tonic::body::Body>>;
    type Error = S::Error;
    type Future = LoadShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if protocol::is_builtin(req.uri().path()) {
            return LoadShedFuture::Call { inner: self.inner.call(req), slot: None };
        }
        match self.layer.try_take() {
            Some(slot) => LoadShedFuture::Call { inner: self.inner.call(req), slot: Some(slot) },
            None => {
                tracing::debug!(max = self.layer.max, "shedding a call");
                let mut status = Status::resource_exhausted(format!(
                    "overloaded: {} calls in flight on this instance (server.max_concurrent_calls); \
                     retry on another instance",
                    self.layer.max
                ));
                status.metadata_mut().insert(
                    RETRY_PUSHBACK_MS.as_str(),
                    MetadataValue::from(u64::try_from(SHED_PUSHBACK.as_millis()).unwrap_or(u64::MAX)),
                );
                let mut response: Response<tonic::body::Body> = status.into_http();
                // No handler ran: a Trellis client may retry any method elsewhere.
                response.headers_mut().insert(UNPROCESSED.clone(), http::HeaderValue::from_static("1"));
                response.extensions_mut().insert(super::metrics::Refused::Shed);
                LoadShedFuture::Shed { response: Some(Box::new(response)) }
            }
        }
    }
}

pin_project! {
    /// Response future of [`LoadShed`].
    #[project = LoadShedProj]
    pub(crate) enum LoadShedFuture<F> {
        Call { #[pin] inner: F, slot: Option<Slot> },
        Shed { response: Option<Box<Response<tonic::body::Body>>> },
    }
}

impl<F, E> Future for LoadShedFuture<F>
where
    F: Future<Output = Result<Response<tonic::body::Body>, E>>,
{
    type Output = Result<Response<SlotBody<tonic::body::Body>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LoadShedProj::Call { inner, slot } => {
                let response = ready!(inner.poll(cx))?;
                let slot = slot.take();
                Poll::Ready(Ok(response.map(|inner| SlotBody { inner, _slot: slot })))
            }
            LoadShedProj::Shed { response } => {
                let response = response.take().map(|r| *r).unwrap_or_default();
                Poll::Ready(Ok(response.map(|inner| SlotBody { inner, _slot: None })))
            }
        }
    }
}

pin_project! {
    /// A response body that frees its call's slot when it ends.
    pub(crate) struct SlotBody<B> {
        #[pin]
        inner: B,
        _slot: Option<Slot>,
    }
}

impl<B: Body> Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;
    use crate::server::metrics::Refused;

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    fn handler()
    -> impl Service<Request<()>, Response = Response<tonic::body::Body>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|_req: Request<()>| async { Ok(Response::new(tonic::body::Body::default())) })
    }

    #[tokio::test]
    async fn past_the_cap_a_call_is_shed_until_a_response_ends() {
        let service = LoadShedLayer::new(2).layer(handler());
        let first = service.clone().oneshot(request("/pkg.S/M")).await.unwrap();
        let second = service.clone().oneshot(request("/pkg.S/M")).await.unwrap();

        let shed = service.clone().oneshot(request("/pkg.S/M")).await.unwrap();
        assert_eq!(shed.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");
        assert_eq!(shed.headers()[&RETRY_PUSHBACK_MS], "100");
        assert_eq!(shed.headers()[&UNPROCESSED], "1", "no handler ran: safe to retry elsewhere");
        assert_eq!(shed.extensions().get::<Refused>(), Some(&Refused::Shed));
        let message = shed.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("server.max_concurrent_calls"), "{message}");

        // Health and reflection are never shed.
        let health = service.clone().oneshot(request("/grpc.health.v1.Health/Check")).await.unwrap();
        assert!(!health.headers().contains_key("grpc-status"));

        // A slot is held until the response body goes, then taken again.
        drop(first);
        let third = service.clone().oneshot(request("/pkg.S/M")).await.unwrap();
        assert!(!third.headers().contains_key("grpc-status"));
        assert_eq!(service.layer.in_flight.load(Ordering::Relaxed), 2);
        drop((second, third));
        assert_eq!(service.layer.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn racing_callers_never_hold_more_slots_than_the_cap() {
        let layer = LoadShedLayer::new(3);
        let held = std::thread::scope(|scope| {
            let takers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| (0..1_000).filter_map(|_| layer.try_take()).take(1).collect::<Vec<_>>())
                })
                .collect();
            takers.into_iter().flat_map(|t| t.join().unwrap()).collect::<Vec<_>>()
        });
        assert_eq!(held.len(), 3, "exactly the cap is held when every caller keeps its slot");
        assert_eq!(layer.in_flight.load(Ordering::Relaxed), 3);
        drop(held);
        assert_eq!(layer.in_flight.load(Ordering::Relaxed), 0);
    }
}
