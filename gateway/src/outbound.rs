//! A session's outbound side: the actor encodes frames, a task of their own writes them to
//! the TLS stream, and the bytes queued between the two are bounded.
//!
//! Why not actix's `FramedWrite`: it pauses the actor only when a write returns
//! `WouldBlock`, and a TLS stream returns `Pending` instead, so its buffer grew without
//! bound for a device that never reads. Here every queued frame holds permits of a
//! semaphore of `write_buffer_bytes_max` bytes, given back once the frame is written; the
//! actor that finds no permits waits for them (and stops reading meanwhile, see
//! `Session::send`), up to `slow_reader_timeout_ms`.
//!
//! The queue is one byte buffer: frames are appended to it, and the writer takes all of
//! it at once and writes it as one buffer, so small answers share TLS records and system
//! calls. An idle session holds no buffer: the writer frees what it wrote, and the queue
//! allocates again with the next frame. (A channel of frames would keep its first block
//! of slots, and a writer's batch vector its capacity, for the session's whole life.)

use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{AcquireError, Notify, Semaphore};

/// What the actor and the writer share.
#[derive(Debug)]
struct Inner {
    queue: Mutex<Queued>,
    /// Tells the writer that frames were queued or the queue closed.
    wake: Notify,
    /// The write budget in bytes: queued frames hold permits, forgotten, until written.
    budget: Semaphore,
}

