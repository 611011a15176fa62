//! The retry layer: sends a failed call again, where that is safe, and
//! hedges where the proto asks for it.
//!
//! It sits below the breaker (which judges whole calls) and above the
//! balancer (which sends each attempt to an instance, avoiding those this
//! call has [`Tried`]). A single-message request is kept, so it can be sent
//! again; a streaming one is sent once.
//!
//! **Retries** (`policy.rs`): after a failure of the instance
//! ([`CallError::Unavailable`] or [`CallError::Unreachable`]) on a method
//! marked `NO_SIDE_EFFECTS` or `IDEMPOTENT` in its proto, and on any method
//! when the request provably never reached a handler (connection refused,
//! `REFUSED_STREAM`, shed unprocessed by a Trellis server). Another instance
//! each time; full-jitter backoff from 10 ms doubling to 250 ms, or the
//! server's pushback (negative: do not retry); never past the call's
//! deadline ([`NotRetried::NoTimeLeft`]); at most 3 attempts (or the
//! method's `max_attempts`); within a budget of 20% of recent calls plus 5
//! per second ([`NotRetried::BudgetSpent`]).
//!
//! **Hedging** (`hedge.rs`), for retry-safe methods whose policy sets
//! `hedge`: another attempt to another instance every `delay` while none
//! has answered, at most `max_attempts` in flight, within a budget of 10% of
//! calls plus 2 per second; the first answer wins, the others are
//! cancelled; a failed attempt is replaced at once.

mod hedge;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::body::Body;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

pub(crate) use self::policy::{MAX_ATTEMPTS, RetryBudget};
use super::balance::hash_field;
use super::balance::{HashKey, Tried};
use super::deadline::Deadline;
use super::metrics::{Attempt, NotSent};
use super::stats::Counters;
use crate::descriptor::HashKeyField;
use crate::error::{BoxError, CallError, NotRetried};
use crate::protocol::per_method::PerMethod;

/// How the retry layer treats one method.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Whether it may be retried after reaching a handler (from the proto).
    pub(crate) retry_safe: bool,
    /// Whether its request can be sent again (a single message).
    pub(crate) replayable: bool,
    /// Attempts, the first included.
    pub(crate) max_attempts: u32,
    /// Hedging: another attempt after this delay, at most this many in flight.
    pub(crate) hedge: Option<(Duration, u32)>,
    /// The request field to route by with consistent hashing.
    pub(crate) hash_key: Option<HashKeyField>,
}

impl RetryPolicy {
    /// For methods missing from the descriptor.
    pub(crate) const UNKNOWN: RetryPolicy = RetryPolicy {
        retry_safe: false,
        replayable: true,
        max_attempts: MAX_ATTEMPTS,
        hedge: None,
        hash_key: None,
    };

    /// Whether a call may need its request body more than once, or read.
    fn keeps_body(&self) -> bool {
        self.replayable && (self.max_attempts > 1 || self.hedged().is_some() || self.hash_key.is_some())
    }

    fn hedged(&self) -> Option<(Duration, u32)> {
        self.hedge.filter(|_| self.retry_safe)
    }
}

/// What the layer's services share.
#[derive(Debug)]
struct Shared {
    service: &'static str,
    policies: PerMethod<RetryPolicy>,
    budget: RetryBudget,
    /// Caps the extra load hedging adds: 10% of calls plus 2 per second.
    hedge_budget: RetryBudget,
    counters: Arc<Counters>,
}

/// Retries and hedges; see the [client stack](crate::client).
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    pub(crate) fn new(
        service: &'static str,
        policies: PerMethod<RetryPolicy>,
        counters: Arc<Counters>,
    ) -> Self {
        let shared = Shared {
            service,
            policies,
            budget: RetryBudget::default(),
            hedge_budget: RetryBudget::new(0.1, 2),
            counters,
        };
        RetryLayer { shared: Arc::new(shared) }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService { inner, shared: Arc::clone(&self.shared) }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct RetryService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RetryService<S> {
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

type Attempts = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl<S> Service<Request<Body>> for RetryService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let policy = *self.shared.policies.get(req.uri().path());
        self.shared.budget.deposit();
        if !policy.keeps_body() {
            self.shared.counters.metrics.attempt(Attempt::First);
            return RetryFuture { kind: Kind::Once { inner: self.inner.call(req) } };
        }
        // The ready service answers this call; a clone serves the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        RetryFuture { kind: Kind::Attempts { inner: Box::pin(attempts(shared, inner, req, policy)) } }
    }
}

pin_project! {
    /// The response future of [`RetryService`].
    pub struct RetryFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = RetryProj]
    enum Kind<F> {
        /// A call that cannot be sent again: straight through.
        Once { #[pin] inner: F },
        /// A call that may take several attempts.
        Attempts { inner: Attempts },
    }
}

impl<F, E> Future for RetryFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            RetryProj::Once { inner } => inner.poll(cx).map_err(Into::into),
            RetryProj::Attempts { inner } => inner.as_mut().poll(cx),
        }
    }
}

