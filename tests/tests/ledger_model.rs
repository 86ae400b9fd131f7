//! Model-based test of the clearing store, run against both stores: a seeded random stream
//! of ingest batches (purchases with and without points holds, refunds, sign-ins, re-sends,
//! seq conflicts, card-counter replays, copies inside one batch), points holds, app
//! activities, blacklist changes, small budget caps, clearing and approval runs, applied
//! to the store and to a reference model written from `shared/spec/policy.md` and the
//! decisions of `docs/protocol.md` (and the `Store` trait's documentation) alone — not from
//! the ledger's code. Every answer is compared after every operation; the figures (budget
//! granted, points balances, rows per device, clearing summaries and card credits) every
//! few operations and at the end. A disagreement is shrunk to the shortest failing prefix
//! of the stream (fresh store per attempt) and reported with its seed.
//!
//! Environment: `WENXIAO_MODEL_SEEDS` (number of seeds, default 25) and
//! `WENXIAO_MODEL_OPS` (operations per seed, default 400) make a longer run;
//! `WENXIAO_MODEL_SEED` runs only that seed and `WENXIAO_MODEL_PREFIX` only the first
//! operations of its stream (the stream depends on the seed and on `WENXIAO_MODEL_OPS`, so
//! replay with both). `WENXIAO_MODEL_SECS` bounds the wall clock (no seed starts after
//! it; default 60 s unless a count is overridden, 0 = no bound).
//!
//! What the model predicts, and from which rule:
//! - re-sends: identical content → the recorded answer (STORED becomes DUPLICATE, REJECTED
//!   stays), whatever the proposal says this time; same seq, other content → REJECTED
//!   SEQ_CONFLICT, the original stands; copies inside one batch get the first copy's final
//!   answer (Store::ingest, protocol.md "Duplicates and rejections");
//! - CARD_COUNTER_REPLAY when the card already has a *stored* transaction with that value of
//!   that counter (offline for PURCHASE/SIGN_IN, online for REFUND), from another record,
//!   also earlier in the same batch; a rejected row holds no counter (conformance suite);
//! - holds: approved when the card has the points free (expired holds released first);
//!   a TXN must quote its hold with the same card, device and points_used before the
//!   expiry, once, else HOLD_INVALID; POINTS_CAP_EXCEEDED is the session's verdict
//!   (computed here with `rules::check_points_paid`) and takes nothing from the hold;
//! - sign-ins: points on the card's first stored sign-in of the day at any venue, later
//!   ones DAILY_LIMIT_REACHED; reviews/shares once per card, day and kind, only after a
//!   stored sign-in at that venue that day;
//! - refunds: must name a stored PURCHASE of the same device and card, the refunds of a
//!   purchase add up to at most its amount, else INVALID_FIELD and nothing changes; each
//!   reverses its step of the cumulative reversal of the purchase's *stored* (granted)
//!   subsidy and returns its step of its points (`rules::refund_reversal_step`,
//!   `rules::points_returned_step`), the points reported in `points_awarded`;
//! - blacklisted cards' purchases: subsidy 0, CARD_BLACKLISTED, no budget;
//! - budget: stored rows draw in batch order (after points and blacklist), the crossing
//!   row cut to the exact remainder with BUDGET_EXHAUSTED, never past either cap;
//! - clearing: per card, the day's purchase subsidies less the day's refund reversals,
//!   less what the card owed from earlier days; a negative result is carried as a debt
//!   (conformance `refunds_beyond_a_days_credit_are_owed_and_recovered`); idempotent;
//!   approval true only for a cleared day; released credits in the audit.
//!
//! What it deliberately leaves out (the documentation does not settle it, or it is
//! outside this test): see the `LEFT OUT` notes next to the generator's choices — in
//! short, points balances while a hold is outstanding, whether refunds give budget back
//! (either figure is accepted; seeds with small caps only refund unsubsidised purchases),
//! the `approved` flag of a clearing re-run after approval, credit ids (only their order
//! and uniqueness), merchant settlements, statistics and awards, credit loading, late rows
//! of a cleared day, several months, concurrency, and the in-batch orderings listed at
//! [`Gen::batch`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};
use wenxiao_gateway::policy::PointsPolicy;
use wenxiao_gateway::registry::MerchantId;
use wenxiao_gateway::rules::{check_points_paid, points_returned_step, refund_reversal_step};
use wenxiao_gateway::store::{
    Activity, ActivityOutcome, ClearingSummary, DeviceAudit, HoldOutcome, HoldRequest, IngestCtx,
    IngestTxn, PROGRAMME_BUDGET_KEY, Proposal, Store, StoreAudit, StoreError, TxnAnswer,
};
use wenxiao_protocol::{
    BusinessDate, Bytes4, CardCounter, CardNo, DeviceId, Fen, HoldId, Item, Points, Reason, Seq,
    Txn, TxnKind, TxnStatus, UnixMillis,
};

// ---------------------------------------------------------------------------------------
// Knobs and the universe.
// ---------------------------------------------------------------------------------------

const DEFAULT_SEEDS: u64 = 25;
const DEFAULT_OPS: usize = 400;
const DEFAULT_SECS: u64 = 60;
/// Fresh stores the shrink may create for one failure.
const SHRINK_ATTEMPTS_MAX: usize = 16;
/// Ops of the shortest failing prefix printed in the failure message (its tail).
const OPS_PRINTED_MAX: usize = 40;

const CARDS: usize = 8;
/// Three business days of one month: clearing of a day is the last thing touching it.
const DATES: [u32; 3] = [20261117, 20261118, 20261119];
const MONTH_KEY: i32 = 202611;
const SIGN_IN_POINTS: u32 = 10;
const FEN_PER_POINT: i64 = 10;
/// Every clock value of the stream is even and every hold lives an odd number of
/// milliseconds, so a hold never expires exactly "now" (LEFT OUT: the boundary).
const HOLD_TTL_MS: i64 = 600_001;
const GENEROUS_CAP: i64 = 1_000_000_000;
/// A hold id no store hands out in a run of this size.
const BOGUS_HOLD: u64 = 4_000_000_001;
/// Refunds naming a seq no device of the stream ever uses.
const NEVER_USED_SEQ: u64 = 1_000_000;
/// More points than any card collects: a hold request that is always refused, used at
/// the end to read every card's free points (and release its expired holds).
const SWEEP_POINTS: u32 = 1_000_000;
const TAC: Bytes4 = Bytes4([0x57, 0x58, 0x00, 0x01]);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Ambiguous: `ClearingSummary::txn_count` is documented as "Stored transactions of the
/// day", which literally includes sign-ins (the conformance suite only shows purchases and
/// refunds counted, and a rejected row not). This is the literal reading; flip it if the
/// documented meaning is "purchases and refunds".
const SIGN_INS_COUNT_IN_CLEARING: bool = true;

/// Counter kinds: the card's offline (purchase) counter and its online (load) counter.
const OFFLINE: u8 = 1;
const ONLINE: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Dev {
    id: DeviceId,
    merchant: MerchantId,
}

/// Three POS terminals of bookstore 1001 (the conformance suite's) and two sign-in
/// readers of the public venues 1106 and 1107. The store checks no device kinds.
const DEVICES: [Dev; 5] = [
    Dev {
        id: DeviceId(310_100_000_001),
        merchant: MerchantId(1001),
    },
    Dev {
        id: DeviceId(310_100_000_002),
        merchant: MerchantId(1001),
    },
    Dev {
        id: DeviceId(310_100_000_003),
        merchant: MerchantId(1001),
    },
    Dev {
        id: DeviceId(310_400_000_001),
        merchant: MerchantId(1106),
    },
    Dev {
        id: DeviceId(310_400_000_002),
        merchant: MerchantId(1107),
    },
];
const POS_DEVS: [usize; 3] = [0, 1, 2];
const READER_DEVS: [usize; 2] = [3, 4];

fn card_no(card: usize) -> CardNo {
    CardNo(3_101_000_000_000_100 + u64::try_from(card).unwrap())
}

fn business_date(date: usize) -> BusinessDate {
    BusinessDate::new(DATES[date]).unwrap()
}

/// 00:00 of the date in Asia/Shanghai.
fn day_start_ms(date: usize) -> i64 {
    wenxiao_gateway::clock::day_end_ms(business_date(date)) - DAY_MS
}

const fn counter_kind(kind: TxnKind) -> u8 {
    match kind {
        TxnKind::Purchase | TxnKind::SignIn => OFFLINE,
        TxnKind::TopUp | TxnKind::Refund => ONLINE,
    }
}

/// (card, counter kind, counter value).
type CounterKey = (usize, u8, u32);
/// (device index, seq).
type Key = (usize, u64);

const STORE_NOTHING: Proposal = Proposal::Store {
    reason: Reason::None,
    subsidy_fen: Fen(0),
    points_awarded: Points(0),
};

