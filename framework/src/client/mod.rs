//! The channel under every generated client.
//!
//! A [`Channel`] belongs to one service. It connects to the instances its
//! registry names, and gives every call a deadline: the call's own
//! (`tonic::Request::set_timeout`, else [`DEFAULT_TIMEOUT`]), shortened to
//! the remaining deadline of the inbound call being handled, if any (see
//! [`context`](crate::context)). The deadline is sent as `grpc-timeout` and
//! enforced locally too, so a call to a hung instance ends with
//! `DEADLINE_EXCEEDED` on time. Transport failures come back as
//! `UNAVAILABLE` with a message naming the method, the service and its
//! endpoints.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tower_service::Service;

use crate::context::{GRPC_TIMEOUT, decode_grpc_timeout, encode_grpc_timeout, outbound_deadline};
use crate::descriptor::ServiceDescriptor;
use crate::error::{BoxError, Error};
use crate::registry::Registry;

/// The deadline of a call that sets none of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a connection to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A channel to the instances of one service. Cheap to clone; clones share
/// connections.
#[derive(Debug, Clone)]
pub struct Channel {
    inner: tonic::transport::Channel,
    target: Arc<Target>,
}

#[derive(Debug)]
struct Target {
    service: &'static ServiceDescriptor,
    /// `name (endpoints)`, for error messages.
    description: String,
}

impl Channel {
    /// A channel to `service` through `registry`.
    ///
    /// # Errors
    ///
    /// When the registry knows no endpoint of the service, or when called
    /// outside a Tokio runtime.
    pub fn discover(registry: &Registry, service: &'static ServiceDescriptor) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime("Channel::discover"));
        }
        let endpoints = registry.endpoints(service.name())?;
        let mut tonic_endpoints = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            let uri = endpoint.uri();
            let tonic_endpoint = Endpoint::from_shared(uri.clone())
                .map_err(|e| Error::Registry {
                    url: registry.url().to_owned(),
                    reason: format!("endpoint `{endpoint}` of `{}` is not a valid URI: {e}", service.name()),
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            tonic_endpoints.push(tonic_endpoint);
        }
        let inner = match tonic_endpoints.as_slice() {
            [one] => one.connect_lazy(),
            _ => tonic::transport::Channel::balance_list(tonic_endpoints.into_iter()),
        };
        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let description = format!("{} at {}", service.name(), list.join(", "));
        Ok(Channel { inner, target: Arc::new(Target { service, description }) })
    }

    /// The service this channel calls.
    pub fn service(&self) -> &'static ServiceDescriptor {
        self.target.service
    }
}

impl Target {
    /// The one place a transport error becomes a gRPC status: a timeout
    /// anywhere in the source chain is the deadline, anything else means the
    /// instances could not be reached.
    fn status(&self, path: &str, timeout: Duration, err: &(dyn std::error::Error + 'static)) -> BoxError {
        let mut source = Some(err);
        while let Some(cause) = source {
            if cause.is::<tonic::TimeoutExpired>() {
                return Box::new(Status::deadline_exceeded(format!(
                    "{path} on {}: no response within its {timeout:?} deadline",
                    self.description
                )));
            }
            source = cause.source();
        }
        Box::new(Status::unavailable(format!(
            "{path}: cannot reach {}: {}",
            self.description,
            crate::app::error_chain(err)
        )))
    }
}

impl Service<Request<Body>> for Channel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Body>>::poll_ready(&mut self.inner, cx)
            .map_err(|e| self.target.status("connect", Duration::ZERO, &e))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let own = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| decode_grpc_timeout(v.as_bytes()))
            .unwrap_or(DEFAULT_TIMEOUT);
        let now = Instant::now();
        let deadline = outbound_deadline(Some(own)).unwrap_or(now + own);
        let timeout = deadline.saturating_duration_since(now);
        if timeout.is_zero() {
            return ResponseFuture {
                inner: Err(Some(Status::deadline_exceeded(format!(
                    "deadline passed before {} was sent",
                    req.uri().path()
                )))),
            };
        }
        // tonic's channel enforces the deadline it finds in this header.
        if let Ok(value) = HeaderValue::from_str(&encode_grpc_timeout(timeout)) {
            req.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        let path = req.uri().path().to_owned();
        ResponseFuture {
            inner: Ok(Pending { call: self.inner.call(req), target: self.target.clone(), path, timeout }),
        }
    }
}

/// The future of a [`Channel`] call.
pub struct ResponseFuture {
    inner: Result<Pending, Option<Status>>,
}

struct Pending {
    call: tonic::transport::channel::ResponseFuture,
    target: Arc<Target>,
    path: String,
    timeout: Duration,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Ok(pending) => {
                let result = ready!(Pin::new(&mut pending.call).poll(cx));
                Poll::Ready(result.map_err(|e| pending.target.status(&pending.path, pending.timeout, &e)))
            }
            Err(status) => Poll::Ready(Err(Box::new(
                status.take().unwrap_or_else(|| Status::internal("call polled after completion")),
            ))),
        }
    }
}
