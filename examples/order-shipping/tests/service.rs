//! `order.shipping.v1.OrderShipping` end to end: the service in-process on
//! a free port, in a registry of its own, called through the generated,
//! discovery-aware client (`trellis::testing`), as `trellis new` writes for
//! every service.

use std::path::Path;

use order_shipping::ShippingService;
use order_shipping::proto::order::shipping::v1::order_shipping_server::OrderShippingServer;
use order_shipping::proto::order::shipping::v1::{
    Address, GetShipmentRequest, OrderShippingClient, ShipRequest,
};
use order_shipping::store::ShipmentStore;
use trellis::Code;
use trellis::testing::{Fleet, TestServer};

fn service(database: &Path) -> OrderShippingServer<ShippingService> {
    OrderShippingServer::new(ShippingService::new(ShipmentStore::open(database).expect("the store opens")))
}

fn ship(order_id: &str, key: &str) -> ShipRequest {
    ShipRequest {
        order_id: order_id.to_owned(),
        address: Some(Address {
            name: "Ada Lovelace".to_owned(),
            line1: "12 St James's Square".to_owned(),
            city: "London".to_owned(),
            country: "GB".to_owned(),
            ..Address::default()
        }),
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test]
async fn an_order_ships_once_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shipments.sqlite3");
    let server = TestServer::start(|s| s.add_service(service(&database))).await.unwrap();
    let mut client = OrderShippingClient::discover(server.registry()).unwrap();

    let first = client.ship(ship("o-1", "k-1")).await.unwrap().into_inner();
    assert!(!first.tracking_id.is_empty());
    let again = client.ship(ship("o-1", "k-1")).await.unwrap().into_inner();
    assert_eq!(again.tracking_id, first.tracking_id, "the same key is the same shipment");
    assert_eq!(ShipmentStore::open(&database).unwrap().count().unwrap(), 1, "shipped once");

    let stored =
        client.get_shipment(GetShipmentRequest { order_id: "o-1".into() }).await.unwrap().into_inner();
    assert_eq!(stored.tracking_id, first.tracking_id);
    assert_eq!(stored.address.map(|a| a.city), Some("London".to_owned()));
    let err = client.get_shipment(GetShipmentRequest { order_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn bad_requests_say_which_field_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shipments.sqlite3");
    let server = TestServer::start(|s| s.add_service(service(&database))).await.unwrap();
    let mut client = OrderShippingClient::discover(server.registry()).unwrap();

    let bad_country = ship("o", "k").address.map(|a| Address { country: "Britain".into(), ..a });
    for (request, field) in [
        (ShipRequest { address: None, ..ship("o-1", "k-1") }, "address"),
        (ShipRequest { idempotency_key: String::new(), ..ship("o-1", "k-1") }, "idempotency_key"),
        (ShipRequest { address: bad_country, ..ship("o-1", "k-1") }, "country"),
    ] {
        let err = client.ship(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains(field), "names {field}: {err}");
    }
    assert_eq!(ShipmentStore::open(&database).unwrap().count().unwrap(), 0, "nothing shipped");
}

#[tokio::test]
async fn a_silent_instance_is_passed_over_by_reads() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shipments.sqlite3");
    let fleet = Fleet::start(2, |s, _| s.add_service(service(&database))).await.unwrap();
    let mut client = OrderShippingClient::discover(fleet.registry()).unwrap();
    client.ship(ship("o-1", "k-1")).await.unwrap();

    // One instance swallows every call: reads, which have no side effects,
    // still answer within their deadline: the proto hedges them to the
    // other instance after 50 ms.
    fleet.instance(0).faults().set_drop(true);
    for _ in 0..10 {
        let mut request = trellis::Request::new(GetShipmentRequest { order_id: "o-1".into() });
        request.set_timeout(std::time::Duration::from_secs(3));
        client.get_shipment(request).await.unwrap();
    }
    assert!(fleet.instance(1).faults().calls() >= 10, "the healthy instance answered");
}
