//! The clearing store: one trait, a PostgreSQL and an SQLite implementation, and one
//! conformance suite (`tests/tests/store_conformance.rs`) that both pass.
//!
//! The write path is `ingest`: one call is one database transaction over a batch of
//! validated TXNs, and returns one answer per TXN. Nothing is answered before the
//! transaction has committed, so a STORED answer is a durable row.

pub mod backend;
mod clearing_sql;
pub mod cluster;
pub mod console;
mod ledger;
mod lite;
mod pg;
pub mod risk;

pub use backend::{AnyBackend, AnyTx};
pub use ledger::{AnyStore, Ledger, PgStore, SqliteStore};
pub use lite::{Lite, LiteTx};
pub use pg::{Pg, PgLimits, PgTx, tls_connector};
pub use risk::RiskStore;

// The vocabulary of the operations, defined beside the rules they belong to.
pub use crate::clearing::{
    AwardRow, ClearingReport, ClearingSummary, CreditRow, MerchantSettlement, StatisticsRow,
};
pub use crate::credits::{
    CardSeen, LoadAttempt, LoadDecision, LoadInitRequest, PushClaim, ResultReport,
};
pub use crate::points::{Activity, ActivityOutcome, HoldOutcome, HoldRequest};

use crate::registry::{MerchantId, Registry};
use std::future::Future;
use wenxiao_protocol::{BusinessDate, CardNo, DeviceId, Fen, Points, Reason, Seq, Txn, TxnStatus};

/// A failure of the store. All of these are ours, not the device's: the device is told
/// STORE_UNAVAILABLE and re-sends later.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed (connection, statement, commit).
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled PostgreSQL connection within the wait bound.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A blocking store task could not run.
    #[error("store task: {0}")]
    Task(String),
    /// A row holds a value our types cannot (a corrupted or foreign database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A business day was asked to be cleared before it ended in Asia/Shanghai.
    #[error("business day {date} has not ended yet (it ends at {ends_at_ms} ms since the epoch)")]
    DayNotEnded {
        /// The day.
        date: BusinessDate,
        /// Its 24:00 in Asia/Shanghai.
        ends_at_ms: i64,
    },
    /// The request cannot be carried out as asked (the message says why); nothing changed.
    #[error("refused: {0}")]
    Refused(String),
    /// A session's device lease was taken over: its write is refused, nothing changed.
    #[error("device {device}: lease epoch {epoch} is not the current one ({current:?})")]
    Fenced {
        /// The device.
        device: DeviceId,
        /// The session's epoch.
        epoch: u64,
        /// The lease's epoch now.
        current: Option<u64>,
    },
}

/// What the session proposes for a TXN after its own checks; the store decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposal {
    /// Valid: store it with these provisional figures (reason 2xx or NONE).
    Store {
        /// Why the subsidy is zero, or NONE.
        reason: Reason,
        /// Provisional subsidy.
        subsidy_fen: Fen,
        /// Points awarded.
        points_awarded: Points,
    },
    /// Invalid: record it as REJECTED with this reason (it is evidence).
    Reject(Reason),
}

/// One TXN on its way into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestTxn {
    /// The sending device.
    pub device_id: DeviceId,
    /// Its merchant, if it has one.
    pub merchant_id: Option<MerchantId>,
    /// The transaction as received.
    pub txn: Txn,
    /// The session's verdict.
    pub proposal: Proposal,
    /// Gateway clock at receipt.
    pub received_at_ms: i64,
    /// Business day of receipt (Asia/Shanghai).
    pub business_date: BusinessDate,
    /// The session's device lease epoch: the row is refused unless it is the device's
    /// lease now (`None`: not fenced, for tools and tests that write without a session).
    pub lease_epoch: Option<u64>,
}

/// The answer to one TXN: the fields of its TXN_ACK besides seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnAnswer {
    /// STORED, DUPLICATE or REJECTED.
    pub status: TxnStatus,
    /// Reason code.
    pub reason: Reason,
    /// Provisional subsidy.
    pub subsidy_fen: Fen,
    /// Points awarded.
    pub points_awarded: Points,
}

impl TxnAnswer {
    /// A REJECTED answer.
    pub const fn rejected(reason: Reason) -> Self {
        Self {
            status: TxnStatus::Rejected,
            reason,
            subsidy_fen: Fen::ZERO,
            points_awarded: Points(0),
        }
    }
}

