//! The client's side of a connection: one HTTP/2 connection per instance,
//! made on the first call and again after it breaks, and each call sent on
//! it from the caller's own task.
//!
//! A call goes straight into the connection's stream table (the `h2`
//! crate) and its response is read by the caller's task: the only other
//! task a call wakes is the one that drives the connection's socket. A
//! tonic `Channel` puts a buffer task and hyper's dispatch task (and a task
//! per request) in between, so each call there wakes three or four tasks.
//!
//! - Connecting: TCP with `TCP_NODELAY` and coalesced writes
//!   ([`Coalesce`]) within [`CONNECT_TIMEOUT`], then TLS for an `https`
//!   endpoint (ALPN `h2`, the clients' `tls` settings) within
//!   `tls.handshake_timeout`, then the HTTP/2 handshake. One attempt at a
//!   time per connection, run as a task of its own, so a call given up on
//!   does not cut it short for the calls waiting with it. A failure fails
//!   the calls that waited for it, as a [`tonic::ConnectError`] (the
//!   request never left), and the next call tries again.
//! - A connection the server closes or sends `GOAWAY` on is forgotten; a
//!   call that finds it so before its request is sent is sent once more on
//!   a new connection.
//! - HTTP/2 settings as hyper's client has them: 2 MiB stream and 5 MiB
//!   connection windows, 16 KiB frames and header lists, 1 MiB send buffer
//!   per stream, no server push.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme};
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tonic::body::Body;

use super::{CONNECT_TIMEOUT, Coalesce, tls};
use crate::context::TRACEPARENT;
use crate::error::{BoxError, Error};
use crate::protocol::GRPC_TIMEOUT;
use crate::registry::{Endpoint, Scheme};

/// The `user-agent` every call carries.
const USER_AGENT: &str = concat!("trellis/", env!("CARGO_PKG_VERSION"));

/// [`USER_AGENT`] as a header value (static: no copy per call).
const USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static(USER_AGENT);

/// The HTTP/2 connection to one instance under every client call (the
/// transport of the [client stack](crate::client)). Cheap to clone: clones
/// share the connection.
///
/// Made on the first call (TCP with `TCP_NODELAY` within 3 s, TLS with
/// ALPN `h2` for an `https` endpoint, then the HTTP/2 handshake), and again
/// on the next call after it breaks; a connection failure fails the calls
/// that waited for it as a [`tonic::ConnectError`]. A request the
/// connection turned back unsent (it was closing, or the server sent
/// `GOAWAY`) is sent once more on a new connection. Each call is sent from
/// the caller's own task and its response read there: only the task that
/// drives the socket runs besides it.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

/// What a connection's clones share.
struct Shared {
    endpoint: Endpoint,
    scheme: UriScheme,
    authority: Authority,
    #[cfg(feature = "tls")]
    tls: Option<TlsConnect>,
    state: Mutex<State>,
    /// For each of [`NAMED`], the connection its name was last put in the
    /// HPACK table of (0: none yet).
    named: [AtomicU64; NAMED.len()],
}

/// Headers whose value is new on every call, so it is sent as a literal
/// never put in the HPACK tables (it would only evict the headers that
/// repeat). Their names are worth indexing: the first request on each
/// connection that carries one sends it indexable, once, and later ones
/// refer to the name in the table instead of spelling it out (which the
/// server would then decode and allocate again on every call).
static NAMED: [&HeaderName; 2] = [&TRACEPARENT, &GRPC_TIMEOUT];

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("endpoint", &self.endpoint.to_string()).finish_non_exhaustive()
    }
}

/// Where the connection is.
enum State {
    /// Not connected: the next call connects.
    Idle,
    /// A connection attempt is under way; its outcome is published here.
    Connecting(watch::Receiver<Option<Connected>>),
    /// Connected; the number tells this connection from later ones.
    Ready(SendRequest<Bytes>, u64),
}

/// The outcome of a connection attempt, for every call that waited for it.
type Connected = Result<(SendRequest<Bytes>, u64), Failed>;

/// A connection attempt's failure, shared by the calls that waited for it;
/// shows as the error it wraps.
#[derive(Debug, Clone)]
struct Failed(Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A request the connection refused before sending anything of it: its
/// connection had closed or was going away. Never reached a handler.
#[derive(Debug)]
pub(crate) struct NotSent(h2::Error);

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the connection closed before the request was sent: {}", self.0)
    }
}

impl std::error::Error for NotSent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[cfg(feature = "tls")]
#[derive(Clone)]
struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    handshake_timeout: std::time::Duration,
}

