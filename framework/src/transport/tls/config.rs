//! The `[tls]` section: which files hold the certificates and keys, who may
//! call which service, and the handshake and reload timings. Checked when
//! the configuration is loaded; the files themselves are read when the
//! server binds or a client first connects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The default bound on one TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bound on TLS handshakes in flight at once, per listener.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// The accepted range of `tls.max_handshakes`.
pub const MAX_HANDSHAKES_RANGE: (usize, usize) = (1, 65_536);
/// The default interval between checks of the certificate files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The accepted range of `tls.handshake_timeout`.
pub const HANDSHAKE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(60));
/// The accepted range of `tls.reload_interval`.
pub const RELOAD_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// TLS for the server and for the clients of this process. See
/// `docs/tls.md`.
///
/// - `cert` and `key` (PEM files, given together): the server serves TLS
///   with them, registers its instances as `https`, and the clients present
///   them as their identity when a server asks for one.
/// - `client_ca`: the server requires a client certificate signed by one of
///   these CAs (mutual TLS).
/// - `ca`: the CAs the clients trust for `https` instances.
/// - `allow`: per full service name, the client identities (a URI SAN such as
///   `spiffe://example.org/order-status`, a DNS SAN, or an IP SAN) that may
///   call it; services not listed take any verified client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert: Option<PathBuf>,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CAs whose client certificates the server requires (PEM); unset, no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// CAs the clients trust for `https` instances (PEM).
    pub ca: Option<PathBuf>,
    /// The name clients check the server's certificate against, instead of
    /// the host each instance registered.
    pub server_name: Option<String>,
    /// Client identities allowed per service: `"pkg.Service" = ["spiffe://..."]`.
    pub allow: BTreeMap<String, Vec<String>>,
    /// How long a TLS handshake may take before the connection is closed.
    #[serde(deserialize_with = "handshake_timeout", serialize_with = "crate::duration::serialize")]
    pub handshake_timeout: Duration,
    /// How many TLS handshakes one listener runs at once; a connection that
    /// arrives when that many are in flight is closed at once, so a flood of
    /// slow handshakes costs bounded memory and CPU.
    #[serde(deserialize_with = "max_handshakes")]
    pub max_handshakes: usize,
    /// How often the certificate, key and CA files are checked for changes.
    #[serde(deserialize_with = "reload_interval", serialize_with = "crate::duration::serialize")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            client_ca: None,
            ca: None,
            server_name: None,
            allow: BTreeMap::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

impl TlsConfig {
    /// Whether the server serves TLS (`cert` and `key` are set).
    pub fn serves_tls(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// Whether any TLS setting is made.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.client_ca.is_some() || self.ca.is_some()
    }

    /// The problems of the settings taken together, one message per problem,
    /// each naming the key and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (&self.cert, &self.key) {
            (Some(_), None) => problems.push(
                "`tls.key` is missing: `tls.cert` needs the file of its private key; set both or neither".to_owned(),
            ),
            (None, Some(_)) => problems.push(
                "`tls.cert` is missing: `tls.key` needs the file of its certificate chain; set both or neither"
                    .to_owned(),
            ),
            _ => {}
        }
        if self.client_ca.is_some() && self.cert.is_none() {
            problems.push(
                "`tls.client_ca` is set but `tls.cert` and `tls.key` are not: a server asks for client \
                 certificates only over TLS; set the server's own certificate and key"
                    .to_owned(),
            );
        }
        if !self.allow.is_empty() && self.client_ca.is_none() {
            problems.push(
                "`tls.allow` is set but `tls.client_ca` is not: identities come from verified client \
                 certificates; set `tls.client_ca` to the CA that signs them"
                    .to_owned(),
            );
        }
        for (service, identities) in &self.allow {
            if service.trim().is_empty() || service.contains('/') {
                problems.push(format!(
                    "`tls.allow.\"{service}\"`: not a full service name; expected one such as \"order.payment.v1.OrderPayment\""
                ));
            }
            if identities.is_empty() {
                problems.push(format!(
                    "`tls.allow.\"{service}\"` is empty, which would refuse every caller; list the identities \
                     allowed, or remove the entry to allow any verified client"
                ));
            }
            if let Some(bad) = identities.iter().find(|i| i.trim().is_empty()) {
                problems.push(format!(
                    "`tls.allow.\"{service}\"`: `{bad}` is not an identity; expected a URI such as \
                     spiffe://example.org/order-status, a DNS name or an IP address"
                ));
            }
        }
        if self.server_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            problems
                .push("`tls.server_name` is empty; give the name in the servers' certificates".to_owned());
        }
        problems
    }
}

fn bounded<'de, D: Deserializer<'de>>(d: D, range: (Duration, Duration)) -> Result<Duration, D::Error> {
    let value = crate::duration::deserialize(d)?;
    if value < range.0 || value > range.1 {
        return Err(serde::de::Error::custom(format!(
            "`{}` is out of range; expected from {} to {}",
            humantime::format_duration(value),
            humantime::format_duration(range.0),
            humantime::format_duration(range.1),
        )));
    }
    Ok(value)
}

fn handshake_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    bounded(d, HANDSHAKE_TIMEOUT_RANGE)
}

fn max_handshakes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = u64::deserialize(d)?;
    let (low, high) = MAX_HANDSHAKES_RANGE;
    usize::try_from(value).ok().filter(|v| (low..=high).contains(v)).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{value} is out of range; expected a whole number from {low} to {high}"
        ))
    })
}

fn reload_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    bounded(d, RELOAD_INTERVAL_RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_taken_together() {
        assert!(TlsConfig::default().problems().is_empty());
        let half = TlsConfig { cert: Some("c.pem".into()), ..TlsConfig::default() };
        assert!(half.problems()[0].contains("`tls.key` is missing"), "{:?}", half.problems());
        let mtls_alone = TlsConfig { client_ca: Some("ca.pem".into()), ..TlsConfig::default() };
        assert!(mtls_alone.problems()[0].contains("`tls.client_ca` is set"));
        let allow = TlsConfig {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            allow: BTreeMap::from([("a.v1.A".to_owned(), Vec::new())]),
            ..TlsConfig::default()
        };
        let problems = allow.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("`tls.allow.\"a.v1.A\"` is empty"), "{problems:?}");
    }
}
