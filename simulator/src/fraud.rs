//! The fraud scenario: what a scenario's `[fraud]` table plants into the honest day
//! ([`plant`]), and how a run scores the gateway's fraud rules against it ([`score`]).
//!
//! Planting is pure and deterministic from the scenario's seed. Each kind is built so that
//! the rule it targets must fire, by construction (the unit tests check the figures
//! against the shipped `config/risk.toml`):
//!
//! - **travel**: one card buys at two shops at least [`TRAVEL_DISTANCE_MIN_M`] apart within
//!   [`TRAVEL_GAP_MS_MAX`] of device time: 20 km in 5 minutes is 240 km/h, twice the rule's
//!   120 km/h (and still above it with device clocks two minutes apart either way).
//! - **collusion**: two or three cards buy books again and again in one hour at one of the
//!   quietest bookstores, for at least twice what honest residents spend there up to an
//!   hour after: those cards hold ≥ 2/3 of the shop's subsidy (the rule: top 3 ≥ 60 %),
//!   and at least [`COLLUSION_SALES_MIN_FEN`] of sales, ¥700 of subsidy at the pilot's
//!   10 % (the rule: ≥ ¥500). Their cards may also trip velocity: they are planted too.
//! - **refund cycling**: one card buys a book and refunds it at the same terminal,
//!   [`REFUND_CYCLES`] times in a few hours (the rule: 3 refunds of subsidised purchases
//!   in 3 days), at a bookstore whose refund ratio stays under 30 % whatever the timing.
//! - **spike**: a shop takes at least [`SPIKE_PURCHASES_MIN`] extra purchases, 1.5× its
//!   honest day's, in three hours: 2.5× its normal level (the rule: above mean + 4σ of the
//!   same weekday of the last four weeks, σ at least 10 % of the mean, so above 1.4× a
//!   steady history). **It needs that history**: at least 2 of those 4 weekdays recorded
//!   in the gateway's store. A run plays one business day, and the gateway dates a
//!   transaction's business day by its own receipt clock, never by the device's, so no run
//!   can backdate its history. [`score`] looks the history up in the store and reports the
//!   spike as not measurable without it rather than counting it missed or found.
//! - **reported**: a card buys twice at one shop, and halfway through the played hours the
//!   run files a resident's report about it (`POST /v1/reports`); detected when the case
//!   about the card holds the report.
//!
//! Every planted card comes from a range the honest city never draws ([`FRAUD_CARD_BASE`]),
//! so an alert is about something planted (a planted card, or a colluding or spiking
//! merchant) or it is a false alert. Planted events never use points.

use crate::console::ConsoleApi;
use crate::device::DeviceReport;
use crate::plan::{self, CITY_CARD_BASE, Place, PlannedEvent};
use crate::run::{DayOutcome, Run};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;
use wenxiao_gateway::config::AdminConfig;
use wenxiao_gateway::registry::{Category, MerchantId, Registry};
use wenxiao_gateway::store::{AnyStore, RiskStore};
use wenxiao_protocol::{
    BusinessDate, CardCounter, CardNo, DeviceId, DeviceKind, Fen, Item, Points, TxnKind, TxnStatus,
};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Where planted cards start above the first city card: far beyond any city's card count
/// (the scenario checks `city.city_cards` stays below it), so no honest event draws one.
pub const FRAUD_CARD_OFFSET: u64 = 900_000_000_000;
/// The first planted card number.
pub const FRAUD_CARD_BASE: u64 = CITY_CARD_BASE + FRAUD_CARD_OFFSET;
/// Planted cards' range: more than the bounds below can use (10 spiking merchants at
/// [`SPIKE_PURCHASES_MAX`] each, plus a few hundred).
pub const FRAUD_CARDS_MAX: u64 = 10_000_000;
/// Most cards of one kind (`travel_cards`, `refund_cycling_cards`, `reported_cards`): a
/// handful shows recall; hundreds would only lengthen the report.
pub const FRAUD_CARDS_PER_KIND_MAX: u32 = 100;
/// Most merchants of one kind (`colluding_merchants`, `spiking_merchants`): each takes a
/// whole shop out of the honest comparison.
pub const FRAUD_MERCHANTS_PER_KIND_MAX: u32 = 10;

/// The app backend's bearer token that `bench` and the demo give their gateways
/// (`[admin] app_token`): a development value, for residents' reports.
pub const DEV_APP_TOKEN: &str = "wenxiao-sim-dev-app";
/// The risk team's bearer token that `bench` and the demo give their gateways
/// (`[admin] risk_token`): a development value, for reading the cases.
pub const DEV_RISK_TOKEN: &str = "wenxiao-sim-dev-risk";

/// Travel: the two shops are at least this far apart (the rule ignores pairs under
/// 2,000 m).
pub const TRAVEL_DISTANCE_MIN_M: i64 = 20_000;
/// Travel: shortest device time between the two purchases.
pub const TRAVEL_GAP_MS_MIN: i64 = MINUTE_MS;
/// Travel: longest device time between the two purchases: 20 km in 5 minutes is 240 km/h.
pub const TRAVEL_GAP_MS_MAX: i64 = 5 * MINUTE_MS;

/// Collusion: the burst starts at 07:00 (or the played hours' start, if later), before
/// the shop's day fills with honest sales.
pub const COLLUSION_AT_MS: i64 = 7 * HOUR_MS;
/// Collusion: the burst's purchases spread over this long.
pub const COLLUSION_BURST_MS: i64 = HOUR_MS;
/// Collusion: honest sales up to this long after the burst count against it, for
/// transactions that reach the gateway out of their device-time order.
pub const COLLUSION_SLACK_MS: i64 = HOUR_MS;
/// Collusion: least sales to the colluding cards: ¥700 of subsidy at the pilot's 10 %
/// bookstore rate, 40 % above the rule's ¥500.
pub const COLLUSION_SALES_MIN_FEN: i64 = 700_000;
/// Collusion: one purchase's amount, fen (books of ¥200–¥300).
pub const COLLUSION_AMOUNT_FEN: (i64, i64) = (20_000, 30_000);
/// Collusion: most purchases of one burst; a shop busy enough to need more is passed over.
pub const COLLUSION_PURCHASES_MAX: usize = 300;
/// Collusion: the pilot's bookstore subsidy rate, per mille (`config/policy.toml`), by
/// which the sales above are sized.
pub const BOOKSTORE_RATE_PER_MILLE: i64 = 100;

/// Refund cycling: purchases refunded per card.
pub const REFUND_CYCLES: i64 = 4;
/// Refund cycling: the cycles start at 10:00 (or the played hours' start) when the
/// played hours leave room.
pub const REFUND_AT_MS: i64 = 10 * HOUR_MS;
/// Refund cycling: one cycle (a purchase, its refund half a cycle later) at most this long.
pub const REFUND_PERIOD_MS: i64 = 90 * MINUTE_MS;
/// Refund cycling: shortest cycle; shorter played hours plant none.
pub const REFUND_PERIOD_MS_MIN: i64 = 10 * MINUTE_MS;
/// Refund cycling: a purchase's amount, fen.
pub const REFUND_AMOUNT_FEN: (i64, i64) = (5_000, 30_000);

/// Spike: the extra purchases start at 14:00 (or as late as the played hours allow).
pub const SPIKE_AT_MS: i64 = 14 * HOUR_MS;
/// Spike: they spread over this long.
pub const SPIKE_SPAN_MS: i64 = 3 * HOUR_MS;
/// Spike: fewest extra purchases (the rule needs 200 in the day).
pub const SPIKE_PURCHASES_MIN: u64 = 250;
/// Spike: most extra purchases at one shop.
pub const SPIKE_PURCHASES_MAX: u64 = 20_000;
/// Spike: same weekdays of the last four weeks the store must hold for the rule to judge
/// (the shipped `spike.history_weeks_min`).
pub const SPIKE_HISTORY_WEEKS_MIN: u32 = 2;

/// Reported: the reported card's two purchases are this far apart.
pub const REPORTED_GAP_MS: i64 = 30 * MINUTE_MS;
/// What the residents write.
pub const REPORT_TEXT: &str = "My card was used for purchases I did not make.";

/// Salt of the planting draw, so that it does not repeat the plan's own random sequence.
const FRAUD_SEED_SALT: u64 = 0x0000_6672_6175_6473; // "frauds"

/// `[fraud]`: how many of each kind to plant. All 0 (nothing planted) by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// Cards buying at two shops ≥ 20 km apart within minutes.
    pub travel_cards: u32,
    /// Bookstores where two or three cards buy again and again.
    pub colluding_merchants: u32,
    /// Cards that buy and refund, again and again.
    pub refund_cycling_cards: u32,
    /// Shops with a sudden volume spike (measurable only with history, see the module).
    pub spiking_merchants: u32,
    /// Cards a resident reports during the run.
    pub reported_cards: u32,
}