#[derive(Debug, Default)]
struct Queued {
    bytes: BytesMut,
    /// Permits the queued frames hold.
    permits: usize,
    /// No more frames: the writer writes what is queued, then shuts the stream down.
    closed: bool,
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

/// Room in the write budget that [`Outbound::reserve`] got for one frame.
#[derive(Debug)]
#[must_use = "room not used for a frame is lost to the session's budget"]
pub struct Room(usize);

/// The writing half of a session.
#[derive(Debug)]
pub struct Outbound {
    inner: Arc<Inner>,
    budget_bytes: usize,
    closed: bool,
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
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queued::default()),
            wake: Notify::new(),
            budget: Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS)),
        });
        let task = actix_rt::spawn(write_loop(w, Arc::clone(&inner), done));
        Self {
            inner,
            budget_bytes,
            closed: false,
            task,
        }
    }

    /// Permits a frame of `len` bytes takes (a frame larger than the whole budget takes
    /// the whole budget).
    fn permits(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.budget_bytes)).unwrap_or(u32::MAX)
    }

    /// Appends a frame whose permits are taken (and forgotten); gives them back if the
    /// writer is gone.
    fn push(&self, frame: &[u8], permits: usize) -> Queue {
        let mut q = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.closed || q.closed || self.task.is_finished() {
            drop(q);
            self.inner.budget.add_permits(permits);
            return Queue::Closed;
        }
        q.bytes.extend_from_slice(frame);
        q.permits += permits;
        drop(q);
        self.inner.wake.notify_one();
        Queue::Queued
    }

    /// Queues `frame` if the budget allows.
    pub fn try_send(&self, frame: Bytes) -> Queue {
        if self.closed {
            return Queue::Closed;
        }
        let permits = self.permits(frame.len());
        match self.inner.budget.try_acquire_many(permits) {
            Ok(permit) => {
                permit.forget();
                self.push(&frame, permits as usize)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => Queue::Full(frame),
            Err(tokio::sync::TryAcquireError::Closed) => Queue::Closed,
        }
    }

    /// Waits until the budget has room for a frame of `len` bytes.
    pub fn reserve(
        &self,
        len: usize,
    ) -> impl std::future::Future<Output = Result<Room, AcquireError>> + use<> {
        let (inner, permits) = (Arc::clone(&self.inner), self.permits(len));
        async move {
            let permit = inner.budget.acquire_many(permits).await?;
            permit.forget();
            Ok(Room(permits as usize))
        }
    }

    /// Queues a frame whose room [`Outbound::reserve`] got.
    pub fn send_reserved(&self, frame: Bytes, room: Room) {
        let _ = self.push(&frame, room.0);
    }

    /// No more frames: the writer writes what is queued, then shuts the stream down.
    pub fn close(&mut self) {
        self.closed = true;
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.inner.wake.notify_one();
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
    inner: Arc<Inner>,
    done: impl FnOnce(std::io::Result<()>),
) {
    loop {
        let (bytes, permits, closed) = {
            let mut q = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            (
                std::mem::take(&mut q.bytes),
                std::mem::take(&mut q.permits),
                q.closed,
            )
        };
        if bytes.is_empty() {
            if closed {
                break;
            }
            inner.wake.notified().await;
            continue;
        }
        let mut result = w.write_all(&bytes).await;
        let more = !inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
            .is_empty();
        if result.is_ok() && !more {
            result = w.flush().await;
        }
        // Written: the permits go back, and the buffer is freed.
        inner.budget.add_permits(permits);
        drop(bytes);
        if let Err(e) = result {
            end(&inner);
            return done(Err(e));
        }
    }
    end(&inner);
    done(w.shutdown().await);
}

/// The writer is ending: nothing more is queued, what is queued is dropped, and a session
/// waiting for room learns that none will come (`reserve` fails) instead of waiting out
/// its slow-reader bound.
fn end(inner: &Inner) {
    let mut q = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
    q.closed = true;
    q.bytes = BytesMut::new();
    q.permits = 0;
    drop(q);
    inner.budget.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A device that reads nothing: the budget fills, the queue holds no more than it,
    /// and what was queued arrives whole and in order once the device reads.
    #[actix_rt::test]
    async fn the_budget_bounds_the_queue_and_order_is_kept() {
        let (device, gateway) = tokio::io::duplex(64);
        let mut out = Outbound::start(gateway, 1_000, |_| {});
        let mut sent = Vec::new();
        let mut n = 0u32;
        loop {
            let frame = Bytes::from(format!("frame {n:05};").into_bytes());
            match out.try_send(frame.clone()) {
                Queue::Queued => sent.extend_from_slice(&frame),
                Queue::Full(_) => break,
                Queue::Closed => panic!("closed"),
            }
            n += 1;
            assert!(n < 10_000, "the budget never filled");
        }
        // 64 bytes in the pipe, at most 1,000 queued (and one write in flight).
        assert!(
            sent.len() <= 64 + 1_000 + 12,
            "{} bytes accepted",
            sent.len()
        );
        let room = out.reserve(12);
        let mut device = device;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = device.read_to_end(&mut got).await;
            got
        });
        let room = tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .expect("room once the device reads")
            .expect("budget open");
        let last = Bytes::from_static(b"last frame;");
        out.send_reserved(last.clone(), room);
        sent.extend_from_slice(&last);
        out.close();
        let got = reader.await.expect("reader");
        assert_eq!(got, sent);
        assert!(matches!(out.try_send(last), Queue::Closed));
    }

    /// A writer whose device is gone ends, and a session waiting for room hears so at
    /// once instead of waiting for its slow-reader bound.
    #[actix_rt::test]
    async fn a_failed_writer_ends_the_wait_for_room() {
        let (device, gateway) = tokio::io::duplex(64);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let out = Outbound::start(gateway, 100, move |r| {
            let _ = done_tx.send(r.is_err());
        });
        while let Queue::Queued = out.try_send(Bytes::from_static(b"0123456789")) {}
        let room = out.reserve(10);
        drop(device);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .expect("the wait for room did not end with the writer");
        assert!(waited.is_err(), "room granted by a writer that is gone");
        assert_eq!(
            done_rx.await,
            Ok(true),
            "the writer did not report its failure"
        );
        assert!(matches!(
            out.try_send(Bytes::from_static(b"late")),
            Queue::Closed
        ));
    }
}
