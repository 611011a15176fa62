//! A small HTTP/1.1 client for the registries spoken to over HTTP (Consul,
//! Eureka), on the `hyper` that tonic already brings: one connection per
//! request, every request bounded in time, JSON in and out.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::types::Endpoint;

/// The most a registry's answer may hold.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Where requests go, and the headers each carries.
#[derive(Clone)]
pub(super) struct Http {
    server: Endpoint,
    /// The path every request's path is appended to, without a trailing `/`.
    base: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be secrets (tokens): only their names are shown.
        let names: Vec<_> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Http")
            .field("server", &self.server)
            .field("base", &self.base)
            .field("headers", &names)
            .finish()
    }
}

/// An answer: its status, headers and body.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    #[cfg_attr(not(feature = "consul"), allow(dead_code, reason = "only Consul reads headers"))]
    pub(super) headers: http::HeaderMap,
    pub(super) body: Bytes,
}

impl Http {
    /// Requests to `server`, under `base` (such as `/eureka`, or empty).
    pub(super) fn new(server: Endpoint, base: &str) -> Self {
        Http { server, base: base.trim_end_matches('/').to_owned(), headers: Vec::new() }
    }

    /// Every request carries `name: value`; a `secret` value is never logged.
    #[cfg_attr(not(feature = "consul"), allow(dead_code, reason = "only Consul sends a token"))]
    pub(super) fn with_header(
        mut self,
        name: &'static str,
        value: &str,
        secret: bool,
    ) -> Result<Self, String> {
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("the {name} value has characters a header cannot carry"))?;
        value.set_sensitive(secret);
        self.headers.push((HeaderName::from_static(name), value));
        Ok(self)
    }

    /// `method path` (path and query, under the base), with a JSON `body`,
    /// answered within `timeout`.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let uri = format!("{}{path}", self.base);
        let exchange = async {
            let stream = TcpStream::connect((self.server.host(), self.server.port()))
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.server))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.server))?;
            let connection = tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header(HOST, self.server.to_string())
                .header(ACCEPT, "application/json");
            if body.is_some() {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| format!("cannot build the request {method} {uri}: {e}"))?;
            let response = sender.send_request(request).await.map_err(|e| format!("{method} {uri}: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{method} {uri}: reading the answer: {e}"))?
                .to_bytes();
            connection.abort();
            Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(format!("{method} {uri}: no answer from {} within {timeout:?}", self.server)),
        }
    }
}

impl Reply {
    /// The body as text, shortened, for error messages.
    pub(super) fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((at, _)) => format!("{}...", &text[..at]),
            None => text.to_owned(),
        }
    }
}
