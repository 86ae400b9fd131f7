//! The rules off the ack path: the ingest writers offer each answered transaction to a
//! bounded queue after its batch committed; one task evaluates them and records the
//! alerts. Acks never wait for it.
//!
//! When the queue is full the offer is dropped and the earliest receipt time dropped is
//! remembered; the task then reads the stored transactions received since from the store
//! (the engine skips those it has seen), so an overflow delays alerts but loses none. At
//! start the task rebuilds its state the same way, from the store's last days.

use super::config::RiskConfig;
use super::engine::{Alert, Engine, Fact, Place, Places, RefundOf};
use crate::metrics as m;
use crate::store::risk::{NewAlert, RiskStore};
use crate::store::{AnyStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use wenxiao_protocol::{BusinessDate, DeviceId, TxnKind};

/// One answered transaction, as the ingest writers offer it.
#[derive(Debug, Clone, Copy)]
pub enum Fed {
    /// Stored: the rules evaluate it (with, for a refund, its purchase's seq; the task
    /// reads the purchase from the store).
    Stored(Fact, u64),
    /// Rejected: only its seq counts as seen.
    Rejected(DeviceId, u64),
}

/// The writers' side of the rules' queue.
#[derive(Debug)]
pub struct RiskFeed {
    tx: mpsc::Sender<Fed>,
    /// The earliest receipt time of an offer dropped because the queue was full;
    /// `i64::MAX` when none is waiting to be caught up.
    dropped_since_ms: AtomicI64,
}

/// Facts one store page of a rebuild or catch-up holds.
pub const CATCH_UP_PAGE_ROWS: i64 = 10_000;
/// Queued facts the task takes at once.
pub const TAKE_FACTS_MAX: usize = 1_024;
/// How often the task looks for a needed catch-up and sets its gauges.
pub const TICK_MS: u64 = 1_000;
/// Alerts held while the store cannot record them; past it the oldest are dropped and
/// counted in `wenxiao_risk_alerts_unrecorded_total`.
pub const PENDING_ALERTS_MAX: usize = 100_000;

impl RiskFeed {
    /// A feed whose queue holds `queue_txns_max` offers.
    pub fn new(queue_txns_max: usize) -> (Arc<Self>, mpsc::Receiver<Fed>) {
        let (tx, rx) = mpsc::channel(queue_txns_max);
        (
            Arc::new(Self {
                tx,
                dropped_since_ms: AtomicI64::new(i64::MAX),
            }),
            rx,
        )
    }

    /// Offers an answered transaction received at `received_at_ms`; never waits.
    pub fn offer(&self, fed: Fed, received_at_ms: i64) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(fed) {
            self.dropped_since_ms
                .fetch_min(received_at_ms, Ordering::AcqRel);
            metrics::counter!(m::RISK_QUEUE_OVERFLOWS_TOTAL).increment(1);
        }
    }

    /// Whether offers were dropped that no catch-up has read back yet.
    fn dropping(&self) -> bool {
        self.dropped_since_ms.load(Ordering::Acquire) != i64::MAX
    }

    fn take_dropped_since(&self) -> Option<i64> {
        match self.dropped_since_ms.swap(i64::MAX, Ordering::AcqRel) {
            i64::MAX => None,
            t => Some(t),
        }
    }
}

/// The alerts' store form: one per rule hit.
pub fn store_alerts(alerts: &[Alert]) -> Vec<NewAlert> {
    let mut out = Vec::new();
    for a in alerts {
        for h in &a.hits {
            out.push(NewAlert {
                rule: h.rule.name(),
                subject: a.subject,
                business_date: a.business_date,
                band: h.band.code(),
                figures: h.figures.clone(),
                evidence: h.evidence.clone(),
                at_ms: a.at_ms,
            });
        }
    }
    out
}

/// The rules task: its engine, and the store it reads and records to.
pub struct Rules {
    engine: Engine,
    store: AnyStore,
    /// The latest business day seen, for pruning.
    today: Option<BusinessDate>,
    /// Alerts of evaluated facts not yet recorded (the store failed): their facts count
    /// as seen, so they are kept here and recorded at the next chance.
    pending: Vec<NewAlert>,
    /// Devices first seen from the queue while offers were being dropped: their earlier
    /// facts may be among the dropped, so their seq baseline is set only after the
    /// catch-up has read those back.
    unsettled: std::collections::HashSet<DeviceId>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules").field("today", &self.today).finish()
    }
}

