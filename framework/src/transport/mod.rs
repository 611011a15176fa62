//! How connections are made (client) and accepted (server): the one place
//! that knows about sockets, schemes and, later, TLS.
//!
//! An [`Endpoint`] carries its [`Scheme`]: an instance registered by a
//! server that speaks TLS says `https`, and a client connects accordingly,
//! with no per-client setting.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::error::Error;
use crate::registry::{Endpoint, Scheme};

/// How long a client waits for a connection to an instance.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A lazily connected channel to `endpoint`: the first call connects, and a
/// broken connection is made again on the next call.
///
/// # Errors
///
/// When the endpoint's host cannot be put in a URI, or its scheme needs
/// what this build lacks.
pub(crate) fn connect_lazy(endpoint: &Endpoint) -> Result<tonic::transport::Channel, Error> {
    let bad = |reason: String| Error::Endpoint { endpoint: endpoint.to_string(), reason };
    if endpoint.scheme() == Scheme::Https {
        return Err(bad("it is registered as `https`, and this build of trellis has no TLS support; \
             serve it in plaintext, or build trellis with TLS"
            .to_owned()));
    }
    let channel = tonic::transport::Endpoint::from_shared(endpoint.uri())
        .map_err(|e| bad(format!("not a valid address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(channel)
}

/// A bound listening socket.
#[derive(Debug)]
pub(crate) struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Listener {
    /// Binds `addr`; port 0 picks a free port.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, naming it and the fix.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
        Ok(Listener { listener, local_addr })
    }

    /// The bound address, with the real port when 0 was asked.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The scheme clients reach this listener with.
    pub(crate) fn scheme(&self) -> Scheme {
        Scheme::Http
    }

    /// The accepted connections, with `TCP_NODELAY` (gRPC's small frames
    /// must not wait for Nagle's algorithm).
    pub(crate) fn incoming(self) -> TcpIncoming {
        TcpIncoming::from(self.listener).with_nodelay(Some(true))
    }
}
