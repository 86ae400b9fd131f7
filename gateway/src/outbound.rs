//! A session's outbound side: the actor encodes frames, a task of their own writes them to
//! the TLS stream, and the bytes queued between the two are bounded.
//!
//! Why not actix's `FramedWrite`: it pauses the actor only when a write returns
//! `WouldBlock`, and tokio-rustls returns `Pending` instead, so its buffer grew without
//! bound for a device that never reads. Here every queued frame holds permits of a
//! semaphore of `write_buffer_bytes_max` bytes, released once the frame is written; the
//! actor that finds no permits waits for them (and stops reading meanwhile, see
//! `Session::send`), up to `slow_reader_timeout_ms`.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, mpsc};

/// Frames the writer takes from the queue per write: written as one buffer, so small
/// answers share TLS records and system calls.
const FRAMES_PER_WRITE_MAX: usize = 64;

/// A write buffer larger than this is released, not kept, once the queue is empty: idle
/// sessions hold no application buffers.
const IDLE_BUFFER_BYTES_MAX: usize = 4_096;

struct Queued {
    frame: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// The outcome of [`Outbound::try_send`].
#[derive(Debug)]
pub enum Queue {
    /// Queued for the writer.
    Queued,
    /// The budget is spent: wait for [`Outbound::reserve`], then [`Outbound::send_reserved`].
    Full(Bytes),
    /// The writer is gone (the session is closing): the frame is dropped.
    Closed,
}

/// The writing half of a session.
#[derive(Debug)]
pub struct Outbound {
    tx: Option<mpsc::UnboundedSender<Queued>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Outbound {
    /// Starts the writer task on the current (arbiter's) runtime. `done` is called once,
    /// when the writer has flushed and shut the stream down after [`Outbound::close`], or
    /// when a write failed.
    pub fn start<W>(
        w: W,
        budget_bytes: usize,
        done: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(budget_bytes));
        let task = actix_rt::spawn(write_loop(w, rx, done));
        Self {
            tx: Some(tx),
            budget,
            budget_bytes,
            task,
        }
    }

    /// Permits a frame of `len` bytes takes (a frame larger than the whole budget takes
    /// the whole budget).
    fn permits(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.budget_bytes)).unwrap_or(u32::MAX)
    }

    /// Queues `frame` if the budget allows.
    pub fn try_send(&self, frame: Bytes) -> Queue {
        let Some(tx) = &self.tx else {
            return Queue::Closed;
        };
        match Arc::clone(&self.budget).try_acquire_many_owned(self.permits(frame.len())) {
            Ok(permit) => match tx.send(Queued {
                frame,
                _permit: permit,
            }) {
                Ok(()) => Queue::Queued,
                Err(_) => Queue::Closed,
            },
            Err(_) => Queue::Full(frame),
        }
    }

    /// Waits until the budget has room for a frame of `len` bytes.
    pub fn reserve(
        &self,
        len: usize,
    ) -> impl std::future::Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + use<> {
        Arc::clone(&self.budget).acquire_many_owned(self.permits(len))
    }

    /// Queues a frame whose room [`Outbound::reserve`] got.
    pub fn send_reserved(&self, frame: Bytes, permit: OwnedSemaphorePermit) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Queued {
                frame,
                _permit: permit,
            });
        }
    }

    /// No more frames: the writer writes what is queued, then shuts the stream down.
    pub fn close(&mut self) {
        self.tx = None;
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // The session is gone: a writer still blocked on a device that does not read
        // must not keep the connection (and its frames) alive.
        self.task.abort();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    done: impl FnOnce(std::io::Result<()>),
) {
    let mut items = Vec::with_capacity(FRAMES_PER_WRITE_MAX);
    let mut buf = BytesMut::new();
    loop {
        if rx.recv_many(&mut items, FRAMES_PER_WRITE_MAX).await == 0 {
            break;
        }
        for q in &items {
            buf.extend_from_slice(&q.frame);
        }
        let mut result = w.write_all(&buf).await;
        if result.is_ok() && rx.is_empty() {
            result = w.flush().await;
        }
        // Written: the permits go back with the frames.
        items.clear();
        buf.clear();
        if buf.capacity() > IDLE_BUFFER_BYTES_MAX && rx.is_empty() {
            buf = BytesMut::new();
        }
        if let Err(e) = result {
            return done(Err(e));
        }
    }
    done(w.shutdown().await);
}