impl FraudConfig {
    /// Whether anything is planted.
    pub fn plants_any(&self) -> bool {
        self.travel_cards
            + self.colluding_merchants
            + self.refund_cycling_cards
            + self.spiking_merchants
            + self.reported_cards
            > 0
    }

    /// The first key above its bound, with the bound.
    pub fn over_bound(&self) -> Option<(&'static str, u32)> {
        let cards = FRAUD_CARDS_PER_KIND_MAX;
        let merchants = FRAUD_MERCHANTS_PER_KIND_MAX;
        [
            ("fraud.travel_cards", self.travel_cards, cards),
            (
                "fraud.colluding_merchants",
                self.colluding_merchants,
                merchants,
            ),
            (
                "fraud.refund_cycling_cards",
                self.refund_cycling_cards,
                cards,
            ),
            ("fraud.spiking_merchants", self.spiking_merchants, merchants),
            ("fraud.reported_cards", self.reported_cards, cards),
        ]
        .into_iter()
        .find(|(_, v, max)| v > max)
        .map(|(key, _, max)| (key, max))
    }
}

/// A kind of planted fraud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FraudKind {
    /// A card at two distant shops within minutes.
    Travel,
    /// A merchant with a few cards holding its subsidy.
    Collusion,
    /// A card buying and refunding.
    RefundCycling,
    /// A merchant's sudden volume.
    Spike,
    /// A card a resident reports.
    Reported,
}

impl FraudKind {
    /// Every kind, in report order.
    pub const ALL: &'static [FraudKind] = &[
        Self::Travel,
        Self::Collusion,
        Self::RefundCycling,
        Self::Spike,
        Self::Reported,
    ];

    /// Its name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Travel => "travel",
            Self::Collusion => "collusion",
            Self::RefundCycling => "refund_cycling",
            Self::Spike => "spike",
            Self::Reported => "reported",
        }
    }

    /// The gateway rule whose alert detects it (as `config/risk.toml` names it); `None`:
    /// a resident's report in the case does.
    pub const fn rule(self) -> Option<&'static str> {
        match self {
            Self::Travel => Some("travel"),
            Self::Collusion => Some("collusion"),
            Self::RefundCycling => Some("refund"),
            Self::Spike => Some("spike"),
            Self::Reported => None,
        }
    }
}

/// Whom a case is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A card.
    Card(CardNo),
    /// A merchant.
    Merchant(MerchantId),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Card(c) => write!(f, "card {c}"),
            Self::Merchant(m) => write!(f, "merchant {}", m.0),
        }
    }
}

/// One planted case: whom the gateway should open a case about, and why it must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantedCase {
    /// What was planted.
    pub kind: FraudKind,
    /// The card or merchant.
    pub subject: Subject,
    /// The colluding cards (collusion only).
    pub cards: Vec<CardNo>,
    /// The figures that make the rule fire, each named with its unit.
    pub figures: Vec<(&'static str, i64)>,
}

/// A resident's report the run files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidentReport {
    /// The card reported.
    pub card_no: CardNo,
    /// Who reports (the app's user reference), one report each: a reporter may file 5 a
    /// day.
    pub reporter: String,
    /// What they write.
    pub text: String,
}

/// What a scenario's `[fraud]` table planted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Planted {
    /// What the table asked for.
    pub wanted: FraudConfig,
    /// The planted cases, by kind in planting order.
    pub cases: Vec<PlantedCase>,
    /// The colluding and spiking merchants (planted subjects besides the planted cards).
    pub merchants: BTreeSet<MerchantId>,
    /// The residents' reports to file.
    pub reports: Vec<ResidentReport>,
    /// Planted events.
    pub events: u64,
    /// What could not be planted, and why.
    pub notes: Vec<String>,
}

impl Planted {
    /// True when the scenario asks for no fraud.
    pub fn is_empty(&self) -> bool {
        !self.wanted.plants_any()
    }

    /// Whether an alert about `subject` is about something planted.
    pub fn is_planted(&self, subject: Subject) -> bool {
        match subject {
            Subject::Card(c) => is_planted_card(c),
            Subject::Merchant(m) => self.merchants.contains(&m),
        }
    }

    /// Cases of `kind`.
    pub fn count(&self, kind: FraudKind) -> usize {
        self.cases.iter().filter(|c| c.kind == kind).count()
    }

    /// "travel 3 · collusion 1 · … (N events)".
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = FraudKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.count(*k)))
            .collect();
        format!("{} ({} events)", kinds.join(" · "), self.events)
    }
}

/// Whether the card is one the fraud scenario plants (never an honest one).
pub fn is_planted_card(card: CardNo) -> bool {
    (FRAUD_CARD_BASE..FRAUD_CARD_BASE + FRAUD_CARDS_MAX).contains(&card.get())
}

/// A shop that takes purchases: a contracted merchant with a place and POS terminals.
#[derive(Debug, Clone)]
struct Shop {
    merchant: MerchantId,
    category: Category,
    place: Place,
    /// Its active POS terminals, sorted; never empty.
    devices: Vec<DeviceId>,
}

/// The registry's shops, by merchant.
fn shops(registry: &Registry) -> Vec<Shop> {
    let mut by_merchant: BTreeMap<MerchantId, Vec<DeviceId>> = BTreeMap::new();
    for d in registry.devices() {
        if let (true, DeviceKind::Pos, Some(m)) = (d.active, d.kind, d.merchant_id) {
            by_merchant.entry(m).or_default().push(d.device_id);
        }
    }
    by_merchant
        .into_iter()
        .filter_map(|(m, mut devices)| {
            let merchant = registry.merchant(m)?;
            let sells = matches!(
                merchant.category,
                Category::Bookstore | Category::Cinema | Category::PerformanceVenue
            );
            if !merchant.active || !sells || devices.is_empty() {
                return None;
            }
            devices.sort_unstable();
            Some(Shop {
                merchant: m,
                category: merchant.category,
                place: merchant.place?,
                devices,
            })
        })
        .collect()
}

/// The honest purchases in the played hours, by merchant, in time order: (at_ms, amount).
fn honest_purchases(
    events: &[PlannedEvent],
    registry: &Registry,
    window: (i64, i64),
) -> HashMap<MerchantId, Vec<(i64, i64)>> {
    let merchant_of: HashMap<DeviceId, MerchantId> = registry
        .devices()
        .into_iter()
        .filter_map(|d| Some((d.device_id, d.merchant_id?)))
        .collect();
    let mut by_merchant: HashMap<MerchantId, Vec<(i64, i64)>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.kind == TxnKind::Purchase && e.at_ms >= window.0 && e.at_ms < window.1)
    {
        if let Some(m) = merchant_of.get(&e.device_id) {
            by_merchant
                .entry(*m)
                .or_default()
                .push((e.at_ms, e.amount_fen.get()));
        }
    }
    by_merchant
}

