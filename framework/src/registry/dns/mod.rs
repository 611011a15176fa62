//! `dns://[SERVER:PORT/]NAME[:PORT][?interval=5s]`: instances from DNS records.
//!
//! - `NAME:PORT` looks up NAME's A and AAAA records: one instance per
//!   address, all on PORT.
//! - A NAME starting with `_`, such as `_grpc._tcp.payment.example`, is an
//!   SRV name: one instance per address of each SRV target, on the port the
//!   SRV record gives (so no `:PORT`). The SRV weight becomes
//!   [`Metadata::weight`]; the priority is ignored.
//! - `{service}` in NAME stands for the full gRPC service name, lowercased
//!   with `.` turned into `-`: with `dns://{service}.svc.cluster.local:50051`,
//!   `order.payment.v1.OrderPayment` is looked up as
//!   `order-payment-v1-orderpayment.svc.cluster.local`. Without `{service}`,
//!   every service resolves to the same records.
//! - `SERVER:PORT/` (an IP address, `[v6]:PORT` for IPv6) sends every query
//!   to that DNS server, over UDP and TCP.
//! - `interval` is how often the name is resolved again (default 5s).
//!
//! Who asks: `NAME:PORT` without a server goes through the system's resolver
//! (`getaddrinfo`: `/etc/resolv.conf` with its search domains, `/etc/hosts`),
//! in every build (`system.rs`); that is what a Kubernetes headless Service
//! needs. SRV names and a server of your own need a DNS client, which the
//! `dns` cargo feature brings (hickory-resolver, `hickory.rs`); without it
//! such a URL is refused with the feature to turn on.
//!
//! The records are managed outside Trellis, by a Kubernetes headless service
//! or Consul's DNS interface for example, so registering does nothing: an
//! instance leaves when its records go, seen within one interval. A name
//! that does not exist, or has no records, resolves to no instances. If the
//! DNS server cannot be reached on the first lookup, `resolve` fails;
//! afterwards the last known instances are kept until it answers again.
//! Answers are never cached, whatever their TTL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::poll::{Pace, Source, follow};
use super::types::{
    Backend, BoxFuture, Endpoint, Instance, Lease, Metadata, NoLease, Resolution, unreachable,
};
use super::url::Target;
use crate::error::Error;
#[cfg(feature = "dns")]
mod hickory;
mod system;

#[cfg(all(feature = "dns", feature = "fuzzing"))]
pub(super) use hickory::fuzz_answer;

/// How often names are resolved again, unless `interval` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The placeholder for the service name in NAME.
const SERVICE: &str = "{service}";

const FIX: &str = "check the DNS server address (the URL's, or the `nameserver` lines of /etc/resolv.conf) \
                   and that it is running";

/// The `dns://` backend.
#[derive(Debug)]
pub(super) struct Dns {
    url: String,
    /// The DNS server to ask; the system's when `None`.
    server: Option<SocketAddr>,
    /// The name to look up, possibly with `{service}`.
    name: String,
    records: Records,
    interval: Duration,
    /// Whether `register` said it does nothing.
    told: AtomicBool,
}

/// What kind of records NAME has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// A and AAAA records; every address serves on `port`.
    Ip { port: u16 },
    /// SRV records, giving targets and ports.
    Srv,
}

