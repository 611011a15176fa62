//! The registry contract: one suite, run against every backend for what it
//! supports.
//!
//! | property | local | static | dns | etcd | consul (fake) | eureka (fake) |
//! |---|---|---|---|---|---|---|
//! | a registration is seen; a deregistration is seen | yes | - | records | yes | yes | yes |
//! | a SIGKILLed registrant expires within its lease | yes | - | - | yes | yes | yes |
//! | unreachable: last instances kept, outage logged once | yes | - | yes | yes | yes | yes |
//! | flapping instances settle on the right set | yes | - | - | yes | yes | yes |
//! | an index that goes backwards is read anew | - | - | - | - | yes | - |
//! | a malformed entry is skipped with one warning | yes | URL error | - | yes | yes | yes |
//! | read-only: registering changes nothing | - | yes | yes | - | - | - |
//!
//! `static://` and `dns://` are read-only (their instances are what the URL
//! or the DNS records say); etcd revisions never go backwards within a
//! cluster, and Eureka has no index. The tests run on a current-thread
//! runtime so that what the registry logs can be counted.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use order_payment::proto::order::payment::v1::ORDER_PAYMENT_SERVICE_NAME;
use trellis::Registry;
use trellis::registry::{Endpoint, Instance, Lease, Metadata, Resolution};
use trellis_tests::Service;
#[cfg(feature = "consul")]
use trellis_tests::fakes::consul::FakeConsul;
#[cfg(feature = "eureka")]
use trellis_tests::fakes::eureka::FakeEureka;
#[cfg(feature = "etcd")]
use trellis_tests::registries::Etcd;
use trellis_tests::registries::{Dnsmasq, Logs};

/// The service the in-process registrations are of.
const SERVICE: &str = "contract.v1.Contract";

/// What one step may take at most.
const STEP: Duration = Duration::from_secs(10);

/// The DNS name the `dns://` setup resolves, and its port.
const DNS_NAME: &str = "contract.trellis.test";
const DNS_PORT: u16 = 7000;

/// A backend under test, and the handle that stages its outages.
struct Setup {
    name: &'static str,
    url: String,
    /// How long a registration outlives its registrant.
    lease: Duration,
    control: Control,
}

enum Control {
    Local(tempfile::TempDir),
    Static,
    Dns(Dnsmasq),
    #[cfg(feature = "etcd")]
    Etcd(Etcd),
    #[cfg(feature = "consul")]
    Consul(FakeConsul),
    #[cfg(feature = "eureka")]
    Eureka(FakeEureka),
}

