//! Write coalescing: the bytes of several responses (or requests) leave in
//! one system call.
//!
//! hyper's HTTP/2 connection task writes and flushes whatever is queued each
//! time it runs, and it runs as soon as one stream has something to send:
//! tokio puts a task woken by another in its LIFO slot, so a server's
//! connection flushes after every stream task, one write per response, and
//! a client's often writes a request's headers and its message apart. Under
//! load that is most of the system calls, and on loopback as much kernel
//! time again for the peer that reads them. Both sides use it: the server
//! on every accepted connection, the client on every connection it opens
//! ([`super::Connection`]).
//!
//! [`Coalesce`] keeps what is written in a buffer and, on the first flush,
//! asks to be polled again *after* the other ready tasks (a task that wakes
//! itself goes to the back of tokio's run queue, not the LIFO slot), so the
//! stream tasks that were ready add their frames first; the second flush
//! writes them all. A connection with many streams in flight writes once per
//! round of the scheduler instead of once per stream. One whose wait gathered
//! nothing (a lone call) stops waiting for the next 1, 3, 7, then 15 flushes
//! before it tries again, so it pays neither the extra poll nor the wake-up of
//! another worker that re-queuing a task can cost. grpc-go's writer does the same: it
//! flushes only when nothing more is queued.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes held before a write goes to the connection without waiting for a
/// flush. Large enough for a round of small responses, small enough that a
/// large message is not copied twice: a single write this big or bigger
/// bypasses the buffer.
const LIMIT: usize = 64 * 1024;

/// A connection whose writes are gathered and sent once per scheduler
/// round. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Coalesce<IO> {
    inner: IO,
    buf: BytesMut,
    /// Where the current flush is.
    flush: Flush,
    /// Flushes left that write at once: after a yield that gathered
    /// nothing, the next ones do not wait (1, 3, 7, then 15 of them), so a
    /// lone call does not pay for a wait that never helps it.
    skip: u8,
    /// Yields in a row that gathered nothing, up to [`MAX_BACKOFF`].
    backoff: u8,
}

/// At most 15 flushes write at once between two tries of a yield.
const MAX_BACKOFF: u8 = 4;

/// Where a flush is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// None under way.
    Idle,
    /// It has let the other ready tasks run once; the buffer's length then.
    Yielded(usize),
    /// It is writing the buffer out.
    Draining,
}

