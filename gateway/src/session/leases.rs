//! The HELLO path's store work in batches: one transaction takes the device leases of
//! every HELLO queued meanwhile, then one read finds their `stored_seq`s (group commit, as
//! the ingest writers do for TXNs). A reconnect storm of thousands of devices then costs tens of
//! transactions, not thousands, and holds `session.hello_writers` pooled connections, not
//! the whole pool.

use crate::clock;
use crate::metrics as m;
use crate::store::AnyStore;
use crate::store::cluster::ClusterStore;
use futures_util::FutureExt;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};
use wenxiao_protocol::{DeviceId, Seq};

/// What a HELLO asks of the store: the lease's epoch and the device's `stored_seq`.
#[derive(Debug)]
pub(super) struct WelcomeAsk {
    /// The device.
    pub(super) device: DeviceId,
    /// A floor for its `stored_seq` walk (this node's watermark of its last session).
    pub(super) floor: Option<Seq>,
    /// Where the answer goes: `None` when the store failed (logged by the writer).
    pub(super) reply: oneshot::Sender<Option<(u64, Option<Seq>)>>,
}

/// The sessions' side of the queue.
pub(super) type WelcomeSender = mpsc::Sender<WelcomeAsk>;

/// Creates the queue (`queue_max` HELLOs) and starts `writers` lease writers on the
/// current runtime (one on the embedded store), each taking at most `batch_max` HELLOs
/// per transaction. The writers end when every sender is gone.
pub(super) fn start(
    store: AnyStore,
    node: String,
    queue_max: usize,
    batch_max: usize,
    writers: usize,
) -> WelcomeSender {
    let (tx, rx) = mpsc::channel(queue_max);
    let rx = Arc::new(Mutex::new(rx));
    let writers = if store.is_postgres() { writers } else { 1 };
    for _ in 0..writers {
        tokio::spawn(write(
            store.clone(),
            node.clone(),
            Arc::clone(&rx),
            batch_max,
        ));
    }
    tx
}

async fn write(
    store: AnyStore,
    node: String,
    rx: Arc<Mutex<mpsc::Receiver<WelcomeAsk>>>,
    batch_max: usize,
) {
    let mut batch = Vec::with_capacity(batch_max);
    loop {
        {
            // One writer gathers at a time; the others commit meanwhile.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, batch_max).await == 0 {
                return;
            }
        }
        // A session that gave up (closed before its WELCOME) needs no lease.
        batch.retain(|a: &WelcomeAsk| !a.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!(m::WELCOME_BATCH_HELLOS).record(batch.len() as f64);
        let asked = batch.iter().map(|a| (a.device, a.floor)).collect();
        let work = store.welcome_batch(asked, node.clone(), clock::now_ms());
        // A panic (a bug) fails this batch, not the writer: it goes on with the next.
        match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(Ok(answers)) => {
                for (a, answer) in batch.drain(..).zip(answers) {
                    let _ = a.reply.send(Some(answer));
                }
            }
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, hellos = batch.len(), "device leases not taken");
                        "store_error"
                    }
                    _ => {
                        tracing::error!(hellos = batch.len(), "lease writer panicked: a bug");
                        "panic"
                    }
                };
                metrics::counter!(m::WELCOME_BATCHES_FAILED_TOTAL, "reason" => reason).increment(1);
                for a in batch.drain(..) {
                    let _ = a.reply.send(None);
                }
            }
        }
    }
}
