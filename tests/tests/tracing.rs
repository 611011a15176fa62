//! Trace propagation and the log lines that show it, over the three order
//! services as real processes: one order is one trace in all three logs,
//! in text and in JSON; a malformed `traceparent` starts a new trace; the
//! access log is off unless configured.

use std::path::Path;
use std::time::Duration;

use order_payment::proto::order::payment::v1::order_payment_client::OrderPaymentClient as RawPaymentClient;
use order_payment::proto::order::payment::v1::{GetPaymentRequest, OrderPaymentClient, PayRequest};
use order_shipping::proto::order::shipping::v1::{Address, OrderShippingClient, ShipRequest};
use order_status::proto::order::status::v1::{GetStatusRequest, OrderState, OrderStatusClient};
use trellis::Registry;
use trellis::codegen::tonic;
use trellis::context::RequestContext;
use trellis_tests::logged::LoggedService;

const PAY: &str = "/order.payment.v1.OrderPayment/Pay";
const GET_PAYMENT: &str = "/order.payment.v1.OrderPayment/GetPayment";
const SHIP: &str = "/order.shipping.v1.OrderShipping/Ship";
const GET_SHIPMENT: &str = "/order.shipping.v1.OrderShipping/GetShipment";
const GET_STATUS: &str = "/order.status.v1.OrderStatus/GetStatus";

struct Orders {
    payment: LoggedService,
    shipping: LoggedService,
    status: LoggedService,
    registry: Registry,
}

impl Orders {
    async fn start(dir: &Path, format: &str, extra: &[&str]) -> Orders {
        let url = format!("local://{}", dir.join("registry").display());
        let payment_db = format!("payment.database={}", dir.join("p.sqlite3").display());
        let shipping_db = format!("shipping.database={}", dir.join("s.sqlite3").display());
        let args = |own: &[&str]| -> Vec<String> {
            ["--registry", &url, "--set", "log.access=true"]
                .iter()
                .chain(own)
                .chain(extra)
                .map(|s| (*s).to_owned())
                .collect()
        };
        let start = |name: &'static str, own: Vec<String>| {
            let log = dir.join(format!("{name}.log"));
            async move {
                let own: Vec<&str> = own.iter().map(String::as_str).collect();
                LoggedService::start(name, format, &log, &own).await
            }
        };
        let payment = start("order-payment", args(&["--set", &payment_db])).await;
        let shipping = start("order-shipping", args(&["--set", &shipping_db])).await;
        let status = start("order-status", args(&[])).await;
        Orders { payment, shipping, status, registry: Registry::from_url(&url).expect("registry") }
    }

    async fn stop(&mut self) {
        self.status.stop().await;
        self.payment.stop().await;
        self.shipping.stop().await;
    }
}

/// Pays, ships and asks the status of `order_id`, in whatever trace the
/// caller is in.
async fn place_order(registry: &Registry, order_id: &str) {
    let mut payment = OrderPaymentClient::discover(registry).expect("payment client");
    let mut shipping = OrderShippingClient::discover(registry).expect("shipping client");
    let mut status = OrderStatusClient::discover(registry).expect("status client");
    payment
        .pay(PayRequest {
            order_id: order_id.to_owned(),
            amount_minor: 1200,
            currency: "EUR".to_owned(),
            idempotency_key: format!("{order_id}-pay"),
        })
        .await
        .expect("pay");
    shipping
        .ship(ShipRequest {
            order_id: order_id.to_owned(),
            address: Some(Address {
                name: "Ada Lovelace".to_owned(),
                line1: "12 St James's Square".to_owned(),
                city: "London".to_owned(),
                country: "GB".to_owned(),
                ..Address::default()
            }),
            idempotency_key: format!("{order_id}-ship"),
        })
        .await
        .expect("ship");
    let report = status.get_status(GetStatusRequest { order_id: order_id.to_owned() }).await.expect("status");
    assert_eq!(report.into_inner().state(), OrderState::Shipped);
}

/// The access lines of `lines` (JSON), as (method, trace id, span id).
fn json_access(lines: &[serde_json::Value]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|l| l["message"] == "access")
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_else(|| panic!("no `{k}` in {l}")).to_owned();
            (field("rpc.method"), field("trace_id"), field("span_id"))
        })
        .collect()
}

/// The methods whose access lines carry `trace_id`, in JSON.
fn json_methods_in(service: &LoggedService, trace_id: &str) -> Vec<String> {
    let mut methods: Vec<String> =
        json_access(&service.json_lines()).into_iter().filter(|a| a.1 == trace_id).map(|a| a.0).collect();
    methods.sort();
    methods
}