/// What the session proposes for a purchase at a bookstore: 10 % of the card part of a
/// book purchase, half-up (policy, "Subsidy on purchases"); anything else earns nothing.
fn purchase_proposal(item: Item, amount: i64) -> Proposal {
    if item == Item::Book {
        Proposal::Store {
            reason: Reason::None,
            subsidy_fen: Fen((amount + 5) / 10),
            points_awarded: Points(0),
        }
    } else {
        Proposal::Store {
            reason: Reason::NotEligible,
            subsidy_fen: Fen(0),
            points_awarded: Points(0),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A seeded stream (splitmix64): the same seed and length give the same operations.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        usize::try_from(self.next_u64() % u64::try_from(n).unwrap()).unwrap()
    }

    /// Uniform in `lo..=hi`.
    fn upto(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "{lo}..={hi}");
        let span = u64::try_from(hi - lo).unwrap() + 1;
        lo + i64::try_from(self.next_u64() % span).unwrap()
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len())])
        }
    }
}

// ---------------------------------------------------------------------------------------
// Operations.
// ---------------------------------------------------------------------------------------

/// A points hold as a TXN quotes it: the hold of the n-th `CreateHold` of the stream (ids
/// are the store's, so the stream names them by position), or an id nobody issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldRef {
    Slot(usize),
    Bogus,
}

/// A TXN's content, with the card and the hold named symbolically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    seq: u64,
    kind: TxnKind,
    card: usize,
    counter: u32,
    amount: i64,
    item: Item,
    hold: Option<HoldRef>,
    points_used: u32,
    refund_of: Option<u64>,
    occurred_at_ms: i64,
}

impl Spec {
    fn counter_key(&self) -> CounterKey {
        (self.card, counter_kind(self.kind), self.counter)
    }

    fn txn(&self, holds: &[Option<HoldId>]) -> Txn {
        let bogus = HoldId::new(BOGUS_HOLD).unwrap();
        Txn {
            seq: Seq::new(self.seq).unwrap(),
            kind: self.kind,
            card_no: card_no(self.card),
            card_counter: CardCounter(self.counter),
            amount_fen: Fen(self.amount),
            list_price_fen: Fen(0),
            item: self.item,
            points_hold_id: self.hold.map(|h| match h {
                HoldRef::Slot(i) => holds.get(i).copied().flatten().unwrap_or(bogus),
                HoldRef::Bogus => bogus,
            }),
            points_used: Points(self.points_used),
            refund_of_seq: self.refund_of.and_then(Seq::new),
            occurred_at_ms: UnixMillis(self.occurred_at_ms),
            tac: TAC,
        }
    }
}

fn spec(kind: TxnKind, card: usize, counter: u32, amount: i64, item: Item, now: i64) -> Spec {
    Spec {
        seq: 0, // assigned by `Gen::new_row`
        kind,
        card,
        counter,
        amount,
        item,
        hold: None,
        points_used: 0,
        refund_of: None,
        occurred_at_ms: now - 1_000,
    }
}

/// One row of an ingest batch: sending device, content, the session's proposal, and the
/// business day of receipt.
#[derive(Debug, Clone, Copy)]
struct Row {
    dev: usize,
    spec: Spec,
    proposal: Proposal,
    date: usize,
}

impl Row {
    fn ingest_txn(&self, now: i64, holds: &[Option<HoldId>]) -> IngestTxn {
        IngestTxn {
            device_id: DEVICES[self.dev].id,
            merchant_id: Some(DEVICES[self.dev].merchant),
            txn: self.spec.txn(holds),
            proposal: self.proposal,
            received_at_ms: now,
            business_date: business_date(self.date),
            lease_epoch: None,
        }
    }