impl Connection {
    /// A connection to `endpoint`, not made yet. An `https` endpoint is
    /// reached with the clients' `tls` settings, whose files are read now.
    ///
    /// # Errors
    ///
    /// When the endpoint's host cannot be put in a URI, or its scheme needs
    /// TLS settings (or a TLS feature) this process lacks.
    pub(crate) fn new(endpoint: &Endpoint, tls: Option<&tls::TlsConfig>) -> Result<Self, Error> {
        let bad = |reason: String| Error::Endpoint { endpoint: endpoint.to_string(), reason };
        let uri: Uri = endpoint.uri().parse().map_err(|e| bad(format!("not a valid address: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            return Err(bad("not a valid address: it has no host".to_owned()));
        };
        #[cfg(feature = "tls")]
        let tls = match endpoint.scheme() {
            Scheme::Https => Some(tls_connect(&tls.cloned().unwrap_or_default(), endpoint).map_err(bad)?),
            Scheme::Http => None,
        };
        #[cfg(not(feature = "tls"))]
        if endpoint.scheme() == Scheme::Https {
            let _ = tls;
            return Err(bad("it is registered as `https`, and this build of trellis has no TLS support; \
                 serve it in plaintext, or build trellis with the `tls` feature"
                .to_owned()));
        }
        Ok(Connection {
            shared: Arc::new(Shared {
                endpoint: endpoint.clone(),
                scheme,
                authority,
                #[cfg(feature = "tls")]
                tls,
                state: Mutex::new(State::Idle),
                named: Default::default(),
            }),
        })
    }

    /// The instance it connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }
}

/// The rustls client settings for `endpoint`, after checking every file
/// named in `settings`.
#[cfg(feature = "tls")]
fn tls_connect(settings: &tls::TlsConfig, endpoint: &Endpoint) -> Result<TlsConnect, String> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let config = tls::client_config(settings)?;
    let name = settings.server_name.clone().unwrap_or_else(|| endpoint.host().to_owned());
    let name = ServerName::try_from(name.clone()).map_err(|_| {
        format!("`{name}` is not a DNS name or IP address a certificate can be checked against; set `tls.server_name`")
    })?;
    Ok(TlsConnect {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
        handshake_timeout: settings.handshake_timeout,
    })
}

impl Shared {
    /// `req`, with its first header of each of [`NAMED`] on connection
    /// `id` let into the HPACK table; two atomic loads once each name is there.
    fn named(&self, id: u64, mut req: Request<Body>) -> Request<Body> {
        for (named, name) in self.named.iter().zip(NAMED) {
            if named.load(Ordering::Relaxed) != id
                && let Some(value) = req.headers_mut().get_mut(name)
                && named.swap(id, Ordering::Relaxed) != id
            {
                value.set_sensitive(false);
            }
        }
        req
    }

    /// The connection if it is up, else a future that waits for one (and
    /// starts connecting if no attempt is under way).
    fn sender(self: &Arc<Self>) -> Result<(SendRequest<Bytes>, u64), ConnectFuture> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match &*state {
            State::Ready(send, id) => return Ok((send.clone(), *id)),
            // An attempt under way (its task still holds the sender).
            State::Connecting(outcome) if outcome.has_changed().is_ok() => outcome.clone(),
            // Idle, or an attempt whose task ended without saying how.
            _ => {
                let (publish, outcome) = watch::channel(None);
                *state = State::Connecting(outcome.clone());
                tokio::spawn(connect(Arc::clone(self), publish));
                outcome
            }
        };
        Err(Box::pin(wait(outcome)))
    }

    /// Forgets connection `id` if it is the current one, so the next call
    /// makes a new one.
    fn forget(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*state, State::Ready(_, current) if *current == id) {
            *state = State::Idle;
        }
    }

    /// `req` addressed to this instance, as HTTP/2 needs it (scheme and
    /// authority in the URI), with the user agent.
    fn address(&self, req: Request<Body>) -> Request<Body> {
        let (mut head, body) = req.into_parts();
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query =
            Some(head.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(uri) {
            head.uri = uri;
        }
        head.headers.entry(http::header::USER_AGENT).or_insert(USER_AGENT_VALUE);
        head.version = http::Version::HTTP_2;
        Request::from_parts(head, body)
    }
}

/// Waits for a connection attempt's outcome.
type ConnectFuture = Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, u64), BoxError>> + Send>>;

