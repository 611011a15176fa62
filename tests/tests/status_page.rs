//! The status page in a real browser: headless Chromium (Debian's
//! `chromium`) loads the admin listener of an instance whose client calls a
//! 3-instance fleet with one instance failing, runs the page's script, and
//! shows the failing endpoint ejected. The screenshot is `docs/status-page.png`
//! (rewritten when `UPDATE_SCREENSHOT=1`; not a `TRELLIS_` variable,
//! which every Trellis process would read as configuration).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis::Registry;
use trellis::client::Clients;
use trellis::metrics::Metrics;
use trellis::server::FaultsConfig;
use trellis_tests::EchoService;
use trellis_tests::Whoami;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::deep_server::DeepServer;
use trellis_tests::proto::trellis::test::nested::deep::v1::{DEEP_DESCRIPTOR, DeepClient, Depth};

/// Debian's Chromium.
fn chromium_bin() -> PathBuf {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("chromium is missing: ./scripts/test installs it (Debian: apt-get install chromium)")
    })
}

/// Runs headless Chromium on `url` for `budget` of page time with `extra` arguments.
fn chromium(url: &str, profile: &Path, budget: Duration, extra: &[String]) -> std::process::Output {
    let mut child = std::process::Command::new(chromium_bin());
    child
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,760"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null());
    let output = child.output().expect("run chromium");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_fleet_with_one_endpoint_ejected() {
    // The fleet: three instances of Deep, the last one failing every call.
    let mut addrs = Vec::new();
    for (i, failing) in [false, false, true].into_iter().enumerate() {
        let faults = FaultsConfig { unavailable: failing, delay: Duration::from_millis(2 + 3 * i as u64) };
        let server = trellis::Server::builder()
            .add_service(DeepServer::new(Whoami(u16::try_from(i).unwrap())))
            .faults(faults)
            .bind()
            .await
            .expect("bind");
        addrs.push(server.local_addr().to_string());
        tokio::spawn(server.serve());
    }
    let registry = Registry::from_url(&format!("static://{}={}", DEEP_DESCRIPTOR.name(), addrs.join(",")))
        .expect("registry");

    // The instance whose page is shown: it serves Echo and calls the fleet.
    let metrics = Metrics::new("order-status", "0.1.0");
    let front = trellis::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .metrics(metrics.clone())
        .admin_listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .expect("bind");
    let admin = front.admin_addr().expect("admin");
    tokio::spawn(front.serve());
    let client = DeepClient::discover(Clients::new(registry).with_metrics(metrics.clone())).expect("client");

    // Steady traffic while the browser watches: retried away from the failing instance.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let (mut client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut calls = 0u32;
                while !stop.load(Ordering::Relaxed) && calls < 5_000 {
                    let _ = client.dive(Depth::default()).await;
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect();
    // Until the failing instance is ejected.
    let ejected = async {
        loop {
            let status = trellis_tests::scrape::get(admin, "/status.json").await.expect("status");
            if status.1.contains(r#""health":"ejected""#) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ejected).await.expect("the failing instance is ejected");
    // A few seconds of history for the charts, sampled by the admin listener.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status: serde_json::Value =
        serde_json::from_str(&trellis_tests::scrape::get(admin, "/status.json").await.expect("status").1)
            .expect("json");
    let client = &status["clients"][0];
    assert_eq!(client["instances"], 3, "every listed instance: {client}");
    assert!(client["endpoints"].as_array().is_some_and(|e| e.iter().all(|e| e["weight"] == 100)), "{client}");
    let history = &status["clients"][0]["history"][&addrs[0]];
    let rates = history["rate"].as_array().expect("rates");
    assert!(rates.len() >= 5, "{history}");
    assert!(rates.iter().skip(1).all(|r| r.as_f64().is_some_and(|r| r > 5.0)), "steady traffic: {history}");

    let url = format!("http://{admin}/");
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("profile");
    let budget = Duration::from_secs(6);
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.clone());
        move || chromium(&url, &profile, budget, &["--dump-dom".to_owned()])
    })
    .await
    .expect("task");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    // The script ran: the instance, then one row per endpoint, one of them ejected.
    assert!(dom.contains("trellis.test.echo.v1.Echo"), "{dom}");
    assert!(dom.contains("calls to <code>trellis.test.nested.deep.v1.Deep</code>"), "{dom}");
    for addr in &addrs {
        assert!(dom.contains(&format!(r#"<td class="addr">{addr}</td>"#)), "{addr} missing: {dom}");
    }
    assert_eq!(dom.matches(r#"<tr class="out">"#).count(), 1, "one endpoint out of rotation: {dom}");
    assert_eq!(dom.matches(r#"<span class="badge ejected">ejected</span>"#).count(), 1, "{dom}");
    assert_eq!(dom.matches(r#"<span class="badge ready">ready</span>"#).count(), 2, "{dom}");
    assert!(dom.contains("2/3 in rotation"), "{dom}");
    assert!(dom.matches("<polyline").count() >= 4, "a rate and a latency line per answering endpoint: {dom}");

    let shot = dir.path().join("status-page.png");
    tokio::task::spawn_blocking({
        let (url, shot) = (url.clone(), shot.clone());
        move || chromium(&url, &profile, budget, &[format!("--screenshot={}", shot.display())])
    })
    .await
    .expect("task");
    stop.store(true, Ordering::Relaxed);
    for task in traffic {
        task.await.expect("traffic");
    }
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "{} bytes", png.len());
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-page.png");
        std::fs::write(&docs, png).expect("write docs/status-page.png");
    }
}
