//! The `dns://` registry against a real dnsmasq on loopback: A/AAAA and SRV
//! records, `{service}` names, re-resolution when records change, an
//! unreachable server, bad URLs, and an outage after the first answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid};
use tokio::sync::oneshot;
use trellis::Registry;
use trellis::codegen::Channel;
use trellis::registry::Endpoint;
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::common::v1::Stamp;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::echo::v1::{
    ECHO_DESCRIPTOR, ECHO_SERVICE_NAME, EchoClient, EchoRequest,
};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The name dnsmasq answers for the echo servers.
const NAME: &str = "echo.trellis.test";

/// What one step of a test (a batch of calls, a resolution) may take.
const STEP: Duration = Duration::from_secs(20);

/// A dnsmasq serving a hosts file (and any SRV records) on a free loopback
/// port. Killed when dropped.
struct Dnsmasq {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq answering from `hosts` (lines of `IP NAME`) and the
    /// `--srv-host` values `srv`, authoritative for `trellis.test`.
    fn start(hosts: &str, srv: &[String]) -> Dnsmasq {
        assert!(
            Path::new(DNSMASQ).is_file(),
            "{DNSMASQ} is missing: install it with `apt-get install dnsmasq-base`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).expect("write hosts file");
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("log")).expect("log file");
            let mut command = Command::new(DNSMASQ);
            command
                .args(["--no-daemon", "--keep-in-foreground", "--no-resolv", "--no-hosts"])
                .args(["--bind-interfaces", "--listen-address=127.0.0.1", "--local=/trellis.test/"])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", hosts_path.display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .arg("--conf-file=/dev/null")
                .args(srv.iter().map(|s| format!("--srv-host={s}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            if Uid::effective().is_root() {
                // Otherwise dnsmasq runs as nobody and cannot read the private temp dir.
                command.arg("--user=root");
            }
            let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {DNSMASQ}: {e}"));
            if listening(&mut child, port, &dir.path().join("log")) {
                return Dnsmasq { child, port, dir };
            }
        }
        panic!("dnsmasq found no free port in 5 tries");
    }

    /// The address queries go to, as a `dns://` URL wants it.
    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the hosts file and makes dnsmasq read it again.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(self.dir.path().join("hosts"), hosts).expect("rewrite hosts file");
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"));
        kill(pid, Signal::SIGHUP).expect("SIGHUP dnsmasq");
    }

    /// Kills dnsmasq and waits for it to exit.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True once `child` accepts TCP connections on `port`; false if it exited
/// because the port was taken meanwhile. Panics on any other failure.
fn listening(child: &mut Child, port: u16, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            assert!(log.contains("in use"), "dnsmasq exited with {status}: {log}");
            return false;
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("dnsmasq did not listen on port {port} within 10 s");
}

/// A loopback port free for both UDP and TCP now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind UDP");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP in 100 tries");
}

/// Serves Echo on `addr` until the returned sender is dropped.
async fn serve(addr: SocketAddr) -> Result<(SocketAddr, oneshot::Sender<()>), trellis::Error> {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .listen(addr)
        .add_service(EchoServer::new(EchoService))
        .propagation_delay(Duration::ZERO)
        .shutdown_signal(async {
            let _ = stopped.await;
        })
        .bind()
        .await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    Ok((addr, stop))
}

/// Two Echo servers on one port, at 127.0.0.1 and 127.0.0.2.
async fn serve_pair() -> (u16, [oneshot::Sender<()>; 2]) {
    for _ in 0..10 {
        let (first, stop_first) = serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("serve");
        if let Ok((_, stop_second)) = serve(SocketAddr::from(([127, 0, 0, 2], first.port()))).await {
            return (first.port(), [stop_first, stop_second]);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2 in 10 tries");
}

/// Runs `future`, failing the test if it takes longer than [`STEP`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future).await.unwrap_or_else(|_| panic!("{what} took over {STEP:?}"))
}

/// Makes `n` concurrent unary calls; all must succeed.
async fn call(client: &EchoClient, n: usize) {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut client = client.clone();
        let text = format!("call {i}");
        calls.spawn(async move {
            let stamp = Some(Stamp { text: text.clone(), at: None });
            let reply = client.unary(EchoRequest { stamp, ..EchoRequest::default() }).await;
            (text, reply)
        });
    }
    bounded("the calls", async {
        while let Some(joined) = calls.join_next().await {
            let (text, reply) = joined.expect("call task");
            let reply = reply.unwrap_or_else(|status| panic!("{text} failed: {status:?}")).into_inner();
            assert_eq!(reply.stamp.map(|s| s.text), Some(text));
        }
    })
    .await;
}

/// Calls made so far through `channel`, by endpoint.
fn counts(channel: &Channel) -> BTreeMap<String, u64> {
    channel.calls_per_endpoint().into_iter().map(|(endpoint, n)| (endpoint.to_string(), n)).collect()
}

fn endpoints(addrs: &[&str]) -> BTreeSet<Endpoint> {
    addrs.iter().map(|a| Endpoint::from(a.parse::<SocketAddr>().expect("socket address"))).collect()
}

