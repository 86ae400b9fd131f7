//! The fraud and risk rules (policy: "Fraud and risk") over committed transactions.
//!
//! Pure: no I/O, no clock, no store. The gateway feeds every stored transaction as a
//! [`Fact`] after commit, and [`Engine::evaluate`] answers with [`Alert`]s. Time comes
//! from the facts (`occurred_at_ms`, the device's time, for the travel, counter and
//! refund rules; `business_date` for everything per day), so a replay of the same facts
//! gives the same alerts.
//!
//! Facts are counted exactly once per (device, seq) — the feed may offer one twice (a
//! queue after commit, then a catch-up from the store) and out of order — see
//! [`SeqSeen`]. Each rule fires at most once per subject (card or merchant) and business
//! day: a card buying 100 times gives one velocity hit, not 90.
//!
//! Memory is bounded by [`Engine::prune`], which the gateway calls at least once a
//! business day:
//! - per card and day (velocity counts, evidence, rules fired) and per merchant and day
//!   (refund ratio, collusion shares, evidence): today and `late_days_max` days before;
//! - per merchant and day purchase counts (spike history): the same, plus four weeks;
//! - per card (last placed transaction, highest offline counter, counted refunds): cards
//!   seen within `card_idle_days_max` days;
//! - per device (seqs seen): the watermark and the seqs above it, never pruned (devices
//!   are a registry's few thousand); the seqs above stay few as long as every seq is
//!   offered or marked (see [`SeqSeen`]), and past `seen_above_max` they are counted.
//!
//! Evidence lists hold at most `evidence_txns_max` transactions each.

use super::config::{
    CollusionConfig, CounterConfig, RefundConfig, RiskConfig, SpikeConfig, TravelConfig,
    VelocityConfig,
};
use crate::registry::MerchantId;
use chrono::{Datelike, NaiveDate};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use wenxiao_protocol::{BusinessDate, CardNo, DeviceId, Fen, TxnKind};

/// Milliseconds in a day (for the refund window; business days themselves come from
/// `business_date`, never from milliseconds).
const DAY_MS: i64 = 86_400_000;

/// The spike rule compares with the same weekday of this many weeks before.
const SPIKE_WEEKS: u32 = 4;

/// Daily purchase counts are clamped here in the spike arithmetic, which keeps every
/// product inside u128 whatever `load_history` is given (no merchant sells 4 billion
/// times a day).
const COUNT_CLAMP: u64 = 1 << 32;

/// One stored transaction, as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    /// The device that sent it.
    pub device_id: DeviceId,
    /// Its seq on that device (≥ 1, dense per device).
    pub seq: u64,
    /// The merchant the device stands at (none for OTA endpoints).
    pub merchant_id: Option<MerchantId>,
    /// PURCHASE, SIGN_IN, TOP_UP or REFUND.
    pub kind: TxnKind,
    /// The card.
    pub card_no: CardNo,
    /// The card's counter: the offline counter for PURCHASE and SIGN_IN, the online
    /// counter for TOP_UP and REFUND.
    pub card_counter: u32,
    /// Money moved.
    pub amount_fen: Fen,
    /// The subsidy granted at commit (PURCHASE).
    pub subsidy_fen: Fen,
    /// When the device says it happened.
    pub occurred_at_ms: i64,
    /// When the gateway received it.
    pub received_at_ms: i64,
    /// Its business day (Asia/Shanghai, by receipt).
    pub business_date: BusinessDate,
    /// REFUND only: the purchase it refunds.
    pub refund_of: Option<RefundOf>,
}

/// The purchase a REFUND refunds, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundOf {
    /// The purchase's seq (on the same device).
    pub purchase_seq: u64,
    /// When the purchase happened (device time).
    pub purchase_occurred_at_ms: i64,
    /// What it paid.
    pub purchase_amount_fen: Fen,
    /// The subsidy it earned.
    pub purchase_subsidy_fen: Fen,
}

/// Where a merchant is, in micro-degrees (WGS-84).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    /// Latitude × 10⁶.
    pub lat_e6: i32,
    /// Longitude × 10⁶.
    pub lon_e6: i32,
}

impl Place {
    /// A place from micro-degrees.
    pub const fn new(lat_e6: i32, lon_e6: i32) -> Self {
        Self { lat_e6, lon_e6 }
    }
}

/// The merchants' places. A merchant without one never takes part in the travel rule.
#[derive(Debug, Clone, Default)]
pub struct Places(HashMap<MerchantId, Place>);

impl Places {
    /// From a map of merchant to place.
    pub fn new(places: HashMap<MerchantId, Place>) -> Self {
        Self(places)
    }

    /// Where `merchant` is, if known.
    pub fn get(&self, merchant: MerchantId) -> Option<Place> {
        self.0.get(&merchant).copied()
    }

    /// How many merchants have a place.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No merchant has a place.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(MerchantId, Place)> for Places {
    fn from_iter<I: IntoIterator<Item = (MerchantId, Place)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// How serious a hit is: how far its figure passes its threshold (`medium_at_permille`,
/// `high_at_permille`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Band {
    /// At least the threshold.
    Low,
    /// At least `medium_at_permille` of it (1.5×).
    Medium,
    /// At least `high_at_permille` of it (2×).
    High,
}

impl Band {
    /// 1 LOW, 2 MEDIUM, 3 HIGH (as stored).
    pub const fn code(self) -> i16 {
        match self {
            Self::Low => 1,
            Self::Medium => 2,
            Self::High => 3,
        }
    }

    /// `"low"`, `"medium"` or `"high"` (a bounded metric label).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// A rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleId {
    /// Purchases, money or subsidy of one card in one day.
    Velocity,
    /// One card at two merchants too far apart for the time between.
    Travel,
    /// A card's offline counter jumping ahead or going back in time.
    Counter,
    /// One card refunding subsidised purchases again and again.
    Refund,
    /// A merchant refunding too many of the day's subsidised purchases.
    RefundRatio,
    /// A merchant's purchases far above its own history.
    Spike,
    /// A merchant's subsidy concentrated on few cards.
    Collusion,
}

impl RuleId {
    /// Every rule, in the order an alert lists its hits.
    pub const ALL: &'static [RuleId] = &[
        Self::Velocity,
        Self::Travel,
        Self::Counter,
        Self::Refund,
        Self::RefundRatio,
        Self::Spike,
        Self::Collusion,
    ];

    /// The rule's name, as in `config/risk.toml` and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Velocity => "velocity",
            Self::Travel => "travel",
            Self::Counter => "counter",
            Self::Refund => "refund",
            Self::RefundRatio => "refund_ratio",
            Self::Spike => "spike",
            Self::Collusion => "collusion",
        }
    }

    /// The rule with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// Its bit in [`Fired`].
    const fn bit(self) -> u8 {
        match self {
            Self::Velocity => 1,
            Self::Travel => 1 << 1,
            Self::Counter => 1 << 2,
            Self::Refund => 1 << 3,
            Self::RefundRatio => 1 << 4,
            Self::Spike => 1 << 5,
            Self::Collusion => 1 << 6,
        }
    }
}

/// One rule's case against a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    /// The rule.
    pub rule: RuleId,
    /// How far its figure passed the threshold.
    pub band: Band,
    /// The figures that make the case, each named with its unit (`speed_kmh`, …).
    pub figures: Vec<(&'static str, i64)>,
    /// The transactions that make the case, as (device, seq), oldest first; at most
    /// `evidence_txns_max`, the most recently evaluated.
    pub evidence: Vec<(DeviceId, u64)>,
}

/// Whom an alert is about: also what a case or a report is about (the store keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A card: blacklisted when its case is confirmed.
    Card(CardNo),
    /// A merchant: suspended when its case is confirmed.
    Merchant(MerchantId),
}

/// The rules that fired on one subject for one fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Whom it is about.
    pub subject: Subject,
    /// The business day of the fact (and of the hits: each rule fires once per subject
    /// and day).
    pub business_date: BusinessDate,
    /// The highest band of the hits.
    pub band: Band,
    /// The hits, in [`RuleId::ALL`] order; never empty.
    pub hits: Vec<RuleHit>,
    /// The fact's `received_at_ms`.
    pub at_ms: i64,
}

/// Gauges and counters of the engine's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Cards with per-card state (travel, counter, refunds).
    pub cards_count: u64,
    /// (card, day) entries (velocity, rules fired).
    pub card_days_count: u64,
    /// Distinct merchants with per-day state or purchase counts.
    pub merchants_count: u64,
    /// (merchant, day) entries (refund ratio, collusion, rules fired).
    pub merchant_days_count: u64,
    /// (merchant, day) purchase counts held for the spike rule.
    pub merchant_counts_count: u64,
    /// Devices whose seqs are tracked.
    pub devices_count: u64,
    /// Seqs held above the devices' watermarks, all devices together.
    pub seen_above_count: u64,
    /// Facts evaluated (first offers of a (device, seq) within the horizon).
    pub facts_total: u64,
    /// Offers of a (device, seq) already seen, ignored.
    pub duplicates_total: u64,
    /// First offers of a fact older than the pruned horizon, ignored.
    pub stale_facts_total: u64,
    /// Seqs recorded while their device already held `seen_above_max` above its watermark.
    pub seen_above_overflow_total: u64,
}

/// The seqs of one device seen so far: every seq up to `watermark`, and those in `above`.
///
/// Seqs start at 1 and are dense per device, so `above` holds only the seqs that arrived
/// ahead of a gap and empties as the gap fills. Its bound (`seen_above_max`) is soft: past
/// it a seq is still recorded, and counted. The trade: forgetting seqs (advancing the
/// watermark over a gap) would keep memory flat but count a late seq of the gap as seen —
/// a lost fact — while remembering keeps exactly-once and costs some 16 bytes a seq. A
/// gap that never fills (a seq that is never offered) is the way `above` grows without
/// end: the feed must offer every seq, [`Engine::mark_seen`] the ones that are not facts
/// (rejected transactions), and [`Engine::skip_through`] those before a rebuild's start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSeen {
    watermark: u64,
    above: BTreeSet<u64>,
}

