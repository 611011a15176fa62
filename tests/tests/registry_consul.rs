//! The `consul://` registry against the fake Consul agent of
//! `trellis_tests::fakes::consul`, checked with a third-party client,
//! `py-consul` (`tests/registry-clients/consul_client.py`): a Python
//! registration is discovered and called by a Trellis client, and a
//! Trellis registration is seen by Python with its address, port, checks
//! and metadata. Also Consul's own gRPC checks, an agent that lost its
//! state, and ACL tokens.
#![cfg(feature = "consul")]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use trellis::Registry;
use trellis::registry::{Endpoint, Instance, Metadata, Resolution};
use trellis_tests::Whoami;
use trellis_tests::fakes::consul::FakeConsul;
use trellis_tests::fakes::foreign::{Registrant, run};
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};

const SCRIPT: &str = "consul_client.py";

/// A Deep server answering with its port; registered in `registry` if given
/// (with `metadata`). Stops when the sender is dropped.
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

/// Looks `service` up with py-consul.
async fn python_lookup(consul: &FakeConsul, service: &str) -> serde_json::Value {
    run(SCRIPT, &["lookup".into(), consul.addr().to_string(), service.into()], &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_registration_is_discovered_and_called_with_the_acl_token() {
    let consul = FakeConsul::start_with_token(Some("s3cret")).await;
    let (addr, _server) = serve(None, Metadata::default()).await;
    let service = DEEP_DESCRIPTOR.name();
    let meta = json!({"zone": "eu-1a", "version": "2.0.1", "team": "payments"}).to_string();
    let python = Registrant::start(
        SCRIPT,
        &[
            "register".into(),
            consul.addr().to_string(),
            service.into(),
            "py-1".into(),
            "127.0.0.1".into(),
            addr.port().to_string(),
            meta,
        ],
        &[("CONSUL_HTTP_TOKEN", "s3cret")],
    )
    .await;

    let registry = Registry::from_url(&consul.url("?token=s3cret&interval=20ms&wait=2s")).expect("registry");
    assert!(!registry.url().contains("s3cret"), "{}", registry.url());
    let mut resolution = registry.resolve(service).await.expect("resolve");
    wait_for(&mut resolution, Duration::from_secs(5), |now| now.len() == 1).await;
    let found = resolution.current()[0].clone();
    assert_eq!((found.id.as_str(), found.endpoint.clone()), ("py-1", Endpoint::from(addr)));
    assert_eq!(
        (found.metadata.zone.as_deref(), found.metadata.version.as_deref()),
        (Some("eu-1a"), Some("2.0.1"))
    );
    // py-consul registered Weights.Passing = 2 and no `weight` meta.
    assert_eq!(found.metadata.weight, 200);
    assert_eq!(found.metadata.labels.get("team").map(String::as_str), Some("payments"));

    let mut client = DeepClient::discover(&registry).expect("client");
    let answer = client.dive(Depth::default()).await.expect("call").into_inner();
    assert_eq!(answer.level, u32::from(addr.port()), "the call reached the Python-registered instance");

    python.leave().await;
    wait_for(&mut resolution, Duration::from_secs(5), <[Instance]>::is_empty).await;

    let refused = Registry::from_url(&consul.url("")).expect("registry").resolve(service).await.unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trellis_registration_is_seen_by_python_with_its_checks_and_metadata() {
    let consul = FakeConsul::start().await;
    let service = DEEP_DESCRIPTOR.name();
    let before = python_lookup(&consul, service).await;
    assert_eq!(before["instances"], json!([]));
    // A blocking query from Python, waiting for the registration.
    let index = before["index"].as_str().map(str::to_owned).unwrap_or_else(|| before["index"].to_string());
    let blocked = tokio::spawn({
        let args = vec!["lookup".into(), consul.addr().to_string(), service.to_owned(), index.clone()];
        async move { run(SCRIPT, &args, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let registry = Registry::from_url(&consul.url("?ttl=900ms")).expect("registry");
    let metadata = Metadata {
        version: Some("1.4.2".into()),
        zone: Some("eu-1b".into()),
        weight: 50,
        labels: [("team".to_owned(), "payments".to_owned())].into(),
    };
    let (addr, stop) = serve(Some(&registry), metadata).await;

    let woken = blocked.await.expect("task");
    assert_ne!(woken["index"].to_string(), index, "the blocking query returned on the change");
    assert_eq!(woken["instances"].as_array().map(Vec::len), Some(1), "{woken}");
    // Past several TTLs: the renewals keep the check passing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = python_lookup(&consul, service).await;
    let instance = &seen["instances"][0];
    assert_eq!(instance["address"], "127.0.0.1");
    assert_eq!(instance["port"], addr.port());
    assert_eq!(instance["checks"], json!(["passing"]));
    assert_eq!(instance["tags"], json!(["trellis"]));
    assert_eq!(
        instance["meta"],
        json!({"version": "1.4.2", "zone": "eu-1b", "weight": "50", "team": "payments"})
    );
    assert_eq!(instance["weights"]["Passing"], 50);

    drop(stop);
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let seen = python_lookup(&consul, service).await;
            if seen["instances"] == json!([]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the shutdown deregistered the instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_pass_for_a_serving_instance_only() {
    let consul = FakeConsul::start().await;
    let registry =
        Registry::from_url(&consul.url("?check=grpc&ttl=300ms&interval=20ms&wait=1s")).expect("registry");
    let service = DEEP_DESCRIPTOR.name();
    let (addr, _stop) = serve(Some(&registry), Metadata::default()).await;
    // Nothing listens at port 1: its gRPC check can never pass.
    let dead = Instance::new(service, Endpoint::new("127.0.0.1", 1), Metadata::default());
    let dead_id = dead.id.clone();
    let _dead = registry.register(dead).await.expect("register");

    let mut resolution = registry.resolve(service).await.expect("resolve");
    wait_for(&mut resolution, Duration::from_secs(5), |now| now.len() == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = resolution.current();
    assert_eq!((now.len(), now[0].endpoint.clone()), (1, Endpoint::from(addr)));
    assert_eq!(consul.check_statuses(&dead_id), ["critical"]);
    let agent_view = consul.service(&now[0].id).expect("registered");
    assert_eq!(agent_view["Port"], addr.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_lost_its_state_gets_the_instance_again() {
    let consul = FakeConsul::start().await;
    let registry = Registry::from_url(&consul.url("?ttl=600ms")).expect("registry");
    let instance = Instance::new(DEEP_DESCRIPTOR.name(), Endpoint::new("127.0.0.1", 7), Metadata::default());
    let id = instance.id.clone();
    let lease = registry.register(instance).await.expect("register");
    assert!(consul.service(&id).is_some());
    consul.forget_everything();
    assert!(consul.service(&id).is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(consul.service(&id).is_some(), "registered again after the check was unknown");
    assert_eq!(consul.check_statuses(&id), ["passing"]);
    lease.deregister().await.expect("deregister");
    assert!(consul.service(&id).is_none());
}