impl Rules {
    /// An engine over the store's merchant places and purchase history, its state
    /// rebuilt from the stored transactions of the days its rules look back on.
    pub async fn rebuild(
        config: RiskConfig,
        store: AnyStore,
        today: BusinessDate,
    ) -> Result<Self, StoreError> {
        let places: Places = store
            .merchant_places()
            .await?
            .into_iter()
            .map(|(m, lat, lon)| (m, Place::new(lat, lon)))
            .collect();
        let back = config
            .late_days_max
            .max(config.refund.window_days.saturating_add(1));
        let mut rules = Self {
            engine: Engine::new(config, places),
            store,
            today: None,
            pending: Vec::new(),
            unsettled: std::collections::HashSet::new(),
        };
        let history_from = days_before(today, 28);
        let yesterday = days_before(today, 1);
        for (merchant, date, count) in rules
            .store
            .merchant_day_purchases(history_from, yesterday)
            .await?
        {
            rules.engine.load_history(merchant, date, count);
        }
        rules.engine.prune(today);
        rules.today = Some(today);
        let started = Instant::now();
        let n = rules.catch_up(days_before(today, back), None).await?;
        tracing::info!(
            facts = n,
            ms = started.elapsed().as_millis(),
            "fraud rules rebuilt from the store"
        );
        Ok(rules)
    }

    /// Evaluates the stored transactions of days from `from` received at or after
    /// `since_ms` (all when `None`); those seen already change nothing. Returns the
    /// number read.
    async fn catch_up(
        &mut self,
        from: BusinessDate,
        since_ms: Option<i64>,
    ) -> Result<u64, StoreError> {
        // Just before `since_ms`: the store orders ids as signed integers, whose largest
        // is i64::MAX.
        const LAST_ID: u64 = 0x7FFF_FFFF_FFFF_FFFF;
        let mut after = since_ms.map(|t| (t.saturating_sub(1), DeviceId(LAST_ID), LAST_ID));
        let mut read = 0_u64;
        loop {
            let page = self
                .store
                .stored_facts(from, after, CATCH_UP_PAGE_ROWS)
                .await?;
            let Some(last) = page.last() else {
                return Ok(read);
            };
            after = Some((last.fact.received_at_ms, last.fact.device_id, last.fact.seq));
            read += page.len() as u64;
            for row in &page {
                if row.rejected {
                    self.rejected(row.fact.device_id, row.fact.seq, true);
                    continue;
                }
                let alerts = self.evaluate(row.fact, row.refund_of_seq, true).await?;
                self.hold(&alerts);
            }
            self.flush().await?;
            if page.len() < usize::try_from(CATCH_UP_PAGE_ROWS).unwrap_or(usize::MAX) {
                return Ok(read);
            }
        }
    }

    /// The first seq of a device this engine sees: with `baseline` (read from the store
    /// in order, or offered while nothing was dropped) the seqs before it are not this
    /// engine's; without, the baseline waits for the catch-up.
    fn first_of_device(&mut self, device: DeviceId, seq: u64, baseline: bool) {
        if self.engine.knows_device(device) {
            return;
        }
        if baseline {
            self.engine.skip_through(device, seq.saturating_sub(1));
        } else {
            self.unsettled.insert(device);
        }
    }

    /// A rejected transaction: only its seq counts as seen.
    fn rejected(&mut self, device: DeviceId, seq: u64, baseline: bool) {
        self.first_of_device(device, seq, baseline);
        self.engine.mark_seen(device, seq);
    }

    /// Evaluates one fact: a refund first gets its purchase from the store.
    async fn evaluate(
        &mut self,
        mut fact: Fact,
        refund_of_seq: u64,
        baseline: bool,
    ) -> Result<Vec<Alert>, StoreError> {
        self.first_of_device(fact.device_id, fact.seq, baseline);
        if self.engine.seen(fact.device_id, fact.seq) {
            return Ok(Vec::new());
        }
        if fact.kind == TxnKind::Refund && refund_of_seq != 0 {
            fact.refund_of = self
                .store
                .purchase_ref(fact.device_id, refund_of_seq)
                .await?
                .map(|p| RefundOf {
                    purchase_seq: refund_of_seq,
                    purchase_occurred_at_ms: p.occurred_at_ms,
                    purchase_amount_fen: p.amount_fen,
                    purchase_subsidy_fen: p.subsidy_fen,
                });
        }
        if self.today.is_none_or(|t| fact.business_date > t) {
            self.today = Some(fact.business_date);
            self.engine.prune(fact.business_date);
        }
        let started = Instant::now();
        let alerts = self.engine.evaluate(&fact);
        metrics::histogram!(m::RISK_EVALUATION_SECONDS).record(started.elapsed());
        metrics::counter!(m::RISK_FACTS_TOTAL).increment(1);
        Ok(alerts)
    }