impl SeqSeen {
    /// The highest seq such that it and every seq below it were seen (0: none yet).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// How many seqs above the watermark were seen.
    pub fn above_count(&self) -> usize {
        self.above.len()
    }

    /// Whether `seq` was seen. Seq 0 is never valid and counts as seen.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.watermark || self.above.contains(&seq)
    }

    /// Records `seq`; true when it had not been seen.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        if Some(seq) == self.watermark.checked_add(1) {
            self.watermark = seq;
            self.absorb();
        } else {
            self.above.insert(seq);
        }
        true
    }

    /// Counts every seq up to `seq` as seen: a baseline for seqs that will never be
    /// offered (those before a rebuild's first day).
    pub fn skip_through(&mut self, seq: u64) {
        if seq <= self.watermark {
            return;
        }
        self.watermark = seq;
        match seq.checked_add(1) {
            // `split_off` keeps the seqs below its key in place and returns the rest.
            Some(next) => self.above = self.above.split_off(&next),
            None => self.above.clear(),
        }
        self.absorb();
    }

    /// Moves the watermark over the seqs above it that are now contiguous with it.
    fn absorb(&mut self) {
        while let Some(next) = self.watermark.checked_add(1)
            && self.above.remove(&next)
        {
            self.watermark = next;
        }
    }
}

/// A business day as a day number (days from 0001-01-01), so that "7 days before" is a
/// subtraction and the same weekday of earlier weeks is `day − 7k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
struct Day(i32);

impl Day {
    fn of(date: BusinessDate) -> Self {
        // A BusinessDate is always a real date of years 1–9999, inside chrono's range,
        // so the fallback is never taken.
        let n = i32::try_from(date.year())
            .ok()
            .and_then(|y| NaiveDate::from_ymd_opt(y, date.month(), date.day()))
            .map_or(0, |d| Datelike::num_days_from_ce(&d));
        Self(n)
    }

    fn minus(self, days: u32) -> Self {
        Self(
            self.0
                .saturating_sub(i32::try_from(days).unwrap_or(i32::MAX)),
        )
    }
}

/// A transaction's name in evidence.
type TxnRef = (DeviceId, u64);

/// The most recent transactions, at most `max`, oldest first.
#[derive(Debug, Clone, Default)]
struct Ring(VecDeque<TxnRef>);

impl Ring {
    fn push(&mut self, txn: TxnRef, max: usize) {
        if max == 0 {
            return;
        }
        while self.0.len() >= max {
            self.0.pop_front();
        }
        self.0.push_back(txn);
    }

    fn to_vec(&self) -> Vec<TxnRef> {
        self.0.iter().copied().collect()
    }
}

/// The rules that fired for one subject and day.
#[derive(Debug, Clone, Copy, Default)]
struct Fired(u8);

impl Fired {
    fn has(self, rule: RuleId) -> bool {
        self.0 & rule.bit() != 0
    }

    fn set(&mut self, rule: RuleId) {
        self.0 |= rule.bit();
    }
}

/// A card at a placed merchant.
#[derive(Debug, Clone, Copy)]
struct Visit {
    merchant: MerchantId,
    place: Place,
    occurred_at_ms: i64,
    txn: TxnRef,
}

/// A card's highest offline counter and when it happened.
#[derive(Debug, Clone, Copy)]
struct CounterMark {
    counter: u32,
    occurred_at_ms: i64,
    txn: TxnRef,
}

/// A counted refund (of a subsidised purchase, within the window).
#[derive(Debug, Clone, Copy)]
struct RefundMark {
    occurred_at_ms: i64,
    day: Day,
    txn: TxnRef,
}

/// What the engine remembers of one card across days.
#[derive(Debug, Clone, Default)]
struct CardState {
    /// The latest business day of its facts (idle pruning).
    last_day: Day,
    /// Its latest transaction at a placed merchant, by occurred time.
    last_visit: Option<Visit>,
    /// Its highest offline counter.
    offline: Option<CounterMark>,
    /// Its counted refunds, by occurred time, at most `max(evidence_txns_max,
    /// refunds_count_min)`.
    refunds: VecDeque<RefundMark>,
}

/// One card's business day.
#[derive(Debug, Clone, Default)]
struct CardDay {
    purchases: u64,
    amount_fen: i64,
    subsidy_fen: i64,
    recent: Ring,
    fired: Fired,
}

/// One card's subsidy at one merchant in one day.
#[derive(Debug, Clone, Copy)]
struct CardShare {
    subsidy_fen: i64,
    last: TxnRef,
}

/// One merchant's business day.
#[derive(Debug, Clone, Default)]
struct MerchantDay {
    recent_purchases: Ring,
    subsidised_purchases: u64,
    subsidised_refunds: u64,
    recent_refunds: Ring,
    /// Subsidy of the day's subsidised purchases, all cards.
    subsidy_fen: i64,
    /// The same, by card.
    by_card: HashMap<CardNo, CardShare>,
    /// The `top_cards_count` largest entries of `by_card`, unordered (see `update_top`).
    top: Vec<(CardNo, i64)>,
    fired: Fired,
}

/// A merchant's purchases in one day: as loaded from the store and as evaluated here.
#[derive(Debug, Clone, Copy, Default)]
struct DayCount {
    loaded: Option<u64>,
    seen: u64,
}

impl DayCount {
    /// Both are lower bounds of the true count (a load may be of a day still under way,
    /// the engine may have started late), so the larger is the better one — and a day
    /// loaded and then fed again is not counted twice.
    fn count(self) -> u64 {
        self.loaded.map_or(self.seen, |l| l.max(self.seen))
    }
}

/// The band cut points, in thousandths of the threshold.
#[derive(Debug, Clone, Copy)]
struct Cuts {
    medium: u128,
    high: u128,
}

/// The band of a figure that passed `threshold` (both in the same scale).
fn band(cuts: Cuts, figure: u128, threshold: u128) -> Band {
    if threshold == 0 {
        return Band::High;
    }
    let f = figure.saturating_mul(1_000);
    if f >= threshold.saturating_mul(cuts.high) {
        Band::High
    } else if f >= threshold.saturating_mul(cuts.medium) {
        Band::Medium
    } else {
        Band::Low
    }
}

/// A non-negative amount for the threshold arithmetic (negatives count as 0).
fn nn(v: i64) -> u128 {
    u128::try_from(v).unwrap_or(0)
}

/// A figure for a hit.
fn fig(v: u128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A count for stats.
fn count_of(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Great-circle (haversine) distance in whole metres. Coordinates are not money: floats
/// are fine here, and this is the only float arithmetic in the rules.
#[allow(
    clippy::float_arithmetic,
    clippy::cast_possible_truncation,
    reason = "geometry, not money; the result is at most half the Earth's circumference \
              (2.0e7 m) and `as` saturates"
)]
fn distance_m(a: Place, b: Place) -> i64 {
    // The mean Earth radius (IUGG).
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let rad = |e6: i32| (f64::from(e6) / 1e6).to_radians();
    let (lat_a, lat_b) = (rad(a.lat_e6), rad(b.lat_e6));
    let d_lat = lat_b - lat_a;
    let d_lon = rad(b.lon_e6) - rad(a.lon_e6);
    let h = (d_lat / 2.0).sin().powi(2) + lat_a.cos() * lat_b.cos() * (d_lon / 2.0).sin().powi(2);
    // `min`: rounding may take h a hair above 1 for antipodes.
    let c = 2.0 * h.sqrt().min(1.0).asin();
    (EARTH_RADIUS_M * c).round() as i64
}

/// The rules' state and the facts seen. See the module documentation for what it holds
/// and for how long.
#[derive(Debug)]
pub struct Engine {
    config: RiskConfig,
    cuts: Cuts,
    evidence_max: usize,
    seen_above_max: usize,
    places: Places,
    devices: HashMap<DeviceId, SeqSeen>,
    cards: HashMap<CardNo, CardState>,
    card_days: HashMap<(CardNo, Day), CardDay>,
    merchant_days: HashMap<(MerchantId, Day), MerchantDay>,
    merchant_counts: HashMap<(MerchantId, Day), DayCount>,
    /// Facts of days before this are stale (set by `prune`).
    horizon: Day,
    facts_total: u64,
    duplicates_total: u64,
    stale_facts_total: u64,
    seen_above_overflow_total: u64,
}

impl Engine {
    /// An engine with no history. `config` should have passed [`RiskConfig::validate`];
    /// the engine does not panic on one that has not, but its thresholds then mean
    /// little.
    pub fn new(config: RiskConfig, places: Places) -> Engine {
        Engine {
            cuts: Cuts {
                medium: u128::from(config.medium_at_permille),
                high: u128::from(config.high_at_permille),
            },
            evidence_max: usize::try_from(config.evidence_txns_max).unwrap_or(usize::MAX),
            seen_above_max: usize::try_from(config.seen_above_max).unwrap_or(usize::MAX),
            config,
            places,
            devices: HashMap::new(),
            cards: HashMap::new(),
            card_days: HashMap::new(),
            merchant_days: HashMap::new(),
            merchant_counts: HashMap::new(),
            horizon: Day(i32::MIN),
            facts_total: 0,
            duplicates_total: 0,
            stale_facts_total: 0,
            seen_above_overflow_total: 0,
        }
    }

    /// The rules' configuration.
    pub fn config(&self) -> &RiskConfig {
        &self.config
    }

    /// Whether any seq of `device` was offered (or skipped through).
    pub fn knows_device(&self, device: DeviceId) -> bool {
        self.devices.contains_key(&device)
    }

    /// Whether (device, seq) was offered already.
    pub fn seen(&self, device: DeviceId, seq: u64) -> bool {
        self.devices.get(&device).is_some_and(|s| s.contains(seq))
    }

    /// Records (device, seq) as seen without evaluating anything; true when it had not
    /// been. For seqs the store holds that are not facts (rejected transactions, when the
    /// feed offers only stored ones): without it their gap would keep every later seq of
    /// the device above the watermark for good.
    pub fn mark_seen(&mut self, device: DeviceId, seq: u64) -> bool {
        let seen = self.devices.entry(device).or_default();
        let new = seen.insert(seq);
        if new && seen.above_count() > self.seen_above_max {
            self.seen_above_overflow_total = self.seen_above_overflow_total.saturating_add(1);
        }
        new
    }

