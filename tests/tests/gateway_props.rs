//! The REST gateway's property test, on stable: what the `gateway_request`
//! fuzz target checks (`framework/fuzz`), over generated requests to the
//! test `Types` route (`POST /v1/types:echo`, every kind of field), through
//! the gateway in front of an echo of the gRPC call it makes. Never a
//! panic, never a failure instead of an answer, never a server error for
//! what the client sent, and JSON answers are JSON; a well-formed request
//! comes back with the fields it sent.

use proptest::prelude::*;
use trellis::fuzzing::Gateway;
use trellis_tests::proto::trellis::test::rest::v1::TYPES_DESCRIPTOR;

fn call(gateway: &Gateway, method: &str, uri: &str, body: &[u8]) -> Option<(u16, Option<String>, Vec<u8>)> {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(trellis::codegen::tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::copy_from_slice(body),
        )))
        .ok()?;
    let (status, content_type, body) = gateway.call(request).expect("the gateway answers");
    Some((status.as_u16(), content_type, body.to_vec()))
}

fn uri_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/types:echo".to_owned()),
        "/v1/types:echo\\?[a-z0-9_.=&%]{0,24}",
        "/v1/types[:a-z%]{0,8}",
        "/[ -~]{0,30}",
    ]
}

fn json_body() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        any::<i32>().prop_map(|v| format!("\"i32\":{v}")),
        any::<i64>().prop_map(|v| format!("\"i64\":\"{v}\"")),
        any::<u64>().prop_map(|v| format!("\"u64\":{v}")),
        any::<bool>().prop_map(|v| format!("\"flag\":{v}")),
        "[ -~]{0,12}".prop_map(|v| format!("\"text\":{}", serde_json::Value::String(v))),
        prop::sample::select(vec![
            "\"colour\":\"COLOUR_RED\"",
            "\"colour\":7",
            "\"at\":\"2020-01-01T00:00:00Z\"",
            "\"took\":\"1.5s\"",
            "\"anything\":[1,{\"a\":null}]",
            "\"mask\":\"a.b,c\"",
            "\"blob\":\"AAE=\""
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,16}",
    ];
    prop::collection::vec(field, 0..5).prop_map(|fields| format!("{{{}}}", fields.join(",")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_an_answer_and_json_is_json(
        method in prop::sample::select(vec!["GET", "POST", "PATCH", "DELETE", "HEAD", "PUT"]),
        uri in uri_text(),
        body in prop_oneof![Just(String::new()), json_body(), "[ -~]{0,20}"],
    ) {
        let gateway = Gateway::new(&[&TYPES_DESCRIPTOR]).expect("runtime");
        if let Some((status, content_type, body)) = call(&gateway, method, &uri, body.as_bytes()) {
            prop_assert!(status < 500, "{status} for {method} {uri}: {}", String::from_utf8_lossy(&body));
            if content_type.as_deref().is_some_and(|t| t.starts_with("application/json")) && !body.is_empty() {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "{body:?}");
            }
        }
    }

    #[test]
    fn fields_sent_come_back(i64 in any::<i64>(), text in "[ -~]{0,16}", flag in any::<bool>(), many in prop::collection::vec(any::<i64>(), 0..4)) {
        let gateway = Gateway::new(&[&TYPES_DESCRIPTOR]).expect("runtime");
        let sent = serde_json::json!({
            "i64": i64.to_string(),
            "text": text,
            "flag": flag,
            "many": many.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        let (status, _, body) = call(&gateway, "POST", "/v1/types:echo", sent.to_string().as_bytes()).expect("a request");
        prop_assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let got: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        // Default values are left out of the answer (proto3 JSON).
        let defaults = [("i64", serde_json::json!("0")), ("text", serde_json::json!("")), ("flag", serde_json::json!(false)), ("many", serde_json::json!([]))];
        for (key, zero) in defaults {
            let expected = &sent[key];
            let default = *expected == zero;
            prop_assert_eq!(got.get(key).unwrap_or(&serde_json::Value::Null), if default { &serde_json::Value::Null } else { expected }, "{}", got);
        }
    }
}
