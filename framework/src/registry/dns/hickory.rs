//! The lookups that need a DNS client of our own (the `dns` feature,
//! hickory-resolver): SRV records, and queries to a server the URL names.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, Record};

use super::{FIX, Records};
use crate::error::Error;
use crate::registry::types::{Endpoint, Metadata, unreachable};

/// How long one query waits for an answer; short, so an outage does not
/// hold up updates.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times a failed query is sent again.
const RETRIES: usize = 1;

/// The lookups of one name, by a resolver that caches nothing.
#[derive(Debug)]
pub(super) struct Lookups {
    resolver: TokioResolver,
    name: Name,
    records: Records,
}

impl Lookups {
    /// Lookups of `name` as `records`, sent to `server` (the system's
    /// configured servers when `None`).
    pub(super) fn new(
        url: &str,
        server: Option<SocketAddr>,
        name: &str,
        records: Records,
    ) -> Result<Self, Error> {
        let name = Name::from_ascii(name).map_err(|e| Error::Registry {
            url: url.to_owned(),
            reason: format!("`{name}` is not a DNS name: {e}"),
        })?;
        let mut builder = match server {
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
                    url,
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
        if server.is_some() {
            options.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder.build().map_err(|e| unreachable(url, e, FIX))?;
        Ok(Lookups { resolver, name, records })
    }

    /// Adds the endpoints the name resolves to now: none when it does not
    /// exist or has no records.
    pub(super) async fn find(&self, found: &mut BTreeMap<Endpoint, Metadata>) -> Result<(), NetError> {
        match self.records {
            Records::Ip { port } => {
                for ip in addresses(&self.resolver, self.name.clone()).await? {
                    found.entry(Endpoint::from(SocketAddr::new(ip, port))).or_default();
                }
            }
            Records::Srv => {
                let answers = match self.resolver.srv_lookup(self.name.clone()).await {
                    Ok(answers) => answers,
                    Err(e) if e.is_no_records_found() => return Ok(()),
                    Err(e) => return Err(e),
                };
                for (target, port, metadata) in srv_targets(answers.answers()) {
                    for ip in addresses(&self.resolver, target.clone()).await? {
                        found.entry(Endpoint::from(SocketAddr::new(ip, port))).or_insert(metadata.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The targets, ports and weights of the SRV records in `answers`; a target
/// of `.` (RFC 2782: no service here) and other record types are skipped.
fn srv_targets(answers: &[Record]) -> impl Iterator<Item = (&Name, u16, Metadata)> {
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