/// A Fisher–Yates shuffle.
fn shuffle<T>(rng: &mut StdRng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// What an ordinary purchase at a shop of `category` buys: (amount, list price, item), as
/// the honest plan draws them (domestic films only: foreign ones earn nothing).
fn goods(rng: &mut StdRng, category: Category) -> (i64, i64, Item) {
    match category {
        Category::Cinema => {
            let list = rng.random_range(3_000..8_000i64);
            (
                list * rng.random_range(70..=100i64) / 100,
                list,
                Item::FilmDomestic,
            )
        }
        Category::PerformanceVenue => {
            let list = rng.random_range(8_000..60_000i64);
            (list, list, Item::Performance)
        }
        _ => (rng.random_range(1_000..30_000i64), 0, Item::Book),
    }
}

/// A planted event (counters are assigned with the whole day's).
fn event(
    at_ms: i64,
    device_id: DeviceId,
    kind: TxnKind,
    card_no: CardNo,
    (amount, list, item): (i64, i64, Item),
) -> PlannedEvent {
    PlannedEvent {
        at_ms,
        device_id,
        kind,
        card_no,
        amount_fen: Fen(amount),
        list_price_fen: Fen(list),
        item,
        points: Points(0),
        card_counter: CardCounter(0),
    }
}

/// A count as i64 (the counts here are small).
fn count_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The planting in progress.
struct Planter {
    rng: StdRng,
    seed: u64,
    window: (i64, i64),
    next_card: u64,
    out: Vec<PlannedEvent>,
    planted: Planted,
}

impl Planter {
    fn card(&mut self) -> CardNo {
        self.next_card += 1;
        CardNo(FRAUD_CARD_BASE + self.next_card)
    }

    fn note(&mut self, what: String) {
        self.planted.notes.push(what);
    }

    fn device(&mut self, shop: &Shop) -> Option<DeviceId> {
        plan::pick(&mut self.rng, &shop.devices)
    }

    /// An ordinary purchase of `card` at `shop`'s `device`.
    fn buy(&mut self, shop: &Shop, device: DeviceId, at_ms: i64, card: CardNo) {
        let g = goods(&mut self.rng, shop.category);
        self.out
            .push(event(at_ms, device, TxnKind::Purchase, card, g));
    }

    /// Colluding bookstores: the quietest ones up to an hour after the burst, so that the
    /// colluding cards' sales can be twice the honest ones within the purchase bound.
    fn collusion(
        &mut self,
        wanted: u32,
        shops: &[Shop],
        honest: &HashMap<MerchantId, Vec<(i64, i64)>>,
        taken: &mut HashSet<MerchantId>,
    ) {
        if wanted == 0 {
            return;
        }
        let (w0, w1) = self.window;
        if w1 - w0 < COLLUSION_BURST_MS {
            self.note(
                "collusion: none planted: the played hours are shorter than the burst".into(),
            );
            return;
        }
        let start = COLLUSION_AT_MS.clamp(w0, w1 - COLLUSION_BURST_MS);
        let horizon = start + COLLUSION_BURST_MS + COLLUSION_SLACK_MS;
        let mut candidates: Vec<(i64, &Shop)> = shops
            .iter()
            .filter(|s| s.category == Category::Bookstore && !taken.contains(&s.merchant))
            .map(|s| {
                let sales = honest.get(&s.merchant).map_or(0, |p| {
                    p.iter()
                        .filter(|(at, _)| *at < horizon)
                        .map(|(_, amount)| *amount)
                        .sum()
                });
                (sales, s)
            })
            .collect();
        candidates.sort_by_key(|(sales, s)| (*sales, s.merchant));
        let mut planted = 0u32;
        for (honest_sales, shop) in candidates {
            if planted >= wanted {
                break;
            }
            let target = COLLUSION_SALES_MIN_FEN.max(honest_sales.saturating_mul(2));
            let mut amounts = Vec::new();
            let mut sales = 0i64;
            while sales < target && amounts.len() < COLLUSION_PURCHASES_MAX {
                let a = self
                    .rng
                    .random_range(COLLUSION_AMOUNT_FEN.0..=COLLUSION_AMOUNT_FEN.1);
                amounts.push(a);
                sales += a;
            }
            if sales < target {
                continue;
            }
            let n_cards = self.rng.random_range(2..=3usize);
            let cards: Vec<CardNo> = (0..n_cards).map(|_| self.card()).collect();
            let n = count_i64(amounts.len()).max(1);
            for (i, amount) in amounts.iter().enumerate() {
                let (Some(device), Some(card)) = (
                    shop.devices.get(i % shop.devices.len()).copied(),
                    cards.get(i % n_cards).copied(),
                ) else {
                    continue;
                };
                let at = start + count_i64(i) * COLLUSION_BURST_MS / n;
                self.out.push(event(
                    at,
                    device,
                    TxnKind::Purchase,
                    card,
                    (*amount, 0, Item::Book),
                ));
            }
            taken.insert(shop.merchant);
            self.planted.merchants.insert(shop.merchant);
            self.planted.cases.push(PlantedCase {
                kind: FraudKind::Collusion,
                subject: Subject::Merchant(shop.merchant),
                cards,
                figures: vec![
                    ("sales_fen", sales),
                    ("honest_sales_fen_max", honest_sales),
                    ("purchases_count", n),
                    ("cards_count", count_i64(n_cards)),
                ],
            });
            planted += 1;
        }
        if planted < wanted {
            self.note(format!(
                "collusion: {planted} of {wanted} merchants planted (too few bookstores quiet enough)"
            ));
        }
    }

    /// Spiking shops: 1.5× their honest day's purchases on top, in three hours, each by a
    /// fresh card.
    fn spike(
        &mut self,
        wanted: u32,
        shops: &[Shop],
        honest: &HashMap<MerchantId, Vec<(i64, i64)>>,
        taken: &mut HashSet<MerchantId>,
    ) {
        if wanted == 0 {
            return;
        }
        let (w0, w1) = self.window;
        let span = SPIKE_SPAN_MS.min(w1 - w0);
        let start = SPIKE_AT_MS.clamp(w0, w1 - span);
        let mut free: Vec<&Shop> = shops
            .iter()
            .filter(|s| !taken.contains(&s.merchant))
            .collect();
        shuffle(&mut self.rng, &mut free);
        free.truncate(usize::try_from(wanted).unwrap_or(usize::MAX));
        for shop in free {
            let normal = honest
                .get(&shop.merchant)
                .map_or(0, |p| u64::try_from(p.len()).unwrap_or(u64::MAX));
            let extra = SPIKE_PURCHASES_MIN
                .max(normal.saturating_mul(3) / 2)
                .min(SPIKE_PURCHASES_MAX);
            let n = i64::try_from(extra).unwrap_or(1).max(1);
            for i in 0..n {
                let device_at = usize::try_from(i).unwrap_or(0) % shop.devices.len();
                let Some(device) = shop.devices.get(device_at).copied() else {
                    continue;
                };
                let card = self.card();
                self.buy(shop, device, start + i * span / n, card);
            }
            taken.insert(shop.merchant);
            self.planted.merchants.insert(shop.merchant);
            self.planted.cases.push(PlantedCase {
                kind: FraudKind::Spike,
                subject: Subject::Merchant(shop.merchant),
                cards: Vec::new(),
                figures: vec![
                    (
                        "honest_purchases_count",
                        i64::try_from(normal).unwrap_or(i64::MAX),
                    ),
                    ("planted_purchases_count", n),
                ],
            });
        }
        let planted = self.planted.count(FraudKind::Spike);
        if planted < usize::try_from(wanted).unwrap_or(usize::MAX) {
            self.note(format!(
                "spike: {planted} of {wanted} merchants planted (too few shops left)"
            ));
        }
    }

    /// Refund-cycling cards, spread over the free bookstores (at most two per shop, with
    /// 100 cards over the pilot's 52 bookstores).
    fn refund_cycling(&mut self, wanted: u32, free: &[&Shop]) {
        if wanted == 0 {
            return;
        }
        let mut stores: Vec<&Shop> = free
            .iter()
            .copied()
            .filter(|s| s.category == Category::Bookstore)
            .collect();
        if stores.is_empty() {
            self.note("refund_cycling: none planted: no bookstore left".into());
            return;
        }
        shuffle(&mut self.rng, &mut stores);
        let (w0, w1) = self.window;
        let preferred = REFUND_AT_MS.max(w0);
        let start = if w1 - preferred >= (REFUND_CYCLES + 1) * REFUND_PERIOD_MS {
            preferred
        } else {
            w0
        };
        let period = REFUND_PERIOD_MS.min((w1 - start) / (REFUND_CYCLES + 1));
        if period < REFUND_PERIOD_MS_MIN {
            self.note("refund_cycling: none planted: the played hours are too short".into());
            return;
        }
        for i in 0..usize::try_from(wanted).unwrap_or(0) {
            let Some(shop) = stores.get(i % stores.len()).copied() else {
                continue;
            };
            let Some(device) = self.device(shop) else {
                continue;
            };
            let card = self.card();
            for k in 0..REFUND_CYCLES {
                // The purchase in the cycle's first quarter, its refund half a cycle later:
                // always before the next purchase, and within the played hours.
                let bought = start + k * period + self.rng.random_range(0..period / 4);
                let amount = self
                    .rng
                    .random_range(REFUND_AMOUNT_FEN.0..=REFUND_AMOUNT_FEN.1);
                let book = (amount, 0, Item::Book);
                self.out
                    .push(event(bought, device, TxnKind::Purchase, card, book));
                self.out.push(event(
                    bought + period / 2,
                    device,
                    TxnKind::Refund,
                    card,
                    book,
                ));
            }
            self.planted.cases.push(PlantedCase {
                kind: FraudKind::RefundCycling,
                subject: Subject::Card(card),
                cards: Vec::new(),
                figures: vec![
                    ("refunds_count", REFUND_CYCLES),
                    ("merchant_id", shop.merchant.0),
                ],
            });
        }
    }

    /// Travel cards: two purchases at shops ≥ 20 km apart, minutes apart.
    fn travel(&mut self, wanted: u32, free: &[&Shop]) {
        if wanted == 0 {
            return;
        }
        let (w0, w1) = self.window;
        let mut pairs: Vec<(usize, usize, i64)> = Vec::new();
        for (i, a) in free.iter().enumerate() {
            for (j, b) in free.iter().enumerate() {
                let d = plan::distance_m(a.place, b.place);
                if i != j && d >= TRAVEL_DISTANCE_MIN_M {
                    pairs.push((i, j, d));
                }
            }
        }
        if pairs.is_empty() {
            self.note(format!(
                "travel: none planted: no two shops are {TRAVEL_DISTANCE_MIN_M} m apart"
            ));
            return;
        }
        if w1 - w0 <= TRAVEL_GAP_MS_MAX {
            self.note("travel: none planted: the played hours are too short".into());
            return;
        }
        for _ in 0..wanted {
            let Some((i, j, d)) = plan::pick(&mut self.rng, &pairs) else {
                break;
            };
            let (Some(a), Some(b)) = (free.get(i).copied(), free.get(j).copied()) else {
                continue;
            };
            let gap = self.rng.random_range(TRAVEL_GAP_MS_MIN..=TRAVEL_GAP_MS_MAX);
            let first = self.rng.random_range(w0..w1 - gap);
            let (Some(at_a), Some(at_b)) = (self.device(a), self.device(b)) else {
                continue;
            };
            let card = self.card();
            self.buy(a, at_a, first, card);
            self.buy(b, at_b, first + gap, card);
            self.planted.cases.push(PlantedCase {
                kind: FraudKind::Travel,
                subject: Subject::Card(card),
                cards: Vec::new(),
                figures: vec![
                    ("distance_m", d),
                    ("elapsed_ms", gap),
                    ("speed_kmh", d * 3_600 / gap),
                ],
            });
        }
    }

    /// Reported cards: two ordinary purchases at one shop, and a resident's report.
    fn reported(&mut self, wanted: u32, free: &[&Shop]) {
        if wanted == 0 {
            return;
        }
        let (w0, w1) = self.window;
        if free.is_empty() || w1 - w0 <= REPORTED_GAP_MS {
            self.note(
                "reported: none planted: no shop left, or the played hours are too short".into(),
            );
            return;
        }
        for i in 0..wanted {
            let Some(shop) = plan::pick(&mut self.rng, free) else {
                break;
            };
            let Some(device) = self.device(shop) else {
                continue;
            };
            let card = self.card();
            let first = self.rng.random_range(w0..w1 - REPORTED_GAP_MS);
            self.buy(shop, device, first, card);
            self.buy(shop, device, first + REPORTED_GAP_MS, card);
            self.planted.reports.push(ResidentReport {
                card_no: card,
                reporter: format!("sim-resident-{}-{i}", self.seed),
                text: REPORT_TEXT.to_owned(),
            });
            self.planted.cases.push(PlantedCase {
                kind: FraudKind::Reported,
                subject: Subject::Card(card),
                cards: Vec::new(),
                figures: vec![("merchant_id", shop.merchant.0)],
            });
        }
    }
}

/// Plants `config`'s fraud into the honest day `events` (sorted by time; the planted
/// events are appended, unsorted, with counters 0: the caller sorts and assigns), in the
/// played hours `window` (ms after the day's start), deterministically from `seed`.
///
/// Colluding and spiking shops are chosen first and take no other planted event; refund
/// cycling, travel and reported cards use the other shops.
pub fn plant(
    seed: u64,
    config: &FraudConfig,
    window: (i64, i64),
    registry: &Registry,
    events: &mut Vec<PlannedEvent>,
) -> Planted {
    let mut p = Planter {
        rng: StdRng::seed_from_u64(seed ^ FRAUD_SEED_SALT),
        seed,
        window,
        next_card: 0,
        out: Vec::new(),
        planted: Planted {
            wanted: config.clone(),
            ..Planted::default()
        },
    };
    if !config.plants_any() || window.1 <= window.0 {
        return p.planted;
    }
    let shops = shops(registry);
    if shops.is_empty() {
        p.note("nothing planted: the registry has no shop with a place and a POS".into());
        return p.planted;
    }
    let honest = honest_purchases(events, registry, window);
    let mut taken: HashSet<MerchantId> = HashSet::new();
    p.collusion(config.colluding_merchants, &shops, &honest, &mut taken);
    p.spike(config.spiking_merchants, &shops, &honest, &mut taken);
    let free: Vec<&Shop> = shops
        .iter()
        .filter(|s| !taken.contains(&s.merchant))
        .collect();
    p.refund_cycling(config.refund_cycling_cards, &free);
    p.travel(config.travel_cards, &free);
    p.reported(config.reported_cards, &free);
    p.planted.events = u64::try_from(p.out.len()).unwrap_or(u64::MAX);
    events.append(&mut p.out);
    p.planted
}

// --- the gateway's admin API -------------------------------------------------------------

/// Longest one admin API exchange may take: the gateway answers from its store in
/// milliseconds; ten seconds means it is stuck.
pub const ADMIN_HTTP_TIMEOUT_MS: u64 = 10_000;
/// Largest admin API answer read: a list of 1,000 cases is some 300 KB, one case with its
/// alerts' evidence a few KB, the metrics page some 100 KB.
pub const ADMIN_RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most cases one list returns (the API's own maximum).
pub const CASES_LIST_MAX: usize = 1_000;
/// Longest wait after the day for the rules to evaluate every stored transaction: they
/// run off the ack path, some 100,000 facts a second on one core.
pub const RULES_WAIT_MS_MAX: u64 = 60_000;
/// How often the wait looks.
pub const RULES_POLL_MS: u64 = 250;
/// The cases count as settled after this many equal looks in a row…
pub const CASES_STABLE_POLLS: u32 = 3;
/// …this far apart.
pub const CASES_POLL_MS: u64 = 500;
/// The rules' evaluated-facts counter on the gateway's `/metrics`.
pub const RISK_FACTS_METRIC: &str = "wenxiao_risk_facts_total";
/// False alerts and missed cases listed by subject in a report (the rest are counted).
pub const SUBJECTS_SHOWN_MAX: usize = 10;

/// The gateway's admin server, with the tokens the run uses.
#[derive(Clone)]
pub struct AdminApi {
    addr: SocketAddr,
    app_token: String,
    risk_token: String,
}

impl fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tokens are credentials: never printed.
        f.debug_struct("AdminApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A residents' report as the run filed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportFiled {
    /// The card reported.
    pub card_no: CardNo,
    /// Who reported.
    pub reporter: String,
    /// The HTTP status (201: filed); `None`: no answer.
    pub status: Option<u16>,
    /// The case it went into.
    pub case_id: Option<i64>,
    /// Why it was not filed.
    pub error: Option<String>,
}

/// The first characters of an answer, for an error message.
fn snippet(text: &str) -> String {
    const SNIPPET_CHARS_MAX: usize = 200;
    text.chars().take(SNIPPET_CHARS_MAX).collect()
}

impl AdminApi {
    /// The admin server at `addr` (an unspecified address means this host), with the
    /// configuration's tokens; `Err` says why the case API cannot be used.
    pub fn new(addr: SocketAddr, admin: &AdminConfig) -> Result<Self, String> {
        if !admin.enabled {
            return Err("the gateway's admin server is off ([admin] enabled = false)".into());
        }
        if admin.risk_token.is_empty() {
            return Err(
                "[admin] risk_token is empty in the gateway's configuration: \
                        the case API is off"
                    .into(),
            );
        }
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        } else {
            addr
        };
        Ok(Self {
            addr,
            app_token: admin.app_token.clone(),
            risk_token: admin.risk_token.clone(),
        })
    }

    async fn exchange(&self, request: String) -> anyhow::Result<(u16, String)> {
        tokio::time::timeout(
            Duration::from_millis(ADMIN_HTTP_TIMEOUT_MS),
            crate::http::exchange(self.addr, request, ADMIN_RESPONSE_BYTES_MAX),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the admin server at {} did not answer within {ADMIN_HTTP_TIMEOUT_MS} ms",
                self.addr
            )
        })?
    }

    async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        self.exchange(format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\r\n",
            self.addr
        ))
        .await
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path, Some(self.risk_token.as_str())).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {}", snippet(&body));
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// The rules' evaluated facts so far (`wenxiao_risk_facts_total`; 0 before the first).
    pub async fn facts_total(&self) -> anyhow::Result<u64> {
        let (status, body) = self.get("/metrics", None).await?;
        anyhow::ensure!(status == 200, "GET /metrics: {status} {}", snippet(&body));
        Ok(metric_total(&body, RISK_FACTS_METRIC))
    }

    /// Files a resident's report (`POST /v1/reports`).
    pub async fn file_report(&self, r: &ResidentReport) -> ReportFiled {
        let mut filed = ReportFiled {
            card_no: r.card_no,
            reporter: r.reporter.clone(),
            status: None,
            case_id: None,
            error: None,
        };
        let body = serde_json::json!({
            "reporter": r.reporter,
            "card_no": r.card_no.get(),
            "text": r.text,
        })
        .to_string();
        let request = format!(
            "POST /v1/reports HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            self.app_token,
            body.len()
        );
        match self.exchange(request).await {
            Ok((status, text)) => {
                filed.status = Some(status);
                if status == 201 {
                    filed.case_id = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("case_id").and_then(serde_json::Value::as_i64));
                } else {
                    filed.error = Some(format!("answered {status}: {}", snippet(&text)));
                }
            }
            Err(e) => filed.error = Some(format!("{e:#}")),
        }
        filed
    }

    /// Every listed case with this run's part of it: alerts and reports at or after
    /// `since_ms`. Returns the cases and whether the list was cut at [`CASES_LIST_MAX`].
    async fn cases(&self, since_ms: i64) -> anyhow::Result<(Vec<CaseSeen>, bool)> {
        let list = self
            .get_json(&format!("/v1/cases?limit={CASES_LIST_MAX}"))
            .await?;
        let listed = list
            .get("cases")
            .and_then(serde_json::Value::as_array)
            .context("GET /v1/cases: no \"cases\" list")?;
        let mut seen = Vec::with_capacity(listed.len());
        for c in listed {
            let (Some(id), Some(subject)) = (c["case_id"].as_i64(), subject_of(&c["subject"]))
            else {
                continue;
            };
            let detail = self.get_json(&format!("/v1/cases/{id}")).await?;
            let this_run = |v: &Value| v["at_ms"].as_i64().is_some_and(|t| t >= since_ms);
            let rules = detail
                .get("alert_list")
                .and_then(serde_json::Value::as_array)
                .map_or_else(Vec::new, |a| {
                    a.iter()
                        .filter(|&x| this_run(x))
                        .filter_map(|x| x["rule"].as_str().map(str::to_owned))
                        .collect()
                });
            let reports = detail
                .get("report_list")
                .and_then(serde_json::Value::as_array)
                .map_or(0, |a| {
                    u64::try_from(a.iter().filter(|&x| this_run(x)).count()).unwrap_or(u64::MAX)
                });
            seen.push(CaseSeen {
                subject,
                rules,
                reports,
            });
        }
        Ok((seen, listed.len() >= CASES_LIST_MAX))
    }

    /// Alerts and reports over the listed cases (their summaries' counts).
    async fn case_counts(&self) -> anyhow::Result<u64> {
        let list = self
            .get_json(&format!("/v1/cases?limit={CASES_LIST_MAX}"))
            .await?;
        let listed = list
            .get("cases")
            .and_then(serde_json::Value::as_array)
            .context("GET /v1/cases: no \"cases\" list")?;
        Ok(listed
            .iter()
            .map(|c| c["alerts"].as_u64().unwrap_or(0) + c["reports"].as_u64().unwrap_or(0))
            .fold(0, u64::saturating_add))
    }
}

