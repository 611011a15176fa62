//! Scenario 3: one instance of three fails for a while, or is killed and
//! restarted.
//!
//! Two events, each on its own three instances doing 2 ms of work per call:
//!
//! - *failing*: an in-process instance answers every call with
//!   `UNAVAILABLE`, at once (as an instance whose database is gone would),
//!   for a while, then serves again;
//! - *killed*: an instance in a child process of this binary gets SIGKILL,
//!   and is started again on the same port a while later.
//!
//! Each run gives one contender a fresh client and makes calls 16 at a time
//! over a fixed timeline (a closed loop: a failed call is followed at once by
//! the next one), recording when each call completed, its latency and its
//! outcome. Contenders run interleaved, several repetitions each; reported
//! are medians over the repetitions:
//!
//! - the success rate, over the run and between the event and the recovery;
//! - attempts per call (retry amplification): from the Trellis channel's
//!   per-endpoint attempt counts; the stock clients do not retry, so they
//!   make one attempt per call by construction;
//! - how long after the event the bad instance stopped getting attempts: the
//!   last attempt before it got none for [`QUIET`] (an ejected instance
//!   still gets a probe now and then);
//! - how long after the recovery it served a call again.
//!
//! The failing instance records the attempts it gets itself. A killed one
//! cannot: there, the attempts at it are, for Trellis, the growth of the
//! channel's count for its endpoint, read every [`SAMPLE`]; for the stock
//! clients, their failed calls (one attempt per call, and the other
//! instances are healthy, so a failed call is an attempt at the dead one).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::io::AsyncBufReadExt;
use trellis::codegen::Channel;
use trellis::{Request, Response, Status};

use crate::plot;
use crate::proto::bench::v1::bench_client::BenchClient;
use crate::proto::bench::v1::bench_server::{Bench, BenchServer};
use crate::proto::bench::v1::{BENCH_DESCRIPTOR, Payload};
use crate::{Call, caller, free_addr, median, slow, static_registry, trellis_server, trellis_server_with};

/// The simulated work of every call.
const WORK: Duration = Duration::from_millis(2);
/// Calls in flight at once.
const CONCURRENCY: usize = 16;
/// The time resolution of the plots.
const BUCKET: Duration = Duration::from_millis(100);
/// Traffic has left an instance once it got no attempt for this long.
const QUIET: Duration = Duration::from_millis(200);
/// How often the Trellis channel's attempt counts are read.
const SAMPLE: Duration = Duration::from_millis(5);
/// Calls made before each run, so that it starts with connections up.
const WARM_UP_CALLS: usize = 200;
/// How long an instance process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What happens to the bad instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// Answers `UNAVAILABLE` for a while.
    Failing,
    /// SIGKILLed, then restarted on the same port.
    Killed,
}

impl Event {
    fn key(self) -> &'static str {
        match self {
            Event::Failing => "failing",
            Event::Killed => "killed",
        }
    }

    fn describe(self, timeline: Timeline) -> String {
        let (event, recovery, end) =
            (timeline.event.as_secs_f64(), timeline.recovery.as_secs_f64(), timeline.end.as_secs_f64());
        match self {
            Event::Failing => format!(
                "failing instance: 1 of 3 answers UNAVAILABLE from {event:.1} s to {recovery:.1} s of {end:.1} s"
            ),
            Event::Killed => format!(
                "killed instance: 1 of 3 (a process) SIGKILLed at {event:.1} s, restarted at {recovery:.1} s, of {end:.1} s"
            ),
        }
    }

    /// What the plot's markers say: at the event, at the recovery.
    fn marks(self) -> (&'static str, &'static str) {
        match self {
            Event::Failing => ("starts failing", "serves again"),
            Event::Killed => ("SIGKILL", "restarted"),
        }
    }
}

/// The clients compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Trellis,
    TonicBalanceList,
    TowerP2c,
}

const CONTENDERS: [Contender; 3] = [Contender::Trellis, Contender::TonicBalanceList, Contender::TowerP2c];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Trellis => "trellis p2c peak-ewma",
            Contender::TonicBalanceList => "tonic balance_list",
            Contender::TowerP2c => "tower p2c + PeakEwma",
        }
    }

    /// A fresh client over `addrs`, with the Trellis channel to read its counts from.
    fn connect(self, addrs: &[SocketAddr]) -> (Call, Option<Channel>) {
        match self {
            Contender::Trellis => {
                let channel = Channel::discover(static_registry(addrs), &BENCH_DESCRIPTOR).expect("channel");
                (caller(BenchClient::new(channel.clone())), Some(channel))
            }
            Contender::TonicBalanceList => (slow::tonic_balance_list(addrs), None),
            Contender::TowerP2c => (slow::tower_p2c(addrs), None),
        }
    }
}