/// The store's operations. Futures are `Send` so they can run on any worker.
pub trait Store: Send + Sync + 'static {
    /// The highest ledger-clock value this store instance has seen: a session stamps
    /// each CARD_PRESENTED and LOAD_INIT with it at receipt (`received_order`). It only
    /// under-states the store's clock, so a stamp never claims a request came later than
    /// it did.
    fn observed_order(&self) -> i64;

    /// Applies pending schema migrations (idempotent, safe from several nodes).
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits a batch in one transaction and answers each TXN, in order: STORED for new
    /// rows, the original answer again for an identical re-send (DUPLICATE, or REJECTED
    /// with its reason), REJECTED `SEQ_CONFLICT` for the same seq with other content
    /// (recorded as evidence), REJECTED `CARD_COUNTER_REPLAY` when the card already has a
    /// stored transaction with that counter value, REJECTED with the proposal's reason
    /// otherwise (recorded).
    /// Stored rows with a subsidy draw it from the month's and the programme's budget in
    /// the same transaction, in batch order: a row the budget cannot pay in full gets what
    /// is left, with BUDGET_EXHAUSTED. The total granted never exceeds either cap.
    fn ingest(
        &self,
        batch: &[IngestTxn],
        budget: &IngestCtx,
    ) -> impl Future<Output = Result<Vec<TxnAnswer>, StoreError>> + Send;

    /// As [`Store::ingest`], with each row's `lease_epoch` checked in the same
    /// transaction: a row whose epoch is not its device's lease now is not written and is
    /// answered `None` (never acknowledged). [`Store::ingest`] fails the batch with
    /// [`StoreError::Fenced`] instead.
    fn ingest_leased(
        &self,
        batch: &[IngestTxn],
        budget: &IngestCtx,
    ) -> impl Future<Output = Result<Vec<Option<TxnAnswer>>, StoreError>> + Send;

    /// The highest S such that every seq 1..=S of the device is recorded; `None` for 0.
    /// `floor`, when given, is a seq already known to be covered (this node saw it in the
    /// device's last session): the scan starts there instead of at the stored checkpoint.
    fn stored_seq(
        &self,
        device_id: DeviceId,
        floor: Option<Seq>,
    ) -> impl Future<Output = Result<Option<Seq>, StoreError>> + Send;

    /// Records that every seq ≤ `seq` of the device is recorded, so that `stored_seq`
    /// need not scan below it. Never moves a checkpoint backwards.
    fn checkpoint_stored_seq(
        &self,
        device_id: DeviceId,
        seq: Seq,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Inserts or updates every merchant and device of `registry`.
    fn import_registry(
        &self,
        registry: &Registry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads the whole registry.
    fn load_registry(&self) -> impl Future<Output = Result<Registry, StoreError>> + Send;

    /// Answers when the store can serve queries (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Clears business day `date` (idempotent: a second run changes nothing and returns
    /// the first run's summary). `fen_per_point` values redeemed points for merchants.
    /// Refused ([`StoreError::DayNotEnded`]) while `now_ms` is before the day's end in
    /// Asia/Shanghai. The day is closed first: a row that commits after that with this
    /// business date is stored with the next open day, so every stored row lands in
    /// exactly one clearing.
    fn clear_day(
        &self,
        date: BusinessDate,
        fen_per_point: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<ClearingSummary, StoreError>> + Send;

    /// The audit step: releases the day's credits. False when the day is not cleared;
    /// approving twice changes nothing.
    fn approve_day(
        &self,
        date: BusinessDate,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Everything a cleared day produced, in key order (for the settlement files).
    fn clearing_report(
        &self,
        date: BusinessDate,
    ) -> impl Future<Output = Result<Option<ClearingReport>, StoreError>> + Send;

    /// POINTS_AUTH: holds `points` of the card for a purchase, if the card has them free
    /// (holds past their expiry are released first). The 50 % cap is the caller's check.
    fn create_hold(
        &self,
        request: HoldRequest,
    ) -> impl Future<Output = Result<HoldOutcome, StoreError>> + Send;

    /// CARD_PRESENTED: settles the card's credit in doubt by its online counter, then
    /// binds to `device` and returns up to 16 released credits of the card (none while
    /// one stays in doubt).
    fn card_presented(
        &self,
        seen: CardSeen,
    ) -> impl Future<Output = Result<Vec<wenxiao_protocol::OfferedCredit>, StoreError>> + Send;

    /// LOAD_INIT: checks the credit is released, bound to this device and card, that no
    /// other load of the card is in doubt, and MAC1 (`mac1_ok` is given the amount), then
    /// records the attempt — all before the caller sends LOAD_AUTH.
    fn begin_load<F>(
        &self,
        request: LoadInitRequest,
        mac1_ok: F,
    ) -> impl Future<Output = Result<LoadDecision, StoreError>> + Send
    where
        F: FnOnce(Fen) -> bool + Send + 'static;

    /// CREDIT_RESULT: idempotent by credit id. LOADED needs a recorded attempt and a TAC
    /// that verifies against it (`tac_ok`); NOT_LOADED_RETRY releases a credit with no
    /// attempt (one with an attempt stays in doubt until the card is seen);
    /// NOT_LOADED_FINAL parks it.
    fn finish_load<F>(
        &self,
        report: ResultReport,
        tac_ok: F,
    ) -> impl Future<Output = Result<(wenxiao_protocol::ResultStatus, Reason), StoreError>> + Send
    where
        F: FnOnce(&LoadAttempt) -> bool + Send + 'static;

    /// Credits for an OTA endpoint: released credits of cards in `[from, to]` with no
    /// binding (or one lapsed without a load attempt) — and, when `include_bound`, those
    /// already bound to `device` (to push again after a reconnect) — bound to `device`,
    /// at most `limit`, oldest first.
    fn claim_pushes(
        &self,
        claim: PushClaim,
    ) -> impl Future<Output = Result<Vec<wenxiao_protocol::CreditPush>, StoreError>> + Send;

    /// The time of the latest approval (0 if none): what a gateway on a store without
    /// notifications polls to learn of newly released credits.
    fn latest_release_ms(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// A review or share reported by the app: awards its points once per card, day and
    /// kind, and only if the card signed in at that venue that day.
    fn award_activity(
        &self,
        activity: Activity,
    ) -> impl Future<Output = Result<ActivityOutcome, StoreError>> + Send;

    /// Changes the card blacklist: one new hot-list version when anything changes (adding
    /// a listed card or removing an unlisted one changes nothing). From the commit on, a
    /// listed card's purchases earn no subsidy (CARD_BLACKLISTED).
    fn change_hotlist(
        &self,
        change: HotlistChange,
    ) -> impl Future<Output = Result<HotlistChanged, StoreError>> + Send;

    /// The hot list's current version.
    fn hotlist_head(&self) -> impl Future<Output = Result<HotlistHead, StoreError>> + Send;

    /// The whole hot list, sorted, with the version it is.
    fn hotlist_full(
        &self,
    ) -> impl Future<Output = Result<(HotlistHead, Vec<CardNo>), StoreError>> + Send;

    /// The changes of versions `after + 1 ..= upto`, in order; `None` when some are no
    /// longer kept (a terminal that far behind needs the full list).
    fn hotlist_changes(
        &self,
        after: u32,
        upto: u32,
    ) -> impl Future<Output = Result<Option<Vec<HotlistVersionChanges>>, StoreError>> + Send;

    /// Records terminals' acknowledged hot-list versions: (device, version, at ms).
    fn record_hotlist_acks(
        &self,
        acks: Vec<(DeviceId, u32, i64)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Walks the audit log, recomputing its hash chain.
    fn verify_audit(
        &self,
    ) -> impl Future<Output = Result<crate::audit::Verdict, StoreError>> + Send;

    /// Puts one card on the blacklist (or takes it off), keeping the default number of
    /// versions' deltas: [`Store::change_hotlist`] for a single card.
    fn set_blacklisted(
        &self,
        card_no: CardNo,
        blacklisted: bool,
        reason: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records an organizer award (status recorded); returns its id.
    fn record_award(
        &self,
        award: AwardInput,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The audit step for an award: draws its whole amount from the budget of the show's
    /// month and the programme, or nothing.
    fn approve_award(
        &self,
        award_id: i64,
        budget: IngestCtx,
        approved_date: BusinessDate,
        now_ms: i64,
    ) -> impl Future<Output = Result<AwardApproval, StoreError>> + Send;
}

/// Queries for tests, audits and the end-of-run invariant check: nothing on the device
/// path uses them.
pub trait StoreAudit: Send + Sync + 'static {
    /// What a budget (a month `yyyymm`, or [`PROGRAMME_BUDGET_KEY`]) has granted.
    fn budget_granted(&self, key: i32) -> impl Future<Output = Result<Fen, StoreError>> + Send;

    /// A credit's status code and amount (for tests and audits).
    fn credit_state(
        &self,
        credit_id: wenxiao_protocol::CreditId,
    ) -> impl Future<Output = Result<Option<(i16, Fen)>, StoreError>> + Send;

    /// A card's points: (balance, held).
    fn points_balance(
        &self,
        card_no: CardNo,
    ) -> impl Future<Output = Result<(Points, Points), StoreError>> + Send;

    /// Number of rows recorded for a device: (stored, rejected). For tests and audits.
    fn count_txns(
        &self,
        device_id: DeviceId,
    ) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;

    /// A terminal's recorded acknowledged hot-list version.
    fn device_hotlist_version(
        &self,
        device_id: DeviceId,
    ) -> impl Future<Output = Result<Option<u32>, StoreError>> + Send;

    /// Whole-store figures for an end-of-run invariant check: every device's recorded
    /// seqs, the credits released and loaded, and what each budget granted.
    fn audit(&self) -> impl Future<Output = Result<AuditFigures, StoreError>> + Send;
}

/// A change of the card blacklist, made one hot-list version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotlistChange {
    /// Cards to list, each with its reason.
    pub add: Vec<(CardNo, String)>,
    /// Cards to take off.
    pub remove: Vec<CardNo>,
    /// Who or what made the change (`cli`, `import <file>`, `case 17`): kept with it.
    pub source: String,
    /// When.
    pub now_ms: i64,
    /// Versions whose changes stay kept for deltas (`hotlist.delta_versions_kept`).
    pub keep_versions: u32,
}

/// What a [`HotlistChange`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotlistChanged {
    /// The new version; `None` when nothing changed.
    pub version: Option<u32>,
    /// Cards newly listed.
    pub added: u64,
    /// Cards taken off.
    pub removed: u64,
}

/// The hot list's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HotlistHead {
    /// The version (0: nothing was ever listed).
    pub version: u32,
    /// When it was made.
    pub created_at_ms: i64,
    /// The highest version whose changes are no longer kept: a delta can be built from
    /// any version at or above it.
    pub delta_floor: u32,
}

/// The cards one version changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotlistVersionChanges {
    /// The version.
    pub version: u32,
    /// When it was made.
    pub created_at_ms: i64,
    /// Each card it changed: true listed, false taken off.
    pub changes: Vec<(CardNo, bool)>,
}

/// One device's recorded transactions, for an audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAudit {
    /// The device.
    pub device_id: DeviceId,
    /// Rows recorded (stored and rejected); the key (device, seq) is unique.
    pub rows: i64,
    /// Lowest seq recorded.
    pub min_seq: i64,
    /// Highest seq recorded.
    pub max_seq: i64,
    /// Rows stored (not rejected).
    pub stored: i64,
    /// Provisional subsidy of the stored rows.
    pub subsidy_fen: Fen,
}

/// What [`Store::audit`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFigures {
    /// Every device with a recorded transaction, by id.
    pub devices: Vec<DeviceAudit>,
    /// Credits released by the audit step (released, loaded or parked): count, amount.
    pub released: (i64, Fen),
    /// Credits loaded onto cards: count, amount.
    pub loaded: (i64, Fen),
    /// Each budget (a month `yyyymm`, or [`PROGRAMME_BUDGET_KEY`]) and what it granted.
    pub budgets: Vec<(i32, Fen)>,
}

