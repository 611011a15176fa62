//! Scenario 7: a fleet of 10,000 instances in a real etcd, one client.
//!
//! The bench writes the instances itself (keys in the etcd backend's
//! format, attached to a few leases), not 10,000 processes. Their
//! endpoints are distinct loopback addresses (`127.0.x.y`) on the ports of
//! three real servers listening on every local address, so any instance a
//! client picks answers. Measured: the time to the first full view, the
//! time one registration or removal takes to reach the client, the
//! client's memory per known instance, the per-call cost (the pick
//! included) at 10, 1,000 and 10,000 instances, and the connections the
//! client holds.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use serde_json::json;
use trellis::Registry;
use trellis::codegen::{Channel, tonic};
use trellis::registry::{Endpoint, Instance, Metadata};

use crate::discovery::etcd::Etcd;
use crate::proto::bench::v1::BENCH_DESCRIPTOR;
use crate::proto::bench::v1::bench_client::BenchClient;
use crate::proto::bench::v1::bench_server::BenchServer;
use crate::{Call, Work, caller, compare, print_table, to_json};

/// The fleet sizes measured.
const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// Keys per lease.
const KEYS_PER_LEASE: usize = 1_000;

/// Puts per etcd transaction (etcd's default limit is 128).
const PUTS_PER_TXN: usize = 100;

pub(crate) async fn run(quick: bool) -> serde_json::Value {
    let etcd = match Etcd::start().await {
        Ok(etcd) => etcd,
        Err(why) => {
            println!("\nfleet: skipping: {why}");
            return json!({ "skipped": why });
        }
    };
    let ports = [server().await, server().await, server().await];
    let mut client = Client::connect([etcd.client_url()], None).await.expect("etcd client");
    for size in SIZES {
        write_fleet(&mut client, size, &ports).await;
    }
    let service = BENCH_DESCRIPTOR.name();
    let url = |size: usize| etcd.url(&format!("?prefix=/fleet{size}"));

    // The first full view, from a new registry client each time. Every
    // view is kept: the growth of resident memory from one more view is
    // what a view costs (the first also pays for buffers reused later).
    let reps = if quick { 3 } else { 5 };
    let mut first_view = Vec::new();
    let mut views = Vec::new();
    let mut rss = vec![rss_bytes()];
    for _ in 0..reps {
        let started = Instant::now();
        let registry = Registry::from_url(&url(10_000)).expect("registry");
        let resolution = registry.resolve(service).await.expect("resolve");
        first_view.push(started.elapsed());
        assert_eq!(resolution.current().len(), 10_000, "the whole fleet is seen");
        views.push((registry, resolution));
        rss.push(rss_bytes());
    }
    let growth: Vec<f64> =
        rss.windows(2).skip(1).map(|w| w[1].saturating_sub(w[0]) as f64 / 10_000.0).collect();
    let per_instance = crate::median(growth);
    let (_registry, mut resolution) = views.pop().expect("one view");
    drop(views);

    // One registration, then its removal, reaching the client's resolution.
    let changes = if quick { 10 } else { 50 };
    let mut change_times = Vec::new();
    let key = |i: usize| format!("/fleet10000/services/{service}/added-{i}");
    for i in 0..changes {
        let instance = instance(service, 20_000 + i, ports[0]);
        let value = serde_json::to_vec(&instance).expect("json");
        for (put, expected) in [(true, 10_001), (false, 10_000)] {
            let started = Instant::now();
            if put {
                client.put(key(i), value.clone(), None).await.expect("put");
            } else {
                client.delete(key(i), None).await.expect("delete");
            }
            loop {
                let seen = tokio::time::timeout(Duration::from_secs(5), resolution.changed())
                    .await
                    .expect("a change within 5 s")
                    .expect("the resolution lives");
                if seen.len() == expected {
                    break;
                }
            }
            change_times.push(started.elapsed());
        }
    }

    // Connections per channel, then the per-call cost at each size, interleaved.
    let mut channels = Vec::new();
    for size in SIZES {
        let before = client_sockets(&ports);
        let registry = Registry::from_url(&url(size)).expect("registry");
        let channel = Channel::discover(&registry, &BENCH_DESCRIPTOR).expect("channel");
        let started = Instant::now();
        while channel.endpoints().len() < size.min(trellis::client::DEFAULT_SUBSET_SIZE) {
            assert!(started.elapsed() < Duration::from_secs(10), "the channel fills its subset");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ready = started.elapsed();
        // Each endpoint connects for its health watch; give them a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let connections = client_sockets(&ports).saturating_sub(before);
        channels.push((size, channel, ready, connections));
    }
    let names: Vec<String> = SIZES.iter().map(|n| format!("{n} instances")).collect();
    let contenders: Vec<(&str, Call)> = channels
        .iter()
        .zip(&names)
        .map(|((_, channel, _, _), name)| (name.as_str(), caller(BenchClient::new(channel.clone()))))
        .collect();
    let calls = if quick { 1_000 } else { 5_000 };
    let summaries = compare(&contenders, calls, 1, reps).await;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    print_table(
        &format!(
            "fleet: unary through a channel at each fleet size, concurrency 1, {calls} calls x {reps} (ratios vs 10)"
        ),
        &name_refs,
        &summaries,
        0,
    );
    let ready: Vec<(usize, Duration, usize)> =
        channels.iter().map(|(n, _, ready, held)| (*n, *ready, *held)).collect();

    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let first_ms = crate::median(first_view.iter().map(ms).collect());
    let mut change_ms: Vec<f64> = change_times.iter().map(ms).collect();
    change_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| change_ms[((change_ms.len() as f64 - 1.0) * p).round() as usize];
    println!("\nfleet: 10,000 instances in etcd, one client");
    println!(
        "  first full view: {first_ms:.0} ms (median of {reps}; goal < 1,000 ms)\n  \
         one registration or removal to the client: p50 {:.1} ms, p99 {:.1} ms over {} changes (goal p99 < 200 ms)\n  \
         memory per known instance: {per_instance:.0} bytes (resident memory of one more view / 10,000; goal < 2,048)",
        pct(0.5),
        pct(0.99),
        change_ms.len(),
    );
    let subset = trellis::client::DEFAULT_SUBSET_SIZE;
    for (size, ready, held) in &ready {
        println!(
            "  a channel to {size} instances: {held} connections (subset size {subset}), subset ready in {:.0} ms",
            ms(ready)
        );
    }
    json!({
        "instances": 10_000,
        "first_view_ms": first_ms,
        "change_p50_ms": pct(0.5),
        "change_p99_ms": pct(0.99),
        "memory_per_instance_bytes": per_instance,
        "subset_size": trellis::client::DEFAULT_SUBSET_SIZE,
        "per_call": to_json(&name_refs, &summaries, 0),
        "channels": ready
            .iter()
            .map(|(size, d, held)| json!({ "instances": size, "ready_ms": ms(d), "connections": held }))
            .collect::<Vec<_>>(),
    })
}

/// A bare tonic server of the bench service on every local address, so
/// each `127.0.x.y` reaches it; returns its port.
async fn server() -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BenchServer::new(Work(Duration::ZERO)))
            .serve_with_incoming(incoming),
    );
    port
}

