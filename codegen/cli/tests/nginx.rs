//! `trellis nginx` with a real Nginx on loopback in front of two real
//! `order-payment` processes: calls reach both, and once one is SIGKILLed
//! Nginx passes it over.
//!
//! Needs nginx (Debian `nginx-light`) and the workspace's service binaries
//! (`./scripts/test` builds them).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use order_payment::proto::order::payment::v1::{GetPaymentRequest, OrderPaymentClient};
use trellis::Registry;
use trellis_tests::Service;

use support::{run, text};

const SERVICE: &str = "order.payment.v1.OrderPayment";

/// `curl ARGS` through Nginx: the HTTP status and the JSON body.
async fn curl(args: &[&str]) -> (u16, serde_json::Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-m", "10", "-H", "content-type: application/json", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?} {out:?}"));
    (status.parse().unwrap_or_else(|_| panic!("no status: {text:?}")), json)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts Nginx on `prefix/nginx.conf` in the foreground, as one process
/// (so killing it leaves no worker behind); returns once it accepts connections.
async fn start_nginx(prefix: &Path, port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new("/usr/sbin/nginx")
        .args([
            "-p",
            prefix.to_str().unwrap(),
            "-c",
            "nginx.conf",
            "-e",
            "stderr",
            "-g",
            "daemon off; master_process off;",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx is installed (Debian: nginx-light)");
    let started = tokio::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nginx did not listen on {port} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// The access log's lines for the service after the first `skip`, once it
/// has `expected` of them or 5 s have passed: Nginx writes a call's line
/// when it closes the call's stream, which can be just after the client
/// has its answer.
async fn access_log(prefix: &Path, skip: usize, expected: usize) -> Vec<(String, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines = read_access_log(prefix, skip);
        if lines.len() >= expected || tokio::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The calls to the service in the access log, from the `skip`th on: (status, upstream addresses tried).
fn read_access_log(prefix: &Path, skip: usize) -> Vec<(String, Vec<String>)> {
    let log = std::fs::read_to_string(prefix.join("access.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(SERVICE))
        .skip(skip)
        .map(|line| {
            let status =
                line.split("\" ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("").to_owned();
            let upstreams = line
                .split("upstream=")
                .nth(1)
                .and_then(|rest| rest.split(" upstream_status=").next())
                .unwrap_or("")
                .split(", ")
                .map(str::to_owned)
                .collect();
            (status, upstreams)
        })
        .collect()
}

async fn call_through(client: &mut OrderPaymentClient, n: usize, tag: &str) {
    for i in 0..n {
        let request = GetPaymentRequest { order_id: format!("{tag}-{i}") };
        let err = client.get_payment(request).await.expect_err("no such payment");
        // NOT_FOUND comes from the handler: the call went through Nginx to an instance.
        assert_eq!(err.code(), trellis::Code::NotFound, "call {tag}-{i}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_spreads_calls_over_the_instances_and_passes_over_a_killed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = format!("local://{}", tmp.path().join("registry").display());
    let database = format!("payment.database={}", tmp.path().join("payments.sqlite3").display());
    let args = ["--registry", registry.as_str(), "--set", database.as_str()];
    let mut a = Service::start("order-payment", &args).await;
    let b = Service::start("order-payment", &args).await;

    let prefix = tmp.path().join("nginx");
    let port = free_port();
    let rest_port = free_port();
    let out = run(&[
        "nginx",
        "--registry",
        &registry,
        SERVICE,
        "--full",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--rest-listen",
        &format!("127.0.0.1:{rest_port}"),
        "--output",
        prefix.join("nginx.conf").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let conf = std::fs::read_to_string(prefix.join("nginx.conf")).unwrap();
    for instance in [&a, &b] {
        assert!(
            conf.contains(&format!("server {} max_fails=1 fail_timeout=10s;", instance.addr())),
            "{conf}"
        );
    }
    let _nginx = start_nginx(&prefix, port).await;

    let nginx: SocketAddr = ([127, 0, 0, 1], port).into();
    let through = Registry::from_url(&format!("static://{SERVICE}={nginx}")).unwrap();
    let mut client = OrderPaymentClient::discover(&through).unwrap();
    call_through(&mut client, 20, "before").await;
    let before = access_log(&prefix, 0, 20).await;
    assert_eq!(before.len(), 20, "every call went through nginx: {before:?}");
    for instance in [&a, &b] {
        let served = before.iter().filter(|(_, up)| up == &[instance.addr().to_string()]).count();
        assert!(served >= 5, "{} served {served} of 20 calls: {before:?}", instance.addr());
    }
    assert!(before.iter().all(|(status, _)| status == "200"), "{before:?}");

    // REST through Nginx's HTTP/1.1 listener, to the same instances.
    assert!(conf.contains("location ~ \"^/v1/payments/[^/]+$\""), "{conf}");
    assert!(conf.contains("location ~ \"^/v1/payments/[^/]+:refund$\""), "{conf}");
    let rest = format!("http://127.0.0.1:{rest_port}");
    let body =
        r#"{"orderId": "rest-1", "amountMinor": "1250", "currency": "EUR", "idempotencyKey": "k-rest-1"}"#;
    let (status, paid) = curl(&["-X", "POST", &format!("{rest}/v1/payments"), "-d", body]).await;
    assert_eq!(status, 200, "{paid}");
    assert!(paid["paymentId"].as_str().is_some_and(|id| !id.is_empty()), "{paid}");
    let (status, got) = curl(&[&format!("{rest}/v1/payments/rest-1")]).await;
    assert_eq!(
        (status, &got["paymentId"], &got["orderId"]),
        (200, &paid["paymentId"], &serde_json::json!("rest-1")),
        "{got}"
    );
    let (status, missing) = curl(&[&format!("{rest}/v1/payments/nobody")]).await;
    assert_eq!(
        (status, &missing["code"]),
        (404, &serde_json::json!(5)),
        "the handler's NOT_FOUND: {missing}"
    );

    a.signal(Signal::SIGKILL);
    a.wait(Duration::from_secs(5)).await;
    call_through(&mut client, 20, "after").await;
    let after = access_log(&prefix, 20, 20).await;
    assert_eq!(after.len(), 20, "{after:?}");
    let dead = a.addr().to_string();
    let tried_dead = after.iter().filter(|(_, up)| up.contains(&dead)).count();
    assert!(tried_dead <= 1, "after one failure the killed instance is passed over: {after:?}");
    for (status, upstreams) in &after {
        assert_eq!(status, "200", "{after:?}");
        assert_eq!(upstreams.last(), Some(&b.addr().to_string()), "the survivor answered: {after:?}");
    }
}

#[test]
fn bad_input_is_refused_with_the_fix() {
    let out = run(&["nginx", "--registry", "local://", "Greeter"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a full gRPC service name"), "{}", text(&out));
    let out = run(&["nginx", "--registry", "nope://x", "a.v1.A"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("nope"), "{}", text(&out));
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["nginx", "--registry", &format!("local://{}", tmp.path().display()), "a.v1.A"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("lists no instance of a.v1.A"), "{}", text(&out));
}

/// Polls `path` until `ok` holds for its contents.
async fn wait_for_file(path: &Path, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = tokio::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if ok(&text) {
            return text;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{what} within 15 s; the file is:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_rewrites_the_file_and_reloads_when_instances_come_and_go() {
    use trellis::testing::TestServer;
    use trellis_tests::EchoService;
    use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;

    let tmp = tempfile::tempdir().unwrap();
    let url = format!("local://{}", tmp.path().join("registry").display());
    let registry = Registry::from_url(&url).unwrap();
    let start =
        || TestServer::builder().registry(registry.clone()).add_service(EchoServer::new(EchoService)).start();
    let a = start().await.unwrap();

    let conf = tmp.path().join("nginx.conf");
    let reloads = tmp.path().join("reloads");
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["nginx", "--registry", &url, "trellis.test.echo.v1.Echo", "--watch", "--output"])
        .arg(&conf)
        .arg("--reload")
        .arg(format!("echo reloaded >> {}", reloads.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_file(&conf, "the first file", |t| t.contains(&format!("server {} ", a.addr()))).await;

    let b = start().await.unwrap();
    let text = wait_for_file(&conf, "B added", |t| t.contains(&format!("server {} ", b.addr()))).await;
    assert!(text.contains(&format!("server {} ", a.addr())), "{text}");
    wait_for_file(&reloads, "a reload after the rewrite", |t| t.lines().count() >= 1).await;

    let gone = a.addr();
    a.stop().await.unwrap();
    let text = wait_for_file(&conf, "A removed", |t| !t.contains(&format!("server {gone} "))).await;
    assert!(text.contains(&format!("server {} ", b.addr())), "{text}");
    wait_for_file(&reloads, "a second reload", |t| t.lines().count() >= 2).await;

    kill_and_wait(&mut watch).await;
}

async fn kill_and_wait(child: &mut tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "trellis nginx --watch stops cleanly on SIGTERM: {status}");
}