/// The audit's queries: plain SQL that both stores run as written.
pub(crate) mod audit_sql {
    /// Per device: rows, lowest and highest seq, stored rows, their subsidy.
    pub(crate) const DEVICES: &str = "SELECT device_id, CAST(COUNT(*) AS BIGINT), MIN(seq), MAX(seq), \
         CAST(SUM(CASE WHEN status = 1 THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN status = 1 THEN subsidy_fen ELSE 0 END) AS BIGINT) \
         FROM txns GROUP BY device_id ORDER BY device_id";
    /// Released and loaded credits: count and amount of each.
    pub(crate) const CREDITS: &str = "SELECT \
         CAST(COALESCE(SUM(CASE WHEN status IN (2, 3, 4) THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN status IN (2, 3, 4) THEN amount_fen ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN status = 3 THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN status = 3 THEN amount_fen ELSE 0 END), 0) AS BIGINT) \
         FROM credits";
    /// Granted per budget, over its shards.
    pub(crate) const BUDGETS: &str = "SELECT budget_key, CAST(SUM(granted_fen) AS BIGINT) \
         FROM budget_shards GROUP BY budget_key ORDER BY budget_key";
}

/// An organizer award as entered by staff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwardInput {
    /// The performance organizer.
    pub merchant_id: MerchantId,
    /// The show's date.
    pub show_date: BusinessDate,
    /// 1 national-level troupe, 2 national-award work.
    pub kind: i16,
    /// The award (from the policy for the kind).
    pub amount_fen: Fen,
    /// What proves the show qualifies (document references).
    pub evidence: String,
    /// Now.
    pub now_ms: i64,
}

