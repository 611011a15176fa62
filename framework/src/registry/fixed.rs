//! `static://SERVICE=HOST:PORT[,HOST:PORT...][;SERVICE=...]`: fixed endpoints.

use std::collections::HashMap;

use super::types::{Backend, BoxFuture, Endpoint, Instance, Lease, Metadata, NoLease, Resolution};
use super::url::{Target, parse_endpoint};
use crate::error::Error;

/// Endpoints written in the URL. Registering does nothing: the endpoints
/// are whatever the URL says.
#[derive(Debug)]
pub(super) struct Fixed {
    services: HashMap<String, Vec<Endpoint>>,
}

impl Fixed {
    pub(super) fn parse(target: &Target<'_>) -> Result<Self, Error> {
        let err = |reason: String| target.error(reason);
        let mut services = HashMap::new();
        for entry in target.rest.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (service, addrs) =
                entry.split_once('=').ok_or_else(|| err(format!("`{entry}` has no `=`")))?;
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
        Ok(Fixed { services })
    }
}

impl Backend for Fixed {
    fn register(&self, instance: Instance) -> BoxFuture<'_, Result<Box<dyn Lease>, Error>> {
        tracing::debug!(service = %instance.service, "static registry: nothing to register");
        Box::pin(async { Ok(Box::new(NoLease) as Box<dyn Lease>) })
    }

    fn resolve(&self, service: &str) -> BoxFuture<'_, Result<Resolution, Error>> {
        let instances = self
            .services
            .get(service)
            .into_iter()
            .flatten()
            .map(|endpoint| Instance {
                id: endpoint.to_string(),
                service: service.to_owned(),
                endpoint: endpoint.clone(),
                metadata: Metadata::default(),
            })
            .collect();
        let resolution = Resolution::fixed(service, instances);
        Box::pin(async { Ok(resolution) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, rest: &str) -> Result<Fixed, Error> {
        Fixed::parse(&Target { url, rest, form: "static://SERVICE=HOST:PORT" })
    }

    #[test]
    fn parses_services_and_endpoints() {
        let fixed = parse("u", "a.v1.A=127.0.0.1:1,localhost:2;b.B=[::1]:3").unwrap();
        let a: Vec<String> = fixed.services["a.v1.A"].iter().map(ToString::to_string).collect();
        assert_eq!(a, ["127.0.0.1:1", "localhost:2"]);
        assert_eq!(fixed.services["b.B"][0].uri(), "http://[::1]:3");
        assert!(parse("u", "").unwrap().services.is_empty());
    }

    #[test]
    fn errors_name_the_url_and_the_fix() {
        for (rest, needle) in [
            ("a.A", "has no `=`"),
            ("a.A=host", "no port"),
            ("a.A=host:99999", "not a number"),
            ("a/A=h:1", "not a full service name"),
        ] {
            let url = format!("static://{rest}");
            let msg = parse(&url, rest).unwrap_err().to_string();
            assert!(msg.contains(&url) && msg.contains(needle), "{url}: {msg}");
        }
    }

    #[tokio::test]
    async fn resolves_what_the_url_says() {
        let fixed = parse("u", "a.A=127.0.0.1:1,127.0.0.1:2").unwrap();
        let resolution = fixed.resolve("a.A").await.unwrap();
        assert_eq!(resolution.endpoints().len(), 2);
        assert!(fixed.resolve("b.B").await.unwrap().current().is_empty());
    }
}
