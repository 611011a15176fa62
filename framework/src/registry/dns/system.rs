//! A and AAAA records through the system's resolver: `getaddrinfo`, as
//! every program on the host resolves names (`/etc/resolv.conf` with its
//! search domains and `ndots`, `/etc/hosts`, `nsswitch.conf`). What a
//! Kubernetes headless Service needs, without a DNS client of our own.

use std::net::IpAddr;

use dns_lookup::{AddrInfoHints, LookupErrorKind, SockType};

/// The A and AAAA addresses of `name`; none when the name does not exist
/// or has no addresses. Blocks: call it off the async workers.
pub(super) fn addresses(name: &str) -> Result<Vec<IpAddr>, String> {
    // One socket type, so each address comes once rather than once per type.
    let hints = AddrInfoHints { socktype: SockType::Stream.into(), ..AddrInfoHints::default() };
    let found = match dns_lookup::getaddrinfo(Some(name), None, Some(hints)) {
        Ok(found) => found,
        Err(err) => return absent(err.kind()).then(Vec::new).ok_or_else(|| describe(name, err.kind())),
    };
    let mut addresses = Vec::new();
    for info in found {
        let info = info.map_err(|err| format!("reading the addresses of `{name}`: {err}"))?;
        if !addresses.contains(&info.sockaddr.ip()) {
            addresses.push(info.sockaddr.ip());
        }
    }
    Ok(addresses)
}

/// Whether the resolver's answer means the name has no addresses (it does
/// not exist, or has records of other types only), rather than that no
/// answer could be had.
fn absent(kind: LookupErrorKind) -> bool {
    matches!(kind, LookupErrorKind::NoName | LookupErrorKind::NoData)
}

/// Why `name` could not be resolved.
fn describe(name: &str, kind: LookupErrorKind) -> String {
    let why = match kind {
        LookupErrorKind::Again => "the DNS server did not answer in time or answered SERVFAIL",
        LookupErrorKind::Fail => "the DNS server refused or failed the query",
        LookupErrorKind::Memory => "the resolver ran out of memory",
        LookupErrorKind::System | LookupErrorKind::IO => "the resolver failed with a system error",
        _ => "the resolver rejected the query",
    };
    format!("the system resolver cannot resolve `{name}` ({kind:?}): {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_to_loopback() {
        let found = addresses("localhost").unwrap();
        assert!(!found.is_empty() && found.iter().all(IpAddr::is_loopback), "{found:?}");
        let mut unique = found.clone();
        unique.dedup();
        assert_eq!(unique, found, "each address once");
    }

    #[test]
    fn a_missing_name_has_no_addresses_and_a_failed_lookup_says_so() {
        assert!(absent(LookupErrorKind::NoName) && absent(LookupErrorKind::NoData));
        for kind in [LookupErrorKind::Again, LookupErrorKind::Fail, LookupErrorKind::System] {
            assert!(!absent(kind), "{kind:?} is an outage, not an empty answer");
            let msg = describe("payment.default.svc", kind);
            assert!(msg.contains("payment.default.svc") && msg.contains(&format!("{kind:?}")), "{msg}");
        }
    }
}
