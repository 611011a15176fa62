//! Message size limits on both sides, from configuration: the server's
//! `server.messages` applied to a generated service, and a client's
//! `[clients."SERVICE"] max_decoding_size` / `max_encoding_size` applied by
//! the generated `discover`.

use trellis::client::{ClientConfig, Clients};
use trellis::server::MessageLimits;
use trellis::{Code, Registry};
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::echo::v1::{ECHO_DESCRIPTOR, EchoClient, EchoRequest};

fn request(size: usize) -> EchoRequest {
    EchoRequest { note: Some("n".repeat(size)), ..EchoRequest::default() }
}

async fn server(limits: MessageLimits) -> Registry {
    let server = trellis::Server::builder()
        .add_service(EchoServer::new(EchoService))
        // Set after the service was added: it applies all the same.
        .message_limits(limits)
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    Registry::from_url(&format!("static://{}={addr}", ECHO_DESCRIPTOR.name())).expect("registry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_requests_and_replies_over_its_limits() {
    let registry = server(MessageLimits { max_decoding_size: 64 * 1024, max_encoding_size: 32 * 1024 }).await;
    let mut client = EchoClient::discover(&registry).expect("client");
    client.unary(request(20_000)).await.expect("under both limits");
    // Over the decoding limit: refused before the handler runs.
    let status = client.unary(request(70_000)).await.expect_err("over the decoding limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("65536"), "{status:?}");
    // Under the decoding limit, but the echoed reply is over the encoding one.
    let status = client.unary(request(40_000)).await.expect_err("reply over the encoding limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("32768"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_applies_its_configured_limits() {
    let registry = server(MessageLimits::default()).await;
    let config = ClientConfig {
        max_decoding_size: Some(8 * 1024),
        max_encoding_size: Some(16 * 1024),
        ..ClientConfig::default()
    };
    let clients = Clients::new(registry.clone()).with_config(ECHO_DESCRIPTOR.name(), config);
    let mut client = EchoClient::discover(&clients).expect("client");
    client.unary(request(4_000)).await.expect("under both limits");
    let status = client.unary(request(12_000)).await.expect_err("the reply is over 8 KiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The encoder refuses it while the retry layer buffers the request (to
    // send it again): OUT_OF_RANGE, naming the limit and the setting.
    let status = client.unary(request(20_000)).await.expect_err("the request is over 16 KiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("the limit is: 16384 bytes"), "{status:?}");
    assert!(
        status.message().contains(&format!("`clients.\"{}\".max_encoding_size`", ECHO_DESCRIPTOR.name())),
        "{status:?}"
    );

    // By default, 4 MiB each way, sending included (tonic alone sends any size).
    let mut plain = EchoClient::discover(&registry).expect("client");
    let status = plain.unary(request(5 * 1024 * 1024)).await.expect_err("over 4 MiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("the limit is: 4194304 bytes"), "{status:?}");
}
