//! A real Prometheus (Debian's `prometheus`, on loopback, with its data in a
//! temporary directory) scrapes the admin listeners of the three order
//! services, as the demo starts them; PromQL queries through its HTTP API
//! return the totals of the orders placed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use order_payment::proto::order::payment::v1::{OrderPaymentClient, PayRequest};
use order_shipping::proto::order::shipping::v1::{Address, OrderShippingClient, ShipRequest};
use order_status::proto::order::status::v1::{GetStatusRequest, OrderState, OrderStatusClient};
use trellis::Registry;
use trellis_tests::Service;
use trellis_tests::registries::free_port;
use trellis_tests::scrape::get;

const ORDERS: u64 = 12;

/// Debian's Prometheus server.
fn prometheus_bin() -> PathBuf {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("prometheus is missing: ./scripts/test installs it (Debian: apt-get install prometheus)")
    })
}

/// A Prometheus server killed when dropped.
struct Prometheus {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(jobs: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n");
        for (job, addr) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the scrape config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = tokio::process::Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { child, addr, _dir: dir };
        let start = Instant::now();
        while get(addr, "/-/ready").await.map(|(s, _)| s) != Some(200) {
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus was not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// The value of an instant PromQL query with one result, if it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={encoded}")).await?;
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql}: one series expected, got {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `promql` equals `expected` (the next scrapes may be needed).
    async fn eventually(&self, promql: &str, expected: f64) {
        let start = Instant::now();
        loop {
            let value = self.query(promql).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{promql} is {value:?}, not {expected}, after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_order_services_and_counts_every_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("local://{}", dir.path().join("registry").display());
    // Each admin listener on a port of its own choosing, read from its
    // `listening` line (a port picked here could be taken before it binds).
    let admin = ["--admin-listen", "127.0.0.1:0"];
    let payment_db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let shipping_db = format!("shipping.database={}", dir.path().join("s.sqlite3").display());
    let payment_service =
        Service::start("order-payment", &[&["--registry", &url, "--set", &payment_db][..], &admin].concat())
            .await;
    let shipping_service = Service::start(
        "order-shipping",
        &[&["--registry", &url, "--set", &shipping_db][..], &admin].concat(),
    )
    .await;
    let status_service = Service::start("order-status", &[&["--registry", &url][..], &admin].concat()).await;
    let admin_of =
        |service: &Service| service.admin_addr().expect("the listening line names the admin listener");
    let prometheus = Prometheus::start(&[
        ("order-payment", admin_of(&payment_service)),
        ("order-shipping", admin_of(&shipping_service)),
        ("order-status", admin_of(&status_service)),
    ])
    .await;

    let registry = Registry::from_url(&url).expect("registry");
    let mut payment = OrderPaymentClient::discover(&registry).expect("client");
    let mut shipping = OrderShippingClient::discover(&registry).expect("client");
    let mut status = OrderStatusClient::discover(&registry).expect("client");
    for n in 0..ORDERS {
        let id = format!("order-{n}");
        let pay = PayRequest {
            order_id: id.clone(),
            amount_minor: 1200,
            currency: "EUR".to_owned(),
            idempotency_key: format!("{id}-pay"),
        };
        payment.pay(pay).await.expect("pay");
        let address = Address {
            name: "Ada Lovelace".to_owned(),
            line1: "12 St James's Square".to_owned(),
            city: "London".to_owned(),
            country: "GB".to_owned(),
            ..Address::default()
        };
        let ship = ShipRequest {
            order_id: id.clone(),
            address: Some(address),
            idempotency_key: format!("{id}-ship"),
        };
        shipping.ship(ship).await.expect("ship");
        let report = status.get_status(GetStatusRequest { order_id: id }).await.expect("status").into_inner();
        assert_eq!(report.state(), OrderState::Shipped);
    }

    let n = ORDERS as f64;
    let handled = |job: &str, method: &str| {
        format!(r#"sum(rpc_server_calls_handled_total{{job="{job}",method="{method}",code="OK"}})"#)
    };
    prometheus.eventually(&handled("order-status", "GetStatus"), n).await;
    prometheus.eventually(&handled("order-payment", "Pay"), n).await;
    prometheus.eventually(&handled("order-shipping", "Ship"), n).await;
    // Each GetStatus asked payment and shipping once: the client's and the
    // servers' counts agree.
    prometheus.eventually(&handled("order-payment", "GetPayment"), n).await;
    prometheus.eventually(&handled("order-shipping", "GetShipment"), n).await;
    let client = |target: &str| {
        format!(
            r#"sum(rpc_client_call_duration_seconds_count{{job="order-status",service="{target}",code="OK"}})"#
        )
    };
    prometheus.eventually(&client("order.payment.v1.OrderPayment"), n).await;
    prometheus.eventually(&client("order.shipping.v1.OrderShipping"), n).await;
    prometheus
        .eventually(r#"sum(trellis_client_attempts_total{job="order-status",kind="first"})"#, 2.0 * n)
        .await;
    prometheus
        .eventually(r#"sum(trellis_client_attempts_total{job="order-status",kind="retry"})"#, 0.0)
        .await;
    prometheus.eventually(r#"count(up{job=~"order-.*"} == 1)"#, 3.0).await;
    prometheus.eventually(r#"sum(trellis_server_ready{job=~"order-.*"})"#, 3.0).await;
    prometheus
        .eventually(r#"sum(trellis_client_endpoints{job="order-status",state=~"ready|connecting"})"#, 2.0)
        .await;
    prometheus
        .eventually(r#"count(trellis_build_info{job="order-payment",service="order-payment"})"#, 1.0)
        .await;
    // Every call was quick: none above the 5 s bucket.
    let slow = r#"sum(rpc_server_call_duration_seconds_count{job="order-status"}) - sum(rpc_server_call_duration_seconds_bucket{job="order-status",le=~"5(\\.0)?"})"#;
    prometheus.eventually(slow, 0.0).await;
}
