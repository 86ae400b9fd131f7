//! The ingest path: one bounded queue shared by every session, drained by store writers
//! that commit in batches (group commit) and answer each TXN only after its batch has
//! committed.
//!
//! Batches form naturally: while one commit is in flight, TXNs pile up in the queue, and
//! the next writer takes up to `batch_rows_max` of them at once. `batch_linger_us` can add
//! a short wait for more rows when a batch would be small.

use crate::config::IngestConfig;
use crate::metrics as m;
use crate::policy::Policy;
use crate::store::{AnyStore, IngestCtx, IngestTxn, Store, TxnAnswer};
use actix::{Message, Recipient};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use wenxiao_protocol::Seq;

/// One TXN waiting for a writer, with where to send its answer.
#[derive(Debug)]
pub struct IngestItem {
    /// The TXN and the session's proposal.
    pub txn: IngestTxn,
    /// The session to answer.
    pub reply: Recipient<TxnDone>,
    /// When the session received it (for the ack-latency histogram).
    pub received: Instant,
}

/// The answer to one TXN, sent to its session after the commit (or the give-up).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TxnDone {
    /// The TXN's seq.
    pub seq: Seq,
    /// The committed answer, or why there is none.
    pub answer: Result<TxnAnswer, Unanswered>,
    /// When the session received it.
    pub received: Instant,
}

/// Why a TXN gets no answer: it must not be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The store could not commit within `store_wait_ms`.
    StoreUnavailable,
    /// Its session's device lease was taken over: the store refused the row.
    Fenced,
}

/// The sessions' side of the queue.
pub type IngestSender = mpsc::Sender<IngestItem>;

/// Creates the queue (bounded by `queue_txns_max`) and starts `writers` writer tasks on
/// the current runtime (the store runtime). The writers end when every sender is gone
/// and the queue is empty; await the returned handles to know they have.
pub fn start(
    store: AnyStore,
    config: &IngestConfig,
    policy: &Policy,
    caps: Arc<BudgetCaps>,
    health: Arc<WriterHealth>,
    risk: Option<Arc<crate::risk::worker::RiskFeed>>,
) -> (IngestSender, Vec<tokio::task::JoinHandle<()>>) {
    // Writers draw on consecutive budget shards from a random start, so the writers of
    // several gateway nodes spread over the shards too.
    let first_shard = usize::from(rand::random::<u8>());
    let (tx, rx) = mpsc::channel(config.queue_txns_max);
    let rx = Arc::new(Mutex::new(rx));
    // SQLite has one writer connection: more writers would only queue on it.
    let writers = if store.is_postgres() {
        config.writers
    } else {
        1
    };
    let handles = (0..writers)
        .map(|n| {
            let w = Writer {
                budget: IngestCtx::new(policy, first_shard + n),
                caps: Arc::clone(&caps),
                health: Arc::clone(&health),
                store: store.clone(),
                rx: Arc::clone(&rx),
                config: config.clone(),
                queue: tx.downgrade(),
                risk: risk.clone(),
            };
            tokio::spawn(supervise(w))
        })
        .collect();
    (tx, handles)
}

/// Offers a committed answer to the fraud rules (re-sends answered DUPLICATE were
/// offered when first answered).
fn offer_to_rules(risk: &crate::risk::worker::RiskFeed, t: &IngestTxn, a: &TxnAnswer) {
    use crate::risk::worker::Fed;
    use wenxiao_protocol::TxnStatus;
    let fed = match a.status {
        TxnStatus::Stored => Fed::Stored(
            crate::risk::engine::Fact {
                device_id: t.device_id,
                seq: t.txn.seq.get(),
                merchant_id: t.merchant_id,
                kind: t.txn.kind,
                card_no: t.txn.card_no,
                card_counter: t.txn.card_counter.get(),
                amount_fen: t.txn.amount_fen,
                subsidy_fen: a.subsidy_fen,
                occurred_at_ms: t.txn.occurred_at_ms.0,
                received_at_ms: t.received_at_ms,
                business_date: t.business_date,
                refund_of: None,
            },
            t.txn.refund_of_seq.map_or(0, |s| s.get()),
        ),
        TxnStatus::Rejected => Fed::Rejected(t.device_id, t.txn.seq.get()),
        TxnStatus::Duplicate => return,
    };
    risk.offer(fed, t.received_at_ms);
}

