//! How connections are made (client, [`Connection`]) and accepted
//! (server): the one place that knows about sockets, schemes and TLS
//! ([`tls`]).
//!
//! An [`Endpoint`] carries its [`Scheme`]: an instance registered by a
//! server that speaks TLS says `https`, and a client connects accordingly,
//! with no per-client setting.

mod client;
mod coalesce;
pub mod tls;

pub(crate) use client::NotSent;
pub use client::{Connection, ConnectionFuture};
pub(crate) use coalesce::Coalesce;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::error::Error;
use crate::registry::{Endpoint, Scheme};

/// How long a client waits for a connection to an instance.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a connection or call failed, as the transport said it, with what a
/// failed TLS handshake means and how to fix it.
pub(crate) fn failure_reason(endpoint: &Endpoint, err: &(dyn std::error::Error + 'static)) -> String {
    let chain = crate::error::error_chain(err);
    #[cfg(feature = "tls")]
    if let Some(tls) = tls::describe_failure(err) {
        return format!("{tls} ({chain})");
    }
    // Under TLS 1.3 a server refuses a client certificate after the
    // client's side of the handshake is done: the client learns it from the
    // server's alert on its first read, or only from the connection closing.
    const REFUSED: [&str; 5] =
        ["CertificateRequired", "BadCertificate", "UnknownCA", "CertificateUnknown", "AccessDenied"];
    if endpoint.scheme() == Scheme::Https
        && REFUSED.iter().any(|alert| chain.contains(&format!("received fatal alert: {alert}")))
    {
        return format!(
            "TLS: the server refused this client's certificate, missing or not signed by a CA in its \
             `tls.client_ca`; set `tls.cert` and `tls.key` to an identity it accepts ({chain})"
        );
    }
    // Or from its first write failing, when the server closed at once.
    const CLOSED: [&str; 3] = ["connection closed", "broken pipe", "connection reset"];
    if endpoint.scheme() == Scheme::Https && CLOSED.iter().any(|closed| chain.contains(closed)) {
        return format!(
            "{chain} (if the server requires client certificates, this is how it refuses one that is \
             missing or not signed by a CA in its `tls.client_ca`: set `tls.cert` and `tls.key` to an \
             identity it accepts)"
        );
    }
    chain
}

/// A bound listening socket, plaintext or TLS.
#[derive(Debug)]
pub(crate) struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsServer>,
}

/// The accepted connections of a [`Listener`].
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Plaintext TCP, with `TCP_NODELAY`.
    Plain(TcpIncoming),
    /// TLS done, with `TCP_NODELAY`.
    #[cfg(feature = "tls")]
    Tls(tls::TlsIncoming),
}

impl Listener {
    /// Binds `addr`; port 0 picks a free port. With `tls` settings that
    /// serve TLS, the certificate and key are loaded and checked first.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, or the TLS files cannot be used,
    /// naming them and the fix.
    pub(crate) async fn bind(addr: SocketAddr, tls: Option<&tls::TlsConfig>) -> Result<Self, Error> {
        let tls = match tls {
            Some(settings) => {
                let problems = settings.problems();
                if !problems.is_empty() {
                    return Err(Error::Config(problems.join("; ")));
                }
                server_tls(settings)?
            }
            None => None,
        };
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
        #[cfg(feature = "tls")]
        return Ok(Listener { listener, local_addr, tls });
        #[cfg(not(feature = "tls"))]
        {
            let _ = tls;
            Ok(Listener { listener, local_addr })
        }
    }

    /// The bound address, with the real port when 0 was asked.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The scheme clients reach this listener with.
    pub(crate) fn scheme(&self) -> Scheme {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return Scheme::Https;
        }
        Scheme::Http
    }

    /// Whether clients must present a certificate.
    pub(crate) fn mutual_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.as_ref().is_some_and(tls::TlsServer::mutual);
        #[cfg(not(feature = "tls"))]
        false
    }

    /// The accepted connections, with `TCP_NODELAY` (gRPC's small frames
    /// must not wait for Nagle's algorithm).
    pub(crate) fn incoming(self) -> Incoming {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            return Incoming::Tls(tls.incoming(self.listener));
        }
        Incoming::Plain(TcpIncoming::from(self.listener).with_nodelay(Some(true)))
    }
}

#[cfg(feature = "tls")]
fn server_tls(settings: &tls::TlsConfig) -> Result<Option<tls::TlsServer>, Error> {
    if !settings.serves_tls() {
        return Ok(None);
    }
    tls::TlsServer::load(settings).map(Some).map_err(Error::Config)
}

#[cfg(not(feature = "tls"))]
fn server_tls(settings: &tls::TlsConfig) -> Result<Option<()>, Error> {
    if settings.serves_tls() {
        return Err(Error::Config(
            "`tls.cert` is set, and this build of trellis has no TLS support; build trellis with the \
             `tls` feature, or remove the `[tls]` section"
                .to_owned(),
        ));
    }
    Ok(None)
}
