//! Scenario 1: the cost of everything Trellis adds, on both sides.
//!
//! Each repetition runs in a process of its own (this binary's hidden
//! `overhead-rep` mode), with every contender in it, interleaved. Within
//! one process a contender's figure settles where that process puts it:
//! the same pair measures anywhere from 0.83x to 1.17x from one process
//! to the next, and steadily so for the whole process (its connections'
//! tasks land on the same worker threads or not, its heap and code lie
//! where they lie). So one process, however long it runs, measures one
//! draw of that layout; many short processes measure the contenders.

use std::time::Duration;

use serde_json::json;
use trellis::codegen::tonic;

use crate::proto::bench::v1::BENCH_DESCRIPTOR;
use crate::proto::bench::v1::bench_client::BenchClient;
use crate::{
    Call, Run, caller, print_table, run as run_calls, static_registry, summarize, to_json, tonic_server,
    trellis_server,
};

/// Calls per run at concurrency 1 and 64.
fn workloads(quick: bool) -> [(usize, usize); 2] {
    [(1, if quick { 1_000 } else { 2_000 }), (64, if quick { 5_000 } else { 15_000 })]
}

/// Scenario 1, in `reps` child processes one after the other.
pub(crate) async fn run(quick: bool, only: Option<&str>) -> serde_json::Value {
    let reps = if quick { 2 } else { 25 };
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut names: Vec<String> = Vec::new();
    // runs[workload][contender][repetition]
    let mut runs: Vec<Vec<Vec<Run>>> = Vec::new();
    for rep in 0..reps {
        let mut child = tokio::process::Command::new(&exe);
        child.args(["overhead-rep", "--rep", &rep.to_string()]);
        if quick {
            child.arg("--quick");
        }
        if let Some(only) = only {
            child.args(["--only", only]);
        }
        let out = child.output().await.expect("start an overhead repetition");
        assert!(
            out.status.success(),
            "overhead repetition {rep} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let rep_json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a repetition's JSON");
        names = rep_json["names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().unwrap_or("").to_owned())
            .collect();
        let workloads = rep_json["workloads"].as_array().expect("workloads");
        runs.resize_with(workloads.len(), || vec![Vec::new(); names.len()]);
        for (w, workload) in workloads.iter().enumerate() {
            for (c, run) in workload["runs"].as_array().expect("runs").iter().enumerate() {
                runs[w][c].push(Run::from_json(run));
            }
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut results = serde_json::Map::new();
    for ((concurrency, calls), runs) in workloads(quick).into_iter().zip(&runs) {
        let summaries: Vec<_> = runs.iter().map(|r| summarize(r)).collect();
        print_table(
            &format!(
                "overhead: unary, concurrency {concurrency}, {calls} calls x {reps} processes (ratios vs raw tonic)"
            ),
            &names,
            &summaries,
            0,
        );
        results.insert(format!("concurrency_{concurrency}"), to_json(&names, &summaries, 0));
    }
    serde_json::Value::Object(results)
}

/// One repetition (the `overhead-rep` mode): both servers, every
/// contender, a warm-up, then one run of each at each concurrency, the
/// order turned by `rep` so that none always runs first or last. Its
/// result goes to stdout as JSON.
pub(crate) async fn rep(quick: bool, only: Option<&str>, rep: usize) -> serde_json::Value {
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
    let mut workloads_json = Vec::new();
    for (concurrency, calls) in workloads(quick) {
        for (_, call) in &contenders {
            run_calls(call, calls / 4, concurrency).await;
        }
        let mut runs = vec![None; contenders.len()];
        for offset in 0..contenders.len() {
            let i = (rep + offset) % contenders.len();
            runs[i] = Some(run_calls(&contenders[i].1, calls, concurrency).await);
        }
        let runs: Vec<_> = runs.into_iter().flatten().map(|r| r.to_json()).collect();
        workloads_json.push(json!({ "concurrency": concurrency, "calls": calls, "runs": runs }));
    }
    let names: Vec<&str> = contenders.iter().map(|(n, _)| *n).collect();
    json!({ "names": names, "workloads": workloads_json })
}