impl Setup {
    async fn local() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("local://{}?ttl=1s&poll=50ms", dir.path().join("registry").display());
        Setup { name: "local", url, lease: Duration::from_secs(1), control: Control::Local(dir) }
    }

    async fn fixed() -> Setup {
        let url = format!("static://{SERVICE}=127.0.0.1:7001,127.0.0.1:7002");
        Setup { name: "static", url, lease: Duration::ZERO, control: Control::Static }
    }

    async fn dns() -> Setup {
        let dnsmasq = Dnsmasq::start(&format!("127.0.0.1 {DNS_NAME}\n127.0.0.2 {DNS_NAME}\n"));
        let url = format!("dns://{}/{DNS_NAME}:{DNS_PORT}?interval=50ms", dnsmasq.server());
        Setup { name: "dns", url, lease: Duration::ZERO, control: Control::Dns(dnsmasq) }
    }

    #[cfg(feature = "etcd")]
    async fn etcd() -> Setup {
        let etcd = Etcd::start().await;
        Setup {
            name: "etcd",
            url: etcd.url("?ttl=2s"),
            lease: Duration::from_secs(2),
            control: Control::Etcd(etcd),
        }
    }

    #[cfg(feature = "consul")]
    async fn consul() -> Setup {
        let consul = FakeConsul::start().await;
        let url = consul.url("?ttl=1s&interval=20ms&wait=5s");
        Setup { name: "consul", url, lease: Duration::from_secs(1), control: Control::Consul(consul) }
    }

    #[cfg(feature = "eureka")]
    async fn eureka() -> Setup {
        let eureka = FakeEureka::start("/eureka").await;
        let url = eureka.url("?ttl=1s&interval=50ms");
        Setup { name: "eureka", url, lease: Duration::from_secs(1), control: Control::Eureka(eureka) }
    }

    fn registry(&self) -> Registry {
        Registry::from_url(&self.url).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The `local://` directory.
    fn local_dir(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("registry")
    }

    /// Makes the registry unreachable.
    async fn break_it(&mut self) {
        match &mut self.control {
            Control::Local(dir) => {
                // A file where the directory was: every read fails.
                let path = Self::local_dir(dir);
                std::fs::rename(&path, path.with_extension("away")).expect("move the directory away");
                std::fs::write(&path, "").expect("a file in its place");
            }
            Control::Static => unreachable!("static:// cannot be unreachable"),
            Control::Dns(dnsmasq) => dnsmasq.stop(),
            #[cfg(feature = "etcd")]
            Control::Etcd(etcd) => etcd.stop(),
            #[cfg(feature = "consul")]
            Control::Consul(consul) => consul.stop(),
            #[cfg(feature = "eureka")]
            Control::Eureka(eureka) => eureka.stop(),
        }
    }

    /// Makes it reachable again, with what it held.
    async fn mend_it(&mut self) {
        match &mut self.control {
            Control::Local(dir) => {
                let path = Self::local_dir(dir);
                std::fs::remove_file(&path).expect("remove the file");
                std::fs::rename(path.with_extension("away"), &path).expect("move the directory back");
            }
            Control::Static => unreachable!("static:// cannot be unreachable"),
            Control::Dns(dnsmasq) => dnsmasq.restart(),
            #[cfg(feature = "etcd")]
            Control::Etcd(etcd) => etcd.restart().await,
            #[cfg(feature = "consul")]
            Control::Consul(consul) => consul.restart().await,
            #[cfg(feature = "eureka")]
            Control::Eureka(eureka) => eureka.restart().await,
        }
    }

    /// Writes an entry of `SERVICE` that is not an instance.
    async fn add_malformed(&self) {
        match &self.control {
            Control::Local(dir) => {
                let service_dir = Self::local_dir(dir).join(SERVICE);
                std::fs::create_dir_all(&service_dir).expect("service directory");
                std::fs::write(service_dir.join("broken.json"), "{\"id\": \"broken\", \"endpoint\": 7").expect("write");
            }
            #[cfg(feature = "etcd")]
            Control::Etcd(etcd) => etcd.put(&format!("/trellis/services/{SERVICE}/broken"), "not json").await,
            #[cfg(feature = "consul")]
            Control::Consul(consul) => consul.add_raw_entry(
                SERVICE,
                serde_json::json!({"Node": {"Address": "127.0.0.1"}, "Service": {"ID": "broken", "Port": "x"}}),
            ),
            #[cfg(feature = "eureka")]
            Control::Eureka(eureka) => eureka.add_raw_instance(
                SERVICE,
                "broken",
                serde_json::json!({"instanceId": "broken", "status": "UP", "ipAddr": "127.0.0.1", "port": {"$": 0}}),
            ),
            Control::Static | Control::Dns(_) => unreachable!("{} has no entries to break", self.name),
        }
    }
}

fn instance(port: u16) -> Instance {
    Instance::new(SERVICE, Endpoint::new("127.0.0.1", port), Metadata::default())
}

fn ports(instances: &[Instance]) -> BTreeSet<u16> {
    instances.iter().map(|i| i.endpoint.port()).collect()
}