async fn wait(
    mut outcome: watch::Receiver<Option<Connected>>,
) -> Result<(SendRequest<Bytes>, u64), BoxError> {
    let connected = outcome
        .wait_for(Option::is_some)
        .await
        .map_err(|_| tonic::ConnectError("the connection attempt was abandoned".into()))?
        .clone();
    match connected {
        Some(Ok(connected)) => Ok(connected),
        Some(Err(failed)) => Err(tonic::ConnectError(Box::new(failed)).into()),
        None => unreachable!("waited for an outcome"),
    }
}

/// One connection attempt: publishes the connection, or why there is none.
async fn connect(shared: Arc<Shared>, publish: watch::Sender<Option<Connected>>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let outcome = match establish(&shared, id).await {
        Ok(send) => Ok((send, id)),
        Err(err) => Err(Failed(Arc::from(err))),
    };
    *shared.state.lock().unwrap_or_else(PoisonError::into_inner) = match &outcome {
        Ok((send, id)) => State::Ready(send.clone(), *id),
        Err(_) => State::Idle,
    };
    publish.send_replace(Some(outcome));
}

/// TCP within [`CONNECT_TIMEOUT`], then TLS within `tls.handshake_timeout`
/// if the endpoint asks for it, then the HTTP/2 handshake within
/// [`CONNECT_TIMEOUT`]; the connection's task started.
async fn establish(shared: &Arc<Shared>, id: u64) -> Result<SendRequest<Bytes>, BoxError> {
    let host = shared.endpoint.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, shared.endpoint.port())))
        .await
        .map_err(|_| timed_out("connection"))??;
    tcp.set_nodelay(true)?;
    let io = Coalesce::new(tcp);
    let weak = Arc::downgrade(shared);
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.tls {
        let tls_handshake = tls.connector.connect(tls.name.clone(), io);
        let io = tokio::time::timeout(tls.handshake_timeout, tls_handshake).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS: no handshake within {:?} (`tls.handshake_timeout`)", tls.handshake_timeout),
            )
        })??;
        return handshake(io, weak, id).await;
    }
    handshake(io, weak, id).await
}

/// No `what` within [`CONNECT_TIMEOUT`].
fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no {what} within {CONNECT_TIMEOUT:?}"))
}

/// The HTTP/2 handshake on `io` within [`CONNECT_TIMEOUT`], and the task
/// that drives the connection from then on. That task holds no strong reference to the connection's
/// clones: when the last is dropped, the connection closes once its
/// streams are done; when the connection closes first, it is forgotten.
async fn handshake<IO>(io: IO, shared: Weak<Shared>, id: u64) -> Result<SendRequest<Bytes>, BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::client::Builder::new()
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .enable_push(false)
        .handshake::<_, Bytes>(io);
    let (send, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| timed_out("HTTP/2 handshake"))??;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "connection closed");
        }
        if let Some(shared) = shared.upgrade() {
            shared.forget(id);
        }
    });
    Ok(send)
}

impl tower_service::Service<Request<Body>> for Connection {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ConnectionFuture;

    /// Always ready: connecting is part of the call, bounded by its deadline.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ConnectionFuture {
        let step = Step::send(&self.shared, self.shared.address(req));
        ConnectionFuture { shared: Arc::clone(&self.shared), step, resent: false }
    }
}

/// The response future of a [`Connection`].
pub struct ConnectionFuture {
    shared: Arc<Shared>,
    step: Step,
    /// Whether the request was already turned back once by a closing
    /// connection (it is sent again once, on a new one).
    resent: bool,
}

impl fmt::Debug for ConnectionFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionFuture").field("connection", &self.shared).finish_non_exhaustive()
    }
}

enum Step {
    /// Waiting for the connection to be made.
    Connecting { connecting: ConnectFuture, req: Option<Request<Body>> },
    /// Connected: sending the request.
    Ready { send: SendRequest<Bytes>, id: u64, req: Option<Request<Body>> },
    /// Sent (its body, if still streaming, by a task of its own): waiting
    /// for the response's headers.
    Sent { response: h2::client::ResponseFuture, cancel: Option<oneshot::Sender<()>> },
    /// Done.
    Done,
}

impl Step {
    /// Sending `req` on the connection if it is up, else once it is made.
    fn send(shared: &Arc<Shared>, req: Request<Body>) -> Step {
        match shared.sender() {
            Ok((send, id)) => Step::Ready { send, id, req: Some(req) },
            Err(connecting) => Step::Connecting { connecting, req: Some(req) },
        }
    }
}

