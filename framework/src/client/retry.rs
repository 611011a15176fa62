//! When a failed attempt may be sent again, and when.
//!
//! A retry is safe when the method is marked `NO_SIDE_EFFECTS` or
//! `IDEMPOTENT` in its proto and the attempt failed with `UNAVAILABLE` or a
//! transport error; and for any method when the request provably never
//! reached a handler: the connection was refused, the stream was refused
//! (`REFUSED_STREAM`), or a Trellis server shed it unprocessed. Every retry
//! goes to another instance, after a jittered exponential backoff (or the
//! server's `grpc-retry-pushback-ms`; a negative pushback means "do not
//! retry"), never past the call's deadline, and only while the retry budget
//! allows: 20% of recent calls plus a floor of 5 per second, so a failing
//! fleet sees at most that much extra load.

use std::time::Duration;

use http::HeaderMap;
use tonic::{Code, Status};
use tower::retry::budget::{Budget as _, TpsBudget};

use crate::protocol::{RETRY_PUSHBACK_MS, UNPROCESSED};

/// The most attempts of one call, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Whether a failed attempt reached a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reached {
    /// Provably not: any method may be retried.
    Never,
    /// Perhaps: only retry-safe methods may be retried.
    Maybe,
}

/// A failed attempt: one that says the target could not serve the call.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) reached: Reached,
    /// The server's `grpc-retry-pushback-ms`: `Some(None)` means do not retry.
    pub(crate) pushback: Option<Option<Duration>>,
}

/// Classifies the status of a trailers-only response: `None` when it is an
/// answer (success or an application error), `Some` when the target failed.
pub(crate) fn failure_in_headers(headers: &HeaderMap) -> Option<Failure> {
    let status = Status::from_header_map(headers)?;
    let unprocessed = headers.contains_key(UNPROCESSED);
    let code = status.code();
    if code != Code::Unavailable && !(code == Code::ResourceExhausted && unprocessed) {
        return None;
    }
    let pushback = headers.get(RETRY_PUSHBACK_MS).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    });
    Some(Failure { status, reached: if unprocessed { Reached::Never } else { Reached::Maybe }, pushback })
}

/// Classifies a transport error.
pub(crate) fn failure_of_error(err: &(dyn std::error::Error + 'static), status: Status) -> Failure {
    let mut never = false;
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>()
            || cause
                .downcast_ref::<h2::Error>()
                .is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            never = true;
            break;
        }
        source = cause.source();
    }
    Failure { status, reached: if never { Reached::Never } else { Reached::Maybe }, pushback: None }
}

/// Whether `err` is a timeout (tonic's enforcement of `grpc-timeout`).
pub(crate) fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = cause.source();
    }
    false
}

impl Failure {
    /// Whether this failure may be retried for a method that is (or is not) retry-safe.
    pub(crate) fn retryable(&self, retry_safe: bool) -> bool {
        let allowed_by_server = !matches!(self.pushback, Some(None));
        allowed_by_server && (self.reached == Reached::Never || retry_safe)
    }

    /// How long to wait before retry number `retry` (1 for the first).
    pub(crate) fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        match self.pushback {
            Some(Some(pushback)) => pushback,
            _ => jittered_backoff(retry, rng),
        }
    }
}

/// Full jitter: uniform in `[0, min(MAX, BASE * 2^(retry-1))]`.
pub(crate) fn jittered_backoff(retry: u32, rng: &mut fastrand::Rng) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << retry.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    ceiling.mul_f64(rng.f64())
}

/// The retry budget of one client channel.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    budget: TpsBudget,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(0.2, 5)
    }
}

impl RetryBudget {
    /// A budget of `ratio` of recent calls plus `floor` per second, over 10 s.
    pub(crate) fn new(ratio: f32, floor: u32) -> Self {
        RetryBudget { budget: TpsBudget::new(Duration::from_secs(10), floor, ratio) }
    }

    /// Records a call.
    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes a retry from the budget, if there is one left.
    pub(crate) fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_target_failures_are_failures() {
        assert!(failure_in_headers(&headers(&[("grpc-status", "0")])).is_none());
        assert!(failure_in_headers(&headers(&[("grpc-status", "5")])).is_none(), "NOT_FOUND is an answer");
        assert!(failure_in_headers(&headers(&[("grpc-status", "8")])).is_none(), "app RESOURCE_EXHAUSTED");
        let unavailable = failure_in_headers(&headers(&[("grpc-status", "14")])).unwrap();
        assert!(unavailable.retryable(true) && !unavailable.retryable(false));
        let shed = failure_in_headers(&headers(&[
            ("grpc-status", "8"),
            (UNPROCESSED, "1"),
            ("grpc-retry-pushback-ms", "100"),
        ]))
        .unwrap();
        assert!(shed.retryable(false), "a shed call never ran: any method may retry");
        assert_eq!(shed.backoff(1, &mut fastrand::Rng::with_seed(1)), Duration::from_millis(100));
        let stop =
            failure_in_headers(&headers(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")])).unwrap();
        assert!(!stop.retryable(true), "a negative pushback forbids retries");
    }

    #[test]
    fn connection_refused_never_reached_the_server() {
        let refused =
            tonic::ConnectError(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        let failure = failure_of_error(&refused, Status::unavailable("x"));
        assert_eq!(failure.reached, Reached::Never);
        assert!(failure.retryable(false));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(failure_of_error(&reset, Status::unavailable("x")).reached, Reached::Maybe);
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..10 {
            let ceiling = (BACKOFF_BASE * (1 << (retry - 1))).min(BACKOFF_MAX);
            for _ in 0..100 {
                assert!(jittered_backoff(retry, &mut rng) <= ceiling);
            }
        }
        let samples: Vec<Duration> = (0..100).map(|_| jittered_backoff(5, &mut rng)).collect();
        assert!(
            samples.iter().any(|d| *d < BACKOFF_BASE * 8) && samples.iter().any(|d| *d > BACKOFF_BASE * 8)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_fifth_of_calls_plus_a_floor() {
        let budget = RetryBudget::default();
        for _ in 0..1000 {
            budget.deposit();
        }
        let retries = std::iter::from_fn(|| budget.withdraw().then_some(())).take(10_000).count();
        // 20% of 1000 calls, plus the floor of 5 per second over the 10 s window.
        assert_eq!(retries, 200 + 50);
    }
}
