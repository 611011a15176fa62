//! Scenario 5: servers driven by a load generator that is not ours.
//!
//! `h2load` (nghttp2) posts a gRPC-framed `Payload` to `bench.v1.Bench/Echo`
//! on a bare tonic server and a Trellis server in this process, and on the
//! same service in processes of their own: built as a user builds it
//! (`trellis::App`, default logging, and again with logging off), on grpc-go
//! and on gRPC C++ (see [`crate::peers`]). All run interleaved, with the same
//! h2load command. h2load counts any HTTP
//! 200 as a success, and a gRPC error (a call shed with
//! `RESOURCE_EXHAUSTED`, say) is an HTTP 200 without a body, so the bytes
//! received are checked too: every success must carry the echoed frame.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use trellis::codegen::prost::Message;

use crate::peers::{self, Process};
use crate::proto::bench::v1::Payload;
use crate::{free_addr, median, tonic_server, trellis_server};

/// The load generator, from Debian's `nghttp2-client`.
const H2LOAD: &str = "h2load";

/// Connections, streams per connection, threads: 64 streams in flight, well
/// under the Trellis server's default `max_concurrent_calls` of 1024.
const CLIENTS: usize = 4;
const STREAMS: usize = 16;
const THREADS: usize = 1;

/// The longest one h2load run may take.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// What one h2load run reported.
#[derive(Debug, Clone, Default)]
struct H2Run {
    total: u64,
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    status_2xx: u64,
    req_per_sec: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Response body bytes received (h2load's "traffic: ... data").
    data_bytes: u64,
}

impl H2Run {
    /// What the data bytes should be, if every success carried `frame` bytes.
    fn expected_bytes(&self, frame: u64) -> u64 {
        self.succeeded * frame
    }

    /// Whether every request succeeded and carried the echoed frame.
    fn checked(&self, frame: u64) -> bool {
        self.total > 0
            && self.succeeded == self.total
            && self.status_2xx == self.total
            && self.data_bytes == self.expected_bytes(frame)
    }
}

/// The gRPC frame of the request, which the server echoes: a compressed
/// flag of 0, the length in 4 bytes big-endian, then the message.
fn frame() -> Vec<u8> {
    let message = Payload { data: vec![7; 64] }.encode_to_vec();
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut frame = vec![0];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// Runs h2load with `requests` requests against `addr`.
async fn h2load(
    addr: std::net::SocketAddr,
    requests: usize,
    body: &Path,
    log: &Path,
) -> Result<H2Run, String> {
    // h2load appends to its log file: start each run with none.
    match std::fs::remove_file(log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {}: {e}", log.display()));
        }
        _ => {}
    }
    let mut command = tokio::process::Command::new(H2LOAD);
    command
        .arg(format!("--requests={requests}"))
        .arg(format!("--clients={CLIENTS}"))
        .arg(format!("--max-concurrent-streams={STREAMS}"))
        .arg(format!("--threads={THREADS}"))
        .arg("--data")
        .arg(body)
        .args(["--header", "content-type: application/grpc", "--header", "te: trailers"])
        .arg("--log-file")
        .arg(log)
        .arg(format!("http://{addr}/bench.v1.Bench/Echo"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(RUN_BOUND, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("cannot run {H2LOAD}: {e}")),
        Err(_) => return Err(format!("{H2LOAD} did not finish within {RUN_BOUND:?}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{H2LOAD} failed ({}): {stderr}{stdout}", output.status));
    }
    let mut run = parse(&stdout).map_err(|e| format!("cannot read {H2LOAD}'s report ({e}):\n{stdout}"))?;
    let (logged, p50, p99) = percentiles(log)?;
    if logged != run.total {
        return Err(format!("{H2LOAD} logged {logged} requests but reported {}", run.total));
    }
    run.p50_ms = p50;
    run.p99_ms = p99;
    Ok(run)
}

/// Reads h2load's report:
///
/// ```text
/// finished in 1.02s, 49019.61 req/s, 4.63MB/s
/// requests: 50000 total, 50000 started, 50000 done, 50000 succeeded, 0 failed, 0 errored, 0 timeout
/// status codes: 50000 2xx, 0 3xx, 0 4xx, 0 5xx
/// traffic: 4.72MB (4950000) total, 1.22MB (1275000) headers (space savings 92.11%), 3.39MB (3550000) data
///                      min         max         mean         sd        +/- sd
/// time for request:      123us     12.34ms      1.23ms      456us    78.90%
/// ```
fn parse(report: &str) -> Result<H2Run, String> {
    let mut run = H2Run::default();
    let line = |prefix: &str| {
        report
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .ok_or_else(|| format!("no `{prefix}` line"))
    };
    // "N word, N word, ...": the number before `word`.
    let count = |text: &str, word: &str| {
        text.split(',')
            .find_map(|part| {
                let mut parts = part.split_whitespace();
                let n = parts.next()?;
                (parts.next()? == word).then(|| n.parse::<u64>().ok()).flatten()
            })
            .ok_or_else(|| format!("no `{word}` count in `{text}`"))
    };
    let finished = line("finished in")?;
    run.req_per_sec = finished
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" req/s")?.parse().ok())
        .ok_or("no req/s")?;
    let requests = line("requests:")?;
    run.total = count(requests, "total")?;
    run.succeeded = count(requests, "succeeded")?;
    run.failed = count(requests, "failed")?;
    run.errored = count(requests, "errored")?;
    run.timeout = count(requests, "timeout")?;
    run.status_2xx = count(line("status codes:")?, "2xx")?;
    let traffic = line("traffic:")?;
    run.data_bytes = traffic
        .split(", ")
        .find(|part| part.ends_with(" data"))
        .and_then(|part| part.split_once('(')?.1.split_once(')')?.0.parse().ok())
        .ok_or("no data bytes")?;
    let times: Vec<&str> = line("time for request:")?.split_whitespace().collect();
    run.mean_ms = times.get(2).and_then(|t| duration_ms(t)).ok_or("no mean time for request")?;
    Ok(run)
}

