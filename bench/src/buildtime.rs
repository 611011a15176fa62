//! Scenario 6: what Trellis costs at build time.
//!
//! Two measurements:
//!
//! - **The codegen step**: the three order protos compiled by `trellis-build`
//!   (pure Rust: protox, then tonic's generator plus Trellis's additions)
//!   against `tonic-prost-build` (`protoc`, then tonic's generator), in this
//!   process, interleaved, several repetitions. This is optimized code;
//!   the real `build.rs` time, unoptimized as Cargo builds build scripts,
//!   comes from the next measurement.
//! - **A service crate built from scratch** (skipped with `--quick`: it
//!   takes minutes): the same `OrderPayment` service written once on Trellis
//!   (with its default features, and with `rest`) and once on tonic alone,
//!   each in a fresh crate with a fresh target directory, dependencies
//!   pinned by this workspace's `Cargo.lock`, built in rounds (each round
//!   starts with a different crate). Reports the median clean debug build,
//!   the ratio in each round, the time its `build.rs` spent generating code,
//!   and the rebuild after the proto changes. All crates are built with
//!   `-D warnings`: generated code must compile cleanly in a user's crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::median;

/// The root of this workspace.
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The protos of the codegen measurement, relative to [`WORKSPACE`].
const ORDER_PROTOS: [&str; 3] = [
    "proto/order/payment/v1/payment.proto",
    "proto/order/shipping/v1/shipping.proto",
    "proto/order/status/v1/status.proto",
];

/// Runs the scenario; blocking, so call it off the async workers.
pub(crate) fn run(quick: bool) -> serde_json::Value {
    let workspace = Path::new(WORKSPACE);
    let scratch = workspace.join("target/bench-build");
    let mut results = serde_json::Map::new();
    results.insert("codegen".into(), codegen(workspace, &scratch, if quick { 3 } else { 10 }));
    if quick {
        println!("\nbuild: clean builds of a service crate skipped in --quick (they take minutes)");
    } else {
        results.insert("clean_build".into(), clean_builds(workspace, &scratch));
    }
    serde_json::Value::Object(results)
}