impl Dns {
    pub(super) fn parse(url_target: &Target<'_>) -> Result<Self, Error> {
        let (url, err) = (url_target.url, |reason: String| url_target.error(reason));
        let (target, pairs) = url_target.query();
        let (server, target) = match target.split_once('/') {
            None => (None, target),
            Some((server, target)) => {
                let server = server.parse::<SocketAddr>().map_err(|_| {
                    err(format!(
                        "`{server}` is not a DNS server address: expected IP:PORT such as 10.0.0.2:53 \
                         or [fd00::2]:53"
                    ))
                })?;
                (Some(server), target)
            }
        };
        let (name, port) = match target.rsplit_once(':') {
            None => (target, None),
            Some((name, port)) => match port.parse::<u16>() {
                Ok(port) if port != 0 => (name, Some(port)),
                _ => return Err(err(format!("`{port}` is not a port from 1 to 65535"))),
            },
        };
        check_name(name).map_err(|why| err(format!("`{name}` is not a DNS name ({why})")))?;
        let records = match (name.starts_with('_'), port) {
            (false, Some(port)) => Records::Ip { port },
            (true, None) => Records::Srv,
            (false, None) => {
                return Err(err(format!(
                    "`{name}` has no port: A/AAAA records give addresses only, so write one, as in \
                     dns://payment.default.svc:50051, or use an SRV name such as \
                     _grpc._tcp.payment.default.svc"
                )));
            }
            (true, Some(_)) => {
                return Err(err(format!(
                    "`{name}` is an SRV name (it starts with `_`), whose records give the ports: \
                     remove `:PORT`"
                )));
            }
        };
        if !cfg!(feature = "dns") && (server.is_some() || records == Records::Srv) {
            return Err(err(needs_dns(records)));
        }
        let mut interval = DEFAULT_INTERVAL;
        for (key, value) in pairs {
            match key {
                "interval" => {
                    interval =
                        humantime::parse_duration(value).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                            err(format!("`{key}={value}`: expected a positive duration such as 5s or 500ms"))
                        })?;
                }
                _ => return Err(err(format!("unknown option `{key}`; dns:// takes `interval`"))),
            }
        }
        Ok(Dns {
            url: url.to_owned(),
            server,
            name: name.to_owned(),
            records,
            interval,
            told: AtomicBool::new(false),
        })
    }

    /// The name to look up for `service`.
    fn name_for(&self, service: &str) -> Result<String, Error> {
        let name = self.name.replace(SERVICE, &service.to_ascii_lowercase().replace('.', "-"));
        check_name(&name).map_err(|why| Error::Registry {
            url: self.url.clone(),
            reason: format!("`{name}`, the name for {service}, is not a DNS name ({why})"),
        })?;
        Ok(name)
    }

    /// Who answers this URL's lookups of `name`.
    fn resolver(&self, name: String) -> Result<Resolver, Error> {
        match (self.server, self.records) {
            (None, Records::Ip { port }) => Ok(Resolver::System { name, port }),
            #[cfg(feature = "dns")]
            (server, records) => {
                Ok(Resolver::Hickory(Box::new(hickory::Lookups::new(&self.url, server, &name, records)?)))
            }
            // `parse` refuses these URLs without the feature; say why again
            // rather than assume it.
            #[cfg(not(feature = "dns"))]
            (_, records) => Err(Error::Registry { url: self.url.clone(), reason: needs_dns(records) }),
        }
    }
}

/// Why a URL with an SRV name or a server of its own cannot be followed
/// in a build without the `dns` feature, and the fix.
fn needs_dns(records: Records) -> String {
    let what = if records == Records::Srv { "an SRV name" } else { "a DNS server of its own" };
    format!(
        "this URL names {what}, which needs the `dns` cargo feature of trellis (a DNS client), off in \
         this build; enable it: trellis = {{ version = \"0.1\", features = [\"dns\"] }}, or write \
         NAME:PORT to resolve A/AAAA records through the system's resolver"
    )
}

/// Checks the characters and labels of NAME, where `{service}` may appear.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    let bare = name.replace(SERVICE, "s");
    if !bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err("only letters, digits, `-`, `_`, `.` and `{service}` may appear");
    }
    if bare.trim_end_matches('.').split('.').any(|label| label.is_empty() || label.len() > 63) {
        return Err("each dot-separated label must have 1 to 63 characters");
    }
    if bare.trim_end_matches('.').len() > 253 {
        return Err("it is longer than DNS's 253 characters");
    }
    Ok(())
}

