//! Reading certificates, keys and CAs from PEM files, with errors that name
//! the setting, the file and the fix: missing, unreadable, not PEM,
//! expired or not yet valid, a key that is not the certificate's.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

/// The one crypto provider: ring, which needs no C toolchain.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => format!(
            "`{setting}`: file `{}` does not exist; check the path, or create the file (see docs/tls.md)",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "`{setting}`: file `{}` cannot be read: permission denied; let this process's user read it",
            path.display()
        ),
        _ => format!("`{setting}`: file `{}` cannot be read: {err}", path.display()),
    })
}

/// The certificates in the PEM file at `path`, each checked to be valid now.
pub(crate) fn certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(setting, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|err| not_pem(setting, path, "certificate", &err))?;
    if certs.is_empty() {
        return Err(not_pem(setting, path, "certificate", &pem::Error::NoItemsFound));
    }
    for cert in &certs {
        check_validity(setting, path, cert)?;
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub(crate) fn private_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| not_pem(setting, path, "private key", &err))
}

/// The CAs in the PEM file at `path`, as trust roots.
pub(crate) fn roots(setting: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(setting, path)? {
        roots.add(cert).map_err(|err| {
            format!(
                "`{setting}`: file `{}` holds a certificate that is not a usable CA: {err}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The certificate chain at `cert` with the key at `key`, checked to belong
/// together.
pub(crate) fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates("tls.cert", cert)?;
    let der = private_key("tls.key", key)?;
    let signing = provider().key_provider.load_private_key(der).map_err(|err| {
        format!(
            "`tls.key`: file `{}` holds a key this build cannot use ({err}); use an ECDSA P-256/P-384, \
             Ed25519 or RSA key",
            key.display()
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(tokio_rustls::rustls::Error::InconsistentKeys(
            tokio_rustls::rustls::InconsistentKeys::KeyMismatch,
        )) => Err(format!(
            "`tls.key`: the key in `{}` does not match the certificate in `{}` (wrong key); give the key \
             the certificate was issued for",
            key.display(),
            cert.display()
        )),
        Err(tokio_rustls::rustls::Error::InconsistentKeys(
            tokio_rustls::rustls::InconsistentKeys::Unknown,
        )) => Ok(Arc::new(certified)),
        Err(err) => Err(format!("`tls.cert`: file `{}`: {err}", cert.display())),
    }
}

fn not_pem(setting: &str, path: &Path, what: &str, err: &pem::Error) -> String {
    let marker = match what {
        "certificate" => "`-----BEGIN CERTIFICATE-----`",
        _ => "`-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`",
    };
    let why = match err {
        pem::Error::NoItemsFound => "holds no PEM".to_owned(),
        other => format!("is not valid PEM ({other}), expected a PEM"),
    };
    format!(
        "`{setting}`: file `{}` {why} {what} ({marker}); give a PEM file, or convert a DER one with \
         `openssl {} -inform der -in FILE -out FILE.pem`",
        path.display(),
        if what == "certificate" { "x509" } else { "pkey" },
    )
}

/// Refuses a certificate that has expired or is not valid yet.
fn check_validity(setting: &str, path: &Path, cert: &CertificateDer<'_>) -> Result<(), String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Err(format!(
            "`{setting}`: file `{}` holds a PEM block that is not an X.509 certificate; give the certificate \
             itself",
            path.display()
        ));
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let validity = parsed.validity();
    let subject = parsed.subject().to_string();
    if validity.not_after.timestamp() < now {
        return Err(format!(
            "`{setting}`: the certificate `{subject}` in `{}` expired on {} (expired); renew it",
            path.display(),
            validity.not_after
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(format!(
            "`{setting}`: the certificate `{subject}` in `{}` is not valid until {}; check this machine's \
             clock, or issue one valid now",
            path.display(),
            validity.not_before
        ));
    }
    Ok(())
}
