//! `order.status.v1.OrderStatus` end to end: order-payment and
//! order-shipping served in-process and registered in one registry, the
//! status service finding them there, and the test calling it through the
//! generated, discovery-aware client (`trellis::testing`).

use std::time::Duration;

use order_payment::proto::order::payment::v1 as payment;
use order_shipping::proto::order::shipping::v1 as shipping;
use order_status::StatusService;
use order_status::proto::order::status::v1::order_status_server::OrderStatusServer;
use order_status::proto::order::status::v1::{
    GetStatusRequest, OrderState, OrderStatusClient, WatchStatusRequest,
};
use trellis::Code;
use trellis::testing::TestServer;

/// Payment, shipping and status, in one registry, and clients for all three.
struct Shop {
    _dir: tempfile::TempDir,
    payment_server: TestServer,
    _shipping_server: TestServer,
    _status_server: TestServer,
    payment: payment::OrderPaymentClient,
    shipping: shipping::OrderShippingClient,
    status: OrderStatusClient,
}

async fn shop() -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let payments = order_payment::store::PaymentStore::open(&dir.path().join("p.sqlite3")).unwrap();
    let payment_server = TestServer::builder()
        .add_service(payment::order_payment_server::OrderPaymentServer::new(
            order_payment::PaymentService::new(payments),
        ))
        .start()
        .await
        .unwrap();
    let registry = payment_server.registry().clone();
    let shipments = order_shipping::store::ShipmentStore::open(&dir.path().join("s.sqlite3")).unwrap();
    let shipping_server = TestServer::builder()
        .registry(registry.clone())
        .add_service(shipping::order_shipping_server::OrderShippingServer::new(
            order_shipping::ShippingService::new(shipments),
        ))
        .start()
        .await
        .unwrap();
    let status = StatusService::discover(&registry, Duration::from_millis(20)).unwrap();
    let status_server = TestServer::builder()
        .registry(registry.clone())
        .add_service(OrderStatusServer::new(status))
        .start()
        .await
        .unwrap();
    Shop {
        _dir: dir,
        payment_server,
        _shipping_server: shipping_server,
        _status_server: status_server,
        payment: payment::OrderPaymentClient::discover(&registry).unwrap(),
        shipping: shipping::OrderShippingClient::discover(&registry).unwrap(),
        status: OrderStatusClient::discover(&registry).unwrap(),
    }
}

fn pay(order_id: &str) -> payment::PayRequest {
    payment::PayRequest {
        order_id: order_id.to_owned(),
        amount_minor: 500,
        currency: "EUR".to_owned(),
        idempotency_key: format!("{order_id}-pay"),
    }
}

fn ship(order_id: &str) -> shipping::ShipRequest {
    shipping::ShipRequest {
        order_id: order_id.to_owned(),
        address: Some(shipping::Address {
            name: "Grace Hopper".to_owned(),
            line1: "1 Navy Way".to_owned(),
            city: "Arlington".to_owned(),
            country: "US".to_owned(),
            ..shipping::Address::default()
        }),
        idempotency_key: format!("{order_id}-ship"),
    }
}

async fn state(shop: &mut Shop, order_id: &str) -> OrderState {
    let request = GetStatusRequest { order_id: order_id.to_owned() };
    shop.status.get_status(request).await.unwrap().into_inner().state()
}

#[tokio::test]
async fn the_status_follows_payment_and_shipping() {
    let mut shop = shop().await;
    assert_eq!(state(&mut shop, "o-1").await, OrderState::Pending);
    shop.payment.pay(pay("o-1")).await.unwrap();
    assert_eq!(state(&mut shop, "o-1").await, OrderState::Paid);
    shop.shipping.ship(ship("o-1")).await.unwrap();
    assert_eq!(state(&mut shop, "o-1").await, OrderState::Shipped);
    shop.payment.refund(payment::RefundRequest { order_id: "o-1".into() }).await.unwrap();
    assert_eq!(state(&mut shop, "o-1").await, OrderState::Refunded);

    let err = shop.status.get_status(GetStatusRequest { order_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn watch_streams_each_change() {
    let mut shop = shop().await;
    let request = WatchStatusRequest { order_id: "o-2".into() };
    let mut stream = shop.status.watch_status(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("the first report");
    assert_eq!(first.state(), OrderState::Pending);
    shop.payment.pay(pay("o-2")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap();
    assert_eq!(next.expect("a report").state(), OrderState::Paid);
    shop.shipping.ship(ship("o-2")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap();
    assert_eq!(next.expect("a report").state(), OrderState::Shipped);
}

#[tokio::test]
async fn a_failing_dependency_is_named() {
    let mut shop = shop().await;
    shop.payment_server.faults().set_unavailable(true);
    let mut request = trellis::Request::new(GetStatusRequest { order_id: "o-3".into() });
    request.set_timeout(Duration::from_secs(3));
    let err = shop.status.get_status(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("order-payment"), "names the dependency: {err}");

    shop.payment_server.faults().lift();
    let started = std::time::Instant::now();
    loop {
        let request = GetStatusRequest { order_id: "o-3".into() };
        match shop.status.get_status(request).await {
            Ok(report) => break assert_eq!(report.into_inner().state(), OrderState::Pending),
            Err(err) => assert!(started.elapsed() < Duration::from_secs(10), "still failing: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
