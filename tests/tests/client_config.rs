//! Balancing strategies, chosen in code or in configuration, and per-method
//! overrides from configuration, over real sockets.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use trellis::client::{Balance, HashKey};
use trellis::client::{ClientConfig, Clients, MethodConfig};
use trellis::codegen::Channel;
use trellis::server::FaultsConfig;
use trellis::{Code, Registry, Request};
use trellis_tests::Whoami;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};

/// Starts `n` servers (with `faults`); returns a static registry naming them.
async fn servers(n: usize, faults: FaultsConfig) -> (Registry, Vec<u16>) {
    let mut ports = Vec::new();
    for _ in 0..n {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let server = trellis::Server::builder()
            .listen(([127, 0, 0, 1], port).into())
            .add_service(DeepServer::new(Whoami(port)))
            .faults(faults)
            .bind()
            .await
            .expect("bind");
        tokio::spawn(server.serve());
        ports.push(port);
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = format!("static://{}={}", DEEP_DESCRIPTOR.name(), addrs.join(","));
    (Registry::from_url(&url).expect("registry"), ports)
}

async fn answers(client: &mut DeepClient, calls: usize, key: Option<&str>) -> HashMap<u32, usize> {
    let mut seen = HashMap::new();
    for _ in 0..calls {
        let mut request = Request::new(Depth::default());
        if let Some(key) = key {
            request.extensions_mut().insert(HashKey::new(key));
        }
        let level = client.dive(request).await.expect("call").into_inner().level;
        *seen.entry(level).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_from_configuration_takes_each_instance_in_turn() {
    let (registry, ports) = servers(4, FaultsConfig::default()).await;
    let config = ClientConfig { balance: Some(Balance::RoundRobin), ..ClientConfig::default() };
    // The service name is matched ignoring case, as environment variables are lowercased.
    let registry = Clients::new(registry).with_config(&DEEP_DESCRIPTOR.name().to_lowercase(), config);
    let mut client = DeepClient::discover(&registry).expect("client");
    answers(&mut client, 4, None).await; // until every endpoint is known
    let seen = answers(&mut client, 40, None).await;
    assert_eq!(seen.len(), ports.len(), "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "each in turn: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_a_key_on_one_instance() {
    let (registry, _) = servers(4, FaultsConfig::default()).await;
    let channel =
        Channel::with_balance(&registry, &DEEP_DESCRIPTOR, Balance::ConsistentHash).expect("channel");
    let mut client = DeepClient::new(channel);
    answers(&mut client, 8, None).await;
    let mut homes = Vec::new();
    for key in ["order-1", "order-2", "order-3", "order-4", "order-5", "order-6", "order-7", "order-8"] {
        let seen = answers(&mut client, 10, Some(key)).await;
        assert_eq!(seen.len(), 1, "{key} went to several instances: {seen:?}");
        homes.extend(seen.into_keys());
    }
    homes.sort_unstable();
    homes.dedup();
    assert!(homes.len() >= 2, "8 keys all on one instance: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_method_timeout_is_the_calls_deadline() {
    let slow = FaultsConfig { delay: Duration::from_millis(800), ..FaultsConfig::default() };
    let (registry, _) = servers(1, slow).await;
    let method = MethodConfig { timeout: Some(Duration::from_millis(150)), max_attempts: None };
    let config =
        ClientConfig { methods: BTreeMap::from([("Dive".to_owned(), method)]), ..ClientConfig::default() };
    let registry = Clients::new(registry).with_config(DEEP_DESCRIPTOR.name(), config);
    let mut client = DeepClient::discover(&registry).expect("client");
    let start = Instant::now();
    let status = client.dive(Depth::default()).await.expect_err("slower than the configured timeout");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(start.elapsed() < Duration::from_millis(600), "took {:?}", start.elapsed());
    // A per-call timeout still wins over the configured one.
    let mut request = Request::new(Depth::default());
    request.set_timeout(Duration::from_secs(5));
    assert!(client.dive(request).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_from_configuration_limits_retries() {
    let failing = FaultsConfig { unavailable: true, ..FaultsConfig::default() };
    let (registry, _) = servers(2, failing).await;
    let once = MethodConfig { timeout: None, max_attempts: Some(1) };
    let config =
        ClientConfig { methods: BTreeMap::from([("Dive".to_owned(), once)]), ..ClientConfig::default() };
    let registry = Clients::new(registry).with_config(DEEP_DESCRIPTOR.name(), config);
    let channel = Channel::discover(&registry, &DEEP_DESCRIPTOR).expect("channel");
    let mut client = DeepClient::new(channel.clone());
    for _ in 0..3 {
        let status = client.dive(Depth::default()).await.expect_err("every instance fails");
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(channel.stats().retries, 0, "{:?}", channel.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reporting_not_serving_gets_no_more_calls() {
    // Two instances; the second will announce shutdown and keep serving for 5 s.
    let mut ports = Vec::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stopped = Some(stopped);
    for _ in 0..2 {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut builder = trellis::Server::builder()
            .listen(([127, 0, 0, 1], port).into())
            .add_service(DeepServer::new(Whoami(port)))
            .propagation_delay(Duration::from_secs(5));
        if ports.len() == 1 {
            let stopped = stopped.take().expect("one stopper");
            builder = builder.shutdown_signal(async {
                let _ = stopped.await;
            });
        }
        tokio::spawn(builder.bind().await.expect("bind").serve());
        ports.push(port);
    }
    let url = format!("static://{}=127.0.0.1:{},127.0.0.1:{}", DEEP_DESCRIPTOR.name(), ports[0], ports[1]);
    let registry = Registry::from_url(&url).expect("registry");
    let mut client = DeepClient::discover(&registry).expect("client");
    let seen = answers(&mut client, 60, None).await;
    assert_eq!(seen.len(), 2, "both instances serve at first: {seen:?}");

    let _ = stop.send(());
    let start = Instant::now();
    loop {
        let seen = answers(&mut client, 30, None).await;
        if seen.keys().all(|port| *port == u32::from(ports[0])) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still routed to the NOT_SERVING instance: {seen:?}"
        );
    }
    eprintln!("NOT_SERVING instance left the rotation within {:?}", start.elapsed());
}
