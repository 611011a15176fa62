//! A small HTTP/2 frame writer and reader over a raw TCP stream, for the
//! attack tests: it sends what a well-behaved library refuses to send
//! (malformed headers, endless CONTINUATION, lying lengths) and reads the
//! server's frames without judging them. Headers are HPACK literals without
//! indexing or Huffman coding (RFC 7541 §6.2.2), which every decoder takes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// DATA
    pub const DATA: u8 = 0x0;
    /// HEADERS
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS
    pub const SETTINGS: u8 = 0x4;
    /// PING
    pub const PING: u8 = 0x6;
    /// GOAWAY
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM on DATA and HEADERS; ACK on SETTINGS and PING.
    pub const END_STREAM: u8 = 0x1;
    /// ACK on SETTINGS and PING.
    pub const ACK: u8 = 0x1;
    /// END_HEADERS on HEADERS and CONTINUATION.
    pub const END_HEADERS: u8 = 0x4;
}

/// SETTINGS identifiers (RFC 9113 §6.5.2).
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_MAX_CONCURRENT_STREAMS
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (RFC 9113 §7).
pub mod reason {
    /// NO_ERROR
    pub const NO_ERROR: u32 = 0x0;
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// FRAME_SIZE_ERROR
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    /// CANCEL
    pub const CANCEL: u32 = 0x8;
    /// COMPRESSION_ERROR
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// ENHANCE_YOUR_CALM
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One frame as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream identifier.
    pub stream: u32,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// The settings of a SETTINGS frame, as (identifier, value).
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
            .collect()
    }

    /// The error code of a GOAWAY or RST_STREAM frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::GOAWAY => 4,
            kind::RST_STREAM => 0,
            _ => return None,
        };
        let c = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The server sent GOAWAY with this error code.
    GoAway(u32),
    /// The server closed or reset the socket without GOAWAY.
    Eof,
}

/// A raw HTTP/2 client connection.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    read: BytesMut,
}

impl RawConn {
    /// Connects to `addr` over plain TCP; nothing is sent yet.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawConn { stream, read: BytesMut::new() })
    }

    /// Connects, sends the preface and an empty SETTINGS, and returns the
    /// server's first SETTINGS frame.
    pub async fn handshake(addr: SocketAddr) -> std::io::Result<(RawConn, Frame)> {
        let mut conn = RawConn::connect(addr).await?;
        conn.send_raw(PREFACE).await?;
        conn.send(kind::SETTINGS, 0, 0, &[]).await?;
        let settings = loop {
            match conn.next_frame(Duration::from_secs(5)).await? {
                Some(frame) if frame.kind == kind::SETTINGS && frame.flags & flag::ACK == 0 => break frame,
                Some(_) => {}
                None => return Err(std::io::Error::other("the server closed before its SETTINGS")),
            }
        };
        conn.send(kind::SETTINGS, flag::ACK, 0, &[]).await?;
        Ok((conn, settings))
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes one frame.
    pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> std::io::Result<()> {
        self.send_raw(&frame(kind, flags, stream, payload)).await
    }

    /// The next frame, `None` once the server closed the socket, or an
    /// error of kind `TimedOut` when nothing complete arrives within `wait`.
    pub async fn next_frame(&mut self, wait: Duration) -> std::io::Result<Option<Frame>> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(frame) = self.parse() {
                    return Ok(Some(frame));
                }
                match self.stream.read_buf(&mut self.read).await {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no frame in time"))?
    }

    /// Reads until the server ends the connection, or `wait` passes.
    /// `on_frame` sees every frame before it; PINGs are not answered.
    pub async fn closed(&mut self, wait: Duration, mut on_frame: impl FnMut(&Frame)) -> Option<Closed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(frame)) => {
                    on_frame(&frame);
                    if frame.kind == kind::GOAWAY {
                        return Some(Closed::GoAway(frame.error_code().unwrap_or(u32::MAX)));
                    }
                }
                Ok(None) => return Some(Closed::Eof),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
                Err(_) => return Some(Closed::Eof),
            }
        }
    }

    /// Whatever bytes arrive within `wait`, until the socket closes.
    pub async fn read_all(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let mut out = std::mem::take(&mut self.read).to_vec();
        let closed = tokio::time::timeout(wait, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .is_ok();
        (out, closed)
    }

    fn parse(&mut self) -> Option<Frame> {
        if self.read.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
        if self.read.len() < 9 + len {
            return None;
        }
        let head = self.read.split_to(9);
        let payload = self.read.split_to(len).freeze();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame { kind: head[3], flags: head[4], stream, payload })
    }
}

/// One frame's bytes: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload under 16 MiB");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block of literals (never indexed, no Huffman).
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (name, value) in headers {
        out.put_u8(0x00);
        hpack_string(&mut out, name.as_bytes());
        hpack_string(&mut out, value.as_bytes());
    }
    out.to_vec()
}

/// The header block of a gRPC unary request for `path`.
pub fn grpc_request(path: &str) -> Vec<u8> {
    header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// A gRPC message: the 5-byte prefix (uncompressed, `claimed` bytes long),
/// then `body`.
pub fn grpc_message(claimed: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&claimed.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn hpack_string(out: &mut BytesMut, bytes: &[u8]) {
    hpack_int(out, 0x00, 7, bytes.len());
    out.put_slice(bytes);
}

/// RFC 7541 §5.1: an integer with an `n`-bit prefix after `first`'s bits.
fn hpack_int(out: &mut BytesMut, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(first | u8::try_from(value).expect("below the prefix"));
        return;
    }
    out.put_u8(first | u8::try_from(max).expect("prefix fits"));
    value -= max;
    while value >= 128 {
        out.put_u8(u8::try_from(value % 128).expect("7 bits") | 0x80);
        value /= 128;
    }
    out.put_u8(u8::try_from(value).expect("7 bits"));
}

/// The resident and peak memory of process `pid`, in KiB, from
/// `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc_7541_examples() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        let mut out = BytesMut::new();
        hpack_int(&mut out, 0, 5, 10);
        assert_eq!(&out[..], &[0x0a]);
        let mut out = BytesMut::new();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(&out[..], &[0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn a_frame_header_is_nine_bytes() {
        let f = frame(kind::RST_STREAM, 0, 3, &reason::CANCEL.to_be_bytes());
        assert_eq!(f, [0, 0, 4, 3, 0, 0, 0, 0, 3, 0, 0, 0, 8]);
    }
}