/// Runs a writer, and runs it again if its task ends by a panic outside a batch (a batch's
/// own panics are caught and answered in [`Writer::commit`]); ends when the queue is closed
/// and empty.
async fn supervise(w: Writer) {
    use futures_util::FutureExt;
    // A writer holds only its configuration and shared handles: a restart is a clone.
    while std::panic::AssertUnwindSafe(w.clone().run())
        .catch_unwind()
        .await
        .is_err()
    {
        metrics::counter!(m::INGEST_WRITER_RESTARTS_TOTAL).increment(1);
        tracing::error!("ingest writer panicked: started again");
    }
}

/// How the writers are doing, for `/readyz`: a node whose writers cannot commit should
/// not be sent devices. The latest batch of any writer decides: a failure makes the node
/// unready, the next commit ready again.
#[derive(Debug, Default)]
pub struct WriterHealth {
    last_failed: std::sync::atomic::AtomicBool,
}

impl WriterHealth {
    /// Whether the latest batch any writer finished was answered STORE_UNAVAILABLE.
    pub fn failing(&self) -> bool {
        self.last_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn report(&self, failed: bool) {
        self.last_failed
            .store(failed, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(m::INGEST_WRITERS_FAILING).set(if failed { 1.0 } else { 0.0 });
    }
}

/// The budget caps the writers grant within, read again from the policy while the gateway
/// runs: each batch takes the caps current when it starts.
#[derive(Debug)]
pub struct BudgetCaps {
    monthly_fen: std::sync::atomic::AtomicI64,
    programme_fen: std::sync::atomic::AtomicI64,
}

impl BudgetCaps {
    /// The caps of `policy`.
    pub fn of(policy: &Policy) -> Self {
        Self {
            monthly_fen: policy.monthly_cap().get().into(),
            programme_fen: policy.programme_total().get().into(),
        }
    }

    /// Takes the caps of `policy` from the next batch on.
    pub fn set(&self, policy: &Policy) {
        use std::sync::atomic::Ordering::Relaxed;
        self.monthly_fen.store(policy.monthly_cap().get(), Relaxed);
        self.programme_fen
            .store(policy.programme_total().get(), Relaxed);
    }

    /// Takes these caps from the next batch on (the policy's, or an approved override).
    pub fn set_fen(&self, monthly_fen: i64, programme_fen: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.monthly_fen.store(monthly_fen, Relaxed);
        self.programme_fen.store(programme_fen, Relaxed);
    }

    /// The caps in force: (monthly, programme) fen.
    pub fn fen(&self) -> (i64, i64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.monthly_fen.load(Relaxed),
            self.programme_fen.load(Relaxed),
        )
    }

    /// `ctx` with the current caps.
    fn apply(&self, ctx: IngestCtx) -> IngestCtx {
        use std::sync::atomic::Ordering::Relaxed;
        IngestCtx {
            monthly_cap: wenxiao_protocol::Fen(self.monthly_fen.load(Relaxed)),
            programme_cap: wenxiao_protocol::Fen(self.programme_fen.load(Relaxed)),
            ..ctx
        }
    }
}

#[derive(Clone)]
struct Writer {
    budget: IngestCtx,
    caps: Arc<BudgetCaps>,
    health: Arc<WriterHealth>,
    store: AnyStore,
    rx: Arc<Mutex<mpsc::Receiver<IngestItem>>>,
    config: IngestConfig,
    queue: mpsc::WeakSender<IngestItem>,
    /// The fraud rules' queue, offered every newly answered TXN after its commit.
    risk: Option<Arc<crate::risk::worker::RiskFeed>>,
}

impl Writer {
    async fn run(self) {
        let mut items = Vec::with_capacity(self.config.batch_rows_max);
        loop {
            items.clear();
            if !self.take_batch(&mut items).await {
                return;
            }
            if let Some(q) = self.queue.upgrade() {
                let depth = q.max_capacity().saturating_sub(q.capacity());
                metrics::gauge!(m::INGEST_QUEUE_TXNS).set(depth as f64);
            }
            let batch: Vec<IngestTxn> = items.iter().map(|i| i.txn).collect();
            let answers = self.commit(&batch).await;
            for (idx, item) in items.drain(..).enumerate() {
                let answer = match &answers {
                    Ok(a) => match a.get(idx).copied() {
                        Some(Some(a)) => Ok(a),
                        Some(None) => Err(Unanswered::Fenced),
                        None => Err(Unanswered::StoreUnavailable),
                    },
                    Err(()) => Err(Unanswered::StoreUnavailable),
                };
                if let (Some(risk), Ok(a)) = (&self.risk, &answer) {
                    offer_to_rules(risk, &item.txn, a);
                }
                item.reply.do_send(TxnDone {
                    seq: item.txn.txn.seq,
                    answer,
                    received: item.received,
                });
            }
        }
    }

