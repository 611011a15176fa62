//! Where services find each other, named by one URL.
//!
//! - `static://SERVICE=HOST:PORT,HOST:PORT;SERVICE2=HOST:PORT`: fixed
//!   endpoints per full service name, such as
//!   `static://order.payment.v1.OrderPayment=127.0.0.1:50051`.

mod url;

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Error;

/// An endpoint of a service: where one instance listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// The host, a name or an IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `http://` URI a gRPC channel connects to.
    pub fn uri(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A registry, chosen by URL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    url: Arc<str>,
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Static(Arc<HashMap<String, Vec<Endpoint>>>),
}

impl Registry {
    /// Opens the registry that `url` names.
    ///
    /// # Errors
    ///
    /// A malformed URL or an unknown scheme, with what is expected.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let parsed = url::parse(url)?;
        Ok(Registry { url: url.into(), backend: Backend::Static(Arc::new(parsed)) })
    }

    /// The URL the registry was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The endpoints of `service` known now.
    ///
    /// # Errors
    ///
    /// When the registry knows no endpoint of the service.
    pub fn endpoints(&self, service: &str) -> Result<Vec<Endpoint>, Error> {
        match &self.backend {
            Backend::Static(map) => match map.get(service) {
                Some(endpoints) if !endpoints.is_empty() => Ok(endpoints.clone()),
                _ => Err(Error::NoEndpoints {
                    service: service.to_owned(),
                    registry: self.url.to_string(),
                    hint: format!(
                        "add `{service}=HOST:PORT` to the static:// URL (services are separated by `;`)"
                    ),
                }),
            },
        }
    }
}

impl std::str::FromStr for Registry {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        Registry::from_url(url)
    }
}
