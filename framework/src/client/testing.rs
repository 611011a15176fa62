//! What the layers' own tests share: mock services and gRPC responses.

use http::{Request, Response};
use tonic::body::Body;
use tower_test::mock;

/// A mock of the service below a layer.
pub(crate) type Mock = mock::Mock<Request<Body>, Response<Body>>;

/// What a test sees of the requests the mock gets.
pub(crate) type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// A mock of the service below a layer, and its handle.
pub(crate) fn mock() -> (Mock, Handle) {
    mock::pair()
}

/// A trailers-only gRPC response with `code`, as a server sends an error.
pub(crate) fn grpc(code: tonic::Code) -> Response<Body> {
    let mut response = tonic::Status::new(code, format!("{code:?} from the server")).into_http::<Body>();
    *response.body_mut() = Body::empty();
    response
}

/// What a Trellis server answers to a call it shed unprocessed.
pub(crate) fn shed() -> Response<Body> {
    let mut response = grpc(tonic::Code::ResourceExhausted);
    response.headers_mut().insert(crate::protocol::UNPROCESSED.clone(), http::HeaderValue::from_static("1"));
    response
        .headers_mut()
        .insert(crate::protocol::RETRY_PUSHBACK_MS.clone(), http::HeaderValue::from_static("20"));
    response
}

/// A request for `path` with an empty body.
pub(crate) fn request(path: &'static str) -> Request<Body> {
    Request::builder().uri(path).body(Body::empty()).expect("a valid request")
}
