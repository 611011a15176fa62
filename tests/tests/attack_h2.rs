//! Hostile HTTP/2 against a real service process (`echo-service`, default
//! limits unless a test says otherwise), over loopback, while a well-behaved
//! Trellis client keeps calling it on its own connection. Each test asserts
//! that every well-behaved call succeeded in time, that the server's memory
//! stayed bounded (`/proc/PID/status`), and that the attacker was cut off:
//! GOAWAY, a reset stream or a closed socket.
//!
//! The frames are crafted with the `h2` crate where it sends them, and with
//! the raw writer in `trellis_tests::h2raw` where it refuses to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Mutex;
use trellis::{Code, Registry};
use trellis_tests::Service;
use trellis_tests::h2raw::{self, Closed, RawConn, flag, kind, reason, setting};
use trellis_tests::proto::trellis::test::echo::v1::{ECHO_DESCRIPTOR, EchoClient, EchoRequest};

const UNARY: &str = "/trellis.test.echo.v1.Echo/Unary";

/// The floods run one at a time: they share two cores with the caller.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How much a flood may grow the server's peak memory.
const MEMORY_BUDGET_KIB: u64 = 64 * 1024;

/// The slowest a well-behaved call may be while the server is attacked.
const CALL_BUDGET: Duration = Duration::from_secs(3);

/// An `echo-service` process and a well-behaved client calling it.
struct Target {
    service: Service,
    _dir: tempfile::TempDir,
    baseline_kib: u64,
    stop: Arc<AtomicBool>,
    caller: tokio::task::JoinHandle<Calls>,
}

#[derive(Debug, Default)]
struct Calls {
    ok: u64,
    failed: Vec<String>,
    slowest: Duration,
}

impl Target {
    async fn start(settings: &[&str]) -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("local://{}", dir.path().display());
        let mut args = vec!["--registry", url.as_str()];
        for setting in settings {
            args.extend(["--set", setting]);
        }
        let service = Service::start("echo-service", &args).await;
        let registry = Registry::from_url(&format!("static://{}={}", ECHO_DESCRIPTOR.name(), service.addr()))
            .expect("registry");
        let mut client = EchoClient::discover(&registry).expect("client");
        // Warm up: the first call connects.
        client.unary(request("warm-up")).await.expect("the server answers before the attack");
        let (baseline_kib, _) = h2raw::memory_kib(service.pid());
        let stop = Arc::new(AtomicBool::new(false));
        let caller = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut calls = Calls::default();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match client.unary(request("well-behaved")).await {
                        Ok(reply) if reply.get_ref().note.as_deref() == Some("well-behaved") => calls.ok += 1,
                        Ok(reply) => calls.failed.push(format!("wrong reply {reply:?}")),
                        Err(status) => calls.failed.push(format!("{status:?}")),
                    }
                    calls.slowest = calls.slowest.max(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                calls
            }
        });
        Target { service, _dir: dir, baseline_kib, stop, caller }
    }

    fn addr(&self) -> SocketAddr {
        self.service.addr()
    }

    /// Stops the caller and checks what every attack test promises: every
    /// well-behaved call succeeded in time and memory stayed bounded.
    async fn finish(self, attack: &str) {
        // Let the caller run on a little after the attack.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, Ordering::Relaxed);
        let addr = self.addr();
        let calls = self.caller.await.expect("caller task");
        let (rss, peak) = h2raw::memory_kib(self.service.pid());
        eprintln!(
            "{attack}: {} well-behaved calls ok, slowest {:?}; RSS {} KiB -> {rss} KiB, peak {peak} KiB",
            calls.ok, calls.slowest, self.baseline_kib
        );
        assert!(calls.failed.is_empty(), "{attack}: well-behaved calls failed: {:?}", calls.failed);
        assert!(calls.ok >= 5, "{attack}: only {} well-behaved calls ran", calls.ok);
        assert!(calls.slowest < CALL_BUDGET, "{attack}: a well-behaved call took {:?}", calls.slowest);
        assert!(
            peak < self.baseline_kib + MEMORY_BUDGET_KIB,
            "{attack}: peak memory {peak} KiB, baseline {} KiB",
            self.baseline_kib
        );
        // The server still answers a new client.
        let registry =
            Registry::from_url(&format!("static://{}={addr}", ECHO_DESCRIPTOR.name())).expect("registry");
        let mut fresh = EchoClient::discover(&registry).expect("client");
        fresh.unary(request("after")).await.expect("a new client is served after the attack");
    }
}

