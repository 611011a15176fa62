//! Any HTTP request through the REST gateway (`framework/src/gateway/`),
//! in front of an echo of the gRPC call it makes: never a panic, never a
//! failure instead of an answer, never a server error for what the client
//! sent, and every JSON answer is JSON.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis::fuzzing::Gateway;

#[allow(missing_docs, unreachable_pub, dead_code, clippy::all)]
mod proto {
    trellis::include_protos!();
}

const METHODS: [&str; 7] = ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"];

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| Gateway::new(&[&proto::fuzz::v1::THINGS_DESCRIPTOR]).expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    // METHOD-BYTE PATH?QUERY \n BODY
    let [method, rest @ ..] = data else { return };
    let (uri, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(uri) = std::str::from_utf8(uri) else { return };
    let Ok(request) = http::Request::builder()
        .method(METHODS[usize::from(*method) % METHODS.len()])
        .uri(uri)
        .header("content-type", "application/json")
        .body(trellis::codegen::tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::copy_from_slice(body),
        )))
    else {
        return;
    };
    let (status, content_type, body) = gateway().call(request).expect("the gateway answers");
    assert!(!status.is_server_error(), "{status} for {uri}: {body:?}");
    if content_type.as_deref().is_some_and(|t| t.starts_with("application/json")) && !body.is_empty() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
        assert!(parsed.is_ok(), "not JSON: {body:?}");
    }
});