/// The methods whose text access lines carry `trace_id`.
fn text_methods_in(service: &LoggedService, trace_id: &str) -> Vec<String> {
    let needle = format!("trace_id={trace_id} span_id=");
    let mut methods: Vec<String> = service
        .lines()
        .iter()
        .filter(|l| l.contains(&needle) && l.contains("trellis::access: access"))
        .map(|l| {
            let method = l.split("rpc.method=").nth(1).and_then(|r| r.split_whitespace().next());
            method.unwrap_or_else(|| panic!("no rpc.method in {l}")).trim_matches('"').to_owned()
        })
        .collect();
    methods.sort();
    methods
}

fn is_id(hex: &str, len: usize) -> bool {
    hex.len() == len
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hex.bytes().any(|b| b != b'0')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_in_all_three_json_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut orders = Orders::start(dir.path(), "json", &[]).await;

    // One order placed inside one trace, as the demo does.
    let ctx = RequestContext::traced();
    let trace_id = ctx.trace().expect("a trace").trace_id().to_string();
    ctx.scope(place_order(&orders.registry, "order-traced")).await;

    // A status asked outside any trace: a new trace at the client, which
    // status carries to payment and shipping.
    let mut status = OrderStatusClient::discover(&orders.registry).expect("status client");
    status.get_status(GetStatusRequest { order_id: "order-traced".to_owned() }).await.expect("status");
    orders.stop().await;

    assert_eq!(json_methods_in(&orders.payment, &trace_id), [GET_PAYMENT, PAY]);
    assert_eq!(json_methods_in(&orders.shipping, &trace_id), [GET_SHIPMENT, SHIP]);
    assert_eq!(json_methods_in(&orders.status, &trace_id), [GET_STATUS]);

    let status_calls: Vec<_> =
        json_access(&orders.status.json_lines()).into_iter().filter(|a| a.0 == GET_STATUS).collect();
    assert_eq!(status_calls.len(), 2, "{status_calls:?}");
    let (_, second, status_span) = &status_calls[1];
    assert_ne!(second, &trace_id, "a call outside the trace starts another");
    assert!(is_id(second, 32) && is_id(status_span, 16), "{second} {status_span}");
    assert_eq!(json_methods_in(&orders.payment, second), [GET_PAYMENT]);
    assert_eq!(json_methods_in(&orders.shipping, second), [GET_SHIPMENT]);

    // Every line a service wrote inside a call has the call's ids: the
    // access line and the status's own span id differ from its children's.
    let payment_span =
        json_access(&orders.payment.json_lines()).into_iter().find(|a| &a.1 == second).unwrap().2;
    assert_ne!(&payment_span, status_span, "each service's call is a span of its own");
    for line in orders.payment.json_lines().iter().chain(&orders.status.json_lines()) {
        if line["message"] == "access" && line["rpc.method"] != "/grpc.health.v1.Health/Watch" {
            assert!(line["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{line}");
            assert!(line["duration_ms"].as_f64().is_some() && line["status"] == "Ok", "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_in_all_three_text_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut orders = Orders::start(dir.path(), "text", &[]).await;
    let ctx = RequestContext::traced();
    let trace_id = ctx.trace().expect("a trace").trace_id().to_string();
    ctx.scope(place_order(&orders.registry, "order-text")).await;
    orders.stop().await;

    assert_eq!(text_methods_in(&orders.payment, &trace_id), [GET_PAYMENT, PAY]);
    assert_eq!(text_methods_in(&orders.shipping, &trace_id), [GET_SHIPMENT, SHIP]);
    assert_eq!(text_methods_in(&orders.status, &trace_id), [GET_STATUS]);
    // The grep the demo prints finds the order's lines in the logs.
    let grep = std::process::Command::new("grep")
        .args(["-h", &trace_id])
        .args(["order-payment.log", "order-shipping.log", "order-status.log"].map(|f| dir.path().join(f)))
        .output()
        .expect("grep runs");
    assert_eq!(String::from_utf8_lossy(&grep.stdout).lines().count(), 5, "{grep:?}");
}

/// Calls GetPayment on `payment` with `traceparent` (and a `tracestate`),
/// bypassing the Trellis client, which would send a well-formed header.
async fn get_payment_with(channel: tonic::transport::Channel, traceparent: &str) {
    let mut client = RawPaymentClient::new(channel);
    let mut request = tonic::Request::new(GetPaymentRequest { order_id: "none".to_owned() });
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    request.metadata_mut().insert("tracestate", "vendor=kept".parse().expect("ascii"));
    let status = client.get_payment(request).await.expect_err("no such payment");
    assert_eq!(status.code(), trellis::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let registry = format!("local://{}", dir.path().join("registry").display());
    let log = dir.path().join("payment.log");
    let args = ["--registry", &registry, "--set", &db, "--set", "log.access=true"];
    let mut payment = LoggedService::start("order-payment", "json", &log, &args).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", payment.addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");

    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let bad = [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7a-01", // long parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // version 00 with more
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // uppercase
        "not a traceparent",
    ];
    get_payment_with(channel.clone(), good).await;
    for value in bad {
        get_payment_with(channel.clone(), value).await;
    }
    payment.stop().await;

    let lines = payment.json_lines();
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["message"] == "access").collect();
    assert_eq!(access.len(), 1 + bad.len(), "one access line per call");
    assert_eq!(access[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "a valid parent is continued");
    assert_ne!(access[0]["span_id"], "00f067aa0ba902b7", "as a child span");
    let mut seen = std::collections::HashSet::new();
    for (line, value) in access[1..].iter().zip(bad) {
        let trace_id = line["trace_id"].as_str().expect("trace_id");
        assert!(is_id(trace_id, 32), "{value}: {line}");
        assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{value} must start a new trace");
        assert!(seen.insert(trace_id.to_owned()), "{value}: every new trace has its own id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_off_unless_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let registry = format!("local://{}", dir.path().join("registry").display());
    for (access, expected) in [(None, 0), (Some("log.access=true"), 3)] {
        let log = dir.path().join(format!("payment-{expected}.log"));
        let mut args = vec!["--registry", &registry, "--set", &db];
        args.extend(access.iter().flat_map(|a| ["--set", a]));
        let mut payment = LoggedService::start("order-payment", "json", &log, &args).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", payment.addr()))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        for _ in 0..3 {
            get_payment_with(channel.clone(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        payment.stop().await;
        let lines = payment.json_lines();
        let count =
            lines.iter().filter(|l| l["message"] == "access" && l["target"] == "trellis::access").count();
        assert_eq!(count, expected, "log.access {access:?}");
        // The per-call line (NOT_FOUND is logged at INFO) has the ids either way.
        let finished: Vec<_> = lines.iter().filter(|l| l["message"] == "call finished").collect();
        assert_eq!(finished.len(), 3);
        assert!(finished.iter().all(|l| l["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"), "{finished:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_trace_id_and_a_command_that_finds_it_in_all_three_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo data");
    let run = tokio::process::Command::new(trellis_tests::bin("order-demo"))
        .args(["--orders", "3", "--instances", "1", "--data-dir"])
        .arg(&data)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(120), run).await.expect("the demo ends").expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let trace_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("one order's trace id: "))
        .unwrap_or_else(|| panic!("no trace id in:\n{stdout}"));
    assert!(is_id(trace_id, 32), "{trace_id}");
    let command = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("grep ").map(|rest| format!("grep {rest}")))
        .unwrap_or_else(|| panic!("no command in:\n{stdout}"));
    assert!(command.contains(trace_id), "{command}");

    // The command as printed, through a shell, after the demo has exited.
    let found = std::process::Command::new("sh").args(["-c", &command]).output().expect("sh runs");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut methods: Vec<&str> = lines
        .iter()
        .inspect(|l| assert_eq!(l["trace_id"], trace_id, "{l}"))
        .filter(|l| l["message"] == "access")
        .filter_map(|l| l["rpc.method"].as_str())
        .collect();
    methods.sort_unstable();
    assert_eq!(methods, [GET_PAYMENT, PAY, GET_SHIPMENT, SHIP, GET_STATUS], "{command}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_sets_the_level_unless_log_level_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let registry = format!("local://{}", dir.path().join("registry").display());
    let env = [("RUST_LOG", "info,trellis=debug")];
    for (flag, debug_lines) in [(None, true), (Some("log.level=info"), false)] {
        let log = dir.path().join(format!("payment-{debug_lines}.log"));
        let mut args = vec!["--registry", &registry, "--set", &db];
        args.extend(flag.iter().flat_map(|f| ["--set", f]));
        let mut payment = LoggedService::start_with_env("order-payment", "json", &log, &args, &env).await;
        let mut client =
            OrderPaymentClient::discover(Registry::from_url(&registry).expect("url")).expect("client");
        let pay = PayRequest {
            order_id: "o".to_owned(),
            amount_minor: 1,
            currency: "EUR".to_owned(),
            idempotency_key: "o".to_owned(),
        };
        client.pay(pay).await.expect("pay");
        payment.stop().await;
        // A successful call's end is logged at DEBUG, with the call's ids.
        let ok: Vec<_> = payment
            .json_lines()
            .into_iter()
            .filter(|l| l["level"] == "DEBUG" && l["message"] == "call finished" && l["rpc.method"] == PAY)
            .collect();
        assert_eq!(
            ok.len(),
            usize::from(debug_lines),
            "RUST_LOG with --set {flag:?}: {:#?}",
            payment.lines()
        );
        assert!(ok.iter().all(|l| l["trace_id"].as_str().is_some_and(|t| is_id(t, 32))), "{ok:?}");
    }
}
