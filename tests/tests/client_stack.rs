//! The client stack seen from outside: typed causes on the returned status,
//! and layers of the caller's own around the call and around each attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use trellis::client::{CallError, Channel};
use trellis::server::FaultsConfig;
use trellis::{Code, Registry};
use trellis_tests::Whoami;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_client::DeepClient as RawDeepClient;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};
use trellis_tests::registries::free_port;

fn registry(ports: &[u16]) -> Registry {
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    Registry::from_url(&format!("static://{}={}", DEEP_DESCRIPTOR.name(), addrs.join(","))).expect("registry")
}

#[tokio::test]
async fn a_circuit_open_rejection_is_told_apart_without_reading_the_message() {
    let server = trellis::Server::builder()
        .add_service(DeepServer::new(Whoami(0)))
        .faults(FaultsConfig { unavailable: true, ..FaultsConfig::default() })
        .bind()
        .await
        .expect("bind");
    let port = server.local_addr().port();
    tokio::spawn(server.serve());
    let mut client = DeepClient::discover(registry(&[port])).expect("client");

    let mut causes = Vec::new();
    for _ in 0..8 {
        let status = client.dive(Depth::default()).await.expect_err("the instance is failing");
        causes.push(CallError::of(&status).cloned());
    }
    let open = causes.iter().position(|c| matches!(c, Some(CallError::CircuitOpen { .. })));
    let open = open.expect("the breaker opens after repeated failures");
    assert!(open >= 5, "not before 5 failed calls: {causes:?}");
    assert!(
        causes[..open].iter().all(|c| c.as_ref().is_some_and(CallError::is_target_failure)),
        "the calls before were failures of the target: {causes:?}"
    );
    let status = client.dive(Depth::default()).await.expect_err("still open");
    assert_eq!(status.code(), Code::Unavailable);
    let Some(CallError::CircuitOpen { service, retry_in, .. }) = CallError::of(&status) else {
        panic!("{status:?}")
    };
    assert_eq!(*service, DEEP_DESCRIPTOR.name());
    assert!(*retry_in <= Duration::from_secs(1));
}

type Request = http::Request<trellis::codegen::tonic::body::Body>;

/// Counts what passes through it.
#[derive(Clone)]
struct Count(Arc<AtomicUsize>);

impl<S> tower::Layer<S> for Count {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, count: self.0.clone() }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

impl<S: tower::Service<Request>> tower::Service<Request> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> S::Future {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.call(req)
    }
}

#[tokio::test]
async fn your_layers_see_each_call_once_and_each_attempt() {
    let (calls, attempts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let channel = Channel::builder(registry(&[free_port()]), &DEEP_DESCRIPTOR)
        .layer(Count(calls.clone()))
        .attempt_layer(Count(attempts.clone()))
        .build()
        .expect("channel");
    let mut client = RawDeepClient::new(channel);
    let mut request = trellis::Request::new(Depth::default());
    request.set_timeout(Duration::from_secs(2));
    let status = client.dive(request).await.expect_err("nothing listens");
    let Some(CallError::Unreachable { never_reached, .. }) = CallError::of(&status) else {
        panic!("{status:?}")
    };
    assert!(*never_reached, "a refused connection never reached a handler");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "one call");
    assert_eq!(attempts.load(Ordering::Relaxed), 3, "three attempts, all refused");
}

#[tokio::test]
async fn no_instance_in_time_names_the_registry() {
    let channel = Channel::discover(Registry::from_url("static://").expect("registry"), &DEEP_DESCRIPTOR)
        .expect("channel");
    let mut client = RawDeepClient::new(channel);
    let mut request = trellis::Request::new(Depth::default());
    request.set_timeout(Duration::from_millis(100));
    let status = client.dive(request).await.expect_err("no instance");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(matches!(CallError::of(&status), Some(CallError::NoInstance { .. })), "{status:?}");
    assert!(status.message().contains("static://"), "{}", status.message());
}

#[tokio::test]
async fn a_servers_layers_see_every_call() {
    let served = Arc::new(AtomicUsize::new(0));
    let server = trellis::Server::builder()
        .add_service(DeepServer::new(Whoami(7)))
        .layer(Count(served.clone()))
        .bind()
        .await
        .expect("bind");
    let port = server.local_addr().port();
    tokio::spawn(server.serve());
    let mut client = DeepClient::discover(registry(&[port])).expect("client");
    for _ in 0..3 {
        assert_eq!(client.dive(Depth::default()).await.expect("dive").into_inner().level, 7);
    }
    // Health checks from the client's endpoint go through it too.
    assert!(served.load(Ordering::Relaxed) >= 3, "{}", served.load(Ordering::Relaxed));
}
