//! TLS and mutual TLS over real sockets, with certificates made at run time
//! (`rcgen`; nothing secret is committed): calls over TLS found through the
//! registry as `https`, client certificates required and checked, the
//! caller's identity in the handler and per-service allow-lists, clear
//! errors for each kind of bad certificate, reload without dropping open
//! streams, and a client that is not ours (Python grpcio).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tokio_stream::StreamExt;
use trellis::client::Clients;
use trellis::tls::{PeerIdentity, TlsConfig};
use trellis::{Code, Registry, Request, Response, Status, Streaming};
use trellis_tests::EchoService;
use trellis_tests::proto::trellis::test::echo::v1::echo_server::{Echo, EchoServer};
use trellis_tests::proto::trellis::test::echo::v1::{EchoClient, EchoReply, EchoRequest};
use trellis_tests::registries::Logs;

const ECHO: &str = "trellis.test.echo.v1.Echo";

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// A leaf certificate and its key (PEM) for `names`: `spiffe://` and
    /// other URIs, IP addresses, DNS names.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.subject_alt_names = names
            .iter()
            .map(|name| {
                if name.contains("://") {
                    SanType::URI((*name).try_into().expect("uri"))
                } else if let Ok(ip) = name.parse::<IpAddr>() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*name).try_into().expect("dns name"))
                }
            })
            .collect();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// Files of one test, in a directory removed at the end.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().expect("tempdir"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Writes a certificate and key as `NAME.pem` and `NAME.key`.
    fn pair(&self, name: &str, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
        (self.write(&format!("{name}.pem"), cert), self.write(&format!("{name}.key"), key))
    }

    fn registry(&self) -> Registry {
        let dir = self.0.path().join("registry");
        Registry::from_url(&format!("local://{}?poll=50ms", dir.display())).expect("registry")
    }
}

/// Echo that answers `Unary` with the caller's identity in `note`.
#[derive(Debug)]
struct Identify;

#[trellis::async_trait]
impl Echo for Identify {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let identity = PeerIdentity::of(&request).map_or_else(|| "anonymous".to_owned(), |p| p.to_string());
        Ok(Response::new(EchoReply { note: Some(identity), ..EchoReply::default() }))
    }

    type ServerStreamStream = <EchoService as Echo>::ServerStreamStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        EchoService.server_stream(request).await
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        EchoService.client_stream(request).await
    }

    type BidiStream = <EchoService as Echo>::BidiStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        EchoService.bidi(request).await
    }

    async fn ping(&self, request: Request<()>) -> Result<Response<()>, Status> {
        EchoService.ping(request).await
    }
}

/// Starts an Echo server with `tls`, registered in `registry`; stops with
/// the returned sender (or when it is dropped).
async fn serve(tls: TlsConfig, registry: &Registry) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = trellis::Server::builder()
        .tls(tls)
        .registry(registry.clone())
        .propagation_delay(Duration::ZERO)
        .drain_timeout(Duration::from_millis(200))
        .shutdown_signal(async move {
            let _ = stopped.await;
        })
        .add_service(EchoServer::new(Identify))
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve());
    (addr, stop)
}

fn server_tls(cert: &(PathBuf, PathBuf), client_ca: Option<&Path>) -> TlsConfig {
    TlsConfig {
        cert: Some(cert.0.clone()),
        key: Some(cert.1.clone()),
        client_ca: client_ca.map(Path::to_path_buf),
        ..TlsConfig::default()
    }
}

