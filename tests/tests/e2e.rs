//! End to end: the three order services as real processes on loopback.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use order_payment::proto::order::payment::v1::{
    GetPaymentRequest, ORDER_PAYMENT_SERVICE_NAME, OrderPaymentClient, PayRequest, PaymentState,
    RefundRequest,
};
use order_shipping::proto::order::shipping::v1::{
    Address, GetShipmentRequest, ORDER_SHIPPING_SERVICE_NAME, OrderShippingClient, ShipRequest,
};
use order_status::proto::order::status::v1::{
    GetStatusRequest, ORDER_STATUS_SERVICE_NAME, OrderState, OrderStatusClient, WatchStatusRequest,
};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis::{Code, Registry};
use trellis_tests::{Service, static_registry};

fn pay(order_id: &str, key: &str) -> PayRequest {
    PayRequest {
        order_id: order_id.to_owned(),
        amount_minor: 2500,
        currency: "USD".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

fn ship(order_id: &str) -> ShipRequest {
    ShipRequest {
        order_id: order_id.to_owned(),
        address: Some(Address {
            name: "Grace Hopper".to_owned(),
            line1: "1 Navy Way".to_owned(),
            city: "Arlington".to_owned(),
            country: "US".to_owned(),
            ..Address::default()
        }),
        idempotency_key: format!("{order_id}-ship"),
    }
}

/// Payment, shipping (with databases in `dir`) and status, running until
/// dropped, finding each other through a `local://` registry in `dir`.
struct Orders {
    _processes: [Service; 3],
    registry: Registry,
}

async fn start_orders(dir: &std::path::Path) -> Orders {
    let url = format!("local://{}", dir.join("registry").display());
    let payment_db = format!("payment.database={}", dir.join("p.sqlite3").display());
    let shipping_db = format!("shipping.database={}", dir.join("s.sqlite3").display());
    let payment = Service::start("order-payment", &["--registry", &url, "--set", &payment_db]).await;
    let shipping = Service::start("order-shipping", &["--registry", &url, "--set", &shipping_db]).await;
    let status =
        Service::start("order-status", &["--registry", &url, "--set", "status.watch_interval=50ms"]).await;
    let registry = Registry::from_url(&url).expect("registry");
    Orders { _processes: [payment, shipping, status], registry }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_through_the_three_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orders = start_orders(dir.path()).await;
    let mut payment = OrderPaymentClient::discover(&orders.registry).expect("payment client");
    let mut shipping = OrderShippingClient::discover(&orders.registry).expect("shipping client");
    let mut status = OrderStatusClient::discover(&orders.registry).expect("status client");

    const ORDERS: usize = 60;
    let mut tasks = Vec::new();
    for n in 0..ORDERS {
        let (mut payment, mut shipping, mut status) = (payment.clone(), shipping.clone(), status.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("order-{n}");
            let before = status.get_status(GetStatusRequest { order_id: id.clone() }).await?.into_inner();
            assert_eq!(before.state(), OrderState::Pending);
            let paid = payment.pay(pay(&id, &format!("{id}-pay"))).await?.into_inner();
            assert!(paid.payment_id.starts_with("pay_"));
            assert_eq!(
                status.get_status(GetStatusRequest { order_id: id.clone() }).await?.into_inner().state(),
                OrderState::Paid
            );
            let shipped = shipping.ship(ship(&id)).await?.into_inner();
            let report = status.get_status(GetStatusRequest { order_id: id.clone() }).await?.into_inner();
            assert_eq!(report.state(), OrderState::Shipped);
            assert_eq!(report.payment.map(|p| p.payment_id), Some(paid.payment_id));
            assert_eq!(report.shipment.map(|s| s.tracking_id), Some(shipped.tracking_id));
            Ok::<_, trellis::Status>(())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("order calls");
    }

    // Refund moves the combined state on; WatchStatus reports the change.
    let mut watch = status
        .watch_status(WatchStatusRequest { order_id: "order-0".to_owned() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first report").expect("ok");
    assert_eq!(first.state(), OrderState::Shipped);
    let refunded = payment.refund(RefundRequest { order_id: "order-0".to_owned() }).await.expect("refund");
    assert_eq!(refunded.into_inner().state(), PaymentState::Refunded);
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("a change in time");
    assert_eq!(next.expect("report").expect("ok").state(), OrderState::Refunded);

    let got =
        shipping.get_shipment(GetShipmentRequest { order_id: "order-1".to_owned() }).await.expect("shipment");
    assert_eq!(got.into_inner().address.map(|a| a.country), Some("US".to_owned()));
    let payments = order_payment::store::PaymentStore::open(&dir.path().join("p.sqlite3")).expect("open");
    assert_eq!(payments.count().expect("count"), ORDERS as u64);
    drop(orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orders = start_orders(dir.path()).await;
    let mut payment = OrderPaymentClient::discover(&orders.registry).expect("client");
    let mut shipping = OrderShippingClient::discover(&orders.registry).expect("client");
    let mut status = OrderStatusClient::discover(&orders.registry).expect("client");

    let cases = [
        (pay("", "k1"), "order_id"),
        (PayRequest { amount_minor: 0, ..pay("o1", "k2") }, "amount_minor"),
        (PayRequest { amount_minor: -5, ..pay("o1", "k3") }, "amount_minor"),
        (PayRequest { currency: "XYZ".to_owned(), ..pay("o1", "k4") }, "currency"),
        (pay("o1", ""), "idempotency_key"),
    ];
    for (request, field) in cases {
        let status = payment.pay(request).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let err = payment.get_payment(GetPaymentRequest::default()).await.expect_err("invalid");
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("order_id"), "{err:?}");
    let err = shipping.ship(ShipRequest { address: None, ..ship("o2") }).await.expect_err("invalid");
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("address"), "{err:?}");
    let mut no_country = ship("o3");
    if let Some(address) = no_country.address.as_mut() {
        address.country = "Germany".to_owned();
    }
    let err = shipping.ship(no_country).await.expect_err("invalid");
    assert!(err.message().starts_with("address.country"), "{err:?}");
    let err = status.get_status(GetStatusRequest::default()).await.expect_err("invalid");
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("order_id"), "{err:?}");

    // Reusing a key for a different request is refused, not silently replayed.
    payment.pay(pay("o4", "shared-key")).await.expect("first");
    let err = payment.pay(pay("o5", "shared-key")).await.expect_err("reused key");
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("idempotency_key"), "{err:?}");
    drop(orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_pay_across_two_instances_charges_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("shared.sqlite3");
    let setting = format!("payment.database={}", db.display());
    let a = Service::start("order-payment", &["--set", &setting]).await;
    let b = Service::start("order-payment", &["--set", &setting]).await;
    let only = |s: &Service| {
        Registry::from_url(&static_registry(&[(ORDER_PAYMENT_SERVICE_NAME, &[s])])).expect("registry")
    };
    let clients = [
        OrderPaymentClient::discover(only(&a)).expect("a"),
        OrderPaymentClient::discover(only(&b)).expect("b"),
    ];

    const ORDERS: usize = 10;
    const DUPLICATES: usize = 8;
    for n in 0..ORDERS {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(DUPLICATES));
        let calls: Vec<_> = (0..DUPLICATES)
            .map(|i| {
                let mut client = clients[i % 2].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    client.pay(pay(&format!("dup-{n}"), &format!("dup-{n}-key"))).await
                })
            })
            .collect();
        let mut ids = Vec::new();
        for call in calls {
            ids.push(call.await.expect("task").expect("pay").into_inner().payment_id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "order dup-{n} got several payment ids: {ids:?}");
    }
    let store = order_payment::store::PaymentStore::open(&db).expect("open");
    assert_eq!(store.count().expect("count"), ORDERS as u64, "one charge per order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use trellis::codegen::tonic::transport::Channel;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let payment = Service::start("order-payment", &["--set", &db]).await;
    let mut client: ServerReflectionClient<Channel> = ServerReflectionClient::new(payment.channel().await);
    let request = |message| ServerReflectionRequest { host: String::new(), message_request: Some(message) };
    let outbound = tokio_stream::iter([
        request(MessageRequest::ListServices(String::new())),
        request(MessageRequest::FileContainingSymbol(ORDER_PAYMENT_SERVICE_NAME.to_owned())),
    ]);
    let mut responses = client.server_reflection_info(outbound).await.expect("reflection").into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.expect("a response").expect("ok").message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in
        [ORDER_PAYMENT_SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.expect("a response").expect("ok").message_response
    else {
        panic!("expected the file defining OrderPayment");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // The older v1alpha protocol, still used by many tools, is served too.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut client = alpha::server_reflection_client::ServerReflectionClient::new(payment.channel().await);
    let outbound = tokio_stream::iter([alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    }]);
    let mut responses = client.server_reflection_info(outbound).await.expect("v1alpha").into_inner();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.expect("a response").expect("ok").message_response
    else {
        panic!("expected a service list");
    };
    assert!(list.service.iter().any(|s| s.name == ORDER_PAYMENT_SERVICE_NAME), "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_shutdown_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let mut payment =
        // Long enough that a client slowed by a busy machine still reads the
        // update before the server exits.
        Service::start("order-payment", &["--set", &db, "--set", "shutdown.propagation_delay=3s"]).await;
    let mut health = HealthClient::new(payment.channel().await);
    let check = |service: &str| HealthCheckRequest { service: service.to_owned() };
    for service in ["", ORDER_PAYMENT_SERVICE_NAME] {
        let status = health.check(check(service)).await.expect("check").into_inner().status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    let mut watch = health.watch(check(ORDER_PAYMENT_SERVICE_NAME)).await.expect("watch").into_inner();
    assert_eq!(watch.next().await.expect("first").expect("ok").status(), ServingStatus::Serving);

    let signalled = Instant::now();
    payment.signal(Signal::SIGTERM);
    let update = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("an update in time");
    assert_eq!(update.expect("update").expect("ok").status(), ServingStatus::NotServing);
    // During the propagation delay the server still answers, and says NOT_SERVING.
    let overall = health.check(check("")).await.expect("check during shutdown").into_inner().status();
    assert_eq!(overall, ServingStatus::NotServing);
    // Then the drain closes the watch stream instead of waiting for the drain timeout.
    let end =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("stream closed in time");
    if let Some(Err(status)) = &end {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert!(payment.wait(Duration::from_secs(10)).await.success());
    assert!(signalled.elapsed() < Duration::from_secs(8), "shutdown took {:?}", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_call_completes_during_graceful_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let mut payment = Service::start(
        "order-payment",
        &["--set", &db, "--set", "faults.delay=1500ms", "--set", "shutdown.propagation_delay=0s"],
    )
    .await;
    let registry =
        Registry::from_url(&static_registry(&[(ORDER_PAYMENT_SERVICE_NAME, &[&payment])])).expect("registry");
    let mut client = OrderPaymentClient::discover(&registry).expect("client");
    let call = tokio::spawn(async move { client.pay(pay("slow-1", "slow-1-key")).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    payment.signal(Signal::SIGTERM);
    payment.wait_for_log("draining in-flight calls", Duration::from_secs(5)).await;

    let reply = call.await.expect("task").expect("the in-flight Pay completes");
    assert!(reply.into_inner().payment_id.starts_with("pay_"));
    assert!(payment.wait(Duration::from_secs(10)).await.success());
    let store = order_payment::store::PaymentStore::open(&dir.path().join("p.sqlite3")).expect("open");
    assert_eq!(store.count().expect("count"), 1, "the acknowledged payment is stored");
    // Once drained, the port no longer accepts connections.
    assert!(std::net::TcpStream::connect(payment.addr()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_passes_its_remaining_deadline_downstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payment_db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let shipping_db = format!("shipping.database={}", dir.path().join("s.sqlite3").display());
    // Payment takes 3 s per call; the caller allows 300 ms.
    let mut payment =
        Service::start("order-payment", &["--set", &payment_db, "--set", "faults.delay=3s"]).await;
    let shipping = Service::start("order-shipping", &["--set", &shipping_db]).await;
    let deps = static_registry(&[
        (ORDER_PAYMENT_SERVICE_NAME, &[&payment]),
        (ORDER_SHIPPING_SERVICE_NAME, &[&shipping]),
    ]);
    let status = Service::start("order-status", &["--registry", &deps]).await;
    let registry =
        Registry::from_url(&static_registry(&[(ORDER_STATUS_SERVICE_NAME, &[&status])])).expect("registry");
    let mut client = OrderStatusClient::discover(&registry).expect("client");

    let mut request = trellis::Request::new(GetStatusRequest { order_id: "late".to_owned() });
    request.set_timeout(Duration::from_millis(300));
    let began = Instant::now();
    let err = client.get_status(request).await.expect_err("payment is too slow");
    let took = began.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // What payment received from order-status: the caller's remaining 300 ms,
    // not order-status's own 10 s default; and the call ended then, not after 3 s.
    let call =
        payment.wait_for_call("/order.payment.v1.OrderPayment/GetPayment", Duration::from_secs(10)).await;
    let timeout_ms = call["timeout_ms"].as_f64().expect("payment saw a grpc-timeout");
    assert!(timeout_ms > 0.0 && timeout_ms <= 300.0, "payment was given {timeout_ms} ms");
    let duration_ms = call["duration_ms"].as_f64().expect("duration");
    assert!(duration_ms < 2000.0, "payment's call lasted {duration_ms} ms: {call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_payments_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.sqlite3");
    let setting = format!("payment.database={}", db.display());
    let mut payment = Service::start("order-payment", &["--set", &setting]).await;
    let registry =
        Registry::from_url(&static_registry(&[(ORDER_PAYMENT_SERVICE_NAME, &[&payment])])).expect("registry");
    let client = OrderPaymentClient::discover(&registry).expect("client");

    // Calls keep coming until the kill; every one acknowledged must be on disk.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mut client, acked) = (client.clone(), acked_tx.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("kill-{w}-{n}");
                    match client.pay(pay(&id, &id)).await {
                        Ok(reply) => {
                            let _ = acked.send((id, reply.into_inner().payment_id));
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    payment.signal(Signal::SIGKILL);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(!payment.wait(Duration::from_secs(5)).await.success());
    drop(acked_tx);

    let store = order_payment::store::PaymentStore::open(&db).expect("reopen after the kill");
    let mut acknowledged = 0;
    while let Some((order_id, payment_id)) = acked_rx.recv().await {
        let stored = store
            .get(&order_id)
            .expect("read")
            .unwrap_or_else(|| panic!("{order_id} was acknowledged, then lost"));
        assert_eq!(stored.payment_id, payment_id);
        acknowledged += 1;
    }
    assert!(acknowledged > 0, "no payment was acknowledged before the kill");
}