/// Waits until `done` holds for what `resolution` knows; panics after `bound`.
async fn wait_for(
    name: &str,
    resolution: &mut Resolution,
    bound: Duration,
    done: impl Fn(&[Instance]) -> bool,
) {
    let waited = tokio::time::timeout(bound, async {
        while !done(&resolution.current()) {
            resolution.changed().await.expect("the resolution ended");
        }
    })
    .await;
    assert!(waited.is_ok(), "{name}: not reached within {bound:?}: {:?}", resolution.current());
}

async fn register_then_deregister(setup: Setup) {
    let registry = setup.registry();
    let mut resolution = registry.resolve(SERVICE).await.expect("resolve");
    assert!(resolution.current().is_empty(), "{}: {:?}", setup.name, resolution.current());
    let a = registry.register(instance(7001)).await.expect("register a");
    let b = registry.register(instance(7002)).await.expect("register b");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == BTreeSet::from([7001, 7002])).await;
    // A resolution started now sees them at once.
    assert_eq!(
        ports(&registry.resolve(SERVICE).await.expect("resolve").current()),
        BTreeSet::from([7001, 7002])
    );
    a.deregister().await.expect("deregister");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == BTreeSet::from([7002])).await;
    b.deregister().await.expect("deregister");
    wait_for(setup.name, &mut resolution, STEP, <[Instance]>::is_empty).await;
}

async fn a_killed_registrant_expires_within_its_lease(setup: Setup) {
    let registry = setup.registry();
    let mut resolution = registry.resolve(ORDER_PAYMENT_SERVICE_NAME).await.expect("resolve");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("payment.database={}", dir.path().join("p.sqlite3").display());
    let process = Service::start("order-payment", &["--registry", &setup.url, "--set", &db]).await;
    wait_for(setup.name, &mut resolution, STEP, |now| now.len() == 1).await;
    process.signal(Signal::SIGKILL);
    let killed = Instant::now();
    wait_for(setup.name, &mut resolution, STEP, <[Instance]>::is_empty).await;
    let took = killed.elapsed();
    eprintln!(
        "{}: a SIGKILLed registrant left the resolution after {took:?} (lease {:?})",
        setup.name, setup.lease
    );
    // The lease, a poll, and room for a loaded machine.
    assert!(took <= setup.lease + Duration::from_secs(2), "{}: took {took:?}", setup.name);
}

/// A service of `setup` with an instance a resolver should find: the
/// service, the instance's ports, and the registration that keeps it (none
/// where the registry is read-only and holds it already).
async fn one_instance(
    setup: &Setup,
    registry: &Registry,
) -> (&'static str, BTreeSet<u16>, Option<Box<dyn Lease>>) {
    match setup.control {
        Control::Dns(_) => ("any.v1.Any", BTreeSet::from([DNS_PORT]), None),
        Control::Static => (SERVICE, BTreeSet::from([7001, 7002]), None),
        _ => (
            SERVICE,
            BTreeSet::from([7001]),
            Some(registry.register(instance(7001)).await.expect("register")),
        ),
    }
}

async fn an_outage_keeps_the_last_instances_and_is_logged_once(mut setup: Setup) {
    let registry = setup.registry();
    let (service, expected, _lease) = one_instance(&setup, &registry).await;
    let mut resolution = registry.resolve(service).await.expect("resolve");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == expected && !now.is_empty()).await;
    let known = resolution.current();

    let (logs, _capture) = Logs::capture();
    setup.break_it().await;
    let down = format!("registry unreachable while resolving {service}");
    let deadline = Instant::now() + STEP;
    while logs.count(&down) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many failed polls later: still the same instances, one log line.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(resolution.current(), known, "{}: the last instances are kept", setup.name);
    assert_eq!(logs.count(&down), 1, "{}: {}", setup.name, logs.text());

    setup.mend_it().await;
    let up = format!("registry reachable again while resolving {service}");
    let deadline = Instant::now() + STEP;
    while logs.count(&up) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((logs.count(&down), logs.count(&up)), (1, 1), "{}: {}", setup.name, logs.text());
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == expected && !now.is_empty()).await;
}

