//! Support for the end-to-end tests: real service processes on loopback.
//!
//! The service binaries are found next to the test binary's own directory
//! (`target/debug`); `./scripts/test` builds them before running the tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub mod fakes;
pub mod h2raw;
pub mod logged;
pub mod registries;
pub mod scrape;

/// The generated code of the test protos.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    ::trellis::include_protos!();
}

/// A `Deep` service that answers with its own port in `level`, so a test
/// sees which instance answered.
#[derive(Debug)]
pub struct Whoami(pub u16);

#[trellis::async_trait]
impl proto::trellis::test::nested::deep::v1::deep_server::Deep for Whoami {
    async fn dive(
        &self,
        _request: trellis::Request<proto::trellis::test::nested::deep::v1::Depth>,
    ) -> Result<trellis::Response<proto::trellis::test::nested::deep::v1::Depth>, trellis::Status> {
        Ok(trellis::Response::new(proto::trellis::test::nested::deep::v1::Depth {
            level: u32::from(self.0),
            inner: None,
        }))
    }
}

/// The `Echo` test service: every streaming kind, each reply echoing its
/// request with its index in the exchange.
#[derive(Debug, Default)]
pub struct EchoService;

use proto::trellis::test::echo::v1::{EchoReply, EchoRequest};

type ReplyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, trellis::Status>> + Send>>;

fn reply(req: &EchoRequest, index: u32) -> EchoReply {
    EchoReply { stamp: req.stamp.clone(), index, note: req.note.clone(), depth: req.depth }
}

#[trellis::async_trait]
impl proto::trellis::test::echo::v1::echo_server::Echo for EchoService {
    async fn unary(
        &self,
        request: trellis::Request<EchoRequest>,
    ) -> Result<trellis::Response<EchoReply>, trellis::Status> {
        Ok(trellis::Response::new(reply(request.get_ref(), 0)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: trellis::Request<EchoRequest>,
    ) -> Result<trellis::Response<ReplyStream>, trellis::Status> {
        let req = request.into_inner();
        let replies: Vec<_> = (0..req.repeat).map(|i| Ok(reply(&req, i))).collect();
        Ok(trellis::Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        request: trellis::Request<trellis::Streaming<EchoRequest>>,
    ) -> Result<trellis::Response<EchoReply>, trellis::Status> {
        use tokio_stream::StreamExt;
        let mut stream = request.into_inner();
        let mut count = 0;
        let mut last = None;
        while let Some(req) = stream.next().await {
            last = Some(req?);
            count += 1;
        }
        let last = last.ok_or_else(|| trellis::Status::invalid_argument("empty stream"))?;
        Ok(trellis::Response::new(reply(&last, count)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: trellis::Request<trellis::Streaming<EchoRequest>>,
    ) -> Result<trellis::Response<ReplyStream>, trellis::Status> {
        use tokio_stream::StreamExt;
        let mut next = 0;
        let replies = request.into_inner().map(move |req| {
            let index = next;
            next += 1;
            req.map(|req| reply(&req, index))
        });
        Ok(trellis::Response::new(Box::pin(replies)))
    }

    async fn ping(&self, _request: trellis::Request<()>) -> Result<trellis::Response<()>, trellis::Status> {
        Ok(trellis::Response::new(()))
    }
}

/// How long a service may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the workspace binary `name` (such as `order-payment`).
///
/// # Panics
///
/// If the binary was not built: run the tests with `./scripts/test`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with ./scripts/test, which builds the service binaries first",
        path.display()
    );
    path
}

/// A service process started for a test. Killed when dropped.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    addr: std::net::SocketAddr,
    rest: Option<std::net::SocketAddr>,
    admin: Option<std::net::SocketAddr>,
    logs: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Service {
    /// Starts binary `name` with `args` on a free loopback port, with JSON
    /// logs, and waits until it listens.
    pub async fn start(name: &str, args: &[&str]) -> Service {
        Self::start_with_env(name, args, &[]).await
    }

    /// [`start`](Self::start), with extra environment variables.
    pub async fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut child = Command::new(bin(name))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--set", "log.level=info"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, mut logs) = mpsc::unbounded_channel();
        let label = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(value) => {
                        let _ = tx.send(value);
                    }
                    Err(_) => eprintln!("[{label}] {line}"),
                }
            }
        });
        let (addr, rest, admin) = tokio::time::timeout(START_TIMEOUT, async {
            let mut said = Vec::new();
            while let Some(line) = logs.recv().await {
                if line["message"] == "listening" {
                    let addr = line["addr"].as_str().expect("addr field");
                    let field = |key: &str| line[key].as_str().map(|a| a.parse().expect("socket address"));
                    return (addr.parse().expect("socket address"), field("rest"), field("admin"));
                }
                said.push(line.to_string());
            }
            panic!("{name} exited before listening; it said:\n{}", said.join("\n"));
        })
        .await
        .unwrap_or_else(|_| panic!("{name} did not start listening within {START_TIMEOUT:?}"));
        Service { name: name.to_owned(), child, addr, rest, admin, logs }
    }

    /// Where the service listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Where REST listens when it has a listener of its own (`--rest-listen`).
    pub fn rest_addr(&self) -> Option<std::net::SocketAddr> {
        self.rest
    }

    /// Where the admin listener is, when it has one (`--admin-listen`).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin
    }

    /// The process id, to read its memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// `http://addr`, for a raw channel.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A raw tonic channel to this instance (for health and reflection).
    pub async fn channel(&self) -> trellis::codegen::tonic::transport::Channel {
        trellis::codegen::tonic::transport::Endpoint::from_shared(self.uri())
            .expect("uri")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {} at {}: {e}", self.name, self.addr))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("process is running");
        let pid = i32::try_from(pid).expect("pid fits in i32");
        kill(Pid::from_raw(pid), signal).expect("kill");
    }

    /// Waits for the process to exit and returns whether it succeeded.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.name))
            .expect("wait")
    }

    /// Waits for the log event that ends a call to `method` (a path such as
    /// `/pkg.Service/Method`), with its `status`, `duration_ms` and `timeout_ms`.
    pub async fn wait_for_call(&mut self, method: &str, timeout: Duration) -> serde_json::Value {
        tokio::time::timeout(timeout, async {
            while let Some(line) = self.logs.recv().await {
                let ends_call = line["message"] == "call finished" || line["message"] == "call failed";
                if ends_call && line["rpc.method"] == method {
                    return line;
                }
            }
            panic!("{} exited before logging the end of {method}", self.name);
        })
        .await
        .unwrap_or_else(|_| panic!("{} logged no end of {method} within {timeout:?}", self.name))
    }

    /// Waits for a log line whose `message` is `message`.
    pub async fn wait_for_log(&mut self, message: &str, timeout: Duration) -> serde_json::Value {
        tokio::time::timeout(timeout, async {
            while let Some(line) = self.logs.recv().await {
                if line["message"] == message {
                    return line;
                }
            }
            panic!("{} exited before logging {message:?}", self.name);
        })
        .await
        .unwrap_or_else(|_| panic!("{} did not log {message:?} within {timeout:?}", self.name))
    }
}

/// A `static://` registry URL for `services` (full name, address).
pub fn static_registry(services: &[(&str, &[&Service])]) -> String {
    let entries: Vec<String> = services
        .iter()
        .map(|(name, instances)| {
            let addrs: Vec<String> = instances.iter().map(|s| s.addr().to_string()).collect();
            format!("{name}={}", addrs.join(","))
        })
        .collect();
    format!("static://{}", entries.join(";"))
}
