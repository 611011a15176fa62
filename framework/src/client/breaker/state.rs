//! The state machine: closed, open, half-open; see the [layer docs](super).

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::BreakerState;

/// Failures in a row that open the breaker.
pub(crate) const FAILURES_TO_OPEN: u32 = 5;
/// The first open period.
pub(crate) const FIRST_OPEN: Duration = Duration::from_secs(1);
/// The longest open period.
pub(crate) const MAX_OPEN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, period: Duration },
    HalfOpen { probing: bool, period: Duration },
}

/// Failures in a row that eject an endpoint.
pub(crate) const FAILURES_TO_EJECT: u32 = 3;

/// One method's breaker, or one endpoint's ejection.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: State,
    last_failure: String,
    failures_to_open: u32,
}

/// Whether a call may go.
#[derive(Debug, PartialEq)]
pub(crate) enum Admit {
    /// Yes; report its outcome.
    Call,
    /// Yes, as the half-open probe; report its outcome.
    Probe,
    /// No: open until then, after this failure.
    Refuse { retry_in: Duration, last_failure: String },
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed { failures: 0 },
            last_failure: String::new(),
            failures_to_open: FAILURES_TO_OPEN,
        }
    }
}

impl Breaker {
    /// The ejection state of one endpoint: out after [`FAILURES_TO_EJECT`] failures in a row.
    pub(crate) fn for_endpoint() -> Self {
        Breaker { failures_to_open: FAILURES_TO_EJECT, ..Breaker::default() }
    }

    /// Opens at once (an endpoint far slower than its peers).
    pub(crate) fn force_open(&mut self, now: Instant, reason: &str) {
        reason.clone_into(&mut self.last_failure);
        let period = match self.state {
            State::Closed { .. } => FIRST_OPEN,
            State::HalfOpen { period, .. } | State::Open { period, .. } => (period * 2).min(MAX_OPEN),
        };
        self.state = State::Open { until: now + period, period };
    }

