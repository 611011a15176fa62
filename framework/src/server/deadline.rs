//! Refuses, without running the handler, a call that arrives with no time
//! left; otherwise runs it in its [`RequestContext`], so outbound calls made
//! by the handler inherit the deadline.
//!
//! In the server the trace layer above has already decoded `grpc-timeout`
//! into the current context, and this layer reads it from there; used alone,
//! it makes the context from the header itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{RequestContext, Scoped};
use crate::protocol::{GRPC_TIMEOUT, decode_grpc_timeout};

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
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (deadline, inherited) = match RequestContext::current_deadline() {
            Some(deadline) => (deadline, true),
            None => {
                let timeout =
                    req.headers().get(&GRPC_TIMEOUT).and_then(|v| decode_grpc_timeout(v.as_bytes()));
                (timeout.map(|t| Instant::now() + t), false)
            }
        };
        if deadline.is_some_and(|d| d <= Instant::now()) {
            let status = Status::deadline_exceeded(format!(
                "{}: the call arrived after its deadline; not run",
                req.uri().path()
            ));
            let mut response = status.into_http();
            response.extensions_mut().insert(super::metrics::Refused::Expired);
            return DeadlineFuture::Expired { response: Some(Box::new(response)) };
        }
        if inherited {
            return DeadlineFuture::Inherited { inner: self.inner.call(req) };
        }
        // Both the service's `call` and its future see the context.
        DeadlineFuture::Run { inner: RequestContext::new(deadline).call(|| self.inner.call(req)) }
    }
}

pin_project! {
    /// Response future of [`Deadline`].
    #[project = DeadlineProj]
    pub(crate) enum DeadlineFuture<F> {
        Run { #[pin] inner: Scoped<F> },
        Inherited { #[pin] inner: F },
        Expired { response: Option<Box<Response<Body>>> },
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DeadlineProj::Run { inner } => inner.poll(cx),
            DeadlineProj::Inherited { inner } => inner.poll(cx),
            DeadlineProj::Expired { response } => {
                Poll::Ready(Ok(response.take().map(|r| *r).unwrap_or_default()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::ServiceExt;

    use super::*;

    fn request(timeout: Option<&'static str>) -> Request<()> {
        let mut req = Request::builder().uri("/pkg.S/M");
        if let Some(t) = timeout {
            req = req.header(&GRPC_TIMEOUT, t);
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn a_call_with_no_time_left_is_refused_unrun() {
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = {
            let runs = runs.clone();
            tower::service_fn(move |_req: Request<()>| {
                runs.fetch_add(1, Ordering::SeqCst);
                let remaining = RequestContext::current().and_then(|c| c.remaining());
                async move {
                    let mut response = Response::new(Body::default());
                    if let Some(r) = remaining {
                        response.headers_mut().insert(
                            "x-remaining-ms",
                            u64::try_from(r.as_millis()).unwrap_or(u64::MAX).into(),
                        );
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let service = DeadlineLayer.layer(handler);

        let refused = service.clone().oneshot(request(Some("0n"))).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "4");
        assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler must not run");

        let ran = service.clone().oneshot(request(Some("2S"))).await.unwrap();
        let remaining: u64 = ran.headers()["x-remaining-ms"].to_str().unwrap().parse().unwrap();
        assert!((1_900..=2_000).contains(&remaining), "the handler saw {remaining} ms left");
        let ran = service.oneshot(request(None)).await.unwrap();
        assert!(!ran.headers().contains_key("x-remaining-ms"), "no deadline, no remaining time");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
