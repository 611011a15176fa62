//! Scenario 1: the cost of everything Trellis adds, on both sides.

use std::time::Duration;

use trellis::codegen::tonic;

use crate::proto::bench::v1::BENCH_DESCRIPTOR;
use crate::proto::bench::v1::bench_client::BenchClient;
use crate::{Call, caller, compare, print_table, static_registry, to_json, tonic_server, trellis_server};

/// Scenario 1: the cost of everything Trellis adds, on both sides.
pub(crate) async fn run(quick: bool, only: Option<&str>) -> serde_json::Value {
    let raw_addr = tonic_server(Duration::ZERO).await;
    let trellis_addr = trellis_server(Duration::ZERO).await;
    let raw = |addr| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect")
    };
    let trellis = |addr| {
        trellis::codegen::Channel::discover(static_registry(&[addr]), &BENCH_DESCRIPTOR).expect("channel")
    };
    // The client with metrics on, as an `App`'s clients count into the
    // process's metrics (the servers count into theirs always).
    let metered = |addr| {
        let metrics = trellis::metrics::Metrics::new("trellis-bench", env!("CARGO_PKG_VERSION"));
        let clients = trellis::client::Clients::new(static_registry(&[addr])).with_metrics(metrics);
        trellis::codegen::Channel::discover(clients, &BENCH_DESCRIPTOR).expect("channel")
    };
    // The two mixed pairs tell the client's share of the cost from the server's.
    let mut contenders: Vec<(&str, Call)> = vec![
        ("raw tonic -> bare tonic", caller(BenchClient::new(raw(raw_addr).await))),
        ("trellis -> trellis", caller(BenchClient::new(trellis(trellis_addr)))),
        ("trellis+metrics -> trellis", caller(BenchClient::new(metered(trellis_addr)))),
        ("trellis -> bare tonic", caller(BenchClient::new(trellis(raw_addr)))),
        ("raw tonic -> trellis", caller(BenchClient::new(raw(trellis_addr).await))),
    ];
    if let Some(only) = only {
        contenders.retain(|(name, _)| only.split('|').any(|only| name.contains(only)));
    }
    let names: Vec<&str> = contenders.iter().map(|(n, _)| *n).collect();
    // Many short repetitions rather than a few long ones: the machine's
    // speed moves by 10-20% within seconds, and the median of 15 paired
    // repetitions holds still better than that of 5.
    let reps = if quick { 2 } else { 15 };
    let mut results = serde_json::Map::new();
    for (concurrency, calls) in
        [(1, if quick { 1_000 } else { 2_000 }), (64, if quick { 5_000 } else { 15_000 })]
    {
        let summaries = compare(&contenders, calls, concurrency, reps).await;
        print_table(
            &format!(
                "overhead: unary, concurrency {concurrency}, {calls} calls x {reps} (ratios vs raw tonic)"
            ),
            &names,
            &summaries,
            0,
        );
        results.insert(format!("concurrency_{concurrency}"), to_json(&names, &summaries, 0));
    }
    serde_json::Value::Object(results)
}