/// The codegen step alone, both generators, interleaved.
fn codegen(workspace: &Path, scratch: &Path, reps: usize) -> serde_json::Value {
    let protos: Vec<PathBuf> = ORDER_PROTOS.iter().map(|p| workspace.join(p)).collect();
    let includes = [workspace.join("proto")];
    let protoc = which("protoc");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        let out = scratch.join("codegen-trellis");
        let started = Instant::now();
        let result =
            trellis_build::configure().out_dir(&out).emit_rerun_if_changed(false).compile(&protos, &includes);
        let elapsed = started.elapsed();
        if let Err(err) = result {
            eprintln!("build: trellis-build failed on the order protos: {err}");
            return json!({ "error": err.to_string() });
        }
        // The first round warms the file cache, for both.
        if rep > 0 {
            ours.push(elapsed.as_secs_f64() * 1e3);
        }
        if protoc.is_none() {
            continue;
        }
        let out = scratch.join("codegen-tonic");
        if let Err(err) = std::fs::create_dir_all(&out) {
            eprintln!("build: cannot create {}: {err}", out.display());
            return json!({ "error": err.to_string() });
        }
        let started = Instant::now();
        // The order protos import `google/api/annotations.proto`, which
        // trellis-build ships (and wrote above); protoc needs it on its path.
        let tonic_includes = [includes[0].clone(), scratch.join("codegen-trellis/trellis-include")];
        let result = tonic_prost_build::configure()
            .out_dir(&out)
            .emit_rerun_if_changed(false)
            .compile_protos(&protos, &tonic_includes);
        let elapsed = started.elapsed();
        if let Err(err) = result {
            eprintln!("build: tonic-prost-build failed on the order protos: {err}");
            return json!({ "error": err.to_string() });
        }
        if rep > 0 {
            theirs.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    let ours = median(ours);
    println!("\nbuild: codegen step, the 3 order protos, {reps} runs each, interleaved (median)");
    println!("  {:<44} {:>10} {:>9}", "generator", "ms", "x");
    if theirs.is_empty() {
        println!("  {:<44} {ours:>10.1} {:>9}", "trellis-build (protox)", "-");
        println!("  tonic-prost-build skipped: no protoc on PATH (apt-get install protobuf-compiler)");
        return json!({ "trellis_build_ms": ours });
    }
    let theirs = median(theirs);
    println!("  {:<44} {theirs:>10.1} {:>9.3}", "tonic-prost-build (protoc)", 1.0);
    println!("  {:<44} {ours:>10.1} {:>9.3}", "trellis-build (protox, + discovery, policy)", ours / theirs);
    json!({ "trellis_build_ms": ours, "tonic_prost_build_ms": theirs, "ratio": ours / theirs })
}

/// Clean builds of each crate, in rounds: each round builds every kind once,
/// starting one kind further on, so that no kind always builds first.
const ROUNDS: usize = 3;

/// Service crates built from scratch: tonic alone, Trellis with its default
/// features, and Trellis with `rest` (as the order services build it).
fn clean_builds(workspace: &Path, scratch: &Path) -> serde_json::Value {
    let kinds = [Kind::Tonic, Kind::Trellis, Kind::TrellisRest];
    let mut rows: Vec<(Kind, Vec<BuildTimes>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    let mut json = serde_json::Map::new();
    for round in 0..ROUNDS {
        for i in 0..kinds.len() {
            let kind = kinds[(i + round) % kinds.len()];
            match clean_build(workspace, scratch, kind) {
                Ok(times) => {
                    println!(
                        "  round {}: {:<34} {:>6.1} s",
                        round + 1,
                        kind.label(),
                        times.clean.as_secs_f64()
                    );
                    if let Some((_, runs)) = rows.iter_mut().find(|(k, _)| *k == kind) {
                        runs.push(times);
                    }
                }
                Err(err) => {
                    eprintln!("build: {} service crate: {err}", kind.name());
                    json.insert(kind.name().into(), json!({ "error": err }));
                    return serde_json::Value::Object(json);
                }
            }
        }
    }
    println!(
        "\nbuild: one service crate (OrderPayment) from scratch, debug, {} jobs, {ROUNDS} rounds (median)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "  {:<34} {:>14} {:>9} {:>9} {:>7} {:>16} {:>18}  x per round",
        "crate", "clean build s", "x", "CPU s", "x", "build.rs codegen", "rebuild on proto s"
    );
    let clean = |runs: &[BuildTimes]| median(runs.iter().map(|t| t.clean.as_secs_f64()).collect());
    // The CPU time moves less than the wall time when the machine's host
    // takes time away: a second view of the same builds.
    let cpu = |runs: &[BuildTimes]| {
        let cpu: Vec<f64> = runs.iter().filter_map(|t| t.cpu).map(|d| d.as_secs_f64()).collect();
        if cpu.is_empty() { f64::NAN } else { median(cpu) }
    };
    let Some((base_clean, base_cpu, base_runs)) =
        rows.iter().find(|(k, _)| *k == Kind::Tonic).map(|(_, runs)| (clean(runs), cpu(runs), runs))
    else {
        return serde_json::Value::Object(json);
    };
    for (kind, runs) in &rows {
        let median_clean = clean(runs);
        let ratio = median_clean / base_clean;
        let median_cpu = cpu(runs);
        let per_round: Vec<String> = runs
            .iter()
            .zip(base_runs)
            .map(|(t, b)| format!("{:.2}", t.clean.as_secs_f64() / b.clean.as_secs_f64()))
            .collect();
        let codegen: Vec<f64> =
            runs.iter().filter_map(|t| t.codegen).map(|d| d.as_secs_f64() * 1e3).collect();
        let codegen = if codegen.is_empty() { f64::NAN } else { median(codegen) };
        let rebuild = median(runs.iter().map(|t| t.rebuild.as_secs_f64()).collect());
        println!(
            "  {:<34} {:>14.1} {:>9.3} {:>9.1} {:>7.3} {:>13.0} ms {:>18.1}  {}",
            kind.label(),
            median_clean,
            ratio,
            median_cpu,
            median_cpu / base_cpu,
            codegen,
            rebuild,
            per_round.join(" ")
        );
        json.insert(
            kind.name().into(),
            json!({
                "clean_build_s": runs.iter().map(|t| t.clean.as_secs_f64()).collect::<Vec<_>>(),
                "clean_build_ratio": ratio,
                "clean_build_cpu_s": runs.iter().filter_map(|t| t.cpu).map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
                "clean_build_cpu_ratio": median_cpu / base_cpu,
                "build_rs_codegen_ms": codegen,
                "rebuild_after_proto_change_s": rebuild,
            }),
        );
    }
    serde_json::Value::Object(json)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tonic,
    /// `trellis` with its default features.
    Trellis,
    /// `trellis` with `rest`.
    TrellisRest,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tonic => "tonic",
            Kind::Trellis => "trellis",
            Kind::TrellisRest => "trellis-rest",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Tonic => "tonic + tonic-prost-build",
            Kind::Trellis => "trellis + trellis-build",
            Kind::TrellisRest => "trellis (rest) + trellis-build",
        }
    }
}

