//! `trellis up`: runs every service binary of a workspace, N instances each,
//! on one embedded `local://` registry, with each process's log lines
//! prefixed by its name; on Ctrl-C drains and stops them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::error::Error;

/// How long an instance may take to listen and report SERVING.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an instance may take to drain and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `trellis up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// The workspace (or any folder in it) [default: .]
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Instances of each service
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    instances: u16,
    /// Run only these packages' binaries (repeatable)
    #[arg(long, short, value_name = "PACKAGE")]
    package: Vec<String>,
    /// Use the binaries as built, without `cargo build` first
    #[arg(long)]
    no_build: bool,
    /// The registry every instance registers in [default: local:// in TARGET/trellis-up/registry]
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
}

/// A service binary of the workspace.
#[derive(Debug)]
struct Binary {
    name: String,
    package: String,
    path: PathBuf,
}

/// `trellis up`.
pub(crate) fn run(args: &UpArgs) -> Result<ExitCode, Error> {
    let workspace = Workspace::read(&args.dir)?;
    let mut candidates = workspace.service_packages(&args.package)?;
    if !args.no_build {
        let mut cargo = std::process::Command::new("cargo");
        cargo.arg("build").arg("--bins").current_dir(&workspace.root);
        for (package, _) in &candidates {
            cargo.arg("-p").arg(package);
        }
        eprintln!(
            "trellis up: building {}",
            candidates.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")
        );
        let status = cargo.status().map_err(|e| Error::msg(format!("cannot run cargo: {e}")))?;
        if !status.success() {
            return Err(Error::msg(
                "cargo build failed; fix the build, or pass --no-build to run what is built",
            ));
        }
    }
    let bin_dir = workspace.target.join("debug");
    let mut binaries = Vec::new();
    for (package, bins) in candidates.drain(..) {
        for name in bins {
            let path = bin_dir.join(&name);
            if !path.is_file() {
                eprintln!(
                    "trellis up: {} is not built; skipped (run without --no-build, or `cargo build -p {package}`)",
                    path.display()
                );
                continue;
            }
            // A Trellis service binary has the command line every App gives.
            let help = std::process::Command::new(&path).arg("--help").output();
            let is_service = help.is_ok_and(|out| {
                let text = String::from_utf8_lossy(&out.stdout);
                text.contains("--registry") && text.contains("--listen") && text.contains("--set")
            });
            if is_service {
                binaries.push(Binary { name, package: package.clone(), path });
            } else if !args.package.is_empty() {
                eprintln!(
                    "trellis up: {name} is not a Trellis service binary (no --registry in --help); skipped"
                );
            }
        }
    }
    if binaries.is_empty() {
        return Err(Error::usage(format!(
            "no Trellis service binary in the workspace {}: a service is a package depending on trellis and \
             trellis-build with a binary built on trellis::App",
            workspace.root.display()
        )));
    }
    let run_dir = workspace.target.join("trellis-up");
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io("create", &run_dir, e))?;
    let registry =
        args.registry.clone().unwrap_or_else(|| format!("local://{}", run_dir.join("registry").display()));
    trellis::Registry::from_url(&registry).map_err(|e| Error::usage(e.to_string()))?;
    crate::runtime()?.block_on(supervise(binaries, args.instances, &registry, &run_dir))
}

/// One running instance.
#[derive(Debug)]
struct Running {
    label: String,
    child: Child,
    addr: Option<SocketAddr>,
}