/// The sum of a metric's values (over its label sets) in a Prometheus text page; 0 when
/// it is absent (a counter appears on its first increment).
pub fn metric_total(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            // Another metric whose name starts with this one's.
            if !rest.starts_with(' ') {
                return None;
            }
            let value = rest.split_whitespace().next()?;
            value.split('.').next()?.parse::<u64>().ok()
        })
        .fold(0, u64::saturating_add)
}

/// A u64 written as a JSON number or a decimal string (card numbers beyond 2^53).
fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// `{"card": N}` or `{"merchant": M}`, as the API writes a subject.
fn subject_of(v: &Value) -> Option<Subject> {
    if let Some(card) = v.get("card") {
        return json_u64(card).map(|n| Subject::Card(CardNo(n)));
    }
    let m = v.get("merchant")?;
    let id = m.as_i64().or_else(|| m.as_str()?.parse().ok())?;
    Some(Subject::Merchant(MerchantId(id)))
}

// --- scoring ------------------------------------------------------------------------------

/// One case as the admin API showed it: this run's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseSeen {
    /// Whom it is about.
    pub subject: Subject,
    /// The rule of each of its alerts raised during the run.
    pub rules: Vec<String>,
    /// Its reports filed during the run.
    pub reports: u64,
}

/// How one kind fared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindFigures {
    /// The kind.
    pub kind: &'static str,
    /// The rule that detects it (`report`: a resident's report in the case).
    pub rule: &'static str,
    /// Cases planted.
    pub planted: u64,
    /// Of those, the ones the gateway could detect (a spike needs history).
    pub measurable: u64,
    /// Detected: a case about the subject with an alert of the rule (or a report).
    pub detected: u64,
    /// `detected` per mille of `measurable`; `None`: nothing measurable.
    pub recall_per_mille: Option<u64>,
    /// The first measurable cases missed.
    pub missed: Vec<String>,
    /// Why some are not measurable.
    pub note: Option<String>,
}

