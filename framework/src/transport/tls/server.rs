//! The server's TLS: a rustls configuration built from the files, swapped
//! whole when they change (connections already open keep theirs), and an
//! accept loop that runs each handshake in its own task, bounded by
//! `tls.handshake_timeout`, and hands tonic the connections that completed.
//!
//! tonic's own TLS incoming takes its configuration once; this one reads
//! the current configuration for each new connection, which is what makes
//! reloading without dropping connections possible.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_core::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

use super::TlsConfig;
use super::files;
use crate::registry::AbortOnDrop;

/// Connections whose handshake completed, waiting for tonic to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// A server's TLS settings, loaded and checked; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct TlsServer {
    settings: TlsConfig,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsServer {
    /// Loads the certificate, key and client CAs named in `settings`.
    ///
    /// # Errors
    ///
    /// What is wrong with which file, and the fix.
    pub(crate) fn load(settings: &TlsConfig) -> Result<Self, String> {
        let config = build(settings)?;
        Ok(TlsServer { settings: settings.clone(), current: Arc::new(RwLock::new(config)) })
    }

    /// Whether clients must present a certificate.
    pub(crate) fn mutual(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// The connections accepted on `listener`, TLS done, and the task that
    /// reloads the files when they change; both stop when the stream is
    /// dropped.
    pub(crate) fn incoming(self, listener: TcpListener) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
        let handshakes = Handshakes {
            timeout: self.settings.handshake_timeout,
            in_flight: Arc::new(Semaphore::new(self.settings.max_handshakes)),
            refused: 0,
        };
        let accept = tokio::spawn(accept(listener, self.current.clone(), handshakes, tx));
        let reload = tokio::spawn(reload(self.settings, self.current));
        TlsIncoming { rx, _tasks: [AbortOnDrop(accept), AbortOnDrop(reload)] }
    }
}

/// The rustls configuration for `settings`.
fn build(settings: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Err("`tls.cert` and `tls.key` are both needed to serve TLS; set both".to_owned());
    };
    let certified = files::certified_key(cert, key)?;
    let provider = files::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let roots = files::roots("tls.client_ca", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| format!("`tls.client_ca`: file `{}`: {err}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(certified)));
    // gRPC, and REST over HTTP/1.1 on the same port.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One certificate for every client hello.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The bounds on one listener's handshakes: how long each, how many at once.
struct Handshakes {
    timeout: Duration,
    /// A permit per handshake in flight (`tls.max_handshakes`).
    in_flight: Arc<Semaphore>,
    /// Connections closed because every permit was taken.
    refused: u64,
}

async fn accept(
    listener: TcpListener,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    mut handshakes: Handshakes,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let handshake_timeout = handshakes.timeout;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait, rather than spin.
                tracing::warn!("cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.in_flight.clone().try_acquire_owned() else {
            // Closed at once: a flood of handshakes waits on no one's memory.
            // Logged at the 1st, 2nd, 4th, 8th... refusal, so it cannot flood the log.
            handshakes.refused += 1;
            if handshakes.refused.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    refused = handshakes.refused,
                    "connection closed: `tls.max_handshakes` TLS handshakes already in flight"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let config = current.read().unwrap_or_else(PoisonError::into_inner).clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(handshake_timeout, TlsAcceptor::from(config).accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(stream).await;
                }
                Ok(Err(err)) => tracing::info!(%peer, "TLS handshake failed: {}", describe_refusal(&err)),
                Err(_) => {
                    tracing::info!(%peer, ?handshake_timeout, "TLS handshake timed out (`tls.handshake_timeout`)");
                }
            }
        });
    }
}

/// Why the server refused a client's handshake, in words.
fn describe_refusal(err: &io::Error) -> String {
    use rustls::{CertificateError, Error};
    match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => {
            "the client presented no certificate, and `tls.client_ca` requires one".to_owned()
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the client's certificate is not signed by a CA in `tls.client_ca` (unknown CA)".to_owned()
        }
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the client's certificate has expired".to_owned(),
        Some(other) => other.to_string(),
        None => err.to_string(),
    }
}

/// What identifies a version of a file: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())))
        .collect()
}

/// Every `tls.reload_interval`, rebuilds the configuration if a file
/// changed; a pair that cannot be used is logged and the old one kept.
async fn reload(settings: TlsConfig, current: Arc<RwLock<Arc<ServerConfig>>>) {
    let paths: Vec<PathBuf> =
        [&settings.cert, &settings.key, &settings.client_ca].into_iter().flatten().cloned().collect();
    let mut seen = stamps(&paths);
    let mut interval = tokio::time::interval(settings.reload_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let now = stamps(&paths);
        if now == seen {
            continue;
        }
        seen = now;
        match build(&settings) {
            Ok(config) => {
                *current.write().unwrap_or_else(PoisonError::into_inner) = config;
                tracing::info!("TLS certificate and key reloaded; new connections use them");
            }
            Err(reason) => tracing::warn!(
                "TLS files changed but cannot be used: {reason}; keeping the certificate and key in use"
            ),
        }
    }
}

/// The accepted TLS connections, for tonic's `serve_with_incoming`.
#[derive(Debug)]
pub(crate) struct TlsIncoming {
    rx: mpsc::Receiver<TlsStream<TcpStream>>,
    _tasks: [AbortOnDrop; 2],
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}