async fn supervise(
    binaries: Vec<Binary>,
    instances: u16,
    registry: &str,
    run_dir: &Path,
) -> Result<ExitCode, Error> {
    let width = binaries.iter().map(|b| b.name.len()).max().unwrap_or(0) + 3;
    let (events, mut listening) = mpsc::unbounded_channel::<(usize, SocketAddr)>();
    let mut running = Vec::new();
    for binary in &binaries {
        for i in 1..=instances {
            let label = format!("{}-{i}", binary.name);
            let mut child = Command::new(&binary.path)
                .args(["--listen", "127.0.0.1:0", "--registry", registry, "--log-format", "json"])
                .current_dir(run_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    Error::msg(format!("cannot start {} ({}): {e}", binary.path.display(), binary.package))
                })?;
            let index = running.len();
            for stream in [child.stdout.take().map(either_out), child.stderr.take().map(either_err)]
                .into_iter()
                .flatten()
            {
                let label = format!("{label:<width$}");
                let events = events.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let (text, addr) = render_line(&line);
                        if let Some(addr) = addr {
                            let _ = events.send((index, addr));
                        }
                        println!("{label}| {text}");
                    }
                });
            }
            running.push(Running { label, child, addr: None });
        }
    }
    drop(events);

    // Wait until each instance listens and says SERVING.
    let ready = async {
        let mut waiting = running.len();
        while waiting > 0 {
            let Some((index, addr)) = listening.recv().await else { break };
            if running[index].addr.is_none() {
                running[index].addr = Some(addr);
                waiting -= 1;
            }
        }
        waiting
    };
    let stop = trellis::server::termination_signal();
    tokio::pin!(stop);
    tokio::select! {
        waiting = tokio::time::timeout(START_TIMEOUT, ready) => match waiting {
            Ok(0) => {}
            _ => {
                let missing: Vec<&str> = running.iter().filter(|r| r.addr.is_none()).map(|r| r.label.as_str()).collect();
                eprintln!("trellis up: {} did not start listening within {START_TIMEOUT:?}; stopping all", missing.join(", "));
                shutdown(&mut running).await;
                return Ok(ExitCode::FAILURE);
            }
        },
        () = &mut stop => {
            shutdown(&mut running).await;
            return Ok(ExitCode::FAILURE);
        }
    }
    let mut serving = 0;
    for instance in &running {
        let addr = instance.addr.expect("every instance listens");
        match health(addr).await {
            Ok(status) if status == "SERVING" => serving += 1,
            Ok(status) => eprintln!("trellis up: {} at {addr} is {status}", instance.label),
            Err(err) => eprintln!("trellis up: {} at {addr}: health check failed: {err}", instance.label),
        }
    }
    eprintln!("trellis up: {serving} of {} instance(s) SERVING on {registry}", running.len());
    for instance in &running {
        eprintln!("trellis up:   {:<width$} {}", instance.label, instance.addr.expect("listening"));
    }
    eprintln!("trellis up: Ctrl-C drains and stops them all");

    // Run until a signal, or until every instance has exited.
    let all_exited = async {
        loop {
            let mut alive = 0;
            for instance in running.iter_mut() {
                if matches!(instance.child.try_wait(), Ok(None)) {
                    alive += 1;
                }
            }
            if alive == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        () = &mut stop => {}
        () = all_exited => {
            eprintln!("trellis up: every instance exited");
            return Ok(ExitCode::FAILURE);
        }
    }
    let clean = shutdown(&mut running).await;
    Ok(if clean && serving == running.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Sends SIGINT to every instance and waits for each to drain and exit;
/// kills what is left after [`STOP_TIMEOUT`]. Whether all exited cleanly.
async fn shutdown(running: &mut [Running]) -> bool {
    eprintln!("trellis up: stopping {} instance(s): they drain, then exit", running.len());
    for instance in running.iter() {
        if let Some(pid) = instance.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
    }
    let mut clean = true;
    for instance in running.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, instance.child.wait()).await {
            Ok(Ok(status)) if status.success() => eprintln!("trellis up: {} stopped cleanly", instance.label),
            Ok(Ok(status)) => {
                clean = false;
                eprintln!("trellis up: {} exited with {status}", instance.label);
            }
            Ok(Err(err)) => {
                clean = false;
                eprintln!("trellis up: cannot wait for {}: {err}", instance.label);
            }
            Err(_) => {
                clean = false;
                eprintln!("trellis up: {} did not exit within {STOP_TIMEOUT:?}; killing it", instance.label);
                let _ = instance.child.kill().await;
            }
        }
    }
    clean
}

async fn health(addr: SocketAddr) -> Result<String, String> {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map_err(|s| s.message().to_owned())?;
        Ok(reply.into_inner().status().as_str_name().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), check).await.map_err(|_| "no answer within 5s".to_owned())?
}

type Output = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;

fn either_out(s: tokio::process::ChildStdout) -> Output {
    Box::pin(s)
}

fn either_err(s: tokio::process::ChildStderr) -> Output {
    Box::pin(s)
}

/// A JSON log line as one readable line, and the address of a `listening` event.
fn render_line(line: &str) -> (String, Option<SocketAddr>) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(line) else {
        return (line.to_owned(), None);
    };
    let message = fields.get("message").and_then(|m| m.as_str()).unwrap_or("");
    let level = fields.get("level").and_then(|l| l.as_str()).unwrap_or("");
    let mut text = format!("{level:>5} {message}");
    for (key, value) in &fields {
        if ["message", "level", "timestamp", "target", "span", "spans", "threadId"].contains(&key.as_str()) {
            continue;
        }
        match value {
            serde_json::Value::String(s) => text.push_str(&format!(" {key}={s}")),
            other => text.push_str(&format!(" {key}={other}")),
        }
    }
    let addr = (message == "listening")
        .then(|| fields.get("addr").and_then(|a| a.as_str()).and_then(|a| a.parse().ok()))
        .flatten();
    (text, addr)
}

/// What `cargo metadata` says about a workspace.
#[derive(Debug)]
struct Workspace {
    root: PathBuf,
    target: PathBuf,
    packages: Vec<serde_json::Value>,
}

impl Workspace {
    fn read(dir: &Path) -> Result<Workspace, Error> {
        let out = std::process::Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
            .current_dir(dir)
            .output()
            .map_err(|e| Error::msg(format!("cannot run cargo metadata: {e}")))?;
        if !out.status.success() {
            return Err(Error::usage(format!(
                "{} is not in a Cargo workspace: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| Error::msg(format!("cannot read cargo metadata's output: {e}")))?;
        let path = |key: &str| PathBuf::from(meta[key].as_str().unwrap_or_default());
        Ok(Workspace {
            root: path("workspace_root"),
            target: path("target_directory"),
            packages: meta["packages"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// The packages depending on trellis and building protos with
    /// trellis-build, with their binaries; only `only` if given.
    fn service_packages(&self, only: &[String]) -> Result<Vec<(String, Vec<String>)>, Error> {
        for name in only {
            if !self.packages.iter().any(|p| p["name"] == name.as_str()) {
                return Err(Error::usage(format!(
                    "--package {name}: no such package in {}",
                    self.root.display()
                )));
            }
        }
        let mut out = Vec::new();
        for package in &self.packages {
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            if !only.is_empty() && !only.contains(&name) {
                continue;
            }
            let deps = package["dependencies"].as_array().cloned().unwrap_or_default();
            let has = |dep: &str, kind: Option<&str>| {
                deps.iter().any(|d| d["name"] == dep && d["kind"].as_str() == kind)
            };
            if !(has("trellis", None) && has("trellis-build", Some("build"))) {
                continue;
            }
            let bins: Vec<String> = package["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect();
            if !bins.is_empty() {
                out.push((name, bins));
            }
        }
        Ok(out)
    }
}
