//! The connection under an `imap_next::server::Server`: its input and output over any
//! byte stream (plain TCP, TLS), driven through imap-next's sans-I/O `State` API.
//!
//! imap-next's own `Stream` builds every response whole in memory (a 40 MB message four
//! times over) and, over TLS, fails on a response larger than rustls's 64 KiB send
//! buffer. Here responses are written as they are produced, and [`Conn::write_raw`] lets
//! the session stream a message literal from the store between two responses.
//! [`Conn::next_event`] is cancel-safe (all progress is recorded before each await), so
//! a session can wait on the client and on new mail at once.

use std::collections::VecDeque;

use imap_next::server::{Event, Server};
use imap_next::{Interrupt, Io, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::paced::Paced;

/// Output held before it is written out.
const OUT_MAX: usize = 256 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("IMAP: {0:?}")]
    State(imap_next::server::Error),
}

pub struct Conn<S> {
    r: ReadHalf<S>,
    /// Writes a client must take at a minimum pace ([`Paced`]): one that asks for a
    /// large message and stops reading, or reads a byte now and then, is dropped.
    w: Paced<WriteHalf<S>>,
    rbuf: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    /// Client events decoded while flushing, for the next [`Conn::next_event`].
    pending: VecDeque<Event>,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    pub fn new(io: S) -> Self {
        let (r, w) = tokio::io::split(io);
        Conn {
            r,
            w: Paced::new(w),
            rbuf: vec![0; 16 * 1024].into(),
            out: Vec::new(),
            out_pos: 0,
            pending: VecDeque::new(),
        }
    }

    /// A write under way was left for other work (IDLE's look at the store): its wait
    /// so far counts against the client, the time until it is tried again does not.
    pub fn pause(&mut self) {
        self.w.pause();
    }

    /// The stream back (for STARTTLS), after [`Conn::flush`]: whatever the client sent
    /// after the command and the old server state are dropped with it, never executed.
    pub fn into_inner(self) -> S
    where
        S: Unpin,
    {
        self.r.unsplit(self.w.into_inner())
    }

    /// Write some pending output while also reading input (a client that writes without
    /// reading cannot deadlock us); cancel-safe.
    async fn io_step(&mut self, server: &mut Server, need_input: bool) -> Result<(), DriveError> {
        if self.out_pos < self.out.len() {
            tokio::select! {
                r = self.w.write(&self.out[self.out_pos..]) => {
                    let n = r?;
                    if n == 0 {
                        return Err(DriveError::Closed);
                    }
                    self.out_pos += n;
                    if self.out_pos == self.out.len() {
                        self.out.clear();
                        self.out_pos = 0;
                        self.w.flush().await?;
                    }
                }
                r = self.r.read(&mut self.rbuf), if need_input => {
                    // The write waits on; the time until it is tried again is ours.
                    self.w.pause();
                    let n = r?;
                    if n == 0 {
                        return Err(DriveError::Closed);
                    }
                    server.enqueue_input(&self.rbuf[..n]);
                }
            }
        } else if need_input {
            let n = self.r.read(&mut self.rbuf).await?;
            if n == 0 {
                return Err(DriveError::Closed);
            }
            server.enqueue_input(&self.rbuf[..n]);
        }
        Ok(())
    }

    async fn write_out(&mut self, server: &mut Server) -> Result<(), DriveError> {
        while self.out_pos < self.out.len() {
            self.io_step(server, false).await?;
        }
        Ok(())
    }

