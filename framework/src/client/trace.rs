//! The trace layer: every call carries a W3C `traceparent`.
//!
//! A call made while a server call is being handled (see
//! [`crate::context`]) is a child span of it, in the same trace, with its
//! `tracestate` passed along; a call made anywhere else starts a new trace.
//! A `traceparent` the caller set on the request itself is sent unchanged.
//! The header is the same on every attempt: retries and hedges are one
//! client span.
//!
//! The layer sits above everything else in the stack, your layers included,
//! so they see the header. With the `otel` feature and a collector
//! configured, each call is also exported as a client span, ended when its
//! status is known (trailers, trailers-only headers, an error, or a drop).
//!
//! Per call this costs a task-local read, one random span id, 55 bytes
//! formatted on the stack and one header value; no other allocation unless
//! spans are exported.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tonic::Code;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{TRACEPARENT, TRACESTATE, TraceContext, outbound_trace};
use crate::error::{BoxError, into_status};
use crate::protocol::end::{CallEnd, Ending};
use crate::telemetry::span::{self, FinishedSpan, SpanKind};

/// Puts a `traceparent` on every call; see the [client stack](crate::client).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> TraceService<S> {
        TraceService { inner }
    }
}

/// The service [`TraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S> TraceService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Body>> for TraceService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let headers = req.headers_mut();
        let own = headers.get(&TRACEPARENT).and_then(|v| TraceContext::parse_traceparent(v.as_bytes()).ok());
        let trace = match own {
            Some(own) => own,
            None => {
                let trace = outbound_trace();
                headers.insert(TRACEPARENT.clone(), trace.traceparent_header());
                if let Some(state) = trace.tracestate() {
                    headers.insert(TRACESTATE.clone(), state.clone());
                }
                trace
            }
        };
        let pending = span::exporting().then(|| Pending {
            trace,
            start: Instant::now(),
            method: req.uri().path_and_query().cloned(),
        });
        TraceFuture { inner: self.inner.call(req), pending: Ending::new(pending) }
    }
}

/// A client span waiting for its call's status.
#[derive(Debug)]
struct Pending {
    trace: TraceContext,
    start: Instant,
    method: Option<http::uri::PathAndQuery>,
}

impl CallEnd for Pending {
    fn end(self, code: Code) {
        let method = self.method.as_ref().map_or("", |p| p.path());
        span::record(FinishedSpan::new(
            SpanKind::Client,
            &self.trace,
            method,
            code,
            self.start.elapsed(),
            None,
        ));
    }

    /// The code of the status the body failed with.
    fn failed(&self, err: &dyn Any) -> Code {
        err.downcast_ref::<tonic::Status>().map_or(Code::Unknown, tonic::Status::code)
    }
}

pin_project! {
    /// The response future of [`TraceService`].
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        pending: Ending<Pending>,
    }
}

impl<F, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = std::mem::take(this.pending);
        if pending.get().is_none() {
            return Poll::Ready(result.map_err(Into::into));
        }
        Poll::Ready(match result {
            Ok(response) => Ok(pending.into_response(response).map(Body::new)),
            Err(err) => {
                // The one mapping to a status, done here rather than in the
                // channel, so the span knows the code.
                let status = into_status(err.into());
                pending.end(status.code());
                Err(Box::new(status) as BoxError)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use tower::ServiceExt;

    use super::*;
    use crate::client::testing::{grpc, mock, request};
    use crate::context::RequestContext;

    #[tokio::test]
    async fn a_call_inside_a_server_call_is_its_child_and_one_outside_starts_a_trace() {
        let (inner, mut handle) = mock();
        let service = TraceLayer.layer(inner);

        let inbound = TraceContext::new_root().with_tracestate(&HeaderValue::from_static("vendor=opaque"));
        let ctx = RequestContext::new(None).with_trace(inbound.clone());
        let call = tokio::spawn(ctx.scope(service.clone().oneshot(request("/t.v1.T/M"))));
        let (req, reply) = handle.next_request().await.unwrap();
        let sent = TraceContext::parse_traceparent(req.headers()[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(sent.trace_id(), inbound.trace_id(), "same trace");
        assert_ne!(sent.span_id(), inbound.span_id(), "a span of its own");
        assert_eq!(req.headers()[&TRACESTATE], "vendor=opaque");
        reply.send_response(grpc(Code::Ok));
        call.await.unwrap().unwrap();

        let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
        let (req, reply) = handle.next_request().await.unwrap();
        let fresh = TraceContext::parse_traceparent(req.headers()[&TRACEPARENT].as_bytes()).unwrap();
        assert_ne!(fresh.trace_id(), inbound.trace_id(), "a new trace");
        assert!(fresh.sampled());
        assert!(!req.headers().contains_key(&TRACESTATE));
        reply.send_response(grpc(Code::Ok));
        call.await.unwrap().unwrap();

        let mut own = request("/t.v1.T/M");
        let set = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        own.headers_mut().insert(TRACEPARENT.clone(), HeaderValue::from_static(set));
        let call = tokio::spawn(service.oneshot(own));
        let (req, reply) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[&TRACEPARENT], set, "the caller's own header is kept");
        reply.send_response(grpc(Code::Ok));
        call.await.unwrap().unwrap();
    }
}
