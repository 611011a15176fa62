//! The JSON Trellis's REST gateway reads and writes is the proto3 JSON
//! mapping, checked against an independent implementation: Google's
//! `json_format` (Python `protobuf`, Debian `python3-protobuf`), over every
//! kind of field and the well-known types. Needs `curl` and that package.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use trellis::{Request, Response, Status};
use trellis_tests::proto::trellis::test::rest::v1::types_server::{Types, TypesServer};
use trellis_tests::proto::trellis::test::rest::v1::{AllTypes, FILE_DESCRIPTOR_SET};

#[derive(Debug)]
struct Echo;

#[trellis::async_trait]
impl Types for Echo {
    async fn echo(&self, request: Request<AllTypes>) -> Result<Response<AllTypes>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}

async fn serve() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .add_service(TypesServer::new(Echo))
        .propagation_delay(Duration::ZERO)
        .shutdown_signal(async {
            let _ = stopped.await;
        })
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    (addr, stop)
}

/// POSTs `body` to the echo route; the status and the JSON answer.
async fn echo(addr: SocketAddr, body: &str) -> (u16, Value) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "-X", "POST", "-d", body])
        .arg(format!("http://{addr}/v1/types:echo"))
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("no response: {text:?}"));
    (status.parse().expect("status"), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// A Python with Google's `protobuf` package.
async fn python() -> &'static str {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate).args(["-c", "import google.protobuf"]).output().await;
        if ok.is_ok_and(|out| out.status.success()) {
            return candidate;
        }
    }
    panic!("no python3 with the protobuf package: apt-get install python3-protobuf (or pip install protobuf)")
}

/// Google's `json_format` of `json` as an `AllTypes`.
async fn google_json(descriptors: &Path, json: &Value) -> Result<Value, String> {
    use tokio::io::AsyncWriteExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/json_format.py");
    let mut child = Command::new(python().await)
        .args([script, descriptors.to_str().expect("utf-8 path"), "trellis.test.rest.v1.AllTypes"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(json.to_string().as_bytes()).await.expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("python exits");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("python prints JSON"))
}

/// Numbers compared as numbers (`1` and `1.0` are the same JSON number).
fn normalized(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalized(v))).collect()),
        other => other.clone(),
    }
}

/// Every kind of field, in the canonical form.
fn canonical() -> Value {
    json!({
        "i32": -5,
        "i64": "-9007199254740993",
        "u32": 7,
        "u64": "18446744073709551615",
        "s32": -3,
        "s64": "-4",
        "f64": "12",
        "sf32": -8,
        "dbl": 0.25,
        "flt": 1.5,
        "flag": true,
        "text": "h\u{e9}llo \"q\"",
        "blob": "AAEC/w==",
        "colour": "COLOUR_GREEN",
        "many": ["1", "-2"],
        "colours": ["COLOUR_RED", "COLOUR_GREEN"],
        "counts": { "a": "1", "b": "-2" },
        "book": { "id": "3", "title": "T", "authors": ["x"] },
        "at": "2023-11-14T22:13:20.123Z",
        "took": "1.500s",
        "maybeCount": "5",
        "maybeText": "w",
        "maybeFlag": false,
        "nothing": {},
        "attributes": { "k": [1, "two", null, { "n": true }] },
        "anything": 3.5,
        "list": [1, "a"],
        "mask": "bookId,title",
        "packed": { "@type": "type.googleapis.com/trellis.test.rest.v1.Book", "id": "1", "title": "Any" },
        "name": "chosen",
    })
}

#[tokio::test]
async fn canonical_json_round_trips_and_matches_googles() {
    let (addr, _stop) = serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let descriptors = dir.path().join("set.bin");
    std::fs::write(&descriptors, FILE_DESCRIPTOR_SET).expect("write descriptors");

    let (status, ours) = echo(addr, &canonical().to_string()).await;
    assert_eq!(status, 200, "{ours}");
    assert_eq!(normalized(&ours), normalized(&canonical()), "Trellis changed canonical JSON");

    // Google's json_format reads what Trellis wrote and writes it the same.
    let theirs = google_json(&descriptors, &ours).await.expect("json_format parses Trellis's JSON");
    assert_eq!(normalized(&theirs), normalized(&ours));

    // And Trellis reads what json_format writes.
    let (status, again) = echo(addr, &theirs.to_string()).await;
    assert_eq!((status, normalized(&again)), (200, normalized(&theirs)));
}

#[tokio::test]
async fn the_lenient_forms_are_accepted_as_the_spec_allows() {
    let (addr, _stop) = serve().await;
    let lenient = json!({
        "i64": -9,                       // a number for a 64-bit integer
        "u32": "7",                      // a string for a 32-bit one
        "colour": 2,                     // an enum by number
        "maybe_count": 5,                // the proto name, and a number
        "many": [1, "2"],
        "dbl": "NaN",
    });
    let (status, ours) = echo(addr, &lenient.to_string()).await;
    assert_eq!(status, 200, "{ours}");
    assert_eq!(
        ours,
        json!({ "i64": "-9", "u32": 7, "colour": "COLOUR_GREEN", "maybeCount": "5", "many": ["1", "2"], "dbl": "NaN" })
    );
}

#[tokio::test]
async fn what_the_mapping_rejects_is_rejected_naming_the_field() {
    let (addr, _stop) = serve().await;
    for (body, expected) in [
        (json!({ "colour": "COLOUR_PURPLE" }), "COLOUR_PURPLE"),
        (json!({ "i32": "x1" }), "i32"),
        (json!({ "unknownField": 1 }), "unknownField"),
        (json!({ "at": "yesterday" }), "at"),
        (json!({ "name": "a", "number": 1 }), "oneof 'choice'"),
    ] {
        let (status, error) = echo(addr, &body.to_string()).await;
        let message = error["message"].as_str().unwrap_or_default();
        assert_eq!((status, error["code"].as_i64()), (400, Some(3)), "{body}: {error}");
        assert!(message.contains(expected), "{body}: {message}");
    }
}
