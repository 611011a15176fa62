//! One endpoint as the balancer sees it: a lazily connected tonic channel
//! that counts its calls and names itself in its errors.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tower_service::Service;

use crate::error::BoxError;
use crate::registry::Endpoint;

/// How long to wait for a connection to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to one endpoint.
#[derive(Debug, Clone)]
pub(super) struct Counted {
    inner: tonic::transport::Channel,
    endpoint: Arc<Endpoint>,
    calls: Arc<AtomicU64>,
}

impl Counted {
    /// A lazy connection to `endpoint`; `calls` counts what is sent through it.
    pub(super) fn connect(endpoint: &Endpoint, calls: Arc<AtomicU64>) -> Result<Self, String> {
        let inner = tonic::transport::Endpoint::from_shared(endpoint.uri())
            .map_err(|e| format!("`{endpoint}` is not a valid address: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Counted { inner, endpoint: Arc::new(endpoint.clone()), calls })
    }
}

/// A transport error, with the endpoint it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {source}")]
pub(super) struct EndpointError {
    endpoint: Arc<Endpoint>,
    #[source]
    source: tonic::transport::Error,
}

impl Service<Request<Body>> for Counted {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Body>>::poll_ready(&mut self.inner, cx)
            .map_err(|source| EndpointError { endpoint: self.endpoint.clone(), source }.into())
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        CallFuture { inner: self.inner.call(req), endpoint: self.endpoint.clone() }
    }
}

/// The future of a [`Counted`] call.
pub(super) struct CallFuture {
    inner: tonic::transport::channel::ResponseFuture,
    endpoint: Arc<Endpoint>,
}

impl Future for CallFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(Pin::new(&mut self.inner).poll(cx));
        Poll::Ready(result.map_err(|source| EndpointError { endpoint: self.endpoint.clone(), source }.into()))
    }
}
