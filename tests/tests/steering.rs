//! Instance metadata that steers traffic, over real servers: each
//! instance's weight sets its share of calls (0 drains it), and a client in
//! a zone keeps its calls in that zone until the zone cannot take them.

use std::time::Duration;

use trellis::Registry;
use trellis::client::{Balance, ClientConfig, Clients};
use trellis::registry::{Instance, Metadata};
use trellis::testing::Fleet;
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::echo::v1::{ECHO_SERVICE_NAME, EchoClient, EchoRequest};

/// A fleet whose instances register with these weights and zones.
async fn fleet(placements: &[(u32, &str)]) -> Fleet {
    let placements: Vec<(u32, String)> = placements.iter().map(|(w, z)| (*w, (*z).to_owned())).collect();
    Fleet::start(placements.len(), |s, i| {
        let (weight, zone) = placements[i].clone();
        s.add_service(EchoServer::new(EchoService)).configure(move |server| {
            server.metadata(Metadata { weight, zone: Some(zone), ..Metadata::default() })
        })
    })
    .await
    .unwrap()
}

/// Makes `calls` calls, `concurrency` at a time; returns how many each instance got.
async fn spread(fleet: &Fleet, client: &EchoClient, calls: usize, concurrency: usize) -> Vec<u64> {
    let before: Vec<u64> = fleet.instances().iter().map(|i| i.faults().calls()).collect();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = client.clone();
            let share = calls / concurrency + usize::from(w < calls % concurrency);
            tokio::spawn(async move {
                for _ in 0..share {
                    let request = EchoRequest { note: Some("x".into()), ..EchoRequest::default() };
                    client.unary(request).await.expect("every call is answered");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    fleet.instances().iter().zip(before).map(|(i, before)| i.faults().calls() - before).collect()
}

fn client(fleet: &Fleet, balance: Balance, zone: Option<&str>) -> EchoClient {
    client_with(fleet, ClientConfig { balance: Some(balance), ..ClientConfig::default() }, zone)
}

fn client_with(fleet: &Fleet, config: ClientConfig, zone: Option<&str>) -> EchoClient {
    let mut clients = Clients::new(fleet.registry().clone()).with_config(ECHO_SERVICE_NAME, config);
    if let Some(zone) = zone {
        clients = clients.with_zone(zone);
    }
    EchoClient::discover(clients).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_set_each_instances_share_and_weight_zero_drains() {
    let fleet = fleet(&[(100, "a"), (300, "a"), (0, "a")]).await;

    let round_robin = client(&fleet, Balance::RoundRobin, None);
    let got = spread(&fleet, &round_robin, 400, 4).await;
    assert_eq!(got, [100, 300, 0], "round robin: exactly the weights' shares");

    let peak_ewma = client(&fleet, Balance::PeakEwma, None);
    let got = spread(&fleet, &peak_ewma, 1200, 16).await;
    assert_eq!(got[2], 0, "drained: {got:?}");
    // Power of two choices weighs load too, so shares follow weights loosely.
    assert!(
        10 * got[1] >= 13 * got[0] && got[0] >= 60,
        "peak-EWMA: the heavier gets more, both get some: {got:?}"
    );

    let hashed = client(&fleet, Balance::ConsistentHash, None);
    let got = spread(&fleet, &hashed, 200, 4).await;
    assert_eq!(got[2], 0, "consistent hashing never picks a drained instance: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_to_its_zone_until_the_zone_cannot_take_the_calls() {
    let fleet = fleet(&[(100, "eu-1a"), (100, "eu-1b"), (100, "eu-1b")]).await;
    let home = client(&fleet, Balance::PeakEwma, Some("eu-1a"));
    // A latency spike of the own zone's instance may send the odd call out
    // (11 of 200 once, with the other tests of this file running beside it
    // on two cores).
    let got = spread(&fleet, &home, 200, 4).await;
    assert!(got[0] >= 180, "in its own zone: {got:?}");
    let elsewhere = client(&fleet, Balance::RoundRobin, Some("eu-1b"));
    let got = spread(&fleet, &elsewhere, 200, 4).await;
    assert!(got[0] <= 10 && got[1].abs_diff(got[2]) <= 10, "round robin within its zone: {got:?}");

    // Overloaded: its own zone's instance answers 20 ms late, and calls pile up there.
    fleet.instance(0).faults().set_delay(Duration::from_millis(20));
    let got = spread(&fleet, &home, 400, 16).await;
    assert!(got[1] + got[2] > got[0], "most calls spill over to the other zone: {got:?}");
    fleet.instance(0).faults().lift();

    // Failing: ejected after a few failures (each retried elsewhere), then passed over.
    fleet.instance(0).faults().set_unavailable(true);
    let got = spread(&fleet, &home, 200, 4).await;
    assert!(got[1] + got[2] == 200 && got[0] <= 10, "the other zone answers every call: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_calls_a_subset_of_a_large_fleet_and_together_they_cover_it() {
    let fleet = fleet(&[(100, "a"); 6]).await;
    let config = ClientConfig { subset_size: Some(2), ..ClientConfig::default() };
    let mut reached = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let client = client_with(&fleet, config.clone(), None);
        let got = spread(&fleet, &client, 40, 4).await;
        let called: Vec<usize> = (0..got.len()).filter(|&i| got[i] > 0).collect();
        assert_eq!(called.len(), 2, "one client, a subset of 2: {got:?}");
        reached.extend(called);
    }
    assert!(reached.len() >= 5, "twelve clients spread over the fleet: {reached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_changed_in_the_registry_reaches_the_client() {
    let fleet = fleet(&[(100, "a"), (100, "a")]).await;
    // A registry of its own listing the fleet's two servers, with weights the test sets.
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::from_url(&format!("local://{}?poll=10ms", dir.path().display())).unwrap();
    let listing = |index: usize, weight: u32| {
        let metadata = Metadata { weight, ..Metadata::default() };
        Instance::new(ECHO_SERVICE_NAME, fleet.instance(index).endpoint(), metadata)
    };
    let _first = registry.register(listing(0, 100)).await.unwrap();
    let second = registry.register(listing(1, 100)).await.unwrap();
    let config = ClientConfig { balance: Some(Balance::RoundRobin), ..ClientConfig::default() };
    let client =
        EchoClient::discover(Clients::new(registry.clone()).with_config(ECHO_SERVICE_NAME, config)).unwrap();
    assert_eq!(spread(&fleet, &client, 100, 2).await, [50, 50]);

    // The second instance registers again with weight 0: drained, without a restart.
    let _again = registry.register(listing(1, 0)).await.unwrap();
    second.deregister().await.unwrap();
    let started = std::time::Instant::now();
    while spread(&fleet, &client, 10, 1).await[1] > 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the new weight reaches the client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(spread(&fleet, &client, 100, 2).await, [100, 0], "drained");
}