/// When things happen in a run, from its start.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    event: Duration,
    recovery: Duration,
    end: Duration,
}

impl Timeline {
    fn new(quick: bool) -> Self {
        let ms = Duration::from_millis;
        if quick {
            Timeline { event: ms(400), recovery: ms(1_000), end: ms(1_700) }
        } else {
            Timeline { event: ms(1_000), recovery: ms(2_500), end: ms(4_500) }
        }
    }

    fn buckets(self) -> usize {
        self.end.as_nanos().div_ceil(BUCKET.as_nanos()) as usize
    }
}

/// The in-process instance that fails on demand: what it was told, and when
/// calls reached it.
#[derive(Debug, Default)]
struct Switch {
    failing: AtomicBool,
    /// When each call arrived, and whether it was served.
    arrivals: Mutex<Vec<(Instant, bool)>>,
}

impl Switch {
    fn take_arrivals(&self) -> Vec<(Instant, bool)> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The bench service, failing while its switch says so.
#[derive(Debug)]
struct Flaky(Arc<Switch>);

#[trellis::async_trait]
impl Bench for Flaky {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let failing = self.0.failing.load(Ordering::Relaxed);
        self.0.arrivals.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), !failing));
        if failing {
            return Err(Status::unavailable("failing on purpose"));
        }
        tokio::time::sleep(WORK).await;
        Ok(Response::new(request.into_inner()))
    }
}

/// The bench service of an instance process: says on stdout when it first
/// serves a call.
#[derive(Debug, Default)]
struct Announced {
    told: AtomicBool,
}

#[trellis::async_trait]
impl Bench for Announced {
    async fn echo(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        if !self.told.swap(true, Ordering::Relaxed) {
            println!("served {}", unix_nanos());
        }
        tokio::time::sleep(WORK).await;
        Ok(Response::new(request.into_inner()))
    }
}

/// Nanoseconds since the Unix epoch: a clock this process and its children share.
fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The `instance` mode: a Trellis server of the bench service on `listen`,
/// until killed, or until the process that started it goes away (its stdin
/// closes). Says on stdout when it listens and when it first serves a call,
/// as nanoseconds since the Unix epoch.
pub(crate) async fn instance(listen: SocketAddr) -> Result<(), trellis::Error> {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let server = trellis::Server::builder()
        .listen(listen)
        .add_service(BenchServer::new(Announced::default()))
        .bind()
        .await?;
    println!("listening {}", unix_nanos());
    server.serve().await
}

/// An instance in a child process of this binary, to kill for real. Killed
/// when dropped; and it exits by itself if this process dies first.
#[derive(Debug)]
struct ChildInstance {
    process: tokio::process::Child,
    /// When it started listening, by this process's clock and by the shared one.
    listening: (Instant, u64),
    /// When it first served a call, by the shared clock.
    served: Arc<Mutex<Option<u64>>>,
}

impl ChildInstance {
    /// Starts an instance on `addr` and waits until it listens.
    async fn start(addr: SocketAddr) -> ChildInstance {
        let exe = std::env::current_exe().expect("the path of this binary");
        let mut process = tokio::process::Command::new(exe)
            .args(["instance", "--listen", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start an instance process");
        let stdout = process.stdout.take().expect("the instance's stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let listening = match &ready {
            Ok(Ok(Some(line))) => line.strip_prefix("listening ").and_then(|t| t.parse::<u64>().ok()),
            _ => None,
        };
        let listening = listening
            .unwrap_or_else(|| panic!("the instance process on {addr} did not start listening: {ready:?}"));
        let served = Arc::new(Mutex::new(None));
        let seen = served.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.strip_prefix("served ").and_then(|t| t.parse::<u64>().ok()) {
                    seen.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(at);
                }
            }
        });
        ChildInstance { process, listening: (Instant::now(), listening), served }
    }

    /// SIGKILL, and waits for it to be gone.
    async fn kill(&mut self) {
        self.process.start_kill().expect("SIGKILL the instance process");
        self.process.wait().await.expect("wait for the instance process");
    }

    /// From listening to serving its first call.
    fn served_after(&self) -> Option<Duration> {
        let served = (*self.served.lock().unwrap_or_else(PoisonError::into_inner))?;
        Some(Duration::from_nanos(served.saturating_sub(self.listening.1)))
    }
}

