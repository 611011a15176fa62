//! REST/JSON from the same proto: the `google.api.http` routes that
//! `trellis-build` checked, served on the gRPC port, or on a listener of their own with
//! `rest.listen` (`--rest-listen ADDR`, [`RestConfig`]). Cargo feature `rest`
//! (off by default: a service without routes need not build the JSON
//! mapping); a build without it names the routes it leaves unserved in a
//! warning when the server starts.
//!
//! A request whose content type is not `application/grpc...` and whose
//! method and path match a route is transcoded into a call to the same
//! generated service, and goes through every server layer a gRPC call does
//! (tracing, load shedding, drain, deadline, faults). HTTP/1.1 and HTTP/2
//! both work, so `curl` needs no flags:
//!
//! ```text
//! curl -X POST localhost:50051/v1/payments -d '{"orderId": "o-1", "amountMinor": "1250", "currency": "EUR", "idempotencyKey": "k-1"}'
//! curl localhost:50051/v1/payments/o-1
//! ```
//!
//! - **Binding**, as `google/api/http.proto` says: path variables fill the
//!   fields they name; `body: "*"` takes the request from the JSON body,
//!   `body: "field"` that one field; with no `body: "*"`, the other fields
//!   come from the query string (`?page_size=10&tags=a&tags=b`, nested
//!   fields as `address.city=Berlin`). `response_body` sends that field of
//!   the response instead of the whole response.
//! - **JSON** is the canonical proto3 mapping, by `prost-reflect` over the
//!   descriptors `trellis-build` embeds: lowerCamelCase names out (proto
//!   names accepted), 64-bit integers as strings (numbers accepted), enums
//!   as names (numbers accepted), bytes as base64, the well-known types as
//!   the spec says, default values left out. A field the message does not
//!   have is rejected, naming it.
//! - **Deadline**: a `grpc-timeout` header is passed on as is; an
//!   `x-trellis-timeout` header takes a duration like `2s` or `250ms`;
//!   otherwise the method's `(trellis.method)` timeout, else for a unary
//!   method the client stack's default of 10 s. When it passes, the call is
//!   cancelled and the answer is a 504 (`DEADLINE_EXCEEDED`).
//! - **Idempotency**: an `Idempotency-Key` header fills the request's
//!   `idempotency_key` string field when it has one (the body may carry the
//!   key instead, but not a different one), so a retried POST is recognised
//!   as the same call.
//! - **Headers** other than the HTTP ones (`content-type`, `content-length`,
//!   `host`, `connection`, `accept`, `te`, ...) reach the handler as
//!   metadata, such as `idempotency-key` or `authorization`.
//! - **Errors** are `{"code": 5, "message": "...", "details": []}` with the
//!   HTTP status grpc-gateway uses for the code (`INVALID_ARGUMENT` 400,
//!   `NOT_FOUND` 404, `ALREADY_EXISTS` 409, `RESOURCE_EXHAUSTED` 429,
//!   `UNAVAILABLE` 503, `DEADLINE_EXCEEDED` 504, ...), and the code again in
//!   a `grpc-status` header. The `details` are those of the call's
//!   `grpc-status-details-bin` (a `google.rpc.Status`), each `Any` as
//!   grpc-gateway writes it: `{"@type": URL, ...fields}` when its message is
//!   in the service's protos (vendor googleapis' `google/rpc/error_details.proto`
//!   and import it for the standard ones), else `{"@type": URL, "value": BASE64}`.
//!   Malformed JSON is a 400 that gives the line and
//!   column; a known path with the wrong method is a 405 with `Allow`; an
//!   unknown path a 404.
//! - **Server streaming** answers with newline-delimited JSON
//!   (`application/x-ndjson`), one `{"result": ...}` per message and an
//!   `{"error": ...}` line if the stream fails; or with server-sent events
//!   (`data: ...`, and an `event: error`) when the request accepts
//!   `text/event-stream`. Client-streaming and bidirectional methods are not
//!   served over REST (501).
//! - **OpenAPI**: `GET /openapi.json` is an OpenAPI 3 document of every
//!   route of the added services, from the ones `trellis-build` generates at
//!   build time (`FOO_OPENAPI`).
//! - **A separate listener**: with `rest.listen` set, the REST routes are
//!   served there (HTTP/1.1 and HTTP/2, with the gRPC port's TLS settings)
//!   and only there: the gRPC port then speaks HTTP/2 gRPC alone, and the
//!   REST port answers a path that is not a route with a JSON 404 and a gRPC
//!   call with `UNIMPLEMENTED` saying where gRPC is. Both ports share the
//!   server's layers (one load-shedding budget, one drain); only the gRPC
//!   port is registered.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where REST is served: the `[rest]` section.
///
/// ```toml
/// [rest]
/// listen = "0.0.0.0:8080"   # unset: REST on the gRPC port
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfig {
    /// A listener of REST's own, `HOST:PORT` (port 0 picks one); unset, REST
    /// shares the gRPC port.
    #[serde(with = "crate::listen::optional")]
    pub listen: Option<SocketAddr>,
}

