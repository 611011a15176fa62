//! The clients' TLS: trust roots from `tls.ca`, the process's own
//! certificate as the client identity, the server's name checked against
//! its certificate. The files are read again for each new instance, so a
//! rotated CA or client certificate reaches new connections.

use std::error::Error as StdError;

use std::sync::Arc;

use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::sign::SingleCertAndKey;

use super::{TlsConfig, files};

/// The rustls client settings to reach servers with, after checking every
/// file named in `settings`: `tls.ca` as the only trust roots, ALPN `h2`,
/// and `tls.cert`/`tls.key` presented when the server asks for a client
/// certificate.
pub(crate) fn client_config(settings: &TlsConfig) -> Result<ClientConfig, String> {
    let Some(ca) = &settings.ca else {
        return Err("it is registered as `https`, and `tls.ca` is not set; set it to the file of the CA \
                    that signed the servers' certificates"
            .to_owned());
    };
    let roots = files::roots("tls.ca", ca)?;
    let builder = ClientConfig::builder_with_provider(files::provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))?
        .with_root_certificates(roots);
    let mut config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => builder
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(files::certified_key(cert, key)?))),
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a failed TLS handshake means and how to fix it, when `err`'s
/// source chain holds one.
pub(crate) fn describe_failure(err: &(dyn StdError + 'static)) -> Option<String> {
    use tokio_rustls::rustls::{AlertDescription, CertificateError, Error};
    let mut source = Some(err);
    while let Some(cause) = source {
        let rustls = cause.downcast_ref::<Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<Error>())
        });
        if let Some(rustls) = rustls {
            return Some(match rustls {
                Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    "TLS: the server's certificate is not signed by a CA in `tls.ca` (unknown CA); set `tls.ca` \
                     to the CA that signed it"
                        .to_owned()
                }
                Error::InvalidCertificate(CertificateError::NotValidForNameContext { expected, presented }) => {
                    format!(
                        "TLS: the server's certificate is not valid for `{}` (name mismatch; it names {}); \
                         issue it for the name clients use, or set `tls.server_name`",
                        expected.to_str(),
                        if presented.is_empty() { "nothing".to_owned() } else { presented.join(", ") }
                    )
                }
                Error::InvalidCertificate(CertificateError::NotValidForName) => {
                    "TLS: the server's certificate is not valid for the name it was reached by (name \
                     mismatch); issue it for the name clients use, or set `tls.server_name`"
                        .to_owned()
                }
                Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                    "TLS: the server's certificate has expired; renew it on the server".to_owned()
                }
                Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                ) => "TLS: the server's certificate is not valid yet; check the clocks".to_owned(),
                Error::AlertReceived(
                    alert @ (AlertDescription::CertificateRequired
                    | AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::CertificateExpired
                    | AlertDescription::AccessDenied),
                ) => format!(
                    "TLS: the server refused this client's certificate ({alert:?}); set `tls.cert` and \
                     `tls.key` to an identity signed by a CA in the server's `tls.client_ca`"
                ),
                other => format!("TLS: {other}"),
            });
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{AlertDescription, CertificateError, Error};

    use super::*;

    fn described(err: Error) -> String {
        // As the connector reports it: a rustls error inside an I/O error.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        describe_failure(&io).expect("a TLS failure")
    }

    #[test]
    fn each_handshake_failure_says_what_to_fix() {
        let expired = described(Error::InvalidCertificate(CertificateError::Expired));
        assert!(expired.contains("has expired") && expired.contains("renew"), "{expired}");
        let unknown = described(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(unknown.contains("unknown CA") && unknown.contains("`tls.ca`"), "{unknown}");
        let mismatch = described(Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("10.0.0.7").unwrap().to_owned(),
            presented: vec!["DnsName(\"payments.internal\")".to_owned()],
        }));
        assert!(
            mismatch.contains("`10.0.0.7`")
                && mismatch.contains("payments.internal")
                && mismatch.contains("tls.server_name"),
            "{mismatch}"
        );
        let refused = described(Error::AlertReceived(AlertDescription::CertificateRequired));
        assert!(
            refused.contains("refused this client's certificate") && refused.contains("`tls.client_ca`"),
            "{refused}"
        );
        assert!(describe_failure(&std::io::Error::other("connection reset")).is_none());
    }
}
