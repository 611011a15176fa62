//! The embedded `local://` registry, with in-process servers and real
//! service processes: how fast clients follow registrations, expiry of
//! killed instances, clean removal, shared addresses, and bad URLs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use order_payment::proto::order::payment::v1::ORDER_PAYMENT_SERVICE_NAME;
use tokio::sync::oneshot;
use trellis::registry::{Endpoint, Instance, Metadata};
use trellis::{Registry, Request};
use trellis_tests::Service;
use trellis_tests::Whoami;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};

/// An in-process server registered in `registry`; stops (deregistering) when
/// the returned sender is dropped.
async fn serve(registry: &Registry) -> (SocketAddr, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let server = trellis::Server::builder()
        .listen(addr)
        .add_service(DeepServer::new(Whoami(addr.port())))
        .registry(registry.clone())
        // Longer than the registry's poll, so clients learn of the
        // deregistration before the server stops accepting calls.
        .propagation_delay(Duration::from_millis(500))
        .shutdown_signal(async {
            let _ = stopped.await;
        })
        .bind()
        .await
        .expect("bind");
    tokio::spawn(server.serve());
    (addr, stop)
}

fn local(dir: &tempfile::TempDir) -> Registry {
    Registry::from_url(&format!("local://{}?poll=50ms", dir.path().display())).expect("registry")
}