#[cfg(feature = "rest")]
mod route;
#[cfg(feature = "rest")]
mod status;
#[cfg(feature = "rest")]
mod transcode;

#[cfg(feature = "rest")]
pub(crate) use service::layer;

/// The gateway layer, for the fuzz targets.
#[cfg(all(feature = "fuzzing", feature = "rest"))]
pub(crate) type FuzzLayer = service::GatewayLayer;

/// The gateway of `services`, built once for many [`fuzz_request`]s.
#[cfg(all(feature = "fuzzing", feature = "rest"))]
pub(crate) fn fuzz_layer(
    services: &[&'static crate::descriptor::ServiceDescriptor],
) -> Result<service::GatewayLayer, crate::error::Error> {
    layer(services)
}

/// One HTTP request through the gateway `layer`, in front of
/// an echo of the gRPC call it makes (the reply message is the request
/// message), as the server runs it: what the fuzz target calls. A request
/// the gateway passes on (not one of its routes) is answered `404` with an
/// empty body by the echo. The status, the content type and the body.
#[cfg(all(feature = "fuzzing", feature = "rest"))]
pub(crate) async fn fuzz_request(
    layer: &service::GatewayLayer,
    request: http::Request<tonic::body::Body>,
) -> Result<(http::StatusCode, Option<String>, bytes::Bytes), crate::error::BoxError> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_layer::Layer;

    let echo = tower::service_fn(|request: http::Request<tonic::body::Body>| async move {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let body = request.into_body().collect().await?.to_bytes();
        if !grpc {
            let response = http::Response::builder().status(http::StatusCode::NOT_FOUND);
            return Ok::<_, tonic::Status>(
                response.body(tonic::body::Body::empty()).expect("a valid response"),
            );
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert(crate::protocol::GRPC_STATUS.clone(), http::HeaderValue::from_static("0"));
        let frames = [
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(body)),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body =
            tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
        Ok(http::Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .expect("a valid response"))
    });
    let gateway = layer.layer(echo);
    let response = gateway.oneshot(request).await?;
    let status = response.status();
    let content_type =
        response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, content_type, body))
}

/// The gRPC frames of a response body arriving in `chunks`, as the gateway
/// reads them: what the fuzz target reads.
#[cfg(all(feature = "fuzzing", feature = "rest"))]
pub(crate) fn fuzz_frames<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Result<Vec<bytes::Bytes>, String> {
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = transcode::next_frame(&mut buf)? {
            frames.push(frame);
        }
    }
    Ok(frames)
}

