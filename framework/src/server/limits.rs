//! HTTP/2 and message limits: what one connection, one stream and one
//! message may cost the server. `trellis::config` composes them into the
//! `[server.http2]` and `[server.messages]` sections.
//!
//! Every limit is set explicitly, never left to tonic's defaults: tonic
//! 0.14 passes `max_local_error_reset_streams(None)` to hyper, which turns
//! off h2's reset-flood protection (RUSTSEC-2024-0003), and advertises no
//! `SETTINGS_MAX_CONCURRENT_STREAMS` at all (`tests/tests/attack_h2.rs`
//! checks both on the wire). The defaults, and where each comes from, are
//! in `docs/hardening.md`; each value is checked against its range when the
//! configuration is loaded, and an error names the key and the range.
//!
//! tonic exposes every HTTP/2 knob but one on its `Server` builder;
//! the exception, closing a connection that sends nothing, is
//! [`IdleTimeout`], a wrapper around each accepted connection.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

pub use crate::protocol::DEFAULT_MAX_MESSAGE_SIZE;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// HTTP/2 limits per connection (`[server.http2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Streams a client may have open at once on one connection, advertised
    /// as `SETTINGS_MAX_CONCURRENT_STREAMS`; 1 to 10 000, default 100.
    #[serde(deserialize_with = "count::<_, 1, 10_000, _>")]
    pub max_concurrent_streams: u32,
    /// The largest header list (names, values and 32 bytes per entry) a
    /// request may send, advertised as `SETTINGS_MAX_HEADER_LIST_SIZE`;
    /// 1 KiB to 1 MiB, default 16 KiB.
    #[serde(deserialize_with = "count::<_, KIB, MIB, _>")]
    pub max_header_list_size: u32,
    /// Streams the client opened and reset before the server accepted them
    /// (rapid reset, CVE-2023-44487) that may be pending at once before the
    /// connection is closed with GOAWAY; 1 to 10 000, default 20.
    #[serde(deserialize_with = "count::<_, 1, 10_000, _>")]
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset because the client broke the protocol
    /// before the connection is closed with GOAWAY; 1 to 100 000, default 1024.
    #[serde(deserialize_with = "count::<_, 1, 100_000, _>")]
    pub max_local_error_reset_streams: usize,
    /// How often the server pings an open connection; 1 s to 2 h, default 60 s.
    #[serde(
        deserialize_with = "duration::<_, 1_000, 7_200_000>",
        serialize_with = "crate::duration::serialize"
    )]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed;
    /// 1 s to 10 min, default 20 s.
    #[serde(
        deserialize_with = "duration::<_, 1_000, 600_000>",
        serialize_with = "crate::duration::serialize"
    )]
    pub keepalive_timeout: Duration,
    /// A connection on which nothing at all has been received for this long
    /// is closed (a peer that answers the keepalive pings is never idle);
    /// 1 s to 24 h, longer than `keepalive_interval` + `keepalive_timeout`,
    /// default 5 min.
    #[serde(
        deserialize_with = "duration::<_, 1_000, 86_400_000>",
        serialize_with = "crate::duration::serialize"
    )]
    pub idle_timeout: Duration,
    /// A connection older than this is asked to go away (GOAWAY), so clients
    /// reconnect and rebalance; 1 s to 30 days, default 1 h.
    #[serde(
        deserialize_with = "duration::<_, 1_000, 2_592_000_000>",
        serialize_with = "crate::duration::serialize"
    )]
    pub max_connection_age: Duration,
    /// How long calls may still take on a connection past its maximum age
    /// before it is closed; 0 to 1 h, default 30 s.
    #[serde(deserialize_with = "duration::<_, 0, 3_600_000>", serialize_with = "crate::duration::serialize")]
    pub max_connection_age_grace: Duration,
    /// The largest frame the server accepts, advertised as
    /// `SETTINGS_MAX_FRAME_SIZE`; 16 384 to 16 777 215, default 16 384.
    #[serde(deserialize_with = "count::<_, 16_384, 16_777_215, _>")]
    pub max_frame_size: u32,
    /// Bytes a client may send on one stream before the server reads them;
    /// 64 KiB - 1 to 16 MiB, default 1 MiB.
    #[serde(deserialize_with = "count::<_, 65_535, { 16 * MIB }, _>")]
    pub initial_stream_window_size: u32,
    /// Bytes a client may send on one connection before the server reads
    /// them; 64 KiB - 1 to 64 MiB, default 1 MiB.
    #[serde(deserialize_with = "count::<_, 65_535, { 64 * MIB }, _>")]
    pub initial_connection_window_size: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            max_connection_age_grace: Duration::from_secs(30),
            max_frame_size: 16_384,
            initial_stream_window_size: 1024 * 1024,
            initial_connection_window_size: 1024 * 1024,
        }
    }
}

