//! Hedged calls: another attempt while the first is slow.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::ServiceExt;
use tower_service::Service;

use super::{Kept, MAX_ATTEMPTS, Shared};
use crate::client::deadline::Deadline;
use crate::client::metrics::Attempt;
use crate::client::stats::Counters;
use crate::error::{BoxError, CallError};

/// Sends an attempt, then, while none has answered, another to another
/// instance every `delay`, at most `max` in flight, within the hedge budget;
/// the first answer wins and the others are cancelled. A failed attempt is
/// replaced at once by one to another instance, up to `max` + 3 attempts.
pub(super) async fn hedged<S>(
    shared: &Shared,
    inner: S,
    kept: &Kept,
    (delay, max): (Duration, u32),
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    let budget = kept.parts.extensions.get::<Deadline>().copied();
    let deadline = budget.map_or_else(|| Instant::now() + Duration::from_secs(86_400), |d| d.at);
    let mut in_flight = FuturesUnordered::new();
    let mut launched = 0u32;
    let mut last_failure: Option<BoxError> = None;
    let mut next_launch = Instant::now();
    shared.hedge_budget.deposit();
    loop {
        let may_launch = (in_flight.len() as u32) < max && launched < max + MAX_ATTEMPTS;
        if may_launch && Instant::now() >= next_launch {
            let hedge = !in_flight.is_empty();
            if !hedge || shared.hedge_budget.withdraw() {
                if hedge {
                    Counters::bump(&shared.counters.hedges);
                }
                let kind = match (hedge, launched) {
                    (true, _) => Attempt::Hedge,
                    (false, 0) => Attempt::First,
                    (false, _) => Attempt::Retry,
                };
                shared.counters.metrics.attempt(kind);
                in_flight.push(inner.clone().oneshot(kept.attempt()));
                launched += 1;
            }
            next_launch = Instant::now() + delay;
        }
        if in_flight.is_empty() {
            // None in flight, and no more may be sent.
            return Err(last_failure.unwrap_or_else(|| "no attempt was made".into()));
        }
        let wake = if may_launch { next_launch.min(deadline) } else { deadline };
        tokio::select! {
            Some(result) = in_flight.next() => match result {
                Ok(response) => return Ok(response),
                Err(err) => {
                    let err: BoxError = err.into();
                    if instance_failed(&err) {
                        // Replace the failed attempt at once, elsewhere.
                        next_launch = Instant::now();
                    } else if in_flight.is_empty() {
                        return Err(err);
                    }
                    last_failure = Some(err);
                }
            },
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    let error = CallError::DeadlineExceeded {
                        method: kept.parts.uri.path().to_owned(),
                        service: shared.service,
                        timeout: budget.map(|d| d.budget).unwrap_or_default(),
                        endpoint: None,
                    };
                    return Err(error.into());
                }
            }
        }
    }
}

/// Whether an attempt failed for its instance (so another may do better).
fn instance_failed(err: &BoxError) -> bool {
    err.downcast_ref::<CallError>()
        .is_some_and(|e| matches!(e, CallError::Unavailable { .. } | CallError::Unreachable { .. }))
}