/// The gateway of the gRPC port and, when REST has a listener of its own
/// (`separate`), that listener's: there the gRPC port passes every request
/// on and the REST port answers routes only.
///
/// # Errors
///
/// When the services' descriptors or OpenAPI documents do not load, or a
/// separate listener is asked for with no route to serve.
#[cfg(feature = "rest")]
pub(crate) fn layers(
    services: &[&'static crate::descriptor::ServiceDescriptor],
    separate: bool,
) -> Result<(service::GatewayLayer, Option<service::GatewayLayer>), crate::error::Error> {
    let gateway = layer(services)?;
    if !separate {
        return Ok((gateway, None));
    }
    if !gateway.has_routes() {
        return Err(crate::error::Error::Config(
            "`rest.listen` is set but no added service has a `google.api.http` route; annotate a method \
             (see the `trellis::gateway` docs) or unset `rest.listen`"
                .to_owned(),
        ));
    }
    Ok((gateway.grpc_only(), Some(gateway.rest_only())))
}

/// Without the `rest` feature there is no gateway: a layer that adds
/// nothing, and no REST listener. Routes the services declare are named in a
/// warning, with how to serve them.
///
/// # Errors
///
/// When a separate REST listener is asked for.
#[cfg(not(feature = "rest"))]
pub(crate) fn layers(
    services: &[&'static crate::descriptor::ServiceDescriptor],
    separate: bool,
) -> Result<(tower_layer::Identity, Option<tower_layer::Identity>), crate::error::Error> {
    if separate {
        return Err(crate::error::Error::Config(
            "`rest.listen` is set but Trellis was built without its `rest` feature; turn the feature on \
             (`trellis = { version = \"...\", features = [\"rest\"] }`) or unset `rest.listen`"
                .to_owned(),
        ));
    }
    if let Some(warning) = unserved_routes(services) {
        tracing::warn!("{warning}");
    }
    Ok((tower_layer::Identity::new(), None))
}

/// What a build without the `rest` feature leaves unserved: the services
/// whose methods have `google.api.http` routes, and how to serve them.
#[cfg(not(feature = "rest"))]
fn unserved_routes(services: &[&'static crate::descriptor::ServiceDescriptor]) -> Option<String> {
    let with_routes: Vec<String> = services
        .iter()
        .filter_map(|service| {
            let routes = service.methods().iter().filter(|m| m.http_rule().is_some()).count();
            (routes > 0).then(|| format!("{} ({routes})", service.name()))
        })
        .collect();
    (!with_routes.is_empty()).then(|| {
        format!(
            "REST routes (google.api.http) of {} are not served: Trellis was built without its `rest` \
             feature; add `features = [\"rest\"]` to the `trellis` dependency to serve them",
            with_routes.join(", ")
        )
    })
}

#[cfg(all(test, not(feature = "rest")))]
mod tests {
    use crate::descriptor::{
        HttpMethod, HttpRule, Idempotency, MethodDescriptor, PathTemplate, ServiceDescriptor, StreamingKind,
    };

    static RULE: HttpRule = HttpRule::new(HttpMethod::Get, PathTemplate::new("/v1/things", &[], None));
    static ROUTED: [MethodDescriptor; 2] = [
        MethodDescriptor::new("Get", "/a.v1.A/Get", Idempotency::NoSideEffects, StreamingKind::Unary)
            .with_http_rule(&RULE),
        MethodDescriptor::new("Put", "/a.v1.A/Put", Idempotency::Unknown, StreamingKind::Unary),
    ];
    static PLAIN: [MethodDescriptor; 1] =
        [MethodDescriptor::new("Put", "/b.v1.B/Put", Idempotency::Unknown, StreamingKind::Unary)];
    static A: ServiceDescriptor = ServiceDescriptor::new("a.v1.A", &ROUTED, &[]);
    static B: ServiceDescriptor = ServiceDescriptor::new("b.v1.B", &PLAIN, &[]);

    #[test]
    fn routes_left_unserved_are_named_with_the_feature_that_serves_them() {
        let warning = super::unserved_routes(&[&A, &B]).expect("a warning");
        assert_eq!(
            warning,
            "REST routes (google.api.http) of a.v1.A (1) are not served: Trellis was built without its \
             `rest` feature; add `features = [\"rest\"]` to the `trellis` dependency to serve them"
        );
        assert_eq!(super::unserved_routes(&[&B]), None, "no routes, nothing to say");
        let err = super::layers(&[&B], true).map(drop).expect_err("no REST listener without the feature");
        assert!(err.to_string().contains("features = [\"rest\"]"), "{err}");
    }
}

#[cfg(feature = "rest")]
mod service {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::{Bytes, BytesMut};
    use futures_util::StreamExt;
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
    use http_body::Frame;
    use http_body_util::{BodyExt, Full, Limited, StreamBody};
    use prost_reflect::{DescriptorPool, ReflectMessage};
    use tonic::Code;
    use tonic::body::Body;
    use tower_layer::Layer;
    use tower_service::Service;

    use super::route::{Lookup, Matched, Routes};
    use super::status::{error_json, error_response, failed_json, failed_response, json_response};
    use super::transcode::{grpc_frame, next_frame, request_message, response_json, status_of};
    use crate::descriptor::{ServiceDescriptor, StreamingKind};
    use crate::error::{BoxError, Error};
    use crate::protocol::{DEFAULT_TIMEOUT, GRPC_TIMEOUT, decode_grpc_timeout, encode_grpc_timeout};

    /// The largest request body the gateway reads.
    const MAX_BODY: usize = 4 * 1024 * 1024;

    /// The header whose value fills a request's `idempotency_key` field.
    static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

    /// The header that sets a call's deadline as a duration (`2s`, `250ms`).
    static TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-trellis-timeout");

    /// Headers of the HTTP exchange itself, not passed on as metadata.
    static HOP_HEADERS: [&HeaderName; 12] = [
        &http::header::HOST,
        &http::header::CONNECTION,
        &http::header::CONTENT_TYPE,
        &http::header::CONTENT_LENGTH,
        &http::header::ACCEPT,
        &http::header::ACCEPT_ENCODING,
        &http::header::TE,
        &http::header::TRANSFER_ENCODING,
        &http::header::UPGRADE,
        &KEEP_ALIVE,
        &http::header::USER_AGENT,
        &TIMEOUT_HEADER,
    ];
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

    /// The gateway in front of the server's layers. With no REST route among
    /// the added services, it passes every request on.
    pub(crate) fn layer(services: &[&'static ServiceDescriptor]) -> Result<GatewayLayer, Error> {
        let mut pool = DescriptorPool::new();
        let mut seen: Vec<&'static [u8]> = Vec::new();
        for service in services {
            if !service.methods().iter().any(|m| m.http_rule().is_some()) {
                continue;
            }
            let set = service.file_descriptor_set();
            if seen.contains(&set) {
                continue;
            }
            seen.push(set);
            pool.decode_file_descriptor_set(set).map_err(|e| {
                Error::Config(format!("REST: the descriptors of `{}` do not load: {e}", service.name()))
            })?;
        }
        let routes = Routes::new(services, &pool)?;
        let openapi = openapi(services)?;
        Ok(GatewayLayer {
            routes: (!routes.is_empty()).then(|| Arc::new((routes, openapi))),
            rest_only: false,
        })
    }

    /// One OpenAPI document for every added service's routes, from those
    /// `trellis-build` generated.
    fn openapi(services: &[&'static ServiceDescriptor]) -> Result<Bytes, Error> {
        let mut paths = serde_json::Map::new();
        let mut schemas = serde_json::Map::new();
        let mut tags = Vec::new();
        let mut names = Vec::new();
        for service in services {
            let Some(text) = service.openapi() else { continue };
            let document: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                Error::Config(format!(
                    "REST: the OpenAPI document of `{}` does not parse: {e}",
                    service.name()
                ))
            })?;
            names.push(service.name());
            if let Some(map) = document["paths"].as_object() {
                paths.extend(map.clone());
            }
            if let Some(map) = document["components"]["schemas"].as_object() {
                schemas.extend(map.clone());
            }
            if let Some(list) = document["tags"].as_array() {
                tags.extend(list.iter().cloned());
            }
        }
        let document = serde_json::json!({
            "openapi": "3.0.3",
            "info": { "title": names.join(", "), "version": env!("CARGO_PKG_VERSION") },
            "tags": tags,
            "paths": paths,
            "components": { "schemas": schemas },
        });
        Ok(Bytes::from(document.to_string()))
    }

    /// Where the OpenAPI document is served.
    const OPENAPI_PATH: &str = "/openapi.json";

    /// Serves the REST routes of the added services; see the [module docs](super).
    #[derive(Debug, Clone)]
    pub(crate) struct GatewayLayer {
        routes: Option<Arc<(Routes, Bytes)>>,
        /// Every request is a REST one: nothing is passed on as gRPC.
        rest_only: bool,
    }

    impl GatewayLayer {
        pub(super) fn has_routes(&self) -> bool {
            self.routes.is_some()
        }

        /// This gateway with no routes: every request passes on as gRPC.
        pub(super) fn grpc_only(&self) -> Self {
            GatewayLayer { routes: None, rest_only: false }
        }

        /// This gateway answering every request itself, as REST.
        pub(super) fn rest_only(&self) -> Self {
            GatewayLayer { routes: self.routes.clone(), rest_only: true }
        }
    }

    impl<S> Layer<S> for GatewayLayer {
        type Service = Gateway<S>;

        fn layer(&self, inner: S) -> Gateway<S> {
            Gateway { inner, routes: self.routes.clone(), rest_only: self.rest_only }
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct Gateway<S> {
        inner: S,
        /// The routes, and the OpenAPI document that describes them.
        routes: Option<Arc<(Routes, Bytes)>>,
        /// On a REST listener of its own: gRPC requests are not passed on.
        rest_only: bool,
    }

    type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

    /// A gRPC response as it is, or a REST response.
    pub(crate) type GatewayBody<B> = http_body_util::Either<B, Body>;

    pin_project_lite::pin_project! {
        #[project = GatewayProj]
        pub(crate) enum GatewayFuture<F, B, E> {
            Grpc { #[pin] inner: F },
            Rest { inner: BoxFuture<Response<GatewayBody<B>>, E> },
        }
    }

    impl<F, B, E> Future for GatewayFuture<F, B, E>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<GatewayBody<B>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                GatewayProj::Grpc { inner } => {
                    inner.poll(cx).map(|result| result.map(|r| r.map(http_body_util::Either::Left)))
                }
                GatewayProj::Rest { inner } => inner.as_mut().poll(cx),
            }
        }
    }

    impl<S, B> Service<Request<Body>> for Gateway<S>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        type Response = Response<GatewayBody<B>>;
        type Error = S::Error;
        type Future = GatewayFuture<S::Future, B, S::Error>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            // No routes on a port that also serves gRPC: everything passes on, unread.
            if self.routes.is_none() && !self.rest_only {
                return GatewayFuture::Grpc { inner: self.inner.call(req) };
            }
            let is_grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if self.rest_only && is_grpc {
                // Answered in gRPC, so the caller's stub shows where to go.
                let response = tonic::Status::unimplemented(
                    "this is the REST listener (`rest.listen`); call gRPC on the gRPC port",
                )
                .into_http::<Body>();
                return GatewayFuture::Rest {
                    inner: Box::pin(std::future::ready(Ok(response.map(http_body_util::Either::Right)))),
                };
            }
            let Some(routes) = self.routes.as_ref().filter(|_| !is_grpc).map(Arc::clone) else {
                return GatewayFuture::Grpc { inner: self.inner.call(req) };
            };
            // The ready service goes with this call; a clone stays for the next.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let inner = Box::pin(async move {
                let (routes, openapi) = &*routes;
                let response = if req.method() == Method::GET && req.uri().path() == OPENAPI_PATH {
                    let mut response = Response::new(Body::new(Full::new(openapi.clone())));
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                } else {
                    serve(inner, routes, req).await
                };
                Ok(response.map(http_body_util::Either::Right))
            });
            GatewayFuture::Rest { inner }
        }
    }

    /// Answers one REST request; every failure is a JSON error response.
    async fn serve<S, B>(mut inner: S, routes: &Routes, req: Request<Body>) -> Response<Body>
    where
        S: Service<Request<Body>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let matched = match routes.find(parts.method.as_str(), &path) {
            Lookup::Route(matched) => matched,
            Lookup::WrongMethod(allowed) => {
                let mut response = error_response(
                    Code::Unimplemented,
                    &format!("`{path}` does not take {}; it takes {}", parts.method, allowed.join(", ")),
                    Some(StatusCode::METHOD_NOT_ALLOWED),
                );
                if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
                    response.headers_mut().insert(http::header::ALLOW, allow);
                }
                return response;
            }
            Lookup::NotFound => {
                return error_response(
                    Code::NotFound,
                    &format!("no REST route matches `{} {path}`", parts.method),
                    Some(StatusCode::NOT_FOUND),
                );
            }
        };
        let kind = matched.route.method.kind();
        if matches!(kind, StreamingKind::ClientStreaming | StreamingKind::BidiStreaming) {
            return error_response(
                Code::Unimplemented,
                &format!(
                    "{} streams requests, which REST cannot send; call it over gRPC",
                    matched.route.method.path()
                ),
                None,
            );
        }

        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => {
                return error_response(
                    Code::InvalidArgument,
                    &format!("cannot read the request body (at most {MAX_BODY} bytes): {err}"),
                    Some(StatusCode::PAYLOAD_TOO_LARGE),
                );
            }
        };
        let mut message = match request_message(&matched, parts.uri.query(), &body) {
            Ok(message) => message,
            Err(problem) => return error_response(Code::InvalidArgument, &problem, None),
        };
        if let Err(problem) = idempotency_key(&mut message, &parts.headers) {
            return error_response(Code::InvalidArgument, &problem, None);
        }
        let (grpc_request, timeout) =
            match grpc_request(&matched, &parts.headers, parts.extensions, grpc_frame(&message)) {
                Ok(request) => request,
                Err(problem) => return error_response(Code::InvalidArgument, &problem, None),
            };
        // The gateway is the client of the call, so it keeps the deadline.
        let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        let response = match within(deadline, inner.call(grpc_request)).await {
            Some(Ok(response)) => response,
            Some(Err(err)) => {
                return error_response(Code::Internal, &format!("the call failed: {}", err.into()), None);
            }
            None => return deadline_exceeded(timeout),
        };
        let pool = matched.route.output.parent_pool();
        if let Some(failed) = status_of(response.headers(), pool).filter(|f| f.code != Code::Ok) {
            return failed_response(&failed);
        }
        let sse = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        if kind == StreamingKind::ServerStreaming {
            stream_response(&matched, response.into_body(), sse, deadline)
        } else {
            match within(deadline, unary_response(&matched, response.into_body())).await {
                Some(response) => response,
                None => deadline_exceeded(timeout),
            }
        }
    }

    /// `future`, or `None` if `deadline` passes first.
    async fn within<F: Future>(deadline: Option<tokio::time::Instant>, future: F) -> Option<F::Output> {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
            None => Some(future.await),
        }
    }

    fn deadline_exceeded(timeout: Option<std::time::Duration>) -> Response<Body> {
        let timeout = timeout.map(|t| format!("{t:?}")).unwrap_or_default();
        error_response(
            Code::DeadlineExceeded,
            &format!("no answer within the call's deadline ({timeout})"),
            None,
        )
    }

    /// Puts an `Idempotency-Key` header in the request's `idempotency_key`
    /// string field, when it has one; the body may carry it instead, but not
    /// a different one.
    fn idempotency_key(
        message: &mut prost_reflect::DynamicMessage,
        headers: &HeaderMap,
    ) -> Result<(), String> {
        let Some(header) = headers.get(&IDEMPOTENCY_KEY) else { return Ok(()) };
        let Some(field) = message.descriptor().get_field_by_name("idempotency_key") else { return Ok(()) };
        if field.kind() != prost_reflect::Kind::String || field.is_list() {
            return Ok(());
        }
        let header = header.to_str().map_err(|_| "the Idempotency-Key header is not text".to_owned())?;
        let current = message.get_field(&field).as_str().unwrap_or_default().to_owned();
        if current.is_empty() {
            message.set_field(&field, prost_reflect::Value::String(header.to_owned()));
        } else if current != header {
            return Err(format!(
                "the Idempotency-Key header `{header}` and the body's `idempotencyKey` `{current}` differ; send one"
            ));
        }
        Ok(())
    }

    /// The gRPC request for a transcoded call: the method's path, the
    /// message, the deadline, and the caller's headers as metadata; and the
    /// call's timeout.
    fn grpc_request(
        matched: &Matched<'_>,
        headers: &HeaderMap,
        extensions: http::Extensions,
        frame: Bytes,
    ) -> Result<(Request<Body>, Option<std::time::Duration>), String> {
        let method = matched.route.method;
        let uri: Uri =
            method.path().parse().map_err(|e| format!("bad method path {}: {e}", method.path()))?;
        let mut request = Request::new(Body::new(Full::new(frame)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.extensions_mut() = extensions;
        let out = request.headers_mut();
        for (name, value) in headers {
            if !HOP_HEADERS.contains(&name) {
                out.append(name.clone(), value.clone());
            }
        }
        out.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        out.insert(http::header::TE, HeaderValue::from_static("trailers"));
        let timeout = match (headers.get(&GRPC_TIMEOUT), headers.get(&TIMEOUT_HEADER)) {
            (Some(value), _) => Some(decode_grpc_timeout(value.as_bytes()).ok_or_else(|| {
                format!(
                    "`{GRPC_TIMEOUT}: {}` is not a gRPC timeout; write one like 2S or 250m",
                    value.to_str().unwrap_or_default()
                )
            })?),
            (None, Some(value)) => {
                let text = value.to_str().unwrap_or_default();
                Some(humantime::parse_duration(text.trim()).map_err(|_| {
                    format!("`{TIMEOUT_HEADER}: {text}` is not a duration; write one like 2s or 250ms")
                })?)
            }
            (None, None) => method.policy().timeout().or_else(|| {
                // As the client stack does; a stream runs until it ends.
                (method.kind() == StreamingKind::Unary).then_some(DEFAULT_TIMEOUT)
            }),
        };
        if let Some(value) = timeout.and_then(|t| HeaderValue::from_str(&encode_grpc_timeout(t)).ok()) {
            out.insert(GRPC_TIMEOUT.clone(), value);
        }
        Ok((request, timeout))
    }

    async fn unary_response<B>(matched: &Matched<'_>, body: B) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let collected = match body.collect().await {
            Ok(collected) => collected,
            Err(err) => {
                return error_response(Code::Unavailable, &format!("the call was cut: {}", err.into()), None);
            }
        };
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let pool = matched.route.output.parent_pool();
        if let Some(failed) = status_of(&trailers, pool).filter(|f| f.code != Code::Ok) {
            return failed_response(&failed);
        }
        let mut data = BytesMut::from(collected.to_bytes().as_ref());
        let frame = match next_frame(&mut data) {
            Ok(Some(frame)) => frame,
            Ok(None) => return error_response(Code::Internal, "the service sent no response message", None),
            Err(problem) => return error_response(Code::Internal, &problem, None),
        };
        let route = matched.route;
        match response_json(&route.output, route.rule.response_body(), frame) {
            Ok(json) => json_response(StatusCode::OK, &json),
            Err(problem) => error_response(Code::Internal, &problem, None),
        }
    }

    /// Streams each response message as it comes, as NDJSON or SSE.
    fn stream_response<B>(
        matched: &Matched<'_>,
        body: B,
        sse: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let output = matched.route.output.clone();
        let response_body = matched.route.rule.response_body().map(str::to_owned);
        let line = move |event: &str, value: serde_json::Value| -> Bytes {
            let text = if sse {
                let kind = if event == "error" { "event: error\n" } else { "" };
                format!("{kind}data: {value}\n\n")
            } else {
                format!("{}\n", serde_json::json!({ event: value }))
            };
            Bytes::from(text)
        };
        let state = (Box::pin(body), BytesMut::new(), false);
        let lines = futures_util::stream::unfold(state, move |(mut body, mut buf, done)| {
            let output = output.clone();
            let response_body = response_body.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    match next_frame(&mut buf) {
                        Ok(Some(frame)) => {
                            let out = match response_json(&output, response_body.as_deref(), frame) {
                                Ok(json) => line("result", json),
                                Err(problem) => {
                                    return Some((
                                        line("error", error_json(Code::Internal, &problem)),
                                        (body, buf, true),
                                    ));
                                }
                            };
                            return Some((out, (body, buf, false)));
                        }
                        Ok(None) => {}
                        Err(problem) => {
                            return Some((
                                line("error", error_json(Code::Internal, &problem)),
                                (body, buf, true),
                            ));
                        }
                    }
                    let Some(next) = within(deadline, body.frame()).await else {
                        let error =
                            error_json(Code::DeadlineExceeded, "the stream outlived the call's deadline");
                        return Some((line("error", error), (body, buf, true)));
                    };
                    match next {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => buf.extend_from_slice(&data),
                            Err(frame) => {
                                let trailers = frame.into_trailers().unwrap_or_default();
                                return status_of(&trailers, output.parent_pool())
                                    .filter(|f| f.code != Code::Ok)
                                    .map(|failed| (line("error", failed_json(&failed)), (body, buf, true)));
                            }
                        },
                        Some(Err(err)) => {
                            let message = format!("the stream was cut: {}", err.into());
                            return Some((
                                line("error", error_json(Code::Unavailable, &message)),
                                (body, buf, true),
                            ));
                        }
                        None => return None,
                    }
                }
            }
        });
        let frames = lines.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        let mut response = Response::new(Body::new(StreamBody::new(frames)));
        let content_type = if sse { "text/event-stream" } else { "application/x-ndjson" };
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}
