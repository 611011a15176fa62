//! `trellis-bench`: Trellis against raw tonic and stock tower, side by side.
//!
//! Every scenario runs its contenders interleaved, several repetitions
//! each, and reports medians and ratios: on a shared, noisy machine
//! absolute numbers drift, ratios hold. Servers and clients run on
//! loopback in this process, except in the `overhead` scenario, whose
//! repetitions each run in a child process of their own (see
//! `overhead.rs` for why); etcd and h2load, where a scenario uses them,
//! run as child processes that end with it, and so do the servers the
//! `h2load` scenario compares in processes of their own (this package's
//! `bench-echo`, and the grpc-go and gRPC C++ peers it builds from
//! `bench/peers/`).
//!
//! ```text
//! cargo run --release -p trellis-bench -- all [--quick] [--json FILE] [--plots DIR]
//! ```
//!
//! The `failing` scenario also runs instances in child processes of this
//! binary (the hidden `instance` mode), to kill them for real.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;
use trellis::codegen::tonic;
use trellis::{Registry, Request, Response, Status};

#[allow(missing_docs, unreachable_pub, dead_code, clippy::all)]
mod proto {
    trellis::include_protos!();
}

mod buildtime;
mod discovery;
mod failing;
mod fleet;
mod h2load;
mod overhead;
mod peers;
mod plot;
mod slow;

use proto::bench::v1::bench_client::BenchClient;
use proto::bench::v1::bench_server::{Bench, BenchServer};
use proto::bench::v1::{BENCH_DESCRIPTOR, Payload};

/// Trellis against raw tonic and stock tower, side by side, in one run.
#[derive(Debug, Parser)]
#[command(name = "trellis-bench", version, about)]
struct Args {
    /// Which scenario to run.
    scenario: Scenario,
    /// Fewer calls and repetitions: a smoke check in well under a minute.
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON [default: target/bench.json].
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Where to write the plots (SVG) [default: target/bench].
    #[arg(long, value_name = "DIR")]
    plots: Option<std::path::PathBuf>,
    /// Run only the overhead contenders whose name contains this (such as
    /// `"trellis -> bare"`), for profiling one of them; several names
    /// separated by `|` run those, interleaved.
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// The address an `instance` listens on.
    #[arg(long, value_name = "ADDR", hide = true)]
    listen: Option<SocketAddr>,
    /// Which repetition an `overhead-rep` is (turns the contenders' order).
    #[arg(long, value_name = "N", hide = true, default_value_t = 0)]
    rep: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario.
    All,
    /// Unary calls through a raw tonic channel to a bare tonic server, against
    /// the full Trellis client to a Trellis server.
    Overhead,
    /// One instance of 3 or 5 ten times slower, under four balancers.
    Slow,
    /// One instance of 3 failing for a while, or killed and restarted.
    Failing,
    /// One instance of the bench service, which the `failing` scenario
    /// starts as a child process and kills.
    #[value(hide = true)]
    Instance,
    /// One repetition of the `overhead` scenario, which runs each in a
    /// child process of its own; prints its runs as JSON.
    #[value(hide = true)]
    OverheadRep,
    /// Registration to first call and deregistration to last, for `local://`
    /// and `etcd://`; throughput under endpoint churn against a static set.
    Discovery,
    /// Bare tonic, Trellis (in process and built as a user's service), grpc-go
    /// and gRPC C++ under `h2load`.
    H2load,
    /// Build times: the codegen step, and a service crate built from scratch.
    Build,
    /// 10,000 instances in a real etcd, one client: first view, changes,
    /// memory, per-call cost at 10 to 10,000 instances, connections.
    Fleet,
}

/// Echoes after a fixed simulated service time.
#[derive(Debug)]
struct Work(Duration);

#[trellis::async_trait]
impl Bench for Work {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        if !self.0.is_zero() {
            tokio::time::sleep(self.0).await;
        }
        Ok(Response::new(request.into_inner()))
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port")
}

/// A bare tonic server: no health, no reflection, no layers. `TCP_NODELAY`
/// on, as `tonic::transport::Server::serve` sets by default (and
/// `serve_with_incoming` does not).
async fn tonic_server(work: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BenchServer::new(Work(work)))
            .serve_with_incoming(incoming),
    );
    addr
}