fn request(note: &str) -> EchoRequest {
    EchoRequest { note: Some(note.to_owned()), ..EchoRequest::default() }
}

/// Writes `batches` of frames (until one returns `None`) as fast as the
/// server reads them, then waits up to `wait` for the server to end the
/// connection. Returns how it ended (`None`: still open) and the frames
/// seen, by type.
async fn flood(
    conn: &mut RawConn,
    mut batch: impl FnMut(usize) -> Option<Vec<u8>>,
    wait: Duration,
) -> (Option<Closed>, FrameCounts) {
    let mut seen = FrameCounts::default();
    for i in 0.. {
        let Some(bytes) = batch(i) else { break };
        match tokio::time::timeout(Duration::from_secs(2), conn.send_raw(&bytes)).await {
            Ok(Ok(())) => {}
            // Broken pipe or reset: the server closed it.
            Ok(Err(_)) => {
                return (
                    conn.closed(Duration::from_secs(1), |f| seen.add(f)).await.or(Some(Closed::Eof)),
                    seen,
                );
            }
            // The server stopped reading; see whether it is closing.
            Err(_) => break,
        }
        if let Some(closed) = conn.closed(Duration::from_millis(1), |f| seen.add(f)).await {
            return (Some(closed), seen);
        }
    }
    (conn.closed(wait, |f| seen.add(f)).await, seen)
}

#[derive(Debug, Default)]
struct FrameCounts {
    rst_stream: u64,
    headers: u64,
}

impl FrameCounts {
    fn add(&mut self, frame: &h2raw::Frame) {
        match frame.kind {
            kind::RST_STREAM => self.rst_stream += 1,
            kind::HEADERS => self.headers += 1,
            _ => {}
        }
    }
}

/// HEADERS for a request on `stream`, with `flags`.
fn headers(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
    h2raw::frame(kind::HEADERS, flags, stream, block)
}

fn stream_id(i: usize) -> u32 {
    u32::try_from(i * 2 + 1).expect("stream id fits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_advertises_its_limits_and_tonic_alone_does_not() {
    let _serial = SERIAL.lock().await;
    // tonic 0.14's defaults, as a plain tonic server serves them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain = listener.local_addr().expect("addr");
    let incoming = trellis::codegen::tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        trellis::codegen::tonic::transport::Server::builder()
            .add_service(trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer::new(
                trellis_tests::EchoService,
            ))
            .serve_with_incoming(incoming),
    );
    let (_conn, settings) = RawConn::handshake(plain).await.expect("handshake with tonic");
    let settings = settings.settings();
    assert!(
        !settings.iter().any(|(id, _)| *id == setting::MAX_CONCURRENT_STREAMS),
        "tonic alone now advertises a stream limit: {settings:?}"
    );

    let target = Target::start(&[]).await;
    let (_conn, settings) = RawConn::handshake(target.addr()).await.expect("handshake");
    let settings = settings.settings();
    eprintln!("trellis SETTINGS: {settings:?}");
    for expected in [
        (setting::MAX_CONCURRENT_STREAMS, 100),
        (setting::MAX_HEADER_LIST_SIZE, 16 * 1024),
        (setting::INITIAL_WINDOW_SIZE, 1024 * 1024),
    ] {
        assert!(settings.contains(&expected), "{expected:?} not in {settings:?}");
    }
    target.finish("settings").await;
}

