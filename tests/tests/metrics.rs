//! `/metrics` after a known number of real calls over loopback: successes,
//! a retried call, a shed call, a call that arrived with no time left and a
//! breaker trip; each counter moves by exactly that much, on the server and
//! on the client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis::admin::AdminServer;
use trellis::client::{ClientConfig, Clients, MethodConfig};
use trellis::metrics::Metrics;
use trellis::{Code, Registry, Request, Response, Status};
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_client::DeepClient as RawDeepClient;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::{Deep, DeepServer};
use trellis_tests::proto::trellis::test::nested::deep::v1::{DeepClient, Depth};
use trellis_tests::scrape::{Scrape, get};

const OK: u32 = 0;
const UNAVAILABLE: u32 = 1;
const FAIL_ONCE: u32 = 2;
const SLOW: u32 = 3;

/// Answers by `level`: OK, UNAVAILABLE, UNAVAILABLE once then OK, or OK after 600 ms.
#[derive(Debug, Default)]
struct Scripted {
    failed_once: AtomicBool,
}

#[trellis::async_trait]
impl Deep for Scripted {
    async fn dive(&self, request: Request<Depth>) -> Result<Response<Depth>, Status> {
        let depth = request.into_inner();
        match depth.level {
            UNAVAILABLE => return Err(Status::unavailable("scripted failure")),
            FAIL_ONCE if !self.failed_once.swap(true, Ordering::SeqCst) => {
                return Err(Status::unavailable("scripted failure, once"));
            }
            SLOW => tokio::time::sleep(Duration::from_millis(600)).await,
            _ => {}
        }
        Ok(Response::new(depth))
    }
}

const SERVICE: &str = "trellis.test.nested.deep.v1.Deep";

/// Sends Dive with `grpc-timeout: 0n` over raw HTTP/2 (a gRPC client would
/// time it out itself) and returns its `grpc-status`.
async fn expired_call(addr: std::net::SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!("http://{addr}/{SERVICE}/Dive"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "0n")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send");
    // One empty message: no compression flag, length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("body");
    let response = response.await.expect("response");
    let status = response.headers().get("grpc-status").cloned();
    let status = match status {
        Some(status) => status,
        None => {
            response.into_body().trailers().await.expect("trailers").expect("some")["grpc-status"].clone()
        }
    };
    status.to_str().expect("ascii").to_owned()
}

/// What moved between two scrapes.
struct Delta<'a>(&'a Scrape, &'a Scrape);