    /// Counts every seq of `device` up to `seq` as seen, without evaluating anything. A
    /// rebuild that replays facts from some day on must call it first, for each device,
    /// with the highest seq it will not replay (the last one before that day): the engine
    /// otherwise waits for seqs from 1, and holds every replayed seq above the watermark.
    pub fn skip_through(&mut self, device: DeviceId, seq: u64) {
        self.devices.entry(device).or_default().skip_through(seq);
    }

    /// Sets the baseline of a device first seen without one (its earliest facts may still
    /// have been on their way): every seq below the lowest it has seen counts as seen.
    pub fn settle_baseline(&mut self, device: DeviceId) {
        if let Some(seen) = self.devices.get_mut(&device)
            && seen.watermark == 0
            && let Some(lowest) = seen.above.first().copied()
        {
            seen.skip_through(lowest.saturating_sub(1));
        }
    }

    /// A past day's purchase count of `merchant` from the store, for the spike rule (the
    /// gateway loads the last four weeks at start). Loading a day the engine also counts
    /// is safe: the larger of the two counts is used, never their sum.
    pub fn load_history(&mut self, merchant: MerchantId, date: BusinessDate, txn_count: u64) {
        self.merchant_counts
            .entry((merchant, Day::of(date)))
            .or_default()
            .loaded = Some(txn_count);
    }

    /// Forgets what no rule needs any more once `today` is the business day (see the
    /// module documentation for the bounds). Facts of days before today −
    /// `late_days_max` are ignored from now on: their day's state is gone, and counting
    /// them afresh would give wrong figures and fire twice.
    pub fn prune(&mut self, today: BusinessDate) {
        let t = Day::of(today);
        self.horizon = self.horizon.max(t.minus(self.config.late_days_max));
        let horizon = self.horizon;
        self.card_days.retain(|&(_, d), _| d >= horizon);
        self.merchant_days.retain(|&(_, d), _| d >= horizon);
        let history_from = horizon.minus(7 * SPIKE_WEEKS);
        self.merchant_counts.retain(|&(_, d), _| d >= history_from);
        let idle_from = t.minus(self.config.card_idle_days_max);
        // A day of slack: the window is in milliseconds of device time, days are by receipt.
        let refunds_from = horizon.minus(self.config.refund.window_days.saturating_add(1));
        self.cards.retain(|_, card| {
            card.refunds.retain(|r| r.day >= refunds_from);
            card.last_day >= idle_from
        });
    }

    /// What the engine holds, for metrics. Counting distinct merchants walks the
    /// (merchant, day) maps: a few thousand entries.
    pub fn stats(&self) -> EngineStats {
        let merchants: HashSet<MerchantId> = self
            .merchant_days
            .keys()
            .chain(self.merchant_counts.keys())
            .map(|&(m, _)| m)
            .collect();
        EngineStats {
            cards_count: count_of(self.cards.len()),
            card_days_count: count_of(self.card_days.len()),
            merchants_count: count_of(merchants.len()),
            merchant_days_count: count_of(self.merchant_days.len()),
            merchant_counts_count: count_of(self.merchant_counts.len()),
            devices_count: count_of(self.devices.len()),
            seen_above_count: self
                .devices
                .values()
                .map(|s| count_of(s.above_count()))
                .fold(0, u64::saturating_add),
            facts_total: self.facts_total,
            duplicates_total: self.duplicates_total,
            stale_facts_total: self.stale_facts_total,
            seen_above_overflow_total: self.seen_above_overflow_total,
        }
    }

    /// Evaluates one stored transaction: at most one alert for its card and one for its
    /// merchant. A (device, seq) offered before, or of a day before the pruned horizon,
    /// changes nothing and gives nothing.
    pub fn evaluate(&mut self, fact: &Fact) -> Vec<Alert> {
        if !self.mark_seen(fact.device_id, fact.seq) {
            self.duplicates_total = self.duplicates_total.saturating_add(1);
            return Vec::new();
        }
        let day = Day::of(fact.business_date);
        if day < self.horizon {
            self.stale_facts_total = self.stale_facts_total.saturating_add(1);
            return Vec::new();
        }
        self.facts_total = self.facts_total.saturating_add(1);

        let mut card_hits = Vec::new();
        self.card_rules(fact, day, &mut card_hits);
        let mut merchant_hits = Vec::new();
        if let Some(merchant) = fact.merchant_id {
            self.merchant_rules(fact, merchant, day, &mut merchant_hits);
        }

        let mut alerts = Vec::new();
        alerts.extend(alert(Subject::Card(fact.card_no), fact, card_hits));
        if let Some(merchant) = fact.merchant_id {
            alerts.extend(alert(Subject::Merchant(merchant), fact, merchant_hits));
        }
        alerts
    }

    /// Velocity, travel, counter and refund, on the fact's card.
    fn card_rules(&mut self, fact: &Fact, day: Day, hits: &mut Vec<RuleHit>) {
        let cfg = &self.config;
        let txn = (fact.device_id, fact.seq);
        if fact.kind == TxnKind::Purchase && cfg.velocity.enabled {
            let cd = self.card_days.entry((fact.card_no, day)).or_default();
            cd.purchases = cd.purchases.saturating_add(1);
            cd.amount_fen = cd.amount_fen.saturating_add(fact.amount_fen.get().max(0));
            cd.subsidy_fen = cd.subsidy_fen.saturating_add(fact.subsidy_fen.get().max(0));
            cd.recent.push(txn, self.evidence_max);
            if !cd.fired.has(RuleId::Velocity)
                && let Some(hit) = velocity_hit(&cfg.velocity, self.cuts, cd)
            {
                cd.fired.set(RuleId::Velocity);
                hits.push(hit);
            }
        }

        let travel = cfg.travel.enabled && fact.merchant_id.is_some();
        let counter =
            cfg.counter.enabled && matches!(fact.kind, TxnKind::Purchase | TxnKind::SignIn);
        let refund = cfg.refund.enabled && fact.kind == TxnKind::Refund;
        if !(travel || counter || refund) {
            return;
        }
        let card = self.cards.entry(fact.card_no).or_default();
        card.last_day = card.last_day.max(day);
        let travel_found = if travel {
            travel_hit(&cfg.travel, self.cuts, &self.places, card, fact)
        } else {
            None
        };
        let counter_found = if counter {
            counter_hit(&cfg.counter, self.cuts, card, fact)
        } else {
            None
        };
        let refund_found = if refund {
            refund_hit(&cfg.refund, self.cuts, self.evidence_max, card, fact, day)
        } else {
            None
        };
        for hit in [travel_found, counter_found, refund_found]
            .into_iter()
            .flatten()
        {
            let cd = self.card_days.entry((fact.card_no, day)).or_default();
            if !cd.fired.has(hit.rule) {
                cd.fired.set(hit.rule);
                hits.push(hit);
            }
        }
    }

    /// Refund ratio, spike and collusion, on the fact's merchant.
    fn merchant_rules(
        &mut self,
        fact: &Fact,
        merchant: MerchantId,
        day: Day,
        hits: &mut Vec<RuleHit>,
    ) {
        let cfg = &self.config;
        let txn = (fact.device_id, fact.seq);
        let purchase = fact.kind == TxnKind::Purchase;
        let subsidised_purchase = purchase && fact.subsidy_fen.get() > 0;
        let subsidised_refund = fact.kind == TxnKind::Refund
            && fact
                .refund_of
                .is_some_and(|r| r.purchase_subsidy_fen.get() > 0);
        let ratio = cfg.refund.merchant_ratio_enabled && (subsidised_purchase || subsidised_refund);
        let spike = cfg.spike.enabled && purchase;
        let collusion = cfg.collusion.enabled && subsidised_purchase;
        if !(ratio || spike || collusion) {
            return;
        }
        let md = self.merchant_days.entry((merchant, day)).or_default();
        // Counted for the refund ratio and for collusion's minimum alike.
        if subsidised_purchase {
            md.subsidised_purchases = md.subsidised_purchases.saturating_add(1);
        }

        if ratio {
            if !subsidised_purchase {
                md.subsidised_refunds = md.subsidised_refunds.saturating_add(1);
                md.recent_refunds.push(txn, self.evidence_max);
            }
            if !md.fired.has(RuleId::RefundRatio)
                && let Some(mut hit) = ratio_hit(
                    &cfg.refund,
                    self.cuts,
                    md.subsidised_refunds,
                    md.subsidised_purchases,
                )
            {
                hit.evidence = md.recent_refunds.to_vec();
                md.fired.set(RuleId::RefundRatio);
                hits.push(hit);
            }
        }

        if spike {
            md.recent_purchases.push(txn, self.evidence_max);
            let dc = self.merchant_counts.entry((merchant, day)).or_default();
            dc.seen = dc.seen.saturating_add(1);
            let count = dc.count();
            if !md.fired.has(RuleId::Spike)
                && count >= cfg.spike.count_min
                && let Some(mut hit) = spike_hit(
                    &cfg.spike,
                    self.cuts,
                    count,
                    &self.merchant_counts,
                    merchant,
                    day,
                )
            {
                hit.evidence = md.recent_purchases.to_vec();
                md.fired.set(RuleId::Spike);
                hits.push(hit);
            }
        }

        if collusion {
            let subsidy = fact.subsidy_fen.get();
            md.subsidy_fen = md.subsidy_fen.saturating_add(subsidy);
            let share = md.by_card.entry(fact.card_no).or_insert(CardShare {
                subsidy_fen: 0,
                last: txn,
            });
            share.subsidy_fen = share.subsidy_fen.saturating_add(subsidy);
            share.last = txn;
            let value = share.subsidy_fen;
            let k = usize::try_from(cfg.collusion.top_cards_count).unwrap_or(usize::MAX);
            update_top(&mut md.top, k, fact.card_no, value);
            if !md.fired.has(RuleId::Collusion)
                && let Some(hit) = collusion_hit(&cfg.collusion, self.cuts, self.evidence_max, md)
            {
                md.fired.set(RuleId::Collusion);
                hits.push(hit);
            }
        }
    }
}

