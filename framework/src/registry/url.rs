//! Registry URLs: the scheme picks the backend, the rest configures it.

use std::sync::Arc;

use super::Backend;
use crate::error::Error;

/// What every URL error ends with.
pub(super) const EXPECTED: &str = "expected local://[DIR], etcd://HOST:PORT[,HOST:PORT...], \
     dns://[SERVER:PORT/]NAME[:PORT] or static://SERVICE=HOST:PORT[,...][;SERVICE=...]";

/// Opens the backend `url` names, without contacting it.
pub(super) fn open(url: &str) -> Result<Arc<dyn Backend>, Error> {
    let err = |reason: String| Error::Registry { url: url.to_owned(), reason };
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| err(format!("not a URL (no `scheme://`); {EXPECTED}")))?;
    match scheme {
        "static" => Ok(Arc::new(super::fixed::Fixed::parse(url, rest)?)),
        "local" => Ok(Arc::new(super::local::Local::parse(url, rest)?)),
        #[cfg(feature = "dns")]
        "dns" => Ok(Arc::new(super::dns::Dns::parse(url, rest)?)),
        #[cfg(not(feature = "dns"))]
        "dns" => Err(err("dns:// needs the `dns` cargo feature of trellis, which is off in this build; \
             enable it: trellis = { version = \"0.1\", features = [\"dns\"] }"
            .to_owned())),
        #[cfg(feature = "etcd")]
        "etcd" => Ok(Arc::new(super::etcd::Etcd::parse(url, rest)?)),
        #[cfg(not(feature = "etcd"))]
        "etcd" => Err(err("this build has no etcd registry; build trellis with its `etcd` cargo feature \
             (trellis = { features = [\"etcd\"] })"
            .to_owned())),
        _ => Err(err(format!("unknown registry scheme `{scheme}`; {EXPECTED}"))),
    }
}

/// Splits `rest` into its part before `?` and its `key=value` query pairs.
pub(super) fn query(rest: &str) -> (&str, Vec<(&str, &str)>) {
    match rest.split_once('?') {
        None => (rest, Vec::new()),
        Some((path, query)) => {
            let pairs =
                query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")));
            (path, pairs.collect())
        }
    }
}

/// Parses `HOST:PORT` (`[v6]:PORT` for IPv6).
pub(crate) fn parse_endpoint(addr: &str) -> Result<super::Endpoint, String> {
    let bad =
        |why: &str| format!("`{addr}` is not HOST:PORT ({why}), such as 127.0.0.1:50051 or [::1]:50051");
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 cannot be connected to"));
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        None if host.contains(':') => return Err(bad("an IPv6 address needs brackets")),
        None => host,
    };
    if host.is_empty() || host.contains(['/', ' ', '[', ']', '?', '&', ';', ',']) {
        return Err(bad("bad host"));
    }
    Ok(super::Endpoint::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_malformed_urls_say_what_is_expected() {
        for (url, needle) in [
            ("zookeeper://x:1", "unknown registry scheme `zookeeper`"),
            ("127.0.0.1:5", "no `scheme://`"),
            ("", "no `scheme://`"),
        ] {
            let msg = open(url).unwrap_err().to_string();
            assert!(msg.contains(needle) && msg.contains("local://") && msg.contains(url), "{url}: {msg}");
        }
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_without_the_feature_says_how_to_get_it() {
        let msg = open("etcd://127.0.0.1:2379").unwrap_err().to_string();
        assert!(msg.contains("etcd://127.0.0.1:2379") && msg.contains("`etcd` cargo feature"), "{msg}");
    }

    #[test]
    fn endpoints_parse_with_ipv6_and_reject_garbage() {
        assert_eq!(parse_endpoint("[::1]:5").unwrap().to_string(), "[::1]:5");
        assert_eq!(parse_endpoint("db.internal:80").unwrap().host(), "db.internal");
        for bad in ["x", "x:0", "x:70000", ":5", "a b:5", "::1", "::1:80"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
