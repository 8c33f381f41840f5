//! A connection whose client stops reading is closed after a while.
//!
//! Hyper has no write timeout: a client that sends requests but never reads the answers would
//! keep its connection, and whatever the answer holds (its share of the in-flight budget), for
//! ever. This wrapper around the socket gives up when a write has made no progress for the
//! deadline (`--client-timeout-ms`): the write fails, hyper closes the connection and drops the
//! answer. A write that makes progress, however slowly, resets the deadline; time spent waiting
//! for the next token of a stream is not a stalled write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` with a deadline on writes that make no progress.
pub struct StalledWrites<IO> {
    io: IO,
    deadline: Duration,
    /// Armed when a write found the socket full; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> StalledWrites<IO> {
    pub fn new(io: IO, deadline: Duration) -> Self {
        Self {
            io,
            deadline,
            stalled: None,
        }
    }

    /// After a write that could not proceed: `Pending` until the deadline, then an error.
    fn pending_or_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = self.deadline;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of the answer for --client-timeout-ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StalledWrites<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StalledWrites<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.pending_or_timed_out(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending_or_timed_out(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.pending_or_timed_out(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_at_the_deadline_and_progress_resets_it() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = StalledWrites::new(a, Duration::from_millis(200));
        // Progress: the peer reads, so writing 64 KiB through a 1 KiB pipe succeeds even though
        // it takes longer than one deadline in all.
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let mut buf = [0u8; 256];
            use tokio::io::AsyncReadExt;
            for _ in 0..256 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let n = b.read(&mut buf).await.unwrap();
                sink.extend_from_slice(&buf[..n]);
                if sink.len() >= 64 * 1024 {
                    break;
                }
            }
            b
        });
        w.write_all(&vec![1u8; 64 * 1024]).await.unwrap();
        let _peer = reader.await.unwrap();
        // Stall: nobody reads any more.
        let started = std::time::Instant::now();
        let e = w.write_all(&vec![1u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
