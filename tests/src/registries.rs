//! Real registries for the registry contract suite: a one-member etcd and a
//! dnsmasq, each a child process on loopback that can be stopped and
//! started again to stage an outage; and a capture of what Trellis logs.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ETCD: &str = "/usr/bin/etcd";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// An HTTP/1.0 exchange with `127.0.0.1:port`: the body of the answer.
pub async fn http(port: u16, request: &str, body: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let head = format!("{request} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(format!("{head}{body}").as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response.split_once("\r\n\r\n")?.1.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), exchange).await.ok().flatten()
}

/// A one-member etcd (Debian's `etcd-server`), killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it is healthy.
    ///
    /// # Panics
    ///
    /// If etcd is missing or does not become healthy in 20 s.
    pub async fn start() -> Etcd {
        assert!(Path::new(ETCD).is_file(), "{ETCD} is missing: apt-get install etcd-server");
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            process: None,
        };
        etcd.restart().await;
        etcd
    }

    /// `etcd://127.0.0.1:PORT` plus `query`.
    pub fn url(&self, query: &str) -> String {
        format!("etcd://127.0.0.1:{}{query}", self.client_port)
    }

    /// Kills etcd (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it is healthy.
    ///
    /// # Panics
    ///
    /// If it does not become healthy in 20 s.
    pub async fn restart(&mut self) {
        self.stop();
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::File::options().create(true).append(true).open(&log_path).expect("etcd log");
        let (client, peer) = (
            format!("http://127.0.0.1:{}", self.client_port),
            format!("http://127.0.0.1:{}", self.peer_port),
        );
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let process = Command::new(ETCD)
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}"), "--initial-cluster-state", "new"])
            .env("ETCD_UNSUPPORTED_ARCH", arch)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e} (apt-get install etcd-server)"));
        self.process = Some(process);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if http(self.client_port, "GET /health", "")
                .await
                .is_some_and(|b| b.contains(r#""health":"true""#))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not become healthy: {}", std::fs::read_to_string(log_path).unwrap_or_default());
    }

    /// Puts `value` at `key` through etcd's JSON gateway.
    ///
    /// # Panics
    ///
    /// If etcd does not take it.
    pub async fn put(&self, key: &str, value: &str) {
        let (key, value) = (base64_encode(key.as_bytes()), base64_encode(value.as_bytes()));
        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
        let answer = http(self.client_port, "POST /v3/kv/put", &body).await.expect("etcd answers");
        assert!(answer.contains("header"), "etcd refused the put: {answer}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard base64, for etcd's JSON gateway.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A dnsmasq answering from a hosts file on a free loopback port,
/// authoritative for `trellis.test`; killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq answering from `hosts` (lines of `IP NAME`).
    ///
    /// # Panics
    ///
    /// If dnsmasq is missing or does not start.
    pub fn start(hosts: &str) -> Dnsmasq {
        assert!(Path::new(DNSMASQ).is_file(), "{DNSMASQ} is missing: apt-get install dnsmasq-base");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hosts"), hosts).expect("hosts file");
        let mut dnsmasq = Dnsmasq { dir, port: 0, child: None };
        for _ in 0..5 {
            dnsmasq.port = free_port();
            if dnsmasq.spawn() {
                return dnsmasq;
            }
        }
        panic!("dnsmasq found no free port in 5 tries");
    }

    /// The server part of a `dns://` URL: `127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the hosts file and makes dnsmasq read it again.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(self.dir.path().join("hosts"), hosts).expect("hosts file");
        if let Some(child) = &self.child {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            kill(pid, Signal::SIGHUP).expect("SIGHUP dnsmasq");
        }
    }

    /// Kills dnsmasq.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts dnsmasq again on the same port.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "dnsmasq could not listen on port {} again", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Starts dnsmasq on `self.port`; false if the port was taken.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.log()).expect("log file");
        let mut command = Command::new(DNSMASQ);
        command
            .args(["--no-daemon", "--keep-in-foreground", "--no-resolv", "--no-hosts"])
            .args(["--bind-interfaces", "--listen-address=127.0.0.1", "--local=/trellis.test/"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--addn-hosts={}", self.dir.path().join("hosts").display()))
            .arg(format!("--pid-file={}", self.dir.path().join("pid").display()))
            .arg("--conf-file=/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if Uid::effective().is_root() {
            command.arg("--user=root");
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {DNSMASQ}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dnsmasq did not listen: {}", std::fs::read_to_string(self.log()).unwrap_or_default());
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What is logged on the current thread while the guard lives (a
/// current-thread runtime runs its tasks on it).
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures the logs of this thread until the guard is dropped.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).lines().filter(|l| l.contains(needle)).count()
    }

    /// Everything captured.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `text` to `path` (for malformed entries).
///
/// # Panics
///
/// If it cannot.
pub fn write_file(path: &Path, text: &str) {
    std::fs::File::create(path).and_then(|mut f| f.write_all(text.as_bytes())).expect("write file");
}
