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

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

mod trace;

pub use self::trace::{
    Hex, SAMPLED, SpanId, TRACEPARENT, TRACESTATE, TraceContext, TraceId, TraceparentError, check_tracestate,
};

/// Kept back from an inherited deadline, to leave the caller time to receive
/// and pass on the answer.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

thread_local! {
    /// The context of the call being polled on this thread: set by
    /// [`Scoped`] around each poll of its future, and by
    /// [`RequestContext::sync_scope`] around its closure.
    static CURRENT: RefCell<Option<RequestContext>> = const { RefCell::new(None) };
}

/// Reads the current context, if any.
fn with_current<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    CURRENT.try_with(|current| current.borrow().as_ref().map(f)).ok().flatten()
}

/// While alive, `slot`'s context is the current one (and `slot` holds the
/// one before); dropped, each goes back where it was.
struct Entered<'a> {
    slot: &'a mut Option<RequestContext>,
}

impl<'a> Entered<'a> {
    fn new(slot: &'a mut Option<RequestContext>) -> Self {
        // `try_with`: a future dropped while the thread exits finds no slot.
        let _ = CURRENT.try_with(|current| std::mem::swap(&mut *current.borrow_mut(), slot));
        Entered { slot }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|current| std::mem::swap(&mut *current.borrow_mut(), self.slot));
    }
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
        with_current(Clone::clone)
    }

    /// Whether a call is being handled on this task, and its deadline.
    pub(crate) fn current_deadline() -> Option<Option<Instant>> {
        with_current(|ctx| ctx.deadline)
    }

    /// The trace and span ids of the call being handled on this task, if
    /// it is traced; copies 24 bytes, nothing else.
    pub fn current_ids() -> Option<(TraceId, SpanId)> {
        with_current(|ctx| ctx.trace.as_ref().map(|t| (t.trace_id(), t.span_id()))).flatten()
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
        let mut slot = Some(self);
        let _entered = Entered::new(&mut slot);
        f()
    }

    /// Runs `fut` with this context as the current one.
    pub fn scope<F: Future>(self, fut: F) -> Scoped<F> {
        Scoped { ctx: Some(self), inner: Some(fut) }
    }

    /// Calls `make` with this context as the current one, and runs the
    /// future it returns in it: what a server layer does with its inner
    /// service's `call`.
    pub(crate) fn call<F: Future>(self, make: impl FnOnce() -> F) -> Scoped<F> {
        let mut ctx = Some(self);
        let inner = {
            let _entered = Entered::new(&mut ctx);
            make()
        };
        Scoped { ctx, inner: Some(inner) }
    }
}

pin_project! {
    /// A future run in a [`RequestContext`]: made by
    /// [`RequestContext::scope`]. The context is current while the future
    /// is polled and while it is dropped.
    #[derive(Debug)]
    pub struct Scoped<F> {
        ctx: Option<RequestContext>,
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                let _entered = Entered::new(this.ctx);
                this.inner.set(None);
            }
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = Entered::new(this.ctx);
        this.inner.as_pin_mut().expect("a `Scoped` holds its future until dropped").poll(cx)
    }
}

/// The span an outbound call started now runs in: a child of the call being
/// handled, or the root of a new trace outside any traced call.
pub fn outbound_trace() -> TraceContext {
    with_current(|ctx| ctx.trace.as_ref().map(TraceContext::child))
        .flatten()
        .unwrap_or_else(TraceContext::new_root)
}

/// The deadline an outbound call started now should carry: the earlier of
/// `own` (the call's own timeout) and the inbound call's remaining deadline
/// less [`DEADLINE_MARGIN`].
pub fn outbound_deadline(own: Option<Duration>) -> Option<Instant> {
    let now = Instant::now();
    let own = own.map(|t| now + t);
    let inherited = RequestContext::current_deadline()
        .flatten()
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

    /// Notes, when dropped, the deadline current then.
    struct SeesOnDrop(std::sync::Arc<std::sync::Mutex<Option<Option<Instant>>>>);

    impl Drop for SeesOnDrop {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = RequestContext::current_deadline();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_context_is_current_while_its_future_runs_and_drops_and_restored_after() {
        let (outer, inner) =
            (Instant::now() + Duration::from_secs(2), Instant::now() + Duration::from_secs(1));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let nested = RequestContext::new(Some(outer)).scope(async {
            assert_eq!(RequestContext::current_deadline(), Some(Some(outer)));
            let made = RequestContext::new(Some(inner)).call(|| {
                assert_eq!(RequestContext::current_deadline(), Some(Some(inner)), "while the future is made");
                async { RequestContext::current_deadline() }
            });
            assert_eq!(made.await, Some(Some(inner)), "while it is polled");
            assert_eq!(RequestContext::current_deadline(), Some(Some(outer)), "the outer one back");
            let dropped = SeesOnDrop(std::sync::Arc::clone(&seen));
            drop(RequestContext::new(Some(inner)).scope(async move {
                let _dropped = dropped;
            }));
        });
        nested.await;
        assert_eq!(
            *seen.lock().unwrap(),
            Some(Some(inner)),
            "a future dropped unpolled drops in its context"
        );
        assert_eq!(RequestContext::current_deadline(), None);
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