/// The alert of `hits`, if any.
fn alert(subject: Subject, fact: &Fact, hits: Vec<RuleHit>) -> Option<Alert> {
    let band = hits.iter().map(|h| h.band).max()?;
    Some(Alert {
        subject,
        business_date: fact.business_date,
        band,
        hits,
        at_ms: fact.received_at_ms,
    })
}

/// Velocity: any of the card-day's figures strictly above its maximum; the band of the
/// one that passes furthest.
fn velocity_hit(cfg: &VelocityConfig, cuts: Cuts, cd: &CardDay) -> Option<RuleHit> {
    let mut worst: Option<Band> = None;
    let mut check = |value: u128, max: u128| {
        if value > max {
            worst = worst.max(Some(band(cuts, value, max)));
        }
    };
    check(
        u128::from(cd.purchases),
        u128::from(cfg.purchases_count_max),
    );
    check(nn(cd.amount_fen), nn(cfg.amount_fen_max));
    check(nn(cd.subsidy_fen), nn(cfg.subsidy_fen_max));
    Some(RuleHit {
        rule: RuleId::Velocity,
        band: worst?,
        figures: vec![
            ("purchases_count", fig(u128::from(cd.purchases))),
            ("amount_fen", cd.amount_fen),
            ("subsidy_fen", cd.subsidy_fen),
        ],
        evidence: cd.recent.to_vec(),
    })
}

/// Travel: the fact against the card's latest placed transaction by occurred time —
/// the fact after it (and then the fact becomes the latest), or, arriving late, before
/// it. Every kind counts where the device stands at a placed merchant: each needs the
/// card at the terminal.
fn travel_hit(
    cfg: &TravelConfig,
    cuts: Cuts,
    places: &Places,
    card: &mut CardState,
    fact: &Fact,
) -> Option<RuleHit> {
    let merchant = fact.merchant_id?;
    let place = places.get(merchant)?;
    let here = Visit {
        merchant,
        place,
        occurred_at_ms: fact.occurred_at_ms,
        txn: (fact.device_id, fact.seq),
    };
    let Some(prev) = card.last_visit else {
        card.last_visit = Some(here);
        return None;
    };
    let (earlier, later) = if here.occurred_at_ms >= prev.occurred_at_ms {
        card.last_visit = Some(here);
        (prev, here)
    } else {
        (here, prev)
    };
    if earlier.merchant == later.merchant {
        return None;
    }
    let distance = distance_m(earlier.place, later.place);
    if distance < i64::from(cfg.distance_m_min) {
        return None;
    }
    let elapsed_ms = later.occurred_at_ms.saturating_sub(earlier.occurred_at_ms);
    // km/h = m/ms × 3,600. Compared multiplied out, so no division and no float:
    // distance × 3,600 > speed_max × elapsed. Zero elapsed is an infinite speed.
    let figure = nn(distance).saturating_mul(3_600);
    let threshold = nn(elapsed_ms).saturating_mul(u128::from(cfg.speed_kmh_max));
    if figure <= threshold {
        return None;
    }
    let speed_kmh = figure.checked_div(nn(elapsed_ms)).map_or(i64::MAX, fig);
    Some(RuleHit {
        rule: RuleId::Travel,
        band: band(cuts, figure, threshold),
        figures: vec![
            ("distance_m", distance),
            ("elapsed_ms", elapsed_ms),
            ("speed_kmh", speed_kmh),
        ],
        evidence: vec![earlier.txn, later.txn],
    })
}

/// Counter, on the offline counter of PURCHASE and SIGN_IN only. TOP_UP and REFUND carry
/// the card's separate online counter, which only loads move and which the store already
/// checks for replays; it is not tracked here.
///
/// A jump is judged against the highest counter seen when the fact arrives; a fact that
/// arrives late with a lower counter and an earlier time is simply history.
fn counter_hit(
    cfg: &CounterConfig,
    cuts: Cuts,
    card: &mut CardState,
    fact: &Fact,
) -> Option<RuleHit> {
    let here = CounterMark {
        counter: fact.card_counter,
        occurred_at_ms: fact.occurred_at_ms,
        txn: (fact.device_id, fact.seq),
    };
    let Some(top) = card.offline else {
        card.offline = Some(here);
        return None;
    };
    if here.counter > top.counter {
        card.offline = Some(here);
        let jump = here.counter - top.counter;
        if jump <= cfg.jump_count_max {
            return None;
        }
        return Some(RuleHit {
            rule: RuleId::Counter,
            band: band(cuts, u128::from(jump), u128::from(cfg.jump_count_max)),
            figures: vec![
                ("counter", i64::from(here.counter)),
                ("previous_counter", i64::from(top.counter)),
                ("jump_count", i64::from(jump)),
            ],
            evidence: vec![top.txn, here.txn],
        });
    }
    let later_by_ms = here.occurred_at_ms.saturating_sub(top.occurred_at_ms);
    if here.counter < top.counter && later_by_ms > cfg.clock_skew_ms_max {
        // A card's counter never goes down: a lower one used after the highest is a
        // second card with the same number (a clone). No threshold to pass by a ratio,
        // and nothing honest explains it beyond clock skew, so HIGH.
        return Some(RuleHit {
            rule: RuleId::Counter,
            band: Band::High,
            figures: vec![
                ("counter", i64::from(here.counter)),
                ("highest_counter", i64::from(top.counter)),
                ("later_by_ms", later_by_ms),
            ],
            evidence: vec![top.txn, here.txn],
        });
    }
    // An equal counter is a replay, which the store refuses (CARD_COUNTER_REPLAY).
    None
}

/// Refund cycling: a refund of a subsidised purchase, within the window of it, counts;
/// the card fires when a window's length of time holds `refunds_count_min` counted
/// refunds, this one among them.
fn refund_hit(
    cfg: &RefundConfig,
    cuts: Cuts,
    evidence_max: usize,
    card: &mut CardState,
    fact: &Fact,
    day: Day,
) -> Option<RuleHit> {
    let of = fact.refund_of?;
    if of.purchase_subsidy_fen.get() <= 0 {
        return None;
    }
    let window_ms = i64::from(cfg.window_days).saturating_mul(DAY_MS);
    if fact
        .occurred_at_ms
        .saturating_sub(of.purchase_occurred_at_ms)
        > window_ms
    {
        return None;
    }
    let at = fact.occurred_at_ms;
    let marks = &mut card.refunds;
    let i = marks.partition_point(|m| m.occurred_at_ms <= at);
    marks.insert(
        i,
        RefundMark {
            occurred_at_ms: at,
            day,
            txn: (fact.device_id, fact.seq),
        },
    );
    // Keep only what can share a window with the newest, and at most the bound.
    let min_count = usize::try_from(cfg.refunds_count_min).unwrap_or(usize::MAX);
    let bound = evidence_max.max(min_count).max(1);
    let newest = marks.back().map_or(at, |m| m.occurred_at_ms);
    while marks.len() > bound
        || marks
            .front()
            .is_some_and(|m| m.occurred_at_ms < newest.saturating_sub(window_ms))
    {
        marks.pop_front();
    }
    // The fullest window [start, start + window] that holds this refund; the list is
    // short (≤ bound) and refunds are rare, so quadratic is fine.
    let mut best: Option<(usize, usize)> = None; // (first index, count)
    for (first, start) in marks.iter().enumerate() {
        if start.occurred_at_ms > at {
            break;
        }
        let end = start.occurred_at_ms.saturating_add(window_ms);
        if at > end {
            continue;
        }
        let n = marks
            .iter()
            .skip(first)
            .take_while(|m| m.occurred_at_ms <= end)
            .count();
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((first, n));
        }
    }
    let (first, n) = best?;
    if n < min_count {
        return None;
    }
    let skip = first.saturating_add(n.saturating_sub(evidence_max));
    Some(RuleHit {
        rule: RuleId::Refund,
        band: band(cuts, count_u128(n), u128::from(cfg.refunds_count_min)),
        figures: vec![
            ("refunds_count", fig(count_u128(n))),
            ("window_days", i64::from(cfg.window_days)),
        ],
        evidence: marks
            .iter()
            .skip(skip)
            .take(n.min(evidence_max))
            .map(|m| m.txn)
            .collect(),
    })
}

/// A length for the threshold arithmetic.
fn count_u128(n: usize) -> u128 {
    u128::try_from(n).unwrap_or(u128::MAX)
}

/// Refund ratio of a merchant-day: refunds × 1000 > max_permille × purchases, once the
/// day has `merchant_purchases_min` subsidised purchases. Evidence is set by the caller.
fn ratio_hit(cfg: &RefundConfig, cuts: Cuts, refunds: u64, purchases: u64) -> Option<RuleHit> {
    if purchases == 0 || purchases < cfg.merchant_purchases_min {
        return None;
    }
    let figure = u128::from(refunds).saturating_mul(1_000);
    let threshold =
        u128::from(cfg.merchant_ratio_permille_max).saturating_mul(u128::from(purchases));
    if figure <= threshold {
        return None;
    }
    Some(RuleHit {
        rule: RuleId::RefundRatio,
        band: band(cuts, figure, threshold),
        figures: vec![
            ("refunds_count", fig(u128::from(refunds))),
            ("purchases_count", fig(u128::from(purchases))),
            ("ratio_permille", fig(figure / u128::from(purchases))),
        ],
        evidence: Vec::new(),
    })
}