/// Three instances; the event hits the last one.
#[derive(Debug)]
struct Bed {
    addrs: Vec<SocketAddr>,
    bad: Bad,
}

#[derive(Debug)]
enum Bad {
    Failing(Arc<Switch>),
    Killed(Box<ChildInstance>),
}

impl Bed {
    async fn new(event: Event) -> Bed {
        let mut addrs = vec![trellis_server(WORK).await, trellis_server(WORK).await];
        let bad = match event {
            Event::Failing => {
                let switch = Arc::new(Switch::default());
                addrs.push(trellis_server_with(Flaky(switch.clone())).await);
                Bad::Failing(switch)
            }
            Event::Killed => {
                let addr = free_addr();
                addrs.push(addr);
                Bad::Killed(Box::new(ChildInstance::start(addr).await))
            }
        };
        Bed { addrs, bad }
    }

    fn bad_addr(&self) -> SocketAddr {
        self.addrs[2]
    }
}

/// One call: when it completed (from the run's start), how long it took,
/// whether it succeeded.
#[derive(Debug, Clone, Copy)]
struct Done {
    at: Duration,
    latency: Duration,
    ok: bool,
}

impl Done {
    fn began(&self) -> Duration {
        self.at.saturating_sub(self.latency)
    }
}

/// What one run of one contender measured.
#[derive(Debug, Clone)]
struct Measured {
    calls: usize,
    failed: usize,
    calls_during: usize,
    failed_during: usize,
    /// Over the run, and between the event and the recovery; `None` for
    /// clients that do not retry.
    attempts_per_call: Option<f64>,
    attempts_per_call_during: Option<f64>,
    /// From the event to the last attempt before the bad instance went
    /// quiet; `None` if it never did.
    leave: Option<Duration>,
    /// From the recovery to the first call it served; `None` if none
    /// within the run.
    back: Option<Duration>,
    p99_before: Option<f64>,
    p99_during: Option<f64>,
    p99_after: Option<f64>,
    /// When the event and the recovery happened (a restart takes a while).
    event_at: Duration,
    recovered_at: Duration,
    buckets: Vec<Bucket>,
}

/// The calls that completed in one bucket of time.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    ok: usize,
    failed: usize,
    p99_ms: Option<f64>,
}

/// Makes calls, one at a time, until told to stop.
async fn worker(call: Call, start: Instant, stop: Arc<AtomicBool>) -> Vec<Done> {
    let mut done = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let ok = call().await.is_ok();
        let now = Instant::now();
        done.push(Done { at: now - start, latency: now - began, ok });
        if !ok {
            // A call that fails at once must not starve the timeline's clock.
            tokio::task::yield_now().await;
        }
    }
    done
}

/// Attempts the channel sent to `addr` (any `None`: to all endpoints).
fn attempts(channel: &Channel, addr: Option<SocketAddr>) -> u64 {
    channel
        .calls_per_endpoint()
        .iter()
        .filter(|(endpoint, _)| addr.is_none_or(|a| endpoint.port() == a.port()))
        .map(|(_, n)| n)
        .sum()
}

/// When the channel's count of attempts to `addr` grew, read every [`SAMPLE`].
async fn sample_attempts(
    channel: Channel,
    addr: SocketAddr,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut grew = Vec::new();
    let mut seen = attempts(&channel, Some(addr));
    let mut ticks = tokio::time::interval(SAMPLE);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let now = attempts(&channel, Some(addr));
        if now > seen {
            grew.push(start.elapsed());
            seen = now;
        }
    }
    grew
}

