//! Injected faults, for chaos tests and benchmarks: make an instance slow on
//! purpose. Off unless `faults.delay` is set. Health and reflection calls
//! (`/grpc.*`) are never delayed, so a slow instance still looks alive.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

/// Delays every application call by a fixed time before handling it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultLayer {
    pub(crate) delay: Duration,
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner, delay: self.delay }
    }
}

/// The service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Fault<S> {
    inner: S,
    delay: Duration,
}

impl<S, B> Service<Request<B>> for Fault<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let delay = if req.uri().path().starts_with("/grpc.") { Duration::ZERO } else { self.delay };
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(req).await
        })
    }
}