/// tonic alone keeps resetting streams for a client that breaks the protocol
/// on purpose, forever (`max_local_error_reset_streams(None)`); Trellis
/// closes the connection after `server.http2.max_local_error_reset_streams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_is_cut_off_with_goaway_where_tonic_alone_keeps_resetting() {
    let _serial = SERIAL.lock().await;
    // A connection-specific header field makes a request malformed (RFC
    // 9113 §8.2.2): the server must reset the stream.
    let malformed = h2raw::header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", UNARY),
        ("content-type", "application/grpc"),
        ("connection", "keep-alive"),
    ]);
    let streams = 1500;
    let batch = |i: usize| {
        (i < streams / 100).then(|| {
            (0..100)
                .flat_map(|j| {
                    headers(stream_id(i * 100 + j), &malformed, flag::END_HEADERS | flag::END_STREAM)
                })
                .collect()
        })
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain = listener.local_addr().expect("addr");
    let incoming = trellis::codegen::tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        trellis::codegen::tonic::transport::Server::builder()
            .add_service(trellis_tests::proto::trellis::test::echo::v1::echo_server::EchoServer::new(
                trellis_tests::EchoService,
            ))
            .serve_with_incoming(incoming),
    );
    let (mut conn, _) = RawConn::handshake(plain).await.expect("handshake with tonic");
    let (closed, seen) = flood(&mut conn, batch, Duration::from_secs(2)).await;
    eprintln!("tonic alone: {closed:?}, {seen:?}");
    assert_eq!(closed, None, "tonic alone closed the connection: {seen:?}");
    assert!(seen.rst_stream >= 1100, "tonic alone reset only {} streams", seen.rst_stream);

    let target = Target::start(&[]).await;
    let (mut conn, _) = RawConn::handshake(target.addr()).await.expect("handshake");
    let (closed, seen) = flood(&mut conn, batch, Duration::from_secs(5)).await;
    eprintln!("trellis: {closed:?}, {seen:?}");
    assert_eq!(closed, Some(Closed::GoAway(reason::ENHANCE_YOUR_CALM)), "{seen:?}");
    assert!(seen.rst_stream <= 1024, "{} streams reset before GOAWAY", seen.rst_stream);
    target.finish("reset flood").await;
}

/// CVE-2023-44487: streams opened and cancelled at once, in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_goaway() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&[]).await;
    let (mut conn, _) = RawConn::handshake(target.addr()).await.expect("handshake");
    let request = h2raw::grpc_request(UNARY);
    let cancel = reason::CANCEL.to_be_bytes();
    let started = Instant::now();
    let (closed, seen) = flood(
        &mut conn,
        |i| {
            (i < 200).then(|| {
                let mut bytes = Vec::new();
                for j in 0..100 {
                    let id = stream_id(i * 100 + j);
                    bytes.extend(headers(id, &request, flag::END_HEADERS));
                    bytes.extend(h2raw::frame(kind::RST_STREAM, 0, id, &cancel));
                }
                bytes
            })
        },
        Duration::from_secs(5),
    )
    .await;
    eprintln!("rapid reset: {closed:?} after {:?}, {seen:?}", started.elapsed());
    assert_eq!(closed, Some(Closed::GoAway(reason::ENHANCE_YOUR_CALM)), "{seen:?}");
    target.finish("rapid reset").await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then
/// CONTINUATION after CONTINUATION (the 2024 CONTINUATION flood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&[]).await;
    let (mut conn, _) = RawConn::handshake(target.addr()).await.expect("handshake");
    let value = "v".repeat(1000);
    let (closed, seen) = flood(
        &mut conn,
        |i| {
            (i < 4000).then(|| {
                let filler = h2raw::header_block(&[(&format!("x-flood-{i}"), &value)]);
                if i == 0 {
                    let mut block = h2raw::grpc_request(UNARY);
                    block.extend(filler);
                    headers(1, &block, 0)
                } else {
                    h2raw::frame(kind::CONTINUATION, 0, 1, &filler)
                }
            })
        },
        Duration::from_secs(5),
    )
    .await;
    eprintln!("continuation flood: {closed:?}, {seen:?}");
    assert!(closed.is_some(), "the server kept reading an endless header block");
    target.finish("continuation flood").await;
}

