//! The admin listener: a plain HTTP/1.1 port apart from the gRPC one, so
//! load shedding and draining never touch it. Off unless `admin.listen`
//! (or `--admin-listen ADDR`) is set.
//!
//! - `/metrics`: every metric in the Prometheus text format
//!   ([`crate::metrics`]).
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 once every service is `SERVING` and registered; 503
//!   before, and from the moment shutdown starts (before the server stops
//!   accepting calls), so a load balancer stops sending first.
//! - `/` (or `/status`): the status page, one HTML file with no external
//!   assets whose script polls `/status.json` every second: this
//!   instance's services, registry and lease, and for each service its
//!   clients call, the endpoints with their load, latency, health,
//!   ejection and breaker state, with a chart of recent call rate and
//!   latency per endpoint.
//!
//! Each connection is served by hyper on its own task; a request reads
//! what the server and channels published (`metrics::Board`), never
//! their locks on the call path.

mod history;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use self::history::{History, Series};
use crate::error::Error;
use crate::metrics::{ChannelSnapshot, Metrics, ServerInfo, ServerState};
use crate::registry::AbortOnDrop;

/// The status page.
const STATUS_PAGE: &str = include_str!("status.html");

/// The admin listener's settings: the `[admin]` section.
///
/// ```toml
/// [admin]
/// listen = "127.0.0.1:9090"   # off unless set
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin listener listens, `HOST:PORT` (port 0 picks one).
    #[serde(with = "crate::listen::optional")]
    pub listen: Option<SocketAddr>,
}

/// A running admin listener; stops when dropped.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    _tasks: [AbortOnDrop; 2],
}

impl AdminServer {
    /// Binds `addr` and serves `metrics` there until dropped.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr, metrics: Metrics) -> Result<AdminServer, Error> {
        let cannot = |err: std::io::Error| {
            Error::Config(format!(
                "`admin.listen` {addr}: cannot listen: {err} (choose another address with --admin-listen, \
                 or stop what holds it)"
            ))
        };
        let listener = TcpListener::bind(addr).await.map_err(cannot)?;
        let local_addr = listener.local_addr().map_err(cannot)?;
        let history = Arc::new(History::default());
        let sampler = tokio::spawn(sample(metrics.clone(), Arc::clone(&history)));
        let task = tokio::spawn(accept(listener, Page { metrics, history }));
        tracing::debug!(admin = %local_addr, "admin listener: /metrics /healthz /readyz /status");
        Ok(AdminServer { local_addr, _tasks: [AbortOnDrop(task), AbortOnDrop(sampler)] })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// What a request reads.
#[derive(Debug, Clone)]
struct Page {
    metrics: Metrics,
    history: Arc<History>,
}

/// Samples every endpoint once a second, for the charts.
async fn sample(metrics: Metrics, history: Arc<History>) {
    let mut tick = tokio::time::interval(history::EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        history.record(&metrics.board().channels(), std::time::Instant::now());
    }
}

async fn accept(listener: TcpListener, page: Page) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("admin listener: cannot accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let page = page.clone();
                async move { Ok::<_, Infallible>(respond(&page, &req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!("admin listener: connection ended: {err}");
            }
        });
    }
}

/// What `/status.json` holds.
#[derive(Debug, Serialize)]
struct Status {
    name: &'static str,
    version: &'static str,
    trellis_version: &'static str,
    state: ServerState,
    ready: bool,
    uptime_seconds: f64,
    server: Option<ServerInfo>,
    clients: Vec<ClientStatus>,
}

/// A channel now, and its endpoints' last minute.
#[derive(Debug, Serialize)]
struct ClientStatus {
    #[serde(flatten)]
    channel: ChannelSnapshot,
    history: BTreeMap<String, Series>,
}

fn respond(page: &Page, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let metrics = &page.metrics;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, crate::metrics::CONTENT_TYPE, metrics.encode()),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            let state = metrics.board().state();
            if state == ServerState::Serving {
                text(StatusCode::OK, "ready\n".to_owned())
            } else {
                let state = serde_json::to_string(&state).unwrap_or_default();
                text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", state.trim_matches('"')))
            }
        }
        "/" | "/status" => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE.to_owned()),
        "/status.json" => {
            let board = metrics.board();
            let state = board.state();
            let status = Status {
                name: metrics.service(),
                version: metrics.version(),
                trellis_version: env!("CARGO_PKG_VERSION"),
                state,
                ready: state == ServerState::Serving,
                uptime_seconds: metrics.uptime().as_secs_f64(),
                server: board.server(),
                clients: board
                    .channels()
                    .into_iter()
                    .map(|channel| ClientStatus { history: page.history.of(channel.service), channel })
                    .collect(),
            };
            let body = serde_json::to_string(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            reply(StatusCode::OK, "application/json", body)
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("no page at {other}; there are /metrics, /healthz, /readyz, /status and /status.json\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}