/// Who answers a service's lookups.
#[derive(Debug)]
enum Resolver {
    /// The system's resolver, for the A and AAAA records of `name`.
    System { name: String, port: u16 },
    /// A DNS client of our own: SRV records, or a server named in the URL.
    #[cfg(feature = "dns")]
    Hickory(Box<hickory::Lookups>),
}

/// Instances, one per endpoint, from (endpoint, metadata) pairs found.
fn instances(found: BTreeMap<Endpoint, Metadata>, service: &str) -> Vec<Instance> {
    found
        .into_iter()
        .map(|(endpoint, metadata)| Instance {
            id: endpoint.to_string(),
            service: service.to_owned(),
            endpoint,
            metadata,
        })
        .collect()
}

impl Backend for Dns {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>> {
        if !self.told.swap(true, Ordering::Relaxed) {
            tracing::info!(
                service = %instance.service,
                endpoint = %instance.endpoint,
                "not registering in {}: dns:// is read-only; publish DNS records for this instance \
                 outside Trellis (for example with a Kubernetes headless service)",
                self.url
            );
        }
        Box::pin(async { Ok(Box::new(NoLease) as Box<dyn Lease>) })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let service = service.to_owned();
        Box::pin(async move {
            let name = self.name_for(&service)?;
            let source = Lookup { resolver: self.resolver(name.clone())?, service: service.clone() };
            let what = format!("resolving {service} in {}", self.url);
            follow(service, what, Pace::every(self.interval), source)
                .await
                .map_err(|e| unreachable(&self.url, format!("looking up {name}: {e}"), FIX))
        })
    }
}

/// The lookups of one service's records.
#[derive(Debug)]
struct Lookup {
    resolver: Resolver,
    service: String,
}

impl Source for Lookup {
    type Error = String;