/// One request whose header list is over `server.http2.max_header_list_size`
/// is refused; the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_refused() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&[]).await;
    let (mut conn, _) = RawConn::handshake(target.addr()).await.expect("handshake");
    let big = "b".repeat(8000);
    let mut block = h2raw::grpc_request(UNARY);
    for i in 0..4 {
        block.extend(h2raw::header_block(&[(&format!("x-big-{i}"), &big)]));
    }
    // In frames under SETTINGS_MAX_FRAME_SIZE: HEADERS, then CONTINUATION.
    let mut chunks = block.chunks(16_000).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let end = if chunks.peek().is_none() { flag::END_HEADERS } else { 0 };
        let frame = if first {
            headers(1, chunk, end | flag::END_STREAM)
        } else {
            h2raw::frame(kind::CONTINUATION, end, 1, chunk)
        };
        first = false;
        conn.send_raw(&frame).await.expect("send");
    }
    let mut answer = None;
    while let Ok(Some(frame)) = conn.next_frame(Duration::from_secs(5)).await {
        if frame.stream == 1 && matches!(frame.kind, kind::HEADERS | kind::RST_STREAM) {
            answer = Some(frame);
            break;
        }
        assert_ne!(frame.kind, kind::GOAWAY, "one oversized request closed the connection: {frame:?}");
    }
    let answer = answer.expect("no answer to the oversized request");
    eprintln!("oversized header list: {answer:?}");
    // The same connection still serves a normal request.
    conn.send_raw(&headers(3, &h2raw::grpc_request(UNARY), flag::END_HEADERS)).await.expect("send");
    conn.send(kind::DATA, flag::END_STREAM, 3, &h2raw::grpc_message(0, &[])).await.expect("send");
    let mut served = false;
    while let Ok(Some(frame)) = conn.next_frame(Duration::from_secs(5)).await {
        if frame.stream == 3 && frame.kind == kind::HEADERS {
            served = true;
            break;
        }
    }
    assert!(served, "the connection stopped serving after one oversized request");
    target.finish("oversized header list").await;
}

/// A gRPC request through the `h2` crate: `prefix_len` claimed, `body` sent,
/// then END_STREAM if `end`. Returns the `grpc-status` and how long it took.
async fn h2_grpc_call(addr: SocketAddr, claimed: u32, body: &[u8], end: bool) -> (String, Duration) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!("http://{addr}{UNARY}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let started = Instant::now();
    let (response, mut send) = client.send_request(request, false).expect("send request");
    send.send_data(Bytes::from(h2raw::grpc_message(claimed, body)), end).expect("send data");
    let response =
        tokio::time::timeout(Duration::from_secs(5), response).await.expect("answered").expect("response");
    let status =
        |headers: &http::HeaderMap| headers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    if let Some(code) = status(response.headers()) {
        return (code, started.elapsed());
    }
    let mut body = response.into_body();
    while let Some(chunk) =
        tokio::time::timeout(Duration::from_secs(5), body.data()).await.expect("body in time")
    {
        chunk.expect("chunk");
    }
    let trailers = tokio::time::timeout(Duration::from_secs(5), body.trailers())
        .await
        .expect("trailers in time")
        .expect("trailers")
        .expect("trailers present");
    (status(&trailers).expect("grpc-status in trailers"), started.elapsed())
}

