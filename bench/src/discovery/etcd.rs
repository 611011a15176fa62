//! A single-node etcd on loopback, run as a child process for the discovery
//! scenario and killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where Debian's `etcd-server` installs etcd.
pub(crate) const BINARY: &str = "/usr/bin/etcd";

/// How long etcd may take to answer after it starts.
const START: Duration = Duration::from_secs(20);

/// A running etcd with its data in a temporary directory.
#[derive(Debug)]
pub(crate) struct Etcd {
    process: Child,
    client_port: u16,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it is healthy.
    ///
    /// # Errors
    ///
    /// When etcd is not installed, does not start, or is not healthy in time;
    /// the message says which, with the end of etcd's log.
    pub(crate) async fn start() -> Result<Etcd, String> {
        if !Path::new(BINARY).is_file() {
            return Err(format!("{BINARY} is missing (apt-get install etcd-server)"));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a directory for etcd: {e}"))?;
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create etcd's log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot open etcd's log: {e}"))?;
        let (client_port, peer_port) = (crate::free_addr().port(), crate::free_addr().port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        // etcd runs under a shell that first starts a watchdog, then becomes
        // etcd (same pid). The watchdog kills etcd if this process dies
        // without dropping `Etcd` (SIGKILL, abort), so etcd never outlives
        // the bench; it ends by itself once etcd is gone.
        let watchdog = r#"bench=$1; shift
            (while kill -0 "$bench" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 0.2; done
             kill -9 $$ 2>/dev/null) </dev/null &
            exec "$@""#;
        let process = Command::new("/bin/sh")
            .args(["-c", watchdog, "sh", &std::process::id().to_string(), BINARY])
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}"), "--initial-cluster-state", "new"])
            .env("ETCD_UNSUPPORTED_ARCH", go_arch())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {BINARY} through /bin/sh: {e}"))?;
        let mut etcd = Etcd { process, client_port, _dir: dir };
        let start = Instant::now();
        while start.elapsed() < START {
            if let Ok(Some(status)) = etcd.process.try_wait() {
                return Err(format!("etcd exited ({status}); its log ends:\n{}", tail(&log_path)));
            }
            if health(client_port).await.is_some_and(|body| body.contains(r#""health":"true""#)) {
                return Ok(etcd);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        etcd.kill();
        Err(format!("etcd not healthy within {START:?}; its log ends:\n{}", tail(&log_path)))
    }

    /// The registry URL of this etcd, with `query` such as `?ttl=3s`.
    /// Where its clients connect, for an etcd client of the bench's own.
    pub(crate) fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub(crate) fn url(&self, query: &str) -> String {
        format!("etcd://127.0.0.1:{}{query}", self.client_port)
    }

    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// etcd's name for this machine's architecture, for `ETCD_UNSUPPORTED_ARCH`.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The last lines of the log at `path`.
fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The body of etcd's `GET /health` on `port`; `None` if it does not answer.
/// HTTP/1.0, so never chunked.
async fn health(port: u16) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response.split_once("\r\n\r\n")?.1.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}
