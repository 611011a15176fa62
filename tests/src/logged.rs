//! Service processes whose log goes to a file, in text or JSON, for tests
//! that read every line a service wrote.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::{START_TIMEOUT, bin};

/// A service process logging to a file. Killed when dropped.
#[derive(Debug)]
pub struct LoggedService {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl LoggedService {
    /// Starts binary `name` with `args` on a free loopback port, logging in
    /// `format` (`text` or `json`) to `log`, and waits until it listens.
    pub async fn start(name: &str, format: &str, log: &Path, args: &[&str]) -> LoggedService {
        let args: Vec<&str> = ["--set", "log.level=info"].iter().chain(args).copied().collect();
        Self::start_with_env(name, format, log, &args, &[]).await
    }

    /// [`start`](Self::start) with `env` set and no `log.level` of its own,
    /// so that `RUST_LOG` in `env` is the level.
    pub async fn start_with_env(
        name: &str,
        format: &str,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> LoggedService {
        let file =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = Command::new(bin(name))
            .args(["--listen", "127.0.0.1:0", "--log-format", format])
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut service = LoggedService { child, addr: ([0, 0, 0, 0], 0).into(), log: log.to_owned() };
        let started = tokio::time::Instant::now();
        loop {
            if let Some(addr) = service.lines().iter().find_map(|line| listening_addr(line)) {
                service.addr = addr;
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("{name} exited with {status} before listening:\n{}", service.lines().join("\n"));
            }
            assert!(started.elapsed() < START_TIMEOUT, "{name} did not listen within {START_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the service listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Every line logged so far that is a JSON object.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Stops the service with SIGTERM and waits for it to exit, so that
    /// its log is complete.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the service exits within 20s of SIGTERM")
            .expect("wait");
        assert!(status.success(), "the service exited with {status}:\n{}", self.lines().join("\n"));
    }
}

/// The address in a `listening` line, text or JSON.
fn listening_addr(line: &str) -> Option<std::net::SocketAddr> {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        return (value["message"] == "listening").then(|| value["addr"].as_str()?.parse().ok()).flatten();
    }
    let rest = line.split_once(": listening addr=")?.1;
    rest.split_whitespace().next()?.parse().ok()
}