/// Spike: today's `count` against the same weekday of the last four weeks.
///
/// With n known weeks, S = Σx and Q = Σx², the mean is S/n and n·σ = √(nQ − S²)
/// (population σ), and the σ floor is n·σ_floor = floor_permille·S/1000. The rule fires
/// when count > mean + k·σ_eff; multiplied by 10⁶·n that is
/// 10⁶·n·count > 10⁶·S + k_permille·X with X = max(1000·⌈√(nQ − S²)⌉, floor_permille·S),
/// all integers. √ is rounded up, so rounding never makes the rule fire. Evidence is set
/// by the caller.
fn spike_hit(
    cfg: &SpikeConfig,
    cuts: Cuts,
    count: u64,
    counts: &HashMap<(MerchantId, Day), DayCount>,
    merchant: MerchantId,
    day: Day,
) -> Option<RuleHit> {
    let (mut n, mut s, mut q) = (0u128, 0u128, 0u128);
    for week in 1..=SPIKE_WEEKS {
        if let Some(c) = counts.get(&(merchant, day.minus(7 * week))) {
            let x = u128::from(c.count().min(COUNT_CLAMP));
            n += 1;
            s += x;
            q += x * x;
        }
    }
    if n == 0 || n < u128::from(cfg.history_weeks_min) {
        return None;
    }
    let d = n.checked_mul(q)?.saturating_sub(s.checked_mul(s)?);
    let root = d.isqrt();
    let root = if root * root < d { root + 1 } else { root };
    let x = root
        .checked_mul(1_000)?
        .max(u128::from(cfg.sigma_floor_permille).checked_mul(s)?);
    let lhs = n
        .checked_mul(1_000_000)?
        .checked_mul(u128::from(count.min(COUNT_CLAMP)))?;
    let threshold = s
        .checked_mul(1_000_000)?
        .checked_add(u128::from(cfg.k_sigma_permille).checked_mul(x)?)?;
    if lhs <= threshold {
        return None;
    }
    Some(RuleHit {
        rule: RuleId::Spike,
        band: band(cuts, lhs, threshold),
        figures: vec![
            ("purchases_count", fig(u128::from(count))),
            ("mean_count", fig(s / n)),
            ("sigma_count", fig(x / (1_000 * n))),
            ("threshold_count", fig(threshold / (1_000_000 * n))),
            ("weeks_known_count", fig(n)),
        ],
        evidence: Vec::new(),
    })
}

/// Keeps `top` the `k` largest (card, subsidy) of a merchant-day as `card`'s subsidy rises
/// to `value`. Exact because a card's subsidy of the day only rises (REFUNDs are not
/// counted in this rule): a card outside `top` can only enter by rising, which is when it
/// is looked at, and it then displaces the smallest, which no card outside exceeds. O(k)
/// per subsidised purchase, no recomputation.
fn update_top(top: &mut Vec<(CardNo, i64)>, k: usize, card: CardNo, value: i64) {
    if let Some(slot) = top.iter_mut().find(|t| t.0 == card) {
        slot.1 = value;
        return;
    }
    if top.len() < k {
        top.push((card, value));
        return;
    }
    if let Some(smallest) = top.iter_mut().min_by_key(|t| t.1)
        && value > smallest.1
    {
        *smallest = (card, value);
    }
}

