//! The endpoint layer: one instance, as every attempt sent to it sees it.
//!
//! It sits right above the transport (a connection to one instance) and
//! below the balancer. For each attempt it:
//!
//! - sends what is left of the call's [`Deadline`] as `grpc-timeout`, and
//!   gives up on the attempt when the deadline passes;
//! - counts the attempt in flight and measures its round trip, the
//!   balancer's peak-EWMA load (`state.rs`);
//! - tells an answer (any status the handler chose, `NOT_FOUND` included)
//!   from a failure of the instance (unreachable, `UNAVAILABLE`, shed
//!   unprocessed, no answer within the deadline), returning a failure as a
//!   typed [`CallError`] that says whether the request provably never
//!   reached a handler and what the server's pushback was;
//! - ejects the instance after 3 failures in a row (passive health; the same
//!   state machine as the circuit breaker), and lets it back through one
//!   probe at a time; a probe that answers far slower than the peers keeps
//!   it out.
//!
//! Active health (the server's `grpc.health.v1` Watch) is followed by a
//! task per endpoint that the balancer starts ([`watch_health`]).

mod state;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use self::state::InFlight;
pub(crate) use self::state::watch_health;
pub use self::state::{EndpointState, OutlierLimit};
use super::deadline::Deadline;
use crate::error::{BoxError, CallError};
use crate::protocol::{GRPC_TIMEOUT, RETRY_PUSHBACK_MS, UNPROCESSED, encode_grpc_timeout};

/// Marks an attempt as the probe of an ejected endpoint (set by the balancer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe;

/// Makes [`EndpointService`]s for one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointLayer {
    state: Arc<EndpointState>,
}

impl EndpointLayer {
    /// For the endpoint whose state is `state`.
    pub(crate) fn new(state: Arc<EndpointState>) -> Self {
        EndpointLayer { state }
    }
}

impl<S> Layer<S> for EndpointLayer {
    type Service = EndpointService<S>;

    fn layer(&self, inner: S) -> EndpointService<S> {
        EndpointService { inner, state: Arc::clone(&self.state) }
    }
}

/// The service [`EndpointLayer`] makes; see the [client stack](crate::client).
#[derive(Debug, Clone)]
pub struct EndpointService<S> {
    inner: S,
    state: Arc<EndpointState>,
}

impl<S> EndpointService<S> {
    /// What is known of the endpoint.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped transport, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, R> Service<Request<B>> for EndpointService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = EndpointFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let deadline = Deadline::of(&req);
        if let Some(deadline) = deadline {
            // Encoded once per attempt, from what is left now.
            let encoded = Bytes::from(encode_grpc_timeout(deadline.remaining()));
            if let Ok(mut value) = HeaderValue::from_maybe_shared(encoded) {
                // Different on every call: kept out of the HPACK tables, where
                // it would only evict the headers that repeat.
                value.set_sensitive(true);
                req.headers_mut().insert(GRPC_TIMEOUT.clone(), value);
            }
        }
        let probe = req.extensions().get::<Probe>().is_some();
        let path = req.uri().path_and_query().cloned();
        let in_flight = self.state.start();
        EndpointFuture {
            inner: self.inner.call(req),
            sleep: deadline.map(|d| tokio::time::sleep_until(d.at)),
            outcome: Outcome { in_flight, probe, path, budget: deadline.map(|d| d.budget), done: false },
        }
    }
}

/// What an attempt reports when it ends.
#[derive(Debug)]
struct Outcome {
    in_flight: InFlight,
    probe: bool,
    path: Option<http::uri::PathAndQuery>,
    budget: Option<std::time::Duration>,
    done: bool,
}

impl Outcome {
    fn state(&self) -> &EndpointState {
        self.in_flight.endpoint()
    }

    fn method(&self) -> String {
        self.path.as_ref().map(|p| p.path().to_owned()).unwrap_or_default()
    }

    fn fail(&mut self, error: CallError) -> BoxError {
        self.done = true;
        self.state().failed(&error);
        error.into()
    }

    fn answered<R>(&mut self, response: Response<R>) -> Result<Response<R>, BoxError> {
        let now = Instant::now();
        self.state().sample(now - self.in_flight.started, now);
        match failure_in_headers(response.headers(), self.state()) {
            None => {
                self.done = true;
                self.state().answered(self.probe);
                Ok(response)
            }
            Some(error) => Err(self.fail(error)),
        }
    }

    fn transport_failed(&mut self, err: BoxError) -> BoxError {
        if is_timeout(err.as_ref()) {
            return self.timed_out();
        }
        let state = self.state();
        let error = CallError::Unreachable {
            method: self.method(),
            service: state.service,
            endpoint: state.endpoint.to_string(),
            reason: crate::transport::failure_reason(&state.endpoint, err.as_ref()),
            never_reached: never_reached(err.as_ref()),
        };
        self.fail(error)
    }

