//! OTLP over gRPC: one span per server call and per client call, sent in
//! batches to a collector (feature `otel`, `trace.otlp_endpoint`).
//!
//! Built on the official `opentelemetry-proto` crate's generated messages
//! and tonic client, not on the OpenTelemetry SDK: the spans are already
//! measured by the trace layers, with the ids of
//! [`TraceContext`](crate::context::TraceContext), so an SDK tracer would be
//! a second span model to keep in step. The exporter is process-wide, like
//! the log subscriber.
//!
//! Calls never wait for it: [`record`] puts a span into a bounded queue of
//! [`QUEUE`] spans, or drops and counts it when the queue is full. A thread
//! of its own sends batches of up to [`BATCH`] spans, at least every
//! [`BATCH_DELAY`]. While the collector is away, batches are dropped and
//! counted; one warning says so when the outage starts, one line every
//! [`REPORT_EVERY`] gives the running count, and one says when export works
//! again, with the total.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use tokio::sync::mpsc;
use tonic::Code;

use super::span::{FinishedSpan, SpanKind};
use crate::error::Error;

/// Spans waiting to be sent, at most.
pub(crate) const QUEUE: usize = 4096;
/// Spans per export request, at most.
pub(crate) const BATCH: usize = 512;
/// How long a span waits for its batch to fill, at most.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, at most, a continuing outage is logged.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// `Span.flags`: whether the parent is remote is known (bit 8), and it is (bit 9).
const PARENT_REMOTE_KNOWN: u32 = 0x100;
const PARENT_REMOTE: u32 = 0x200;

enum Msg {
    Span(Box<FinishedSpan>),
    Flush(std::sync::mpsc::SyncSender<()>),
}