/// Collusion: once the merchant-day's subsidy reaches the minimum, its top cards' share
/// ≥ the minimum share. The band is that of whichever passes further: the share, or the
/// day's subsidy against the minimum (the money at stake) — the share alone could never
/// reach HIGH (1000‰ is 1.67× the default 600‰).
fn collusion_hit(
    cfg: &CollusionConfig,
    cuts: Cuts,
    evidence_max: usize,
    md: &MerchantDay,
) -> Option<RuleHit> {
    if md.subsidy_fen < cfg.subsidy_fen_min
        || md.subsidy_fen <= 0
        || md.subsidised_purchases < cfg.purchases_min
    {
        return None;
    }
    let top_sum = md.top.iter().map(|t| t.1).fold(0i64, i64::saturating_add);
    let total = nn(md.subsidy_fen);
    let figure = nn(top_sum).saturating_mul(1_000);
    let threshold = u128::from(cfg.top_share_permille_min).saturating_mul(total);
    if figure < threshold {
        return None;
    }
    let worst = band(cuts, figure, threshold).max(band(cuts, total, nn(cfg.subsidy_fen_min)));
    let mut top = md.top.clone();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    Some(RuleHit {
        rule: RuleId::Collusion,
        band: worst,
        figures: vec![
            ("subsidy_fen", md.subsidy_fen),
            ("top_cards_subsidy_fen", top_sum),
            ("top_share_permille", fig(figure / total)),
            ("cards_count", fig(count_u128(md.by_card.len()))),
        ],
        // Each top card's latest purchase at the merchant, biggest card first.
        evidence: top
            .iter()
            .filter_map(|(c, _)| md.by_card.get(c).map(|s| s.last))
            .take(evidence_max)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-11-02 10:00 Asia/Shanghai.
    const T0: i64 = 1_793_584_800_000;
    const MINUTE_MS: i64 = 60_000;
    const MONDAY: u32 = 20261102;

    fn date(d: u32) -> BusinessDate {
        BusinessDate::new(d).unwrap()
    }

    /// A purchase of ¥10 at merchant 1, counter = seq, one minute after the last.
    fn purchase(device: u64, seq: u64, card: u64) -> Fact {
        Fact {
            device_id: DeviceId(device),
            seq,
            merchant_id: Some(MerchantId(1)),
            kind: TxnKind::Purchase,
            card_no: CardNo(card),
            card_counter: u32::try_from(seq).unwrap(),
            amount_fen: Fen(1_000),
            subsidy_fen: Fen(0),
            occurred_at_ms: T0 + i64::try_from(seq).unwrap() * MINUTE_MS,
            received_at_ms: T0 + i64::try_from(seq).unwrap() * MINUTE_MS + 500,
            business_date: date(MONDAY),
            refund_of: None,
        }
    }

    /// The default rules with only `rule` enabled.
    fn only(rule: RuleId) -> RiskConfig {
        let mut c = RiskConfig::default();
        c.velocity.enabled = rule == RuleId::Velocity;
        c.travel.enabled = rule == RuleId::Travel;
        c.counter.enabled = rule == RuleId::Counter;
        c.refund.enabled = rule == RuleId::Refund;
        c.refund.merchant_ratio_enabled = rule == RuleId::RefundRatio;
        c.spike.enabled = rule == RuleId::Spike;
        c.collusion.enabled = rule == RuleId::Collusion;
        c
    }

    fn engine(rule: RuleId) -> Engine {
        Engine::new(only(rule), Places::default())
    }

    /// Every hit of `rule` in `alerts`.
    fn hits_of(alerts: &[Alert], rule: RuleId) -> Vec<RuleHit> {
        alerts
            .iter()
            .flat_map(|a| a.hits.iter())
            .filter(|h| h.rule == rule)
            .cloned()
            .collect()
    }

    /// Feeds every fact and returns every alert.
    fn feed(e: &mut Engine, facts: impl IntoIterator<Item = Fact>) -> Vec<Alert> {
        facts.into_iter().flat_map(|f| e.evaluate(&f)).collect()
    }

    // --- velocity -------------------------------------------------------------------

    #[test]
    fn velocity_fires_once_per_card_and_day_with_the_band_of_the_worst_figure() {
        let mut e = engine(RuleId::Velocity);
        // One ¥10,000 purchase: 2× the ¥5,000 amount maximum.
        let big = Fact {
            amount_fen: Fen(1_000_000),
            ..purchase(1, 1, 7)
        };
        let alerts = e.evaluate(&big);
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(a.subject, Subject::Card(CardNo(7)));
        assert_eq!(a.business_date, date(MONDAY));
        assert_eq!(a.at_ms, big.received_at_ms);
        assert_eq!(a.band, Band::High);
        assert_eq!(a.hits.len(), 1);
        let hit = &a.hits[0];
        assert_eq!(hit.rule, RuleId::Velocity);
        assert_eq!(hit.band, Band::High);
        assert_eq!(
            hit.figures,
            vec![
                ("purchases_count", 1),
                ("amount_fen", 1_000_000),
                ("subsidy_fen", 0)
            ]
        );
        assert_eq!(hit.evidence, vec![(DeviceId(1), 1)]);
        // A hundred more purchases that day: no second hit.
        assert!(feed(&mut e, (2..=101).map(|s| purchase(1, s, 7))).is_empty());

        // Subsidy 90,000 fen against 60,000: 1.5× → MEDIUM.
        let subsidised = Fact {
            subsidy_fen: Fen(90_000),
            ..purchase(2, 1, 8)
        };
        let hits = hits_of(&e.evaluate(&subsidised), RuleId::Velocity);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::Medium);
        assert_eq!(hits[0].figures[2], ("subsidy_fen", 90_000));

        // The 13th purchase of a card passes 12: LOW, and the evidence is the last 20.
        let alerts = feed(&mut e, (1..=30).map(|s| purchase(3, s, 9)));
        let hits = hits_of(&alerts, RuleId::Velocity);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::Low);
        assert_eq!(hits[0].figures[0], ("purchases_count", 13));
        assert_eq!(hits[0].evidence.len(), 13);
        assert_eq!(hits[0].evidence.last(), Some(&(DeviceId(3), 13)));

        // The next business day starts afresh.
        let next_day = Fact {
            business_date: date(MONDAY + 1),
            amount_fen: Fen(1_000_000),
            ..purchase(1, 200, 7)
        };
        assert_eq!(hits_of(&e.evaluate(&next_day), RuleId::Velocity).len(), 1);
    }

    #[test]
    fn velocity_at_its_maxima_does_not_fire() {
        let mut e = engine(RuleId::Velocity);
        // 12 purchases, ¥4,920 and 60,000 fen of subsidy: every figure at or under its max.
        let facts = (1..=12).map(|s| Fact {
            amount_fen: Fen(41_000),
            subsidy_fen: Fen(5_000),
            ..purchase(1, s, 7)
        });
        assert!(feed(&mut e, facts).is_empty());

        // Disabled, even ¥1,000,000 does not fire.
        let mut c = only(RuleId::Velocity);
        c.velocity.enabled = false;
        let mut e = Engine::new(c, Places::default());
        let big = Fact {
            amount_fen: Fen(100_000_000),
            ..purchase(1, 1, 7)
        };
        assert!(e.evaluate(&big).is_empty());
    }

    // --- exactly once ---------------------------------------------------------------

    #[test]
    fn a_fact_offered_twice_counts_once() {
        let mut e = engine(RuleId::Velocity);
        // Exactly at the maximum of 12, then a duplicate of the 5th: still 12.
        assert!(feed(&mut e, (1..=12).map(|s| purchase(1, s, 7))).is_empty());
        assert!(e.evaluate(&purchase(1, 5, 7)).is_empty());
        assert!(e.evaluate(&purchase(1, 12, 7)).is_empty());
        assert_eq!(e.stats().duplicates_total, 2);
        assert_eq!(e.stats().facts_total, 12);
        // The same seq from another device is another fact: the 13th fires.
        let alerts = e.evaluate(&purchase(2, 5, 7));
        assert_eq!(hits_of(&alerts, RuleId::Velocity).len(), 1);
    }

    #[test]
    fn a_settled_baseline_takes_the_lowest_seq_seen() {
        let mut e = engine(RuleId::Velocity);
        let d = DeviceId(9);
        e.mark_seen(d, 12);
        e.mark_seen(d, 10);
        e.settle_baseline(d);
        assert!(e.seen(d, 9) && e.seen(d, 10) && !e.seen(d, 11) && e.seen(d, 12));
        e.mark_seen(d, 11);
        assert_eq!(e.stats().seen_above_count, 0, "all contiguous now");
    }

    #[test]
    fn out_of_order_seqs_are_each_counted_once() {
        let mut s = SeqSeen::default();
        assert!(!s.insert(0), "seq 0 is never valid");
        for seq in [3, 1, 5] {
            assert!(s.insert(seq));
        }
        assert_eq!((s.watermark(), s.above_count()), (1, 2));
        assert!(!s.insert(3));
        assert!(s.insert(2));
        assert_eq!((s.watermark(), s.above_count()), (3, 1));
        assert!(s.insert(4));
        assert_eq!((s.watermark(), s.above_count()), (5, 0));
        assert!(s.contains(4) && !s.contains(6));

        let mut e = engine(RuleId::Velocity);
        let order = [3, 1, 2, 5, 4, 2, 5, 1];
        for seq in order {
            e.evaluate(&purchase(1, seq, 7));
        }
        let st = e.stats();
        assert_eq!((st.facts_total, st.duplicates_total), (5, 3));
        assert!(e.seen(DeviceId(1), 5) && !e.seen(DeviceId(1), 6) && !e.seen(DeviceId(2), 1));
        assert_eq!(st.seen_above_count, 0);
    }

    #[test]
    fn seqs_past_the_soft_bound_are_kept_and_counted() {
        let mut c = only(RuleId::Velocity);
        c.seen_above_max = 2;
        let mut e = Engine::new(c, Places::default());
        // Seq 1 never comes: 2..=5 wait above the watermark.
        for seq in 2..=5 {
            assert!(e.mark_seen(DeviceId(1), seq));
        }
        assert!(!e.mark_seen(DeviceId(1), 4));
        let st = e.stats();
        assert_eq!((st.seen_above_count, st.seen_above_overflow_total), (4, 2));
        assert!(e.mark_seen(DeviceId(1), 1));
        assert_eq!(e.stats().seen_above_count, 0);

        // A rebuild from seq 101 on: 1..=100 are never offered.
        e.skip_through(DeviceId(2), 100);
        assert!(e.seen(DeviceId(2), 100) && !e.seen(DeviceId(2), 101));
        assert!(e.mark_seen(DeviceId(2), 103));
        assert!(e.mark_seen(DeviceId(2), 101));
        // A baseline over waiting seqs drops them and absorbs what follows.
        e.skip_through(DeviceId(2), 102);
        let mut s = SeqSeen::default();
        for seq in [5, 7, 8, 10] {
            s.insert(seq);
        }
        s.skip_through(6);
        assert_eq!((s.watermark(), s.above_count()), (8, 1));
        s.skip_through(u64::MAX);
        assert_eq!((s.watermark(), s.above_count()), (u64::MAX, 0));
        assert!(!s.insert(u64::MAX));
        assert_eq!(e.stats().seen_above_count, 0);
    }

    // --- travel ---------------------------------------------------------------------

    /// Merchant 1 at 34.75° N 113.62° E; merchant 2 0.2° (22,239 m) north; merchant 3
    /// 1,000 m east of 1; merchant 4 has no place.
    fn places() -> Places {
        [
            (MerchantId(1), Place::new(34_750_000, 113_620_000)),
            (MerchantId(2), Place::new(34_950_000, 113_620_000)),
            (MerchantId(3), Place::new(34_750_000, 113_630_940)),
        ]
        .into_iter()
        .collect()
    }

    fn visit(device: u64, seq: u64, merchant: i64, at_ms: i64) -> Fact {
        Fact {
            merchant_id: Some(MerchantId(merchant)),
            occurred_at_ms: at_ms,
            kind: TxnKind::SignIn,
            ..purchase(device, seq, 7)
        }
    }

    #[test]
    fn travel_fires_on_an_impossible_speed_even_out_of_order() {
        let mut e = Engine::new(only(RuleId::Travel), places());
        assert!(e.evaluate(&visit(1, 1, 1, T0)).is_empty());
        // 22,239 m in 5 minutes: 266 km/h, 2.2× the 120 maximum.
        let alerts = e.evaluate(&visit(2, 1, 2, T0 + 5 * MINUTE_MS));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].subject, Subject::Card(CardNo(7)));
        let hit = &alerts[0].hits[0];
        assert_eq!((hit.rule, hit.band), (RuleId::Travel, Band::High));
        assert_eq!(
            hit.figures,
            vec![
                ("distance_m", 22_239),
                ("elapsed_ms", 300_000),
                ("speed_kmh", 266)
            ]
        );
        assert_eq!(hit.evidence, vec![(DeviceId(1), 1), (DeviceId(2), 1)]);

        // Another card, whose later visit arrives first; 10 minutes apart: 133 km/h,
        // 1.1× → LOW.
        let mut e = Engine::new(only(RuleId::Travel), places());
        let later = Fact {
            card_no: CardNo(8),
            ..visit(2, 1, 2, T0 + 10 * MINUTE_MS)
        };
        let earlier = Fact {
            card_no: CardNo(8),
            ..visit(1, 1, 1, T0)
        };
        assert!(e.evaluate(&later).is_empty());
        let hits = hits_of(&e.evaluate(&earlier), RuleId::Travel);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::Low);
        assert_eq!(hits[0].figures[2], ("speed_kmh", 133));
        assert_eq!(hits[0].evidence, vec![(DeviceId(1), 1), (DeviceId(2), 1)]);

        // Zero elapsed time is an infinite speed.
        let mut e = Engine::new(only(RuleId::Travel), places());
        e.evaluate(&visit(1, 1, 1, T0));
        let hits = hits_of(&e.evaluate(&visit(2, 1, 2, T0)), RuleId::Travel);
        assert_eq!(hits[0].band, Band::High);
        assert_eq!(hits[0].figures[2], ("speed_kmh", i64::MAX));
    }

    #[test]
    fn travel_does_not_fire_at_a_plausible_speed_nearby_or_without_places() {
        let mut e = Engine::new(only(RuleId::Travel), places());
        // 22,239 m in 15 minutes: 89 km/h.
        e.evaluate(&visit(1, 1, 1, T0));
        assert!(e.evaluate(&visit(2, 1, 2, T0 + 15 * MINUTE_MS)).is_empty());
        // Another card: 1,000 m at the same instant is under distance_m_min.
        let card = |f: Fact, c: u64| Fact {
            card_no: CardNo(c),
            ..f
        };
        assert!(e.evaluate(&card(visit(1, 2, 1, T0), 8)).is_empty());
        assert!(e.evaluate(&card(visit(3, 1, 3, T0), 8)).is_empty());
        // Another: a merchant without a place is not compared, and the same merchant
        // twice is no travel.
        assert!(e.evaluate(&card(visit(1, 3, 1, T0), 9)).is_empty());
        assert!(e.evaluate(&card(visit(4, 1, 4, T0), 9)).is_empty());
        assert!(e.evaluate(&card(visit(1, 4, 1, T0), 9)).is_empty());
        // Disabled.
        let mut c = only(RuleId::Travel);
        c.travel.enabled = false;
        let mut e = Engine::new(c, places());
        e.evaluate(&visit(1, 1, 1, T0));
        assert!(e.evaluate(&visit(2, 1, 2, T0)).is_empty());
    }

    // --- counter --------------------------------------------------------------------

    fn tap(seq: u64, counter: u32, at_ms: i64) -> Fact {
        Fact {
            card_counter: counter,
            occurred_at_ms: at_ms,
            ..purchase(1, seq, 7)
        }
    }

    #[test]
    fn counter_fires_on_a_jump_and_on_going_back_in_time() {
        let mut e = engine(RuleId::Counter);
        e.evaluate(&tap(1, 10, T0));
        // 10 → 61: a jump of 51 over 50 → LOW.
        let hits = hits_of(&e.evaluate(&tap(2, 61, T0 + MINUTE_MS)), RuleId::Counter);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::Low);
        assert_eq!(
            hits[0].figures,
            vec![
                ("counter", 61),
                ("previous_counter", 10),
                ("jump_count", 51)
            ]
        );
        assert_eq!(hits[0].evidence, vec![(DeviceId(1), 1), (DeviceId(1), 2)]);

        // 10 → 110 on another card: 2× → HIGH.
        let mut e = engine(RuleId::Counter);
        e.evaluate(&tap(1, 10, T0));
        let hits = hits_of(&e.evaluate(&tap(2, 110, T0 + MINUTE_MS)), RuleId::Counter);
        assert_eq!(hits[0].band, Band::High);

        // 100 at T0, then 90 an hour later: a clone.
        let mut e = engine(RuleId::Counter);
        e.evaluate(&tap(1, 100, T0));
        let hits = hits_of(
            &e.evaluate(&tap(2, 90, T0 + 60 * MINUTE_MS)),
            RuleId::Counter,
        );
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::High);
        assert_eq!(
            hits[0].figures,
            vec![
                ("counter", 90),
                ("highest_counter", 100),
                ("later_by_ms", 3_600_000)
            ]
        );
    }

    #[test]
    fn counter_does_not_fire_within_its_bounds() {
        let mut e = engine(RuleId::Counter);
        e.evaluate(&tap(1, 10, T0));
        // A jump of exactly 50.
        assert!(e.evaluate(&tap(2, 60, T0 + MINUTE_MS)).is_empty());
        // A lower counter arriving late, with its earlier time: history, not a clone.
        assert!(e.evaluate(&tap(3, 59, T0 + MINUTE_MS / 2)).is_empty());
        // A lower counter within the clock skew allowed.
        assert!(e.evaluate(&tap(4, 58, T0 + 4 * MINUTE_MS)).is_empty());
        // TOP_UP carries the online counter: not compared.
        let top_up = Fact {
            kind: TxnKind::TopUp,
            ..tap(5, 5_000, T0 + 5 * MINUTE_MS)
        };
        assert!(e.evaluate(&top_up).is_empty());
        assert!(e.evaluate(&tap(6, 61, T0 + 6 * MINUTE_MS)).is_empty());
    }

    // --- refund cycling -------------------------------------------------------------

    /// A refund at `at_ms` of a purchase at `bought_ms` that earned `subsidy` fen.
    fn refund(device: u64, seq: u64, card: u64, at_ms: i64, bought_ms: i64, subsidy: i64) -> Fact {
        Fact {
            kind: TxnKind::Refund,
            occurred_at_ms: at_ms,
            refund_of: Some(RefundOf {
                purchase_seq: 1,
                purchase_occurred_at_ms: bought_ms,
                purchase_amount_fen: Fen(10_000),
                purchase_subsidy_fen: Fen(subsidy),
            }),
            ..purchase(device, seq, card)
        }
    }

    #[test]
    fn refund_fires_on_the_third_refund_of_subsidised_purchases_in_the_window() {
        let mut e = engine(RuleId::Refund);
        let hour = 60 * MINUTE_MS;
        assert!(
            e.evaluate(&refund(1, 1, 7, T0 + hour, T0, 1_000))
                .is_empty()
        );
        assert!(
            e.evaluate(&refund(1, 2, 7, T0 + 2 * hour, T0 + hour, 800))
                .is_empty(),
            "two refunds happen honestly"
        );
        let alerts = e.evaluate(&refund(1, 3, 7, T0 + 30 * hour, T0 + 29 * hour, 500));
        let hits = hits_of(&alerts, RuleId::Refund);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::Low);
        assert_eq!(
            hits[0].figures,
            vec![("refunds_count", 3), ("window_days", 3)]
        );
        assert_eq!(
            hits[0].evidence,
            vec![(DeviceId(1), 1), (DeviceId(1), 2), (DeviceId(1), 3)]
        );
        assert_eq!(alerts[0].subject, Subject::Card(CardNo(7)));
    }

    #[test]
    fn refund_does_not_fire_on_one_refund_unsubsidised_ones_or_late_ones() {
        let mut e = engine(RuleId::Refund);
        let day = 24 * 60 * MINUTE_MS;
        // One honest refund.
        assert!(
            e.evaluate(&refund(1, 1, 7, T0 + MINUTE_MS, T0, 1_000))
                .is_empty()
        );
        // A refund of a purchase without subsidy.
        assert!(
            e.evaluate(&refund(1, 2, 7, T0 + 2 * MINUTE_MS, T0, 0))
                .is_empty()
        );
        // A refund 4 days after its purchase: outside the window.
        assert!(
            e.evaluate(&refund(1, 3, 7, T0 + 4 * day, T0, 1_000))
                .is_empty()
        );
        // A second counted refund: two are not enough.
        assert!(
            e.evaluate(&refund(1, 5, 7, T0 + 3 * MINUTE_MS, T0, 1_000))
                .is_empty()
        );
        // A third counted refund 5 days after the others: not in one window with them.
        let late = Fact {
            business_date: date(MONDAY + 5),
            ..refund(1, 4, 7, T0 + 5 * day, T0 + 5 * day - MINUTE_MS, 1_000)
        };
        assert!(e.evaluate(&late).is_empty());
    }

    // --- refund ratio ---------------------------------------------------------------

    fn subsidised(device: u64, seq: u64, card: u64) -> Fact {
        Fact {
            subsidy_fen: Fen(100),
            ..purchase(device, seq, card)
        }
    }

    #[test]
    fn refund_ratio_fires_above_its_share() {
        let mut e = engine(RuleId::RefundRatio);
        assert!(feed(&mut e, (1..=20).map(|s| subsidised(1, s, s))).is_empty());
        // 6 refunds of 20 is 300‰: not above.
        assert!(feed(&mut e, (21..=26).map(|s| refund(1, s, s, T0, T0, 100))).is_empty());
        // The 7th is 350‰ > 300‰: 1.17× → LOW.
        let alerts = e.evaluate(&refund(1, 27, 27, T0, T0, 100));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].subject, Subject::Merchant(MerchantId(1)));
        let hit = &alerts[0].hits[0];
        assert_eq!((hit.rule, hit.band), (RuleId::RefundRatio, Band::Low));
        assert_eq!(
            hit.figures,
            vec![
                ("refunds_count", 7),
                ("purchases_count", 20),
                ("ratio_permille", 350)
            ]
        );
        assert_eq!(hit.evidence.len(), 7);
        // Once per merchant and day.
        assert!(e.evaluate(&refund(1, 28, 28, T0, T0, 100)).is_empty());
    }

    #[test]
    fn refund_ratio_waits_for_enough_purchases() {
        let mut e = engine(RuleId::RefundRatio);
        // 19 subsidised purchases and 19 refunds: under merchant_purchases_min.
        assert!(feed(&mut e, (1..=19).map(|s| subsidised(1, s, s))).is_empty());
        assert!(feed(&mut e, (20..=38).map(|s| refund(1, s, s, T0, T0, 100))).is_empty());
        // Refunds of unsubsidised purchases do not count.
        let mut e = engine(RuleId::RefundRatio);
        assert!(feed(&mut e, (1..=20).map(|s| subsidised(1, s, s))).is_empty());
        assert!(feed(&mut e, (21..=40).map(|s| refund(1, s, s, T0, T0, 0))).is_empty());
    }

    // --- spike ----------------------------------------------------------------------

    const SPIKE_DAY: u32 = 20261130; // a Monday, four weeks after MONDAY

    fn spike_engine(history: &[(u32, u64)]) -> Engine {
        let mut e = engine(RuleId::Spike);
        for &(d, n) in history {
            e.load_history(MerchantId(1), date(d), n);
        }
        e
    }

    fn day_of_purchases(e: &mut Engine, n: u64) -> Vec<Alert> {
        feed(
            e,
            (1..=n).map(|s| Fact {
                business_date: date(SPIKE_DAY),
                ..purchase(1, s, s)
            }),
        )
    }

    #[test]
    fn spike_fires_above_mean_plus_k_sigma() {
        // Mean 200, σ 7.07 floored to 10 % of the mean = 20: threshold 200 + 4 × 20 = 280.
        // A Sunday's count (20261129) is not the same weekday and is ignored.
        let mut e = spike_engine(&[
            (20261102, 200),
            (20261109, 210),
            (20261116, 190),
            (20261123, 200),
            (20261129, 5_000),
        ]);
        let alerts = day_of_purchases(&mut e, 300);
        let hits = hits_of(&alerts, RuleId::Spike);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::Low);
        assert_eq!(
            hits[0].figures,
            vec![
                ("purchases_count", 281),
                ("mean_count", 200),
                ("sigma_count", 20),
                ("threshold_count", 280),
                ("weeks_known_count", 4)
            ]
        );
        assert_eq!(hits[0].evidence.len(), 20);
        assert_eq!(hits[0].evidence.last(), Some(&(DeviceId(1), 281)));
        assert!(matches!(
            alerts[0].subject,
            Subject::Merchant(MerchantId(1))
        ));

        // Two weeks of 10 give a threshold of 14; the rule waits for count_min (200), by
        // when the count is 14× the threshold → HIGH.
        let mut e = spike_engine(&[(20261109, 10), (20261123, 10)]);
        let hits = hits_of(&day_of_purchases(&mut e, 300), RuleId::Spike);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].band, Band::High);
        assert_eq!(hits[0].figures[0], ("purchases_count", 200));
        assert_eq!(hits[0].figures[3], ("threshold_count", 14));
    }

    #[test]
    fn spike_does_not_fire_at_the_threshold_on_thin_history_or_small_counts() {
        // Exactly at 280.
        let mut e = spike_engine(&[
            (20261102, 200),
            (20261109, 210),
            (20261116, 190),
            (20261123, 200),
        ]);
        assert!(day_of_purchases(&mut e, 280).is_empty());
        // A flat history does not fire on one more.
        let mut e = spike_engine(&[(20261109, 250), (20261116, 250), (20261123, 250)]);
        assert!(day_of_purchases(&mut e, 251).is_empty());
        // One week known is under history_weeks_min.
        let mut e = spike_engine(&[(20261123, 200)]);
        assert!(day_of_purchases(&mut e, 1_000).is_empty());
        // Far above a tiny history, but under count_min.
        let mut e = spike_engine(&[(20261109, 10), (20261116, 10), (20261123, 10)]);
        assert!(day_of_purchases(&mut e, 199).is_empty());
    }

    #[test]
    fn spike_history_includes_days_the_engine_counted() {
        let mut e = engine(RuleId::Spike);
        for (week, d) in [20261109u32, 20261116, 20261123].into_iter().enumerate() {
            let base = u64::try_from(week).unwrap() * 1_000;
            feed(
                &mut e,
                (1..=100).map(|s| Fact {
                    business_date: date(d),
                    ..purchase(1, base + s, s)
                }),
            );
        }
        // Mean 100, σ floor 10: threshold 140, but count_min 200 rules.
        let alerts = feed(
            &mut e,
            (1..=200).map(|s| Fact {
                business_date: date(SPIKE_DAY),
                ..purchase(1, 10_000 + s, s)
            }),
        );
        let hits = hits_of(&alerts, RuleId::Spike);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].figures[0], ("purchases_count", 200));
        assert_eq!(hits[0].figures[4], ("weeks_known_count", 3));
        assert_eq!(hits[0].band, Band::Low); // 200 / 140 = 1.43
    }

    // --- collusion ------------------------------------------------------------------

    fn sale(seq: u64, card: u64, subsidy: i64) -> Fact {
        Fact {
            subsidy_fen: Fen(subsidy),
            ..purchase(1, seq, card)
        }
    }

    /// Collusion judged from the third purchase on, for the tests of its arithmetic.
    fn collusion_engine() -> Engine {
        let mut c = only(RuleId::Collusion);
        c.collusion.purchases_min = 3;
        Engine::new(c, Places::default())
    }

    #[test]
    fn collusion_waits_for_enough_purchases() {
        // Three cards, ¥500 of subsidy, all of it theirs: a quiet theatre day, not fired
        // before the twentieth purchase; fired at it.
        let mut e = engine(RuleId::Collusion);
        assert!(feed(&mut e, (1..=19).map(|s| sale(s, s % 3 + 1, 3_000))).is_empty());
        let hits = hits_of(&e.evaluate(&sale(20, 1, 3_000)), RuleId::Collusion);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].figures[0], ("subsidy_fen", 60_000));
    }

    #[test]
    fn collusion_fires_when_few_cards_hold_the_merchants_subsidy() {
        let mut e = collusion_engine();
        assert!(e.evaluate(&sale(1, 1, 20_000)).is_empty());
        assert!(e.evaluate(&sale(2, 2, 20_000)).is_empty());
        // 50,000 reached, all of it on 3 cards: 1000‰ is 1.67× of 600‰ → MEDIUM.
        let alerts = e.evaluate(&sale(3, 3, 10_000));
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].subject, Subject::Merchant(MerchantId(1)));
        let hit = &alerts[0].hits[0];
        assert_eq!((hit.rule, hit.band), (RuleId::Collusion, Band::Medium));
        assert_eq!(
            hit.figures,
            vec![
                ("subsidy_fen", 50_000),
                ("top_cards_subsidy_fen", 50_000),
                ("top_share_permille", 1_000),
                ("cards_count", 3)
            ]
        );
        assert_eq!(hit.evidence.len(), 3);
        assert_eq!(hit.evidence[2], (DeviceId(1), 3)); // the smallest card last
        assert!(e.evaluate(&sale(4, 1, 20_000)).is_empty(), "once a day");
    }

    #[test]
    fn collusion_does_not_fire_on_spread_or_small_subsidy() {
        // 10 cards × 6,000: the top 3 hold 300‰.
        let mut e = collusion_engine();
        assert!(feed(&mut e, (1..=10).map(|s| sale(s, s, 6_000))).is_empty());
        // Concentrated, but 45,000 is under the minimum.
        let mut e = collusion_engine();
        assert!(feed(&mut e, (1..=3).map(|s| sale(s, s, 15_000))).is_empty());
    }

    #[test]
    fn collusion_follows_a_card_that_overtakes_the_top() {
        let mut e = collusion_engine();
        // Cards 1–3 at 5,000, then card 4 climbs past them: top 3 = 4, and two of 1–3.
        let mut seq = 0;
        let mut next = |card, subsidy| {
            seq += 1;
            sale(seq, card, subsidy)
        };
        let mut facts: Vec<Fact> = (1..=3).map(|c| next(c, 5_000)).collect();
        facts.extend((0..4).map(|_| next(4, 8_000))); // card 4: 32,000; total 47,000
        assert!(feed(&mut e, facts).is_empty());
        // Card 5 adds 4,000: total 51,000, top 3 = 32,000 + 5,000 + 5,000 = 823‰.
        let hits = hits_of(&e.evaluate(&next(5, 4_000)), RuleId::Collusion);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].figures[1], ("top_cards_subsidy_fen", 42_000));
        assert_eq!(hits[0].figures[2], ("top_share_permille", 823));
    }

    // --- prune ----------------------------------------------------------------------

    #[test]
    fn prune_drops_old_state_and_later_facts_of_pruned_days() {
        let mut c = RiskConfig::default();
        c.travel.enabled = false;
        let mut e = Engine::new(c, Places::default());
        feed(&mut e, (1..=5).map(|s| subsidised(1, s, s)));
        e.load_history(MerchantId(1), date(20261001), 10);
        let st = e.stats();
        assert_eq!(
            (st.cards_count, st.card_days_count, st.merchant_days_count),
            (5, 5, 1)
        );
        assert_eq!((st.merchants_count, st.merchant_counts_count), (1, 2));

        // The next day keeps yesterday (late_days_max = 1).
        e.prune(date(MONDAY + 1));
        assert_eq!(e.stats().card_days_count, 5);
        // Two days on, the day state goes; history older than 4 weeks too.
        e.prune(date(MONDAY + 2));
        let st = e.stats();
        assert_eq!(
            (
                st.card_days_count,
                st.merchant_days_count,
                st.merchant_counts_count
            ),
            (0, 0, 1)
        );
        assert_eq!(st.cards_count, 5, "cards are kept while not idle");
        // A late fact of the pruned day is ignored, and cannot fire again.
        let big = Fact {
            amount_fen: Fen(1_000_000),
            ..purchase(1, 6, 1)
        };
        assert!(e.evaluate(&big).is_empty());
        assert_eq!(e.stats().stale_facts_total, 1);
        assert!(e.seen(DeviceId(1), 6));

        // Four weeks idle: the cards go, and the history; devices stay.
        e.prune(date(20261202));
        let st = e.stats();
        assert_eq!((st.cards_count, st.merchant_counts_count), (0, 0));
        assert_eq!(st.devices_count, 1);
    }

    #[test]
    fn rule_names_round_trip() {
        for &r in RuleId::ALL {
            assert_eq!(RuleId::from_name(r.name()), Some(r));
        }
        assert_eq!(RuleId::from_name("speed"), None);
        assert!(Band::Low < Band::Medium && Band::Medium < Band::High);
    }

    #[test]
    fn distances_are_haversine_metres() {
        let a = Place::new(34_750_000, 113_620_000);
        assert_eq!(distance_m(a, a), 0);
        assert_eq!(distance_m(a, Place::new(34_950_000, 113_620_000)), 22_239);
        // 0.01094° of longitude at 34.75° N is about 1,000 m.
        let east = distance_m(a, Place::new(34_750_000, 113_630_940));
        assert!((995..=1_005).contains(&east), "{east}");
    }

    // --- properties -----------------------------------------------------------------

    /// SplitMix64: a permutation of the offers from the case's seed.
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_102),
            ..ProptestConfig::default()
        })]

        #[test]
        fn velocity_fires_for_exactly_the_card_days_over_the_threshold(
            txns in proptest::collection::vec((0u64..3, 0u64..4, 0u32..3, 0u8..5), 0..120),
            dups in proptest::collection::vec(any::<proptest::sample::Index>(), 0..60),
            seed in any::<u64>(),
        ) {
            // Facts with dense seqs per device; a fifth of them sign-ins (not purchases).
            let mut next_seq: HashMap<u64, u64> = HashMap::new();
            let facts: Vec<Fact> = txns
                .iter()
                .map(|&(device, card, day, kind)| {
                    let seq = next_seq.entry(device).or_insert(0);
                    *seq += 1;
                    Fact {
                        kind: if kind == 0 { TxnKind::SignIn } else { TxnKind::Purchase },
                        business_date: date(MONDAY + day),
                        ..purchase(device, *seq, card)
                    }
                })
                .collect();
            // Offer each once, some again, all in a random order.
            let mut offers: Vec<Fact> = facts.clone();
            if !facts.is_empty() {
                offers.extend(dups.iter().map(|i| facts[i.index(facts.len())]));
            }
            let mut keyed: Vec<(u64, Fact)> = offers
                .into_iter()
                .enumerate()
                .map(|(i, f)| (mix(seed ^ u64::try_from(i).unwrap()), f))
                .collect();
            keyed.sort_by_key(|k| k.0);

            let mut c = only(RuleId::Velocity);
            c.velocity.purchases_count_max = 3;
            let mut e = Engine::new(c, Places::default());
            let mut fired: Vec<(CardNo, BusinessDate)> = Vec::new();
            for (_, f) in &keyed {
                for a in e.evaluate(f) {
                    if a.hits.iter().any(|h| h.rule == RuleId::Velocity) {
                        fired.push((f.card_no, a.business_date));
                    }
                }
            }

            // The reference: distinct purchases per (card, day).
            let mut model: HashMap<(CardNo, BusinessDate), HashSet<(DeviceId, u64)>> =
                HashMap::new();
            for f in facts.iter().filter(|f| f.kind == TxnKind::Purchase) {
                model
                    .entry((f.card_no, f.business_date))
                    .or_default()
                    .insert((f.device_id, f.seq));
            }
            let expected: HashSet<(CardNo, BusinessDate)> = model
                .iter()
                .filter(|(_, txns)| txns.len() > 3)
                .map(|(k, _)| *k)
                .collect();
            let fired_set: HashSet<(CardNo, BusinessDate)> = fired.iter().copied().collect();
            prop_assert_eq!(fired.len(), fired_set.len(), "a card-day fired twice");
            prop_assert_eq!(fired_set, expected);
            prop_assert_eq!(e.stats().facts_total, u64::try_from(facts.len()).unwrap());
        }

        #[test]
        fn the_incremental_top_is_the_true_top(
            steps in proptest::collection::vec((0u64..12, 1i64..1_000), 0..200),
            k in 1usize..5,
        ) {
            let mut top = Vec::new();
            let mut all: HashMap<CardNo, i64> = HashMap::new();
            for (card, add) in steps {
                let v = all.entry(CardNo(card)).or_insert(0);
                *v += add;
                update_top(&mut top, k, CardNo(card), *v);
                let mut values: Vec<i64> = all.values().copied().collect();
                values.sort_unstable_by(|a, b| b.cmp(a));
                let want: i64 = values.iter().take(k).sum();
                let have: i64 = top.iter().map(|t| t.1).sum();
                prop_assert_eq!(have, want);
                prop_assert!(top.len() <= k);
            }
        }
    }
}
