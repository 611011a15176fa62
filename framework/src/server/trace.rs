//! One span per call, closed with the call's gRPC status and duration.
//!
//! The status of a gRPC call is known only at its very end: in the response
//! headers for a trailers-only answer, otherwise in the trailers after the
//! last message. So the span's outcome is recorded by a body wrapper when the
//! trailers pass through, or, if the client goes away first, when the body is
//! dropped (reported as `CANCELLED`).
//!
//! Each call runs in a [`TraceContext`]: a child of the caller's
//! `traceparent` (with its `tracestate`), or the root of a new trace when the
//! call carries none or a malformed one. This layer also decodes the
//! `grpc-timeout` header, once, and runs the call inside the resulting
//! [`RequestContext`], so the deadline layer below, the handler, the clients
//! it calls and every log line written meanwhile see both.
//!
//! Each call's end is one event with `rpc.method`, `status`, `duration_ms`,
//! `peer` and, when the caller sent a deadline, `timeout_ms`; the log format
//! adds `trace_id` and `span_id`. With `log.access = true`, every call also
//! writes one `INFO` line with target `trellis::access`. With the `otel`
//! feature and `trace.otlp_endpoint` set, every call is exported as a
//! server span. Successful calls are
//! logged at `DEBUG`; client errors at `INFO`; server errors (`UNKNOWN`,
//! `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, `DEADLINE_EXCEEDED`,
//! `UNIMPLEMENTED`) at `WARN`.
//!
//! The span itself is at `DEBUG`: at the default `info` level no span is
//! made, so a call that logs nothing costs no formatting and no filtering
//! beyond the callsites' cached interest. With `log.level = "debug"` every
//! event a handler logs carries the call's span.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tonic::Code;
use tonic::transport::server::TcpConnectInfo;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::context::{RequestContext, Scoped, TRACEPARENT, TRACESTATE, TraceContext};
use crate::protocol::end::{CallEnd, EndBody, Ending};
use crate::protocol::{self, GRPC_TIMEOUT, decode_grpc_timeout};
use crate::telemetry::span::{self, SpanKind};

/// Adds a call span to every request. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TraceLayer {
    /// Whether every call writes an access log line.
    access: bool,
}

impl TraceLayer {
    /// A layer that writes an access log line per call when `access`.
    pub(crate) fn new(access: bool) -> Self {
        TraceLayer { access }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner, access: self.access }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Trace<S> {
    inner: S,
    access: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Trace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<TraceBody<ResBody>>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        // A static path is cloned without a copy.
        let path = req.uri().path_and_query().cloned();
        let headers = req.headers();
        // Decoded here only: the deadline layer reads the context.
        let timeout = headers.get(&GRPC_TIMEOUT).and_then(|v| decode_grpc_timeout(v.as_bytes()));
        let trace = TraceContext::from_headers(headers.get(&TRACEPARENT), headers.get_all(&TRACESTATE));
        let peer = req.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
        let span = tracing::debug_span!(
            "grpc",
            rpc.method = req.uri().path(),
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id(),
            peer = peer.map(tracing::field::display),
            rpc.status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let ctx = RequestContext::new(timeout.map(|t| tokio::time::Instant::now() + t)).with_trace(trace);
        let inner = {
            let _enter = span.enter();
            ctx.clone().call(|| self.inner.call(req))
        };
        let call = Call { span, start, timeout, path, peer, access: self.access, ctx };
        TraceFuture { inner, call: Ending::new(Some(call)) }
    }
}

/// The state of one call until its status is known.
#[derive(Debug)]
pub(crate) struct Call {
    span: Span,
    start: Instant,
    /// The deadline the caller sent, if any.
    timeout: Option<Duration>,
    path: Option<http::uri::PathAndQuery>,
    peer: Option<SocketAddr>,
    access: bool,
    ctx: RequestContext,
}

impl CallEnd for Call {
    fn end(self, code: Code) {
        let Call { span, start, timeout, path, peer, access, ctx } = self;
        let elapsed = start.elapsed();
        let duration_ms = elapsed.as_secs_f64() * 1e3;
        span.record("rpc.status", tracing::field::debug(code));
        span.record("duration_ms", duration_ms);
        let timeout_ms = timeout.map(|t| t.as_secs_f64() * 1e3);
        let method = path.as_ref().map_or("", |p| p.path());
        if let Some(trace) = ctx.trace()
            && span::exporting()
        {
            span::record(span::FinishedSpan::new(SpanKind::Server, trace, method, code, elapsed, peer));
        }
        let level = match code {
            Code::Ok => tracing::Level::DEBUG,
            code if protocol::is_server_error(code) => tracing::Level::WARN,
            _ => tracing::Level::INFO,
        };
        // Nothing to write at this level (the usual successful call): no context to enter.
        if !access && !tracing::level_enabled!(level) {
            return;
        }
        let peer = peer.map(tracing::field::display);
        // In the call's context, so the lines carry its trace.
        ctx.sync_scope(|| {
            let _enter = span.enter();
            match level {
                tracing::Level::DEBUG => {
                    tracing::debug!(rpc.method = method, status = ?code, duration_ms, timeout_ms, peer, "call finished")
                }
                tracing::Level::WARN => {
                    tracing::warn!(rpc.method = method, status = ?code, duration_ms, timeout_ms, peer, "call failed")
                }
                _ => {
                    tracing::info!(rpc.method = method, status = ?code, duration_ms, timeout_ms, peer, "call finished")
                }
            }
            if access {
                tracing::event!(target: "trellis::access", tracing::Level::INFO, rpc.method = method, status = ?code, duration_ms, peer, "access");
            }
        });
    }
}

pin_project! {
    /// Response future of [`Trace`]. Dropped before it completes, the call
    /// was cancelled by the client (or its connection closed).
    pub(crate) struct TraceFuture<F> {
        #[pin]
        inner: Scoped<F>,
        call: Ending<Call>,
    }
}

impl<F, ResBody, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TraceBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _enter = this.call.get().map(|c| c.span.enter());
            ready!(this.inner.poll(cx))
        };
        let mut call = std::mem::take(this.call);
        Poll::Ready(match result {
            Ok(response) => Ok(call.into_response(response)),
            Err(err) => {
                call.end(Code::Internal);
                Err(err)
            }
        })
    }
}