/// Instance `i`: a loopback address of its own, on one of the servers' ports.
fn instance(service: &str, i: usize, port: u16) -> Instance {
    let host = format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250);
    let mut instance = Instance::new(service, Endpoint::new(host, port), Metadata::default());
    instance.id = format!("fleet-{i}");
    instance
}

/// Writes `size` instances under `/fleet{size}`, as the etcd backend does.
async fn write_fleet(client: &mut Client, size: usize, ports: &[u16; 3]) {
    let service = BENCH_DESCRIPTOR.name();
    let mut lease = 0;
    let mut ops = Vec::new();
    for i in 0..size {
        if i % KEYS_PER_LEASE == 0 {
            lease = client.lease_grant(600, None).await.expect("lease").id();
        }
        let instance = instance(service, i, ports[i % ports.len()]);
        let key = format!("/fleet{size}/services/{service}/{}", instance.id);
        let value = serde_json::to_vec(&instance).expect("json");
        ops.push(TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))));
        if ops.len() == PUTS_PER_TXN || i + 1 == size {
            client.txn(Txn::new().and_then(std::mem::take(&mut ops))).await.expect("txn");
        }
    }
}

/// The process's resident memory, from `/proc/self/statm`.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Established TCP connections from this process's clients to `ports`
/// (from `/proc/net/tcp`: the remote end is one of the servers).
fn client_sockets(ports: &[u16; 3]) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|addr| addr.split(':').nth(1))
                .and_then(|port| u16::from_str_radix(port, 16).ok());
            fields.get(3) == Some(&"01") && remote_port.is_some_and(|port| ports.contains(&port))
        })
        .count()
}
