//! Starting and stopping the service processes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use trellis::Registry;

/// One running service process.
#[derive(Debug)]
struct Instance {
    label: String,
    service: &'static str,
    index: u16,
    args: Vec<String>,
    addr: SocketAddr,
    /// Its admin listener: metrics, health, the status page.
    admin: SocketAddr,
    child: Child,
}

/// The services the demo started.
#[derive(Debug)]
pub(crate) struct Cluster {
    dir: std::path::PathBuf,
    payment: Vec<Instance>,
    shipping: Vec<Instance>,
    status: Instance,
    registry: Registry,
    /// Every address an instance has listened on, with its label.
    labels: std::collections::HashMap<trellis::registry::Endpoint, String>,
    /// How many kills `chaos` has done.
    kills: usize,
}

impl Cluster {
    /// Starts `instances` each of payment and shipping, sharing one database
    /// per service under `dir`, then one order-status. They find each other
    /// through an embedded `local://` registry in `dir`: no addresses are
    /// configured anywhere.
    pub(crate) async fn start(dir: &Path, instances: u16) -> Result<Cluster, String> {
        let url = format!("local://{}", dir.join("registry").display());
        let registry = Registry::from_url(&url).map_err(|e| e.to_string())?;
        let payment_db = format!("payment.database={}", dir.join("payments.sqlite3").display());
        let shipping_db = format!("shipping.database={}", dir.join("shipments.sqlite3").display());
        let mut payment = Vec::new();
        let mut shipping = Vec::new();
        for i in 1..=instances {
            payment.push(spawn(dir, "order-payment", i, &["--registry", &url, "--set", &payment_db]).await?);
            shipping
                .push(spawn(dir, "order-shipping", i, &["--registry", &url, "--set", &shipping_db]).await?);
        }
        let status = spawn(dir, "order-status", 1, &["--registry", &url]).await?;
        let labels = payment
            .iter()
            .chain(&shipping)
            .chain(std::iter::once(&status))
            .map(|i| (i.addr.into(), i.label.clone()))
            .collect();
        Ok(Cluster { dir: dir.to_owned(), payment, shipping, status, registry, labels, kills: 0 })
    }

    /// The label of the instance that listened at `endpoint`.
    pub(crate) fn label_of(&self, endpoint: &trellis::registry::Endpoint) -> String {
        self.labels.get(endpoint).cloned().unwrap_or_else(|| endpoint.to_string())
    }

    /// Kills the next payment or shipping instance with SIGKILL, waits
    /// `down`, and starts it again (on a new port). Returns what happened.
    pub(crate) async fn kill_and_restart(&mut self, down: Duration) -> Result<String, String> {
        let victims = self.payment.len() + self.shipping.len();
        let n = self.kills % victims;
        self.kills += 1;
        let instance = if n < self.payment.len() {
            &mut self.payment[n]
        } else {
            &mut self.shipping[n - self.payment.len()]
        };
        let old = instance.addr;
        let _ = instance.child.start_kill();
        let _ = instance.child.wait().await;
        tokio::time::sleep(down).await;
        let args: Vec<&str> = instance.args.iter().map(String::as_str).collect();
        let restarted = spawn(&self.dir, instance.service, instance.index, &args).await?;
        let message =
            format!("chaos: killed {} at {old} (SIGKILL), restarted at {}", restarted.label, restarted.addr);
        self.labels.insert(restarted.addr.into(), restarted.label.clone());
        *instance = restarted;
        Ok(message)
    }

    /// The registry that names every instance.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One line per instance: its gRPC address and its admin listener.
    pub(crate) fn describe(&self) -> String {
        self.instances()
            .map(|i| {
                format!(
                    "  {:<18} {:<21} status page http://{}/  metrics http://{}/metrics",
                    i.label, i.addr, i.admin, i.admin
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The admin listener of every instance, with its label.
    pub(crate) fn admin_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.instances().map(|i| (i.label.clone(), i.admin)).collect()
    }

    fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.payment.iter().chain(&self.shipping).chain(std::iter::once(&self.status))
    }

    /// Sends SIGTERM to every instance and waits up to `timeout` for each to
    /// drain and exit; kills what is left.
    pub(crate) async fn stop(self, timeout: Duration) {
        let mut all: Vec<Instance> = self.payment.into_iter().chain(self.shipping).collect();
        all.insert(0, self.status);
        for instance in &all {
            if let Some(pid) = instance.child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for mut instance in all {
            match tokio::time::timeout(timeout, instance.child.wait()).await {
                Ok(Ok(status)) if status.success() => println!("  {:<18} stopped", instance.label),
                Ok(Ok(status)) => println!("  {:<18} exited with {status}", instance.label),
                Ok(Err(err)) => println!("  {:<18} cannot be waited for: {err}", instance.label),
                Err(_) => {
                    let _ = instance.child.kill().await;
                    println!("  {:<18} killed after {timeout:?}", instance.label);
                }
            }
        }
    }
}

/// Starts `service` (this binary, in multi-call mode) on a free port and
/// waits for it to log its address. Its log goes to `dir/<label>.log`.
async fn spawn(dir: &Path, service: &'static str, index: u16, args: &[&str]) -> Result<Instance, String> {
    let label = format!("{service}-{index}");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let mut child = Command::new(exe)
        .arg(service)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--set",
            "shutdown.propagation_delay=200ms",
            // One line per call, with its trace id: what the demo's grep finds.
            "--set",
            "log.access=true",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {label}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let log_path = dir.join(format!("{label}.log"));
    let mut log = tokio::fs::File::create(&log_path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut addr_tx = Some(addr_tx);
        let mut admin = None;
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if addr_tx.is_some() {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                // The line that says where it listens names its admin listener too.
                if let Some(addr) = value["admin"].as_str() {
                    admin = Some(addr.to_owned());
                }
                if value["message"] == "listening"
                    && let (Some(tx), Some(addr)) = (addr_tx.take(), value["addr"].as_str())
                {
                    let _ = tx.send((addr.to_owned(), admin.take().unwrap_or_default()));
                }
            }
            let _ = log.write_all(line.as_bytes()).await;
            let _ = log.write_all(b"\n").await;
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
        .await
        .map_err(|_| format!("{label} did not start within 20s; see {}", log_path.display()))?
        .map_err(|_| format!("{label} exited at start; see {}", log_path.display()))?;
    let (addr, admin) = addr;
    let addr = addr.parse().map_err(|e| format!("{label} logged a bad address `{addr}`: {e}"))?;
    let admin = admin.parse().map_err(|e| format!("{label} logged a bad admin address `{admin}`: {e}"))?;
    let args = args.iter().map(|a| (*a).to_owned()).collect();
    Ok(Instance { label, service, index, args, addr, admin, child })
}
