//! OTLP export (feature `otel`): the three order services, as real
//! processes, send their spans to an in-process OTLP/gRPC receiver built
//! from the official `opentelemetry-proto` service definitions; one order
//! is one trace, with each span's parent the span that caused it. A
//! collector that is away costs the calls nothing and is logged with a
//! count of the spans dropped.
#![cfg(feature = "otel")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use order_payment::proto::order::payment::v1::{OrderPaymentClient, PayRequest};
use order_shipping::proto::order::shipping::v1::{Address, OrderShippingClient, ShipRequest};
use order_status::proto::order::status::v1::{GetStatusRequest, OrderStatusClient};
use trellis::Registry;
use trellis::codegen::tonic;
use trellis::context::RequestContext;
use trellis_tests::logged::LoggedService;

/// Every span received, with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves a receiver on a free loopback port.
async fn receiver() -> (Receiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, format!("http://{addr}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_the_three_services_form_one_trace_with_parent_links() {
    let (receiver, endpoint) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("local://{}", dir.path().join("registry").display());
    let otlp = format!("trace.otlp_endpoint={endpoint}");
    let payment_db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let shipping_db = format!("shipping.database={}", dir.path().join("s.sqlite3").display());
    let common = ["--registry", url.as_str(), "--set", otlp.as_str()];
    let start = |name: &'static str, own: Vec<&str>| {
        let log = dir.path().join(format!("{name}.log"));
        let args: Vec<String> = common.iter().chain(&own).map(|s| (*s).to_owned()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            LoggedService::start(name, "json", &log, &args).await
        }
    };
    let mut payment = start("order-payment", vec!["--set", &payment_db]).await;
    let mut shipping = start("order-shipping", vec!["--set", &shipping_db]).await;
    let mut status = start("order-status", vec![]).await;

    let registry = Registry::from_url(&url).expect("registry");
    let ctx = RequestContext::traced();
    let trace_id = ctx.trace().expect("traced").trace_id().to_string();
    ctx.scope(async {
        let mut pay = OrderPaymentClient::discover(&registry).expect("client");
        let mut ship = OrderShippingClient::discover(&registry).expect("client");
        let mut ask = OrderStatusClient::discover(&registry).expect("client");
        pay.pay(PayRequest {
            order_id: "o-1".to_owned(),
            amount_minor: 990,
            currency: "EUR".to_owned(),
            idempotency_key: "o-1-pay".to_owned(),
        })
        .await
        .expect("pay");
        ship.ship(ShipRequest {
            order_id: "o-1".to_owned(),
            address: Some(Address {
                name: "N".to_owned(),
                line1: "L".to_owned(),
                city: "C".to_owned(),
                country: "FR".to_owned(),
                ..Address::default()
            }),
            idempotency_key: "o-1-ship".to_owned(),
        })
        .await
        .expect("ship");
        ask.get_status(GetStatusRequest { order_id: "o-1".to_owned() }).await.expect("status");
    })
    .await;
    // Stopping flushes what each exporter still holds.
    status.stop().await;
    payment.stop().await;
    shipping.stop().await;

    let spans: Vec<(String, Span)> = receiver
        .spans
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace_id)
        .cloned()
        .collect();
    let find = |service: &str, name: &str, kind: SpanKind| -> Span {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|(s, span)| s == service && span.name == name && span.kind == kind as i32)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(found.len(), 1, "one {kind:?} span {name} from {service} in {spans:#?}");
        found[0].clone()
    };
    let pay = find("order-payment", "order.payment.v1.OrderPayment/Pay", SpanKind::Server);
    let ship = find("order-shipping", "order.shipping.v1.OrderShipping/Ship", SpanKind::Server);
    let get_status = find("order-status", "order.status.v1.OrderStatus/GetStatus", SpanKind::Server);
    let ask_payment = find("order-status", "order.payment.v1.OrderPayment/GetPayment", SpanKind::Client);
    let ask_shipping = find("order-status", "order.shipping.v1.OrderShipping/GetShipment", SpanKind::Client);
    let get_payment = find("order-payment", "order.payment.v1.OrderPayment/GetPayment", SpanKind::Server);
    let get_shipment =
        find("order-shipping", "order.shipping.v1.OrderShipping/GetShipment", SpanKind::Server);
    assert_eq!(spans.len(), 7, "exactly these spans in the order's trace: {spans:#?}");

    // Parent links: status's server span -> its client spans -> the servers'.
    assert_eq!(ask_payment.parent_span_id, get_status.span_id);
    assert_eq!(ask_shipping.parent_span_id, get_status.span_id);
    assert_eq!(get_payment.parent_span_id, ask_payment.span_id);
    assert_eq!(get_shipment.parent_span_id, ask_shipping.span_id);
    // The test's own calls are not exported, but they are the parents.
    let mut ids: HashMap<Vec<u8>, &str> = HashMap::new();
    for (_, span) in &spans {
        assert_eq!(span.span_id.len(), 8);
        assert!(ids.insert(span.span_id.clone(), &span.name).is_none(), "span ids are unique");
    }
    for root in [&pay, &ship, &get_status] {
        assert_eq!(root.parent_span_id.len(), 8, "{} has the test's client span as parent", root.name);
        assert!(!ids.contains_key(&root.parent_span_id));
        assert_eq!(root.flags & 0x300, 0x300, "{}: a remote parent", root.name);
    }
    for span in [&pay, &ship, &get_status, &ask_payment, &get_payment] {
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attribute(span, "rpc.grpc.status_code").as_deref(), Some("0"), "{}", span.name);
    }
    assert_eq!(attribute(&pay, "rpc.method").as_deref(), Some("Pay"));
    assert!(attribute(&pay, "network.peer.address").is_some());
    // Children lie within their parents in time.
    assert!(ask_payment.start_time_unix_nano >= get_status.start_time_unix_nano);
    assert!(ask_payment.end_time_unix_nano <= get_status.end_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_away_drops_spans_with_a_counted_line_and_calls_go_on() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("local://{}", dir.path().join("registry").display());
    let otlp = format!("trace.otlp_endpoint=http://{closed}");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let log = dir.path().join("payment.log");
    let args = ["--registry", &url, "--set", &otlp, "--set", &db];
    let mut payment = LoggedService::start("order-payment", "json", &log, &args).await;
    let registry = Registry::from_url(&url).expect("registry");
    let mut client = OrderPaymentClient::discover(&registry).expect("client");
    let started = std::time::Instant::now();
    for n in 0..20 {
        client
            .pay(PayRequest {
                order_id: format!("o-{n}"),
                amount_minor: 100,
                currency: "EUR".to_owned(),
                idempotency_key: format!("o-{n}"),
            })
            .await
            .expect("pay works without a collector");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "calls never wait for the exporter");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let found = payment.json_lines().into_iter().find(|l| {
            l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.starts_with("OTLP export to"))
        });
        if let Some(line) = found {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "no export warning in {:#?}", payment.lines());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dropped = warning["dropped"].as_u64().expect("a count of dropped spans");
    assert!((1..=20).contains(&dropped), "{warning}");
    assert!(warning["message"].as_str().unwrap_or_default().contains(&closed.to_string()), "{warning}");
    payment.stop().await;
    let warnings = payment.json_lines().into_iter().filter(|l| l["level"] == "WARN").count();
    assert!(warnings <= 3, "an outage is logged once, not per span: {:#?}", payment.lines());
}