/// One run of `contender` through the event of `bed`.
async fn run_once(contender: Contender, bed: &mut Bed, timeline: Timeline) -> Measured {
    let (call, channel) = contender.connect(&bed.addrs);
    crate::run(&call, WARM_UP_CALLS, CONCURRENCY).await;
    let bad = bed.bad_addr();
    if let Bad::Failing(switch) = &bed.bad {
        switch.take_arrivals();
    }
    let count = |channel: &Option<Channel>| channel.as_ref().map(|c| attempts(c, None));
    let attempts_at_start = count(&channel);

    let start = Instant::now();
    let at = |offset| tokio::time::sleep_until(tokio::time::Instant::from_std(start + offset));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> =
        (0..CONCURRENCY).map(|_| tokio::spawn(worker(call.clone(), start, stop.clone()))).collect();
    let sampler = channel.clone().map(|c| tokio::spawn(sample_attempts(c, bad, start, stop.clone())));

    at(timeline.event).await;
    let event_at = start.elapsed();
    let attempts_at_event = count(&channel);
    match &mut bed.bad {
        Bad::Failing(switch) => switch.failing.store(true, Ordering::Relaxed),
        Bad::Killed(child) => child.kill().await,
    }

    at(timeline.recovery).await;
    let recovered_at = match &mut bed.bad {
        Bad::Failing(switch) => {
            switch.failing.store(false, Ordering::Relaxed);
            start.elapsed()
        }
        Bad::Killed(child) => {
            **child = ChildInstance::start(bad).await;
            child.listening.0.saturating_duration_since(start)
        }
    };
    let attempts_at_recovery = count(&channel);

    at(timeline.end).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for worker in workers {
        done.extend(worker.await.expect("worker"));
    }
    let sampled = match sampler {
        Some(sampler) => Some(sampler.await.expect("sampler")),
        None => None,
    };
    let attempts_at_end = count(&channel);

    // The attempts at the bad instance, and when it served again.
    let (mut hits, back) = match &bed.bad {
        Bad::Failing(switch) => {
            let arrivals: Vec<(Duration, bool)> = switch
                .take_arrivals()
                .into_iter()
                .map(|(t, ok)| (t.saturating_duration_since(start), ok))
                .collect();
            let back = arrivals
                .iter()
                .filter(|(t, ok)| *ok && *t >= recovered_at)
                .map(|(t, _)| *t - recovered_at)
                .min();
            (arrivals.into_iter().map(|(t, _)| t).collect(), back)
        }
        Bad::Killed(child) => {
            let hits = sampled.unwrap_or_else(|| done.iter().filter(|d| !d.ok).map(|d| d.at).collect());
            (hits, child.served_after())
        }
    };
    hits.sort_unstable();

    let during = |d: &&Done| d.at >= event_at && d.at < recovered_at;
    let calls_during = done.iter().filter(during).count();
    // Attempts are counted when sent: per call sent in the same window.
    let sent_during = done.iter().filter(|d| d.began() >= event_at && d.began() < recovered_at).count();
    let ratio = |attempts: Option<u64>, calls: usize| attempts.map(|a| a as f64 / calls.max(1) as f64);
    Measured {
        calls: done.len(),
        failed: done.iter().filter(|d| !d.ok).count(),
        calls_during,
        failed_during: done.iter().filter(during).filter(|d| !d.ok).count(),
        attempts_per_call: ratio(attempts_at_end.zip(attempts_at_start).map(|(e, s)| e - s), done.len()),
        attempts_per_call_during: ratio(
            attempts_at_recovery.zip(attempts_at_event).map(|(r, e)| r - e),
            sent_during,
        ),
        leave: quiet_after(&hits, event_at, recovered_at),
        back,
        p99_before: p99_ms(&done, Duration::ZERO, event_at),
        p99_during: p99_ms(&done, event_at, recovered_at),
        p99_after: p99_ms(&done, recovered_at, timeline.end),
        event_at,
        recovered_at,
        buckets: (0..timeline.buckets())
            .map(|i| {
                let (from, until) = (BUCKET * i as u32, BUCKET * (i as u32 + 1));
                let here = |d: &&Done| d.at >= from && d.at < until;
                Bucket {
                    ok: done.iter().filter(here).filter(|d| d.ok).count(),
                    failed: done.iter().filter(here).filter(|d| !d.ok).count(),
                    p99_ms: p99_ms(&done, from, until),
                }
            })
            .collect(),
    }
}

/// From `from` to the last of the sorted `hits` before a gap of [`QUIET`],
/// looking until `until`; `None` if there was no such gap.
fn quiet_after(hits: &[Duration], from: Duration, until: Duration) -> Option<Duration> {
    let mut last = from;
    for &hit in hits.iter().filter(|h| **h >= from && **h < until) {
        if hit - last >= QUIET {
            return Some(last - from);
        }
        last = hit;
    }
    (until.saturating_sub(last) >= QUIET).then(|| last - from)
}

/// The p99 latency of the successful calls that completed in `[from, until)`, in ms.
fn p99_ms(done: &[Done], from: Duration, until: Duration) -> Option<f64> {
    let mut latencies: Vec<Duration> =
        done.iter().filter(|d| d.ok && d.at >= from && d.at < until).map(|d| d.latency).collect();
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = ((latencies.len() - 1) as f64 * 0.99) as usize;
    Some(latencies[at].as_secs_f64() * 1e3)
}