#[derive(Debug)]
struct BuildTimes {
    clean: Duration,
    /// What the crate's `build.rs` measured around its codegen call.
    codegen: Option<Duration>,
    /// The clean build's CPU time, every process of it together.
    cpu: Option<Duration>,
    rebuild: Duration,
}

/// Writes the crate for `kind` into a fresh directory and builds it twice:
/// from scratch, then after touching its proto.
fn clean_build(workspace: &Path, scratch: &Path, kind: Kind) -> Result<BuildTimes, String> {
    let dir = scratch.join(format!("svc-{}", kind.name()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        let parent = path.parent().unwrap_or(&dir);
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let proto = std::fs::read_to_string(workspace.join(ORDER_PROTOS[0]))
        .map_err(|e| format!("cannot read {}: {e}", ORDER_PROTOS[0]))?;
    write("proto/payment.proto", &proto)?;
    if let Kind::Tonic = kind {
        // The proto imports `google/api/annotations.proto`, which trellis-build
        // ships; a tonic-only crate carries its own copy.
        for name in ["google/api/annotations.proto", "google/api/http.proto"] {
            let text = std::fs::read_to_string(workspace.join("codegen/proto").join(name))
                .map_err(|e| format!("cannot read codegen/proto/{name}: {e}"))?;
            write(&format!("proto/{name}"), &text)?;
        }
    }
    write("src/main.rs", &main_rs(kind))?;
    write("build.rs", &build_rs(kind))?;
    write("Cargo.toml", &cargo_toml(workspace, kind))?;
    let lock = std::fs::read_to_string(workspace.join("Cargo.lock"))
        .map_err(|e| format!("cannot read the workspace's Cargo.lock: {e}"))?;
    write("Cargo.lock", &lock)?;

    // Downloads are not build time: fetch first, then build offline.
    cargo(&dir, &["fetch"])?;
    let (started, cpu_before) = (Instant::now(), children_cpu());
    cargo(&dir, &["build", "--offline"])?;
    let clean = started.elapsed();
    let cpu = children_cpu().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let codegen = std::fs::read_dir(dir.join("target/debug/build"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|entry| std::fs::read_to_string(entry.path().join("out/codegen-us")).ok())
        .and_then(|text| text.trim().parse().ok())
        .map(Duration::from_micros);

    let proto = dir.join("proto/payment.proto");
    std::fs::File::options()
        .append(true)
        .open(&proto)
        .and_then(|file| file.set_modified(std::time::SystemTime::now()))
        .map_err(|e| format!("cannot touch {}: {e}", proto.display()))?;
    let started = Instant::now();
    cargo(&dir, &["build", "--offline"])?;
    Ok(BuildTimes { clean, codegen, cpu, rebuild: started.elapsed() })
}

/// The CPU time (user and system) of every child process this one has
/// waited for, and of theirs: `cargo` and each `rustc` it ran. Linux's
/// `/proc/self/stat` gives it in 1/100 s (`USER_HZ`).
fn children_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields 16 and 17 (cutime, cstime), counted after the command's `(...)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Runs `cargo ARGS` in `dir`, with its own target directory.
fn cargo(dir: &Path, args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        // The generated code must compile cleanly in a crate like a user's.
        .env("RUSTFLAGS", "-D warnings")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    Err(format!(
        "`cargo {}` failed in {}:\n{}",
        args.join(" "),
        dir.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn cargo_toml(workspace: &Path, kind: Kind) -> String {
    let workspace = workspace.canonicalize().unwrap_or_else(|_| workspace.to_owned());
    let deps = match kind {
        Kind::Trellis | Kind::TrellisRest => format!(
            "trellis = {{ path = \"{framework}\"{features} }}\n\
             \n[build-dependencies]\n\
             trellis-build = {{ path = \"{codegen}\" }}\n",
            framework = workspace.join("framework").display(),
            features = if kind == Kind::TrellisRest { ", features = [\"rest\"]" } else { "" },
            codegen = workspace.join("codegen").display(),
        ),
        Kind::Tonic => "tonic = \"0.14.9\"\n\
             tonic-prost = \"0.14.9\"\n\
             prost = \"0.14.4\"\n\
             tokio = { version = \"1.48\", features = [\"rt-multi-thread\", \"macros\"] }\n\
             \n[build-dependencies]\n\
             tonic-prost-build = \"0.14.9\"\n"
            .to_owned(),
    };
    // As `trellis new` writes it: the framework's crates come from a path,
    // which Cargo would compile incrementally (a registry's never are), and
    // their debug info is line tables only.
    let profile = match kind {
        Kind::Trellis | Kind::TrellisRest => {
            "\n[profile.dev.package.trellis]\nincremental = false\ndebug = \"line-tables-only\"\n\n\
             [profile.dev.package.trellis-build]\nincremental = false\ndebug = \"line-tables-only\"\n"
        }
        Kind::Tonic => "",
    };
    format!(
        "[package]\nname = \"svc-{}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\n{deps}\n[workspace]\n{profile}",
        kind.name()
    )
}

fn build_rs(kind: Kind) -> String {
    let compile = match kind {
        Kind::Trellis | Kind::TrellisRest => {
            "trellis_build::compile(&[\"proto/payment.proto\"], &[\"proto\"]);"
        }
        Kind::Tonic => "tonic_prost_build::compile_protos(\"proto/payment.proto\").expect(\"codegen\");",
    };
    format!(
        "fn main() {{\n    \
             let started = std::time::Instant::now();\n    \
             {compile}\n    \
             let out = std::path::PathBuf::from(std::env::var_os(\"OUT_DIR\").expect(\"OUT_DIR\"));\n    \
             std::fs::write(out.join(\"codegen-us\"), started.elapsed().as_micros().to_string()).expect(\"write\");\n\
         }}\n"
    )
}

/// The same service on both stacks: three methods answering defaults.
fn main_rs(kind: Kind) -> String {
    let (module, imports, serve) = match kind {
        Kind::Trellis | Kind::TrellisRest => (
            "mod proto {\n    trellis::include_protos!();\n}",
            "use trellis::{Request, Response, Status};",
            "fn main() -> std::process::ExitCode {\n    \
                 trellis::App::new(\"svc\", \"0.1.0\").run(|ctx| async move {\n        \
                     ctx.server().add_service(OrderPaymentServer::new(Payments)).serve().await?;\n        \
                     Ok(())\n    \
                 })\n\
             }",
        ),
        Kind::Tonic => (
            "mod proto {\n    pub mod order {\n        pub mod payment {\n            pub mod v1 {\n                \
             tonic::include_proto!(\"order.payment.v1\");\n            }\n        }\n    }\n}",
            "use tonic::{Request, Response, Status};",
            "#[tokio::main]\n\
             async fn main() -> Result<(), Box<dyn std::error::Error>> {\n    \
                 tonic::transport::Server::builder()\n        \
                     .add_service(OrderPaymentServer::new(Payments))\n        \
                     .serve(\"127.0.0.1:50051\".parse()?)\n        \
                     .await?;\n    \
                 Ok(())\n\
             }",
        ),
    };
    let attr = match kind {
        Kind::Trellis | Kind::TrellisRest => "#[trellis::async_trait]",
        Kind::Tonic => "#[tonic::async_trait]",
    };
    format!(
        "{module}\n\n{imports}\n\
         use proto::order::payment::v1::order_payment_server::{{OrderPayment, OrderPaymentServer}};\n\
         use proto::order::payment::v1::{{GetPaymentRequest, PayRequest, PayResponse, Payment, RefundRequest}};\n\n\
         struct Payments;\n\n\
         {attr}\n\
         impl OrderPayment for Payments {{\n    \
             async fn pay(&self, _: Request<PayRequest>) -> Result<Response<PayResponse>, Status> {{\n        \
                 Ok(Response::new(PayResponse::default()))\n    \
             }}\n    \
             async fn get_payment(&self, _: Request<GetPaymentRequest>) -> Result<Response<Payment>, Status> {{\n        \
                 Ok(Response::new(Payment::default()))\n    \
             }}\n    \
             async fn refund(&self, _: Request<RefundRequest>) -> Result<Response<Payment>, Status> {{\n        \
                 Ok(Response::new(Payment::default()))\n    \
             }}\n\
         }}\n\n{serve}\n"
    )
}
