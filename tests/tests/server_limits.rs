//! Server protection over real sockets: an overloaded instance sheds calls
//! at once with RESOURCE_EXHAUSTED and a pushback hint, and keeps answering
//! its health checks.

use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis::{Code, Registry, Request, Response, Status};
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::{Deep, DeepServer};
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};

#[derive(Debug)]
struct Slow;

#[trellis::async_trait]
impl Deep for Slow {
    async fn dive(&self, request: Request<Depth>) -> Result<Response<Depth>, Status> {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(Response::new(request.into_inner()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_calls_are_shed_at_once_and_health_still_answers() {
    let server = trellis::Server::builder()
        .add_service(DeepServer::new(Slow))
        .max_concurrent_calls(2)
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    let registry =
        Registry::from_url(&format!("static://{}={addr}", DEEP_DESCRIPTOR.name())).expect("registry");
    let client = DeepClient::discover(&registry).expect("client");

    let start = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|level| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let result = client.dive(Depth { level, inner: None }).await;
                (result, start.elapsed())
            })
        })
        .collect();
    // While two calls hold both slots, health is still answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channel = trellis::codegen::tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    assert_eq!(health.expect("health answers").into_inner().status(), ServingStatus::Serving);

    let (mut served, mut shed) = (0, 0);
    for call in calls {
        let (result, took) = call.await.expect("task");
        match result {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("max_concurrent_calls"), "{}", status.message());
                assert_eq!(
                    status.metadata().get("grpc-retry-pushback-ms").map(|v| v.to_str().unwrap()),
                    Some("100")
                );
                assert!(took < Duration::from_millis(400), "shed after {took:?}, not at once");
                shed += 1;
            }
        }
    }
    assert_eq!((served, shed), (2, 4));
}
