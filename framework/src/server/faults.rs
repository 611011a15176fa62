//! Injected faults, for chaos tests and benchmarks: make an instance slow
//! (`faults.delay`) or failing (`faults.unavailable`) on purpose. Off unless
//! set. Health and reflection calls (`/grpc.*`) are never touched, so a
//! faulty instance still looks alive to health checks.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

/// Delays every application call by a fixed time before handling it, or
/// answers every one with `UNAVAILABLE`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultLayer {
    pub(crate) delay: Duration,
    pub(crate) unavailable: bool,
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner, faults: *self }
    }
}

/// The service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Fault<S> {
    inner: S,
    faults: FaultLayer,
}

impl<S, B> Service<Request<B>> for Fault<S>
where
    S: Service<Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
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
        let faults = if crate::protocol::is_builtin(req.uri().path()) {
            FaultLayer { delay: Duration::ZERO, unavailable: false }
        } else {
            self.faults
        };
        Box::pin(async move {
            tokio::time::sleep(faults.delay).await;
            if faults.unavailable {
                return Ok(
                    tonic::Status::unavailable("injected fault: faults.unavailable is set").into_http()
                );
            }
            inner.call(req).await
        })
    }
}
