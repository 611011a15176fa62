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

use tower::retry::budget::{Budget as _, TpsBudget};

use crate::error::CallError;

/// The most attempts of one call, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How a failed attempt may be followed: not at all, or after a backoff.
/// `None` when `error` is not a failure of the instance that a retry could
/// help with, or the server said not to retry.
pub(crate) fn retry_after(
    error: &CallError,
    retry_safe: bool,
    retry: u32,
    rng: &mut fastrand::Rng,
) -> Option<Duration> {
    let (never_reached, pushback) = match error {
        CallError::Unavailable { never_reached, pushback, .. } => (*never_reached, *pushback),
        CallError::Unreachable { never_reached, .. } => (*never_reached, None),
        _ => return None,
    };
    match pushback {
        // A negative pushback forbids retries.
        Some(None) => None,
        _ if !(never_reached || retry_safe) => None,
        Some(Some(pushback)) => Some(pushback),
        None => Some(jittered_backoff(retry, rng)),
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
    use tonic::Status;

    use super::*;

    fn unavailable(never_reached: bool, pushback: Option<Option<Duration>>) -> CallError {
        let status = Box::new(Status::unavailable("down"));
        CallError::Unavailable { endpoint: "e:1".into(), status, never_reached, pushback }
    }

    #[test]
    fn only_safe_or_unprocessed_failures_are_retried() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(retry_after(&unavailable(false, None), true, 1, &mut rng).is_some());
        assert!(retry_after(&unavailable(false, None), false, 1, &mut rng).is_none(), "may have run");
        let shed = unavailable(true, Some(Some(Duration::from_millis(100))));
        assert_eq!(retry_after(&shed, false, 1, &mut rng), Some(Duration::from_millis(100)), "never ran");
        assert!(
            retry_after(&unavailable(true, Some(None)), true, 1, &mut rng).is_none(),
            "negative pushback"
        );
        let late = CallError::DeadlineExceeded {
            method: "/a.A/M".into(),
            service: "a.A",
            timeout: Duration::ZERO,
            endpoint: None,
        };
        assert!(retry_after(&late, true, 1, &mut rng).is_none(), "no time left to retry in");
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
