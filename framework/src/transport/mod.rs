//! How connections are made (client) and accepted (server): the one place
//! that knows about sockets, schemes and TLS ([`tls`]).
//!
//! An [`Endpoint`] carries its [`Scheme`]: an instance registered by a
//! server that speaks TLS says `https`, and a client connects accordingly,
//! with no per-client setting.

mod coalesce;
pub mod tls;

pub(crate) use coalesce::Coalesce;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

use crate::error::Error;
use crate::registry::{Endpoint, Scheme};

/// How long a client waits for a connection to an instance.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A lazily connected channel to `endpoint`: the first call connects, and a
/// broken connection is made again on the next call. An `https` endpoint
/// is reached with the clients' `tls` settings.
///
/// # Errors
///
/// When the endpoint's host cannot be put in a URI, or its scheme needs
/// TLS settings (or a TLS feature) this process lacks.
pub(crate) fn connect_lazy(
    endpoint: &Endpoint,
    tls: Option<&tls::TlsConfig>,
) -> Result<tonic::transport::Channel, Error> {
    let bad = |reason: String| Error::Endpoint { endpoint: endpoint.to_string(), reason };
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.uri())
        .map_err(|e| bad(format!("not a valid address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if endpoint.scheme() == Scheme::Https {
        #[cfg(feature = "tls")]
        {
            let settings = tls.cloned().unwrap_or_default();
            let config = tls::client_config(&settings, endpoint).map_err(bad)?;
            channel = channel.tls_config(config).map_err(|e| bad(format!("TLS: {e}")))?;
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (tls, &mut channel);
            return Err(bad("it is registered as `https`, and this build of trellis has no TLS support; \
                 serve it in plaintext, or build trellis with the `tls` feature"
                .to_owned()));
        }
    }
    Ok(channel.connect_with_connector_lazy(Connector))
}

/// Opens the client's TCP connections: `TCP_NODELAY` on (gRPC's small
/// frames must not wait for Nagle's algorithm), writes coalesced
/// ([`Coalesce`]). tonic puts TLS on top when the endpoint asks for it, and
/// bounds the whole by [`CONNECT_TIMEOUT`].
#[derive(Debug, Clone, Copy)]
struct Connector;

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Coalesce<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let bad =
                || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{uri}` has no host"));
            // An IPv6 host keeps its brackets in a URI, not in a socket address.
            let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            let stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(Coalesce::new(stream)))
        })
    }
}

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
    if endpoint.scheme() == Scheme::Https && chain.contains("connection closed") {
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
