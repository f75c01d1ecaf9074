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

/// Output held before it is written out.
const OUT_MAX: usize = 256 * 1024;
/// How long a client may leave output unread before the connection is dropped (one that
/// asks for a large message and stops reading holds nothing of ours for longer).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

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
    w: WriteHalf<S>,
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
            w,
            rbuf: vec![0; 16 * 1024].into(),
            out: Vec::new(),
            out_pos: 0,
            pending: VecDeque::new(),
        }
    }

    /// The stream back (for STARTTLS), after [`Conn::flush`]: whatever the client sent
    /// after the command and the old server state are dropped with it, never executed.
    pub fn into_inner(self) -> S
    where
        S: Unpin,
    {
        self.r.unsplit(self.w)
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
            tokio::time::timeout(WRITE_TIMEOUT, self.io_step(server, false))
                .await
                .map_err(|_| DriveError::Closed)??;
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
                    tokio::time::timeout(WRITE_TIMEOUT, self.io_step(server, true))
                        .await
                        .map_err(|_| DriveError::Closed)??;
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => self.io_step(server, true).await?,
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
        tokio::time::timeout(WRITE_TIMEOUT, self.w.write_all(bytes))
            .await
            .map_err(|_| DriveError::Closed)??;
        Ok(())
    }

    /// Write out what [`Conn::write_raw`] left in the stream's buffers.
    pub async fn flush_raw(&mut self) -> Result<(), DriveError> {
        tokio::time::timeout(WRITE_TIMEOUT, self.w.flush())
            .await
            .map_err(|_| DriveError::Closed)??;
        Ok(())
    }
}
