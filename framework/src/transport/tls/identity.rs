//! Who is calling: the subject alternative names of the verified client
//! certificate of the connection a request came on.

use std::fmt;
use std::net::IpAddr;

/// The identity of a client that presented a verified certificate (mutual
/// TLS): the subject alternative names of its leaf certificate.
///
/// In a handler:
///
/// ```
/// use trellis::tls::PeerIdentity;
///
/// fn caller(request: &trellis::Request<()>) -> String {
///     match PeerIdentity::of(request) {
///         Some(peer) => peer.spiffe_id().unwrap_or("a verified client").to_owned(),
///         None => "anonymous".to_owned(),
///     }
/// }
/// assert_eq!(caller(&trellis::Request::new(())), "anonymous");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    uris: Vec<String>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
}

impl PeerIdentity {
    /// The identity of the client `request` came from, when it presented a
    /// verified certificate.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<PeerIdentity> {
        #[cfg(feature = "tls")]
        {
            use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
            let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
            from_certs(info.peer_certs()?.first()?.as_ref())
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = request;
            None
        }
    }

    /// The same, for a request as a tower layer sees it.
    pub fn of_http<B>(request: &http::Request<B>) -> Option<PeerIdentity> {
        #[cfg(feature = "tls")]
        {
            use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
            let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
            from_certs(info.peer_certs()?.first()?.as_ref())
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = request;
            None
        }
    }

    /// The URI names, such as `spiffe://example.org/ns/prod/sa/order-status`.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The first `spiffe://` URI name, the workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris.iter().map(String::as_str).find(|u| u.starts_with("spiffe://"))
    }

    /// The DNS names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The IP address names.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }

    /// Whether `name` (a URI, DNS name or IP address, as written in
    /// `tls.allow`) is one of this identity's names. DNS names are compared
    /// ignoring case.
    pub fn has_name(&self, name: &str) -> bool {
        self.uris.iter().any(|u| u == name)
            || self.dns_names.iter().any(|d| d.eq_ignore_ascii_case(name))
            || name.parse::<IpAddr>().is_ok_and(|ip| self.ip_addresses.contains(&ip))
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .uris
            .iter()
            .cloned()
            .chain(self.dns_names.iter().cloned())
            .chain(self.ip_addresses.iter().map(IpAddr::to_string))
            .collect();
        if names.is_empty() {
            f.write_str("a certificate with no names")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The names in a DER certificate's subject alternative names.
#[cfg(feature = "tls")]
pub(crate) fn from_certs(der: &[u8]) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut identity = PeerIdentity::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => identity.ip_addresses.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?)),
                    16 => identity.ip_addresses.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(identity)
}
