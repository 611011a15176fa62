//! Metrics in the Prometheus text format, and what the admin listener's
//! status page shows.
//!
//! One [`Metrics`] per process holds every metric family (an explicit
//! `prometheus-client` registry, no global one). The application
//! [`Context`](crate::Context) makes it and hands it to the server and to
//! every channel; the server's metrics are a layer of its stack
//! (`server/metrics.rs`), the client's a layer of each channel
//! (`client/metrics.rs`) plus counts taken where the retry, breaker,
//! balancer and endpoint layers decide.
//!
//! # Naming
//!
//! The OpenTelemetry RPC semantic conventions, mapped to Prometheus: dots
//! become underscores, the unit is a suffix in base units, counters end in
//! `_total`. `rpc.server.call.duration` is `rpc_server_call_duration_seconds`,
//! a histogram with the labels `service` (`rpc.service`), `method`
//! (`rpc.method`) and `code` (`rpc.grpc.status_code`, by name: `OK`,
//! `UNAVAILABLE`); the client's mirror is `rpc_client_call_duration_seconds`,
//! its `service` being the target service. What the conventions do not
//! name is `rpc_*` when any RPC server has it (calls started, handled, in
//! flight) and `trellis_*` when it is Trellis's own (shedding, the drain
//! state, the client's resilience metrics). Process metrics use the names
//! every Prometheus client library uses (`process_cpu_seconds_total`, ...).
//! `docs/observability.md` lists every metric with its labels and meaning.
//!
//! # Cost
//!
//! Label sets are resolved once, when a server starts or a channel is
//! built (per status code, on the first call that ends with it); a call
//! then costs a method lookup and a few relaxed atomic adds. Gauges that
//! describe state (endpoints per state, breaker states, the drain state)
//! are read at scrape time, costing nothing per call.

mod histogram;
mod process;
mod status;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use self::histogram::{DURATION_BUCKETS, Histogram};
use self::status::{Board, BoardCollector};
pub(crate) use self::status::{
    BreakerSnapshot, BreakerState, ChannelSnapshot, ChannelView, EndpointHealth, EndpointSnapshot,
    ServerInfo, ServerState,
};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The name of a gRPC status code, as the `code` label has it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code as i32).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// A method of a service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
}

/// A method of a service, and how its calls ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) code: &'static str,
}

/// A target service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub(crate) service: &'static str,
}

/// A target service and the kind of an attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    pub(crate) service: &'static str,
    pub(crate) kind: &'static str,
}

/// A target service and why something happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) service: &'static str,
    pub(crate) reason: &'static str,
}

/// A method's breaker and the state it went to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransitionLabels {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) to: &'static str,
}

/// The server's metric families.
#[derive(Debug, Default)]
pub(crate) struct ServerFamilies {
    pub(crate) started: Family<MethodLabels, Counter>,
    pub(crate) handled: Family<CallLabels, Counter>,
    pub(crate) duration: Family<CallLabels, Histogram>,
    pub(crate) in_flight: Family<MethodLabels, Gauge>,
    pub(crate) shed: Family<MethodLabels, Counter>,
    pub(crate) expired: Family<MethodLabels, Counter>,
}

/// The client's metric families, by target service.
#[derive(Debug, Default)]
pub(crate) struct ClientFamilies {
    pub(crate) duration: Family<CallLabels, Histogram>,
    pub(crate) attempts: Family<AttemptLabels, Counter>,
    pub(crate) retries_not_sent: Family<ReasonLabels, Counter>,
    pub(crate) breaker_transitions: Family<TransitionLabels, Counter>,
    pub(crate) ejections: Family<ReasonLabels, Counter>,
    pub(crate) discovery_updates: Family<ServiceLabels, Counter>,
    pub(crate) failed_before_sending: Family<ReasonLabels, Counter>,
}