/// Response body of [`Trace`]: records the status when the trailers pass.
pub(crate) type TraceBody<B> = EndBody<B, Call>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::HeaderValue;
    use tower::ServiceExt;

    use super::*;

    /// Answers with what the handler saw of its context, in headers.
    fn handler() -> impl Service<
        Request<()>,
        Response = Response<http_body_util::Empty<bytes::Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<http_body_util::Empty<bytes::Bytes>>, Infallible>>,
    > + Clone {
        tower::service_fn(|_req: Request<()>| {
            let ctx = RequestContext::current().expect("the call's context");
            async move {
                let trace = ctx.trace().expect("traced").clone();
                let mut response = Response::new(http_body_util::Empty::new());
                let headers = response.headers_mut();
                headers.insert("x-traceparent", trace.traceparent_header());
                headers.insert("x-parent", trace.parent().map_or(0, |_| 1).into());
                if let Some(state) = trace.tracestate() {
                    headers.insert("x-tracestate", state.clone());
                }
                if let Some(left) = ctx.remaining() {
                    headers.insert("x-remaining-ms", u64::try_from(left.as_millis()).unwrap_or(0).into());
                }
                headers.insert("grpc-status", HeaderValue::from_static("0"));
                Ok::<_, Infallible>(response)
            }
        })
    }

    fn request(headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut req = Request::builder().uri("/pkg.S/M");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn the_handler_runs_in_a_child_of_the_callers_span_with_its_deadline() {
        let service = TraceLayer::new(false).layer(handler());
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let response = service
            .clone()
            .oneshot(request(&[
                (TRACEPARENT.as_str(), parent),
                (TRACESTATE.as_str(), "a=1"),
                (GRPC_TIMEOUT.as_str(), "2S"),
            ]))
            .await
            .unwrap();
        let seen = TraceContext::parse_traceparent(response.headers()["x-traceparent"].as_bytes()).unwrap();
        assert_eq!(seen.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(seen.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(response.headers()["x-parent"], "1");
        assert_eq!(response.headers()["x-tracestate"], "a=1");
        let left: u64 = response.headers()["x-remaining-ms"].to_str().unwrap().parse().unwrap();
        assert!((1_900..=2_000).contains(&left), "{left} ms left");

        let response = service
            .oneshot(request(&[(TRACEPARENT.as_str(), "00-xyz"), (TRACESTATE.as_str(), "a=1")]))
            .await
            .unwrap();
        let fresh = TraceContext::parse_traceparent(response.headers()["x-traceparent"].as_bytes()).unwrap();
        assert_ne!(fresh.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "a new trace");
        assert_eq!(response.headers()["x-parent"], "0");
        assert!(!response.headers().contains_key("x-tracestate"));
        assert!(!response.headers().contains_key("x-remaining-ms"), "no deadline sent, none set");
    }
}
