//! Scenario 4: how fast discovery follows registrations, and what endpoint
//! churn costs.
//!
//! Latency: one instance is always registered and a steady load runs
//! through a Trellis channel; a second, measured instance is registered and
//! deregistered again and again. Its server records when calls reach it, so
//! "registration to the first routed call" and "deregistration to the last
//! call" are measured where the calls land. The servers do not register
//! themselves: the bench registers their instances, to know the instant.
//!
//! Churn: the same load against a static set of 5 instances, and against a
//! `local://` registry in which a background task makes 10 endpoint changes
//! per second (alternately deregistering one of 6 instances and registering
//! another, so 4 or 5 are always up). Deregistered servers keep running, so
//! no call should fail.

pub(crate) mod etcd;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use trellis::registry::{Instance, Lease, Metadata};
use trellis::{Registry, Request, Response, Status};

use crate::proto::bench::v1::bench_client::BenchClient;
use crate::proto::bench::v1::bench_server::{Bench, BenchServer};
use crate::proto::bench::v1::{BENCH_DESCRIPTOR, Payload};
use crate::{
    Call, caller, compare, free_addr, median, print_table, static_registry, to_json, trellis_server,
};

/// Calls in flight during every measurement.
const CONCURRENCY: usize = 8;

/// The longest a registration may take to be seen, or a deregistration.
const GIVE_UP: Duration = Duration::from_secs(10);

/// No call for this long after a deregistration: the instance is out.
const QUIET: Duration = Duration::from_millis(250);

/// How long the measured instance serves between registration and
/// deregistration, at least; a random part up to `PHASE` is added.
const SOAK: Duration = Duration::from_millis(100);

/// The longest poll interval measured: registrations and deregistrations are
/// made at a random point within it, so that they do not lock to the phase
/// of a polling registry (which would measure always a full interval, or
/// always half).
const PHASE: Duration = Duration::from_millis(100);

/// Endpoint changes per second under churn.
const CHANGES_PER_SEC: u32 = 10;

