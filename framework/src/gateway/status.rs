//! gRPC status codes as HTTP statuses and JSON error bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use tonic::Code;
use tonic::body::Body;

use super::transcode::Failed;

/// The HTTP status for a gRPC code, as grpc-gateway maps it
/// (`runtime.HTTPStatusFromCode`).
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `{"code": 5, "message": "...", "details": []}`, the body grpc-gateway sends.
pub(crate) fn error_json(code: Code, message: &str) -> serde_json::Value {
    serde_json::json!({ "code": code as i32, "message": message, "details": [] })
}

/// The body of a call that failed: its code, message and details.
pub(crate) fn failed_json(failed: &Failed) -> serde_json::Value {
    serde_json::json!({ "code": failed.code as i32, "message": failed.message, "details": failed.details })
}

/// The response of a call that failed.
pub(crate) fn failed_response(failed: &Failed) -> Response<Body> {
    with_grpc_status(json_response(http_status(failed.code), &failed_json(failed)), failed.code)
}

/// An error response: the mapped HTTP status (or `status`, when given) and
/// the JSON error body.
pub(crate) fn error_response(code: Code, message: &str, status: Option<StatusCode>) -> Response<Body> {
    let response = json_response(status.unwrap_or_else(|| http_status(code)), &error_json(code, message));
    with_grpc_status(response, code)
}

fn with_grpc_status(mut response: Response<Body>, code: Code) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(&(code as i32).to_string()) {
        response.headers_mut().insert(crate::protocol::GRPC_STATUS.clone(), value);
    }
    response
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut text = value.to_string();
    text.push('\n');
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_as_grpc_gateway_does() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Cancelled, 499),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }
}