/// Medians over the repetitions of one contender.
#[derive(Debug)]
struct Summary {
    name: &'static str,
    success: f64,
    success_during: f64,
    calls: f64,
    failed: f64,
    retries: bool,
    attempts_per_call: Option<f64>,
    attempts_per_call_during: Option<f64>,
    leave_ms: Option<f64>,
    back_ms: Option<f64>,
    p99_before: Option<f64>,
    p99_during: Option<f64>,
    p99_after: Option<f64>,
    ok_per_sec: Vec<Option<f64>>,
    failed_per_sec: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
}

/// The median of the values there are; `None` if there are none.
fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    (!values.is_empty()).then(|| median(values))
}

/// The median time, `None` (never) counting as later than any: `None` if
/// it was never in most runs.
fn median_time(values: impl Iterator<Item = Option<Duration>>) -> Option<f64> {
    let median = median(values.map(|v| v.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3)).collect());
    median.is_finite().then_some(median)
}

fn summarize(contender: Contender, runs: &[Measured]) -> Summary {
    let per_sec = |n: usize| Some(n as f64 / BUCKET.as_secs_f64());
    let buckets = runs.iter().map(|r| r.buckets.len()).min().unwrap_or(0);
    let column = |f: &dyn Fn(&Bucket) -> Option<f64>| -> Vec<Option<f64>> {
        (0..buckets).map(|i| median_of(runs.iter().map(|r| f(&r.buckets[i])))).collect()
    };
    let rate = |ok: usize, all: usize| 100.0 * ok as f64 / all.max(1) as f64;
    Summary {
        name: contender.name(),
        success: median(runs.iter().map(|r| rate(r.calls - r.failed, r.calls)).collect()),
        success_during: median(
            runs.iter().map(|r| rate(r.calls_during - r.failed_during, r.calls_during)).collect(),
        ),
        calls: median(runs.iter().map(|r| r.calls as f64).collect()),
        failed: median(runs.iter().map(|r| r.failed as f64).collect()),
        retries: runs.iter().any(|r| r.attempts_per_call.is_some()),
        attempts_per_call: median_of(runs.iter().map(|r| r.attempts_per_call)),
        attempts_per_call_during: median_of(runs.iter().map(|r| r.attempts_per_call_during)),
        leave_ms: median_time(runs.iter().map(|r| r.leave)),
        back_ms: median_time(runs.iter().map(|r| r.back)),
        p99_before: median_of(runs.iter().map(|r| r.p99_before)),
        p99_during: median_of(runs.iter().map(|r| r.p99_during)),
        p99_after: median_of(runs.iter().map(|r| r.p99_after)),
        ok_per_sec: column(&|b| per_sec(b.ok)),
        failed_per_sec: column(&|b| per_sec(b.failed)),
        p99_ms: column(&|b| b.p99_ms),
    }
}

fn ms(value: Option<f64>, none: &str) -> String {
    value.map_or_else(|| none.to_owned(), |v| format!("{v:.0} ms"))
}

fn print_table(title: &str, summaries: &[Summary]) {
    println!("\n{title}");
    println!(
        "  {:<24} {:>9} {:>10} {:>8} {:>13} {:>12} {:>12} {:>10} {:>10}",
        "contender",
        "ok % run",
        "ok % event",
        "failed",
        "attempts/call",
        "leaves after",
        "back after",
        "p99 before",
        "p99 event"
    );
    for s in summaries {
        let attempts = match s.attempts_per_call_during {
            Some(a) if s.retries => format!("{a:.3}"),
            _ => "1.000*".to_owned(),
        };
        let p99 = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}ms"));
        println!(
            "  {:<24} {:>9.3} {:>10.3} {:>8.0} {:>13} {:>12} {:>12} {:>10} {:>10}",
            s.name,
            s.success,
            s.success_during,
            s.failed,
            attempts,
            ms(s.leave_ms, "never"),
            ms(s.back_ms, "not in run"),
            p99(s.p99_before),
            p99(s.p99_during)
        );
    }
    println!(
        "  attempts/call: between the event and the recovery; * no retries, one attempt per call by construction\n  \
         leaves after: from the event to the last attempt at the instance before none for {QUIET:?}\n  \
         back after: from the recovery (for a restart: from listening again) to the first call it served"
    );
}