impl Future for ConnectionFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.step {
                Step::Connecting { connecting, req } => {
                    let (send, id) = match ready!(connecting.as_mut().poll(cx)) {
                        Ok(connected) => connected,
                        Err(err) => {
                            this.step = Step::Done;
                            return Poll::Ready(Err(err));
                        }
                    };
                    this.step = Step::Ready { send, id, req: req.take() };
                }
                Step::Ready { send, id, req } => {
                    let refused = match ready!(send.poll_ready(cx)) {
                        Ok(()) => match start(
                            send,
                            this.shared.named(*id, req.take().expect("a request until sent")),
                        ) {
                            Ok(sent) => {
                                this.step = sent;
                                continue;
                            }
                            Err(err) => (err, None),
                        },
                        Err(err) => (err, req.take()),
                    };
                    // The connection is closed or going away, and nothing of
                    // the request left: sent once more, on a new connection.
                    this.shared.forget(*id);
                    match refused {
                        (_, Some(req)) if !this.resent => {
                            this.resent = true;
                            this.step = Step::send(&this.shared, req);
                        }
                        (err, _) => {
                            this.step = Step::Done;
                            return Poll::Ready(Err(NotSent(err).into()));
                        }
                    }
                }
                Step::Sent { response, cancel } => {
                    let result = ready!(Pin::new(response).poll(cx));
                    let cancel = cancel.take();
                    this.step = Step::Done;
                    return Poll::Ready(match result {
                        Ok(response) => Ok(response
                            .map(|recv| Body::new(RecvBody { recv, data_done: false, _cancel: cancel }))),
                        Err(err) => Err(err.into()),
                    });
                }
                Step::Done => panic!("ConnectionFuture polled after completion"),
            }
        }
    }
}

/// Sends `req`'s head, and its body as far as it is ready; a body still
/// streaming is piped by a task of its own.
fn start(send: &mut SendRequest<Bytes>, req: Request<Body>) -> Result<Step, h2::Error> {
    let (head, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    let (response, stream) = send.send_request(Request::from_parts(head, ()), end_of_stream)?;
    if end_of_stream {
        return Ok(Step::Sent { response, cancel: None });
    }
    let mut pipe = Pipe { body, stream, cancelled: None, pending: None, sent_data: false };
    // A unary request's body is ready: sent from here, with no task.
    if pipe.poll_send(&mut Context::from_waker(futures_util::task::noop_waker_ref())).is_ready() {
        return Ok(Step::Sent { response, cancel: None });
    }
    let (cancel, cancelled) = oneshot::channel();
    pipe.cancelled = Some(cancelled);
    tokio::spawn(pipe);
    Ok(Step::Sent { response, cancel: Some(cancel) })
}

/// Sends a request's body into its stream: data frames as the stream has
/// room, then trailers or the end of the stream. An error of the body
/// resets the stream.
struct Pipe {
    body: Body,
    stream: SendStream<Bytes>,
    /// Fires when the caller gave the call up: the stream is reset.
    cancelled: Option<oneshot::Receiver<()>>,
    /// A data frame taken from the body and not yet handed to h2.
    pending: Option<Bytes>,
    /// Whether a data frame was handed to h2 already.
    sent_data: bool,
}

impl Pipe {
    /// `Ready` when the body is sent, or sending it failed (the response
    /// says why).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(data) = self.pending.take() {
                // h2 holds what the peer's window cannot take yet. The first
                // frame (a unary call's only one) goes at once; each later one
                // waits for room, so a fast producer cannot fill memory.
                if self.sent_data {
                    self.stream.reserve_capacity(1);
                    if self.stream.capacity() == 0 {
                        let room = self.stream.poll_capacity(cx);
                        self.pending = Some(data);
                        match ready!(room) {
                            Some(Ok(_)) => continue,
                            Some(Err(_)) | None => return Poll::Ready(()),
                        }
                    }
                }
                self.sent_data = true;
                let end = self.body.is_end_stream();
                match self.stream.send_data(data, end) {
                    Ok(()) if !end => continue,
                    Ok(()) => return Poll::Ready(()),
                    Err(err) => {
                        tracing::debug!(error = %err, "request body not sent");
                        return Poll::Ready(());
                    }
                }
            }
            if self.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            let sent = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.pending = Some(data);
                        continue;
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            self.stream.reserve_capacity(0);
                            self.stream.send_trailers(trailers)
                        }
                        Err(_) => continue,
                    },
                },
                Some(Err(status)) => {
                    tracing::debug!(error = %status, "request body failed; stream reset");
                    self.stream.send_reset(h2::Reason::CANCEL);
                    Ok(())
                }
                None => self.stream.send_data(Bytes::new(), true),
            };
            if let Err(err) = sent {
                tracing::debug!(error = %err, "request body not sent");
            }
            return Poll::Ready(());
        }
    }
}

