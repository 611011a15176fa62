//! Finished spans, handed to the OTLP exporter when there is one.
//!
//! The server's trace layer and the client's each make one [`FinishedSpan`]
//! per call, and only when [`exporting`] says an exporter is installed
//! (feature `otel`, `trace.otlp_endpoint` set): otherwise nothing is built.
//! [`record`] never blocks: the span goes into a bounded queue, or is
//! dropped and counted when the queue is full.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tonic::Code;

use crate::context::{SpanId, TraceContext, TraceId};

/// Which side of a call a span measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A call this process served.
    Server,
    /// A call this process made.
    Client,
}

/// One call, measured: what the exporter sends.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// Server or client.
    pub kind: SpanKind,
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The span this one is a child of.
    pub parent: Option<SpanId>,
    /// The W3C trace flags.
    pub flags: u8,
    /// The `tracestate`, as passed along.
    pub tracestate: String,
    /// The method path, `/package.Service/Method`.
    pub method: String,
    /// The call's gRPC status.
    pub code: Code,
    /// When the call started.
    pub start: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The other side's address, when known.
    pub peer: Option<SocketAddr>,
}

impl FinishedSpan {
    /// The span `trace` of a call to `method` that ended now with `code`,
    /// `elapsed` after it started.
    pub fn new(
        kind: SpanKind,
        trace: &TraceContext,
        method: &str,
        code: Code,
        elapsed: Duration,
        peer: Option<SocketAddr>,
    ) -> FinishedSpan {
        FinishedSpan {
            kind,
            trace_id: trace.trace_id(),
            span_id: trace.span_id(),
            parent: trace.parent(),
            flags: trace.flags(),
            tracestate: trace.tracestate().and_then(|s| s.to_str().ok()).unwrap_or_default().to_owned(),
            method: method.to_owned(),
            code,
            start: SystemTime::now().checked_sub(elapsed).unwrap_or(SystemTime::UNIX_EPOCH),
            duration: elapsed,
            peer,
        }
    }
}

/// Whether spans are exported: build a [`FinishedSpan`] only then.
#[inline]
pub fn exporting() -> bool {
    #[cfg(feature = "otel")]
    {
        super::otlp::installed()
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// Queues `span` for export; never blocks.
pub fn record(span: FinishedSpan) {
    #[cfg(feature = "otel")]
    super::otlp::record(span);
    #[cfg(not(feature = "otel"))]
    drop(span);
}