    fn brief(&self) -> String {
        let s = &self.spec;
        format!(
            "dev {} seq {} {:?} card {} counter {} amount {} {:?} hold {:?} points {} \
             refund_of {:?} at {} day {} proposal {:?}",
            DEVICES[self.dev].id,
            s.seq,
            s.kind,
            s.card,
            s.counter,
            s.amount,
            s.item,
            s.hold,
            s.points_used,
            s.refund_of,
            s.occurred_at_ms,
            DATES[self.date],
            self.proposal
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ActivityKind {
    Review,
    Share,
}

impl ActivityKind {
    const fn code(self) -> i16 {
        match self {
            Self::Review => 2,
            Self::Share => 3,
        }
    }

    /// Policy: review 20 points, share 10.
    const fn points(self) -> u32 {
        match self {
            Self::Review => 20,
            Self::Share => 10,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// One `ingest` call at `now_ms`, drawing from budget shard `shard`.
    Ingest {
        now_ms: i64,
        shard: i32,
        rows: Vec<Row>,
    },
    /// A POINTS_AUTH reaching the store (the session's 50 % check passed).
    CreateHold {
        now_ms: i64,
        card: usize,
        dev: usize,
        points: u32,
        purchase_fen: i64,
    },
    /// A review or share from the app at the venue of reader `venue`.
    Activity {
        card: usize,
        venue: usize,
        date: usize,
        kind: ActivityKind,
    },
    Blacklist {
        now_ms: i64,
        card: usize,
        on: bool,
    },
    ClearDay {
        now_ms: i64,
        date: usize,
    },
    ApproveDay {
        now_ms: i64,
        date: usize,
    },
    /// Compare the figures (budget, points, rows per device) now.
    Check,
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Ingest {
            now_ms,
            shard,
            rows,
        } => {
            let mut s = format!("Ingest at {now_ms} shard {shard}:");
            for r in rows {
                let _ = write!(s, "\n        {}", r.brief());
            }
            s
        }
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Scenario {
    monthly_cap: i64,
    programme_cap: i64,
    /// Caps small enough to run out during the stream (read in failure messages only).
    #[allow(dead_code)]
    tight: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldState {
    /// Reserved (possibly past its expiry, not yet released).
    Active,
    Consumed,
    /// Released after its expiry by a later `create_hold` of the card.
    Released,
}

#[derive(Debug, Clone, Copy)]
struct MHold {
    card: usize,
    dev: usize,
    points: u32,
    expires_at_ms: i64,
    state: HoldState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldPred {
    Approved { available: u32 },
    Insufficient { available: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActPred {
    /// The balance after, when the model knows what "balance" means for the card (no
    /// hold outstanding), else `None` and only the variant is compared.
    Awarded(Option<u32>),
    DailyLimit,
    NoSignIn,
}

/// A recorded TXN: its content and its first (final) answer.
#[derive(Debug, Clone, Copy)]
struct Rec {
    spec: Spec,
    answer: TxnAnswer,
}

/// A business day's stored rows as clearing will see them.
#[derive(Debug, Clone, Default)]
struct DayAcc {
    txn_count: i64,
    /// Per card: purchase subsidies less refund reversals.
    net: BTreeMap<usize, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DayFigures {
    txn_count: i64,
    subsidy: i64,
    credits: BTreeMap<usize, i64>,
}

#[derive(Debug)]
struct Model {
    monthly_cap: i64,
    programme_cap: i64,
    records: BTreeMap<Key, Rec>,
    /// Keys of stored purchases, in order of recording.
    stored_purchases: Vec<Key>,
    /// Counters held by stored rows (never released).
    held: BTreeSet<CounterKey>,
    held_list: Vec<CounterKey>,
    /// Counters of new rows recorded REJECTED (not for replaying another row).
    freed: Vec<CounterKey>,
    /// Per purchase: the amount its stored refunds add up to.
    refunded: BTreeMap<Key, i64>,
    /// Granted by the budget in all (one month, so the month's and the programme's).
    granted: i64,
    /// Subsidy reversed by stored refunds (what a give-back would return to the budget).
    reversed: i64,
    points: Vec<i64>,
    /// By `CreateHold` position: the hold if approved.
    holds: Vec<Option<MHold>>,
    blacklisted: Vec<bool>,
    /// (card, date) whose sign-in earned points.
    earned: BTreeSet<(usize, usize)>,
    /// (card, date, reader) with a stored sign-in.
    signed_in: BTreeSet<(usize, usize, usize)>,
    awarded: BTreeSet<(usize, usize, ActivityKind)>,
    days: Vec<DayAcc>,
    /// What each card owes from refunds beyond earlier days' subsidies.
    debts: Vec<i64>,
    cleared: BTreeMap<usize, DayFigures>,
    approved: BTreeSet<usize>,
    last_now: i64,
}

impl Model {
    fn new(sc: &Scenario) -> Self {
        Self {
            monthly_cap: sc.monthly_cap,
            programme_cap: sc.programme_cap,
            records: BTreeMap::new(),
            stored_purchases: Vec::new(),
            held: BTreeSet::new(),
            held_list: Vec::new(),
            freed: Vec::new(),
            refunded: BTreeMap::new(),
            granted: 0,
            reversed: 0,
            points: vec![0; CARDS],
            holds: Vec::new(),
            blacklisted: vec![false; CARDS],
            earned: BTreeSet::new(),
            signed_in: BTreeSet::new(),
            awarded: BTreeSet::new(),
            days: vec![DayAcc::default(); DATES.len()],
            debts: vec![0; CARDS],
            cleared: BTreeMap::new(),
            approved: BTreeSet::new(),
            last_now: 0,
        }
    }

    fn ctx(&self, shard: i32) -> IngestCtx {
        IngestCtx {
            monthly_cap: Fen(self.monthly_cap),
            programme_cap: Fen(self.programme_cap),
            shard,
            sign_in_points: Points(SIGN_IN_POINTS),
        }
    }

    /// Applies an operation, discarding the prediction (for the generator).
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Ingest { now_ms, rows, .. } => {
                self.ingest(*now_ms, rows);
            }
            Op::CreateHold {
                now_ms,
                card,
                dev,
                points,
                ..
            } => {
                self.create_hold(*now_ms, *card, *dev, *points);
            }
            Op::Activity {
                card,
                venue,
                date,
                kind,
            } => {
                self.activity(*card, *venue, *date, *kind);
            }
            Op::Blacklist { now_ms, card, on } => self.set_blacklisted(*now_ms, *card, *on),
            Op::ClearDay { now_ms, date } => {
                self.last_now = self.last_now.max(*now_ms);
                self.clear_day(*date);
            }
            Op::ApproveDay { now_ms, date } => {
                self.last_now = self.last_now.max(*now_ms);
                self.approve_day(*date);
            }
            Op::Check => {}
        }
    }

    // --- ingest -------------------------------------------------------------------------

    /// One batch, row by row in batch order. (The store decides in phases — insert,
    /// dedup, counters, then points, blacklist, budget — but the generator keeps out the
    /// in-batch cases where the phases could give another answer than batch order.)
    fn ingest(&mut self, now: i64, rows: &[Row]) -> Vec<TxnAnswer> {
        self.last_now = self.last_now.max(now);
        rows.iter().map(|r| self.ingest_row(r, now)).collect()
    }

    fn ingest_row(&mut self, row: &Row, now: i64) -> TxnAnswer {
        let key = (row.dev, row.spec.seq);
        if let Some(rec) = self.records.get(&key) {
            if rec.spec != row.spec {
                return TxnAnswer::rejected(Reason::SeqConflict);
            }
            let mut a = rec.answer;
            if a.status == TxnStatus::Stored {
                a.status = TxnStatus::Duplicate;
            }
            return a;
        }
        let answer = self.decide(row, now);
        self.records.insert(
            key,
            Rec {
                spec: row.spec,
                answer,
            },
        );
        let ck = row.spec.counter_key();
        if answer.status == TxnStatus::Stored {
            if self.held.insert(ck) {
                self.held_list.push(ck);
            }
            let day = &mut self.days[row.date];
            if row.spec.kind != TxnKind::SignIn || SIGN_INS_COUNT_IN_CLEARING {
                day.txn_count += 1;
            }
            if row.spec.kind == TxnKind::Purchase {
                self.stored_purchases.push(key);
                *day.net.entry(row.spec.card).or_default() += answer.subsidy_fen.get();
            }
        } else if answer.reason != Reason::CardCounterReplay {
            self.freed.push(ck);
        }
        answer
    }

    /// The final answer of a new (device, seq), with its effects on points, refunds and
    /// the budget. Every early return is a REJECTED row that changes nothing.
    fn decide(&mut self, row: &Row, now: i64) -> TxnAnswer {
        let s = row.spec;
        let (reason, subsidy_fen, points_awarded) = match row.proposal {
            Proposal::Reject(r) => return TxnAnswer::rejected(r),
            Proposal::Store {
                reason,
                subsidy_fen,
                points_awarded,
            } => (reason, subsidy_fen, points_awarded),
        };
        if self.held.contains(&s.counter_key()) {
            return TxnAnswer::rejected(Reason::CardCounterReplay);
        }
        let mut a = TxnAnswer {
            status: TxnStatus::Stored,
            reason,
            subsidy_fen,
            points_awarded,
        };
        match s.kind {
            TxnKind::Purchase => {
                if let Some(h) = s.hold {
                    let Some(slot) = self.usable_hold(h, row, now) else {
                        return TxnAnswer::rejected(Reason::HoldInvalid);
                    };
                    if let Some(hold) = self.holds[slot].as_mut() {
                        hold.state = HoldState::Consumed;
                    }
                    self.points[s.card] -= i64::from(s.points_used);
                }
            }
            TxnKind::SignIn => {
                self.signed_in.insert((s.card, row.date, row.dev));
                if self.earned.insert((s.card, row.date)) {
                    a.points_awarded = Points(SIGN_IN_POINTS);
                    self.points[s.card] += i64::from(SIGN_IN_POINTS);
                } else {
                    a.points_awarded = Points(0);
                    a.reason = Reason::DailyLimitReached;
                }
            }
            TxnKind::Refund => {
                let Some((purchase, paid, subsidy, used)) = self.refund_target(row) else {
                    return TxnAnswer::rejected(Reason::InvalidField);
                };
                let before = self.refunded.get(&purchase).copied().unwrap_or(0);
                let after = before + s.amount;
                if s.amount <= 0 || after > paid {
                    return TxnAnswer::rejected(Reason::InvalidField);
                }
                self.refunded.insert(purchase, after);
                let reversal =
                    refund_reversal_step(Fen(subsidy), Fen(paid), Fen(before), Fen(after)).get();
                let back = points_returned_step(Points(used), Fen(paid), Fen(before), Fen(after));
                a.points_awarded = back;
                self.points[s.card] += i64::from(back.get());
                *self.days[row.date].net.entry(s.card).or_default() -= reversal;
                self.reversed += reversal;
            }
            TxnKind::TopUp => {}
        }
        if a.subsidy_fen.get() > 0 && self.blacklisted[s.card] {
            a.subsidy_fen = Fen::ZERO;
            a.reason = Reason::CardBlacklisted;
        }
        if a.subsidy_fen.get() > 0 {
            let left = (self.monthly_cap - self.granted)
                .min(self.programme_cap - self.granted)
                .max(0);
            let want = a.subsidy_fen.get();
            let granted = want.min(left);
            if granted < want {
                a.reason = Reason::BudgetExhausted;
            }
            a.subsidy_fen = Fen(granted);
            self.granted += granted;
        }
        a
    }

    /// The hold a purchase may consume: issued, not consumed, same card, device and
    /// points, and the TXN received before its expiry.
    fn usable_hold(&self, h: HoldRef, row: &Row, now: i64) -> Option<usize> {
        let HoldRef::Slot(slot) = h else {
            return None;
        };
        let hold = self.holds.get(slot).copied().flatten()?;
        (hold.state == HoldState::Active
            && hold.card == row.spec.card
            && hold.dev == row.dev
            && hold.points == row.spec.points_used
            && now < hold.expires_at_ms)
            .then_some(slot)
    }

    /// The purchase a refund names, if it is a stored PURCHASE of the same device and
    /// card: (its key, amount paid by card, stored subsidy, points used).
    fn refund_target(&self, row: &Row) -> Option<(Key, i64, i64, u32)> {
        let key = (row.dev, row.spec.refund_of?);
        let rec = self.records.get(&key)?;
        (rec.answer.status == TxnStatus::Stored
            && rec.spec.kind == TxnKind::Purchase
            && rec.spec.card == row.spec.card)
            .then_some((
                key,
                rec.spec.amount,
                rec.answer.subsidy_fen.get(),
                rec.spec.points_used,
            ))
    }

    // --- points -------------------------------------------------------------------------

    /// Points of the card not reserved by a hold still running at `now`.
    fn free_points(&self, card: usize, now: i64) -> i64 {
        let held: i64 = self
            .holds
            .iter()
            .flatten()
            .filter(|h| h.card == card && h.state == HoldState::Active && h.expires_at_ms > now)
            .map(|h| i64::from(h.points))
            .sum();
        self.points[card] - held
    }

    /// No hold of the card is outstanding (consumed or released, all of them): then its
    /// balance is unambiguous and nothing is held. LEFT OUT: what `points_balance` and
    /// `ActivityOutcome::Awarded` call the balance while a hold is outstanding (the
    /// points before or after the reservation), and whether a hold is released before a
    /// `create_hold` of its card (e.g. by a purchase quoting it after its expiry).
    fn settled(&self, card: usize) -> bool {
        !self
            .holds
            .iter()
            .flatten()
            .any(|h| h.card == card && h.state == HoldState::Active)
    }

    fn create_hold(&mut self, now: i64, card: usize, dev: usize, points: u32) -> HoldPred {
        self.last_now = self.last_now.max(now);
        for h in self.holds.iter_mut().flatten() {
            if h.card == card && h.state == HoldState::Active && h.expires_at_ms < now {
                h.state = HoldState::Released;
            }
        }
        let free = self.free_points(card, now);
        if i64::from(points) <= free {
            self.holds.push(Some(MHold {
                card,
                dev,
                points,
                expires_at_ms: now + HOLD_TTL_MS,
                state: HoldState::Active,
            }));
            HoldPred::Approved {
                available: u32::try_from(free - i64::from(points)).unwrap(),
            }
        } else {
            self.holds.push(None);
            HoldPred::Insufficient {
                available: u32::try_from(free).unwrap(),
            }
        }
    }

    fn activity(&mut self, card: usize, venue: usize, date: usize, kind: ActivityKind) -> ActPred {
        if !self.signed_in.contains(&(card, date, venue)) {
            return ActPred::NoSignIn;
        }
        if !self.awarded.insert((card, date, kind)) {
            return ActPred::DailyLimit;
        }
        self.points[card] += i64::from(kind.points());
        ActPred::Awarded(
            self.settled(card)
                .then(|| u32::try_from(self.points[card]).unwrap()),
        )
    }

    fn set_blacklisted(&mut self, now: i64, card: usize, on: bool) {
        self.last_now = self.last_now.max(now);
        self.blacklisted[card] = on;
    }

    // --- clearing -----------------------------------------------------------------------

    /// Clears a day once: each card's net of the day less its debt from earlier days is
    /// credited when positive, else carried as its debt.
    fn clear_day(&mut self, date: usize) {
        if self.cleared.contains_key(&date) {
            return;
        }
        let acc = &self.days[date];
        let mut credits = BTreeMap::new();
        let mut subsidy = 0;
        for card in 0..CARDS {
            let net = acc.net.get(&card).copied().unwrap_or(0);
            subsidy += net;
            let owed = net - self.debts[card];
            if owed > 0 {
                credits.insert(card, owed);
                self.debts[card] = 0;
            } else {
                self.debts[card] = -owed;
            }
        }
        let figures = DayFigures {
            txn_count: acc.txn_count,
            subsidy,
            credits,
        };
        self.cleared.insert(date, figures);
    }

    fn approve_day(&mut self, date: usize) -> bool {
        if self.cleared.contains_key(&date) {
            self.approved.insert(date);
            true
        } else {
            false
        }
    }

    fn summary(&self, date: usize) -> Option<ClearingSummary> {
        self.cleared.get(&date).map(|f| ClearingSummary {
            business_date: business_date(date),
            approved: self.approved.contains(&date),
            txn_count: f.txn_count,
            subsidy_fen: Fen(f.subsidy),
            credit_count: i64::try_from(f.credits.len()).unwrap(),
            credit_fen: Fen(f.credits.values().sum()),
        })
    }

    // --- figures ------------------------------------------------------------------------

    fn device_records(&self, dev: usize) -> impl Iterator<Item = (&Key, &Rec)> {
        self.records.range((dev, 0)..(dev + 1, 0))
    }

    /// (stored, rejected) rows of a device; SEQ_CONFLICT evidence is not a row.
    fn count(&self, dev: usize) -> (u64, u64) {
        let mut c = (0, 0);
        for (_, rec) in self.device_records(dev) {
            if rec.answer.status == TxnStatus::Stored {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        c
    }

    fn device_audits(&self) -> Vec<DeviceAudit> {
        DEVICES
            .iter()
            .enumerate()
            .filter_map(|(dev, d)| {
                let recs: Vec<(&Key, &Rec)> = self.device_records(dev).collect();
                let min = recs.iter().map(|(k, _)| k.1).min()?;
                let max = recs.iter().map(|(k, _)| k.1).max()?;
                let stored: Vec<&Rec> = recs
                    .iter()
                    .map(|(_, r)| *r)
                    .filter(|r| r.answer.status == TxnStatus::Stored)
                    .collect();
                Some(DeviceAudit {
                    device_id: d.id,
                    rows: i64::try_from(recs.len()).unwrap(),
                    min_seq: i64::try_from(min).unwrap(),
                    max_seq: i64::try_from(max).unwrap(),
                    stored: i64::try_from(stored.len()).unwrap(),
                    subsidy_fen: Fen(stored.iter().map(|r| r.answer.subsidy_fen.get()).sum()),
                })
            })
            .collect()
    }

    fn stored_seq(&self, dev: usize) -> Option<Seq> {
        let mut s = 0;
        while self.records.contains_key(&(dev, s + 1)) {
            s += 1;
        }
        Seq::new(s)
    }

    /// Credits released by approval: (count, amount).
    fn released(&self) -> (i64, Fen) {
        let mut n = 0;
        let mut sum = 0;
        for d in &self.approved {
            let f = &self.cleared[d];
            n += f.credits.len();
            sum += f.credits.values().sum::<i64>();
        }
        (i64::try_from(n).unwrap(), Fen(sum))
    }
}

// ---------------------------------------------------------------------------------------
// The generator: draws each operation from the seed and the model's state so far.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Stream {
    seed: u64,
    scenario: Scenario,
    ops: Vec<Op>,
}

/// What the batch being built holds so far.
#[derive(Debug, Default)]
struct BatchState {
    keys: Vec<Key>,
    /// Counters of rows of this batch that are stored whatever else the batch holds: new
    /// purchases without a hold and sign-ins, proposed STORE, with a fresh counter.
    plain_counters: Vec<CounterKey>,
    /// Those of them that are purchases.
    plain_purchases: Vec<Key>,
    planned_refunds: BTreeMap<Key, i64>,
}

#[derive(Debug)]
struct Gen {
    rng: Rng,
    tight: bool,
    policy: PointsPolicy,
    next_seq: [u64; DEVICES.len()],
    next_counter: BTreeMap<(usize, u8), u32>,
    /// Every (device, seq) as first sent, i.e. as recorded.
    first_sent: BTreeMap<Key, Row>,
    sent_keys: Vec<Key>,
    conflicts: Vec<Row>,
    /// The one reader each card signs in at on a day.
    signin_venue: BTreeMap<(usize, usize), usize>,
}

fn generate(seed: u64, total: usize) -> Stream {
    let mut rng = Rng::new(seed);
    let tight = rng.chance(50);
    let (monthly_cap, programme_cap) = if tight {
        let monthly = rng.upto(20_000, 200_000);
        let programme = if rng.chance(50) {
            monthly + rng.upto(0, 50_000)
        } else {
            rng.upto(10_000, monthly)
        };
        (monthly, programme)
    } else {
        (GENEROUS_CAP, GENEROUS_CAP)
    };
    let scenario = Scenario {
        monthly_cap,
        programme_cap,
        tight,
    };
    let mut model = Model::new(&scenario);
    let mut g = Gen::new(rng, tight);
    let total = total.max(1);
    let per_phase = (total / DATES.len()).max(1);
    // About 17 h of each day for its operations (from 06:00), clamped before 23:00.
    let step_half = (17 * HOUR_MS / i64::try_from(per_phase).unwrap()).clamp(1, 60_000);
    let mut ops = Vec::with_capacity(total);
    let mut phase = 0;
    let mut now = day_start_ms(0) + 6 * HOUR_MS;
    // The previous day's clearing: in the first half of the next day, in date order.
    let mut pending_clear: Option<(usize, usize)> = None;
    for i in 0..total {
        let p = (i / per_phase).min(DATES.len() - 1);
        if p != phase {
            phase = p;
            now = day_start_ms(p) + 6 * HOUR_MS;
            pending_clear = Some((i + g.rng.below(per_phase / 2 + 1), p - 1));
        } else if i > 0 {
            now = (now + 2 * g.rng.upto(1, step_half)).min(day_start_ms(p) + 23 * HOUR_MS);
        }
        let last = i + 1 == total;
        let op = match pending_clear {
            Some((at, date)) if i >= at || last => {
                pending_clear = None;
                Op::ClearDay { now_ms: now, date }
            }
            _ if last => Op::ClearDay {
                now_ms: now,
                date: phase,
            },
            _ => g.random_op(&model, now, phase),
        };
        model.apply(&op);
        ops.push(op);
    }
    Stream {
        seed,
        scenario,
        ops,
    }
}

impl Gen {
    fn new(rng: Rng, tight: bool) -> Self {
        Self {
            rng,
            tight,
            policy: PointsPolicy::default(),
            next_seq: [1; DEVICES.len()],
            next_counter: BTreeMap::new(),
            first_sent: BTreeMap::new(),
            sent_keys: Vec::new(),
            conflicts: Vec::new(),
            signin_venue: BTreeMap::new(),
        }
    }

    fn random_op(&mut self, m: &Model, now: i64, date: usize) -> Op {
        match self.rng.below(100) {
            0..=57 => {
                let rows = self.batch(m, now, date);
                Op::Ingest {
                    now_ms: now,
                    shard: i32::try_from(self.rng.below(8)).unwrap(),
                    rows,
                }
            }
            58..=69 => self.create_hold_op(m, now),
            70..=78 => self.activity_op(m, date),
            79..=82 => self.blacklist_op(m, now),
            83..=86 => Op::ApproveDay {
                now_ms: now,
                date: self.rng.below(date + 1),
            },
            87..=89 => {
                // Clearing again is clearing once.
                let cleared: Vec<usize> = m.cleared.keys().copied().collect();
                match self.rng.pick(&cleared) {
                    Some(d) => Op::ClearDay {
                        now_ms: now,
                        date: d,
                    },
                    None => Op::Check,
                }
            }
            _ => Op::Check,
        }
    }

    /// 1–8 rows. The model decides rows in batch order; these in-batch cases, where the
    /// store's phases might legitimately answer otherwise, are LEFT OUT:
    /// - a counter taken in the batch by a row that is rejected later in the same batch
    ///   (invalid hold, invalid refund) or proposed REJECTED, then used again in the batch;
    /// - a row proposed REJECTED whose counter also replays (which reason wins);
    /// - a refund naming a purchase that comes later in the same batch;
    /// - a card signing in at two venues on one day (does a review count at the venue of a
    ///   DAILY_LIMIT sign-in?), and a review/share at a venue without a sign-in when that
    ///   kind was already awarded that day (NO_SIGN_IN or DAILY_LIMIT?).
    fn batch(&mut self, m: &Model, now: i64, date: usize) -> Vec<Row> {
        let n = 1 + self.rng.below(8);
        let mut b = BatchState::default();
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let row = match self.rng.below(100) {
                0..=27 => None,
                28..=39 => Some(self.hold_purchase(m, &mut b, now, date)),
                40..=53 => Some(self.refund(m, &mut b, now, date)),
                54..=65 => self.sign_in(m, &mut b, now, date),
                66..=75 => self.copy(&b, date),
                76..=81 => self.conflict(&b, date),
                82..=90 => self.replay(m, &mut b, now, date),
                91..=95 => self.reuse_freed(m, &mut b, now, date),
                _ => self.resend_conflict(date),
            };
            let row = match row {
                Some(r) => r,
                None => self.plain_purchase(&mut b, now, date),
            };
            rows.push(row);
        }
        rows
    }

    fn fresh_counter(&mut self, card: usize, kind: u8) -> u32 {
        let next = self.next_counter.entry((card, kind)).or_insert(1);
        let c = *next;
        *next += 1;
        c
    }

    fn new_row(
        &mut self,
        b: &mut BatchState,
        dev: usize,
        mut spec: Spec,
        proposal: Proposal,
        date: usize,
    ) -> Row {
        spec.seq = self.next_seq[dev];
        self.next_seq[dev] += 1;
        let row = Row {
            dev,
            spec,
            proposal,
            date,
        };
        let key = (dev, spec.seq);
        self.first_sent.insert(key, row);
        self.sent_keys.push(key);
        b.keys.push(key);
        row
    }

    fn venue_for(&mut self, card: usize, date: usize) -> usize {
        if let Some(&v) = self.signin_venue.get(&(card, date)) {
            return v;
        }
        let v = self.rng.pick(&READER_DEVS).unwrap();
        self.signin_venue.insert((card, date), v);
        v
    }

    fn other_card(&mut self, card: usize) -> usize {
        (card + 1 + self.rng.below(CARDS - 1)) % CARDS
    }

    /// A purchase without points at a random POS: a book (subsidised), something else
    /// (NOT_ELIGIBLE), or now and then one the session rejects (BAD_MAC, INVALID_FIELD).
    fn plain_purchase(&mut self, b: &mut BatchState, now: i64, date: usize) -> Row {
        let dev = self.rng.pick(&POS_DEVS).unwrap();
        let card = self.rng.below(CARDS);
        let counter = self.fresh_counter(card, OFFLINE);
        let amount = self.rng.upto(100, 20_000);
        let item = match self.rng.below(100) {
            0..=84 => Item::Book,
            85..=94 => Item::Other,
            _ => Item::FilmForeign,
        };
        let rejected = self.rng.chance(4);
        let proposal = if rejected {
            Proposal::Reject(if self.rng.chance(50) {
                Reason::BadMac
            } else {
                Reason::InvalidField
            })
        } else {
            purchase_proposal(item, amount)
        };
        let row = self.new_row(
            b,
            dev,
            spec(TxnKind::Purchase, card, counter, amount, item, now),
            proposal,
            date,
        );
        if !rejected {
            b.plain_counters.push(row.spec.counter_key());
            b.plain_purchases.push((dev, row.spec.seq));
        }
        row
    }

    /// A book purchase spending points: mostly its hold as issued (valid while it runs and
    /// is unused), else with wrong points, device or card, an unknown id, or any old hold;
    /// now and then points worth more than the card part (the session's
    /// POINTS_CAP_EXCEEDED).
    fn hold_purchase(&mut self, m: &Model, b: &mut BatchState, now: i64, date: usize) -> Row {
        let slots: Vec<usize> = m
            .holds
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.map(|_| i))
            .collect();
        let live: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|&i| {
                m.holds[i].is_some_and(|h| h.state == HoldState::Active && now < h.expires_at_ms)
            })
            .collect();
        let variant = self.rng.below(100);
        let (hold, dev, card, points) = if slots.is_empty() || variant >= 90 {
            let points = u32::try_from(self.rng.upto(1, 30)).unwrap();
            (
                HoldRef::Bogus,
                self.rng.pick(&POS_DEVS).unwrap(),
                self.rng.below(CARDS),
                points,
            )
        } else {
            let slot = match self.rng.pick(&live) {
                Some(s) if variant < 60 => s,
                _ => self.rng.pick(&slots).unwrap(),
            };
            let h = m.holds[slot].unwrap();
            let (mut dev, mut card, mut points) = (h.dev, h.card, h.points);
            match variant {
                60..=69 => {
                    points = if points > 1 && self.rng.chance(50) {
                        points - 1
                    } else {
                        points + 1
                    }
                }
                70..=76 => dev = (dev + 1 + self.rng.below(POS_DEVS.len() - 1)) % POS_DEVS.len(),
                77..=83 => card = self.other_card(card),
                _ => {}
            }
            (HoldRef::Slot(slot), dev, card, points)
        };
        let value = i64::from(points) * FEN_PER_POINT;
        let amount = if self.rng.chance(12) {
            self.rng.upto(1, value - 1)
        } else {
            value + self.rng.upto(0, 20_000)
        };
        let proposal = match check_points_paid(Fen(amount), Points(points), &self.policy) {
            Ok(()) => purchase_proposal(Item::Book, amount),
            Err(reason) => Proposal::Reject(reason),
        };
        let counter = self.fresh_counter(card, OFFLINE);
        let mut sp = spec(TxnKind::Purchase, card, counter, amount, Item::Book, now);
        sp.hold = Some(hold);
        sp.points_used = points;
        self.new_row(b, dev, sp, proposal, date)
    }

    /// A refund: of a stored purchase (whole rest, part, or more than is left), of a
    /// purchase earlier in this batch, or naming something it may not refund (another
    /// card's purchase, a seq never used, a row that is no stored purchase).
    ///
    /// LEFT OUT with small caps (`tight`): whether a refund gives its reversal back to the
    /// budget is not documented, and with a cap that runs out it would change later
    /// answers — so there refunds only name purchases that stored no subsidy.
    fn refund(&mut self, m: &Model, b: &mut BatchState, now: i64, date: usize) -> Row {
        let r = self.rng.below(100);
        let target = if r < 65 {
            let candidates: Vec<Key> = m
                .stored_purchases
                .iter()
                .copied()
                .filter(|k| !self.tight || m.records[k].answer.subsidy_fen.get() == 0)
                .collect();
            self.rng.pick(&candidates)
        } else if r < 80 && !self.tight {
            self.rng.pick(&b.plain_purchases)
        } else {
            None
        };
        if let Some(k) = target {
            let p = self.first_sent[&k].spec;
            let done = m.refunded.get(&k).copied().unwrap_or(0)
                + b.planned_refunds.get(&k).copied().unwrap_or(0);
            let remaining = p.amount - done;
            let amount = if remaining <= 0 {
                self.rng.upto(1, p.amount.max(1))
            } else {
                match self.rng.below(100) {
                    0..=34 => remaining,
                    35..=74 => self.rng.upto(1, remaining),
                    _ => remaining + self.rng.upto(1, (p.amount / 2).max(1)),
                }
            };
            if amount <= remaining {
                *b.planned_refunds.entry(k).or_default() += amount;
            }
            let counter = self.fresh_counter(p.card, ONLINE);
            let mut sp = spec(TxnKind::Refund, p.card, counter, amount, Item::Book, now);
            sp.refund_of = Some(k.1);
            return self.new_row(b, k.0, sp, STORE_NOTHING, date);
        }
        let amount = self.rng.upto(100, 5_000);
        let never_used = |g: &mut Self| {
            (
                g.rng.pick(&POS_DEVS).unwrap(),
                g.rng.below(CARDS),
                NEVER_USED_SEQ + u64::try_from(g.rng.below(1_000)).unwrap(),
            )
        };
        let (dev, card, of) = match self.rng.below(3) {
            0 => match self.rng.pick(&m.stored_purchases) {
                Some(k) => {
                    let card = self.other_card(self.first_sent[&k].spec.card);
                    (k.0, card, k.1)
                }
                None => never_used(self),
            },
            1 => never_used(self),
            _ => {
                let not_purchases: Vec<Key> = m
                    .records
                    .iter()
                    .filter(|(k, rec)| {
                        POS_DEVS.contains(&k.0)
                            && !(rec.spec.kind == TxnKind::Purchase
                                && rec.answer.status == TxnStatus::Stored)
                    })
                    .map(|(k, _)| *k)
                    .collect();
                match self.rng.pick(&not_purchases) {
                    Some(k) => (k.0, m.records[&k].spec.card, k.1),
                    None => never_used(self),
                }
            }
        };
        let counter = self.fresh_counter(card, ONLINE);
        let mut sp = spec(TxnKind::Refund, card, counter, amount, Item::Book, now);
        sp.refund_of = Some(of);
        self.new_row(b, dev, sp, STORE_NOTHING, date)
    }

    /// A sign-in at the card's reader of the day. LEFT OUT: blacklisted cards sign in and
    /// collect points or not — the blacklist is documented for purchases' subsidy only.
    fn sign_in(&mut self, m: &Model, b: &mut BatchState, now: i64, date: usize) -> Option<Row> {
        let cards: Vec<usize> = (0..CARDS).filter(|&c| !m.blacklisted[c]).collect();
        let card = self.rng.pick(&cards)?;
        let dev = self.venue_for(card, date);
        let counter = self.fresh_counter(card, OFFLINE);
        let rejected = self.rng.chance(3);
        let proposal = if rejected {
            Proposal::Reject(Reason::BadMac)
        } else {
            STORE_NOTHING
        };
        let row = self.new_row(
            b,
            dev,
            spec(TxnKind::SignIn, card, counter, 0, Item::None, now),
            proposal,
            date,
        );
        if !rejected {
            b.plain_counters.push(row.spec.counter_key());
        }
        Some(row)
    }

    fn earlier_key(&mut self, b: &BatchState) -> Option<Key> {
        if !b.keys.is_empty() && self.rng.chance(40) {
            self.rng.pick(&b.keys)
        } else {
            self.rng.pick(&self.sent_keys)
        }
    }

    /// An identical re-send of an earlier TXN (of an earlier batch or of this one).
    fn copy(&mut self, b: &BatchState, date: usize) -> Option<Row> {
        let key = self.earlier_key(b)?;
        let mut row = self.first_sent[&key];
        row.date = date;
        if self.rng.chance(10) {
            // The session may propose otherwise this time; the store answers from the
            // record, not from the proposal.
            row.proposal = match row.proposal {
                Proposal::Store { .. } => Proposal::Reject(Reason::BadMac),
                Proposal::Reject(_) => STORE_NOTHING,
            };
        }
        Some(row)
    }

    /// An earlier seq with other content.
    fn conflict(&mut self, b: &BatchState, date: usize) -> Option<Row> {
        let key = self.earlier_key(b)?;
        let mut row = self.first_sent[&key];
        row.date = date;
        if self.rng.chance(50) {
            row.spec.amount += self.rng.upto(1, 99);
        } else {
            row.spec.occurred_at_ms += 2;
        }
        self.conflicts.push(row);
        Some(row)
    }

    fn resend_conflict(&mut self, date: usize) -> Option<Row> {
        let mut row = self.rng.pick(&self.conflicts)?;
        row.date = date;
        Some(row)
    }

    /// A new seq whose card counter is already stored: from an earlier batch, or from a
    /// row of this batch that is stored whatever happens. Offline counters come back as a
    /// purchase or a sign-in (they share the counter), online ones as a refund.
    fn replay(&mut self, m: &Model, b: &mut BatchState, now: i64, date: usize) -> Option<Row> {
        let target = if !b.plain_counters.is_empty() && self.rng.chance(40) {
            self.rng.pick(&b.plain_counters)
        } else {
            self.rng.pick(&m.held_list)
        }?;
        let (card, kind, counter) = target;
        if kind == ONLINE {
            let own: Vec<Key> = m
                .stored_purchases
                .iter()
                .copied()
                .filter(|k| m.records[k].spec.card == card)
                .collect();
            let (dev, of) = match self.rng.pick(&own) {
                Some(k) => k,
                None => (self.rng.pick(&POS_DEVS).unwrap(), NEVER_USED_SEQ),
            };
            let mut sp = spec(
                TxnKind::Refund,
                card,
                counter,
                self.rng.upto(1, 1_000),
                Item::Book,
                now,
            );
            sp.refund_of = Some(of);
            return Some(self.new_row(b, dev, sp, STORE_NOTHING, date));
        }
        if self.rng.chance(60) {
            let dev = self.rng.pick(&POS_DEVS).unwrap();
            let amount = self.rng.upto(100, 20_000);
            Some(self.new_row(
                b,
                dev,
                spec(TxnKind::Purchase, card, counter, amount, Item::Book, now),
                purchase_proposal(Item::Book, amount),
                date,
            ))
        } else {
            let dev = self.venue_for(card, date);
            Some(self.new_row(
                b,
                dev,
                spec(TxnKind::SignIn, card, counter, 0, Item::None, now),
                STORE_NOTHING,
                date,
            ))
        }
    }

    /// A purchase with the offline counter of a row recorded REJECTED in an earlier batch:
    /// a rejected row holds no counter (documented for every rejection: "when the card
    /// already has a *stored* transaction with that counter value").
    fn reuse_freed(&mut self, m: &Model, b: &mut BatchState, now: i64, date: usize) -> Option<Row> {
        let offline: Vec<CounterKey> = m.freed.iter().copied().filter(|k| k.1 == OFFLINE).collect();
        let (card, _, counter) = self.rng.pick(&offline)?;
        let dev = self.rng.pick(&POS_DEVS).unwrap();
        let amount = self.rng.upto(100, 20_000);
        Some(self.new_row(
            b,
            dev,
            spec(TxnKind::Purchase, card, counter, amount, Item::Book, now),
            purchase_proposal(Item::Book, amount),
            date,
        ))
    }

    /// A hold request: mostly for points the card has free, else for any number (maybe
    /// more than it has).
    fn create_hold_op(&mut self, m: &Model, now: i64) -> Op {
        let card = self.rng.below(CARDS);
        let dev = self.rng.pick(&POS_DEVS).unwrap();
        let free = m.free_points(card, now);
        let points = if free >= 1 && self.rng.chance(70) {
            self.rng.upto(1, free)
        } else {
            self.rng.upto(1, 40)
        };
        let points = u32::try_from(points).unwrap();
        let purchase_fen = i64::from(points) * FEN_PER_POINT * 2 + self.rng.upto(0, 10_000);
        Op::CreateHold {
            now_ms: now,
            card,
            dev,
            points,
            purchase_fen,
        }
    }

    /// A review or share, mostly at the card's reader of the day (LEFT OUT: blacklisted
    /// cards, as for sign-ins).
    fn activity_op(&mut self, m: &Model, date: usize) -> Op {
        let cards: Vec<usize> = (0..CARDS).filter(|&c| !m.blacklisted[c]).collect();
        let Some(card) = self.rng.pick(&cards) else {
            return Op::Check;
        };
        let kind = if self.rng.chance(50) {
            ActivityKind::Review
        } else {
            ActivityKind::Share
        };
        let other = |v: usize| {
            if v == READER_DEVS[0] {
                READER_DEVS[1]
            } else {
                READER_DEVS[0]
            }
        };
        let venue = match self.signin_venue.get(&(card, date)).copied() {
            Some(v) if m.awarded.contains(&(card, date, kind)) || self.rng.chance(75) => v,
            Some(v) => other(v),
            None => self.rng.pick(&READER_DEVS).unwrap(),
        };
        Op::Activity {
            card,
            venue,
            date,
            kind,
        }
    }

    fn blacklist_op(&mut self, m: &Model, now: i64) -> Op {
        let card = self.rng.below(CARDS);
        let on = if m.blacklisted[card] {
            !self.rng.chance(80)
        } else {
            self.rng.chance(50)
        };
        Op::Blacklist {
            now_ms: now,
            card,
            on,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The driver: the same operations on a store and on the model.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Failure {
    /// Index of the operation that disagreed; the prefix length for end-of-run checks.
    at: usize,
    message: String,
}

fn se(e: StoreError) -> String {
    format!("store error: {e}")
}

/// Runs the first `len` operations of the stream and the end-of-run checks.
async fn run<S: Store + StoreAudit>(s: &S, stream: &Stream, len: usize) -> Result<(), Failure> {
    let mut m = Model::new(&stream.scenario);
    let mut holds: Vec<Option<HoldId>> = Vec::new();
    let ops = &stream.ops[..len.min(stream.ops.len())];
    for (i, op) in ops.iter().enumerate() {
        step(s, &mut m, op, &mut holds)
            .await
            .map_err(|message| Failure { at: i, message })?;
    }
    end_checks(s, &mut m, &mut holds)
        .await
        .map_err(|message| Failure {
            at: ops.len(),
            message,
        })
}

async fn step<S: Store + StoreAudit>(
    s: &S,
    m: &mut Model,
    op: &Op,
    holds: &mut Vec<Option<HoldId>>,
) -> Result<(), String> {
    match op {
        Op::Ingest {
            now_ms,
            shard,
            rows,
        } => {
            let want = m.ingest(*now_ms, rows);
            let issued: &[Option<HoldId>] = holds.as_slice();
            let batch: Vec<IngestTxn> =
                rows.iter().map(|r| r.ingest_txn(*now_ms, issued)).collect();
            let got = s.ingest(&batch, &m.ctx(*shard)).await.map_err(se)?;
            if got != want {
                return Err(describe_ingest(rows, &want, &got));
            }
        }
        Op::CreateHold {
            now_ms,
            card,
            dev,
            points,
            purchase_fen,
        } => {
            let want = m.create_hold(*now_ms, *card, *dev, *points);
            let got = s
                .create_hold(HoldRequest {
                    card_no: card_no(*card),
                    device_id: DEVICES[*dev].id,
                    points: Points(*points),
                    purchase_fen: Fen(*purchase_fen),
                    now_ms: *now_ms,
                    expires_at_ms: now_ms + HOLD_TTL_MS,
                })
                .await
                .map_err(se)?;
            match (want, got) {
                (
                    HoldPred::Approved { available },
                    HoldOutcome::Approved {
                        hold_id,
                        available: a,
                    },
                ) if a.get() == available => {
                    if hold_id.get() == BOGUS_HOLD || holds.contains(&Some(hold_id)) {
                        return Err(format!(
                            "{op:?}: hold id {hold_id} issued twice (or the test's bogus id)"
                        ));
                    }
                    holds.push(Some(hold_id));
                }
                (
                    HoldPred::Insufficient { available },
                    HoldOutcome::Insufficient { available: a },
                ) if a.get() == available => {
                    holds.push(None);
                }
                (w, g) => return Err(format!("{op:?}: model {w:?}, store {g:?}")),
            }
        }
        Op::Activity {
            card,
            venue,
            date,
            kind,
        } => {
            let want = m.activity(*card, *venue, *date, *kind);
            let got = s
                .award_activity(Activity {
                    card_no: card_no(*card),
                    venue: DEVICES[*venue].merchant,
                    day: business_date(*date),
                    kind: kind.code(),
                    points: Points(kind.points()),
                })
                .await
                .map_err(se)?;
            let agree = match (want, got) {
                (ActPred::Awarded(None), ActivityOutcome::Awarded(_))
                | (ActPred::DailyLimit, ActivityOutcome::DailyLimit)
                | (ActPred::NoSignIn, ActivityOutcome::NoSignIn) => true,
                (ActPred::Awarded(Some(p)), ActivityOutcome::Awarded(q)) => p == q.get(),
                _ => false,
            };
            if !agree {
                return Err(format!("{op:?}: model {want:?}, store {got:?}"));
            }
        }
        Op::Blacklist { now_ms, card, on } => {
            m.set_blacklisted(*now_ms, *card, *on);
            s.set_blacklisted(card_no(*card), *on, "ledger model".to_owned(), *now_ms)
                .await
                .map_err(se)?;
        }
        Op::ClearDay { now_ms, date } => {
            // LEFT OUT: the `approved` flag of a re-run after approval ("returns the first
            // run's summary" — as it was then, or as it is now?).
            let approved_before = m.approved.contains(date);
            m.last_now = m.last_now.max(*now_ms);
            m.clear_day(*date);
            let want = m.summary(*date).unwrap();
            // A day is cleared only once it has ended: the clearing clock is at least its
            // 24:00 in Shanghai (the stream clears a day after its last row, so late rows
            // are not exercised here; the conformance suite has them).
            let day = business_date(*date);
            let clearing_ms = (*now_ms).max(wenxiao_gateway::clock::day_end_ms(day) + 1);
            let mut got = s
                .clear_day(day, FEN_PER_POINT, clearing_ms)
                .await
                .map_err(se)?;
            if approved_before {
                got.approved = want.approved;
            }
            if got != want {
                return Err(format!("{op:?}: model {want:?}, store {got:?}"));
            }
            check_report(s, m, *date).await?;
        }
        Op::ApproveDay { now_ms, date } => {
            m.last_now = m.last_now.max(*now_ms);
            let want = m.approve_day(*date);
            let got = s
                .approve_day(business_date(*date), *now_ms)
                .await
                .map_err(se)?;
            if got != want {
                return Err(format!("{op:?}: model {want}, store {got}"));
            }
            check_report(s, m, *date).await?;
        }
        Op::Check => check_figures(s, m).await?,
    }
    Ok(())
}

fn describe_ingest(rows: &[Row], want: &[TxnAnswer], got: &[TxnAnswer]) -> String {
    let mut s = String::from("ingest answers differ:");
    for (k, row) in rows.iter().enumerate() {
        let (w, g) = (want.get(k), got.get(k));
        let mark = if w == g { " " } else { "≠" };
        let _ = write!(
            s,
            "\n  {mark} row {k}: {}\n      model {w:?}\n      store {g:?}",
            row.brief()
        );
    }
    if want.len() != got.len() {
        let _ = write!(s, "\n  model {} answers, store {}", want.len(), got.len());
    }
    s
}

/// The budget, the points of every card without an outstanding hold, and every device's
/// (stored, rejected) rows.
async fn check_figures<S: Store + StoreAudit>(s: &S, m: &Model) -> Result<(), String> {
    // LEFT OUT: whether a refund gives its reversal back to the budget. The documents
    // only say refunds reverse the subsidy at clearing; `rules::Budget::give_back`
    // exists. Either figure is accepted (they agree in seeds with small caps, where refunds
    // only name unsubsidised purchases).
    let (gross, net) = (m.granted, m.granted - m.reversed);
    for key in [MONTH_KEY, PROGRAMME_BUDGET_KEY] {
        let got = s.budget_granted(key).await.map_err(se)?.get();
        if got != gross && got != net {
            return Err(format!(
                "budget {key} granted: store {got}, model {gross} ({net} if refunds give back)"
            ));
        }
    }
    for card in 0..CARDS {
        if !m.settled(card) {
            continue;
        }
        let got = s.points_balance(card_no(card)).await.map_err(se)?;
        let want = (Points(u32::try_from(m.points[card]).unwrap()), Points(0));
        if got != want {
            return Err(format!(
                "points of card {card}: model {want:?}, store {got:?} (balance, held)"
            ));
        }
    }
    for (dev, d) in DEVICES.iter().enumerate() {
        let got = s.count_txns(d.id).await.map_err(se)?;
        let want = m.count(dev);
        if got != want {
            return Err(format!(
                "rows of device {}: model {want:?}, store {got:?} (stored, rejected)",
                d.id
            ));
        }
    }
    Ok(())
}

/// A day's clearing report against the model: summary, credits by card (in id order, ids
/// distinct — LEFT OUT: the ids themselves), nothing loaded; no report for a day not
/// cleared. LEFT OUT: merchant settlements, statistics and awards.
async fn check_report<S: Store + StoreAudit>(s: &S, m: &Model, date: usize) -> Result<(), String> {
    let want = m.summary(date);
    let got = s.clearing_report(business_date(date)).await.map_err(se)?;
    let day = DATES[date];
    match (want, got) {
        (None, None) => Ok(()),
        (Some(w), Some(r)) => {
            if r.summary != w {
                return Err(format!(
                    "clearing report of {day}: summary: model {w:?}, store {:?}",
                    r.summary
                ));
            }
            let ids: Vec<u64> = r.credits.iter().map(|c| c.credit_id.get()).collect();
            if ids.windows(2).any(|p| p[0] >= p[1]) {
                return Err(format!(
                    "clearing report of {day}: credit ids not strictly increasing: {ids:?}"
                ));
            }
            let got_credits: BTreeMap<u64, i64> = r
                .credits
                .iter()
                .map(|c| (c.card_no.get(), c.amount_fen.get()))
                .collect();
            let want_credits: BTreeMap<u64, i64> = m.cleared[&date]
                .credits
                .iter()
                .map(|(&c, &a)| (card_no(c).get(), a))
                .collect();
            if got_credits.len() != r.credits.len() || got_credits != want_credits {
                return Err(format!(
                    "clearing report of {day}: credits (card → fen): model {want_credits:?}, \
                     store {:?}",
                    r.credits
                ));
            }
            if r.loaded != (0, Fen::ZERO) {
                return Err(format!(
                    "clearing report of {day}: loaded {:?} though nothing was loaded",
                    r.loaded
                ));
            }
            Ok(())
        }
        (w, g) => Err(format!(
            "clearing report of {day}: model {}, store {}",
            if w.is_some() {
                "cleared"
            } else {
                "not cleared"
            },
            if g.is_some() { "a report" } else { "none" }
        )),
    }
}

/// Everything at the end of a (prefix of a) stream: the figures, every day's report,
/// stored_seq and the audit per device, released credits; then every card's free points
/// through a refused hold request far in the future (which releases its expired holds),
/// and its balance with nothing held.
async fn end_checks<S: Store + StoreAudit>(
    s: &S,
    m: &mut Model,
    holds: &mut Vec<Option<HoldId>>,
) -> Result<(), String> {
    check_figures(s, m).await?;
    for date in 0..DATES.len() {
        check_report(s, m, date).await?;
    }
    for (dev, d) in DEVICES.iter().enumerate() {
        let got = s.stored_seq(d.id, None).await.map_err(se)?;
        let want = m.stored_seq(dev);
        if got != want {
            return Err(format!(
                "stored_seq of device {}: model {want:?}, store {got:?}",
                d.id
            ));
        }
    }
    let audit = s.audit().await.map_err(se)?;
    let want_devices = m.device_audits();
    if audit.devices != want_devices {
        return Err(format!(
            "audit devices: model {want_devices:?}, store {:?}",
            audit.devices
        ));
    }
    if audit.released != m.released() || audit.loaded != (0, Fen::ZERO) {
        return Err(format!(
            "audit credits: model released {:?} loaded (0, 0), store released {:?} loaded {:?}",
            m.released(),
            audit.released,
            audit.loaded
        ));
    }
    let far = m.last_now + 1_000_000_000;
    for card in 0..CARDS {
        let want = m.create_hold(far, card, POS_DEVS[0], SWEEP_POINTS);
        let got = s
            .create_hold(HoldRequest {
                card_no: card_no(card),
                device_id: DEVICES[POS_DEVS[0]].id,
                points: Points(SWEEP_POINTS),
                purchase_fen: Fen(i64::from(SWEEP_POINTS) * FEN_PER_POINT * 2),
                now_ms: far,
                expires_at_ms: far + HOLD_TTL_MS,
            })
            .await
            .map_err(se)?;
        match (want, got) {
            (HoldPred::Insufficient { available }, HoldOutcome::Insufficient { available: a })
                if a.get() == available =>
            {
                holds.push(None);
            }
            (w, g) => {
                return Err(format!(
                    "free points of card {card} at the end: model {w:?}, store {g:?}"
                ));
            }
        }
        let got = s.points_balance(card_no(card)).await.map_err(se)?;
        let want = (Points(u32::try_from(m.points[card]).unwrap()), Points(0));
        if got != want {
            return Err(format!(
                "points of card {card} at the end: model {want:?}, store {got:?} (balance, held)"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Seeds, time bound, shrinking.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Config {
    seeds: Vec<u64>,
    ops: usize,
    prefix: Option<usize>,
    time_limit: Option<Duration>,
}

impl Config {
    fn from_env() -> Self {
        let var = |name: &str| -> Option<u64> {
            let v = std::env::var(name).ok()?;
            Some(
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
            )
        };
        let seeds_n = var("WENXIAO_MODEL_SEEDS");
        let ops = var("WENXIAO_MODEL_OPS");
        let one = var("WENXIAO_MODEL_SEED");
        let prefix = var("WENXIAO_MODEL_PREFIX");
        let secs = var("WENXIAO_MODEL_SECS");
        let overridden = seeds_n.is_some() || ops.is_some() || one.is_some();
        let seeds = match one {
            Some(s) => vec![s],
            None => (1..=seeds_n.unwrap_or(DEFAULT_SEEDS)).collect(),
        };
        let time_limit = match secs {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None if overridden => None,
            None => Some(Duration::from_secs(DEFAULT_SECS)),
        };
        Self {
            seeds,
            ops: ops
                .map_or(DEFAULT_OPS, |n| usize::try_from(n).unwrap())
                .max(1),
            prefix: prefix.map(|p| usize::try_from(p).unwrap()),
            time_limit,
        }
    }
}

/// Every seed's stream against fresh stores from `make`, until the seeds or the time run
/// out; a disagreement is shrunk and fails the test with its seed.
async fn agree_with_the_model<S, G, F, Fut>(store_name: &str, make: F)
where
    S: Store + StoreAudit,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, G)>,
{
    for date in 0..DATES.len() {
        for hour in [6, 23] {
            assert_eq!(
                wenxiao_gateway::clock::business_date(day_start_ms(date) + hour * HOUR_MS),
                Some(business_date(date)),
                "the test's calendar"
            );
        }
    }
    let cfg = Config::from_env();
    let started = Instant::now();
    let (mut seeds_run, mut ops_run) = (0usize, 0usize);
    for &seed in &cfg.seeds {
        if let Some(limit) = cfg.time_limit
            && started.elapsed() >= limit
        {
            println!(
                "{store_name}: time limit of {limit:?} reached, {} of {} seeds not started",
                cfg.seeds.len() - seeds_run,
                cfg.seeds.len()
            );
            break;
        }
        let stream = generate(seed, cfg.ops);
        let len = cfg.prefix.unwrap_or(stream.ops.len()).min(stream.ops.len());
        let (store, guard) = make().await;
        let outcome = run(&store, &stream, len).await;
        drop(store);
        drop(guard);
        if let Err(first) = outcome {
            eprintln!(
                "{store_name}: seed {seed} disagrees with the model at op {} of {len}: {}\n\
                 shrinking…",
                first.at, first.message
            );
            let (shortest, failure) = shrink(&make, &stream, &first, len).await;
            panic!(
                "{}",
                failure_report(store_name, &stream, &first, shortest, &failure)
            );
        }
        seeds_run += 1;
        ops_run += len;
    }
    println!(
        "{store_name}: {seeds_run} seeds, {ops_run} operations agreed with the model in {:.1?}",
        started.elapsed()
    );
}

/// The shortest failing prefix, by bisection between an empty prefix (assumed to pass)
/// and the failing one, with a fresh store per attempt and at most
/// [`SHRINK_ATTEMPTS_MAX`] attempts.
async fn shrink<S, G, F, Fut>(
    make: &F,
    stream: &Stream,
    first: &Failure,
    len: usize,
) -> (usize, Failure)
where
    S: Store + StoreAudit,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, G)>,
{
    let mut hi = (first.at + 1).min(len);
    let mut failure = first.clone();
    let mut lo = 0;
    let mut attempts = 0;
    while hi - lo > 1 && attempts < SHRINK_ATTEMPTS_MAX {
        attempts += 1;
        let mid = lo + (hi - lo) / 2;
        let (store, guard) = make().await;
        let outcome = run(&store, stream, mid).await;
        drop(store);
        drop(guard);
        match outcome {
            Err(f) => {
                hi = mid;
                failure = f;
            }
            Ok(()) => lo = mid,
        }
    }
    (hi, failure)
}

fn failure_report(
    store_name: &str,
    stream: &Stream,
    first: &Failure,
    shortest: usize,
    failure: &Failure,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{store_name} store disagrees with the model: seed {}, stream of {} ops, {:?}",
        stream.seed,
        stream.ops.len(),
        stream.scenario
    );
    let _ = writeln!(
        s,
        "first disagreement at op {}: {}",
        first.at, first.message
    );
    let at = if failure.at >= shortest {
        "at the end-of-run checks".to_owned()
    } else {
        format!("at op {}", failure.at)
    };
    let _ = writeln!(
        s,
        "shortest failing prefix: {shortest} ops, failing {at}: {}",
        failure.message
    );
    let _ = writeln!(
        s,
        "replay: WENXIAO_MODEL_SEED={} WENXIAO_MODEL_OPS={} WENXIAO_MODEL_PREFIX={shortest} \
         cargo test -p wenxiao-tests --test ledger_model {store_name}_agrees_with_the_model \
         -- --nocapture",
        stream.seed,
        stream.ops.len()
    );
    let from = shortest.saturating_sub(OPS_PRINTED_MAX);
    let _ = writeln!(s, "ops {from}..{shortest} of the prefix:");
    for (i, op) in stream.ops[..shortest].iter().enumerate().skip(from) {
        let _ = writeln!(s, "  [{i}] {}", describe_op(op));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_agrees_with_the_model() {
    agree_with_the_model("sqlite", wenxiao_tests::fresh_sqlite_store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_agrees_with_the_model() {
    agree_with_the_model("postgres", || async {
        (wenxiao_tests::fresh_pg_store().await, ())
    })
    .await;
}