    /// Fills `items` with up to `batch_rows_max` queued TXNs; false when the queue is
    /// closed and empty.
    async fn take_batch(&self, items: &mut Vec<IngestItem>) -> bool {
        let max = self.config.batch_rows_max;
        let mut rx = self.rx.lock().await;
        if rx.recv_many(items, max).await == 0 {
            return false;
        }
        if self.config.batch_linger_us > 0 && items.len() < max {
            let deadline =
                tokio::time::Instant::now() + Duration::from_micros(self.config.batch_linger_us);
            while items.len() < max {
                match tokio::time::timeout_at(deadline, rx.recv_many(items, max - items.len()))
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        true
    }

    /// Commits with retries until `store_wait_ms` has passed. Each attempt is bounded by
    /// what is left of that wait. A statement that hangs is abandoned and the batch is
    /// answered STORE_UNAVAILABLE, never acknowledged; its outcome is unknown, since a
    /// pipelined COMMIT may already be on its way behind it (the connection then rolls
    /// back only what did not commit). The device re-sends, and learns it: STORED, or
    /// DUPLICATE for a batch that did commit. A panic inside an attempt is caught and
    /// answered the same way.
    async fn commit(&self, batch: &[IngestTxn]) -> Result<Vec<Option<TxnAnswer>>, ()> {
        use futures_util::FutureExt;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.config.store_wait_ms);
        let failed = |reason: &'static str| {
            metrics::counter!(m::INGEST_BATCHES_FAILED_TOTAL, "reason" => reason).increment(1);
        };
        let outcome = loop {
            let ctx = self.caps.apply(self.budget);
            let attempt =
                std::panic::AssertUnwindSafe(self.store.ingest_leased(batch, &ctx)).catch_unwind();
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, attempt).await {
                Ok(Ok(Ok(answers))) => {
                    metrics::histogram!(m::STORE_COMMIT_SECONDS).record(started.elapsed());
                    metrics::histogram!(m::INGEST_BATCH_ROWS).record(batch.len() as f64);
                    break Ok(answers);
                }
                Ok(Ok(Err(e))) => {
                    metrics::counter!(m::STORE_ERRORS_TOTAL).increment(1);
                    if Instant::now() + Duration::from_millis(self.config.store_retry_ms) > deadline
                    {
                        tracing::error!(error = %e, rows = batch.len(), "store unavailable, giving up on batch");
                        failed("store_error");
                        break Err(());
                    }
                    tracing::warn!(error = %e, rows = batch.len(), "store commit failed, retrying");
                    tokio::time::sleep(Duration::from_millis(self.config.store_retry_ms)).await;
                }
                Ok(Err(_)) => {
                    tracing::error!(
                        rows = batch.len(),
                        "ingest panicked: batch answered STORE_UNAVAILABLE"
                    );
                    failed("panic");
                    break Err(());
                }
                Err(_) => {
                    tracing::error!(
                        rows = batch.len(),
                        wait_ms = self.config.store_wait_ms,
                        "store did not answer within the store wait: batch answered STORE_UNAVAILABLE"
                    );
                    failed("timeout");
                    break Err(());
                }
            }
        };
        self.health.report(outcome.is_err());
        outcome
    }
}