/// A message over `server.messages.max_decoding_size` is refused with
/// RESOURCE_EXHAUSTED, whether the well-behaved client sends it or a length
/// prefix claims 1 GiB and nothing follows; a prefix that claims more than
/// the stream holds fails the call, not the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_limit_and_lying_prefixes_are_refused() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&["server.messages.max_decoding_size=65536"]).await;

    let registry = Registry::from_url(&format!("static://{}={}", ECHO_DESCRIPTOR.name(), target.addr()))
        .expect("registry");
    let mut client = EchoClient::discover(&registry).expect("client");
    // tonic's decoder answers OUT_OF_RANGE, naming the size and the limit.
    let status = client.unary(request(&"x".repeat(100_000))).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("the limit is: 65536 bytes"), "{status:?}");
    client.unary(request(&"x".repeat(60_000))).await.expect("under the limit");

    // 1 GiB claimed, 10 bytes sent, the stream left open: refused at once,
    // without waiting for (or buffering) the rest.
    let (code, took) = h2_grpc_call(target.addr(), 1 << 30, &[0; 10], false).await;
    assert_eq!(code, (Code::OutOfRange as i32).to_string());
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    // 1000 claimed, 10 sent, then END_STREAM: the call fails.
    let (code, _) = h2_grpc_call(target.addr(), 1000, &[0; 10], true).await;
    assert_ne!(code, "0", "a truncated message was accepted");
    target.finish("message limits").await;
}