struct Exporter {
    queue: mpsc::Sender<Msg>,
    /// Spans dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Whether an exporter is installed.
#[inline]
pub(crate) fn installed() -> bool {
    EXPORTER.get().is_some()
}

/// Queues `span`; drops and counts it when the queue is full.
pub(crate) fn record(span: FinishedSpan) {
    if let Some(exporter) = EXPORTER.get()
        && exporter.queue.try_send(Msg::Span(Box::new(span))).is_err()
    {
        exporter.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends what is queued now, waiting at most `timeout`.
pub(crate) fn flush(timeout: Duration) {
    let Some(exporter) = EXPORTER.get() else { return };
    let (done, wait) = std::sync::mpsc::sync_channel(1);
    if exporter.queue.try_send(Msg::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(timeout);
    }
}

/// Starts exporting to `endpoint` (`http://host:port`) as `service`. A
/// second call keeps the first exporter.
pub(crate) fn install(endpoint: &str, service: &str) -> Result<(), Error> {
    let bad = |why: String| {
        Error::Config(format!(
            "`trace.otlp_endpoint`: `{endpoint}` {why}; expected the collector's OTLP/gRPC address, \
             such as `http://127.0.0.1:4317`"
        ))
    };
    if !endpoint.starts_with("http://") {
        return Err(bad("is not an `http://` URL".to_owned()));
    }
    let target = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| bad(format!("is not a URL ({e})")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(EXPORT_TIMEOUT);
    if EXPORTER.get().is_some() {
        return Ok(());
    }
    let (queue, rx) = mpsc::channel(QUEUE);
    if EXPORTER.set(Exporter { queue, dropped: AtomicU64::new(0) }).is_err() {
        return Ok(());
    }
    let resource = resource(service);
    let endpoint = endpoint.to_owned();
    std::thread::Builder::new()
        .name("trellis-otlp".to_owned())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(run(rx, target, endpoint, resource)),
            Err(err) => tracing::error!("OTLP export disabled: cannot start its runtime: {err}"),
        })
        .map_err(|e| {
            Error::Config(format!("`trace.otlp_endpoint`: cannot start the exporter thread: {e}"))
        })?;
    Ok(())
}

/// How the exporter is doing with the collector.
#[derive(Default)]
struct Outage {
    /// When the current outage started, if there is one.
    since: Option<Instant>,
    last_report: Option<Instant>,
    /// Spans dropped in this outage (or, without one, since the last report).
    dropped: u64,
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    target: tonic::transport::Endpoint,
    endpoint: String,
    resource: Resource,
) {
    let mut client = TraceServiceClient::new(target.connect_lazy());
    let mut outage = Outage::default();
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        take(first, &mut batch, &mut flushes);
        let timer = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(timer);
        while batch.len() < BATCH && flushes.is_empty() {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => take(msg, &mut batch, &mut flushes),
                    None => break,
                },
                () = &mut timer => break,
            }
        }
        if !flushes.is_empty() {
            while let Ok(msg) = rx.try_recv() {
                take(msg, &mut batch, &mut flushes);
            }
        }
        while !batch.is_empty() {
            let spans: Vec<Span> = batch.drain(..batch.len().min(BATCH)).collect();
            send(&mut client, &resource, spans, &endpoint, &mut outage).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(msg: Msg, batch: &mut Vec<Span>, flushes: &mut Vec<std::sync::mpsc::SyncSender<()>>) {
    match msg {
        Msg::Span(span) => batch.push(otlp_span(&span)),
        Msg::Flush(done) => flushes.push(done),
    }
}

async fn send(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    resource: &Resource,
    spans: Vec<Span>,
    endpoint: &str,
    outage: &mut Outage,
) {
    let count = spans.len() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "trellis".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let result = client.export(request).await;
    let queue_full = EXPORTER.get().map_or(0, |e| e.dropped.swap(0, Ordering::Relaxed));
    outage.dropped += queue_full;
    let now = Instant::now();
    match result {
        Ok(_) => {
            if let Some(since) = outage.since.take() {
                tracing::info!(
                    dropped = outage.dropped,
                    "OTLP export to {endpoint} works again after {:.1}s; {} spans were dropped meanwhile",
                    since.elapsed().as_secs_f64(),
                    outage.dropped
                );
                outage.dropped = 0;
            } else if outage.dropped > 0 {
                tracing::warn!(
                    dropped = outage.dropped,
                    "OTLP export: {} spans dropped, the queue of {QUEUE} was full",
                    outage.dropped
                );
                outage.dropped = 0;
            }
        }
        Err(status) => {
            outage.dropped += count;
            let due = outage.last_report.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
            if outage.since.is_none() {
                outage.since = Some(now);
                outage.last_report = Some(now);
                tracing::warn!(
                    dropped = outage.dropped,
                    "OTLP export to {endpoint} failed ({}: {}); dropping spans until the collector answers, \
                     {} dropped so far",
                    status.code(),
                    status.message(),
                    outage.dropped
                );
            } else if due {
                outage.last_report = Some(now);
                tracing::warn!(
                    dropped = outage.dropped,
                    "OTLP export to {endpoint} still failing; {} spans dropped so far",
                    outage.dropped
                );
            }
        }
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..KeyValue::default()
    }
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service),
            string("telemetry.sdk.name", "trellis"),
            string("telemetry.sdk.language", "rust"),
            string("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Resource::default()
    }
}

/// Whether `code` makes a span an error: every failure on the client; on the
/// server only the server's own (OpenTelemetry's RPC conventions).
fn is_error(kind: SpanKind, code: Code) -> bool {
    match kind {
        SpanKind::Client => code != Code::Ok,
        SpanKind::Server => crate::protocol::is_server_error(code),
    }
}

fn nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn otlp_span(s: &FinishedSpan) -> Span {
    let name = s.method.strip_prefix('/').unwrap_or(&s.method);
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let mut attributes = vec![
        string("rpc.system", "grpc"),
        string("rpc.service", service),
        string("rpc.method", method),
        int("rpc.grpc.status_code", i64::from(s.code as i32)),
    ];
    if let Some(peer) = s.peer {
        attributes.push(string("network.peer.address", peer.ip().to_string()));
        attributes.push(int("network.peer.port", i64::from(peer.port())));
    }
    let (kind, remote) = match s.kind {
        SpanKind::Server => (span::SpanKind::Server, PARENT_REMOTE),
        SpanKind::Client => (span::SpanKind::Client, 0),
    };
    let status = if is_error(s.kind, s.code) {
        Status { code: status::StatusCode::Error as i32, message: s.code.description().to_owned() }
    } else {
        Status { code: status::StatusCode::Unset as i32, message: String::new() }
    };
    let start = nanos(s.start);
    Span {
        trace_id: s.trace_id.to_bytes().to_vec(),
        span_id: s.span_id.to_bytes().to_vec(),
        trace_state: s.tracestate.clone(),
        parent_span_id: s.parent.map(|p| p.to_bytes().to_vec()).unwrap_or_default(),
        flags: u32::from(s.flags) | PARENT_REMOTE_KNOWN | if s.parent.is_some() { remote } else { 0 },
        name: name.to_owned(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(u64::try_from(s.duration.as_nanos()).unwrap_or(u64::MAX)),
        attributes,
        status: Some(status),
        ..Span::default()
    }
}