    /// Keeps an evaluation's alerts until [`Rules::flush`] records them.
    fn hold(&mut self, alerts: &[Alert]) {
        for a in store_alerts(alerts) {
            metrics::counter!(m::RISK_ALERTS_TOTAL, "rule" => a.rule).increment(1);
            self.pending.push(a);
        }
        if self.pending.len() > PENDING_ALERTS_MAX {
            let n = self.pending.len() - PENDING_ALERTS_MAX;
            self.pending.drain(..n);
            metrics::counter!(m::RISK_ALERTS_UNRECORDED_TOTAL).increment(n as u64);
            tracing::error!(
                dropped = n,
                "fraud alerts dropped: the store has not recorded them"
            );
        }
    }

    /// Records the held alerts; on failure they stay held.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let recorded = self.store.record_alerts(self.pending.clone()).await?;
        self.pending.clear();
        tracing::info!(recorded, "fraud alerts recorded");
        Ok(())
    }

    /// Runs until the feed's senders are gone: takes queued facts, evaluates them,
    /// records alerts, and catches up from the store after an overflow.
    pub async fn run(mut self, feed: Arc<RiskFeed>, mut rx: mpsc::Receiver<Fed>) {
        let mut batch = Vec::with_capacity(TAKE_FACTS_MAX);
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, TAKE_FACTS_MAX) => {
                    if n == 0 {
                        return;
                    }
                    // While offers are being dropped, a device's first offer may not be
                    // its first fact.
                    let baseline = !feed.dropping();
                    if let Err(e) = self.take(&mut batch, baseline).await {
                        tracing::warn!(error = %e, "fraud rules: store failed; catching up later");
                        // What this batch held is in the store: read it again later.
                        let since = batch.iter().filter_map(|f| match f {
                            Fed::Stored(f, _) => Some(f.received_at_ms),
                            Fed::Rejected(..) => None,
                        }).min().unwrap_or(i64::MAX);
                        feed.dropped_since_ms.fetch_min(since, Ordering::AcqRel);
                    }
                    batch.clear();
                }
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, held = self.pending.len(), "fraud alerts not recorded yet");
                    }
                    if let Some(since) = feed.take_dropped_since() {
                        let Some(from) = crate::clock::business_date(since).or(self.today) else {
                            continue;
                        };
                        match self.catch_up(from, Some(since)).await {
                            Ok(n) => {
                                // Settled once nothing more was dropped meanwhile.
                                if !feed.dropping() {
                                    for d in std::mem::take(&mut self.unsettled) {
                                        self.engine.settle_baseline(d);
                                    }
                                }
                                metrics::counter!(m::RISK_CAUGHT_UP_TOTAL).increment(n);
                                tracing::info!(facts = n, "fraud rules caught up from the store");
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "fraud rules catch-up failed");
                                feed.dropped_since_ms.fetch_min(since, Ordering::AcqRel);
                            }
                        }
                    }
                    let s = self.engine.stats();
                    metrics::gauge!(m::RISK_CARDS).set(s.cards_count as f64);
                    metrics::gauge!(m::RISK_QUEUE_FACTS)
                        .set(rx.len() as f64);
                }
            }
        }
    }

    async fn take(&mut self, batch: &mut [Fed], baseline: bool) -> Result<(), StoreError> {
        for f in batch.iter() {
            match *f {
                Fed::Stored(fact, refund_of_seq) => {
                    let alerts = self.evaluate(fact, refund_of_seq, baseline).await?;
                    self.hold(&alerts);
                }
                Fed::Rejected(device, seq) => self.rejected(device, seq, baseline),
            }
        }
        self.flush().await
    }

    /// The engine (tests and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// `n` days before `date` (the date itself when out of range).
pub fn days_before(date: BusinessDate, n: u32) -> BusinessDate {
    let mut d = date;
    for _ in 0..n {
        match crate::clock::previous_day(d) {
            Some(p) => d = p,
            None => break,
        }
    }
    d
}
