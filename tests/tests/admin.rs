//! The admin listener over loopback: `/healthz`, `/readyz` through a
//! server's whole life (failing from the moment shutdown starts, while the
//! gRPC port still accepts calls), the status page's JSON, and
//! `--admin-listen` on the shared command line.

use std::time::{Duration, Instant};

use trellis::Registry;
use trellis_tests::Whoami;
use trellis_tests::proto::trellis::test::nested::deep::v1::Depth;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_client::DeepClient as RawDeepClient;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::registries::free_port;
use trellis_tests::scrape::get;

/// Polls `path` until it answers `status`, for at most `within`.
async fn wait_for(admin: std::net::SocketAddr, path: &str, status: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some((got, body)) = get(admin, path).await
            && got == status
        {
            return body;
        }
        assert!(start.elapsed() < within, "{path} did not answer {status} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn call(addr: std::net::SocketAddr) -> Result<u32, String> {
    let channel = trellis::codegen::tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let reply = RawDeepClient::new(channel).dive(Depth::default()).await.map_err(|e| e.to_string())?;
    Ok(reply.into_inner().level)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_from_the_start_of_shutdown_while_calls_are_still_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("local://{}", dir.path().display());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .add_service(DeepServer::new(Whoami(7)))
        .registry(Registry::from_url(&url).expect("registry"))
        .propagation_delay(Duration::from_millis(1500))
        .drain_timeout(Duration::from_secs(2))
        .admin_listen("127.0.0.1:0".parse().unwrap())
        .shutdown_signal(async move {
            let _ = stopped.await;
        })
        .bind()
        .await
        .expect("bind");
    let (addr, admin) = (server.local_addr(), server.admin_addr().expect("admin"));

    // Bound, not yet serving: alive, not ready.
    assert_eq!(get(admin, "/healthz").await, Some((200, "ok\n".to_owned())));
    assert_eq!(get(admin, "/readyz").await, Some((503, "not ready: starting\n".to_owned())));
    let serving = tokio::spawn(server.serve());
    assert_eq!(wait_for(admin, "/readyz", 200, Duration::from_secs(10)).await, "ready\n");

    let status: serde_json::Value =
        serde_json::from_str(&wait_for(admin, "/status.json", 200, Duration::from_secs(1)).await)
            .expect("json");
    assert_eq!(status["state"], "serving", "{status}");
    assert_eq!(status["ready"], true);
    assert_eq!(status["server"]["registered"], true, "{status}");
    assert_eq!(status["server"]["registry"], url.as_str());
    assert_eq!(status["server"]["services"][0], "trellis.test.nested.deep.v1.Deep");
    assert_eq!(status["server"]["endpoint"], addr.to_string());
    let page = wait_for(admin, "/", 200, Duration::from_secs(1)).await;
    assert!(page.starts_with("<!doctype html>") && page.contains("status.json"), "{page}");
    // Nothing is loaded from elsewhere: no link, no source, no URL but the SVG namespace.
    assert!(!page.contains("<link") && !page.contains(" src=") && !page.contains("url("), "{page}");
    assert!(page.match_indices("http").all(|(at, _)| page[at..].starts_with("http://www.w3.org/2000/svg")));
    let (missing, text) = get(admin, "/nope").await.expect("answer");
    assert_eq!(missing, 404);
    assert!(text.contains("/metrics") && text.contains("/readyz"), "{text}");

    // Shutdown starts: /readyz fails at once...
    let asked = Instant::now();
    stop.send(()).expect("signal");
    let body = wait_for(admin, "/readyz", 503, Duration::from_millis(500)).await;
    let flipped = asked.elapsed();
    assert!(body.starts_with("not ready: shutting_down"), "{body}");
    // ...while the gRPC port still accepts new connections and calls.
    assert_eq!(call(addr).await, Ok(7), "a call right after /readyz failed");
    assert!(asked.elapsed() < Duration::from_millis(1500), "still inside the propagation delay");
    let status: serde_json::Value =
        serde_json::from_str(&wait_for(admin, "/status.json", 200, Duration::from_secs(1)).await)
            .expect("json");
    assert_eq!(status["server"]["registered"], false, "deregistered: {status}");
    assert_eq!(get(admin, "/healthz").await.map(|(s, _)| s), Some(200), "still alive");

    // Then it drains, stops accepting, and stops.
    wait_for(admin, "/readyz", 503, Duration::from_secs(3)).await;
    tokio::time::timeout(Duration::from_secs(6), serving)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve");
    assert!(call(addr).await.is_err(), "no longer accepting");
    assert!(flipped < Duration::from_millis(500), "/readyz flipped after {flipped:?}");
}

#[test]
fn admin_listen_on_the_command_line_serves_metrics_apart_from_the_grpc_port() {
    let port = free_port();
    let grpc = free_port();
    let args = [
        "svc",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--registry",
        "static://",
        "--admin-listen",
        &format!("127.0.0.1:{port}"),
    ]
    .map(str::to_owned);
    let app = std::thread::spawn(move || {
        trellis::App::new("svc", "3.1.4").run_with_args(args, |ctx| async move {
            ctx.server()
                .add_service(DeepServer::new(Whoami(1)))
                .shutdown_signal(tokio::time::sleep(Duration::from_secs(3)))
                .serve()
                .await?;
            Ok(())
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(admin, "/readyz", 200, Duration::from_secs(10)).await;
        let metrics = wait_for(admin, "/metrics", 200, Duration::from_secs(1)).await;
        let build = r#"trellis_build_info{service="svc",version="3.1.4",trellis_version=""#;
        assert!(metrics.contains(build), "{metrics}");
        assert_eq!(call(([127, 0, 0, 1], grpc).into()).await, Ok(1));
        let metrics = wait_for(admin, "/metrics", 200, Duration::from_secs(1)).await;
        let handled = r#"rpc_server_calls_handled_total{service="trellis.test.nested.deep.v1.Deep",method="Dive",code="OK"} 1"#;
        assert!(metrics.contains(handled), "{metrics}");
    });
    assert_eq!(app.join().expect("app thread"), std::process::ExitCode::SUCCESS);
}