/// A Trellis server: health, reflection, tracing, limits, drain, all on.
async fn trellis_server(work: Duration) -> SocketAddr {
    trellis_server_with(Work(work)).await
}

/// A Trellis server of the bench service with its own handler.
async fn trellis_server_with<T: Bench>(handler: T) -> SocketAddr {
    let server = trellis::Server::builder()
        .listen(free_addr())
        .add_service(BenchServer::new(handler))
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    addr
}

fn static_registry(addrs: &[SocketAddr]) -> Registry {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    Registry::from_url(&format!("static://{}={}", BENCH_DESCRIPTOR.name(), list.join(","))).expect("registry")
}

type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>> + Send + Sync>;

/// Makes a [`Call`] from any client of the bench service.
fn caller<T>(client: BenchClient<T>) -> Call
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Future: Send,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Error: Into<tonic::codegen::StdError>,
{
    Arc::new(move || {
        let mut client = client.clone();
        Box::pin(async move { client.echo(Payload { data: vec![7; 64] }).await.map(|_| ()) })
    })
}

/// The result of one run of one contender.
#[derive(Debug, Clone, Copy)]
struct Run {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    failures: usize,
}

impl Run {
    /// As an `overhead-rep` child reports it.
    fn to_json(self) -> serde_json::Value {
        json!({
            "throughput": self.throughput,
            "p50_s": self.p50.as_secs_f64(),
            "p99_s": self.p99.as_secs_f64(),
            "failures": self.failures,
        })
    }

    /// As [`Run::to_json`] wrote it.
    fn from_json(json: &serde_json::Value) -> Run {
        let secs = |key: &str| Duration::from_secs_f64(json[key].as_f64().unwrap_or_default());
        Run {
            throughput: json["throughput"].as_f64().unwrap_or_default(),
            p50: secs("p50_s"),
            p99: secs("p99_s"),
            failures: json["failures"].as_u64().unwrap_or_default() as usize,
        }
    }
}

