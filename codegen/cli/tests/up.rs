//! `trellis up` on this workspace: it finds the service binaries (the order
//! services and the bench's echo service), runs two instances of each on one
//! registry with prefixed logs, every instance is SERVING, and SIGINT drains
//! and stops them all.
//!
//! Needs the workspace's service binaries (`./scripts/test` builds them).

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis::Registry;

use support::{run, text};

const SERVICES: [&str; 3] =
    ["order.payment.v1.OrderPayment", "order.shipping.v1.OrderShipping", "order.status.v1.OrderStatus"];

#[tokio::test(flavor = "multi_thread")]
async fn up_runs_every_service_of_the_workspace_and_sigint_drains_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("local://{}", tmp.path().join("registry").display());
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args([
            "up",
            support::workspace().to_str().unwrap(),
            "--no-build",
            "--instances",
            "2",
            "--registry",
            &url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        Box::pin(up.stdout.take().unwrap()) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
        Box::pin(up.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            let done = line.contains("instance(s) SERVING");
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("trellis up exited early:\n{}", seen.join("\n"));
    })
    .await;
    assert!(ready.is_ok(), "not SERVING within 60 s:\n{}", seen.join("\n"));
    let output = seen.join("\n");
    // Two each of the three order services, of the bench's echo service and
    // of the tests' (which the attack tests flood).
    assert!(output.contains("trellis up: 10 of 10 instance(s) SERVING"), "{output}");
    for label in [
        "order-payment-1",
        "order-payment-2",
        "order-shipping-2",
        "order-status-2",
        "bench-echo-1",
        "echo-service-2",
    ] {
        assert!(
            output.lines().any(|l| l.starts_with(label) && l.contains("| ")),
            "{label}'s logs are prefixed:\n{output}"
        );
    }
    assert!(!output.contains("order-demo-1"), "the demo driver is not a service:\n{output}");

    // Independently: the registry lists two instances of each service, and each says SERVING.
    let registry = Registry::from_url(&url).unwrap();
    for service in SERVICES {
        let endpoints = registry.resolve(service).await.unwrap().endpoints();
        assert_eq!(endpoints.len(), 2, "{service}: {endpoints:?}");
        for endpoint in endpoints {
            let channel = trellis::codegen::tonic::transport::Endpoint::from_shared(endpoint.uri())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest { service: service.to_owned() })
                .await
                .unwrap();
            assert_eq!(reply.into_inner().status(), ServingStatus::Serving, "{service} at {endpoint}");
        }
    }

    // Ctrl-C: every instance drains and exits, and up exits cleanly.
    kill(Pid::from_raw(i32::try_from(up.id().unwrap()).unwrap()), Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(40), up.wait()).await.expect("up exits").unwrap();
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    let output = seen.join("\n");
    assert!(status.success(), "{status}:\n{output}");
    let stopped: BTreeSet<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("trellis up: ")?.strip_suffix(" stopped cleanly"))
        .collect();
    assert_eq!(stopped.len(), 10, "every instance stopped cleanly:\n{output}");
    assert!(output.contains("draining in-flight calls"), "they drained:\n{output}");
    for service in SERVICES {
        let endpoints = registry.resolve(service).await.unwrap().endpoints();
        assert!(endpoints.is_empty(), "{service} deregistered: {endpoints:?}");
    }
}

#[test]
fn up_outside_a_workspace_or_without_services_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["up", tmp.path().to_str().unwrap(), "--no-build"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("is not in a Cargo workspace"), "{}", text(&out));
    let out = run(&["up", support::workspace().to_str().unwrap(), "--no-build", "--package", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--package nope: no such package"), "{}", text(&out));
}
