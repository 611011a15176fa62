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
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::metadata::MetadataValue;
use tower_layer::Layer;
use tower_service::Service;

use crate::protocol::{self, RETRY_PUSHBACK_MS, UNPROCESSED};

/// The pushback hint sent with a shed call.
pub(crate) const SHED_PUSHBACK: Duration = Duration::from_millis(100);

/// Caps the calls in flight at `max`.
#[derive(Debug, Clone)]
pub(crate) struct LoadShedLayer {
    slots: Arc<Semaphore>,
    max: usize,
}

impl LoadShedLayer {
    pub(crate) fn new(max: usize) -> Self {
        LoadShedLayer { slots: Arc::new(Semaphore::new(max)), max }
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
        match self.layer.slots.clone().try_acquire_owned() {
            Ok(slot) => LoadShedFuture::Call { inner: self.inner.call(req), slot: Some(slot) },
            Err(_) => {
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
                LoadShedFuture::Shed { response: Some(response) }
            }
        }
    }
}

pin_project! {
    /// Response future of [`LoadShed`].
    #[project = LoadShedProj]
    pub(crate) enum LoadShedFuture<F> {
        Call { #[pin] inner: F, slot: Option<OwnedSemaphorePermit> },
        Shed { response: Option<Response<tonic::body::Body>> },
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
                let response = response.take().unwrap_or_default();
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
        _slot: Option<OwnedSemaphorePermit>,
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