/// Waiting for the rules after the day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RulesSettle {
    /// Stored transactions the devices were told of (each one fact for the rules).
    pub facts_expected: u64,
    /// Facts the rules evaluated during the run (`None`: the metrics were not readable).
    pub facts_evaluated: Option<u64>,
    /// Every fact evaluated and the cases stopped changing.
    pub settled: bool,
    /// Real ms waited.
    pub waited_ms: u64,
}

/// The fraud section of the report: planted against detected, and false alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FraudFigures {
    /// Per kind, in [`FraudKind::ALL`] order.
    pub kinds: Vec<KindFigures>,
    /// Detected per mille of the measurable planted cases, all kinds; `None`: none was
    /// measurable.
    pub recall_per_mille: Option<u64>,
    /// Transactions stored for cards the run did not plant.
    pub honest_txns: u64,
    /// Alerts raised during the run about subjects the run did not plant.
    pub false_alerts: u64,
    /// Those per 100,000 honest transactions, in hundredths (123 = 1.23).
    pub false_alerts_per_100k_centi: Option<u64>,
    /// False alerts by rule.
    pub false_by_rule: BTreeMap<String, u64>,
    /// The first false alerts: subject and rule.
    pub false_subjects: Vec<String>,
    /// Alerts about planted subjects by rule, the targeted rules and any other (a
    /// colluding card's velocity hit).
    pub planted_alerts_by_rule: BTreeMap<String, u64>,
    /// Cases the admin API listed.
    pub cases_listed: u64,
    /// The list held the API's maximum: later cases are not counted.
    pub cases_truncated: bool,
    /// The residents' reports the run filed.
    pub reports: Vec<ReportFiled>,
    /// Waiting for the rules.
    pub rules: RulesSettle,
    /// Recall 100 % of the measurable cases and at most 1 false alert per 100,000 honest
    /// transactions (the aims).
    pub aims_met: bool,
    /// What could not be planted or measured.
    pub notes: Vec<String>,
    /// Why scoring failed (the figures are then the plan's only).
    pub error: Option<String>,
}

/// The same weekday of the last four weeks before `today`, nearest first.
fn same_weekdays(today: BusinessDate) -> Vec<BusinessDate> {
    let mut out = Vec::with_capacity(4);
    let mut d = today;
    for day in 1..=28u32 {
        let Some(prev) = wenxiao_gateway::clock::previous_day(d) else {
            break;
        };
        d = prev;
        if day.is_multiple_of(7) {
            out.push(d);
        }
    }
    out
}

