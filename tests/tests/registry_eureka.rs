//! The `eureka://` registry against the fake Eureka server of
//! `trellis_tests::fakes::eureka`, checked with two third-party clients,
//! `py-eureka-client` (XML reads) and `eureka-js-client` (JSON reads), under
//! both base paths (`/eureka`, Spring Cloud; `/eureka/v2`, Netflix): their
//! registrations are discovered and called by Trellis, and Trellis's
//! registration is seen by them with its address, port, status and
//! metadata. Also a server that forgot the instance.
#![cfg(feature = "eureka")]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use trellis::Registry;
use trellis::registry::{Endpoint, Instance, Metadata, Resolution};
use trellis_tests::Whoami;
use trellis_tests::fakes::eureka::FakeEureka;
use trellis_tests::fakes::foreign::{Registrant, run};
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};

const PYTHON: &str = "eureka_client.py";
const NODE: &str = "eureka_client.js";

async fn serve(registry: Option<&Registry>, metadata: Metadata) -> (SocketAddr, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut builder = trellis::Server::builder()
        .listen(addr)
        .add_service(DeepServer::new(Whoami(addr.port())))
        .metadata(metadata)
        .propagation_delay(Duration::from_millis(100))
        .shutdown_signal(async {
            let _ = stopped.await;
        });
    if let Some(registry) = registry {
        builder = builder.registry(registry.clone());
    }
    let server = builder.bind().await.expect("bind");
    tokio::spawn(server.serve());
    (addr, stop)
}

async fn wait_for(resolution: &mut Resolution, bound: Duration, done: impl Fn(&[Instance]) -> bool) {
    let waited = tokio::time::timeout(bound, async {
        while !done(&resolution.current()) {
            resolution.changed().await.expect("the resolution ended");
        }
    })
    .await;
    assert!(waited.is_ok(), "not reached within {bound:?}: {:?}", resolution.current());
}

/// The arguments that make `script` register `id` at `port` under `eureka`.
fn register_args(
    script: &str,
    eureka: &FakeEureka,
    base: &str,
    id: &str,
    port: u16,
    meta: &Value,
) -> Vec<String> {
    let app = DEEP_DESCRIPTOR.name().to_ascii_uppercase();
    let common = [id.to_owned(), "127.0.0.1".to_owned(), port.to_string(), meta.to_string()];
    let head = if script == NODE {
        vec!["register".into(), "127.0.0.1".into(), eureka.addr().port().to_string(), base.into(), app]
    } else {
        vec!["register".into(), eureka.http_url(), app]
    };
    head.into_iter().chain(common).collect()
}

