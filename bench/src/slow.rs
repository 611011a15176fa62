//! Scenario 2: one instance ten times slower than the others.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use trellis::codegen::tonic;

use crate::proto::bench::v1::BENCH_DESCRIPTOR;
use crate::proto::bench::v1::bench_client::BenchClient;
use crate::{Call, caller, compare, static_registry, trellis_server};

/// tonic's own balancer over `addrs` (`Channel::balance_list`).
pub(crate) fn tonic_balance_list(addrs: &[SocketAddr]) -> Call {
    caller(BenchClient::new(tonic::transport::Channel::balance_list(endpoints(addrs))))
}

/// Stock tower over `addrs`: P2C over `PeakEwma`, one lazy tonic channel per instance.
pub(crate) fn tower_p2c(addrs: &[SocketAddr]) -> Call {
    use tower::balance::p2c::Balance;
    use tower::load::{CompleteOnResponse, PeakEwmaDiscover};

    let channels: Vec<tonic::transport::Channel> = endpoints(addrs).map(|e| e.connect_lazy()).collect();
    let discover = PeakEwmaDiscover::new(
        tower::discover::ServiceList::new(channels),
        Duration::from_millis(30),
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    caller(BenchClient::new(tower::buffer::Buffer::new(Balance::new(discover), 1024)))
}

fn endpoints(addrs: &[SocketAddr]) -> impl Iterator<Item = tonic::transport::Endpoint> + Clone + '_ {
    addrs.iter().map(|a| {
        tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("uri").tcp_nodelay(true)
    })
}

/// The contenders of the slow-instance scenario, over `addrs`.
pub(crate) async fn balancers(addrs: &[SocketAddr]) -> Vec<(&'static str, Call)> {
    let registry = static_registry(addrs);
    let trellis = |balance| {
        trellis::codegen::Channel::with_balance(&registry, &BENCH_DESCRIPTOR, balance).expect("channel")
    };
    vec![
        ("trellis p2c peak-ewma", caller(BenchClient::new(trellis(trellis::client::Balance::PeakEwma)))),
        ("trellis round robin", caller(BenchClient::new(trellis(trellis::client::Balance::RoundRobin)))),
        ("tonic balance_list", tonic_balance_list(addrs)),
        ("tower p2c + PeakEwma", tower_p2c(addrs)),
    ]
}

/// Scenario 2: one instance ten times slower than the others.
pub(crate) async fn run(quick: bool) -> serde_json::Value {
    const WORK: Duration = Duration::from_millis(2);
    let (calls, reps, concurrency) = if quick { (1_500, 2, 16) } else { (6_000, 5, 16) };
    let mut results = serde_json::Map::new();
    for instances in [3, 5] {
        let mut healthy = Vec::new();
        let mut degraded = Vec::new();
        for i in 0..instances {
            healthy.push(trellis_server(WORK).await);
            degraded.push(trellis_server(if i == 0 { WORK * 10 } else { WORK }).await);
        }
        let healthy = balancers(&healthy).await;
        let degraded = balancers(&degraded).await;
        // Interleaved pairs: each contender healthy, then with a slow instance.
        let mut contenders: Vec<(&str, Call)> = Vec::new();
        for ((name, good), (_, bad)) in healthy.into_iter().zip(degraded) {
            contenders.push((name, good));
            contenders.push((name, bad));
        }
        let summaries = compare(&contenders, calls, concurrency, reps).await;
        let mut json = Vec::new();
        println!(
            "\nslow instance: {instances} instances, one at {:?} instead of {WORK:?}, concurrency {concurrency}, \
             {calls} calls x {reps} (ratios vs the same balancer with all instances healthy)",
            WORK * 10
        );
        println!(
            "  {:<24} {:>12} {:>12} {:>11} {:>11} {:>9} {:>9}",
            "balancer", "healthy c/s", "slow c/s", "healthy p99", "slow p99", "tput x", "p99 x"
        );
        for (pair, chunk) in summaries.chunks(2).enumerate() {
            let (good, bad) = (&chunk[0], &chunk[1]);
            let name = contenders[pair * 2].0;
            println!(
                "  {:<24} {:>12.0} {:>12.0} {:>9.2}ms {:>9.2}ms {:>9.3} {:>9.3}",
                name,
                good.throughput,
                bad.throughput,
                good.p99_ms,
                bad.p99_ms,
                bad.throughput / good.throughput,
                bad.p99_ms / good.p99_ms
            );
            json.push(json!({
                "balancer": name,
                "healthy": { "calls_per_sec": good.throughput, "p50_ms": good.p50_ms, "p99_ms": good.p99_ms },
                "slow": { "calls_per_sec": bad.throughput, "p50_ms": bad.p50_ms, "p99_ms": bad.p99_ms, "failures": bad.failures },
                "throughput_ratio": bad.throughput / good.throughput,
                "p99_ratio": bad.p99_ms / good.p99_ms,
            }));
        }
        results.insert(format!("instances_{instances}"), serde_json::Value::Array(json));
    }
    serde_json::Value::Object(results)
}