/// Every metric of one process, and what the status page shows; cheap to
/// clone (clones share everything). See the [module docs](self).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Locked only to encode a scrape.
    registry: Mutex<Registry>,
    server: ServerFamilies,
    client: ClientFamilies,
    board: Arc<Board>,
    service: &'static str,
    version: &'static str,
    started: std::time::Instant,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("service", &self.inner.service)
            .field("version", &self.inner.version)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of the application `service` at `version` (exported in
    /// `trellis_build_info`).
    pub fn new(service: &'static str, version: &'static str) -> Self {
        let server = ServerFamilies::default();
        let client = ClientFamilies::default();
        let board = Arc::new(Board::default());
        let mut registry = Registry::default();
        let s = &server;
        registry.register(
            "rpc_server_call_duration_seconds",
            "Duration of calls this server handled, from the request's headers to the end of the response",
            s.duration.clone(),
        );
        registry.register("rpc_server_calls_started", "Calls this server received", s.started.clone());
        registry.register(
            "rpc_server_calls_handled",
            "Calls this server finished, by status code",
            s.handled.clone(),
        );
        registry.register(
            "rpc_server_calls_in_flight",
            "Calls this server is handling now",
            s.in_flight.clone(),
        );
        registry.register(
            "trellis_server_calls_shed",
            "Calls refused at once with RESOURCE_EXHAUSTED because server.max_concurrent_calls were in flight",
            s.shed.clone(),
        );
        registry.register(
            "trellis_server_calls_expired",
            "Calls refused unrun with DEADLINE_EXCEEDED because they arrived with no time left",
            s.expired.clone(),
        );
        let c = &client;
        registry.register(
            "rpc_client_call_duration_seconds",
            "Duration of calls to a target service, retries and hedges included, by final status code",
            c.duration.clone(),
        );
        registry.register(
            "trellis_client_attempts",
            "Attempts sent to a target service: first, retry (after a failure) or hedge (while another is in flight)",
            c.attempts.clone(),
        );
        registry.register(
            "trellis_client_retries_not_sent",
            "Retries a failed call could have had but did not: budget (the retry budget was spent), \
             attempt_limit (max_attempts reached), no_time_left (the backoff would pass the deadline)",
            c.retries_not_sent.clone(),
        );
        registry.register(
            "trellis_client_breaker_transitions",
            "Changes of a method's circuit breaker, by the state it went to",
            c.breaker_transitions.clone(),
        );
        registry.register(
            "trellis_client_ejections",
            "Endpoints taken out of rotation: failures (several in a row) or latency (far slower than their peers)",
            c.ejections.clone(),
        );
        registry.register(
            "trellis_client_discovery_updates",
            "Endpoint changes (added or removed) received from the registry",
            c.discovery_updates.clone(),
        );
        registry.register(
            "trellis_client_calls_failed_before_sending",
            "Calls that failed without any attempt sent: deadline_passed (the inbound deadline had passed), \
             no_instance (none known before the deadline), circuit_open (the method's breaker refused)",
            c.failed_before_sending.clone(),
        );
        registry.register_collector(Box::new(BoardCollector(Arc::clone(&board))));
        registry.register_collector(Box::new(process::ProcessCollector::new(service, version)));
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                server,
                client,
                board,
                service,
                version,
                started: std::time::Instant::now(),
            }),
        }
    }

    /// Every metric now, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let registry = self.inner.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// The application's name.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// The application's version.
    pub fn version(&self) -> &'static str {
        self.inner.version
    }

    /// How long since these metrics were made (the process started).
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// Whether the server is ready: every service `SERVING` and registered,
    /// and shutdown not started.
    pub fn ready(&self) -> bool {
        self.inner.board.state() == ServerState::Serving
    }

    pub(crate) fn server(&self) -> &ServerFamilies {
        &self.inner.server
    }

    pub(crate) fn client(&self) -> &ClientFamilies {
        &self.inner.client
    }

    pub(crate) fn board(&self) -> &Board {
        &self.inner.board
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_and_labels() {
        let metrics = Metrics::new("svc", "1.2.3");
        let labels = CallLabels { service: "t.v1.T", method: "M", code: "OK" };
        metrics.server().duration.get_or_create(&labels).observe(std::time::Duration::from_millis(3));
        metrics.server().handled.get_or_create(&labels).inc();
        let text = metrics.encode();
        assert!(text.contains("# TYPE rpc_server_call_duration_seconds histogram"), "{text}");
        assert!(
            text.contains(r#"rpc_server_call_duration_seconds_bucket{service="t.v1.T",method="M",code="OK",le="0.005"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rpc_server_calls_handled_total{service="t.v1.T",method="M",code="OK"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"trellis_build_info{service="svc",version="1.2.3",trellis_version=""#),
            "{text}"
        );
        assert!(text.contains("process_uptime_seconds "), "{text}");
        assert!(text.contains(r#"trellis_server_state{state="starting"} 1"#), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_cpu_seconds_total ") && text.contains("process_open_fds "), "{text}");
    }

    #[test]
    fn code_names() {
        use tonic::Code;
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
