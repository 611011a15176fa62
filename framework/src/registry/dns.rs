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
//!   to that DNS server, over UDP and TCP. Without it, the system's resolver
//!   configuration (`/etc/resolv.conf`, with its search domains) is used.
//! - `interval` is how often the name is resolved again (default 5s).
//!
//! The records are managed outside Trellis, by a Kubernetes headless service
//! or Consul's DNS interface for example, so registering does nothing: an
//! instance leaves when its records go, seen within one interval. A name
//! that does not exist, or has no records, resolves to no instances. If the
//! DNS server cannot be reached on the first lookup, `resolve` fails;
//! afterwards the last known instances are kept until it answers again.
//! Answers are never cached, whatever their TTL.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::poll::{Pace, Source, follow};
use super::types::{Backend, BoxFuture, Endpoint, Instance, Lease, Metadata, Resolution, unreachable};
use super::url::Target;
use crate::error::Error;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, Record};

/// How often names are resolved again, unless `interval` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How long one query waits for an answer; short, so an outage does not
/// hold up updates.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times a failed query is sent again.
const RETRIES: usize = 1;

/// The placeholder for the service name in NAME.
const SERVICE: &str = "{service}";

const FIX: &str = "check the DNS server address and that it is running";

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
    fn name_for(&self, service: &str) -> Result<Name, Error> {
        let name = self.name.replace(SERVICE, &service.to_ascii_lowercase().replace('.', "-"));
        Name::from_ascii(&name).map_err(|e| Error::Registry {
            url: self.url.clone(),
            reason: format!("`{name}`, the name for {service}, is not a DNS name: {e}"),
        })
    }

    /// A resolver that asks the configured server, without caching answers.
    fn resolver(&self) -> Result<TokioResolver, Error> {
        let mut builder = match self.server {
            Some(server) => {
                let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut name_server.connections {
                    connection.port = server.port();
                }
                let config = ResolverConfig::from_name_servers(vec![name_server]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                unreachable(
                    &self.url,
                    format!("cannot read the system's resolver configuration: {e}"),
                    "check /etc/resolv.conf, or name a DNS server as in dns://10.0.0.2:53/NAME",
                )
            })?,
        };
        let options = builder.options_mut();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = RETRIES;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        if self.server.is_some() {
            options.use_hosts_file = ResolveHosts::Never;
        }
        builder.build().map_err(|e| unreachable(&self.url, e, FIX))
    }
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
    Ok(())
}

/// The instances of `service` that `name` resolves to now: none when the
/// name does not exist or has no records.
async fn lookup(
    resolver: &TokioResolver,
    name: &Name,
    records: Records,
    service: &str,
) -> Result<Vec<Instance>, NetError> {
    let mut found = BTreeMap::new();
    match records {
        Records::Ip { port } => {
            for ip in addresses(resolver, name.clone()).await? {
                found.entry(Endpoint::from(SocketAddr::new(ip, port))).or_insert(Metadata::default());
            }
        }
        Records::Srv => {
            let answers = match resolver.srv_lookup(name.clone()).await {
                Ok(answers) => answers,
                Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            for (target, port, metadata) in srv_targets(answers.answers()) {
                for ip in addresses(resolver, target.clone()).await? {
                    found.entry(Endpoint::from(SocketAddr::new(ip, port))).or_insert(metadata.clone());
                }
            }
        }
    }
    let instances = found.into_iter().map(|(endpoint, metadata)| Instance {
        id: endpoint.to_string(),
        service: service.to_owned(),
        endpoint,
        metadata,
    });
    Ok(instances.collect())
}

/// The targets, ports and weights of the SRV records in `answers`; a target
/// of `.` (RFC 2782: no service here) and other record types are skipped.
pub(super) fn srv_targets(answers: &[Record]) -> impl Iterator<Item = (&Name, u16, Metadata)> {
    answers.iter().filter_map(|record| match &record.data {
        RData::SRV(srv) if !srv.target.is_root() => {
            Some((&srv.target, srv.port, Metadata { weight: srv.weight.into(), ..Metadata::default() }))
        }
        _ => None,
    })
}

/// The instances the SRV records of a DNS answer (`message`, wire format)
/// name, with their targets for addresses: what the fuzz target reads.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_answer(message: &[u8]) -> Result<Vec<(String, u16, u32)>, String> {
    let message = hickory_resolver::proto::op::Message::from_vec(message).map_err(|e| e.to_string())?;
    Ok(srv_targets(&message.answers).map(|(name, port, m)| (name.to_string(), port, m.weight)).collect())
}

/// The A and AAAA addresses of `name`; none when it has none.
async fn addresses(resolver: &TokioResolver, name: Name) -> Result<Vec<IpAddr>, NetError> {
    match resolver.lookup_ip(name).await {
        Ok(found) => Ok(found.iter().collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A registration that registered nothing.
#[derive(Debug)]
struct ReadOnly;

impl Lease for ReadOnly {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
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
        Box::pin(async { Ok(Box::new(ReadOnly) as Box<dyn Lease>) })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let service = service.to_owned();
        Box::pin(async move {
            let name = self.name_for(&service)?;
            let source =
                Lookup { resolver: self.resolver()?, name, records: self.records, service: service.clone() };
            let what = format!("resolving {service} in {}", self.url);
            let name = source.name.clone();
            follow(service, what, Pace::every(self.interval), source)
                .await
                .map_err(|e| unreachable(&self.url, format!("looking up {name}: {e}"), FIX))
        })
    }
}

/// The lookups of one service's records.
#[derive(Debug)]
struct Lookup {
    resolver: TokioResolver,
    name: Name,
    records: Records,
    service: String,
}

impl Source for Lookup {
    type Error = NetError;

    async fn fetch(&mut self) -> Result<Option<Vec<Instance>>, NetError> {
        lookup(&self.resolver, &self.name, self.records, &self.service).await.map(Some)
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

        let dns = parse("dns://10.0.0.2:53/_grpc._tcp.payment.example?interval=200ms").unwrap();
        assert_eq!(dns.server, Some(SocketAddr::from(([10, 0, 0, 2], 53))));
        assert_eq!((dns.records, dns.interval), (Records::Srv, Duration::from_millis(200)));

        let dns = parse("dns://[::1]:5353/{service}.svc.cluster.local.:7").unwrap();
        assert_eq!(dns.server.map(|s| s.to_string()).as_deref(), Some("[::1]:5353"));
        assert_eq!(dns.records, Records::Ip { port: 7 });
    }

    #[test]
    fn service_placeholder_is_replaced_by_a_dns_label() {
        let dns = parse("dns://10.0.0.2:53/{service}.svc.cluster.local:50051").unwrap();
        let name = dns.name_for("order.payment.v1.OrderPayment").unwrap();
        assert_eq!(name.to_ascii(), "order-payment-v1-orderpayment.svc.cluster.local");
        let srv = parse("dns://_grpc._tcp.{service}.example").unwrap();
        assert_eq!(srv.name_for("a.B").unwrap().to_ascii(), "_grpc._tcp.a-b.example");
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
        let dns = parse("dns://127.0.0.1:1/x.example:1").unwrap();
        let instance = Instance::new("a.A", Endpoint::new("127.0.0.1", 1), Metadata::default());
        let lease = dns.register(instance.clone()).await.unwrap();
        lease.deregister().await.unwrap();
        dns.register(instance).await.unwrap();
        assert!(dns.told.load(Ordering::Relaxed));
    }
}
