//! Parsing registry URLs.

use std::collections::HashMap;

use super::Endpoint;
use crate::error::Error;

const EXPECTED: &str = "expected static://SERVICE=HOST:PORT[,HOST:PORT...][;SERVICE=...]";

pub(super) fn parse(url: &str) -> Result<HashMap<String, Vec<Endpoint>>, Error> {
    let err = |reason: String| Error::Registry { url: url.to_owned(), reason };
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| err(format!("not a URL (no `scheme://`); {EXPECTED}")))?;
    if scheme != "static" {
        return Err(err(format!("unknown registry scheme `{scheme}`; {EXPECTED}")));
    }
    let mut services = HashMap::new();
    for entry in rest.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (service, addrs) =
            entry.split_once('=').ok_or_else(|| err(format!("`{entry}` has no `=`; {EXPECTED}")))?;
        let service = service.trim();
        if service.is_empty() || !service.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '_') {
            return Err(err(format!(
                "`{service}` is not a full service name such as order.payment.v1.OrderPayment"
            )));
        }
        let endpoints = addrs
            .split(',')
            .map(|addr| parse_endpoint(addr.trim()).map_err(&err))
            .collect::<Result<Vec<_>, _>>()?;
        services.insert(service.to_owned(), endpoints);
    }
    Ok(services)
}

fn parse_endpoint(addr: &str) -> Result<Endpoint, String> {
    let bad =
        |why: &str| format!("`{addr}` is not HOST:PORT ({why}), such as 127.0.0.1:50051 or [::1]:50051");
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 cannot be connected to"));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(bad("bad host"));
    }
    Ok(Endpoint { host: host.to_owned(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services_and_endpoints() {
        let map = parse("static://a.v1.A=127.0.0.1:1,localhost:2;b.B=[::1]:3").unwrap();
        assert_eq!(
            map["a.v1.A"].iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["127.0.0.1:1", "localhost:2"]
        );
        assert_eq!(map["b.B"][0].uri(), "http://[::1]:3");
        assert!(parse("static://").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_url_and_the_fix() {
        for (url, needle) in [
            ("etcd://x:1", "unknown registry scheme `etcd`"),
            ("127.0.0.1:5", "no `scheme://`"),
            ("static://a.A", "has no `=`"),
            ("static://a.A=host", "no port"),
            ("static://a.A=host:99999", "not a number"),
            ("static://a/A=h:1", "not a full service name"),
        ] {
            let msg = parse(url).unwrap_err().to_string();
            assert!(msg.contains(url) && msg.contains(needle), "{url}: {msg}");
        }
    }
}