impl<IO> Coalesce<IO> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: IO) -> Self {
        Coalesce { inner, buf: BytesMut::new(), flush: Flush::Idle, skip: 0, backoff: 0 }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection accepted no more bytes",
                    )));
                }
                Poll::Ready(Ok(n)) => self.buf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: drains the buffer when they would
    /// not fit. `Ready(true)` when they should bypass the buffer.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + len > LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len >= LIMIT))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if std::task::ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        // Slices are copied into one buffer: callers need not gather them.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buf.is_empty() {
            match this.flush {
                Flush::Idle if this.skip > 0 => {
                    this.skip -= 1;
                    this.flush = Flush::Draining;
                }
                Flush::Idle => {
                    this.flush = Flush::Yielded(this.buf.len());
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Flush::Yielded(before) => {
                    if this.buf.len() > before {
                        this.backoff = 0;
                    } else {
                        this.backoff = (this.backoff + 1).min(MAX_BACKOFF);
                        this.skip = (1 << this.backoff) - 1;
                    }
                    this.flush = Flush::Draining;
                }
                Flush::Draining => {}
            }
        }
        std::task::ready!(this.poll_drain(cx))?;
        this.flush = Flush::Idle;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Coalesce<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connection that counts the writes that reach it.
    struct Counting {
        inner: tokio::io::DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(written, Poll::Ready(Ok(_))) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            written
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn pair(capacity: usize) -> (Coalesce<Counting>, tokio::io::DuplexStream, Arc<AtomicUsize>) {
        let (near, far) = tokio::io::duplex(capacity);
        let writes = Arc::new(AtomicUsize::new(0));
        (Coalesce::new(Counting { inner: near, writes: writes.clone() }), far, writes)
    }

    #[tokio::test]
    async fn writes_before_a_flush_leave_in_one_write() {
        let (mut conn, mut far, writes) = pair(1 << 20);
        for frame in [&b"one"[..], b"two", b"three"] {
            conn.write_all(frame).await.unwrap();
        }
        let vectored = [io::IoSlice::new(b"-"), io::IoSlice::new(b"four")];
        assert_eq!(conn.write_vectored(&vectored).await.unwrap(), 5);
        assert_eq!(writes.load(Ordering::Relaxed), 0, "nothing leaves before the flush");
        conn.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        let mut got = vec![0; 16];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"onetwothree-four");
    }

    #[tokio::test]
    async fn the_first_flush_lets_other_ready_tasks_run_first() {
        let (mut conn, _far, _) = pair(1 << 20);
        conn.write_all(b"frame").await.unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // The first flush yields (and has woken its task); the next one writes.
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert!(matches!(Pin::new(&mut conn).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert!(conn.buf.is_empty());
        // With nothing buffered a flush does not yield.
        assert!(matches!(Pin::new(&mut conn).poll_flush(&mut cx), Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn yields_that_gather_nothing_back_off_and_one_that_gathers_resets_them() {
        let (mut conn, _far, _) = pair(1 << 20);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut flush = |conn: &mut Coalesce<Counting>, more: bool| {
            let yielded = Pin::new(&mut *conn).poll_flush(&mut cx).is_pending();
            if yielded && more {
                assert!(Pin::new(&mut *conn).poll_write(&mut cx, b"more").is_ready());
            }
            if yielded {
                assert!(matches!(Pin::new(&mut *conn).poll_flush(&mut cx), Poll::Ready(Ok(()))));
            }
            yielded
        };
        // A lone frame per flush, nothing added while it waits (a single call):
        // the yields become rarer, down to one flush in 16.
        let mut yields = Vec::new();
        for i in 0..40 {
            conn.write_all(b"x").await.unwrap();
            if flush(&mut conn, false) {
                yields.push(i);
            }
        }
        assert_eq!(yields, [0, 2, 6, 14, 30]);
        // A yield during which another stream's frame arrives: the next flush
        // waits again at once.
        loop {
            conn.write_all(b"x").await.unwrap();
            if flush(&mut conn, true) {
                break;
            }
        }
        conn.write_all(b"x").await.unwrap();
        assert!(flush(&mut conn, true));
    }

    #[tokio::test]
    async fn a_full_buffer_drains_and_a_large_write_bypasses_it() {
        let (mut conn, mut far, writes) = pair(4 * LIMIT);
        conn.write_all(&vec![1; LIMIT - 10]).await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 0);
        // 20 more bytes do not fit: the buffer goes first, then they are held.
        conn.write_all(&[2; 20]).await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        // A write of the limit or more goes straight through, after the buffer.
        conn.write_all(&vec![3; LIMIT]).await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 3);
        conn.shutdown().await.unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 2 * LIMIT + 10);
        assert!(got[..LIMIT - 10].iter().all(|&b| b == 1));
        assert!(got[LIMIT - 10..LIMIT + 10].iter().all(|&b| b == 2));
        assert!(got[LIMIT + 10..].iter().all(|&b| b == 3));
    }

    #[tokio::test]
    async fn a_slow_reader_holds_the_writer_back_and_loses_nothing() {
        let (mut conn, mut far, _) = pair(1024);
        let writer = tokio::spawn(async move {
            for i in 0..2000u32 {
                conn.write_all(&i.to_be_bytes()).await.unwrap();
                if i % 100 == 99 {
                    conn.flush().await.unwrap();
                }
            }
            conn.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let expected: Vec<u8> = (0..2000u32).flat_map(u32::to_be_bytes).collect();
        assert_eq!(got, expected);
    }
}