    /// The state, as the metrics and the status page show it.
    pub(crate) fn kind(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The last failure reported, or why it was forced open.
    pub(crate) fn last_failure(&self) -> &str {
        &self.last_failure
    }

    /// Whether the state is closed and will admit any call (not only a probe).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    /// Whether a probe could be admitted now.
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => false,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { probing, .. } => !probing,
        }
    }

    /// Asks to send a call at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        match &mut self.state {
            State::Closed { .. } => Admit::Call,
            State::Open { until, period } if now >= *until => {
                self.state = State::HalfOpen { probing: true, period: *period };
                Admit::Probe
            }
            State::Open { until, .. } => {
                Admit::Refuse { retry_in: *until - now, last_failure: self.last_failure.clone() }
            }
            State::HalfOpen { probing: false, period } => {
                self.state = State::HalfOpen { probing: true, period: *period };
                Admit::Probe
            }
            State::HalfOpen { probing: true, .. } => {
                Admit::Refuse { retry_in: Duration::ZERO, last_failure: self.last_failure.clone() }
            }
        }
    }

    /// Reports a call that the target answered (any answer but a failure).
    pub(crate) fn succeeded(&mut self) {
        // A call let through before the breaker opened, answering late, does
        // not close it: the target may answer some calls and still be the
        // one to avoid (slow, failing most). Only a probe closes it.
        if !matches!(self.state, State::Open { .. }) {
            self.state = State::Closed { failures: 0 };
        }
    }

    /// Reports a failure of the target at `now`.
    pub(crate) fn failed(&mut self, now: Instant, failure: &str) {
        failure.clone_into(&mut self.last_failure);
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.failures_to_open => {
                State::Closed { failures: failures + 1 }
            }
            State::Closed { .. } => State::Open { until: now + FIRST_OPEN, period: FIRST_OPEN },
            // A call let through before the breaker opened, failing late:
            // nothing new about the target. Only a failed probe lengthens
            // the open period.
            State::Open { until, period } => State::Open { until, period },
            State::HalfOpen { period, .. } => {
                let period = (period * 2).min(MAX_OPEN);
                State::Open { until: now + period, period }
            }
        };
    }

    /// Reports that an admitted call ended without telling anything about
    /// the target (cancelled by the caller): a probe slot is given back.
    pub(crate) fn abandoned(&mut self) {
        if let State::HalfOpen { period, .. } = self.state {
            self.state = State::HalfOpen { probing: false, period };
        }
    }

    /// Whether calls are being refused now.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert_eq!(breaker.admit(Instant::now()), Admit::Call);
            breaker.failed(Instant::now(), "unavailable");
        }
        // A success in between resets the count.
        breaker.succeeded();
        for _ in 0..FAILURES_TO_OPEN {
            assert_eq!(breaker.admit(Instant::now()), Admit::Call);
            breaker.failed(Instant::now(), "connection refused");
        }
        assert!(breaker.is_open());
        let Admit::Refuse { retry_in, last_failure } = breaker.admit(Instant::now()) else { panic!("open") };
        assert_eq!((retry_in, last_failure.as_str()), (FIRST_OPEN, "connection refused"));

        tokio::time::advance(FIRST_OPEN).await;
        assert_eq!(breaker.admit(Instant::now()), Admit::Probe);
        // One probe at a time.
        assert!(matches!(breaker.admit(Instant::now()), Admit::Refuse { .. }));
        breaker.succeeded();
        assert!(!breaker.is_open());
        assert_eq!(breaker.admit(Instant::now()), Admit::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_open_period_up_to_the_cap() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed(Instant::now(), "x");
        }
        let mut period = FIRST_OPEN;
        for _ in 0..8 {
            tokio::time::advance(period).await;
            assert_eq!(breaker.admit(Instant::now()), Admit::Probe);
            breaker.failed(Instant::now(), "x");
            period = (period * 2).min(MAX_OPEN);
            let Admit::Refuse { retry_in, .. } = breaker.admit(Instant::now()) else { panic!("open") };
            assert_eq!(retry_in, period);
        }
        assert_eq!(period, MAX_OPEN);
    }

    #[tokio::test(start_paused = true)]
    async fn late_failures_of_calls_let_through_before_opening_do_not_lengthen_it() {
        let mut endpoint = Breaker::for_endpoint();
        // Calls in flight together all fail, say when an instance is killed.
        for _ in 0..FAILURES_TO_EJECT + 4 {
            endpoint.failed(Instant::now(), "connection reset");
        }
        let Admit::Refuse { retry_in, .. } = endpoint.admit(Instant::now()) else { panic!("open") };
        assert_eq!(retry_in, FIRST_OPEN);
        tokio::time::advance(FIRST_OPEN / 2).await;
        endpoint.failed(Instant::now(), "connection reset");
        tokio::time::advance(FIRST_OPEN / 2).await;
        assert_eq!(endpoint.admit(Instant::now()), Admit::Probe, "due on time");
    }

    #[tokio::test(start_paused = true)]
    async fn late_successes_of_calls_let_through_before_opening_do_not_close_it() {
        let mut endpoint = Breaker::for_endpoint();
        endpoint.force_open(Instant::now(), "mean latency far above its peers'");
        // A slow instance's calls in flight finish after its ejection.
        endpoint.succeeded();
        assert!(endpoint.is_open(), "still ejected until a probe answers");
        tokio::time::advance(FIRST_OPEN).await;
        assert_eq!(endpoint.admit(Instant::now()), Admit::Probe);
        endpoint.succeeded();
        assert!(endpoint.is_closed(), "the probe's answer brings it back");
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_are_ejected_sooner_and_can_be_forced_out() {
        let mut endpoint = Breaker::for_endpoint();
        for _ in 0..FAILURES_TO_EJECT {
            assert!(endpoint.is_closed());
            endpoint.failed(Instant::now(), "unavailable");
        }
        assert!(!endpoint.is_closed() && !endpoint.probe_due(Instant::now()));
        tokio::time::advance(FIRST_OPEN).await;
        assert!(endpoint.probe_due(Instant::now()));
        assert_eq!(endpoint.admit(Instant::now()), Admit::Probe);
        endpoint.succeeded();
        assert!(endpoint.is_closed());

        endpoint.force_open(Instant::now(), "p99 far above its peers");
        assert!(matches!(endpoint.admit(Instant::now()), Admit::Refuse { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed(Instant::now(), "x");
        }
        tokio::time::advance(FIRST_OPEN).await;
        assert_eq!(breaker.admit(Instant::now()), Admit::Probe);
        breaker.abandoned();
        assert_eq!(breaker.admit(Instant::now()), Admit::Probe);
    }
}