    fn timed_out(&mut self) -> BoxError {
        let state = self.state();
        let error = CallError::DeadlineExceeded {
            method: self.method(),
            service: state.service,
            timeout: self.budget.unwrap_or_default(),
            endpoint: Some(state.endpoint.to_string()),
        };
        self.fail(error)
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // Cancelled by the caller: nothing learnt about the endpoint.
        if !self.done && self.probe {
            self.state().probe_abandoned();
        }
    }
}

pin_project! {
    /// The response future of [`EndpointService`].
    pub struct EndpointFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        outcome: Outcome,
    }
}

impl<F, R, E> Future for EndpointFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(match result {
                Ok(response) => this.outcome.answered(response),
                Err(err) => Err(this.outcome.transport_failed(err.into())),
            });
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(Err(this.outcome.timed_out()));
        }
        Poll::Pending
    }
}

/// The failure of the instance a trailers-only response reports: `None`
/// when it is an answer (success or an application error).
fn failure_in_headers(headers: &HeaderMap, state: &EndpointState) -> Option<CallError> {
    let status = Status::from_header_map(headers)?;
    let unprocessed = headers.contains_key(&UNPROCESSED);
    let code = status.code();
    if code != Code::Unavailable && !(code == Code::ResourceExhausted && unprocessed) {
        return None;
    }
    let pushback = headers.get(&RETRY_PUSHBACK_MS).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|ms| u64::try_from(ms).ok())
            .map(std::time::Duration::from_millis)
    });
    Some(CallError::Unavailable {
        endpoint: state.endpoint.to_string(),
        status: Box::new(status),
        never_reached: unprocessed,
        pushback,
    })
}

/// Whether a transport error proves the request never reached a handler:
/// no connection could be made, the connection closed before the request
/// left, or the stream was refused (`REFUSED_STREAM`).
fn never_reached(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>()
            || cause.is::<crate::transport::NotSent>()
            || cause
                .downcast_ref::<h2::Error>()
                .is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether `err` is tonic's own enforcement of `grpc-timeout`.
fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use tower::ServiceExt;

    use super::*;
    use crate::client::stats::Counters;
    use crate::client::testing::{grpc, mock, request, shed};
    use crate::registry::Endpoint;

    fn state() -> Arc<EndpointState> {
        Arc::new(EndpointState::new(
            Endpoint::new("10.0.0.1", 1),
            "t.v1.T",
            Arc::default(),
            Arc::new(Counters::default()),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn answers_pass_failures_are_typed_and_three_in_a_row_eject() {
        let state = state();
        let (inner, mut handle) = mock();
        let service = EndpointLayer::new(state.clone()).layer(inner);

        let mut req = request("/t.v1.T/M");
        req.extensions_mut()
            .insert(Deadline { at: Instant::now() + Duration::from_secs(2), budget: Duration::from_secs(2) });
        let call = tokio::spawn(service.clone().oneshot(req));
        let (sent, reply) = handle.next_request().await.unwrap();
        assert_eq!(sent.headers()[&GRPC_TIMEOUT], "2000000u", "what is left of the deadline");
        reply.send_response(grpc(Code::NotFound));
        assert!(call.await.unwrap().is_ok(), "NOT_FOUND is an answer");

        let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
        handle.next_request().await.unwrap().1.send_response(shed());
        let err = call.await.unwrap().unwrap_err();
        let Some(CallError::Unavailable { never_reached, pushback, .. }) = err.downcast_ref::<CallError>()
        else {
            panic!("{err}")
        };
        assert_eq!((*never_reached, *pushback), (true, Some(Some(Duration::from_millis(20)))));

        for _ in 0..2 {
            assert!(state.in_rotation());
            let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
            handle.next_request().await.unwrap().1.send_response(grpc(Code::Unavailable));
            assert!(call.await.unwrap().is_err());
        }
        assert!(!state.in_rotation(), "ejected after 3 failures in a row");
        assert_eq!(state.counters.snapshot().ejections, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_never_reached_a_handler_and_a_silent_one_times_out() {
        let state = state();
        let (inner, mut handle) = mock();
        let service = EndpointLayer::new(state.clone()).layer(inner);
        let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
        let refused =
            tonic::ConnectError(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        handle.next_request().await.unwrap().1.send_error(refused);
        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CallError>(),
                Some(CallError::Unreachable { never_reached: true, .. })
            ),
            "{err}"
        );

        let mut req = request("/t.v1.T/M");
        req.extensions_mut().insert(Deadline {
            at: Instant::now() + Duration::from_millis(30),
            budget: Duration::from_millis(30),
        });
        let call = tokio::spawn(service.oneshot(req));
        let (_req, _never) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_millis(30)).await;
        let err = call.await.unwrap().unwrap_err();
        let Some(CallError::DeadlineExceeded { endpoint, .. }) = err.downcast_ref::<CallError>() else {
            panic!("{err}")
        };
        assert_eq!(endpoint.as_deref(), Some("10.0.0.1:1"));
    }
}