#[tokio::test]
async fn a_and_aaaa_records_spread_calls_and_follow_changes() {
    let (port, _servers) = serve_pair().await;
    let (one, two) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let dns = Dnsmasq::start(&format!("127.0.0.1 {NAME}\n127.0.0.2 {NAME}\n"), &[]);
    let url = format!("dns://{}/{NAME}:{port}?interval=200ms", dns.server());
    let registry = Registry::from_url(&url).expect("registry");
    let channel = Channel::discover(&registry, &ECHO_DESCRIPTOR).expect("discover");
    let client = EchoClient::new(channel.clone());

    call(&client, 50).await;
    let spread = counts(&channel);
    assert_eq!(spread.values().sum::<u64>(), 50, "{spread:?}");
    assert!(spread.get(&one) > Some(&0) && spread.get(&two) > Some(&0), "both used: {spread:?}");

    // 127.0.0.2 leaves DNS while it still serves: calls stop reaching it.
    dns.set_hosts(&format!("127.0.0.1 {NAME}\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet_batches = 0;
    while quiet_batches < 2 {
        assert!(
            Instant::now() < deadline,
            "calls still reach {two} 10 s after it left DNS: {:?}",
            counts(&channel)
        );
        let before = counts(&channel);
        call(&client, 20).await;
        let after = counts(&channel);
        let delta =
            |endpoint: &String| after.get(endpoint).unwrap_or(&0) - before.get(endpoint).unwrap_or(&0);
        assert_eq!(delta(&one) + delta(&two), 20, "{before:?} -> {after:?}");
        quiet_batches = if delta(&two) == 0 { quiet_batches + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = bounded("resolve", registry.resolve(ECHO_SERVICE_NAME)).await.expect("resolve");
    assert_eq!(fresh.endpoints(), endpoints(&[&one]));
}

#[tokio::test]
async fn srv_records_give_targets_ports_and_weights() {
    let (port, _servers) = serve_pair().await;
    let srv = format!("_echo._tcp.trellis.test,{NAME},{port},0,7");
    let dns = Dnsmasq::start(&format!("127.0.0.1 {NAME}\n127.0.0.2 {NAME}\n"), &[srv]);
    let registry =
        Registry::from_url(&format!("dns://{}/_echo._tcp.trellis.test?interval=200ms", dns.server()))
            .expect("registry");

    let resolution = bounded("resolve", registry.resolve(ECHO_SERVICE_NAME)).await.expect("resolve");
    let (one, two) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    assert_eq!(resolution.endpoints(), endpoints(&[&one, &two]));
    for instance in resolution.current().iter() {
        assert_eq!(instance.id, instance.endpoint.to_string());
        assert_eq!((instance.service.as_str(), instance.metadata.weight), (ECHO_SERVICE_NAME, 7));
    }
    call(&EchoClient::discover(&registry).expect("discover"), 20).await;

    // An SRV name without records is no instances, not an error.
    let none = Registry::from_url(&format!("dns://{}/_none._tcp.trellis.test", dns.server())).expect("url");
    let empty = bounded("resolve", none.resolve(ECHO_SERVICE_NAME)).await.expect("NXDOMAIN is no error");
    assert!(empty.current().is_empty(), "{:?}", empty.current());
}

#[tokio::test]
async fn service_placeholder_looks_up_one_name_per_service() {
    let (addr, _server) = serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("serve");
    let dns = Dnsmasq::start("127.0.0.1 trellis-test-echo-v1-echo.trellis.test\n", &[]);
    let url = format!("dns://{}/{{service}}.trellis.test:{}?interval=200ms", dns.server(), addr.port());
    let registry = Registry::from_url(&url).expect("registry");

    let echo = bounded("resolve", registry.resolve(ECHO_SERVICE_NAME)).await.expect("resolve");
    assert_eq!(echo.endpoints(), endpoints(&[&addr.to_string()]));
    let other = bounded("resolve", registry.resolve("trellis.test.other.v1.Other")).await.expect("resolve");
    assert!(other.current().is_empty(), "no record for other: {:?}", other.current());
    call(&EchoClient::discover(&registry).expect("discover"), 10).await;
}

#[tokio::test]
async fn an_unreachable_server_and_bad_urls_are_errors_naming_the_url() {
    let closed = free_port();
    let url = format!("dns://127.0.0.1:{closed}/x.test:1");
    let registry = Registry::from_url(&url).expect("parsing contacts nothing");
    let started = Instant::now();
    let err = bounded("resolve", registry.resolve(ECHO_SERVICE_NAME)).await.expect_err("nothing answers");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("unreachable"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10), "short timeouts: took {:?}", started.elapsed());

    for (url, needle) in [
        ("dns://127.0.0.1:53/echo.trellis.test", "has no port"),
        ("dns://127.0.0.1:53/_echo._tcp.trellis.test:50051", "remove `:PORT`"),
        ("dns://127.0.0.1:53/echo.trellis.test:1?refresh=1s", "unknown option `refresh`"),
    ] {
        let msg = Registry::from_url(url).expect_err(url).to_string();
        assert!(msg.contains(url) && msg.contains(needle), "{url}: {msg}");
    }
}

#[tokio::test]
async fn an_outage_keeps_the_last_known_instances() {
    let (addr, _server) = serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("serve");
    let mut dns = Dnsmasq::start(&format!("127.0.0.1 {NAME}\n"), &[]);
    let url = format!("dns://{}/{NAME}:{}?interval=200ms", dns.server(), addr.port());
    let registry = Registry::from_url(&url).expect("registry");
    let resolution = bounded("resolve", registry.resolve(ECHO_SERVICE_NAME)).await.expect("resolve");
    let client = EchoClient::discover(&registry).expect("discover");
    call(&client, 10).await;

    dns.stop();
    let err = bounded("resolve", registry.resolve(ECHO_SERVICE_NAME)).await.expect_err("dnsmasq is gone");
    assert!(err.to_string().contains("unreachable"), "{err}");
    // Several intervals of failed lookups later, nothing was forgotten.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(resolution.endpoints(), endpoints(&[&addr.to_string()]));
        call(&client, 5).await;
    }
}