/// Many connections that send nothing, and a slow-loris client that never
/// finishes its headers, are closed by `server.http2.idle_timeout` and the
/// keepalive; a live connection that only answers pings is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_loris_are_closed_and_live_ones_kept() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&[
        "server.http2.idle_timeout=3s",
        "server.http2.keepalive_interval=1s",
        "server.http2.keepalive_timeout=1s",
    ])
    .await;
    let addr = target.addr();

    // A live h2 connection: its library answers the server's pings.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (live, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let live_alive = tokio::spawn(connection);

    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(RawConn::connect(addr).await.expect("connect"));
    }
    // Slow loris: a request whose header block never ends.
    let (mut loris, _) = RawConn::handshake(addr).await.expect("handshake");
    loris.send_raw(&headers(1, &h2raw::grpc_request(UNARY), 0)).await.expect("send");
    // A slower loris: a frame dribbled a byte at a time, never complete.
    let (mut dribble, _) = RawConn::handshake(addr).await.expect("handshake");
    let dribbling = tokio::spawn(async move {
        let frame = headers(1, &h2raw::grpc_request(UNARY), flag::END_HEADERS);
        for byte in frame.iter().take(frame.len() - 1) {
            if dribble.send_raw(&[*byte]).await.is_err() {
                return Some(Closed::Eof);
            }
            if let Some(closed) = dribble.closed(Duration::from_millis(300), |_| {}).await {
                return Some(closed);
            }
        }
        None
    });

    let closed =
        futures_like_join(silent.iter_mut().map(|c| c.closed(Duration::from_secs(10), |_| {}))).await;
    let took = started.elapsed();
    assert!(closed.iter().all(Option::is_some), "some silent connections are still open after {took:?}");
    assert!(took < Duration::from_secs(8), "silent connections closed after {took:?}");
    let loris_closed = loris.closed(Duration::from_secs(10), |_| {}).await;
    assert!(loris_closed.is_some(), "the slow loris is still connected");
    let dribble_closed = dribbling.await.expect("dribbling task");
    assert!(dribble_closed.is_some(), "the dribbling slow loris is still connected");
    eprintln!("idle: 200 silent closed in {took:?}; loris {loris_closed:?}; dribble {dribble_closed:?}");

    // The live connection idled past the idle timeout and still serves.
    assert!(started.elapsed() > Duration::from_secs(3));
    assert!(!live_alive.is_finished(), "the live connection was closed");
    let mut live = live.ready().await.expect("live connection ready");
    let request = http::Request::post(format!("http://{addr}{UNARY}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = live.send_request(request, false).expect("send request");
    send.send_data(Bytes::from(h2raw::grpc_message(0, &[])), true).expect("send data");
    let response =
        tokio::time::timeout(Duration::from_secs(5), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    target.finish("idle connections").await;
}

/// Awaits every future, concurrently.
async fn futures_like_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut out = Vec::with_capacity(pinned.len());
    // Each waits on its own socket; awaiting in turn still bounds the total
    // by the slowest, as they all run on the server's clock.
    for f in &mut pinned {
        out.push(f.await);
    }
    out
}

/// Frames no valid peer sends end the connection with the GOAWAY code RFC
/// 9113 names; bytes that are not HTTP/2 at all get the socket closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_non_http2_bytes_are_cut_off() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&[]).await;
    let addr = target.addr();
    // The codes are h2's: it answers PROTOCOL_ERROR where RFC 9113 suggests
    // FRAME_SIZE_ERROR (a SETTINGS or PING of the wrong length) or RFC 7541
    // COMPRESSION_ERROR (a bad HPACK index); every one ends the connection.
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        // SETTINGS must be a multiple of 6 bytes (§6.5).
        ("settings of 5 bytes", h2raw::frame(kind::SETTINGS, 0, 0, &[0; 5]), reason::PROTOCOL_ERROR),
        // DATA on stream 0 (§6.1).
        ("data on stream 0", h2raw::frame(kind::DATA, 0, 0, b"x"), reason::PROTOCOL_ERROR),
        // A frame longer than SETTINGS_MAX_FRAME_SIZE (§4.2).
        ("a 1 MiB frame", h2raw::frame(kind::DATA, 0, 1, &vec![0; 1 << 20]), reason::FRAME_SIZE_ERROR),
        // PING must be 8 bytes (§6.7).
        ("ping of 3 bytes", h2raw::frame(kind::PING, 0, 0, &[0; 3]), reason::PROTOCOL_ERROR),
        // WINDOW_UPDATE of 0 on the connection (§6.9).
        ("zero window update", h2raw::frame(kind::WINDOW_UPDATE, 0, 0, &[0; 4]), reason::PROTOCOL_ERROR),
        // An HPACK index past both tables (RFC 7541 §2.3.3).
        ("bad hpack index", headers(1, &[0xff, 0xff, 0x7f], flag::END_HEADERS), reason::PROTOCOL_ERROR),
        // CONTINUATION with no HEADERS before it (§6.10).
        (
            "stray continuation",
            h2raw::frame(kind::CONTINUATION, flag::END_HEADERS, 1, &[]),
            reason::PROTOCOL_ERROR,
        ),
    ];
    let mut outcomes = Vec::new();
    for (name, bytes, expected) in cases {
        let (mut conn, _) = RawConn::handshake(addr).await.expect("handshake");
        let _ = conn.send_raw(&bytes).await;
        let closed = conn.closed(Duration::from_secs(5), |_| {}).await;
        eprintln!("{name}: {closed:?}");
        outcomes.push((name, closed, Some(Closed::GoAway(expected))));
    }
    for (name, closed, expected) in &outcomes {
        assert_eq!(closed, expected, "{name}: {outcomes:?}");
    }

    // Not HTTP/2: random bytes, and a half-valid preface.
    let mut rng = fastrand_like(0x5eed);
    let noise: Vec<u8> = (0..4096).map(|_| rng()).collect();
    for (name, bytes) in [("noise", noise), ("broken preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec())]
    {
        let mut conn = RawConn::connect(addr).await.expect("connect");
        let _ = conn.send_raw(&bytes).await;
        let (answer, closed) = conn.read_all(Duration::from_secs(5)).await;
        eprintln!(
            "{name}: closed {closed}, answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        );
        assert!(closed, "{name}: the connection is still open");
        // Not the preface, so hyper read it as HTTP/1.1 (REST shares the port).
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{name}: {answer:?}");
    }
    target.finish("malformed frames").await;
}

/// A small xorshift generator: the noise is the same on every run.
fn fastrand_like(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_be_bytes()[0]
    }
}

/// A rapid-reset flood sent by a client from outside the project: Python's
/// `h2` package (`tests/python/rapid_reset.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_from_python_h2_does_not_stop_a_well_behaved_client() {
    let _serial = SERIAL.lock().await;
    let target = Target::start(&[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/rapid_reset.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(target.addr().to_string())
            .arg("20000")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python attacker finished in time")
    .expect("python3 runs (install the h2 package: ./scripts/test does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("python h2: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the Python attacker failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["goaway"], serde_json::json!(reason::ENHANCE_YOUR_CALM), "{report}");
    assert!(report["streams"].as_u64().expect("streams") < 20000, "{report}");
    target.finish("python rapid reset").await;
}