impl Future for Pipe {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(cancelled) = &mut this.cancelled
            && Pin::new(cancelled).poll(cx).is_ready()
        {
            this.stream.send_reset(h2::Reason::CANCEL);
            return Poll::Ready(());
        }
        this.poll_send(cx)
    }
}

/// A response's body: its data frames, each handed back to flow control as
/// it is taken, then its trailers.
struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// Held while the caller wants the call: dropping it stops the task
    /// sending a request body that still streams.
    _cancel: Option<oneshot::Sender<()>>,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use tokio::net::TcpListener;
    use tower_service::Service;

    use super::*;

    /// An HTTP/2 server that answers each request with its body echoed
    /// back, then `grpc-status: 0` trailers (with the request's
    /// `traceparent` and `grpc-timeout`, if it had them). With `go_away`, each
    /// connection goes away after its first request. Counts connections.
    async fn echo_server(go_away: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    // The connection is driven by `accept`: each request is
                    // answered by a task of its own.
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let (head, mut body) = req.into_parts();
                            let mut echoed = Vec::new();
                            while let Some(Ok(data)) = body.data().await {
                                let _ = body.flow_control().release_capacity(data.len());
                                echoed.extend_from_slice(&data);
                            }
                            let mut send = respond.send_response(Response::new(()), false).unwrap();
                            send.send_data(Bytes::from(echoed), false).unwrap();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            // The per-call headers, as the server decoded them.
                            for name in NAMED {
                                if let Some(value) = head.headers.get(name) {
                                    trailers.insert(name.clone(), value.clone());
                                }
                            }
                            send.send_trailers(trailers).unwrap();
                        });
                        if go_away {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    fn request(body: Body) -> Request<Body> {
        Request::builder().method("POST").uri("/t.v1.T/M").body(body).unwrap()
    }

    #[test]
    fn each_connection_indexes_the_names_of_per_call_headers_once() {
        let conn = Connection::new(&Endpoint::from(SocketAddr::from(([127, 0, 0, 1], 1))), None).unwrap();
        let traced = || {
            let mut req = request(Body::empty());
            let mut value =
                HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            value.set_sensitive(true);
            req.headers_mut().insert(TRACEPARENT.clone(), value);
            req
        };
        let sensitive = |req: &Request<Body>| req.headers()[&TRACEPARENT].is_sensitive();
        // A request without the header leaves the name to the next one with it.
        conn.shared.named(1, request(Body::empty()));
        let first = conn.shared.named(1, traced());
        let second = conn.shared.named(1, traced());
        assert!(!sensitive(&first), "the first carries the name into the table");
        assert!(sensitive(&second), "the next ones refer to it");
        // A new connection starts with an empty table.
        let renewed = conn.shared.named(2, traced());
        assert!(!sensitive(&renewed));
    }

    #[tokio::test]
    async fn per_call_headers_arrive_whole_on_every_call_of_a_connection() {
        let (addr, connections) = echo_server(false).await;
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        // The first call puts the names in the table, the others refer to them.
        for n in 1..=4 {
            let traceparent = crate::context::TraceContext::new_root().traceparent_header();
            let mut timeout = HeaderValue::from_str(&format!("{n}00m")).unwrap();
            timeout.set_sensitive(true);
            let mut req = request(Body::empty());
            req.headers_mut().insert(TRACEPARENT.clone(), traceparent.clone());
            req.headers_mut().insert(GRPC_TIMEOUT.clone(), timeout.clone());
            let response = conn.call(req).await.unwrap();
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().unwrap();
            assert_eq!(trailers[&TRACEPARENT], traceparent, "call {n}");
            assert_eq!(trailers[&GRPC_TIMEOUT], timeout, "call {n}");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for every call");
    }

    async fn echoed(conn: &mut Connection, body: Body) -> Result<(Bytes, http::HeaderMap), BoxError> {
        let response = conn.call(request(body)).await?;
        let collected = response.into_body().collect().await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok((collected.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn calls_share_one_connection_and_carry_body_and_trailers() {
        let (addr, connections) = echo_server(false).await;
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        for message in ["one", "two", "three"] {
            let (body, trailers) =
                echoed(&mut conn, Body::new(http_body_util::Full::new(Bytes::from(message)))).await.unwrap();
            assert_eq!(body, message);
            assert_eq!(trailers["grpc-status"], "0");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for every call");
    }

    #[tokio::test]
    async fn a_streaming_body_is_piped_as_it_comes_and_its_end_sent() {
        let (addr, _) = echo_server(false).await;
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|data| (Ok::<_, std::convert::Infallible>(Frame::data(data)), rx))
        });
        let call = tokio::spawn({
            let body = Body::new(http_body_util::StreamBody::new(frames));
            async move { echoed(&mut conn, body).await }
        });
        for part in ["a", "b", "c"] {
            tx.send(Bytes::from(part)).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        let (body, _) = call.await.unwrap().unwrap();
        assert_eq!(body, "abc", "every frame sent, then the end of the stream");
    }

    #[tokio::test]
    async fn a_call_given_up_on_resets_its_stream_while_its_body_still_streams() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ended, end) = oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            let (req, _respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move {
                let mut body = req.into_body();
                let outcome = loop {
                    match body.data().await {
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => break err.reason(),
                        None => break None,
                    }
                };
                let _ = ended.send(outcome);
            });
            let _ = conn.accept().await;
        });
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|data| (Ok::<_, std::convert::Infallible>(Frame::data(data)), rx))
        });
        let call = tokio::spawn(conn.call(request(Body::new(http_body_util::StreamBody::new(frames)))));
        tx.send(Bytes::from_static(b"part")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        call.abort();
        let reason = tokio::time::timeout(std::time::Duration::from_secs(5), end).await.unwrap().unwrap();
        assert_eq!(reason, Some(h2::Reason::CANCEL), "the server learns the call was given up");
        drop(tx);
    }

    #[tokio::test]
    async fn a_refused_connection_fails_the_call_as_never_sent_and_the_next_call_connects_again() {
        // A port nothing listens on, then a server on it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        let err = conn.call(request(Body::empty())).await.unwrap_err();
        assert!(err.is::<tonic::ConnectError>(), "{err}");
        assert!(crate::error::error_chain(err.as_ref()).contains("refused"), "{err}");

        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                respond.send_response(Response::new(()), true).unwrap();
            }
        });
        let response = conn.call(request(Body::empty())).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn a_connection_that_goes_away_is_replaced_without_failing_a_call() {
        let (addr, connections) = echo_server(true).await;
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        for message in ["one", "two", "three"] {
            let full = Body::new(http_body_util::Full::new(Bytes::from(message)));
            let (body, _) = echoed(&mut conn, full).await.unwrap();
            assert_eq!(body, message);
            // Let the GOAWAY arrive before the next call.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3, "a new connection after each GOAWAY");
    }

    #[tokio::test]
    async fn a_going_away_connection_finishes_its_open_calls_and_a_new_call_goes_to_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        // The first connection: its first call stays open until told, and
        // the connection goes away as soon as it arrives. Later ones answer.
        let (finish, finished) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut finished = Some(finished);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let held = if first { finished.take() } else { None };
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    let mut held = held;
                    while let Some(Ok((_, mut respond))) = conn.accept().await {
                        let held = held.take();
                        let going_away = held.is_some();
                        tokio::spawn(async move {
                            if let Some(held) = held {
                                let _ = held.await;
                            }
                            respond.send_response(Response::new(()), true).unwrap();
                        });
                        if going_away {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        let open = tokio::spawn(conn.call(request(Body::empty())));
        // Time for the GOAWAY to reach the client; the open call keeps the
        // first connection up, so the next call finds it going away.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let response = conn.call(request(Body::empty())).await.expect("sent again on a new connection");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        finish.send(()).unwrap();
        let response = open.await.unwrap().expect("the open call finishes on the old connection");
        assert_eq!(response.status(), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_are_addressed_to_the_instance_with_a_user_agent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, heard) = oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let _ = seen.send((req.uri().clone(), req.headers().get("user-agent").cloned()));
            respond.send_response(Response::new(()), true).unwrap();
            let _ = conn.accept().await;
        });
        let mut conn = Connection::new(&Endpoint::from(addr), None).unwrap();
        conn.call(request(Body::empty())).await.unwrap();
        let (uri, agent) = heard.await.unwrap();
        assert_eq!(uri.to_string(), format!("http://{addr}/t.v1.T/M"));
        assert_eq!(agent.unwrap(), USER_AGENT);
    }
}
