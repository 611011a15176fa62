//! The channel under every generated client.
//!
//! A [`Channel`] belongs to one service. It connects to the instances its
//! registry names, and gives every call a deadline: the call's own
//! (`tonic::Request::set_timeout`, else [`DEFAULT_TIMEOUT`]), shortened to
//! the remaining deadline of the inbound call being handled, if any (see
//! [`context`](crate::context)). The deadline is sent as `grpc-timeout` and
//! enforced locally, so a call to a hung instance ends with
//! `DEADLINE_EXCEEDED` on time. Transport failures come back as
//! `UNAVAILABLE` with a message naming the service and its endpoints.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
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
    fn unavailable(&self, err: &(dyn std::error::Error + 'static)) -> BoxError {
        Box::new(Status::unavailable(format!(
            "cannot reach {}: {}",
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
            .map_err(|e| self.target.unavailable(&e))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let own = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| decode_grpc_timeout(v.as_bytes()))
            .unwrap_or(DEFAULT_TIMEOUT);
        let deadline = outbound_deadline(Some(own)).unwrap_or_else(|| Instant::now() + own);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return ResponseFuture::failed(Status::deadline_exceeded(format!(
                "deadline passed before {} was sent",
                req.uri().path()
            )));
        }
        if let Ok(value) = HeaderValue::from_str(&encode_grpc_timeout(remaining)) {
            req.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        let path = req.uri().path().to_owned();
        ResponseFuture {
            state: State::Pending {
                inner: self.inner.call(req),
                sleep: tokio::time::sleep_until(deadline),
                target: self.target.clone(),
                path,
                timeout: remaining,
            },
        }
    }
}

pin_project! {
    /// The future of a [`Channel`] call.
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Pending {
            #[pin]
            inner: tonic::transport::channel::ResponseFuture,
            #[pin]
            sleep: Sleep,
            target: Arc<Target>,
            path: String,
            timeout: Duration,
        },
        Failed { status: Option<Status> },
    }
}

impl ResponseFuture {
    fn failed(status: Status) -> Self {
        ResponseFuture { state: State::Failed { status: Some(status) } }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Pending { inner, sleep, target, path, timeout } => {
                if let Poll::Ready(result) = inner.poll(cx) {
                    return Poll::Ready(result.map_err(|e| target.unavailable(&e)));
                }
                ready!(sleep.poll(cx));
                Poll::Ready(Err(Box::new(Status::deadline_exceeded(format!(
                    "{path} on {}: no response within its {timeout:?} deadline",
                    target.description
                )))))
            }
            StateProj::Failed { status } => Poll::Ready(Err(Box::new(
                status.take().unwrap_or_else(|| Status::internal("ResponseFuture polled after completion")),
            ))),
        }
    }
}
