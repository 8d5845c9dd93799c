//! Per-connection HTTP/1 timing: a request's head must arrive within the header timeout
//! once its first byte has come, and an idle keep-alive connection waits for that first
//! byte up to the (longer) idle timeout.
//!
//! hyper has one timer for both: it starts the header timeout when it begins waiting for
//! the next request, idle or not. A short header timeout then closes idle keep-alive
//! connections early, and a client that reuses one just as it closes sees its request fail
//! mid-flight (clients pool idle connections for 90 s or more). [`ConnTimer`] is the timer
//! hyper is given for one connection: it counts the bytes [`CountingIo`] reads, and the
//! sleep hyper starts fires `header` after the first byte read since it started, or `idle`
//! after it started if no byte came.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's I/O, counting the reads that brought bytes.
pub(crate) struct CountingIo<I> {
    inner: I,
    reads: Arc<AtomicU64>,
}

impl<I> CountingIo<I> {
    /// Wraps `inner`; the returned counter goes to the connection's [`ConnTimer`].
    pub(crate) fn new(inner: I) -> (Self, Arc<AtomicU64>) {
        let reads = Arc::new(AtomicU64::new(0));
        (
            CountingIo {
                inner,
                reads: reads.clone(),
            },
            reads,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountingIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountingIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The timer hyper's HTTP/1 side uses for one connection's header timeout.
#[derive(Clone)]
pub(crate) struct ConnTimer {
    reads: Arc<AtomicU64>,
    header: Duration,
    idle: Duration,
}

impl ConnTimer {
    pub(crate) fn new(reads: Arc<AtomicU64>, header: Duration, idle: Duration) -> Self {
        ConnTimer {
            reads,
            header,
            idle,
        }
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    /// hyper asks for `header` from when it started waiting; the deadline is moved to
    /// `idle` from then, or `header` after the first byte, whichever applies.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let started = tokio::time::Instant::now();
        Box::pin(HeadSleep {
            reads: self.reads.clone(),
            reads_at_start: self.reads.load(Ordering::Relaxed),
            header: self.header,
            first_byte: None,
            sleep: Box::pin(tokio::time::sleep_until(started + self.idle)),
        })
    }
}

struct HeadSleep {
    reads: Arc<AtomicU64>,
    reads_at_start: u64,
    header: Duration,
    first_byte: Option<tokio::time::Instant>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    /// hyper polls this each time a read leaves the head incomplete, so the first poll
    /// after the first byte is within a scheduling delay of it.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.first_byte.is_none() && self.reads.load(Ordering::Relaxed) > self.reads_at_start {
            let now = tokio::time::Instant::now();
            self.first_byte = Some(now);
            let by_header = now + self.header;
            if by_header < self.sleep.deadline() {
                self.sleep.as_mut().reset(by_header);
            }
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}