/// Calls until `done(port that answered)` or `bound` passes; returns the time taken.
async fn call_until(client: &mut DeepClient, bound: Duration, mut done: impl FnMut(u16) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let answer = client.dive(Depth::default()).await.expect("call").into_inner().level;
        if done(u16::try_from(answer).expect("a port")) {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "not done within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_registration_and_deregistration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = local(&dir);
    let (a, _stop_a) = serve(&registry).await;
    let mut client = DeepClient::discover(&registry).expect("client");
    call_until(&mut client, Duration::from_secs(5), |port| port == a.port()).await;

    let registered = Instant::now();
    let (b, stop_b) = serve(&registry).await;
    let to_first_call = call_until(&mut client, Duration::from_secs(5), |port| port == b.port()).await;
    eprintln!("local://: registration to first routed call: {:?}", registered.elapsed());
    assert!(to_first_call < Duration::from_secs(3), "took {to_first_call:?}");

    let deregistered = Instant::now();
    drop(stop_b);
    // Once the client has stopped routing to b, 50 calls in a row all go to a.
    let mut in_a_row = 0;
    call_until(&mut client, Duration::from_secs(5), |port| {
        in_a_row = if port == a.port() { in_a_row + 1 } else { 0 };
        in_a_row >= 50
    })
    .await;
    let stopped_routing = deregistered.elapsed();
    eprintln!("local://: deregistration to last routed call: < {stopped_routing:?}");
    assert!(stopped_routing < Duration::from_secs(3), "took {stopped_routing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_its_servers_waits_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = local(&dir);
    let mut client = DeepClient::discover(&registry).expect("client");
    let mut request = Request::new(Depth::default());
    request.set_timeout(Duration::from_secs(10));
    let call = tokio::spawn(async move { client.dive(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (addr, _stop) = serve(&registry).await;
    let answer = call.await.expect("task").expect("the call waits for an instance").into_inner();
    assert_eq!(answer.level, u32::from(addr.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_nobody_registered_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = local(&dir);
    let mut client = DeepClient::discover(&registry).expect("client");
    let mut request = Request::new(Depth::default());
    request.set_timeout(Duration::from_millis(300));
    let status = client.dive(request).await.expect_err("nobody serves it");
    assert_eq!(status.code(), trellis::Code::DeadlineExceeded, "{status:?}");
    let message = status.message();
    assert!(message.contains(DEEP_DESCRIPTOR.name()) && message.contains(registry.url()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_address_share_an_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = local(&dir);
    let endpoint = Endpoint::new("127.0.0.1", 40_001);
    let first = registry
        .register(Instance::new("t.v1.Shared", endpoint.clone(), Metadata::default()))
        .await
        .expect("register");
    let second = registry
        .register(Instance::new("t.v1.Shared", endpoint.clone(), Metadata::default()))
        .await
        .expect("register");
    let mut resolution = registry.resolve("t.v1.Shared").await.expect("resolve");
    assert_eq!(resolution.current().len(), 2);
    assert_eq!(resolution.endpoints().into_iter().collect::<Vec<_>>(), std::slice::from_ref(&endpoint));

    first.deregister().await.expect("deregister");
    while resolution.current().len() != 1 {
        resolution.changed().await.expect("changes");
    }
    assert_eq!(resolution.endpoints().len(), 1, "the other instance still listens there");
    second.deregister().await.expect("deregister");
    while !resolution.current().is_empty() {
        resolution.changed().await.expect("changes");
    }
    assert!(resolution.endpoints().is_empty());
}

/// Waits until the resolution of order-payment has `n` instances; returns how long it took.
async fn until_instances(
    resolution: &mut trellis::registry::Resolution,
    n: usize,
    bound: Duration,
) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(bound, async {
        while resolution.current().len() != n {
            resolution.changed().await.expect("changes");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not {n} instances within {bound:?}: {:?}", resolution.current()));
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_expires_and_a_stopped_one_leaves_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("local://{}", dir.path().join("registry").display());
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let registry = Registry::from_url(&url).expect("registry");
    let mut resolution = registry.resolve(ORDER_PAYMENT_SERVICE_NAME).await.expect("resolve");

    let killed = Service::start("order-payment", &["--registry", &url, "--set", &db]).await;
    let mut stopped = Service::start(
        "order-payment",
        &["--registry", &url, "--set", &db, "--set", "shutdown.propagation_delay=2s"],
    )
    .await;
    until_instances(&mut resolution, 2, Duration::from_secs(5)).await;

    killed.signal(Signal::SIGKILL);
    let expired = until_instances(&mut resolution, 1, Duration::from_secs(8)).await;
    eprintln!(
        "local://: SIGKILLed instance expired after {expired:?} (TTL {:?})",
        trellis::registry::DEFAULT_TTL
    );
    assert!(expired <= trellis::registry::DEFAULT_TTL + Duration::from_secs(2), "took {expired:?}");
    assert_eq!(resolution.current()[0].endpoint, Endpoint::from(stopped.addr()));

    // SIGTERM deregisters before the propagation delay, so it leaves at once.
    stopped.signal(Signal::SIGTERM);
    let left = until_instances(&mut resolution, 0, Duration::from_secs(5)).await;
    eprintln!("local://: SIGTERMed instance deregistered after {left:?}");
    assert!(left < Duration::from_secs(1), "took {left:?}");
    assert!(stopped.wait(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_register_their_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("local://{}", dir.path().join("registry").display());
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let registry = Registry::from_url(&url).expect("registry");
    let payment = Service::start(
        "order-payment",
        &["--registry", &url, "--set", &db, "--set", "instance.zone=zone-b", "--set", "instance.weight=30"],
    )
    .await;
    let mut resolution = registry.resolve(ORDER_PAYMENT_SERVICE_NAME).await.expect("resolve");
    until_instances(&mut resolution, 1, Duration::from_secs(5)).await;
    let instance = resolution.current()[0].clone();
    assert_eq!(instance.endpoint, Endpoint::from(payment.addr()));
    assert_eq!(instance.metadata.zone.as_deref(), Some("zone-b"));
    assert_eq!(instance.metadata.weight, 30);
    assert_eq!(instance.metadata.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn an_unwritable_registry_directory_stops_the_service_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").expect("write");
    let url = format!("local://{}", file.display());
    let output = tokio::process::Command::new(trellis_tests::bin("order-payment"))
        .args(["--listen", "127.0.0.1:0", "--registry", &url])
        .env("TRELLIS_PAYMENT__DATABASE", dir.path().join("p.sqlite3"))
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&url) && stderr.contains("unreachable"), "{stderr}");
}