fn client_tls(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> TlsConfig {
    TlsConfig {
        ca: Some(ca.to_path_buf()),
        cert: identity.map(|i| i.0.clone()),
        key: identity.map(|i| i.1.clone()),
        ..TlsConfig::default()
    }
}

/// A client found through `registry`, reaching `https` instances with `tls`.
fn client(registry: &Registry, tls: TlsConfig) -> EchoClient {
    EchoClient::discover(Clients::new(registry.clone()).with_tls(tls)).expect("client")
}

async fn unary(client: &mut EchoClient) -> Result<String, Status> {
    let request = Request::new(EchoRequest::default());
    client.unary(request).await.map(|r| r.into_inner().note.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_instance_registers_as_https_and_is_called_without_extra_settings() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = files.pair("server", &ca.leaf(&["127.0.0.1", "spiffe://test/server"], false));
    let registry = files.registry();
    let (addr, _stop) = serve(server_tls(&server, None), &registry).await;

    // The registry entry says `https`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let entries = read_tree(&files.0.path().join("registry"));
        if entries.contains(&addr.port().to_string()) {
            assert!(entries.contains("\"https\""), "{entries}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not registered: {entries}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The client was told only where the CA is: the scheme came from the registry.
    let mut client = client(&registry, client_tls(&ca_file, None));
    assert_eq!(unary(&mut client).await.expect("TLS call"), "anonymous");
    let replies: Vec<_> = client
        .server_stream(EchoRequest { repeat: 3, ..EchoRequest::default() })
        .await
        .expect("stream")
        .into_inner()
        .collect()
        .await;
    assert_eq!(replies.len(), 3);

    // A plaintext client cannot talk to it.
    let plain = trellis::codegen::tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = health.check(tonic_health::pb::HealthCheckRequest::default()).await;
        assert!(check.is_err(), "a plaintext call to a TLS port succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_or_from_another_ca() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let other = Ca::new("other CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = files.pair("server", &ca.leaf(&["127.0.0.1"], false));
    let good = files.pair("good", &ca.leaf(&["spiffe://test/order-status", "status.internal"], false));
    let stranger = files.pair("stranger", &other.leaf(&["spiffe://test/order-status"], false));
    let registry = files.registry();
    let (_addr, _stop) = serve(server_tls(&server, Some(&ca_file)), &registry).await;

    let mut with_cert = client(&registry, client_tls(&ca_file, Some(&good)));
    let identity = unary(&mut with_cert).await.expect("mTLS call");
    assert_eq!(identity, "spiffe://test/order-status, status.internal");

    for (who, tls) in [
        ("no certificate", client_tls(&ca_file, None)),
        ("another CA", client_tls(&ca_file, Some(&stranger))),
    ] {
        let status = unary(&mut client(&registry, tls)).await.expect_err(who);
        assert_eq!(status.code(), Code::Unavailable, "{who}: {status:?}");
        assert!(
            status.message().contains("refuse")
                && status.message().contains("`tls.client_ca`")
                && status.message().contains("`tls.cert`"),
            "{who}: {}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_refuses_other_identities_with_permission_denied() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = files.pair("server", &ca.leaf(&["127.0.0.1"], false));
    let allowed = files.pair("allowed", &ca.leaf(&["spiffe://test/order-status"], false));
    let other = files.pair("other", &ca.leaf(&["spiffe://test/intruder"], false));
    let registry = files.registry();
    let mut tls = server_tls(&server, Some(&ca_file));
    tls.allow.insert(ECHO.to_owned(), vec!["spiffe://test/order-status".to_owned()]);
    let (_addr, _stop) = serve(tls, &registry).await;

    let mut ok = client(&registry, client_tls(&ca_file, Some(&allowed)));
    assert_eq!(unary(&mut ok).await.expect("allowed"), "spiffe://test/order-status");

    let status = unary(&mut client(&registry, client_tls(&ca_file, Some(&other)))).await.expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("`spiffe://test/intruder` may not call trellis.test.echo.v1.Echo"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_mismatch_and_unknown_ca_fail_calls_with_the_fix() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let other = Ca::new("other CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let other_file = files.write("other.pem", &other.pem);

    // Registered as 127.0.0.1, but the certificate names another host.
    let wrong_name = files.pair("wrong-name", &ca.leaf(&["payments.example"], false));
    let registry = files.registry();
    let (_addr, stop) = serve(server_tls(&wrong_name, None), &registry).await;
    let status = unary(&mut client(&registry, client_tls(&ca_file, None))).await.expect_err("name mismatch");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    for needle in ["name mismatch", "payments.example", "tls.server_name"] {
        assert!(status.message().contains(needle), "{needle:?} missing from {}", status.message());
    }
    // The setting that fixes it.
    let mut named = client_tls(&ca_file, None);
    named.server_name = Some("payments.example".to_owned());
    assert_eq!(unary(&mut client(&registry, named)).await.expect("with tls.server_name"), "anonymous");
    drop(stop);

    let files = Files::new();
    let server = files.pair("server", &ca.leaf(&["127.0.0.1"], false));
    let registry = files.registry();
    let (_addr, _stop) = serve(server_tls(&server, None), &registry).await;
    let status = unary(&mut client(&registry, client_tls(&other_file, None))).await.expect_err("unknown CA");
    assert!(
        status.message().contains("unknown CA") && status.message().contains("`tls.ca`"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_files_stop_the_server_with_the_file_and_the_fix() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let good = files.pair("good", &ca.leaf(&["127.0.0.1"], false));
    let expired = files.pair("expired", &ca.leaf(&["127.0.0.1"], true));
    let another = files.pair("another", &ca.leaf(&["127.0.0.1"], false));
    let not_pem = files.write("not-pem.pem", "this is not a certificate\n");
    let missing = files.0.path().join("missing.pem");

    let cases: [(&str, TlsConfig, &[&str]); 5] = [
        (
            "missing",
            server_tls(&(missing.clone(), good.1.clone()), None),
            &["`tls.cert`", "missing.pem", "does not exist"],
        ),
        (
            "not PEM",
            server_tls(&(not_pem, good.1.clone()), None),
            &["`tls.cert`", "not-pem.pem", "holds no PEM certificate", "openssl x509"],
        ),
        ("expired", server_tls(&expired, None), &["`tls.cert`", "expired.pem", "expired on", "renew it"]),
        (
            "wrong key",
            server_tls(&(good.0.clone(), another.1.clone()), None),
            &["`tls.key`", "another.key", "good.pem", "wrong key"],
        ),
        (
            "client CA missing",
            server_tls(&good, Some(&missing)),
            &["`tls.client_ca`", "missing.pem", "does not exist"],
        ),
    ];
    for (case, tls, needles) in cases {
        let err = trellis::Server::builder().tls(tls).bind().await.expect_err(case).to_string();
        for needle in needles {
            assert!(err.contains(needle), "{case}: {needle:?} missing from {err}");
        }
    }
    // Half a pair is refused before any file is read.
    let half = TlsConfig { cert: Some(good.0.clone()), ..TlsConfig::default() };
    let err = trellis::Server::builder().tls(half).bind().await.expect_err("half").to_string();
    assert!(err.contains("`tls.key` is missing"), "{err}");
}

#[tokio::test]
async fn a_new_pair_is_picked_up_without_dropping_open_streams_and_a_bad_one_is_refused() {
    let (logs, _guard) = Logs::capture();
    let files = Files::new();
    let first = Ca::new("first CA");
    let second = Ca::new("second CA");
    let first_file = files.write("first.pem", &first.pem);
    let second_file = files.write("second.pem", &second.pem);
    let served = files.pair("server", &first.leaf(&["127.0.0.1"], false));
    let registry = files.registry();
    let mut tls = server_tls(&served, None);
    tls.reload_interval = Duration::from_millis(100);
    let (_addr, _stop) = serve(tls, &registry).await;

    // A stream opened on the first certificate.
    let mut old = client(&registry, client_tls(&first_file, None));
    let (requests, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    requests.send(EchoRequest::default()).await.expect("send");
    let mut replies =
        old.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("bidi").into_inner();
    assert_eq!(replies.next().await.expect("a reply").expect("ok").index, 0);

    // Rotate to a certificate from the second CA.
    files.pair("server", &second.leaf(&["127.0.0.1"], false));
    wait_for(&logs, "TLS certificate and key reloaded", 0).await;
    let mut fresh = client(&registry, client_tls(&second_file, None));
    assert_eq!(unary(&mut fresh).await.expect("new connection, new certificate"), "anonymous");
    let status = unary(&mut client(&registry, client_tls(&first_file, None))).await.expect_err("old CA");
    assert!(status.message().contains("unknown CA"), "{}", status.message());

    // The stream opened before the swap still works.
    requests.send(EchoRequest::default()).await.expect("send");
    assert_eq!(replies.next().await.expect("a reply after the swap").expect("ok").index, 1);

    // A key that is not the certificate's: refused, and the pair in use kept.
    let (cert, _) = second.leaf(&["127.0.0.1"], false);
    let (_, other_key) = second.leaf(&["127.0.0.1"], false);
    // (A pair caught half-written during the rotation may have been refused already.)
    let refused = logs.count("does not match the certificate");
    files.write("server.pem", &cert);
    files.write("server.key", &other_key);
    wait_for(&logs, "does not match the certificate", refused).await;
    assert!(logs.text().contains("keeping the certificate and key in use"), "{}", logs.text());
    let mut after = client(&registry, client_tls(&second_file, None));
    assert_eq!(unary(&mut after).await.expect("the kept pair serves"), "anonymous");
    requests.send(EchoRequest::default()).await.expect("send");
    assert_eq!(replies.next().await.expect("a reply").expect("ok").index, 2);
}

/// The text of every file under `dir`.
fn read_tree(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else { return String::new() };
    let mut text = String::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&read_tree(&path));
        } else if let Ok(file) = std::fs::read_to_string(&path) {
            text.push_str(&file);
        }
    }
    text
}

/// Waits until `needle` has been logged more than `seen` times.
async fn wait_for(logs: &Logs, needle: &str, seen: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while logs.count(needle) <= seen {
        assert!(tokio::time::Instant::now() < deadline, "no {needle:?} in the logs: {}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_handshake_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let files = Files::new();
    let ca = Ca::new("test CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = files.pair("server", &ca.leaf(&["127.0.0.1"], false));
    let registry = files.registry();
    let mut tls = server_tls(&server, None);
    tls.handshake_timeout = Duration::from_millis(300);
    let (addr, _stop) = serve(tls, &registry).await;

    // Connected, and never says hello.
    let started = tokio::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the stalled connection was not closed: {read:?}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "closed after {took:?}");
    // Meanwhile, and after, others are served.
    assert_eq!(unary(&mut client(&registry, client_tls(&ca_file, None))).await.expect("call"), "anonymous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_max_handshakes_are_closed_at_once_and_service_resumes() {
    use tokio::io::AsyncReadExt;
    let files = Files::new();
    let ca = Ca::new("test CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = files.pair("server", &ca.leaf(&["127.0.0.1"], false));
    let registry = files.registry();
    let mut tls = server_tls(&server, None);
    tls.handshake_timeout = Duration::from_secs(2);
    tls.max_handshakes = 3;
    let (addr, _stop) = serve(tls, &registry).await;

    // Three connections that never say hello hold every handshake permit.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next ones are closed at once, long before the handshake timeout.
    for _ in 0..5 {
        let started = tokio::time::Instant::now();
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a connection past the cap was kept: {read:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
    }
    // Once the stalled ones time out, their permits return and calls are served.
    for mut conn in stalled {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a stalled connection was kept: {read:?}");
    }
    assert_eq!(unary(&mut client(&registry, client_tls(&ca_file, None))).await.expect("call"), "anonymous");
}

/// Calls `grpc.health.v1.Health/Check` with Python's grpcio (its own TLS
/// stack, BoringSSL) and prints `OK <status>` or `ERROR <code> <details>`.
const GRPCIO_CLIENT: &str = r#"
import sys, grpc
port, ca, cert, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
read = lambda p: open(p, "rb").read() if p else None
creds = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
channel = grpc.secure_channel("127.0.0.1:" + port, creds, options=[("grpc.ssl_target_name_override", "localhost")])
check = channel.unary_unary("/grpc.health.v1.Health/Check")
try:
    reply = check(b"", timeout=10)
    print("OK", reply.hex())
except grpc.RpcError as e:
    print("ERROR", e.code().name, e.details())
"#;

fn grpcio(port: u16, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> String {
    let (cert, key) = identity
        .map_or((String::new(), String::new()), |(c, k)| (c.display().to_string(), k.display().to_string()));
    let out = std::process::Command::new("python3")
        .args(["-c", GRPCIO_CLIENT, &port.to_string(), &ca.display().to_string(), &cert, &key])
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the grpcio client failed (is grpcio installed? ./scripts/test installs it): {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_over_mutual_tls_and_is_refused_without_a_certificate() {
    let files = Files::new();
    let ca = Ca::new("test CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = files.pair("server", &ca.leaf(&["localhost", "127.0.0.1"], false));
    let python = files.pair("python", &ca.leaf(&["spiffe://test/python"], false));
    let (addr, _stop) = serve(server_tls(&server, Some(&ca_file)), &files.registry()).await;

    let port = addr.port();
    let (ok, refused) = tokio::task::spawn_blocking({
        let ca_file = ca_file.clone();
        move || (grpcio(port, &ca_file, Some(&python)), grpcio(port, &ca_file, None))
    })
    .await
    .expect("python");
    // SERVING is field 1 = 1: bytes 08 01.
    assert_eq!(ok, "OK 0801");
    assert!(refused.starts_with("ERROR UNAVAILABLE"), "{refused}");
}

/// A `[tls]` section for a service process: its own identity, mutual TLS
/// with the test CA, and `allow` lines for its own services.
fn tls_section(files: &Files, name: &str, ca: &Ca, ca_file: &Path, allow: &str) -> PathBuf {
    let (cert, key) = files.pair(name, &ca.leaf(&["127.0.0.1", &format!("spiffe://test/{name}")], false));
    let toml = format!(
        "[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca_file:?}\nca = {ca_file:?}\n{allow}",
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        ca_file = ca_file.display().to_string(),
    );
    files.write(&format!("{name}.toml"), &toml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_services_call_each_other_over_mutual_tls_from_their_config() {
    use order_payment::proto::order::payment::v1::{OrderPaymentClient, PayRequest};
    use order_status::proto::order::status::v1::{GetStatusRequest, OrderState, OrderStatusClient};
    use trellis_tests::Service;

    let files = Files::new();
    let ca = Ca::new("mesh CA");
    let ca_file = files.write("ca.pem", &ca.pem);
    let url = format!("local://{}", files.0.path().join("registry").display());
    // Payment takes calls from order-status and the test only.
    let payment_config = tls_section(
        &files,
        "order-payment",
        &ca,
        &ca_file,
        "[tls.allow]\n\"order.payment.v1.OrderPayment\" = [\"spiffe://test/order-status\", \"spiffe://test/tester\"]\n",
    );
    let shipping_config = tls_section(&files, "order-shipping", &ca, &ca_file, "");
    let status_config = tls_section(&files, "order-status", &ca, &ca_file, "");
    let db = |name: &str, file: &str| format!("{name}.database={}", files.0.path().join(file).display());
    let config = |path: &PathBuf| path.display().to_string();
    let _payment = Service::start(
        "order-payment",
        &["--registry", &url, "--config", &config(&payment_config), "--set", &db("payment", "p.sqlite3")],
    )
    .await;
    let _shipping = Service::start(
        "order-shipping",
        &["--registry", &url, "--config", &config(&shipping_config), "--set", &db("shipping", "s.sqlite3")],
    )
    .await;
    // order-status serves REST on a port of its own, over the same mutual TLS.
    let status_service = Service::start(
        "order-status",
        &["--registry", &url, "--config", &config(&status_config), "--rest-listen", "127.0.0.1:0"],
    )
    .await;

    let registry = Registry::from_url(&url).expect("registry");
    let tester = files.pair("tester", &ca.leaf(&["spiffe://test/tester"], false));
    let clients = Clients::new(registry.clone()).with_tls(client_tls(&ca_file, Some(&tester)));
    let mut payment = OrderPaymentClient::discover(&clients).expect("payment client");
    let mut status = OrderStatusClient::discover(&clients).expect("status client");
    let pay = PayRequest {
        order_id: "o-1".to_owned(),
        amount_minor: 100,
        currency: "USD".to_owned(),
        idempotency_key: "o-1-pay".to_owned(),
    };
    payment.pay(pay.clone()).await.expect("pay over mutual TLS");
    // order-status calls payment and shipping over mutual TLS, as itself.
    let report = status.get_status(GetStatusRequest { order_id: "o-1".to_owned() }).await.expect("status");
    assert_eq!(report.into_inner().state(), OrderState::Paid);

    // curl, with its own TLS stack, reads the same status over REST with the
    // tester's certificate, and is refused without one.
    let rest = status_service.rest_addr().expect("order-status has a REST listener");
    let url = format!("https://{rest}/v1/orders/o-1/status");
    let curl = |identity: bool| {
        let mut command = std::process::Command::new("curl");
        command.args(["-s", "--max-time", "10", "--cacert"]).arg(&ca_file);
        if identity {
            command.arg("--cert").arg(&tester.0).arg("--key").arg(&tester.1);
        }
        command.arg(&url).output().expect("curl runs (apt-get install curl)")
    };
    let got = curl(true);
    let body = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.status.success() && body.contains("\"ORDER_STATE_PAID\""),
        "REST over mutual TLS: {body} {got:?}"
    );
    let refused = curl(false);
    assert!(!refused.status.success(), "REST without a client certificate succeeded: {refused:?}");

    // Another identity of the same CA is not on payment's list.
    let intruder = files.pair("intruder", &ca.leaf(&["spiffe://test/intruder"], false));
    let clients = Clients::new(registry).with_tls(client_tls(&ca_file, Some(&intruder)));
    let denied = OrderPaymentClient::discover(&clients).expect("client").pay(pay).await.expect_err("denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("spiffe://test/intruder"), "{}", denied.message());
}