    async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, String> {
        let mut found = BTreeMap::new();
        match &self.resolver {
            Resolver::System { name, port } => {
                let (name, port) = (name.clone(), *port);
                let addresses = tokio::task::spawn_blocking(move || system::addresses(&name))
                    .await
                    .map_err(|e| format!("the lookup stopped: {e}"))??;
                for ip in addresses {
                    found.entry(Endpoint::from(SocketAddr::new(ip, port))).or_default();
                }
            }
            #[cfg(feature = "dns")]
            Resolver::Hickory(lookups) => lookups.find(&mut found).await.map_err(|e| e.to_string())?,
        }
        Ok(Some(instances(found, &self.service)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Dns, Error> {
        let rest = url.strip_prefix("dns://").unwrap_or(url);
        Dns::parse(&Target { url, rest, form: "dns://[SERVER:PORT/]NAME[:PORT][?interval=5s]" })
    }

    #[test]
    fn names_ports_servers_and_options_parse() {
        let dns = parse("dns://payment.default.svc:50051").unwrap();
        assert_eq!((dns.server, dns.name.as_str()), (None, "payment.default.svc"));
        assert_eq!((dns.records, dns.interval), (Records::Ip { port: 50051 }, DEFAULT_INTERVAL));
        assert!(matches!(
            dns.resolver("payment.default.svc".into()),
            Ok(Resolver::System { port: 50051, .. })
        ));
    }

    #[cfg(feature = "dns")]
    #[test]
    fn srv_names_and_servers_of_their_own_parse_with_the_dns_feature() {
        let dns = parse("dns://10.0.0.2:53/_grpc._tcp.payment.example?interval=200ms").unwrap();
        assert_eq!(dns.server, Some(SocketAddr::from(([10, 0, 0, 2], 53))));
        assert_eq!((dns.records, dns.interval), (Records::Srv, Duration::from_millis(200)));

        let dns = parse("dns://[::1]:5353/{service}.svc.cluster.local.:7").unwrap();
        assert_eq!(dns.server.map(|s| s.to_string()).as_deref(), Some("[::1]:5353"));
        assert_eq!(dns.records, Records::Ip { port: 7 });
        assert!(matches!(dns.resolver("a.svc.cluster.local.".into()), Ok(Resolver::Hickory(_))));
    }

    #[cfg(not(feature = "dns"))]
    #[test]
    fn srv_names_and_servers_of_their_own_name_the_dns_feature_without_it() {
        for url in ["dns://10.0.0.2:53/payment.example:1", "dns://_grpc._tcp.payment.example"] {
            let msg = parse(url).unwrap_err().to_string();
            assert!(
                msg.contains(url) && msg.contains("`dns` cargo feature") && msg.contains("NAME:PORT"),
                "{msg}"
            );
        }
    }

    #[test]
    fn service_placeholder_is_replaced_by_a_dns_label() {
        let dns = parse("dns://{service}.svc.cluster.local:50051").unwrap();
        let name = dns.name_for("order.payment.v1.OrderPayment").unwrap();
        assert_eq!(name, "order-payment-v1-orderpayment.svc.cluster.local");
        #[cfg(feature = "dns")]
        {
            let srv = parse("dns://_grpc._tcp.{service}.example").unwrap();
            assert_eq!(srv.name_for("a.B").unwrap(), "_grpc._tcp.a-b.example");
        }
        let fixed = parse("dns://echo.example:1").unwrap();
        assert_eq!(fixed.name_for("a.B").unwrap(), fixed.name_for("c.D").unwrap());
    }

    #[test]
    fn a_name_too_long_for_dns_after_substitution_is_an_error() {
        let dns = parse("dns://{service}.example:1").unwrap();
        let service = format!("a.{}", "b".repeat(70));
        let msg = dns.name_for(&service).unwrap_err().to_string();
        assert!(msg.contains("dns://{service}.example:1") && msg.contains(&service), "{msg}");
    }

    #[test]
    fn bad_urls_name_the_url_and_what_is_expected() {
        for (url, needle) in [
            ("dns://", "empty"),
            ("dns://payment.example", "has no port"),
            ("dns://payment.example:0", "not a port"),
            ("dns://payment.example:http", "not a port"),
            ("dns://_grpc._tcp.payment.example:50051", "remove `:PORT`"),
            ("dns://dns.example:53/payment.example:1", "not a DNS server address"),
            ("dns://10.0.0.2/payment.example:1", "not a DNS server address"),
            ("dns://10.0.0.2:53/:1", "empty"),
            ("dns://pay ment.example:1", "only letters"),
            ("dns://{svc}.example:1", "only letters"),
            ("dns://payment..example:1", "label"),
            ("dns://payment.example:1?interval=0s", "positive duration"),
            ("dns://payment.example:1?interval=soon", "positive duration"),
            ("dns://payment.example:1?ttl=3s", "unknown option `ttl`"),
        ] {
            let msg = parse(url).unwrap_err().to_string();
            assert!(msg.contains(url) && msg.contains(needle), "{url}: {msg}");
        }
    }

    #[tokio::test]
    async fn registering_does_nothing() {
        let dns = parse("dns://x.example:1").unwrap();
        let instance = Instance::new("a.A", Endpoint::new("127.0.0.1", 1), Metadata::default());
        let lease = dns.register(instance.clone()).await.unwrap();
        lease.deregister().await.unwrap();
        dns.register(instance).await.unwrap();
        assert!(dns.told.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_name_in_etc_hosts_resolves_through_the_system_resolver() {
        let dns = parse("dns://localhost:7?interval=50ms").unwrap();
        let resolution = dns.resolve("a.A").await.unwrap();
        let instances = resolution.current();
        assert!(!instances.is_empty(), "localhost has an address");
        for instance in instances.iter() {
            assert!(instance.endpoint.port() == 7 && instance.service == "a.A", "{instance:?}");
            assert!(instance.endpoint.host().parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
        }
    }
}
