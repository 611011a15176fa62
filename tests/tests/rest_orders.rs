//! The order services over REST: curl places an order against the three
//! services running as real processes, on the same ports as gRPC; a retried
//! POST with the same idempotency key charges once; Python `requests` does
//! the same. Needs `curl`, and `requests` (`./scripts/test` installs it).

use std::net::SocketAddr;

use tokio::process::Command;
use trellis_tests::Service;

/// Runs curl and returns the HTTP status and the JSON body.
async fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> (u16, serde_json::Value) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("no response: {text:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    (status.parse().expect("status"), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_places_an_order_through_the_three_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("local://{}", dir.path().join("registry").display());
    let payment_db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let shipping_db = format!("shipping.database={}", dir.path().join("s.sqlite3").display());
    let payment = Service::start("order-payment", &["--registry", &url, "--set", &payment_db]).await;
    let shipping = Service::start("order-shipping", &["--registry", &url, "--set", &shipping_db]).await;
    let status = Service::start("order-status", &["--registry", &url]).await;

    let pay = r#"{"orderId": "o-1", "amountMinor": "1250", "currency": "EUR", "idempotencyKey": "o-1-pay"}"#;
    let (code, first) = curl(payment.addr(), "/v1/payments", &["-X", "POST", "-d", pay]).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["state"], "PAYMENT_STATE_CAPTURED", "{first}");
    let payment_id = first["paymentId"].as_str().expect("paymentId").to_owned();

    // The retried POST: same key, same payment, charged once.
    let (code, again) = curl(payment.addr(), "/v1/payments", &["-X", "POST", "-d", pay]).await;
    assert_eq!((code, again["paymentId"].as_str()), (200, Some(payment_id.as_str())), "{again}");

    // The key in an `Idempotency-Key` header instead of the body.
    let pay2 = r#"{"orderId": "o-2", "amountMinor": 300, "currency": "EUR"}"#;
    let header = ["-X", "POST", "-H", "Idempotency-Key: o-2-pay", "-d", pay2];
    let (code, second) = curl(payment.addr(), "/v1/payments", &header).await;
    assert_eq!(code, 200, "{second}");
    let (_, second_again) = curl(payment.addr(), "/v1/payments", &header).await;
    assert_eq!(second["paymentId"], second_again["paymentId"], "{second} {second_again}");
    assert_ne!(second["paymentId"], first["paymentId"]);
    let conflicting = ["-X", "POST", "-H", "Idempotency-Key: other", "-d", pay];
    let (code, error) = curl(payment.addr(), "/v1/payments", &conflicting).await;
    assert_eq!(code, 400, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("differ")), "{error}");

    let (code, stored) = curl(payment.addr(), "/v1/payments/o-1", &[]).await;
    assert_eq!(code, 200, "{stored}");
    assert_eq!(
        (stored["orderId"].as_str(), stored["amountMinor"].as_str()),
        (Some("o-1"), Some("1250")),
        "{stored}"
    );

    let ship = r#"{"order_id": "o-1", "idempotency_key": "o-1-ship",
        "address": {"name": "Ada", "line1": "1 Analytical St", "city": "London", "country": "GB"}}"#;
    let (code, shipped) = curl(shipping.addr(), "/v1/shipments", &["-X", "POST", "-d", ship]).await;
    assert_eq!(code, 200, "{shipped}");
    assert!(shipped["trackingId"].as_str().is_some_and(|t| !t.is_empty()), "{shipped}");

    let (code, report) = curl(status.addr(), "/v1/orders/o-1/status", &[]).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["state"], "ORDER_STATE_SHIPPED", "{report}");
    assert_eq!(report["payment"]["paymentId"].as_str(), Some(payment_id.as_str()), "{report}");

    let (code, missing) = curl(payment.addr(), "/v1/payments/nope", &[]).await;
    assert_eq!((code, missing["code"].as_i64()), (404, Some(5)), "{missing}");

    // The same order from Python `requests`.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/place_order.py");
    let urls = [payment.addr(), shipping.addr(), status.addr()].map(|addr| format!("http://{addr}"));
    let output =
        Command::new("python3").arg(script).args(&urls).arg("py-1").output().await.expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let steps: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    let (pay, again) = (&steps["pay"], &steps["again"]);
    assert_eq!((&pay[0], &pay[1]["state"]), (&200.into(), &"PAYMENT_STATE_CAPTURED".into()), "{steps}");
    assert_eq!(again[1]["paymentId"], pay[1]["paymentId"], "the retried POST charged once: {steps}");
    assert_eq!(steps["ship"][0], 200, "{steps}");
    let report = &steps["status"];
    assert_eq!((&report[0], &report[1]["state"]), (&200.into(), &"ORDER_STATE_SHIPPED".into()), "{steps}");
    assert_eq!(report[1]["payment"]["paymentId"], pay[1]["paymentId"], "{steps}");
    assert_eq!((&steps["missing"][0], &steps["missing"][1]["code"]), (&404.into(), &5.into()), "{steps}");
}