impl Delta<'_> {
    fn of(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.1.value(name, labels) - self.0.value(name, labels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_counter_moves_by_exactly_the_calls_made() {
    let server_metrics = Metrics::new("metrics-test-server", "9.9.9");
    let server = trellis::Server::builder()
        .add_service(DeepServer::new(Scripted::default()))
        .max_concurrent_calls(1)
        .metrics(server_metrics)
        .admin_listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    let server_admin = server.admin_addr().expect("an admin listener");
    tokio::spawn(server.serve());

    let client_metrics = Metrics::new("metrics-test-client", "9.9.9");
    let client_admin = AdminServer::bind("127.0.0.1:0".parse().unwrap(), client_metrics.clone())
        .await
        .expect("client admin");
    let registry = Registry::from_url(&format!("static://{SERVICE}={addr}")).expect("registry");
    let clients = Clients::new(registry.clone()).with_metrics(client_metrics.clone());
    let mut client = DeepClient::discover(&clients).expect("client");
    // A second channel to the same service that never retries, to trip its breaker.
    let no_retries = ClientConfig {
        methods: [("Dive".to_owned(), MethodConfig { max_attempts: Some(1), ..MethodConfig::default() })]
            .into(),
        ..ClientConfig::default()
    };
    let mut fragile = DeepClient::discover(
        Clients::new(registry).with_config(SERVICE, no_retries).with_metrics(client_metrics),
    )
    .expect("client");

    // Once the server is serving, nothing has been called yet.
    let ready = async {
        while get(server_admin, "/readyz").await.map(|(s, _)| s) != Some(200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready).await.expect("ready in time");
    let (server_before, client_before) =
        (Scrape::of(server_admin).await, Scrape::of(client_admin.local_addr()).await);

    // 5 successes.
    for _ in 0..5 {
        client.dive(Depth { level: OK, inner: None }).await.expect("ok");
    }
    // 1 call that fails once and succeeds on its retry.
    client.dive(Depth { level: FAIL_ONCE, inner: None }).await.expect("retried");
    // 1 call shed while a slow one holds the only slot; sent without the
    // Trellis client, which would retry it.
    let slow = tokio::spawn({
        let mut client = client.clone();
        async move { client.dive(Depth { level: SLOW, inner: None }).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channel = trellis::codegen::tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut raw = RawDeepClient::new(channel);
    let shed = raw.dive(Depth { level: OK, inner: None }).await.expect_err("shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    slow.await.expect("task").expect("the slow call succeeds");
    // 1 call that arrives with no time left.
    assert_eq!(expired_call(addr).await, "4", "DEADLINE_EXCEEDED");
    // 5 failures in a row open the fragile channel's breaker; the 6th call is refused unsent.
    for _ in 0..5 {
        let status = fragile.dive(Depth { level: UNAVAILABLE, inner: None }).await.expect_err("failing");
        assert_eq!(status.code(), Code::Unavailable);
    }
    let refused = fragile.dive(Depth { level: OK, inner: None }).await.expect_err("circuit open");
    assert!(
        matches!(
            trellis::client::CallError::of(&refused),
            Some(trellis::client::CallError::CircuitOpen { .. })
        ),
        "{refused:?}"
    );

    let (server_after, client_after) =
        (Scrape::of(server_admin).await, Scrape::of(client_admin.local_addr()).await);
    let server = Delta(&server_before, &server_after);
    let dive = [("service", SERVICE), ("method", "Dive")];
    let code = |code| [("service", SERVICE), ("method", "Dive"), ("code", code)];
    // Server: 5 + 2 (fail once, retry) + 2 (slow, shed) + 1 (expired) + 5 (failures).
    assert_eq!(server.of("rpc_server_calls_started_total", &dive), 15.0, "{}", server_after.0);
    assert_eq!(server.of("rpc_server_calls_handled_total", &code("OK")), 7.0);
    assert_eq!(server.of("rpc_server_calls_handled_total", &code("UNAVAILABLE")), 6.0);
    assert_eq!(server.of("rpc_server_calls_handled_total", &code("RESOURCE_EXHAUSTED")), 1.0);
    assert_eq!(server.of("rpc_server_calls_handled_total", &code("DEADLINE_EXCEEDED")), 1.0);
    assert_eq!(server.of("rpc_server_call_duration_seconds_count", &code("OK")), 7.0);
    assert_eq!(server.of("rpc_server_call_duration_seconds_count", &dive), 15.0);
    // The slow call took at least 600 ms: it is above the 0.5 s bucket.
    let fast = server.of("rpc_server_call_duration_seconds_bucket", &[("code", "OK"), ("le", "0.5")]);
    assert_eq!(fast, 6.0);
    assert_eq!(server.of("trellis_server_calls_shed_total", &dive), 1.0);
    assert_eq!(server.of("trellis_server_calls_expired_total", &dive), 1.0);
    assert_eq!(server_after.value("rpc_server_calls_in_flight", &dive), 0.0);
    assert_eq!(server_after.value("trellis_server_state", &[("state", "serving")]), 1.0);
    assert_eq!(
        server_after.value("trellis_build_info", &[("service", "metrics-test-server"), ("version", "9.9.9")]),
        1.0
    );
    assert!(server_after.value("process_resident_memory_bytes", &[]) > 1e6, "{}", server_after.0);
    assert!(server_after.value("process_open_fds", &[]) > 3.0);
    assert!(server_after.value("process_cpu_seconds_total", &[]) > 0.0);

    let client = Delta(&client_before, &client_after);
    let target = [("service", SERVICE)];
    let with = |k, v| [("service", SERVICE), (k, v)];
    // Attempts: 5 + 1 + 1 first ones on the first channel, 5 on the fragile one; 1 retry.
    assert_eq!(
        client.of("trellis_client_attempts_total", &with("kind", "first")),
        12.0,
        "{}",
        client_after.0
    );
    assert_eq!(client.of("trellis_client_attempts_total", &with("kind", "retry")), 1.0);
    assert_eq!(client.of("trellis_client_attempts_total", &with("kind", "hedge")), 0.0);
    assert_eq!(client.of("trellis_client_retries_not_sent_total", &target), 0.0);
    let client_code = |code| [("service", SERVICE), ("method", "Dive"), ("code", code)];
    assert_eq!(client.of("rpc_client_call_duration_seconds_count", &client_code("OK")), 7.0);
    assert_eq!(client.of("rpc_client_call_duration_seconds_count", &client_code("UNAVAILABLE")), 6.0);
    let open = [("service", SERVICE), ("method", "Dive"), ("to", "open")];
    assert_eq!(client.of("trellis_client_breaker_transitions_total", &open), 1.0);
    assert_eq!(
        client_after.value("trellis_client_breaker_state", &[("service", SERVICE), ("method", "Dive")]),
        2.0
    );
    assert_eq!(client.of("trellis_client_ejections_total", &with("reason", "failures")), 1.0);
    assert_eq!(client.of("trellis_client_ejections_total", &with("reason", "latency")), 0.0);
    let unsent = |reason| with("reason", reason);
    assert_eq!(client.of("trellis_client_calls_failed_before_sending_total", &unsent("circuit_open")), 1.0);
    assert_eq!(client.of("trellis_client_calls_failed_before_sending_total", &unsent("no_instance")), 0.0);
    assert_eq!(
        client.of("trellis_client_calls_failed_before_sending_total", &unsent("deadline_passed")),
        0.0
    );
    // Each channel learnt its one endpoint from the registry once.
    assert_eq!(client_after.value("trellis_client_discovery_updates_total", &target), 2.0);
    // A static list is always current (the contract suite checks the polled backends).
    let age = client_after.value("trellis_client_registry_answer_age_seconds", &target);
    assert_eq!(age, 0.0, "{}", client_after.0);
    assert_eq!(client_after.value("trellis_client_endpoints", &target), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_fail_before_sending_are_counted_by_why() {
    let metrics = Metrics::new("metrics-test-lonely", "9.9.9");
    let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap(), metrics.clone()).await.expect("admin");
    // No instance of the service is registered anywhere.
    let clients = Clients::new(Registry::from_url("static://").expect("registry")).with_metrics(metrics);
    let mut client = DeepClient::discover(clients).expect("client");
    let before = Scrape::of(admin.local_addr()).await;

    let mut request = trellis::Request::new(Depth::default());
    request.set_timeout(Duration::from_millis(100));
    let status = client.dive(request).await.expect_err("no instance");
    assert!(
        matches!(
            trellis::client::CallError::of(&status),
            Some(trellis::client::CallError::NoInstance { .. })
        ),
        "{status:?}"
    );
    // Inside a call whose deadline has passed, the outbound call is refused unsent.
    let passed =
        trellis::context::RequestContext::new(Some(tokio::time::Instant::now() - Duration::from_millis(50)));
    let status = passed.scope(client.dive(Depth::default())).await.expect_err("deadline passed");
    assert!(
        matches!(
            trellis::client::CallError::of(&status),
            Some(trellis::client::CallError::DeadlinePassed { .. })
        ),
        "{status:?}"
    );

    let after = Scrape::of(admin.local_addr()).await;
    let delta = Delta(&before, &after);
    let unsent = |reason| [("service", SERVICE), ("reason", reason)];
    let name = "trellis_client_calls_failed_before_sending_total";
    assert_eq!(delta.of(name, &unsent("no_instance")), 1.0, "{}", after.0);
    assert_eq!(delta.of(name, &unsent("deadline_passed")), 1.0);
    assert_eq!(delta.of(name, &unsent("circuit_open")), 0.0);
    let code = |code| [("service", SERVICE), ("method", "Dive"), ("code", code)];
    assert_eq!(delta.of("rpc_client_call_duration_seconds_count", &code("DEADLINE_EXCEEDED")), 2.0);
    assert_eq!(after.value("trellis_client_endpoints", &[("service", SERVICE)]), 0.0);
}