/// The outcome of approving an award.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwardApproval {
    /// Approved now; the budget paid it.
    Approved,
    /// It was approved before.
    AlreadyApproved,
    /// No such award.
    Unknown,
    /// The budget cannot pay it whole: left as recorded.
    BudgetExhausted,
}

// ---------------------------------------------------------------------------------------
// Row mapping shared by both implementations.
// ---------------------------------------------------------------------------------------

/// A u64 stored bit-for-bit in a signed 64-bit column.
pub(crate) const fn db_u64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The inverse of [`db_u64`].
pub(crate) const fn from_db_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Walks seqs above a checkpoint: returns the new contiguous watermark and whether the
/// walk may continue past this page.
pub(crate) fn advance_watermark(mut watermark: u64, page: &[i64]) -> (u64, bool) {
    for &s in page {
        let s = from_db_u64(s);
        if s == watermark.saturating_add(1) {
            watermark = s;
        } else if s > watermark {
            return (watermark, false);
        }
    }
    (watermark, true)
}

/// Migrations, in order: (version, SQL). Written for PostgreSQL; the embedded backend
/// rewrites the few column types SQLite spells differently, so there is one schema to keep
/// true.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_budget.sql")),
    (3, include_str!("migrations/0003_clearing.sql")),
    (4, include_str!("migrations/0004_points.sql")),
    (5, include_str!("migrations/0005_credit_loads.sql")),
    (6, include_str!("migrations/0006_awards.sql")),
    (7, include_str!("migrations/0007_blacklist.sql")),
    (8, include_str!("migrations/0008_refund_reversal.sql")),
    (9, include_str!("migrations/0009_closed_days.sql")),
    (10, include_str!("migrations/0010_ledger_clock.sql")),
    (11, include_str!("migrations/0011_hotlist.sql")),
    (12, include_str!("migrations/0012_risk.sql")),
    (13, include_str!("migrations/0013_audit.sql")),
    (14, include_str!("migrations/0014_console.sql")),
    (15, include_str!("migrations/0015_console_indexes.sql")),
    (16, include_str!("migrations/0016_scale_out.sql")),
    (17, include_str!("migrations/0017_credits_day_include.sql")),
];