/// `123us`, `1.23ms` or `1.02s` in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    if let Some(us) = text.strip_suffix("us") {
        us.parse::<f64>().ok().map(|v| v / 1e3)
    } else if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok()
    } else {
        text.strip_suffix('s')?.parse::<f64>().ok().map(|v| v * 1e3)
    }
}

/// p50 and p99 in ms of the requests in h2load's `--log-file`: one line per
/// request, start (us since the epoch), HTTP status, duration (us). Also
/// how many requests it lists.
fn percentiles(log: &Path) -> Result<(u64, f64, f64), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
    let mut durations: Vec<u64> =
        text.lines().filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok()).collect();
    if durations.is_empty() {
        return Err(format!("{} lists no requests", log.display()));
    }
    durations.sort_unstable();
    let at = |q: f64| durations[((durations.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    Ok((durations.len() as u64, at(0.50), at(0.99)))
}

/// Medians over repetitions of one server.
#[derive(Debug, Clone, Copy)]
struct Summary {
    req_per_sec: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Summed over repetitions.
    requests: u64,
    not_succeeded: u64,
    data_bytes: u64,
    expected_bytes: u64,
    runs_failing_check: usize,
}

fn summarize(runs: &[H2Run], frame: u64) -> Summary {
    Summary {
        req_per_sec: median(runs.iter().map(|r| r.req_per_sec).collect()),
        mean_ms: median(runs.iter().map(|r| r.mean_ms).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
        requests: runs.iter().map(|r| r.total).sum(),
        not_succeeded: runs.iter().map(|r| r.total - r.succeeded.min(r.total)).sum(),
        data_bytes: runs.iter().map(|r| r.data_bytes).sum(),
        expected_bytes: runs.iter().map(|r| r.expected_bytes(frame)).sum(),
        runs_failing_check: runs.iter().filter(|r| !r.checked(frame)).count(),
    }
}

/// One server under test: where it listens, and its process if it has one.
#[derive(Debug)]
struct Server {
    name: &'static str,
    addr: std::net::SocketAddr,
    process: Option<Process>,
}

/// Scenario 5: the servers under h2load.
pub(crate) async fn run(quick: bool) -> serde_json::Value {
    match measure(quick).await {
        Ok(value) => value,
        Err(why) => {
            println!("\nh2load: skipped: {why}");
            json!({ "skipped": why })
        }
    }
}

/// Starts the servers in processes of their own: the user-built Trellis
/// service (with default logging, and with logging off), grpc-go, gRPC C++.
/// A server whose tools are missing, or that does not start, is skipped
/// with the reason.
async fn processes(dir: &Path, skipped: &mut Vec<(&'static str, String)>) -> Vec<Server> {
    let mut servers = Vec::new();
    let mut start = async |name: &'static str, program: Result<PathBuf, String>, extra: &[&str]| {
        let program = match program {
            Ok(program) => program,
            Err(why) => {
                skipped.push((name, why));
                return;
            }
        };
        let addr = free_addr();
        let mut args = vec!["--listen".to_owned(), addr.to_string()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let log = dir.join(format!("{}.log", name.replace([' ', ',', '='], "-")));
        match Process::start(name, &program, &args, addr, log).await {
            Ok(process) => servers.push(Server { name, addr, process: Some(process) }),
            Err(why) => skipped.push((name, why)),
        }
    };
    // Each Trellis process registers in a `local://` directory of its own.
    let registry = |name: &str| format!("local://{}", dir.join(name).display());
    let echo = peers::bench_echo();
    start(TRELLIS_APP, echo.clone(), &["--registry", &registry("registry-default")]).await;
    start(TRELLIS_APP_QUIET, echo, &["--registry", &registry("registry-off"), "--set", "log.level=off"])
        .await;
    start(GRPC_GO, peers::build_go().await, &[]).await;
    start(GRPC_CPP, peers::build_cpp().await, &[]).await;
    servers
}

/// The user-built Trellis service, default configuration and logging.
const TRELLIS_APP: &str = "trellis app";
/// The same with `--set log.level=off`.
const TRELLIS_APP_QUIET: &str = "trellis app, log off";
const GRPC_GO: &str = "grpc-go";
const GRPC_CPP: &str = "grpc C++";

async fn measure(quick: bool) -> Result<serde_json::Value, String> {
    let installed = tokio::process::Command::new(H2LOAD).arg("--version").output().await;
    let version = match installed {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        _ => {
            return Err(format!(
                "`{H2LOAD}` is not installed or does not run (apt-get install nghttp2-client)"
            ));
        }
    };
    let (requests, reps) = if quick { (20_000, 3) } else { (60_000, 7) };
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let frame = frame();
    let body: PathBuf = dir.path().join("request.bin");
    std::fs::write(&body, &frame).map_err(|e| format!("cannot write {}: {e}", body.display()))?;
    let log = dir.path().join("requests.log");
    let frame_len = frame.len() as u64;

    let mut skipped = Vec::new();
    let mut servers = vec![
        Server { name: "bare tonic", addr: tonic_server(Duration::ZERO).await, process: None },
        Server { name: "trellis", addr: trellis_server(Duration::ZERO).await, process: None },
    ];
    servers.extend(processes(dir.path(), &mut skipped).await);
    for (name, why) in &skipped {
        println!("\nh2load: {name} skipped: {why}");
    }
    for server in &servers {
        h2load(server.addr, requests / 4, &body, &log).await.map_err(|e| format!("{}: {e}", server.name))?;
    }
    let mut runs: Vec<Vec<H2Run>> = vec![Vec::new(); servers.len()];
    for _ in 0..reps {
        for (i, server) in servers.iter_mut().enumerate() {
            let run = h2load(server.addr, requests, &body, &log).await;
            if let Some(process) = &mut server.process
                && !process.running()
            {
                return Err(format!("{} exited during the run: {}", server.name, process.stderr()));
            }
            runs[i].push(run.map_err(|e| format!("{}: {e}", server.name))?);
        }
    }
    let summaries: Vec<Summary> = runs.iter().map(|r| summarize(r, frame_len)).collect();

    println!(
        "\nh2load: {version}, unary Echo of a {frame_len}-byte gRPC frame, {CLIENTS} connections x {STREAMS} \
         streams, {THREADS} thread, {requests} requests x {reps}, interleaved (ratios vs bare tonic and vs grpc-go)"
    );
    println!(
        "  {:<20} {:>9} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8}  response bytes",
        "server", "req/s", "mean ms", "p50 ms", "p99 ms", "not ok", "x tonic", "x go", "p99 x t", "p99 x go"
    );
    let base = summaries[0];
    let go = servers.iter().position(|s| s.name == GRPC_GO).map(|i| summaries[i]);
    let ratio = |value: f64, of: Option<f64>| of.map(|of| value / of);
    let cell = |ratio: Option<f64>| ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
    let mut json = Vec::new();
    for (server, s) in servers.iter().zip(&summaries) {
        let name = server.name;
        let check = if s.runs_failing_check == 0 {
            format!("ok ({} = {} x {frame_len})", s.data_bytes, s.requests)
        } else {
            format!(
                "MISMATCH in {} of {reps} runs: {} bytes, expected {} for {} requests",
                s.runs_failing_check, s.data_bytes, s.expected_bytes, s.requests
            )
        };
        let vs_go = ratio(s.req_per_sec, go.map(|g| g.req_per_sec));
        let p99_vs_go = ratio(s.p99_ms, go.map(|g| g.p99_ms));
        println!(
            "  {:<20} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>8.3} {:>8} {:>8.3} {:>8}  {check}",
            name,
            s.req_per_sec,
            s.mean_ms,
            s.p50_ms,
            s.p99_ms,
            s.not_succeeded,
            s.req_per_sec / base.req_per_sec,
            cell(vs_go),
            s.p99_ms / base.p99_ms,
            cell(p99_vs_go),
        );
        if s.runs_failing_check > 0 {
            eprintln!("trellis-bench: h2load against {name}: responses without the echoed frame: {check}");
        }
        json.push(json!({
            "server": name,
            "process": server.process.is_some(),
            "req_per_sec": s.req_per_sec,
            "mean_ms": s.mean_ms,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "requests": s.requests,
            "not_succeeded": s.not_succeeded,
            "data_bytes": s.data_bytes,
            "expected_data_bytes": s.expected_bytes,
            "bytes_check": if s.runs_failing_check == 0 { "ok" } else { "MISMATCH" },
            "runs_failing_check": s.runs_failing_check,
            "throughput_ratio": s.req_per_sec / base.req_per_sec,
            "mean_ratio": s.mean_ms / base.mean_ms,
            "p99_ratio": s.p99_ms / base.p99_ms,
            "throughput_ratio_grpc_go": vs_go,
            "p99_ratio_grpc_go": p99_vs_go,
        }));
    }
    let skipped: Vec<_> = skipped.iter().map(|(name, why)| json!({ "server": name, "why": why })).collect();
    Ok(json!({
        "h2load": version,
        "clients": CLIENTS,
        "streams_per_client": STREAMS,
        "threads": THREADS,
        "requests": requests,
        "repetitions": reps,
        "frame_bytes": frame_len,
        "servers": json,
        "skipped": skipped,
    }))
}
