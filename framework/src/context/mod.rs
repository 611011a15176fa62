//! The request context: what an inbound call hands to the outbound calls its
//! handler makes.
//!
//! The server sets a [`RequestContext`] around every handler. A generated
//! client called from inside the handler reads it and sends the inbound
//! call's remaining deadline along, minus [`DEADLINE_MARGIN`], so a chain of
//! services gives up together instead of working for a caller that has left.
//!
//! The context is task-local: it is visible in the handler's own future (and
//! in `join!`/`select!` inside it) but not in tasks the handler spawns; wrap
//! those with [`RequestContext::scope`] to carry it over.
//!
//! It also carries the call's [`TraceContext`]: the server makes one per
//! call from the caller's `traceparent` (or starts a trace), the log lines
//! written inside the call carry its ids, and a generated client called
//! inside it sends a child span's `traceparent`. Outside a server, wrap a
//! piece of work in [`RequestContext::traced`] so its calls share a trace.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

mod trace;

pub use self::trace::{
    Hex, SAMPLED, SpanId, TRACEPARENT, TRACESTATE, TraceContext, TraceId, TraceparentError, check_tracestate,
};

/// Kept back from an inherited deadline, to leave the caller time to receive
/// and pass on the answer.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// What the server knows about the call being handled.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    deadline: Option<Instant>,
    trace: Option<TraceContext>,
}

impl RequestContext {
    /// A context whose calls must finish by `deadline` (`None`: no deadline).
    pub fn new(deadline: Option<Instant>) -> Self {
        RequestContext { deadline, trace: None }
    }

    /// A context without a deadline in a new trace: calls made inside
    /// [`scope`](Self::scope) are spans of one trace, whose id is
    /// [`trace`](Self::trace)`.trace_id()`.
    pub fn traced() -> Self {
        RequestContext { deadline: None, trace: Some(TraceContext::new_root()) }
    }

    /// This context in the span `trace`.
    #[must_use]
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The context of the call being handled on this task, if any.
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The trace and span ids of the call being handled on this task, if
    /// it is traced; copies 24 bytes, nothing else.
    pub fn current_ids() -> Option<(TraceId, SpanId)> {
        CURRENT.try_with(|ctx| ctx.trace.as_ref().map(|t| (t.trace_id(), t.span_id()))).ok().flatten()
    }

    /// The span the call runs in, when it is traced.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// When the call being handled must be finished by.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left until the deadline; zero once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs `f` with this context as the current one.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Runs `fut` with this context as the current one.
    pub fn scope<F: Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<RequestContext, F> {
        CURRENT.scope(self, fut)
    }
}

/// The span an outbound call started now runs in: a child of the call being
/// handled, or the root of a new trace outside any traced call.
pub fn outbound_trace() -> TraceContext {
    CURRENT
        .try_with(|ctx| ctx.trace.as_ref().map(TraceContext::child))
        .ok()
        .flatten()
        .unwrap_or_else(TraceContext::new_root)
}

/// The deadline an outbound call started now should carry: the earlier of
/// `own` (the call's own timeout) and the inbound call's remaining deadline
/// less [`DEADLINE_MARGIN`].
pub fn outbound_deadline(own: Option<Duration>) -> Option<Instant> {
    let now = Instant::now();
    let own = own.map(|t| now + t);
    let inherited = RequestContext::current()
        .and_then(|ctx| ctx.deadline)
        .map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d).max(now));
    match (own, inherited) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn outbound_takes_the_earlier_deadline() {
        assert_eq!(outbound_deadline(None), None);
        let start = Instant::now();
        assert_eq!(outbound_deadline(Some(Duration::from_secs(1))), Some(start + Duration::from_secs(1)));

        let inbound = RequestContext::new(Some(start + Duration::from_millis(200)));
        let got = inbound.clone().scope(async { outbound_deadline(Some(Duration::from_secs(1))) }).await;
        assert_eq!(got, Some(start + Duration::from_millis(200) - DEADLINE_MARGIN));

        let got = inbound.scope(async { outbound_deadline(Some(Duration::from_millis(50))) }).await;
        assert_eq!(got, Some(start + Duration::from_millis(50)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_inbound_deadline_is_not_extended() {
        let start = Instant::now();
        let inbound = RequestContext::new(Some(start + Duration::from_millis(2)));
        tokio::time::advance(Duration::from_millis(10)).await;
        let got = inbound.scope(async { outbound_deadline(None) }).await;
        assert_eq!(got, Some(Instant::now()));
        assert_eq!(RequestContext::current().map(|c| c.remaining()), None);
    }
}