/// `calls` calls, `concurrency` at a time.
async fn run(call: &Call, calls: usize, concurrency: usize) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, next) = (call.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0;
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let began = Instant::now();
                    match call().await {
                        Ok(()) => latencies.push(began.elapsed()),
                        Err(_) => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(calls);
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await.expect("worker");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let at =
        |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    Run { throughput: latencies.len() as f64 / elapsed.as_secs_f64(), p50: at(0.50), p99: at(0.99), failures }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians over repetitions of one contender.
#[derive(Debug, Clone)]
struct Summary {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: usize,
    /// The throughput of each repetition, in order.
    per_rep: Vec<f64>,
}

impl Summary {
    /// This contender's throughput over `base`'s within each repetition
    /// (the two ran minutes apart at most): the lowest and the highest.
    fn rep_ratios(&self, base: &Summary) -> (f64, f64) {
        let ratios = self.ratios(base);
        ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| (lo.min(r), hi.max(r)))
    }

    /// This contender's throughput over `base`'s in each repetition, in order.
    fn ratios(&self, base: &Summary) -> Vec<f64> {
        self.per_rep.iter().zip(&base.per_rep).map(|(own, base)| own / base).collect()
    }

    /// This contender's throughput over `base`'s, repetition by repetition:
    /// the median of those ratios and a 95% interval for it.
    fn paired(&self, base: &Summary) -> Paired {
        let mut ratios = self.ratios(base);
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        // Distribution-free: the median lies between the k-th lowest and the
        // k-th highest ratio with 95% confidence, k from the binomial
        // distribution's normal approximation (7 of 25 repetitions); too
        // few repetitions for that give the whole range.
        let k = ((n as f64 - 1.96 * (n as f64).sqrt()) / 2.0).floor().max(0.0) as usize;
        let (low, high) = match n {
            0 => (f64::NAN, f64::NAN),
            _ => (ratios[k.saturating_sub(1)], ratios[n - k.max(1)]),
        };
        Paired { median: ratios.get(n / 2).copied().unwrap_or(f64::NAN), low, high }
    }
}

fn paired_json(p: Paired) -> serde_json::Value {
    json!({ "median": p.median, "low_95": p.low, "high_95": p.high })
}

/// A contender's throughput over the baseline's within each repetition.
#[derive(Debug, Clone, Copy)]
struct Paired {
    median: f64,
    /// The 95% interval of the median.
    low: f64,
    high: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    Summary {
        per_rep: runs.iter().map(|r| r.throughput).collect(),
        throughput: median(runs.iter().map(|r| r.throughput).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect()),
        failures: runs.iter().map(|r| r.failures).sum(),
    }
}

/// Runs `contenders` interleaved, `reps` times each, after one warm-up run.
async fn compare(contenders: &[(&str, Call)], calls: usize, concurrency: usize, reps: usize) -> Vec<Summary> {
    for (_, call) in contenders {
        run(call, calls / 4, concurrency).await;
    }
    // Each repetition starts one contender further on, so none always runs
    // first (on a fresh heap, right after the warm-up) or last.
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
    for rep in 0..reps {
        for offset in 0..contenders.len() {
            let i = (rep + offset) % contenders.len();
            runs[i].push(run(&contenders[i].1, calls, concurrency).await);
        }
    }
    runs.iter().map(|r| summarize(r)).collect()
}

/// The table of one comparison. `tput x` is the ratio of the medians;
/// `per rep`, the lowest and highest ratio within one repetition, shows how
/// far the machine moved the figure during the run; `paired x`, the median
/// of those ratios with its 95% interval, tells a difference from the noise.
fn print_table(title: &str, names: &[&str], summaries: &[Summary], baseline: usize) {
    println!("\n{title}");
    println!(
        "  {:<28} {:>10} {:>9} {:>9} {:>9} {:>10} {:>13} {:>20} {:>9}",
        "contender", "calls/s", "p50 ms", "p99 ms", "failed", "tput x", "per rep", "paired x (95%)", "p99 x"
    );
    let base = &summaries[baseline];
    for (name, s) in names.iter().zip(summaries) {
        let (lo, hi) = s.rep_ratios(base);
        let paired = s.paired(base);
        println!(
            "  {:<28} {:>10.0} {:>9.3} {:>9.3} {:>9} {:>10.3} {:>13} {:>20} {:>9.3}",
            name,
            s.throughput,
            s.p50_ms,
            s.p99_ms,
            s.failures,
            s.throughput / base.throughput,
            format!("{lo:.2}-{hi:.2}"),
            format!("{:.3} ({:.3}-{:.3})", paired.median, paired.low, paired.high),
            s.p99_ms / base.p99_ms
        );
    }
}

fn to_json(names: &[&str], summaries: &[Summary], baseline: usize) -> serde_json::Value {
    let base = &summaries[baseline];
    names
        .iter()
        .zip(summaries)
        .map(|(name, s)| {
            json!({
                "contender": name,
                "calls_per_sec": s.throughput,
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
                "failures": s.failures,
                "throughput_ratio": s.throughput / base.throughput,
                "throughput_ratio_per_rep": s.ratios(base),
                "throughput_ratio_paired": paired_json(s.paired(base)),
                "p99_ratio": s.p99_ms / base.p99_ms,
            })
        })
        .collect()
}

/// How late a 2 ms sleep wakes up on this machine now: a shared machine
/// whose p99 is far above 2 ms is stealing time from every scenario.
async fn machine_noise() -> serde_json::Value {
    const SLEEP: Duration = Duration::from_millis(2);
    let mut slept: Vec<f64> = Vec::with_capacity(200);
    for _ in 0..200 {
        let began = Instant::now();
        tokio::time::sleep(SLEEP).await;
        slept.push(began.elapsed().as_secs_f64() * 1e3);
    }
    slept.sort_by(f64::total_cmp);
    let (p50, p99) = (slept[100], slept[198]);
    println!("machine noise: a {SLEEP:?} sleep takes {p50:.2} ms at p50, {p99:.2} ms at p99");
    if p99 > 10.0 {
        println!("  (the machine is busy: expect noisy figures; ratios within a run still compare)");
    }
    json!({ "sleep_ms": 2, "p50_ms": p50, "p99_ms": p99 })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.scenario == Scenario::Instance {
        let Some(listen) = args.listen else {
            eprintln!("trellis-bench: error: `instance` needs --listen ADDR");
            std::process::exit(2);
        };
        if let Err(err) = failing::instance(listen).await {
            eprintln!("trellis-bench: error: instance on {listen}: {err}");
            std::process::exit(1);
        }
        return;
    }
    if args.scenario == Scenario::OverheadRep {
        println!("{}", overhead::rep(args.quick, args.only.as_deref(), args.rep).await);
        return;
    }
    let plots = args.plots.unwrap_or_else(|| std::path::PathBuf::from("target/bench"));
    let runs_failing = matches!(args.scenario, Scenario::All | Scenario::Failing);
    // Where the results go is checked before minutes of work, not after.
    if runs_failing && let Err(err) = std::fs::create_dir_all(&plots) {
        eprintln!("trellis-bench: error: cannot create the plot directory {}: {err}", plots.display());
        std::process::exit(1);
    }
    let path = args.json.unwrap_or_else(|| std::path::PathBuf::from("target/bench.json"));
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let json_file =
        match parent.map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::File::create(&path)) {
            Ok(file) => file,
            Err(err) => {
                eprintln!(
                    "trellis-bench: error: cannot write {}: {err}; choose another --json FILE",
                    path.display()
                );
                std::process::exit(1);
            }
        };
    let mut failed = false;
    let started = Instant::now();
    let mut results = serde_json::Map::new();
    results.insert("quick".into(), json!(args.quick));
    results.insert("cores".into(), json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)));
    results.insert("machine_noise".into(), machine_noise().await);
    if matches!(args.scenario, Scenario::All | Scenario::Overhead) {
        results.insert("overhead".into(), overhead::run(args.quick, args.only.as_deref()).await);
    }
    if matches!(args.scenario, Scenario::All | Scenario::Slow) {
        results.insert("slow_instance".into(), slow::run(args.quick).await);
    }
    if runs_failing {
        let (json, svgs) = failing::run(args.quick).await;
        results.insert("failing_instance".into(), json);
        for (name, svg) in svgs {
            let path = plots.join(name);
            match svg.and_then(|svg| std::fs::write(&path, svg).map_err(|e| e.to_string())) {
                Ok(()) => println!("plot written to {}", path.display()),
                Err(err) => {
                    eprintln!("trellis-bench: error: cannot write {}: {err}", path.display());
                    failed = true;
                }
            }
        }
    }
    if matches!(args.scenario, Scenario::All | Scenario::Discovery) {
        results.insert("discovery".into(), discovery::run(args.quick).await);
    }
    if matches!(args.scenario, Scenario::All | Scenario::H2load) {
        results.insert("h2load".into(), h2load::run(args.quick).await);
    }
    if matches!(args.scenario, Scenario::All | Scenario::Fleet) {
        results.insert("fleet".into(), fleet::run(args.quick).await);
    }
    if matches!(args.scenario, Scenario::All | Scenario::Build) {
        let quick = args.quick;
        let build = tokio::task::spawn_blocking(move || buildtime::run(quick)).await.expect("build scenario");
        results.insert("build".into(), build);
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(results)).unwrap_or_default();
    match std::io::Write::write_all(&mut &json_file, text.as_bytes()) {
        Ok(()) => println!("\nresults written to {} in {:.0?}", path.display(), started.elapsed()),
        Err(err) => {
            eprintln!("trellis-bench: error: cannot write {}: {err}", path.display());
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(per_rep: &[f64]) -> Summary {
        Summary {
            throughput: median(per_rep.to_vec()),
            p50_ms: 1.0,
            p99_ms: 1.0,
            failures: 0,
            per_rep: per_rep.to_vec(),
        }
    }

    #[test]
    fn the_paired_ratio_is_the_median_with_order_statistics_around_it() {
        // 25 repetitions: ratios 0.76, 0.77, ..., 1.00; the interval runs
        // from the 7th lowest to the 7th highest.
        let base = summary(&[100.0; 25]);
        let own: Vec<f64> = (0..25).map(|i| 76.0 + f64::from(i)).collect();
        let paired = summary(&own).paired(&base);
        assert!((paired.median - 0.88).abs() < 1e-9, "{paired:?}");
        assert!((paired.low - 0.82).abs() < 1e-9 && (paired.high - 0.94).abs() < 1e-9, "{paired:?}");

        // Too few repetitions for an interval: the whole range.
        let paired = summary(&[90.0, 110.0, 100.0]).paired(&summary(&[100.0; 3]));
        assert_eq!((paired.low, paired.median, paired.high), (0.9, 1.0, 1.1));
    }
}
