//! The `etcd://` registry against a real etcd (Debian's `etcd-server`,
//! `/usr/bin/etcd`) on loopback: registration and deregistration, lease
//! expiry, re-registration after a lost lease, instances sharing an endpoint,
//! traffic through an etcd outage, the loss of a cluster member, and an etcd
//! that is not there.
#![cfg(feature = "etcd")]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use trellis::registry::{Endpoint, Instance, Metadata, Resolution};
use trellis::{Registry, Request};
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::echo::v1::{
    ECHO_DESCRIPTOR, ECHO_SERVICE_NAME, EchoClient, EchoRequest,
};
use trellis_tests::registries::{free_port, http};

const ETCD: &str = "/usr/bin/etcd";

/// How long etcd may take to answer after it starts.
const ETCD_START: Duration = Duration::from_secs(20);

/// How long any one test may take.
const TEST_BOUND: Duration = Duration::from_secs(90);

/// An etcd cluster of child processes on loopback, killed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
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

impl Cluster {
    /// Starts `size` members and waits until each answers.
    async fn start(size: usize) -> Cluster {
        assert!(Path::new(ETCD).is_file(), "{ETCD} is missing: apt-get install etcd-server");
        let members = (1..=size)
            .map(|n| Member {
                name: format!("n{n}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let mut cluster = Cluster { dir: tempfile::tempdir().expect("tempdir"), members };
        for member in 0..size {
            cluster.spawn(member);
        }
        for member in 0..size {
            cluster.wait_healthy(member).await;
        }
        cluster
    }

    /// `etcd://` with every member, then `query`.
    fn url(&self, query: &str) -> String {
        let members: Vec<String> =
            self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
        format!("etcd://{}{query}", members.join(","))
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[member].name))
    }

    /// Starts `member` on its ports and data dir (new or left by a previous run).
    fn spawn(&mut self, member: usize) {
        let initial_cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path(member))
            .expect("etcd log file");
        let m = &self.members[member];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let data_dir = self.dir.path().join(&m.name);
        let process = Command::new(ETCD)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster.join(","), "--initial-cluster-state", "new"])
            .env("ETCD_UNSUPPORTED_ARCH", go_arch())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e} (apt-get install etcd-server)"));
        self.members[member].process = Some(process);
    }

    /// Waits until `member` reports itself healthy (it has a leader and serves reads).
    async fn wait_healthy(&self, member: usize) {
        let port = self.members[member].client_port;
        let start = Instant::now();
        while start.elapsed() < ETCD_START {
            if http(port, "GET /health", "").await.is_some_and(|body| body.contains(r#""health":"true""#)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("etcd member {member} not healthy within {ETCD_START:?}; its log ends:\n{}", tail.join("\n"));
    }

    /// Kills `member` with SIGKILL and reaps it.
    fn kill(&mut self, member: usize) {
        if let Some(mut process) = self.members[member].process.take() {
            let pid = Pid::from_raw(i32::try_from(process.id()).expect("pid fits in i32"));
            let _ = kill(pid, Signal::SIGKILL);
            let _ = process.wait();
        }
    }

    /// Starts `member` again on the same ports and data dir, and waits until it answers.
    async fn restart(&mut self, member: usize) {
        self.spawn(member);
        self.wait_healthy(member).await;
    }

    /// The ids of the leases etcd holds, through its JSON gateway.
    async fn leases(&self) -> Vec<String> {
        let body =
            http(self.members[0].client_port, "POST /v3/lease/leases", "{}").await.expect("lease list");
        let json: serde_json::Value = serde_json::from_str(&body).expect("lease list is JSON");
        let leases = json["leases"].as_array().cloned().unwrap_or_default();
        leases.iter().map(|l| l["ID"].as_str().expect("lease ID").to_owned()).collect()
    }

    /// The member that leads the cluster now.
    async fn leader(&self) -> usize {
        for (n, member) in self.members.iter().enumerate() {
            let metrics = http(member.client_port, "GET /metrics", "").await.unwrap_or_default();
            if metrics.lines().any(|line| line == "etcd_server_is_leader 1") {
                return n;
            }
        }
        panic!("no etcd member says it leads");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
    }
}

/// Serves Echo on a free loopback port until the sender is dropped.
async fn serve_echo() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .propagation_delay(Duration::ZERO)
        .shutdown_signal(async {
            let _ = stopped.await;
        })
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    (addr, stop)
}

fn echo_instance(addr: SocketAddr) -> Instance {
    Instance::new(ECHO_SERVICE_NAME, Endpoint::from(addr), Metadata::default())
}

/// Waits until the instances `resolution` follows satisfy `done`; panics
/// after `bound`, showing them.
async fn wait_for(resolution: &mut Resolution, bound: Duration, done: impl Fn(&[Instance]) -> bool) {
    let waited = tokio::time::timeout(bound, async {
        while !done(&resolution.current()) {
            resolution.changed().await.expect("the resolution ended");
        }
    })
    .await;
    assert!(waited.is_ok(), "not reached within {bound:?}; instances: {:?}", resolution.current());
}

/// Runs `test`, failing it if it takes longer than [`TEST_BOUND`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_BOUND, test).await.expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_seen_and_so_is_its_deregistration() {
    bounded(async {
        let etcd = Cluster::start(1).await;
        let registry = Registry::from_url(&etcd.url("")).expect("registry");
        let mut resolution = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve");
        assert!(resolution.current().is_empty());
        let (addr, _stop) = serve_echo().await;

        let start = Instant::now();
        let lease = registry.register(echo_instance(addr)).await.expect("register");
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 1).await;
        let seen = start.elapsed();
        assert_eq!(resolution.current()[0].endpoint, Endpoint::from(addr));

        // A client finds the instance through etcd and calls it.
        let mut client = EchoClient::discover(&registry).expect("discover");
        client.ping(()).await.expect("ping through etcd discovery");

        let start = Instant::now();
        lease.deregister().await.expect("deregister");
        wait_for(&mut resolution, Duration::from_secs(5), <[Instance]>::is_empty).await;
        let gone = start.elapsed();
        eprintln!("register -> seen: {seen:?}; deregister -> gone: {gone:?}");
        assert!(seen < Duration::from_secs(5) && gone < Duration::from_secs(5), "{seen:?} {gone:?}");
        let fresh = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve again");
        assert!(fresh.current().is_empty(), "{:?}", fresh.current());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_larger_than_one_read_is_read_whole() {
    bounded(async {
        let etcd = Cluster::start(1).await;
        // 4,500 instances, written in transactions: more than two pages of the first read.
        let mut kv = etcd_client::Client::connect([etcd.url("").replace("etcd://", "http://")], None)
            .await
            .expect("etcd client");
        let put = |i: usize| {
            let mut instance = echo_instance(SocketAddr::from(([127, 0, 0, 1], 1 + (i % 60_000) as u16)));
            instance.id = format!("fleet-{i:05}");
            let key = format!("/trellis/services/{ECHO_SERVICE_NAME}/{}", instance.id);
            etcd_client::TxnOp::put(key, serde_json::to_vec(&instance).expect("json"), None)
        };
        for chunk in (0..4_500).collect::<Vec<_>>().chunks(100) {
            let ops: Vec<_> = chunk.iter().map(|&i| put(i)).collect();
            kv.txn(etcd_client::Txn::new().and_then(ops)).await.expect("txn");
        }
        let registry = Registry::from_url(&etcd.url("")).expect("registry");
        let mut resolution = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve");
        assert_eq!(resolution.current().len(), 4_500, "every instance, across pages");
        // The watch starts at the revision the pages were read at: nothing is missed.
        kv.delete(format!("/trellis/services/{ECHO_SERVICE_NAME}/fleet-00007"), None).await.expect("delete");
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 4_499).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_expires_within_its_ttl() {
    bounded(async {
        let etcd = Cluster::start(1).await;
        let registry = Registry::from_url(&etcd.url("?ttl=2s")).expect("registry");
        let mut resolution = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve");
        let (addr, _stop) = serve_echo().await;
        let lease = registry.register(echo_instance(addr)).await.expect("register");
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 1).await;

        // What a SIGKILLed process leaves: a lease nobody renews.
        let start = Instant::now();
        drop(lease);
        wait_for(&mut resolution, Duration::from_secs(6), <[Instance]>::is_empty).await;
        let expired = start.elapsed();
        eprintln!("lease dropped -> gone: {expired:?} (ttl 2s)");
        // Renewed at most a third of the TTL ago, so it outlived the drop.
        assert!(expired > Duration::from_secs(1), "removed before its lease expired: {expired:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_stays_while_any_instance_on_it_does() {
    bounded(async {
        let etcd = Cluster::start(1).await;
        let registry = Registry::from_url(&etcd.url("")).expect("registry");
        let mut resolution = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve");
        let (addr, _stop) = serve_echo().await;
        let first = registry.register(echo_instance(addr)).await.expect("register first");
        let second = registry.register(echo_instance(addr)).await.expect("register second");
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 2).await;
        assert_eq!(resolution.endpoints().into_iter().collect::<Vec<_>>(), [Endpoint::from(addr)]);

        first.deregister().await.expect("deregister first");
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 1).await;
        assert!(resolution.endpoints().contains(&Endpoint::from(addr)));

        second.deregister().await.expect("deregister second");
        wait_for(&mut resolution, Duration::from_secs(5), <[Instance]>::is_empty).await;
        assert!(resolution.endpoints().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_lease_is_lost_registers_again() {
    bounded(async {
        let etcd = Cluster::start(1).await;
        let registry = Registry::from_url(&etcd.url("?ttl=3s")).expect("registry");
        let mut resolution = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve");
        let (addr, _stop) = serve_echo().await;
        let _lease = registry.register(echo_instance(addr)).await.expect("register");
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 1).await;
        let lost = etcd.leases().await;
        assert_eq!(lost.len(), 1, "{lost:?}");

        // As if it had expired while etcd could not be reached: the key goes with it.
        let start = Instant::now();
        let revoke = format!(r#"{{"ID":"{}"}}"#, lost[0]);
        http(etcd.members[0].client_port, "POST /v3/lease/revoke", &revoke).await.expect("revoke");
        let renewed = loop {
            let leases = etcd.leases().await;
            if leases.len() == 1 && leases != lost {
                break leases;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no new lease within 5s: {leases:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The new lease is granted first, then the key is put under it: a
        // resolve between the two finds nothing yet.
        let fresh = loop {
            let fresh = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve again");
            if !fresh.endpoints().is_empty() {
                break fresh;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "the key was not put again within 5s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let back = start.elapsed();
        assert_eq!(fresh.endpoints().into_iter().collect::<Vec<_>>(), [Endpoint::from(addr)]);
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 1).await;
        eprintln!("lease {} revoked: registered again under lease {} after {back:?}", lost[0], renewed[0]);
    })
    .await;
}

/// Calls Echo every 20 ms until stopped, counting successes and failures.
struct Traffic {
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(mut client: EchoClient) -> Traffic {
        let (ok, failures, stop) =
            <(Arc<AtomicU64>, Arc<std::sync::Mutex<Vec<String>>>, Arc<AtomicBool>)>::default();
        let task = tokio::spawn({
            let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut request = Request::new(EchoRequest::default());
                    request.set_timeout(Duration::from_secs(2));
                    match client.unary(request).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => failures.lock().expect("failures").push(status.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Traffic { ok, failures, stop, task }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }

    async fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.expect("traffic task");
        (self.ok(), self.failures())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_through_an_etcd_outage_and_registrations_come_back() {
    bounded(async {
        let mut etcd = Cluster::start(1).await;
        let registry = Registry::from_url(&etcd.url("")).expect("registry");
        let (a, _stop_a) = serve_echo().await;
        let (b, _stop_b) = serve_echo().await;
        let _lease_a = registry.register(echo_instance(a)).await.expect("register a");
        let _lease_b = registry.register(echo_instance(b)).await.expect("register b");

        let channel = trellis::client::Channel::discover(&registry, &ECHO_DESCRIPTOR).expect("discover");
        let traffic = Traffic::start(EchoClient::new(channel.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = traffic.ok();
        assert!(before > 0 && traffic.failures().is_empty(), "{before} ok, {:?}", traffic.failures());

        etcd.kill(0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = traffic.ok() - before;
        assert!(during > 50, "only {during} calls succeeded while etcd was down");
        assert!(traffic.failures().is_empty(), "calls failed while etcd was down: {:?}", traffic.failures());

        let down_at = Instant::now();
        etcd.restart(0).await;
        let answering = down_at.elapsed();
        let mut fresh = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve after the restart");
        let both = |i: &[Instance]| {
            let mut ends: Vec<Endpoint> = i.iter().map(|i| i.endpoint.clone()).collect();
            ends.sort();
            let mut want = vec![Endpoint::from(a), Endpoint::from(b)];
            want.sort();
            ends == want
        };
        wait_for(&mut fresh, Duration::from_secs(10), both).await;
        let back = down_at.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;

        let (ok, failures) = traffic.stop().await;
        eprintln!(
            "etcd restarted and answering after {answering:?}, both registrations seen after {back:?}; \
             {ok} calls, {} failed, {during} of them while etcd was down",
            failures.len()
        );
        assert!(failures.is_empty(), "failed calls: {failures:?}");
        let per_endpoint = channel.calls_per_endpoint();
        assert_eq!(per_endpoint.len(), 2, "{per_endpoint:?}");
        assert!(per_endpoint.iter().all(|(_, calls)| *calls > 0), "{per_endpoint:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_member_stalls_neither_registration_nor_resolution() {
    bounded(async {
        let mut etcd = Cluster::start(3).await;
        let registry = Registry::from_url(&etcd.url("")).expect("registry");
        let (a, _stop_a) = serve_echo().await;
        let (b, _stop_b) = serve_echo().await;
        let _lease_a = registry.register(echo_instance(a)).await.expect("register a");
        let mut following = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve");
        assert_eq!(following.current().len(), 1);

        let leader = etcd.leader().await;
        etcd.kill(leader);
        let start = Instant::now();
        let _lease_b = registry.register(echo_instance(b)).await.expect("register with a member dead");
        let registered = start.elapsed();
        let mut fresh = registry.resolve(ECHO_SERVICE_NAME).await.expect("resolve with a member dead");
        wait_for(&mut fresh, Duration::from_secs(10), |i| i.len() == 2).await;
        let resolved = start.elapsed();
        wait_for(&mut following, Duration::from_secs(10), |i| i.len() == 2).await;
        let followed = start.elapsed();
        eprintln!(
            "leader n{} killed: registered after {registered:?}, resolved both after {resolved:?}, \
             the earlier resolution saw both after {followed:?}",
            leader + 1
        );
        assert!(registered < Duration::from_secs(6), "{registered:?}");
        assert!(resolved < Duration::from_secs(10), "{resolved:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_an_error_naming_it_and_bad_urls_too() {
    bounded(async {
        let url = format!("etcd://127.0.0.1:{}", free_port());
        let registry = Registry::from_url(&url).expect("registry");

        let start = Instant::now();
        let err = registry
            .register(echo_instance("127.0.0.1:1".parse().expect("addr")))
            .await
            .expect_err("no etcd");
        let register_failed = start.elapsed();
        let register_message = err.to_string();
        assert!(
            register_message.contains(&url) && register_message.contains("unreachable"),
            "{register_message}"
        );

        let start = Instant::now();
        let err = registry.resolve(ECHO_SERVICE_NAME).await.expect_err("no etcd");
        let resolve_failed = start.elapsed();
        let message = err.to_string();
        assert!(message.contains(&url) && message.contains("unreachable"), "{message}");
        eprintln!(
            "unreachable: register failed after {register_failed:?}, resolve after {resolve_failed:?}: \
             {register_message}"
        );
        assert!(register_failed < Duration::from_secs(8) && resolve_failed < Duration::from_secs(8));

        for (bad, needle) in [
            ("etcd://", "expected etcd://HOST:PORT"),
            ("etcd://127.0.0.1", "no port"),
            ("etcd://127.0.0.1:2379?ttl=0s", "positive duration"),
            ("etcd://127.0.0.1:2379?x=1", "unknown option `x`"),
        ] {
            let message = Registry::from_url(bad).expect_err(bad).to_string();
            assert!(message.contains(bad) && message.contains(needle), "{message}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_service_process_expires_and_a_stopped_one_leaves_at_once() {
    use order_payment::proto::order::payment::v1::ORDER_PAYMENT_SERVICE_NAME;
    bounded(async {
        let etcd = Cluster::start(1).await;
        let url = etcd.url("");
        let registry = Registry::from_url(&url).expect("registry");
        let mut resolution = registry.resolve(ORDER_PAYMENT_SERVICE_NAME).await.expect("resolve");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
        let args =
            ["--registry", url.as_str(), "--set", db.as_str(), "--set", "shutdown.propagation_delay=2s"];
        let killed = trellis_tests::Service::start("order-payment", &args).await;
        let mut stopped = trellis_tests::Service::start("order-payment", &args).await;
        wait_for(&mut resolution, Duration::from_secs(5), |i| i.len() == 2).await;

        killed.signal(Signal::SIGKILL);
        let start = Instant::now();
        wait_for(&mut resolution, trellis::registry::DEFAULT_TTL + Duration::from_secs(4), |i| i.len() == 1)
            .await;
        eprintln!(
            "etcd: SIGKILLed process gone after {:?} (ttl {:?})",
            start.elapsed(),
            trellis::registry::DEFAULT_TTL
        );
        assert_eq!(resolution.current()[0].endpoint, Endpoint::from(stopped.addr()));

        // SIGTERM deregisters before the propagation delay.
        stopped.signal(Signal::SIGTERM);
        let start = Instant::now();
        wait_for(&mut resolution, Duration::from_secs(1), <[Instance]>::is_empty).await;
        eprintln!("etcd: SIGTERMed process deregistered after {:?}", start.elapsed());
        assert!(stopped.wait(Duration::from_secs(10)).await.success());
    })
    .await;
}