/// A call's request, kept to be sent again.
struct Kept {
    parts: http::request::Parts,
    body: Bytes,
}

impl Kept {
    fn attempt(&self) -> Request<Body> {
        Request::from_parts(self.parts.clone(), Body::new(http_body_util::Full::new(self.body.clone())))
    }
}

/// Why the request could not be buffered: the encoder's status, with the
/// setting to change when the message is over the size limit.
fn request_body_error(method: &str, status: &tonic::Status) -> CallError {
    let code = match status.code() {
        tonic::Code::Ok | tonic::Code::Unknown => tonic::Code::Internal,
        code => code,
    };
    let mut reason = status.message().to_owned();
    if code == tonic::Code::OutOfRange {
        let service = method.trim_start_matches('/').split('/').next().unwrap_or_default();
        reason.push_str(&format!(
            "; send a smaller request, or raise `clients.\"{service}\".max_encoding_size`"
        ));
    }
    CallError::RequestBody { method: method.to_owned(), reason, code }
}

/// The request's bytes: a single-message request is one frame, kept as
/// is; more are joined.
async fn read_body(body: Body) -> Result<Bytes, tonic::Status> {
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        match &first {
            None => first = Some(data),
            Some(_) => rest.extend_from_slice(&data),
        }
    }
    Ok(match first {
        None => Bytes::new(),
        Some(first) if rest.is_empty() => first,
        Some(first) => {
            let mut joined = bytes::BytesMut::with_capacity(first.len() + rest.len());
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&rest);
            joined.freeze()
        }
    })
}