/// A registry that answers without changes keeps the resolution's heartbeat
/// fresh (what `trellis_client_registry_answer_age_seconds` reports); while
/// it cannot be reached, the heartbeat ages.
async fn a_quiet_registry_keeps_its_heartbeat(mut setup: Setup) {
    let registry = setup.registry();
    let (service, expected, _lease) = one_instance(&setup, &registry).await;
    let mut resolution = registry.resolve(service).await.expect("resolve");
    if let Control::Static = setup.control {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(resolution.heartbeat().age(), Duration::ZERO, "a fixed list is always current");
        return;
    }
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == expected && !now.is_empty()).await;
    // Longer than the slowest backend's quiet answer (etcd's progress
    // request, Consul's 5 s blocking query), with nothing changing.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let quiet = resolution.heartbeat().age();
    assert!(quiet < Duration::from_millis(5_500), "{}: last answer {quiet:?} ago", setup.name);

    setup.break_it().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let down = resolution.heartbeat().age();
    assert!(down > Duration::from_millis(500), "{}: unreachable, yet answered {down:?} ago", setup.name);
    assert!(down > quiet, "{}: the heartbeat ages while unreachable ({quiet:?} -> {down:?})", setup.name);
}

async fn flapping_instances_settle(setup: Setup) {
    let registry = setup.registry();
    let mut resolution = registry.resolve(SERVICE).await.expect("resolve");
    let _steady = registry.register(instance(7001)).await.expect("register");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now).contains(&7001)).await;
    for round in 0..10 {
        let flapping: Box<dyn Lease> = registry.register(instance(7100 + round)).await.expect("register");
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        flapping.deregister().await.expect("deregister");
        assert!(ports(&resolution.current()).contains(&7001), "{}: the steady instance stays", setup.name);
    }
    let _last = registry.register(instance(7002)).await.expect("register");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == BTreeSet::from([7001, 7002])).await;
    // And it stays settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ports(&resolution.current()), BTreeSet::from([7001, 7002]), "{}", setup.name);
}

#[cfg(feature = "consul")]
async fn an_index_that_goes_backwards_is_read_anew(setup: Setup) {
    let Control::Consul(consul) = &setup.control else { unreachable!("consul only") };
    let registry = setup.registry();
    let _a = registry.register(instance(7001)).await.expect("register");
    for port in 7100..7104 {
        registry.register(instance(port)).await.expect("register").deregister().await.expect("deregister");
    }
    let mut resolution = registry.resolve(SERVICE).await.expect("resolve");
    wait_for(setup.name, &mut resolution, STEP, |now| now.len() == 1).await;
    // A blocking query past the new index would never return before its
    // wait; the answer's smaller index makes the resolution start over.
    let (logs, _capture) = Logs::capture();
    consul.set_index(1);
    let _b = registry.register(instance(7002)).await.expect("register");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == BTreeSet::from([7001, 7002])).await;
    assert_eq!(logs.count("the Consul index went back"), 1, "{}", logs.text());
    // Following on from the new index: a change arrives well before the 5 s wait.
    let _c = registry.register(instance(7003)).await.expect("register");
    wait_for(setup.name, &mut resolution, Duration::from_millis(2500), |now| now.len() == 3).await;
}

async fn a_malformed_entry_is_skipped_with_one_warning(setup: Setup) {
    let registry = setup.registry();
    let (logs, _capture) = Logs::capture();
    let _good = registry.register(instance(7001)).await.expect("register");
    setup.add_malformed().await;
    let mut resolution = registry.resolve(SERVICE).await.expect("resolve");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == BTreeSet::from([7001])).await;
    // Several polls later: still the good one only, and one warning.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _other = registry.register(instance(7002)).await.expect("register");
    wait_for(setup.name, &mut resolution, STEP, |now| ports(now) == BTreeSet::from([7001, 7002])).await;
    assert_eq!(logs.count("cannot be read"), 1, "{}: {}", setup.name, logs.text());
    assert!(
        logs.text().contains("broken") && logs.text().contains("WARN"),
        "{}: {}",
        setup.name,
        logs.text()
    );
}

