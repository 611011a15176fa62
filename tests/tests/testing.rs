//! `trellis::testing`: in-process servers found through their own registry,
//! fleets, and faults injected and lifted while calls flow.

use std::time::Duration;

use trellis::testing::{Fleet, TestServer};
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::echo::v1::{ECHO_SERVICE_NAME, EchoClient, EchoRequest};

fn request(note: &str) -> EchoRequest {
    EchoRequest { note: Some(note.to_owned()), repeat: 3, ..EchoRequest::default() }
}

#[tokio::test]
async fn a_test_server_is_found_by_name_and_answers() {
    let server = TestServer::start(|s| s.add_service(EchoServer::new(EchoService))).await.unwrap();
    assert_eq!(server.services(), [ECHO_SERVICE_NAME]);
    assert!(server.registry().url().starts_with("local://"));

    let mut client = EchoClient::discover(server.registry()).unwrap();
    let reply = client.unary(request("hi")).await.unwrap().into_inner();
    assert_eq!(reply.note.as_deref(), Some("hi"));
    let mut stream = client.server_stream(request("s")).await.unwrap().into_inner();
    let mut indexes = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        indexes.push(reply.index);
    }
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(server.faults().calls(), 2);

    let registry = server.registry().clone();
    let endpoint = server.endpoint();
    server.stop().await.unwrap();
    let resolution = registry.resolve(ECHO_SERVICE_NAME).await.unwrap();
    assert!(!resolution.endpoints().contains(&endpoint), "a stopped server deregisters");
}

#[tokio::test]
async fn an_unavailable_instance_is_passed_over_until_the_fault_is_lifted() {
    let fleet = Fleet::start(3, |s, _| s.add_service(EchoServer::new(EchoService))).await.unwrap();
    let resolution = fleet.registry().resolve(ECHO_SERVICE_NAME).await.unwrap();
    assert_eq!(resolution.endpoints().len(), 3);

    fleet.instance(1).faults().set_unavailable(true);
    let mut client = EchoClient::discover(fleet.registry()).unwrap();
    for i in 0..60 {
        // Unary is NO_SIDE_EFFECTS: a failed attempt is retried on another instance.
        client.unary(request(&format!("call {i}"))).await.unwrap();
    }
    let healthy: u64 = [0, 2].iter().map(|&i| fleet.instance(i).faults().calls()).sum();
    assert!(healthy >= 60, "the healthy instances answered every call ({healthy})");

    fleet.instance(1).faults().lift();
    assert!(!fleet.instance(1).faults().is_faulty());
    let before = fleet.instance(1).faults().calls();
    let started = tokio::time::Instant::now();
    while fleet.instance(1).faults().calls() == before {
        client.unary(request("after")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(20), "the lifted instance gets calls again");
    }
}

#[tokio::test]
async fn a_dropped_call_gets_no_answer_until_its_deadline() {
    let server = TestServer::start(|s| s.add_service(EchoServer::new(EchoService))).await.unwrap();
    let mut client = EchoClient::discover(server.registry()).unwrap();
    server.faults().set_drop(true);
    let mut call = trellis::Request::new(request("lost"));
    call.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.unary(call).await.unwrap_err();
    assert_eq!(err.code(), trellis::Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    server.faults().lift();
    assert_eq!(client.unary(request("found")).await.unwrap().into_inner().note.as_deref(), Some("found"));
}

#[tokio::test(start_paused = true)]
async fn an_injected_delay_runs_on_the_paused_clock() {
    let fleet = Fleet::start(2, |s, _| s.add_service(EchoServer::new(EchoService))).await.unwrap();
    for instance in fleet.instances() {
        instance.faults().set_delay(Duration::from_secs(5));
    }
    let mut client = EchoClient::discover(fleet.registry()).unwrap();
    let wall = std::time::Instant::now();
    let clock = tokio::time::Instant::now();
    client.unary(request("slow")).await.unwrap();
    assert!(clock.elapsed() >= Duration::from_secs(5), "the call waited out the delay on Tokio's clock");
    assert!(wall.elapsed() < Duration::from_secs(4), "but not in wall time: {:?}", wall.elapsed());
}