// ---------------------------------------------------------------------------------------
// The budget, enforced at ingest.
// ---------------------------------------------------------------------------------------

/// Shards per budget: enough that 4–8 writers rarely share one.
pub const BUDGET_SHARDS: i32 = 8;
const BUDGET_SHARDS_USIZE: usize = 8;
/// The budget key of the whole programme; months use `yyyymm`.
pub const PROGRAMME_BUDGET_KEY: i32 = 0;

/// What an ingest transaction needs besides the rows: the budget caps, which budget shard
/// this writer draws from, and the points a sign-in earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestCtx {
    /// Cap of each calendar month.
    pub monthly_cap: Fen,
    /// Cap of the programme.
    pub programme_cap: Fen,
    /// This writer's shard, `0..BUDGET_SHARDS`.
    pub shard: i32,
    /// Points for a card's first sign-in of a day.
    pub sign_in_points: Points,
}

impl IngestCtx {
    /// Caps from the policy, drawing from `shard` (reduced modulo [`BUDGET_SHARDS`]).
    pub fn new(policy: &crate::policy::Policy, shard: usize) -> Self {
        Self {
            monthly_cap: policy.monthly_cap(),
            programme_cap: policy.programme_total(),
            shard: i32::try_from(shard % BUDGET_SHARDS_USIZE).unwrap_or(0),
            sign_in_points: Points(policy.points.sign_in_points),
        }
    }

    /// The cap of one shard of a budget of `cap`: an even split, the remainder on shard 0.
    pub(crate) fn shard_cap(cap: Fen, shard: i32) -> i64 {
        let n = i64::from(BUDGET_SHARDS);
        cap.get() / n + if shard == 0 { cap.get() % n } else { 0 }
    }
}
