//! A stream whose writes a client must take at a minimum pace.
//!
//! IMAP and POP3 clients ask for messages of up to 40 MB, phones on slow links among
//! them. A timeout per write either cuts such a client off (the whole answer within two
//! minutes) or lets a hostile one keep a connection, and its slot, for hours by reading
//! a byte now and then (two minutes per piece). [`Paced`] counts only the time writes are
//! actually blocked on the client, never the server's own work between them, and fails a
//! write once that time exceeds a grace ([`GRACE`]) plus the bytes the client has taken
//! at [`MIN_RATE`]: a client that keeps up on average is never cut, one that falls
//! behind is, whatever size its pieces. The protocol resets the count between answers
//! ([`Paced::reset`]), so one fast download earns nothing to stall on later.
//!
//! It imports nothing of ours, so any layer may use it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a client may leave output unread before anything counts for it.
pub const GRACE: Duration = Duration::from_secs(120);
/// Beyond [`GRACE`], the slowest a client may take what it asked for, on average (bytes
/// a second: 64 kbit/s; a 40 MB message in 81 minutes).
pub const MIN_RATE: u64 = 8 * 1024;

/// `inner` with its writes paced (reads pass through).
pub struct Paced<S> {
    inner: S,
    /// Bytes written since the last [`Paced::reset`].
    taken: u64,
    /// Time writes were blocked since the last reset, waits under way aside.
    blocked: Duration,
    /// Since when the write under way has been blocked.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Paced<S> {
    pub fn new(inner: S) -> Self {
        Paced {
            inner,
            taken: 0,
            blocked: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// An answer is over: the next one starts with a full grace.
    pub fn reset(&mut self) {
        self.taken = 0;
        self.blocked = Duration::ZERO;
        self.waiting_since = None;
        self.timer = None;
    }

    /// The write under way was given up for now (the caller turned to reading): its
    /// wait so far counts, the time until the next write does not.
    pub fn pause(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.blocked += since.elapsed();
        }
        self.timer = None;
    }

    /// How long writes may still be blocked.
    fn allowance(&self) -> Duration {
        let earned = Duration::from_millis(self.taken.saturating_mul(1000) / MIN_RATE);
        (GRACE + earned).saturating_sub(self.blocked)
    }

    /// A write or flush returned `r`: count it, and when it is blocked, whether the
    /// allowance ran out.
    fn pace<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.pause();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + self.allowance();
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.pause();
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client stopped taking what it asked for",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        let r = this.pace(cx, r);
        if let Poll::Ready(Ok(n)) = &r {
            this.taken += *n as u64;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.pace(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A client reading `chunk` bytes every `every`, to the end; the bytes it read.
    pub(crate) fn reader(
        mut client: DuplexStream,
        chunk: usize,
        every: Duration,
    ) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut buf = vec![0u8; chunk];
            let mut total = 0;
            loop {
                tokio::time::sleep(every).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        })
    }

    /// 4 MiB in 64 KiB pieces, the server busy 5 minutes before each of the first
    /// three; the seconds until the last byte was taken, or the seconds until the cut.
    async fn answer(client_buf: usize, chunk: usize, every: Duration) -> (Result<(), u64>, usize) {
        let (ours, theirs) = tokio::io::duplex(client_buf);
        let client = reader(theirs, chunk, every);
        let mut w = Paced::new(ours);
        let started = Instant::now();
        let piece = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for i in 0..64 {
            if i < 3 {
                tokio::time::sleep(Duration::from_secs(300)).await;
            }
            if w.write_all(&piece).await.and(w.flush().await).is_err() {
                result = Err(started.elapsed().as_secs());
                break;
            }
        }
        drop(w);
        (result, client.await.unwrap())
    }

    /// Taken at 16 KiB/s (four minutes of writing, and fifteen of the server's own work
    /// that never count) it goes through; at 1 KiB/s, each piece well within two
    /// minutes, it is cut once the client falls behind: blocked time t passes 120 s +
    /// t KiB at 8 KiB/s at about 137 s blocked, in the third piece; a client that
    /// stops reading, 120 s after it stopped.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_falls_behind_is_cut_one_that_keeps_up_is_not() {
        let (fast, got) = answer(64 * 1024, 8 * 1024, Duration::from_millis(500)).await;
        assert_eq!((fast, got), (Ok(()), 4 << 20));

        let (slow, got) = answer(1024, 1024, Duration::from_secs(1)).await;
        let cut = slow.expect_err("cut");
        assert!((1030..=1045).contains(&cut), "{cut} s");
        assert!(got < 200 * 1024, "{got}");

        // Stops reading at once: the first piece blocks at 300 s, cut at 420 s.
        let (stalled, _) = answer(1024, 1024, Duration::from_secs(100_000)).await;
        let cut = stalled.expect_err("cut");
        assert!((420..=421).contains(&cut), "{cut} s");
    }

    /// A reset gives the next answer a full grace; without one, time blocked earlier
    /// counts.
    #[tokio::test(start_paused = true)]
    async fn a_reset_starts_the_next_answer_afresh() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut w = Paced::new(ours);
        // 100 s blocked on the first answer, then the client reads it.
        let first = async {
            w.write_all(&[b'a'; 32]).await.unwrap();
        };
        let drain = async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            let mut buf = [0u8; 32];
            theirs.read_exact(&mut buf).await.unwrap();
        };
        tokio::join!(first, drain);
        w.reset();
        // The next answer, never read: cut after a whole 120 s.
        let started = Instant::now();
        let second = w.write_all(&[b'b'; 32]).await;
        assert!(second.is_err());
        assert_eq!(started.elapsed().as_secs(), 120);
    }
}
