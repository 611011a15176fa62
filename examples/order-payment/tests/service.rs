//! `order.payment.v1.OrderPayment` end to end: the service in-process on a
//! free port, in a registry of its own, called through the generated,
//! discovery-aware client (`trellis::testing`), as `trellis new` writes for
//! every service.

use std::path::Path;

use order_payment::PaymentService;
use order_payment::proto::order::payment::v1::order_payment_server::OrderPaymentServer;
use order_payment::proto::order::payment::v1::{
    GetPaymentRequest, OrderPaymentClient, PayRequest, PaymentState, RefundRequest,
};
use order_payment::store::PaymentStore;
use trellis::Code;
use trellis::testing::{Fleet, TestServer};

fn service(database: &Path) -> OrderPaymentServer<PaymentService> {
    OrderPaymentServer::new(PaymentService::new(PaymentStore::open(database).expect("the store opens")))
}

fn pay(order_id: &str, key: &str) -> PayRequest {
    PayRequest {
        order_id: order_id.to_owned(),
        amount_minor: 1250,
        currency: "EUR".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test]
async fn a_payment_is_charged_once_per_key_and_refunded_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("payments.sqlite3");
    let server = TestServer::start(|s| s.add_service(service(&database))).await.unwrap();
    let mut client = OrderPaymentClient::discover(server.registry()).unwrap();

    let first = client.pay(pay("o-1", "k-1")).await.unwrap().into_inner();
    assert_eq!(first.state(), PaymentState::Captured);
    let again = client.pay(pay("o-1", "k-1")).await.unwrap().into_inner();
    assert_eq!(again.payment_id, first.payment_id, "the same key is the same payment");
    assert_eq!(PaymentStore::open(&database).unwrap().count().unwrap(), 1, "charged once");

    let stored = client.get_payment(GetPaymentRequest { order_id: "o-1".into() }).await.unwrap().into_inner();
    assert_eq!((stored.amount_minor, stored.currency.as_str()), (1250, "EUR"));
    let refunded = client.refund(RefundRequest { order_id: "o-1".into() }).await.unwrap().into_inner();
    assert_eq!(refunded.state(), PaymentState::Refunded);
    let twice = client.refund(RefundRequest { order_id: "o-1".into() }).await.unwrap().into_inner();
    assert_eq!(twice, refunded, "refunding a refunded payment returns it as is");
}

#[tokio::test]
async fn bad_requests_say_which_field_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("payments.sqlite3");
    let server = TestServer::start(|s| s.add_service(service(&database))).await.unwrap();
    let mut client = OrderPaymentClient::discover(server.registry()).unwrap();

    let err = client.pay(pay("", "k")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("order_id"), "{err}");
    let err = client.pay(PayRequest { amount_minor: 0, ..pay("o-2", "k-2") }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("amount_minor"), "{err}");
    client.pay(pay("o-3", "k-3")).await.unwrap();
    let err = client.pay(pay("o-4", "k-3")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a key reused for another order: {err}");
    let err = client.get_payment(GetPaymentRequest { order_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn a_failing_instance_is_passed_over_and_nothing_is_charged_twice() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("payments.sqlite3");
    let fleet = Fleet::start(2, |s, _| s.add_service(service(&database))).await.unwrap();
    let mut client = OrderPaymentClient::discover(fleet.registry()).unwrap();
    for i in 0..10 {
        let order = format!("o-{i}");
        client.pay(pay(&order, &format!("{order}-pay"))).await.unwrap();
    }

    // GetPayment has no side effects: a failed attempt is retried on the other instance.
    fleet.instance(0).faults().set_unavailable(true);
    for i in 0..10 {
        client.get_payment(GetPaymentRequest { order_id: format!("o-{i}") }).await.unwrap();
    }
    // Pay is not idempotent: an UNAVAILABLE that may come after the handler
    // ran is not retried by the client; the caller repeats it with the same
    // key, which is safe, until an instance answers.
    let mut failed = 0;
    for i in 10..20 {
        let order = format!("o-{i}");
        loop {
            match client.pay(pay(&order, &format!("{order}-pay"))).await {
                Ok(_) => break,
                Err(err) if err.code() == Code::Unavailable && failed < 100 => failed += 1,
                Err(err) => panic!("{order}: {err}"),
            }
        }
    }
    // (By now the GetPayment failures have usually ejected the faulty instance,
    // so few Pay attempts meet it at all.)
    assert!(failed < 100, "{failed} Pay attempts failed");
    assert_eq!(PaymentStore::open(&database).unwrap().count().unwrap(), 20, "each order charged once");

    // Lifted, the instance is probed back into rotation (after its ejection time).
    fleet.instance(0).faults().lift();
    let served_before = fleet.instance(0).faults().calls();
    let started = std::time::Instant::now();
    while fleet.instance(0).faults().calls() == served_before {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the lifted instance serves again");
        client.get_payment(GetPaymentRequest { order_id: "o-1".into() }).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