/// Sends the call, and again to other endpoints where that is safe.
async fn attempts<S>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<Body>,
    policy: RetryPolicy,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(status) => return Err(request_body_error(parts.uri.path(), &status).into()),
    };
    // A key set in code wins over the proto's hash_key field.
    if let (None, Some(field)) = (parts.extensions.get::<HashKey>(), policy.hash_key)
        && let Some(key) = hash_field::key_bytes(&body, field.number(), field.kind())
    {
        parts.extensions.insert(HashKey::new(key));
    }
    let deadline = parts.extensions.get::<Deadline>().copied();
    let tried = Tried::default();
    parts.extensions.insert(tried.clone());
    let kept = Kept { parts, body };
    if let Some(hedge) = policy.hedged() {
        return hedge::hedged(&shared, inner, &kept, hedge).await;
    }
    let mut rng = fastrand::Rng::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        shared.counters.metrics.attempt(if attempt == 1 { Attempt::First } else { Attempt::Retry });
        let err = match inner.ready().await.map_err(Into::into)?.call(kept.attempt()).await {
            Ok(response) => return Ok(response),
            Err(err) => err.into(),
        };
        let Some(failure) = err.downcast_ref::<CallError>() else { return Err(err) };
        if attempt >= policy.max_attempts {
            if policy.max_attempts > 1
                && policy::retry_after(failure, policy.retry_safe, attempt, &mut rng).is_some()
            {
                shared.counters.metrics.not_retried(NotSent::AttemptLimit);
            }
            return Err(err);
        }
        let Some(backoff) = policy::retry_after(failure, policy.retry_safe, attempt, &mut rng) else {
            return Err(err);
        };
        let not_retried = |reason| CallError::NotRetried { last: Box::new(failure.clone()), reason }.into();
        if !shared.budget.withdraw() {
            Counters::bump(&shared.counters.retries_over_budget);
            shared.counters.metrics.not_retried(NotSent::Budget);
            return Err(not_retried(NotRetried::BudgetSpent));
        }
        if deadline.is_some_and(|d| Instant::now() + backoff >= d.at) {
            shared.counters.metrics.not_retried(NotSent::NoTimeLeft);
            return Err(not_retried(NotRetried::NoTimeLeft));
        }
        Counters::bump(&shared.counters.retries);
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::client::testing::{grpc, mock, request};

    const SAFE: RetryPolicy =
        RetryPolicy { retry_safe: true, replayable: true, max_attempts: 3, hedge: None, hash_key: None };

    fn layer(counters: &Arc<Counters>) -> RetryLayer {
        let policies = PerMethod::new(
            [
                ("/t.v1.T/Safe", SAFE),
                ("/t.v1.T/Unsafe", RetryPolicy { retry_safe: false, ..SAFE }),
                ("/t.v1.T/Hedged", RetryPolicy { hedge: Some((Duration::from_millis(10), 2)), ..SAFE }),
            ],
            RetryPolicy::UNKNOWN,
        );
        RetryLayer::new("t.v1.T", policies, counters.clone())
    }

    fn unavailable(never_reached: bool, pushback: Option<Option<Duration>>) -> BoxError {
        let status = Box::new(tonic::Status::unavailable("down"));
        CallError::Unavailable { endpoint: "10.0.0.1:1".into(), status, never_reached, pushback }.into()
    }

    #[tokio::test(start_paused = true)]
    async fn a_safe_method_is_sent_again_with_what_it_tried() {
        let counters = Arc::new(Counters::default());
        let (inner, mut handle) = mock();
        let call = tokio::spawn(layer(&counters).layer(inner).oneshot(request("/t.v1.T/Safe")));
        let (first, reply) = handle.next_request().await.unwrap();
        reply.send_error(unavailable(false, None));
        let (second, reply) = handle.next_request().await.unwrap();
        reply.send_response(grpc(Code::Ok));
        call.await.unwrap().unwrap();
        let tried = |r: &Request<Body>| r.extensions().get::<Tried>().map(|t| Arc::as_ptr(&t.0));
        assert!(tried(&first).is_some() && tried(&first) == tried(&second), "one Tried list per call");
        assert_eq!(counters.snapshot().retries, 1);
        let attempts = |kind| counters.metrics.attempts_of(kind);
        assert_eq!((attempts(Attempt::First), attempts(Attempt::Retry), attempts(Attempt::Hedge)), (1, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_past_the_attempt_limit_is_counted_as_not_sent() {
        let counters = Arc::new(Counters::default());
        let (inner, mut handle) = mock();
        let call = tokio::spawn(layer(&counters).layer(inner).oneshot(request("/t.v1.T/Safe")));
        for _ in 0..SAFE.max_attempts {
            handle.next_request().await.unwrap().1.send_error(unavailable(false, None));
        }
        call.await.unwrap().unwrap_err();
        assert_eq!(counters.metrics.attempts_of(Attempt::Retry), u64::from(SAFE.max_attempts - 1));
        assert_eq!(counters.metrics.not_retried_of(NotSent::AttemptLimit), 1);
        assert_eq!(counters.metrics.not_retried_of(NotSent::Budget), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsafe_method_is_retried_only_when_it_never_ran() {
        let counters = Arc::new(Counters::default());
        let (inner, mut handle) = mock();
        let service = layer(&counters).layer(inner);
        let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/Unsafe")));
        handle.next_request().await.unwrap().1.send_error(unavailable(false, None));
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err.downcast_ref::<CallError>(), Some(CallError::Unavailable { .. })));
        assert!(handle.poll_request().is_pending(), "not sent again");

        let start = Instant::now();
        let call = tokio::spawn(service.oneshot(request("/t.v1.T/Unsafe")));
        handle
            .next_request()
            .await
            .unwrap()
            .1
            .send_error(unavailable(true, Some(Some(Duration::from_millis(20)))));
        let (_, reply) = handle.next_request().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(20), "after the server's pushback");
        reply.send_response(grpc(Code::Ok));
        call.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_past_the_deadline_and_the_cause_says_so() {
        let (inner, mut handle) = mock();
        let mut req = request("/t.v1.T/Safe");
        let at = Instant::now() + Duration::from_millis(5);
        req.extensions_mut().insert(Deadline { at, budget: Duration::from_millis(5) });
        let counters = Arc::new(Counters::default());
        let call = tokio::spawn(layer(&counters).layer(inner).oneshot(req));
        handle
            .next_request()
            .await
            .unwrap()
            .1
            .send_error(unavailable(true, Some(Some(Duration::from_millis(20)))));
        let err = call.await.unwrap().unwrap_err();
        let Some(CallError::NotRetried { reason, last }) = err.downcast_ref::<CallError>() else {
            panic!("{err}")
        };
        assert_eq!(*reason, NotRetried::NoTimeLeft);
        assert_eq!(last.code(), Code::Unavailable);
        assert_eq!(err.to_string(), "down (not retried: no time left before the deadline)");
        assert_eq!(counters.metrics.not_retried_of(NotSent::NoTimeLeft), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_is_hedged_and_the_first_answer_wins() {
        let counters = Arc::new(Counters::default());
        let (inner, mut handle) = mock();
        let call = tokio::spawn(layer(&counters).layer(inner).oneshot(request("/t.v1.T/Hedged")));
        let (_, _slow) = handle.next_request().await.unwrap();
        let start = Instant::now();
        let (_, reply) = handle.next_request().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(10), "hedged after the delay");
        reply.send_response(grpc(Code::Ok));
        call.await.unwrap().unwrap();
        assert_eq!(counters.snapshot().hedges, 1);
        let attempts = |kind| counters.metrics.attempts_of(kind);
        assert_eq!((attempts(Attempt::First), attempts(Attempt::Retry), attempts(Attempt::Hedge)), (1, 0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_call_goes_straight_through() {
        let (inner, mut handle) = mock();
        let policies = PerMethod::new([], RetryPolicy { replayable: false, ..SAFE });
        let service = RetryLayer::new("t.v1.T", policies, Arc::default()).layer(inner);
        let call = tokio::spawn(service.oneshot(request("/t.v1.T/Stream")));
        let (req, reply) = handle.next_request().await.unwrap();
        assert!(req.extensions().get::<Tried>().is_none(), "sent once, as it came");
        reply.send_error(unavailable(true, None));
        assert!(call.await.unwrap().is_err());
        assert!(!matches!(handle.poll_request(), Poll::Ready(Some(_))), "not sent again");
    }
}
