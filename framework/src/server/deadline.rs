//! Sets the [`RequestContext`] of each inbound call from its `grpc-timeout`
//! header, so outbound calls made by the handler inherit the deadline.

use std::task::{Context, Poll};

use http::Request;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{GRPC_TIMEOUT, RequestContext, decode_grpc_timeout};

/// Runs each call inside its [`RequestContext`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<RequestContext, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| decode_grpc_timeout(v.as_bytes()))
            .map(|timeout| Instant::now() + timeout);
        RequestContext::new(deadline).scope(self.inner.call(req))
    }
}