/// When calls reached one server, in nanoseconds after `epoch` (0: none yet).
#[derive(Debug)]
struct Arrivals {
    epoch: Instant,
    calls: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Arrivals {
    fn new() -> Self {
        Arrivals {
            epoch: Instant::now(),
            calls: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    fn record(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let _ = self.first_ns.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }

    fn reset(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.first_ns.store(0, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
    }

    fn at(&self, ns: &AtomicU64) -> Option<Instant> {
        match ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }

    fn first(&self) -> Option<Instant> {
        self.at(&self.first_ns)
    }

    fn last(&self) -> Option<Instant> {
        self.at(&self.last_ns)
    }
}

/// Echoes at once, recording each arrival.
#[derive(Debug)]
struct Recorded(Arc<Arrivals>);

#[trellis::async_trait]
impl Bench for Recorded {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.0.record();
        Ok(Response::new(request.into_inner()))
    }
}

/// A Trellis server, not registered anywhere, that records arrivals.
async fn recorded_server(arrivals: Arc<Arrivals>) -> Result<SocketAddr, String> {
    let server = trellis::Server::builder()
        .listen(free_addr())
        .add_service(BenchServer::new(Recorded(arrivals)))
        .bind()
        .await
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    Ok(addr)
}

fn instance(addr: SocketAddr) -> Instance {
    Instance::new(BENCH_DESCRIPTOR.name(), addr.into(), Metadata::default())
}

/// Calls made without pause by `CONCURRENCY` workers until stopped.
#[derive(Debug)]
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_failure: Arc<Mutex<Option<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(call: &Call) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let first_failure = Arc::new(Mutex::new(None));
        let workers = (0..CONCURRENCY)
            .map(|_| {
                let (call, stop, ok, failed, first_failure) =
                    (call.clone(), stop.clone(), ok.clone(), failed.clone(), first_failure.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match call().await {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(status) => {
                                first_failure
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .get_or_insert_with(|| status.to_string());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, first_failure, workers }
    }

    /// Stops the workers; the calls that succeeded, that failed, and the first failure.
    async fn stop(self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        let first = self.first_failure.lock().unwrap_or_else(PoisonError::into_inner).take();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), first)
    }
}

/// A duration drawn uniformly from `0..max`.
fn jitter(max: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    max.mul_f64((random % 1_000_000) as f64 / 1e6)
}

/// Polls `done` every millisecond until it gives a value, or `GIVE_UP`.
async fn wait_for<T>(mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < GIVE_UP {
        if let Some(value) = done() {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// What the latency measurement of one registry found.
#[derive(Debug, Default)]
struct Latencies {
    /// How long `register` took.
    register_ms: Vec<f64>,
    /// From calling `register` to the first call reaching the instance.
    first_call_ms: Vec<f64>,
    /// From calling `deregister` to the last call reaching the instance.
    last_call_ms: Vec<f64>,
    /// How long `deregister` took.
    deregister_ms: Vec<f64>,
    /// Calls the measured instance served while registered, per repetition.
    calls_served: Vec<f64>,
    /// Calls that succeeded and failed during the whole measurement.
    succeeded: u64,
    failed: u64,
    first_failure: Option<String>,
}

/// Registers and deregisters a measured instance `reps` times in the
/// registry at `url`, while one other instance stays registered and load runs.
async fn latencies(url: &str, reps: usize) -> Result<Latencies, String> {
    let registry = Registry::from_url(url).map_err(|e| e.to_string())?;
    let anchor = trellis_server(Duration::ZERO).await;
    let _anchor_lease = registry.register(instance(anchor)).await.map_err(|e| e.to_string())?;
    let arrivals = Arc::new(Arrivals::new());
    let measured = recorded_server(arrivals.clone()).await?;
    let channel =
        trellis::codegen::Channel::discover(&registry, &BENCH_DESCRIPTOR).map_err(|e| e.to_string())?;
    let call = caller(BenchClient::new(channel));
    // The first call waits until the anchor is discovered.
    call().await.map_err(|e| format!("the first call failed: {e}"))?;
    let load = Load::start(&call);
    let mut found = Latencies::default();
    let measured_reps = async {
        for _ in 0..reps {
            arrivals.reset();
            tokio::time::sleep(jitter(PHASE)).await;
            let registering = Instant::now();
            let lease = registry.register(instance(measured)).await.map_err(|e| e.to_string())?;
            found.register_ms.push(ms(registering.elapsed()));
            let first = wait_for(|| arrivals.first())
                .await
                .ok_or_else(|| format!("the registered instance got no call within {GIVE_UP:?}"))?;
            found.first_call_ms.push(ms(first.saturating_duration_since(registering)));
            tokio::time::sleep(SOAK + jitter(PHASE)).await;

            let deregistering = Instant::now();
            lease.deregister().await.map_err(|e| e.to_string())?;
            found.deregister_ms.push(ms(deregistering.elapsed()));
            let last = wait_for(|| arrivals.last().filter(|last| last.elapsed() >= QUIET))
                .await
                .ok_or_else(|| format!("the deregistered instance still got calls after {GIVE_UP:?}"))?;
            found.last_call_ms.push(ms(last.saturating_duration_since(deregistering)));
            found.calls_served.push(arrivals.calls.load(Ordering::Relaxed) as f64);
        }
        Ok::<(), String>(())
    }
    .await;
    let (succeeded, failed, first_failure) = load.stop().await;
    measured_reps?;
    found.succeeded = succeeded;
    found.failed = failed;
    found.first_failure = first_failure;
    Ok(found)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Median, min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(values.to_vec()), min, max)
}

fn spread_json(values: &[f64]) -> serde_json::Value {
    let (median, min, max) = spread(values);
    json!({ "median": median, "min": min, "max": max })
}

/// One registry whose latencies are measured.
#[derive(Debug)]
struct Subject {
    name: &'static str,
    url: String,
    /// How the client learns of changes, as configured.
    learns: &'static str,
}

/// Registration latencies for `local://` (default poll, and 10 ms) and `etcd://`.
async fn registration(quick: bool, dir: &std::path::Path) -> serde_json::Value {
    let reps = if quick { 3 } else { 15 };
    let etcd = etcd::Etcd::start().await;
    let mut subjects = vec![
        Subject {
            name: "local:// (defaults)",
            url: format!("local://{}", dir.join("default").display()),
            learns: "poll 100ms, ttl 3s",
        },
        Subject {
            name: "local://?poll=10ms",
            url: format!("local://{}?poll=10ms", dir.join("poll10").display()),
            learns: "poll 10ms, ttl 3s",
        },
    ];
    match &etcd {
        Ok(etcd) => subjects.push(Subject {
            name: "etcd:// (defaults)",
            url: etcd.url(""),
            learns: "watch, lease 3s",
        }),
        Err(why) => println!("\ndiscovery: skipping etcd://: {why}"),
    }

    println!(
        "\ndiscovery: calling register -> first call at the instance, calling deregister -> last call, \
         one other instance always up, concurrency {CONCURRENCY}, {reps} repetitions, ms: median [min-max]; register() and deregister(): median ms"
    );
    println!(
        "  {:<22} {:<18} {:>22} {:>22} {:>11} {:>13} {:>7}",
        "registry",
        "learns by",
        "register -> first",
        "deregister -> last",
        "register()",
        "deregister()",
        "failed"
    );
    let mut rows = Vec::new();
    for subject in &subjects {
        match latencies(&subject.url, reps).await {
            Ok(found) => {
                let cell = |values: &[f64]| {
                    let (median, min, max) = spread(values);
                    format!("{median:.1} [{min:.1}-{max:.1}]")
                };
                println!(
                    "  {:<22} {:<18} {:>22} {:>22} {:>11.1} {:>13.1} {:>7}",
                    subject.name,
                    subject.learns,
                    cell(&found.first_call_ms),
                    cell(&found.last_call_ms),
                    median(found.register_ms.clone()),
                    median(found.deregister_ms.clone()),
                    found.failed
                );
                if let Some(failure) = &found.first_failure {
                    println!("    first failed call: {failure}");
                }
                rows.push(json!({
                    "registry": subject.name,
                    "url": subject.url,
                    "learns_by": subject.learns,
                    "repetitions": reps,
                    "register_to_first_call_ms": spread_json(&found.first_call_ms),
                    "deregister_to_last_call_ms": spread_json(&found.last_call_ms),
                    "register_call_ms": spread_json(&found.register_ms),
                    "deregister_call_ms": spread_json(&found.deregister_ms),
                    "calls_served_per_registration": median(found.calls_served.clone()),
                    "calls_succeeded": found.succeeded,
                    "failures": found.failed,
                    "first_failure": found.first_failure,
                }));
            }
            Err(why) => {
                println!("  {:<22} {:<18} FAILED: {why}", subject.name, subject.learns);
                rows.push(json!({ "registry": subject.name, "url": subject.url, "error": why }));
            }
        }
    }
    let mut result = json!({ "concurrency": CONCURRENCY, "registries": rows });
    if let Err(why) = &etcd {
        result["etcd_skipped"] = json!(why);
    }
    result
}

/// Makes `CHANGES_PER_SEC` changes per second in `registry` over `addrs`
/// (one more than stay registered), counting them in `changes`.
async fn churn(registry: Registry, addrs: Vec<SocketAddr>, changes: Arc<AtomicU64>) {
    let mut up: VecDeque<(SocketAddr, Box<dyn Lease>)> = VecDeque::new();
    let mut spare: VecDeque<SocketAddr> = addrs.into();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / CHANGES_PER_SEC);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while spare.len() > 1 {
        let Some(addr) = spare.pop_front() else { return };
        match registry.register(instance(addr)).await {
            Ok(lease) => up.push_back((addr, lease)),
            Err(e) => return eprintln!("trellis-bench: churn stopped: {e}"),
        }
    }
    ticks.tick().await;
    loop {
        ticks.tick().await;
        // Out goes the oldest registration; in comes the one out longest.
        if spare.len() == 1 {
            let Some((addr, lease)) = up.pop_front() else { return };
            if let Err(e) = lease.deregister().await {
                return eprintln!("trellis-bench: churn stopped: {e}");
            }
            spare.push_back(addr);
        } else {
            let Some(addr) = spare.pop_front() else { return };
            match registry.register(instance(addr)).await {
                Ok(lease) => up.push_back((addr, lease)),
                Err(e) => return eprintln!("trellis-bench: churn stopped: {e}"),
            }
        }
        changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Throughput against a static set, and under churn in a `local://` registry.
async fn churn_throughput(quick: bool, dir: &std::path::Path) -> serde_json::Value {
    let (calls, reps) = if quick { (4_000, 2) } else { (20_000, 5) };
    let mut fixed = Vec::new();
    for _ in 0..5 {
        fixed.push(trellis_server(Duration::ZERO).await);
    }
    let mut churned = Vec::new();
    for _ in 0..6 {
        churned.push(trellis_server(Duration::ZERO).await);
    }
    let url = format!("local://{}", dir.join("churn").display());
    let registry = match Registry::from_url(&url) {
        Ok(registry) => registry,
        Err(e) => {
            println!("\ndiscovery: churn FAILED: {e}");
            return json!({ "error": e.to_string() });
        }
    };
    let channel = |registry: &Registry| {
        trellis::codegen::Channel::discover(registry, &BENCH_DESCRIPTOR).expect("inside the runtime")
    };
    let contenders: Vec<(&str, Call)> = vec![
        ("static://, 5 instances", caller(BenchClient::new(channel(&static_registry(&fixed))))),
        ("local://, 10 changes/s", caller(BenchClient::new(channel(&registry)))),
    ];
    let changes = Arc::new(AtomicU64::new(0));
    let churning = tokio::spawn(churn(registry, churned, changes.clone()));
    let started = Instant::now();
    let summaries = compare(&contenders, calls, CONCURRENCY, reps).await;
    let rate = changes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    churning.abort();
    let names: Vec<&str> = contenders.iter().map(|(n, _)| *n).collect();
    print_table(
        &format!(
            "discovery: churn, 4-5 of 6 instances up, local:// default poll 100ms, {rate:.1} changes/s \
             measured, concurrency {CONCURRENCY}, {calls} calls x {reps} (ratios vs static)"
        ),
        &names,
        &summaries,
        0,
    );
    json!({
        "registry": "local:// (poll 100ms, ttl 3s)",
        "changes_per_sec": rate,
        "concurrency": CONCURRENCY,
        "calls": calls,
        "repetitions": reps,
        "contenders": to_json(&names, &summaries, 0),
    })
}

/// Scenario 4: discovery latencies, then throughput under endpoint churn.
pub(crate) async fn run(quick: bool) -> serde_json::Value {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            println!("\ndiscovery: FAILED: cannot create a registry directory: {e}");
            return json!({ "error": e.to_string() });
        }
    };
    json!({
        "registration": registration(quick, dir.path()).await,
        "churn": churn_throughput(quick, dir.path()).await,
    })
}