async fn registering_in_a_read_only_registry_changes_nothing(setup: Setup) {
    let registry = setup.registry();
    let (service, expected) = match setup.control {
        Control::Static => (SERVICE, BTreeSet::from([7001, 7002])),
        _ => ("any.v1.Any", BTreeSet::from([DNS_PORT])),
    };
    let resolution = registry.resolve(service).await.expect("resolve");
    let before = resolution.current();
    assert_eq!(ports(&before), expected, "{}", setup.name);
    let lease =
        registry.register(Instance::new(service, Endpoint::new("127.0.0.9", 9), Metadata::default())).await;
    let lease = lease.expect("registering succeeds and does nothing");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(resolution.current(), before, "{}", setup.name);
    lease.deregister().await.expect("deregister");
    if let Control::Dns(dnsmasq) = &setup.control {
        // Its instances are the records: one removed, one gone.
        let mut resolution = resolution;
        dnsmasq.set_hosts(&format!("127.0.0.2 {DNS_NAME}\n"));
        wait_for(setup.name, &mut resolution, STEP, |now| {
            now.len() == 1 && now[0].endpoint.host() == "127.0.0.2"
        })
        .await;
    }
}

/// A malformed `static://` URL is an error naming it, not a crash.
#[test]
fn a_malformed_static_entry_is_a_clear_error() {
    for url in ["static://a.v1.A=127.0.0.1:x", "static://a.v1.A", "static://a/A=h:1"] {
        let msg = Registry::from_url(url).expect_err(url).to_string();
        assert!(msg.contains(url) && msg.contains("expected static://"), "{msg}");
    }
}

/// One test per property a backend supports.
macro_rules! contract {
    ($backend:ident: $($property:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $property() {
                    super::$property(super::Setup::$backend().await).await;
                }
            )*
        }
    };
}

contract!(local:
    register_then_deregister,
    a_killed_registrant_expires_within_its_lease,
    an_outage_keeps_the_last_instances_and_is_logged_once,
    a_quiet_registry_keeps_its_heartbeat,
    flapping_instances_settle,
    a_malformed_entry_is_skipped_with_one_warning,
);

contract!(fixed: registering_in_a_read_only_registry_changes_nothing, a_quiet_registry_keeps_its_heartbeat);

contract!(dns:
    registering_in_a_read_only_registry_changes_nothing,
    an_outage_keeps_the_last_instances_and_is_logged_once,
    a_quiet_registry_keeps_its_heartbeat,
);

#[cfg(feature = "etcd")]
contract!(etcd:
    register_then_deregister,
    a_killed_registrant_expires_within_its_lease,
    an_outage_keeps_the_last_instances_and_is_logged_once,
    a_quiet_registry_keeps_its_heartbeat,
    flapping_instances_settle,
    a_malformed_entry_is_skipped_with_one_warning,
);

#[cfg(feature = "consul")]
contract!(consul:
    register_then_deregister,
    a_killed_registrant_expires_within_its_lease,
    an_outage_keeps_the_last_instances_and_is_logged_once,
    a_quiet_registry_keeps_its_heartbeat,
    flapping_instances_settle,
    an_index_that_goes_backwards_is_read_anew,
    a_malformed_entry_is_skipped_with_one_warning,
);

#[cfg(feature = "eureka")]
contract!(eureka:
    register_then_deregister,
    a_killed_registrant_expires_within_its_lease,
    an_outage_keeps_the_last_instances_and_is_logged_once,
    a_quiet_registry_keeps_its_heartbeat,
    flapping_instances_settle,
    a_malformed_entry_is_skipped_with_one_warning,
);
