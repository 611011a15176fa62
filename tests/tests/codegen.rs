//! Generated code: protos with imports, well-known types, nested packages
//! and all four streaming kinds compile, serve and call over real sockets;
//! the descriptor table is right; broken protos fail with file:line:column.

use std::time::Duration;

use tokio_stream::StreamExt;
use trellis::codegen::prost_types;
use trellis::{Idempotency, Registry, Request, Response, Status, StreamingKind};
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::common::v1::Stamp;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::echo::v1::{
    ECHO_DESCRIPTOR, ECHO_SERVICE_NAME, EchoClient, EchoRequest,
};
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::{Deep, DeepServer};
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth, depth};

#[derive(Debug, Default)]
struct DeepService;

#[trellis::async_trait]
impl Deep for DeepService {
    async fn dive(&self, request: Request<Depth>) -> Result<Response<Depth>, Status> {
        let depth = request.into_inner();
        Ok(Response::new(Depth { level: depth.level + 1, inner: depth.inner }))
    }
}

/// Serves both test services on a free port; returns a registry naming it.
async fn serve() -> (Registry, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .add_service(DeepServer::new(DeepService))
        .propagation_delay(Duration::ZERO)
        .shutdown_signal(async {
            let _ = stopped.await;
        })
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    let url = format!("static://{ECHO_SERVICE_NAME}={addr};{}={addr}", DEEP_DESCRIPTOR.name());
    (Registry::from_url(&url).expect("registry"), stop)
}

fn request(text: &str) -> EchoRequest {
    EchoRequest {
        stamp: Some(Stamp {
            text: text.to_owned(),
            at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 7 }),
        }),
        repeat: 3,
        delay: Some(prost_types::Duration { seconds: 0, nanos: 1_000 }),
        note: Some("a note".to_owned()),
        depth: Some(Depth { level: 2, inner: Some(depth::Inner { kind: depth::inner::Kind::Deep.into() }) }),
    }
}

#[tokio::test]
async fn all_streaming_kinds_round_trip() {
    let (registry, _stop) = serve().await;
    let mut client = EchoClient::discover(&registry).expect("discover");

    let unary = client.unary(request("u")).await.expect("unary").into_inner();
    assert_eq!(unary.stamp.as_ref().map(|s| s.text.as_str()), Some("u"));
    assert_eq!(unary.stamp.and_then(|s| s.at).map(|t| (t.seconds, t.nanos)), Some((1_700_000_000, 7)));
    assert_eq!(unary.note.as_deref(), Some("a note"));
    assert_eq!(unary.depth.map(|d| d.level), Some(2));

    let stream = client.server_stream(request("s")).await.expect("server stream").into_inner();
    let indexes: Vec<u32> = stream.map(|r| r.expect("message").index).collect().await;
    assert_eq!(indexes, [0, 1, 2]);

    let outbound = tokio_stream::iter((0..5).map(|i| request(&format!("c{i}"))));
    let last = client.client_stream(outbound).await.expect("client stream").into_inner();
    assert_eq!((last.index, last.stamp.map(|s| s.text)), (5, Some("c4".to_owned())));

    let outbound = tokio_stream::iter((0..4).map(|i| request(&format!("b{i}"))));
    let replies = client.bidi(outbound).await.expect("bidi").into_inner();
    let texts: Vec<String> =
        replies.map(|r| r.expect("message").stamp.map(|s| s.text).unwrap_or_default()).collect().await;
    assert_eq!(texts, ["b0", "b1", "b2", "b3"]);

    client.ping(()).await.expect("ping with google.protobuf.Empty");

    let mut deep = DeepClient::discover(&registry).expect("discover deep");
    let dived = deep.dive(Depth { level: 41, inner: None }).await.expect("dive").into_inner();
    assert_eq!(dived.level, 42);
}

#[test]
fn descriptor_table_matches_the_proto() {
    assert_eq!(ECHO_SERVICE_NAME, "trellis.test.echo.v1.Echo");
    assert_eq!(ECHO_DESCRIPTOR.name(), ECHO_SERVICE_NAME);
    let table: Vec<(&str, &str, Idempotency, StreamingKind)> =
        ECHO_DESCRIPTOR.methods().iter().map(|m| (m.name(), m.path(), m.idempotency(), m.kind())).collect();
    assert_eq!(
        table,
        [
            ("Unary", "/trellis.test.echo.v1.Echo/Unary", Idempotency::NoSideEffects, StreamingKind::Unary),
            (
                "ServerStream",
                "/trellis.test.echo.v1.Echo/ServerStream",
                Idempotency::Unknown,
                StreamingKind::ServerStreaming
            ),
            (
                "ClientStream",
                "/trellis.test.echo.v1.Echo/ClientStream",
                Idempotency::Idempotent,
                StreamingKind::ClientStreaming
            ),
            ("Bidi", "/trellis.test.echo.v1.Echo/Bidi", Idempotency::Unknown, StreamingKind::BidiStreaming),
            ("Ping", "/trellis.test.echo.v1.Echo/Ping", Idempotency::Unknown, StreamingKind::Unary),
        ]
    );
    assert_eq!(DEEP_DESCRIPTOR.name(), "trellis.test.nested.deep.v1.Deep");
    assert_eq!(DEEP_DESCRIPTOR.methods()[0].idempotency(), Idempotency::Idempotent);
    assert!(
        ECHO_DESCRIPTOR.method_by_path("/trellis.test.echo.v1.Echo/Unary").is_some()
            && ECHO_DESCRIPTOR.method_by_path("/trellis.test.echo.v1.Echo/Nope").is_none()
    );
}

#[test]
fn file_descriptor_set_holds_imports_and_well_known_types() {
    use trellis::codegen::prost::Message;
    let set = prost_types::FileDescriptorSet::decode(ECHO_DESCRIPTOR.file_descriptor_set()).expect("decodes");
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    for expected in [
        "trellis/test/echo/v1/echo.proto",
        "trellis/test/common/v1/common.proto",
        "trellis/test/nested/deep/v1/deep.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/empty.proto",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
}

#[tokio::test]
async fn a_dead_endpoint_fails_with_a_message_naming_service_and_address() {
    // Bind then drop a listener: the port is closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
    let registry = Registry::from_url(&format!("static://{ECHO_SERVICE_NAME}={addr}")).expect("registry");
    let mut client = EchoClient::discover(&registry).expect("discover");
    let status = client.unary(request("x")).await.expect_err("nothing listens there");
    assert_eq!(status.code(), trellis::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(ECHO_SERVICE_NAME) && status.message().contains(&addr.to_string()),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_service_missing_from_the_registry_is_named() {
    let registry = Registry::from_url("static://other.Service=127.0.0.1:1").expect("registry");
    let mut client = EchoClient::discover(&registry).expect("discover returns at once");
    let mut call = Request::new(request("x"));
    call.set_timeout(Duration::from_millis(200));
    let status = client.unary(call).await.expect_err("no instance");
    let message = status.message();
    assert!(message.contains(ECHO_SERVICE_NAME) && message.contains("static://"), "{message}");
}

#[test]
fn discover_outside_a_runtime_is_an_error_not_a_panic() {
    let registry =
        Registry::from_url(&format!("static://{ECHO_SERVICE_NAME}=127.0.0.1:1")).expect("registry");
    let err = EchoClient::discover(&registry).expect_err("no runtime");
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}