    /// The next event: a command, or a response handed out.
    pub async fn next_event(&mut self, server: &mut Server) -> Result<Event, DriveError> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(ev);
        }
        loop {
            match State::next(&mut *server) {
                Ok(ev) => return Ok(ev),
                Err(Interrupt::Error(e)) => return Err(DriveError::State(e)),
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    self.out.extend_from_slice(&bytes);
                    if self.out.len() - self.out_pos > OUT_MAX {
                        self.write_out(server).await?;
                    }
                }
                // Reading and writing at once: a client that neither reads what is
                // owed it nor writes is dropped after the write timeout.
                Err(Interrupt::Io(Io::NeedMoreInput)) if self.out_pos < self.out.len() => {
                    self.io_step(server, true).await?;
                }
                // All written: the answer is over, the next starts with a full grace.
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    self.w.reset();
                    self.io_step(server, true).await?;
                }
            }
        }
    }

    /// Everything the server has queued, written out.
    pub async fn flush(&mut self, server: &mut Server) -> Result<(), DriveError> {
        loop {
            match State::next(&mut *server) {
                Ok(Event::ResponseSent { .. } | Event::GreetingSent { .. }) => {}
                Ok(ev) => self.pending.push_back(ev),
                Err(Interrupt::Error(e)) => return Err(DriveError::State(e)),
                Err(Interrupt::Io(Io::Output(bytes))) => self.out.extend_from_slice(&bytes),
                Err(Interrupt::Io(Io::NeedMoreInput)) => break,
            }
        }
        self.write_out(server).await
    }

    /// Raw protocol bytes after everything queued (a streamed literal).
    pub async fn write_raw(&mut self, server: &mut Server, bytes: &[u8]) -> Result<(), DriveError> {
        self.flush(server).await?;
        self.w.write_all(bytes).await?;
        Ok(())
    }

    /// Write out what [`Conn::write_raw`] left in the stream's buffers.
    pub async fn flush_raw(&mut self) -> Result<(), DriveError> {
        self.w.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paced::tests::reader;
    use imap_next::imap_types::response::Greeting;
    use imap_next::server::Options;
    use std::time::Duration;

    /// A server whose greeting is already written out to `client`.
    async fn greeted(
        client_buf: usize,
    ) -> (
        Conn<tokio::io::DuplexStream>,
        Server,
        tokio::io::DuplexStream,
    ) {
        let (ours, mut theirs) = tokio::io::duplex(client_buf);
        let mut server = Server::new(Options::default(), Greeting::ok(None, "hi").unwrap());
        let mut conn = Conn::new(ours);
        conn.flush(&mut server).await.unwrap();
        let mut greeting = [0u8; 64];
        let n = theirs.read(&mut greeting).await.unwrap();
        assert!(greeting[..n].starts_with(b"* OK"));
        (conn, server, theirs)
    }

    /// A 4 MiB answer: taken at 16 KiB/s it is written whole, though it takes four
    /// minutes; taken at 1 KiB/s (each 64 KiB piece well within the write timeout) the
    /// connection is dropped once the client falls behind 8 KiB/s after the grace.
    #[tokio::test(start_paused = true)]
    async fn an_answer_taken_too_slowly_ends_the_connection() {
        let answer = vec![b'x'; 4 << 20];
        let (mut conn, mut server, client) = greeted(64 * 1024).await;
        let fast = reader(client, 8 * 1024, Duration::from_millis(500));
        let started = tokio::time::Instant::now();
        for piece in answer.chunks(64 * 1024) {
            conn.write_raw(&mut server, piece).await.unwrap();
        }
        conn.flush_raw().await.unwrap();
        assert!(started.elapsed() > Duration::from_secs(200));
        drop(conn);
        assert_eq!(fast.await.unwrap(), 4 << 20);

        let (mut conn, mut server, client) = greeted(1024).await;
        let slow = reader(client, 1024, Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        // In the pieces a FETCH writes a message in (each taken within 64 s here).
        let mut cut = Ok(());
        for piece in answer.chunks(64 * 1024) {
            cut = conn.write_raw(&mut server, piece).await;
            if cut.is_err() {
                break;
            }
        }
        assert!(cut.is_err(), "{cut:?}");
        // Cut once the time blocked passes 120 s plus what was taken at 8 KiB/s (about
        // 137 s at 1 KiB/s). Before (120 s a piece) it kept the connection 4,096 s.
        let took = started.elapsed().as_secs();
        assert!((130..=150).contains(&took), "{took} s");
        drop(conn);
        assert!(slow.await.unwrap() < 200 * 1024);
    }
}