fn to_json(summaries: &[Summary]) -> serde_json::Value {
    summaries
        .iter()
        .map(|s| {
            json!({
                "contender": s.name,
                "success_rate_pct": s.success,
                "success_rate_during_event_pct": s.success_during,
                "calls": s.calls,
                "failed_calls": s.failed,
                "retries": s.retries,
                "attempts_per_call": s.attempts_per_call.filter(|_| s.retries).unwrap_or(1.0),
                "attempts_per_call_during_event": s.attempts_per_call_during.filter(|_| s.retries).unwrap_or(1.0),
                "traffic_leaves_after_ms": s.leave_ms,
                "traffic_back_after_ms": s.back_ms,
                "p99_before_ms": s.p99_before,
                "p99_during_ms": s.p99_during,
                "p99_after_ms": s.p99_after,
            })
        })
        .collect()
}

fn chart(
    title: String,
    event: Event,
    timeline: Timeline,
    marks: (f64, f64),
    summaries: &[Summary],
) -> plot::Chart {
    let panel = |y_label: &str, values: &dyn Fn(&Summary) -> Vec<Option<f64>>| plot::Panel {
        y_label: y_label.to_owned(),
        lines: summaries.iter().map(|s| plot::Line { name: s.name.to_owned(), values: values(s) }).collect(),
    };
    let (at_event, at_recovery) = event.marks();
    plot::Chart {
        title,
        bucket: BUCKET.as_secs_f64(),
        end: timeline.end.as_secs_f64(),
        markers: vec![(marks.0, at_event.to_owned()), (marks.1, at_recovery.to_owned())],
        panels: vec![
            panel("successful calls/s", &|s| s.ok_per_sec.clone()),
            panel("failed calls/s", &|s| s.failed_per_sec.clone()),
            panel("p99 latency (ms)", &|s| s.p99_ms.clone()),
        ],
    }
}

/// Scenario 3: one instance of three fails for a while, or is killed and
/// restarted. Returns the results, and a plot per event: file name, SVG.
pub(crate) async fn run(quick: bool) -> (serde_json::Value, Vec<(String, Result<String, String>)>) {
    let timeline = Timeline::new(quick);
    let reps = if quick { 1 } else { 3 };
    let mut results = serde_json::Map::new();
    results.insert(
        "setup".into(),
        json!({
            "instances": 3,
            "work_ms": WORK.as_secs_f64() * 1e3,
            "concurrency": CONCURRENCY,
            "repetitions": reps,
            "event_at_s": timeline.event.as_secs_f64(),
            "recovery_at_s": timeline.recovery.as_secs_f64(),
            "end_s": timeline.end.as_secs_f64(),
            "bucket_ms": BUCKET.as_secs_f64() * 1e3,
            "quiet_ms": QUIET.as_secs_f64() * 1e3,
        }),
    );
    let mut plots = Vec::new();
    for event in [Event::Failing, Event::Killed] {
        let mut bed = Bed::new(event).await;
        let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); CONTENDERS.len()];
        for _ in 0..reps {
            for (contender, runs) in CONTENDERS.iter().zip(&mut runs) {
                runs.push(run_once(*contender, &mut bed, timeline).await);
            }
        }
        if let Bad::Killed(child) = &mut bed.bad {
            child.kill().await;
        }
        let summaries: Vec<Summary> = CONTENDERS.iter().zip(&runs).map(|(c, r)| summarize(*c, r)).collect();
        let of_runs = if reps == 1 { "1 run".to_owned() } else { format!("{reps} runs") };
        let title = format!(
            "{}; {WORK:?} work, concurrency {CONCURRENCY}, medians of {of_runs}",
            event.describe(timeline)
        );
        print_table(&title, &summaries);
        let all = || runs.iter().flatten();
        let marks = (
            median(all().map(|r| r.event_at.as_secs_f64()).collect()),
            median(all().map(|r| r.recovered_at.as_secs_f64()).collect()),
        );
        let title = format!("{}: per {BUCKET:?}, median of {of_runs}", event.describe(timeline));
        let chart = chart(title, event, timeline, marks, &summaries);
        let file = format!("{}.svg", event.key());
        results.insert(
            event.key().into(),
            json!({
                "event_at_s": marks.0,
                "recovered_at_s": marks.1,
                "contenders": to_json(&summaries),
                "plot": file,
            }),
        );
        plots.push((file, plot::svg(&chart)));
    }
    (serde_json::Value::Object(results), plots)
}