/// A foreign registration is resolved by Trellis with its metadata and
/// called; its deregistration is seen.
async fn foreign_registration_is_discovered(script: &str, base: &str) {
    let eureka = FakeEureka::start(base).await;
    let (addr, _server) = serve(None, Metadata::default()).await;
    let meta = json!({"zone": "z2", "version": "3.1", "weight": "40", "team": "shipping"});
    let id = format!("{script}-1");
    let foreign =
        Registrant::start(script, &register_args(script, &eureka, base, &id, addr.port(), &meta), &[]).await;

    let registry = Registry::from_url(&eureka.url("?interval=50ms")).expect("registry");
    let mut resolution = registry.resolve(DEEP_DESCRIPTOR.name()).await.expect("resolve");
    wait_for(&mut resolution, Duration::from_secs(5), |now| now.len() == 1).await;
    let found = resolution.current()[0].clone();
    assert_eq!((found.id.as_str(), found.endpoint.clone()), (id.as_str(), Endpoint::from(addr)), "{script}");
    assert_eq!((found.metadata.zone.as_deref(), found.metadata.weight), (Some("z2"), 40), "{script}");
    assert_eq!(found.metadata.labels.get("team").map(String::as_str), Some("shipping"), "{script}");

    let mut client = DeepClient::discover(&registry).expect("client");
    let answer = client.dive(Depth::default()).await.expect("call").into_inner();
    assert_eq!(
        answer.level,
        u32::from(addr.port()),
        "{script}: the call reached the foreign-registered instance"
    );

    foreign.leave().await;
    wait_for(&mut resolution, Duration::from_secs(5), <[Instance]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_registration_is_discovered_and_called_under_both_base_paths() {
    foreign_registration_is_discovered(PYTHON, "/eureka").await;
    foreign_registration_is_discovered(PYTHON, "/eureka/v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registration_is_discovered_and_called() {
    foreign_registration_is_discovered(NODE, "/eureka/v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trellis_registration_is_seen_by_both_foreign_clients() {
    let base = "/eureka";
    let eureka = FakeEureka::start(base).await;
    let registry = Registry::from_url(&eureka.url("?ttl=3s")).expect("registry");
    let metadata = Metadata {
        version: Some("1.4.2".into()),
        zone: Some("eu-1b".into()),
        weight: 50,
        labels: [("team".to_owned(), "payments".to_owned())].into(),
    };
    let (addr, stop) = serve(Some(&registry), metadata).await;
    let app = DEEP_DESCRIPTOR.name().to_ascii_uppercase();
    let expected_meta = json!({"version": "1.4.2", "zone": "eu-1b", "weight": "50", "team": "payments"});

    // Past one lease: the heartbeats keep it registered.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let python = run(PYTHON, &["lookup".into(), eureka.http_url(), app.clone()], &[]).await;
    for view in [&python["application"][0], &python["registry"][0]] {
        assert_eq!(view["app"], app.as_str());
        assert_eq!((view["address"].as_str(), view["host"].as_str()), (Some("127.0.0.1"), Some("127.0.0.1")));
        assert_eq!(
            (view["port"].as_u64(), view["port_enabled"].as_bool()),
            (Some(addr.port().into()), Some(true))
        );
        assert_eq!((view["status"].as_str(), view["lease"].as_u64()), (Some("UP"), Some(3)));
        assert_eq!(view["metadata"], expected_meta);
    }
    let node = run(
        NODE,
        &["lookup".into(), "127.0.0.1".into(), eureka.addr().port().to_string(), base.into(), app.clone()],
        &[],
    )
    .await;
    let view = &node["instances"][0];
    assert_eq!(
        (view["address"].as_str(), view["port"].as_u64()),
        (Some("127.0.0.1"), Some(addr.port().into()))
    );
    assert_eq!((view["status"].as_str(), &view["metadata"]), (Some("UP"), &expected_meta));

    drop(stop);
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let seen = run(PYTHON, &["lookup".into(), eureka.http_url(), app.clone()], &[]).await;
            if seen["registry"] == json!([]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the shutdown deleted the instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgot_the_instance_gets_it_again() {
    let eureka = FakeEureka::start("/eureka/v2").await;
    let registry = Registry::from_url(&eureka.url("?ttl=1s")).expect("registry");
    let instance = Instance::new(DEEP_DESCRIPTOR.name(), Endpoint::new("127.0.0.1", 7), Metadata::default());
    let (app, id) = (DEEP_DESCRIPTOR.name().to_ascii_uppercase(), instance.id.clone());
    let lease = registry.register(instance).await.expect("register");
    assert_eq!(eureka.instance(&app, &id).expect("registered")["status"], "UP");
    eureka.forget_everything();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(eureka.instance(&app, &id).is_some(), "a heartbeat answered 404 registers again");
    lease.deregister().await.expect("deregister");
    assert!(eureka.instance(&app, &id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_follow_the_delta_and_read_in_full_only_on_change() {
    for delta in [true, false] {
        let eureka = FakeEureka::start_with_delta("/eureka", delta).await;
        let registry = Registry::from_url(&eureka.url("?interval=50ms")).expect("registry");
        let app_path = format!("/apps/{}", DEEP_DESCRIPTOR.name().to_ascii_uppercase());
        let _a = registry
            .register(Instance::new(
                DEEP_DESCRIPTOR.name(),
                Endpoint::new("127.0.0.1", 7001),
                Metadata::default(),
            ))
            .await
            .expect("register");
        let mut resolution = registry.resolve(DEEP_DESCRIPTOR.name()).await.expect("resolve");
        assert_eq!(resolution.current().len(), 1);
        // About 20 quiet polls.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (full, deltas) = (eureka.gets(&app_path), eureka.gets("/apps/delta"));
        if delta {
            assert!(full <= 3 && deltas >= 10, "quiet: {full} full reads, {deltas} deltas");
        } else {
            assert!(full >= 10 && deltas <= 1, "no delta: {full} full reads, {deltas} deltas");
        }
        let _b = registry
            .register(Instance::new(
                DEEP_DESCRIPTOR.name(),
                Endpoint::new("127.0.0.1", 7002),
                Metadata::default(),
            ))
            .await
            .expect("register");
        wait_for(&mut resolution, Duration::from_secs(2), |now| now.len() == 2).await;
    }
}