impl Http2Config {
    /// Checks what no single key's range can: a live peer that answers the
    /// keepalive pings must never look idle.
    ///
    /// # Errors
    ///
    /// A message naming the keys and the fix.
    pub fn check(&self) -> Result<(), String> {
        let ping = self.keepalive_interval + self.keepalive_timeout;
        if self.idle_timeout <= ping {
            return Err(format!(
                "`server.http2.idle_timeout` ({}) must be longer than `keepalive_interval` + \
                 `keepalive_timeout` ({}), or a live connection waiting for a ping would be closed; \
                 raise `idle_timeout` or ping more often",
                humantime::format_duration(self.idle_timeout),
                humantime::format_duration(ping),
            ));
        }
        Ok(())
    }

    /// The limits applied to tonic's server builder.
    pub(crate) fn apply<L>(&self, server: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        server
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_header_list_size(self.max_header_list_size)
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .max_connection_age(self.max_connection_age)
            .max_connection_age_grace(self.max_connection_age_grace)
            .max_frame_size(self.max_frame_size)
            .initial_stream_window_size(self.initial_stream_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
    }
}

/// The largest gRPC message a service takes and sends (`[server.messages]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageLimits {
    /// The largest request message, in bytes, after decompression; larger
    /// ones are refused with `RESOURCE_EXHAUSTED` before they are read;
    /// 1 KiB to 256 MiB, default 4 MiB.
    #[serde(deserialize_with = "count::<_, KIB, { 256 * MIB }, _>")]
    pub max_decoding_size: usize,
    /// The largest response message, in bytes; a handler that produces a
    /// larger one fails with `RESOURCE_EXHAUSTED`; 1 KiB to 256 MiB,
    /// default 4 MiB.
    #[serde(deserialize_with = "count::<_, KIB, { 256 * MIB }, _>")]
    pub max_encoding_size: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits {
            max_decoding_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_encoding_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// A whole number in `MIN..=MAX`.
fn count<'de, D, const MIN: u64, const MAX: u64, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let value = u64::deserialize(d)?;
    if !(MIN..=MAX).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "{value} is out of range; expected a whole number from {MIN} to {MAX}"
        )));
    }
    T::try_from(value).map_err(|_| serde::de::Error::custom(format!("{value} is too large for this machine")))
}

/// A duration from `MIN_MS` to `MAX_MS` milliseconds.
fn duration<'de, D, const MIN_MS: u64, const MAX_MS: u64>(d: D) -> Result<Duration, D::Error>
where
    D: Deserializer<'de>,
{
    let value = crate::duration::deserialize(d)?;
    let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
    if !(min..=max).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "`{}` is out of range; expected a duration from {} to {}",
            humantime::format_duration(value),
            humantime::format_duration(min),
            humantime::format_duration(max),
        )));
    }
    Ok(value)
}

/// An accepted connection that fails its next read once nothing has been
/// received for `timeout`, so hyper closes it. hyper has no such timer for
/// HTTP/2 (its keepalive only starts after the handshake, and only judges a
/// peer that stopped answering pings); a connection that never sends its
/// preface, or stops in the middle of a frame, would otherwise be held for
/// as long as it stays open.
///
/// A read only notes its time; the timer is moved when it fires, to the
/// last read's time plus `timeout`, so a busy connection does not re-file
/// its timer in the runtime's wheel on every read.
pub struct IdleTimeout<IO> {
    inner: IO,
    timeout: Duration,
    /// When something was last received (or the connection accepted).
    last_read: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<IO> fmt::Debug for IdleTimeout<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeout").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl<IO> IdleTimeout<IO> {
    /// Wraps `inner`; the clock starts now.
    pub fn new(inner: IO, timeout: Duration) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last_read: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for IdleTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if let Poll::Ready(result) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if buf.filled().len() > before {
                this.last_read = Instant::now();
            }
            return Poll::Ready(result);
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            let idle_until = this.last_read + this.timeout;
            if idle_until <= this.sleep.deadline() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nothing received for {} (server.http2.idle_timeout)",
                        humantime::format_duration(this.timeout)
                    ),
                )));
            }
            // Something arrived since the timer was set: it runs on from then.
            this.sleep.as_mut().reset(idle_until);
        }
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for IdleTimeout<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_its_read_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(10));
        let mut client = client;
        let mut buf = [0u8; 8];
        tokio::time::advance(Duration::from_secs(6)).await;
        client.write_all(b"ab").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 2);
        // The byte received restarted the clock: 6 s later it is still open.
        tokio::time::advance(Duration::from_secs(6)).await;
        client.write_all(b"c").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(err.to_string().contains("server.http2.idle_timeout"), "{err}");
    }

    #[test]
    fn the_defaults_pass_their_own_check() {
        Http2Config::default().check().unwrap();
    }

    #[test]
    fn an_idle_timeout_shorter_than_a_ping_is_refused() {
        let config = Http2Config { idle_timeout: Duration::from_secs(30), ..Http2Config::default() };
        let err = config.check().unwrap_err();
        assert!(err.contains("`server.http2.idle_timeout`") && err.contains("1m 20s"), "{err}");
    }
}