/// Where [`score`] reads the merchants' purchase history: the store (the in-process demo),
/// or the console API (`run` against a gateway whose store it cannot reach).
#[derive(Debug, Clone, Copy)]
pub enum History<'a> {
    /// The gateway's store.
    Store(&'a AnyStore),
    /// `GET /v1/statistics/merchant-days`.
    Console(&'a ConsoleApi),
}

/// How many of the same weekdays of the last four weeks the store holds purchases of, for
/// each spiking merchant: the history the spike rule needs.
async fn spike_history(
    history: History<'_>,
    planted: &Planted,
    today: BusinessDate,
) -> Result<HashMap<MerchantId, u32>, String> {
    let spiking: Vec<MerchantId> = planted
        .cases
        .iter()
        .filter(|c| c.kind == FraudKind::Spike)
        .filter_map(|c| match c.subject {
            Subject::Merchant(m) => Some(m),
            Subject::Card(_) => None,
        })
        .collect();
    if spiking.is_empty() {
        return Ok(HashMap::new());
    }
    let weekdays = same_weekdays(today);
    let (Some(&from), Some(to)) = (weekdays.last(), wenxiao_gateway::clock::previous_day(today))
    else {
        return Err(format!("no weekdays before {today}"));
    };
    let rows = match history {
        History::Store(store) => store
            .merchant_day_purchases(from, to)
            .await
            .map_err(|e| format!("the store's purchase history: {e}"))?,
        History::Console(console) => console
            .merchant_days(from, to)
            .await
            .map_err(|e| format!("the purchase history from the console API: {e:#}"))?,
    };
    Ok(spiking
        .into_iter()
        .map(|m| {
            let weeks = rows
                .iter()
                .filter(|(rm, date, n)| *rm == m && *n > 0 && weekdays.contains(date))
                .count();
            (m, u32::try_from(weeks).unwrap_or(u32::MAX))
        })
        .collect())
}

/// Planted against detected, per kind, and the false alerts, from the run's cases.
/// `spike_weeks`: the same weekdays the store holds for each spiking merchant.
pub fn tally(
    planted: &Planted,
    cases: &[CaseSeen],
    spike_weeks: &HashMap<MerchantId, u32>,
    f: &mut FraudFigures,
) {
    let mut by_subject: HashMap<Subject, (BTreeSet<String>, u64)> = HashMap::new();
    for c in cases {
        let entry = by_subject.entry(c.subject).or_default();
        entry.0.extend(c.rules.iter().cloned());
        entry.1 += c.reports;
        let planted_subject = planted.is_planted(c.subject);
        for rule in &c.rules {
            if planted_subject {
                *f.planted_alerts_by_rule.entry(rule.clone()).or_default() += 1;
            } else {
                f.false_alerts += 1;
                *f.false_by_rule.entry(rule.clone()).or_default() += 1;
                if f.false_subjects.len() < SUBJECTS_SHOWN_MAX {
                    f.false_subjects.push(format!("{} ({rule})", c.subject));
                }
            }
        }
    }
    let (mut measurable, mut detected) = (0u64, 0u64);
    f.kinds.clear();
    for kind in FraudKind::ALL {
        let mut k = KindFigures {
            kind: kind.name(),
            rule: kind.rule().unwrap_or("report"),
            ..KindFigures::default()
        };
        let mut no_history = Vec::new();
        for case in planted.cases.iter().filter(|c| c.kind == *kind) {
            k.planted += 1;
            let seen = by_subject.get(&case.subject);
            let found = match kind.rule() {
                Some(rule) => seen.is_some_and(|s| s.0.contains(rule)),
                None => seen.is_some_and(|s| s.1 > 0),
            };
            // A spike is judged only against history; one that fired had it.
            let judged = match (kind, case.subject) {
                (FraudKind::Spike, Subject::Merchant(m)) => {
                    let weeks = spike_weeks.get(&m).copied().unwrap_or(0);
                    if weeks < SPIKE_HISTORY_WEEKS_MIN {
                        no_history.push(format!("merchant {}: {weeks}", m.0));
                    }
                    found || weeks >= SPIKE_HISTORY_WEEKS_MIN
                }
                _ => true,
            };
            if judged {
                k.measurable += 1;
            }
            if found {
                k.detected += 1;
            } else if judged && k.missed.len() < SUBJECTS_SHOWN_MAX {
                k.missed.push(case.subject.to_string());
            }
        }
        if !no_history.is_empty() {
            k.note = Some(format!(
                "not measurable for {} of {}: the rule compares the day's purchases with the same \
                 weekday of the last 4 weeks and needs at least {SPIKE_HISTORY_WEEKS_MIN} of them \
                 in the store (weeks held: {}); a run plays one business day, which the gateway \
                 dates by its own receipt clock, so a run cannot give itself that history",
                no_history.len(),
                k.planted,
                no_history.join(", ")
            ));
        }
        k.recall_per_mille = (k.measurable > 0).then(|| k.detected * 1_000 / k.measurable);
        measurable += k.measurable;
        detected += k.detected;
        f.kinds.push(k);
    }
    f.recall_per_mille = (measurable > 0).then(|| detected * 1_000 / measurable);
    f.false_alerts_per_100k_centi =
        (f.honest_txns > 0).then(|| f.false_alerts.saturating_mul(10_000_000) / f.honest_txns);
    f.aims_met = f.recall_per_mille == Some(1_000)
        && f.false_alerts_per_100k_centi.is_some_and(|c| c <= 100);
}

/// Waits until the rules have evaluated `expected` facts more than `before` (when the
/// metrics can be read), then until the cases stop changing; bounded by
/// [`RULES_WAIT_MS_MAX`].
async fn wait_for_rules(api: &AdminApi, before: Option<u64>, expected: u64) -> RulesSettle {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(RULES_WAIT_MS_MAX);
    let mut settle = RulesSettle {
        facts_expected: expected,
        ..RulesSettle::default()
    };
    let mut facts_done = before.is_none();
    if let Some(before) = before {
        loop {
            if let Ok(now) = api.facts_total().await {
                let evaluated = now.saturating_sub(before);
                settle.facts_evaluated = Some(evaluated);
                if evaluated >= expected {
                    facts_done = true;
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(RULES_POLL_MS)).await;
        }
    }
    // Alerts are recorded just after their facts are counted: wait for the cases to stop
    // changing (without the metrics, that is all there is to wait for).
    let (mut last, mut same) = (None, 0u32);
    while same < CASES_STABLE_POLLS && Instant::now() < deadline {
        let now = api.case_counts().await.ok();
        if now.is_some() && now == last {
            same += 1;
        } else {
            (last, same) = (now, 1);
        }
        if same < CASES_STABLE_POLLS {
            tokio::time::sleep(Duration::from_millis(CASES_POLL_MS)).await;
        }
    }
    settle.settled = facts_done && same >= CASES_STABLE_POLLS;
    settle.waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    settle
}

/// Scores the run's planted fraud: waits for the rules, reads the cases from the admin API
/// and the spike's history from `history`, and counts planted against detected per kind
/// and the false alerts per 100,000 honest stored transactions. `None` when the scenario
/// plants nothing. Every device must be in this process (a `[fraud]` table needs
/// `run.processes = 1`).
pub async fn score(
    run: &Run,
    day: &DayOutcome,
    reports: &[DeviceReport],
    history: History<'_>,
    first_day: BusinessDate,
) -> Option<FraudFigures> {
    let planted = &run.planted;
    if planted.is_empty() {
        return None;
    }
    let mut f = FraudFigures {
        reports: day.resident_reports.clone(),
        notes: planted.notes.clone(),
        ..FraudFigures::default()
    };
    let mut stored = 0u64;
    for a in reports.iter().flat_map(|r| &r.acks) {
        if a.status != TxnStatus::Rejected {
            stored += 1;
            if !is_planted_card(a.card_no) {
                f.honest_txns += 1;
            }
        }
    }
    let spike_weeks = match spike_history(history, planted, first_day).await {
        Ok(w) => w,
        Err(e) => {
            f.notes.push(format!("spike: history unknown: {e}"));
            HashMap::new()
        }
    };
    let api = match run.admin() {
        Ok(api) => api,
        Err(e) => {
            f.error = Some(format!("the cases cannot be read: {e}"));
            tally(planted, &[], &spike_weeks, &mut f);
            f.aims_met = false;
            return Some(f);
        }
    };
    f.rules = wait_for_rules(api, day.risk_facts_before, stored).await;
    let cases = match api.cases(day.started_at_ms).await {
        Ok((cases, truncated)) => {
            f.cases_listed = u64::try_from(cases.len()).unwrap_or(u64::MAX);
            f.cases_truncated = truncated;
            cases
        }
        Err(e) => {
            f.error = Some(format!("the cases cannot be read: {e:#}"));
            Vec::new()
        }
    };
    tally(planted, &cases, &spike_weeks, &mut f);
    if f.error.is_some() {
        f.aims_met = false;
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_response;
    use crate::plan::{CityConfig, DayPlan, plan_day, plan_scenario_day};
    use crate::scenario::Scenario;
    use std::path::Path;
    use wenxiao_gateway::risk::config::RiskConfig;

    fn registry() -> Registry {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
        Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap()
    }

    fn rules() -> RiskConfig {
        RiskConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/risk.toml"))
            .unwrap()
    }

    fn scenario(seed: u64) -> Scenario {
        Scenario {
            seed,
            city: CityConfig {
                events_per_day: 20_000,
                ..CityConfig::default()
            },
            fraud: FraudConfig {
                travel_cards: 4,
                colluding_merchants: 2,
                refund_cycling_cards: 3,
                spiking_merchants: 1,
                reported_cards: 2,
            },
            ..Scenario::default()
        }
    }

    fn place_of(r: &Registry, device: DeviceId) -> Place {
        let m = r.device(device).unwrap().merchant_id.unwrap();
        r.merchant(m).unwrap().place.unwrap()
    }

    fn merchant_of(r: &Registry, device: DeviceId) -> Option<MerchantId> {
        r.device(device)?.merchant_id
    }

    fn of_card(day: &DayPlan, card: CardNo) -> Vec<PlannedEvent> {
        day.events
            .iter()
            .filter(|e| e.card_no == card)
            .copied()
            .collect()
    }

    #[test]
    fn planting_is_deterministic_from_the_seed_and_leaves_the_honest_day_alone() {
        let r = registry();
        let a = plan_scenario_day(&scenario(7), &r);
        assert_eq!(a, plan_scenario_day(&scenario(7), &r));
        let b = plan_scenario_day(&scenario(8), &r);
        assert_ne!(a.events, b.events);
        assert_ne!(a.planted, b.planted);
        for (kind, n) in [
            (FraudKind::Travel, 4),
            (FraudKind::Collusion, 2),
            (FraudKind::RefundCycling, 3),
            (FraudKind::Spike, 1),
            (FraudKind::Reported, 2),
        ] {
            assert_eq!(a.planted.count(kind), n, "{kind:?}: {:?}", a.planted.notes);
        }
        assert!(a.planted.notes.is_empty(), "{:?}", a.planted.notes);
        assert_eq!(a.planted.reports.len(), 2);
        let planted: Vec<_> = a
            .events
            .iter()
            .filter(|e| is_planted_card(e.card_no))
            .collect();
        assert_eq!(u64::try_from(planted.len()).unwrap(), a.planted.events);
        // Every planted event is in the played hours, at a POS, without points.
        assert!(planted.iter().all(|e| e.at_ms >= 0
            && e.at_ms < 24 * HOUR_MS
            && e.points.get() == 0
            && r.device(e.device_id).unwrap().kind == DeviceKind::Pos));
        // The honest day is exactly the one planned without fraud.
        let honest: Vec<_> = a
            .events
            .iter()
            .filter(|e| !is_planted_card(e.card_no))
            .copied()
            .collect();
        let s = scenario(7);
        assert_eq!(honest, plan_day(s.seed, &s.city, &r));
        // Without a [fraud] table, nothing is planted.
        let plain = Scenario {
            fraud: FraudConfig::default(),
            ..scenario(7)
        };
        let p = plan_scenario_day(&plain, &r);
        assert!(p.planted.is_empty() && p.planted.events == 0);
        assert_eq!(p.events, plan_day(s.seed, &s.city, &r));
    }

    #[test]
    fn a_travel_pair_is_far_and_fast() {
        let (r, rules) = (registry(), rules());
        let day = plan_scenario_day(&scenario(11), &r);
        for c in day
            .planted
            .cases
            .iter()
            .filter(|c| c.kind == FraudKind::Travel)
        {
            let Subject::Card(card) = c.subject else {
                panic!("{c:?}")
            };
            let events = of_card(&day, card);
            assert_eq!(events.len(), 2, "{events:?}");
            let (a, b) = (events[0], events[1]);
            assert!(a.kind == TxnKind::Purchase && b.kind == TxnKind::Purchase);
            assert_ne!(merchant_of(&r, a.device_id), merchant_of(&r, b.device_id));
            assert!(merchant_of(&r, a.device_id).is_some());
            let d = plan::distance_m(place_of(&r, a.device_id), place_of(&r, b.device_id));
            let elapsed = b.at_ms - a.at_ms;
            assert!(d >= TRAVEL_DISTANCE_MIN_M && d >= i64::from(rules.travel.distance_m_min));
            assert!((TRAVEL_GAP_MS_MIN..=TRAVEL_GAP_MS_MAX).contains(&elapsed));
            // The rule's own comparison: distance × 3,600 > speed_max × elapsed.
            assert!(
                d * 3_600 > i64::from(rules.travel.speed_kmh_max) * elapsed,
                "{d} m in {elapsed} ms"
            );
            // Still faster than the rule with device clocks 2 minutes apart either way.
            assert!(d * 3_600 > i64::from(rules.travel.speed_kmh_max) * (elapsed + 4 * MINUTE_MS));
        }
    }

    #[test]
    fn colluding_cards_hold_the_shop_s_subsidy() {
        let (r, rules) = (registry(), rules());
        let c = &rules.collusion;
        let day = plan_scenario_day(&scenario(12), &r);
        let cases: Vec<_> = day
            .planted
            .cases
            .iter()
            .filter(|c| c.kind == FraudKind::Collusion)
            .collect();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let Subject::Merchant(m) = case.subject else {
                panic!("{case:?}")
            };
            assert!(r.merchant(m).unwrap().category == Category::Bookstore);
            assert!((2..=3).contains(&case.cards.len()));
            assert!(u32::try_from(case.cards.len()).unwrap() <= c.top_cards_count);
            let at_shop: Vec<_> = day
                .events
                .iter()
                .filter(|e| e.kind == TxnKind::Purchase && merchant_of(&r, e.device_id) == Some(m))
                .collect();
            let colluding: Vec<_> = at_shop
                .iter()
                .filter(|e| case.cards.contains(&e.card_no))
                .collect();
            assert!(colluding.iter().all(|e| e.item == Item::Book));
            let last = colluding.iter().map(|e| e.at_ms).max().unwrap();
            let sales: i64 = colluding.iter().map(|e| e.amount_fen.get()).sum();
            // Everyone else's sales up to an hour after the burst (subsidy is the same
            // 10 % of the amount for every book, so shares of sales are shares of subsidy).
            let others: i64 = at_shop
                .iter()
                .filter(|e| {
                    !case.cards.contains(&e.card_no) && e.at_ms <= last + COLLUSION_SLACK_MS
                })
                .map(|e| e.amount_fen.get())
                .sum();
            assert!(sales * BOOKSTORE_RATE_PER_MILLE / 1_000 >= c.subsidy_fen_min * 14 / 10);
            assert!(
                sales * 1_000 > i64::from(c.top_share_permille_min) * (sales + others),
                "{sales} of {}",
                sales + others
            );
            assert!(sales >= 2 * others);
        }
    }

    #[test]
    fn a_refund_cycling_card_refunds_its_subsidised_purchases_at_the_same_terminal() {
        let (r, rules) = (registry(), rules());
        let rf = &rules.refund;
        let day = plan_scenario_day(&scenario(13), &r);
        let mut merchants = HashSet::new();
        for case in day
            .planted
            .cases
            .iter()
            .filter(|c| c.kind == FraudKind::RefundCycling)
        {
            let Subject::Card(card) = case.subject else {
                panic!("{case:?}")
            };
            let events = of_card(&day, card);
            let refunds: Vec<_> = events
                .iter()
                .filter(|e| e.kind == TxnKind::Refund)
                .collect();
            assert!(
                refunds.len() >= 3 && u32::try_from(refunds.len()).unwrap() >= rf.refunds_count_min
            );
            let (initial_offline, initial_online) = plan::initial_counters(card);
            for (k, refund) in refunds.iter().enumerate() {
                // The card's latest purchase before it, on the same device: what it refunds.
                let purchase = events
                    .iter()
                    .rfind(|e| e.kind == TxnKind::Purchase && e.at_ms < refund.at_ms)
                    .unwrap();
                assert_eq!(purchase.device_id, refund.device_id);
                assert_eq!(purchase.amount_fen, refund.amount_fen);
                assert_eq!((purchase.item, refund.item), (Item::Book, Item::Book));
                assert!(refund.at_ms - purchase.at_ms <= i64::from(rf.window_days) * 24 * HOUR_MS);
                // Refunds carry the online counter, purchases the offline one.
                let k = u32::try_from(k).unwrap() + 1;
                assert_eq!(refund.card_counter.get(), u32::from(initial_online) + k);
                assert_eq!(purchase.card_counter.get(), initial_offline + k);
            }
            let first = refunds.first().unwrap().at_ms;
            let last = refunds.last().unwrap().at_ms;
            assert!(last - first <= i64::from(rf.window_days) * 24 * HOUR_MS);
            let m = merchant_of(&r, refunds[0].device_id).unwrap();
            assert!(r.merchant(m).unwrap().category == Category::Bookstore);
            merchants.insert(m);
        }
        // The shops' refund ratio never passes 30 % once judged: at each refund, refunds so
        // far against the purchases so far (or the minimum, below which it is not judged).
        for m in merchants {
            let (mut purchases, mut refunds) = (0u64, 0u64);
            for e in day
                .events
                .iter()
                .filter(|e| merchant_of(&r, e.device_id) == Some(m))
            {
                match e.kind {
                    TxnKind::Purchase => purchases += 1,
                    TxnKind::Refund => {
                        refunds += 1;
                        let judged = purchases.max(rf.merchant_purchases_min);
                        assert!(
                            refunds * 1_000 <= u64::from(rf.merchant_ratio_permille_max) * judged
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn a_spike_is_far_above_a_steady_history() {
        let (r, rules) = (registry(), rules());
        let s = &rules.spike;
        let day = plan_scenario_day(&scenario(14), &r);
        let case = day
            .planted
            .cases
            .iter()
            .find(|c| c.kind == FraudKind::Spike)
            .unwrap();
        let Subject::Merchant(m) = case.subject else {
            panic!("{case:?}")
        };
        let at_shop = |planted: bool| {
            day.events
                .iter()
                .filter(|e| {
                    e.kind == TxnKind::Purchase
                        && merchant_of(&r, e.device_id) == Some(m)
                        && is_planted_card(e.card_no) == planted
                })
                .count()
        };
        let (honest, extra) = (
            u64::try_from(at_shop(false)).unwrap(),
            u64::try_from(at_shop(true)).unwrap(),
        );
        let today = honest + extra;
        assert!(today >= s.count_min && extra >= SPIKE_PURCHASES_MIN);
        // History at the honest level, σ at its floor: mean + kσ = honest × (1 + k × floor).
        let threshold_e6 = u128::from(honest)
            * (1_000_000 + u128::from(s.k_sigma_permille) * u128::from(s.sigma_floor_permille));
        assert!(
            u128::from(today) * 1_000_000 > threshold_e6,
            "{today} vs {honest}"
        );
        // One purchase per planted card: no card rule fires on them.
        let cards: HashSet<_> = day
            .events
            .iter()
            .filter(|e| is_planted_card(e.card_no) && merchant_of(&r, e.device_id) == Some(m))
            .map(|e| e.card_no)
            .collect();
        assert_eq!(u64::try_from(cards.len()).unwrap(), extra);
    }

    #[test]
    fn a_reported_card_has_a_report_and_ordinary_purchases() {
        let r = registry();
        let day = plan_scenario_day(&scenario(15), &r);
        let reporters: HashSet<_> = day.planted.reports.iter().map(|p| &p.reporter).collect();
        assert_eq!(reporters.len(), day.planted.reports.len());
        for report in &day.planted.reports {
            assert!(report.reporter.len() <= 128 && !report.text.trim().is_empty());
            let events = of_card(&day, report.card_no);
            assert_eq!(events.len(), 2);
            assert_eq!(
                merchant_of(&r, events[0].device_id),
                merchant_of(&r, events[1].device_id)
            );
            assert!(merchant_of(&r, events[0].device_id).is_some());
            assert!(day.planted.cases.iter().any(
                |c| c.kind == FraudKind::Reported && c.subject == Subject::Card(report.card_no)
            ));
        }
    }

    #[test]
    fn the_honest_day_trips_no_card_rule() {
        let (r, rules) = (registry(), rules());
        let city = CityConfig {
            events_per_day: 60_000,
            ..CityConfig::default()
        };
        let plan = plan_day(3, &city, &r);
        assert!(
            plan.iter()
                .all(|e| e.kind != TxnKind::Refund && !is_planted_card(e.card_no))
        );
        #[derive(Default)]
        struct Day {
            purchases: u64,
            amount: i64,
            subsidy_max: i64,
            last: Option<(Place, i64)>,
        }
        let mut cards: HashMap<CardNo, Day> = HashMap::new();
        let v = &rules.velocity;
        for e in &plan {
            let d = cards.entry(e.card_no).or_default();
            if e.kind == TxnKind::Purchase {
                d.purchases += 1;
                d.amount += e.amount_fen.get();
                // The most the pilot's policy grants (10 % books and domestic films, 30 %
                // of a performance's regular price).
                d.subsidy_max += match e.item {
                    Item::Book => e.amount_fen.get() / 10,
                    Item::FilmDomestic => e.list_price_fen.get() / 10,
                    Item::Performance => e.list_price_fen.get() * 3 / 10,
                    _ => 0,
                };
                assert!(d.purchases <= v.purchases_count_max, "{e:?}");
                assert!(
                    d.amount <= v.amount_fen_max && d.subsidy_max <= v.subsidy_fen_max,
                    "{e:?}"
                );
            }
            // Consecutive placed transactions of a card never look like impossible travel.
            let Some(here) = r
                .device(e.device_id)
                .and_then(|dv| dv.merchant_id)
                .and_then(|m| r.merchant(m)?.place)
            else {
                continue;
            };
            if let Some((from, at)) = d.last {
                let dist = plan::distance_m(from, here);
                let elapsed = e.at_ms - at;
                assert!(
                    dist < i64::from(rules.travel.distance_m_min)
                        || dist * 3_600 <= i64::from(rules.travel.speed_kmh_max) * elapsed,
                    "{} at {dist} m in {elapsed} ms",
                    e.card_no
                );
            }
            d.last = Some((here, e.at_ms));
        }
    }

    #[test]
    fn the_tally_counts_planted_detected_and_false_alerts() {
        let r = registry();
        let day = plan_scenario_day(&scenario(16), &r);
        let p = &day.planted;
        let subject = |kind: FraudKind| p.cases.iter().find(|c| c.kind == kind).unwrap().subject;
        let collusion = p
            .cases
            .iter()
            .find(|c| c.kind == FraudKind::Collusion)
            .unwrap();
        let mut cases = vec![
            CaseSeen {
                subject: subject(FraudKind::Travel),
                rules: vec!["travel".into()],
                reports: 0,
            },
            CaseSeen {
                subject: collusion.subject,
                rules: vec!["collusion".into()],
                reports: 0,
            },
            // A colluding card's velocity hit is about something planted, not false.
            CaseSeen {
                subject: Subject::Card(collusion.cards[0]),
                rules: vec!["velocity".into()],
                reports: 0,
            },
            CaseSeen {
                subject: subject(FraudKind::Reported),
                rules: Vec::new(),
                reports: 1,
            },
            // A rule that is not the kind's does not detect it.
            CaseSeen {
                subject: subject(FraudKind::RefundCycling),
                rules: vec!["velocity".into()],
                reports: 0,
            },
            // A public venue: never a planted merchant.
            CaseSeen {
                subject: Subject::Merchant(MerchantId(1_106)),
                rules: vec!["collusion".into()],
                reports: 0,
            },
        ];
        let mut f = FraudFigures {
            honest_txns: 200_000,
            ..FraudFigures::default()
        };
        tally(p, &cases, &HashMap::new(), &mut f);
        let k = |name: &str| f.kinds.iter().find(|k| k.kind == name).unwrap().clone();
        assert_eq!((k("travel").planted, k("travel").detected), (4, 1));
        assert_eq!(k("travel").recall_per_mille, Some(250));
        assert_eq!(k("collusion").detected, 1);
        assert_eq!(
            (
                k("refund_cycling").detected,
                k("refund_cycling").missed.len()
            ),
            (0, 3)
        );
        assert_eq!(k("reported").detected, 1);
        // No history in the store: the spike is not measurable, not missed.
        let spike = k("spike");
        assert_eq!(
            (spike.planted, spike.measurable, spike.recall_per_mille),
            (1, 0, None)
        );
        assert!(spike.note.unwrap().contains("not measurable"));
        assert_eq!(f.false_alerts, 1);
        assert_eq!(f.false_alerts_per_100k_centi, Some(50));
        assert_eq!(f.planted_alerts_by_rule.get("velocity"), Some(&2));
        assert!(!f.aims_met);
        // With history, a spike that fired counts.
        let m = match subject(FraudKind::Spike) {
            Subject::Merchant(m) => m,
            Subject::Card(_) => unreachable!(),
        };
        cases.push(CaseSeen {
            subject: Subject::Merchant(m),
            rules: vec!["spike".into()],
            reports: 0,
        });
        let mut f = FraudFigures::default();
        tally(p, &cases, &HashMap::from([(m, 3)]), &mut f);
        let spike = f.kinds.iter().find(|k| k.kind == "spike").unwrap();
        assert_eq!((spike.measurable, spike.detected), (1, 1));
    }

    #[test]
    fn answers_and_metrics_parse() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_response(plain).unwrap(),
            (201, "{\"a\":1}".to_owned())
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, "{\"a\":1}".to_owned())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        let page = "# TYPE wenxiao_risk_facts_total counter\n\
                    wenxiao_risk_facts_total 1234\n\
                    wenxiao_risk_facts_total_other 9\n\
                    wenxiao_risk_alerts_total{rule=\"travel\"} 3\n\
                    wenxiao_risk_alerts_total{rule=\"spike\"} 4\n";
        assert_eq!(metric_total(page, RISK_FACTS_METRIC), 1_234);
        assert_eq!(metric_total(page, "wenxiao_risk_alerts_total"), 7);
        assert_eq!(metric_total(page, "absent"), 0);
        let card: Value = serde_json::json!({"card": 3_101_900_000_000_001u64});
        assert_eq!(
            subject_of(&card),
            Some(Subject::Card(CardNo(3_101_900_000_000_001)))
        );
        let big: Value = serde_json::json!({"card": "9601000000000001"});
        assert_eq!(
            subject_of(&big),
            Some(Subject::Card(CardNo(9_601_000_000_000_001)))
        );
        let m: Value = serde_json::json!({"merchant": 1001});
        assert_eq!(subject_of(&m), Some(Subject::Merchant(MerchantId(1001))));
    }
}
