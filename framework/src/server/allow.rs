//! Per-service allow-lists of client identities (`tls.allow`): a call to a
//! listed service from a client whose verified certificate has none of the
//! allowed names is refused with `PERMISSION_DENIED`, naming the identity
//! it came with, before any handler runs. Services not listed, and health
//! and reflection, take any client the TLS handshake let in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::protocol::UNPROCESSED;
use crate::transport::tls::PeerIdentity;

/// Checks each call against the allow-list of its service.
#[derive(Debug, Clone)]
pub(crate) struct AllowLayer {
    /// Allowed names by full service name.
    allow: Arc<BTreeMap<String, Vec<String>>>,
}

impl AllowLayer {
    pub(crate) fn new(allow: BTreeMap<String, Vec<String>>) -> Self {
        AllowLayer { allow: Arc::new(allow) }
    }
}

impl<S> Layer<S> for AllowLayer {
    type Service = Allow<S>;

    fn layer(&self, inner: S) -> Allow<S> {
        Allow { inner, allow: self.allow.clone() }
    }
}

/// The service made by [`AllowLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Allow<S> {
    inner: S,
    allow: Arc<BTreeMap<String, Vec<String>>>,
}

impl<S, B> Service<Request<B>> for Allow<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let service = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
        let Some(allowed) = self.allow.get(service) else {
            return Either::Left(self.inner.call(req));
        };
        let peer = PeerIdentity::of_http(&req);
        if peer.as_ref().is_some_and(|peer| allowed.iter().any(|name| peer.has_name(name))) {
            return Either::Left(self.inner.call(req));
        }
        let who = match &peer {
            Some(peer) => format!("the client identity `{peer}`"),
            None => "a client with no verified certificate".to_owned(),
        };
        tracing::info!(service, caller = %who, "call refused by tls.allow");
        let status = Status::permission_denied(format!(
            "{who} may not call {service}: `tls.allow.\"{service}\"` allows only {}",
            allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
        ));
        let mut response = status.into_http();
        response.headers_mut().insert(UNPROCESSED.clone(), http::HeaderValue::from_static("1"));
        Either::Right(ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_listed_service_refuses_a_caller_without_an_identity() {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(tonic::body::Body::empty()))
        });
        let allow = AllowLayer::new(BTreeMap::from([(
            "a.v1.A".to_owned(),
            vec!["spiffe://example.org/b".to_owned()],
        )]));
        let svc = allow.layer(inner);
        let denied =
            svc.clone().oneshot(Request::builder().uri("/a.v1.A/M").body(()).unwrap()).await.unwrap();
        let status = Status::from_header_map(denied.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("no verified certificate"), "{}", status.message());
        let other = svc.oneshot(Request::builder().uri("/b.v1.B/M").body(()).unwrap()).await.unwrap();
        assert!(Status::from_header_map(other.headers()).is_none());
    }
}
