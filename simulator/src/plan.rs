//! A day of city activity, planned ahead from a seed: which device sees which card do what,
//! when. Pure and deterministic — the same seed, configuration and registry give the same
//! plan, transaction for transaction — so a run can be reproduced and its results checked.
//!
//! Reproducibility holds for a given `Cargo.lock`: `StdRng`'s algorithm may change between
//! `rand` releases.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use std::collections::HashMap;
use wenxiao_gateway::registry::{Category, Registry};
use wenxiao_protocol::{CardCounter, CardNo, DeviceId, DeviceKind, Fen, Item, Points, TxnKind};

/// The city and its habits. Defaults follow the pilot (`shared/spec/policy.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CityConfig {
    /// Lvchengtong city cards.
    pub city_cards: u64,
    /// SIM-card applets of China Mobile users.
    pub china_mobile_sims: u64,
    /// SIM-card applets of China Telecom users.
    pub china_telecom_sims: u64,
    /// Card events (purchases, sign-ins, top-ups) planned for one day.
    pub events_per_day: u64,
    /// Relative weight of each hour of the Asia/Shanghai day (24 values).
    pub hourly_weights: Vec<u32>,
    /// Shares of events, in per mille: purchases at bookstores, cinemas, performance
    /// venues, sign-ins at public venues; the rest are kiosk top-ups.
    pub bookstore_per_mille: u32,
    /// Cinema purchases.
    pub cinema_per_mille: u32,
    /// Performance venue purchases.
    pub performance_per_mille: u32,
    /// Sign-ins.
    pub sign_in_per_mille: u32,
    /// Of cinema purchases, the share that are foreign films (no subsidy).
    pub foreign_film_per_mille: u32,
    /// Of purchases, the share paid partly with points.
    pub points_purchase_per_mille: u32,
}

impl Default for CityConfig {
    fn default() -> Self {
        Self {
            city_cards: 3_500_000,
            china_mobile_sims: 7_000_000,
            china_telecom_sims: 2_000_000,
            events_per_day: 100_000,
            // Quiet nights, a lunch bump, the evening peak.
            hourly_weights: vec![
                1, 1, 1, 1, 1, 2, 4, 8, 12, 16, 20, 24, 26, 22, 20, 22, 26, 32, 40, 44, 40, 30, 16,
                6,
            ],
            bookstore_per_mille: 450,
            cinema_per_mille: 250,
            performance_per_mille: 80,
            sign_in_per_mille: 170,
            foreign_film_per_mille: 300,
            points_purchase_per_mille: 100,
        }
    }
}

/// One planned card event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Milliseconds after the day's start (Shanghai midnight).
    pub at_ms: i64,
    /// The device it happens at.
    pub device_id: DeviceId,
    /// What happens.
    pub kind: TxnKind,
    /// The card (a city card or a SIM applet).
    pub card_no: CardNo,
    /// Paid by card (0 for sign-ins); for a refund, given back. A REFUND refunds its card's
    /// latest purchase on the same device (the device names that purchase's seq): the
    /// plan puts that purchase there earlier, without points.
    pub amount_fen: Fen,
    /// Cinema agreed price or performance regular price, else 0.
    pub list_price_fen: Fen,
    /// What was bought.
    pub item: Item,
    /// Points the resident wants to use (a POINTS_AUTH first).
    pub points: Points,
    /// The card's counter after this transaction: its offline counter for purchases and
    /// sign-ins, its online (load) counter for top-ups and refunds. Assigned in time order from
    /// [`initial_counters`], so a card never repeats a value.
    pub card_counter: CardCounter,
}

/// A card's counters before the day: (offline, online). Derived from the card number so
/// that cards differ and a run needs no card database.
pub fn initial_counters(card_no: CardNo) -> (u32, u16) {
    let n = card_no.get();
    (
        u32::try_from(n % 9_973).unwrap_or(0) + 1,
        u16::try_from(n % 997).unwrap_or(0) + 1,
    )
}

/// A card's online (load) counter after every top-up and refund of `plan` (both credit the
/// purse and move that counter): where the card stands when credits are loaded after the
/// day.
pub fn online_seq_after(plan: &[PlannedEvent], card_no: CardNo) -> u16 {
    plan.iter()
        .filter(|e| e.card_no == card_no && moves_online_counter(e.kind))
        .map(|e| u16::try_from(e.card_counter.get()).unwrap_or(u16::MAX))
        .max()
        .unwrap_or_else(|| initial_counters(card_no).1)
}

/// First city card number; city cards run from here.
pub const CITY_CARD_BASE: u64 = 3_101_000_000_000_000;
/// First China Mobile SIM applet number (the gateway's default range).
pub const CHINA_MOBILE_BASE: u64 = 8_601_000_000_000_000;
/// First China Telecom SIM applet number.
pub const CHINA_TELECOM_BASE: u64 = 8_603_000_000_000_000;

/// Whether a transaction of this kind carries the card's online (load) counter: TOP_UP
/// and REFUND credit the purse (protocol: `card_counter`); the others carry the offline one.
pub fn moves_online_counter(kind: TxnKind) -> bool {
    matches!(kind, TxnKind::TopUp | TxnKind::Refund)
}

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// A merchant's place: latitude and longitude in micro-degrees, as the registry holds it.
pub type Place = (i32, i32);

/// An honest resident crosses the city no faster than this between two transactions
/// (metro or taxi, door to door): a third of the travel rule's 120 km/h.
pub const HONEST_SPEED_KMH: i64 = 40;
/// …and stays at least this long where they bought or signed in before the next place.
/// It also covers device clocks that disagree by a few minutes.
pub const HONEST_DWELL_MS: i64 = 10 * 60_000;
/// Places closer than this are the same neighbourhood: no travel time is asked between
/// them (the travel rule ignores pairs under 2,000 m).
pub const HONEST_NEAR_M: i64 = 1_500;
/// Cards an event may try before it is dropped for want of one that could be there in
/// time. With millions of cards and a day's few thousand busy ones, the first draw almost
/// always fits; eight failures in a row do not happen in practice.
const CARD_TRIES_MAX: u32 = 8;

/// Great-circle (haversine) distance in whole metres between two places: the same
/// arithmetic as the gateway's travel rule, so that the plan and the rule agree to the
/// metre.
#[allow(
    clippy::float_arithmetic,
    clippy::cast_possible_truncation,
    reason = "geometry, not money; the result is at most half the Earth's circumference \
              (2.0e7 m) and `as` saturates"
)]
pub fn distance_m(a: Place, b: Place) -> i64 {
    // The mean Earth radius (IUGG), as the gateway uses.
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let rad = |e6: i32| (f64::from(e6) / 1e6).to_radians();
    let (lat_a, lat_b) = (rad(a.0), rad(b.0));
    let d_lat = lat_b - lat_a;
    let d_lon = rad(b.1) - rad(a.1);
    let h = (d_lat / 2.0).sin().powi(2) + lat_a.cos() * lat_b.cos() * (d_lon / 2.0).sin().powi(2);
    let c = 2.0 * h.sqrt().min(1.0).asin();
    (EARTH_RADIUS_M * c).round() as i64
}

/// Whether an honest resident seen at `from` at `from_ms` can be at `to` at `to_ms`
/// (simulated ms): nearby places always; else after the trip at [`HONEST_SPEED_KMH`] and
/// a stay of [`HONEST_DWELL_MS`].
pub fn reachable(from: Place, from_ms: i64, to: Place, to_ms: i64) -> bool {
    let d = distance_m(from, to);
    if d < HONEST_NEAR_M {
        return true;
    }
    // m × 3,600 / (km/h) = ms.
    let trip_ms = d.saturating_mul(3_600) / HONEST_SPEED_KMH;
    to_ms.saturating_sub(from_ms) >= trip_ms.saturating_add(HONEST_DWELL_MS)
}

/// Where each device stands: its merchant's place, for devices at placed merchants.
fn device_places(registry: &Registry) -> HashMap<DeviceId, Place> {
    registry
        .devices()
        .into_iter()
        .filter_map(|d| {
            let place = registry.merchant(d.merchant_id?)?.place?;
            Some((d.device_id, place))
        })
        .collect()
}

struct Devices {
    bookstores: Vec<DeviceId>,
    cinemas: Vec<DeviceId>,
    venues: Vec<DeviceId>,
    readers: Vec<DeviceId>,
    kiosks: Vec<DeviceId>,
}

fn devices(registry: &Registry) -> Devices {
    let mut d = Devices {
        bookstores: Vec::new(),
        cinemas: Vec::new(),
        venues: Vec::new(),
        readers: Vec::new(),
        kiosks: Vec::new(),
    };
    for dev in registry.devices() {
        if !dev.active {
            continue;
        }
        let category = dev
            .merchant_id
            .and_then(|m| registry.merchant(m))
            .map(|m| m.category);
        match (dev.kind, category) {
            (DeviceKind::Pos, Some(Category::Bookstore)) => d.bookstores.push(dev.device_id),
            (DeviceKind::Pos, Some(Category::Cinema)) => d.cinemas.push(dev.device_id),
            (DeviceKind::Pos, Some(Category::PerformanceVenue)) => d.venues.push(dev.device_id),
            (DeviceKind::SigninReader, _) => d.readers.push(dev.device_id),
            (DeviceKind::Kiosk, _) => d.kiosks.push(dev.device_id),
            _ => {}
        }
    }
    d
}

/// One of `from`, uniformly (none of nothing).
pub(crate) fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> Option<T> {
    if from.is_empty() {
        return None;
    }
    from.get(rng.random_range(0..from.len())).copied()
}

/// A card of the city, uniformly over the issuers' cards.
fn draw_card(rng: &mut StdRng, config: &CityConfig) -> CardNo {
    let cards = config.city_cards + config.china_mobile_sims + config.china_telecom_sims;
    let c = rng.random_range(0..cards.max(1));
    if c < config.city_cards {
        CardNo(CITY_CARD_BASE + c)
    } else if c < config.city_cards + config.china_mobile_sims {
        CardNo(CHINA_MOBILE_BASE + (c - config.city_cards))
    } else {
        CardNo(CHINA_TELECOM_BASE + (c - config.city_cards - config.china_mobile_sims))
    }
}

/// Plans one honest day. Events come out sorted by time; the same inputs give the same
/// plan.
pub fn plan_day(seed: u64, config: &CityConfig, registry: &Registry) -> Vec<PlannedEvent> {
    let mut events = plan_honest(seed, config, registry);
    assign_counters(&mut events);
    events
}

/// A scenario's day: the city's honest day, and the fraud its `[fraud]` table plants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayPlan {
    /// Every event, sorted by time, counters assigned over honest and planted alike.
    pub events: Vec<PlannedEvent>,
    /// What was planted (nothing without a `[fraud]` table).
    pub planted: crate::fraud::Planted,
}

/// Plans a scenario's day: [`plan_day`]'s honest day, plus the planted fraud of its
/// `[fraud]` table in its played hours (see [`crate::fraud::plant`]). Without a `[fraud]`
/// table the events are exactly [`plan_day`]'s.
pub fn plan_scenario_day(scenario: &crate::scenario::Scenario, registry: &Registry) -> DayPlan {
    let mut events = plan_honest(scenario.seed, &scenario.city, registry);
    let window = (
        i64::from(scenario.clock.from_hour) * HOUR_MS,
        i64::from(scenario.clock.to_hour) * HOUR_MS,
    );
    let planted = crate::fraud::plant(
        scenario.seed,
        &scenario.fraud,
        window,
        registry,
        &mut events,
    );
    if planted.events > 0 {
        events.sort_by_key(|e| (e.at_ms, e.device_id, e.card_no));
    }
    assign_counters(&mut events);
    DayPlan { events, planted }
}

/// The honest day without counters: drawn, sorted by time, cards placed where residents
/// can be.
fn plan_honest(seed: u64, config: &CityConfig, registry: &Registry) -> Vec<PlannedEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let devices = devices(registry);
    let weights: Vec<u64> = config
        .hourly_weights
        .iter()
        .map(|&w| u64::from(w))
        .collect();
    let weight_sum: u64 = weights.iter().sum::<u64>().max(1);
    let mut events = Vec::with_capacity(usize::try_from(config.events_per_day).unwrap_or(0));
    for _ in 0..config.events_per_day {
        // The hour by its weight, then a uniform moment inside it.
        let mut w = rng.random_range(0..weight_sum);
        let mut hour = 0i64;
        for (h, &hw) in weights.iter().enumerate() {
            if w < hw {
                hour = i64::try_from(h).unwrap_or(0);
                break;
            }
            w -= hw;
        }
        let at_ms = (hour * HOUR_MS + rng.random_range(0..HOUR_MS)).min(DAY_MS - 1);
        let card_no = draw_card(&mut rng, config);
        let roll = rng.random_range(0..1_000u32);
        let (b, ci, p, s) = (
            config.bookstore_per_mille,
            config.cinema_per_mille,
            config.performance_per_mille,
            config.sign_in_per_mille,
        );
        // Each branch draws its amounts, then the device; a purchase that may use points
        // then draws whether it wants them (the card and the number are chosen once the
        // day is in time order).
        let (from, kind, amount, list, item, may_use_points) = if roll < b {
            let amount = rng.random_range(1_000..30_000i64);
            (
                &devices.bookstores,
                TxnKind::Purchase,
                amount,
                0,
                Item::Book,
                true,
            )
        } else if roll < b + ci {
            let list = rng.random_range(3_000..8_000i64);
            let amount = list * rng.random_range(70..=100i64) / 100;
            let foreign = rng.random_range(0..1_000u32) < config.foreign_film_per_mille;
            let item = if foreign {
                Item::FilmForeign
            } else {
                Item::FilmDomestic
            };
            (
                &devices.cinemas,
                TxnKind::Purchase,
                amount,
                list,
                item,
                false,
            )
        } else if roll < b + ci + p {
            let list = rng.random_range(8_000..60_000i64);
            (
                &devices.venues,
                TxnKind::Purchase,
                list,
                list,
                Item::Performance,
                true,
            )
        } else if roll < b + ci + p + s {
            (&devices.readers, TxnKind::SignIn, 0, 0, Item::None, false)
        } else {
            let amount = 10_000 * rng.random_range(1..=5i64);
            (
                &devices.kiosks,
                TxnKind::TopUp,
                amount,
                0,
                Item::None,
                false,
            )
        };
        let event = pick(&mut rng, from).map(|device_id| PlannedEvent {
            at_ms,
            device_id,
            kind,
            card_no,
            amount_fen: Fen(amount),
            list_price_fen: Fen(list),
            item,
            points: Points(u32::from(
                may_use_points && rng.random_range(0..1_000u32) < config.points_purchase_per_mille,
            )),
            card_counter: CardCounter(0),
        });
        events.extend(event);
    }
    // Stable by time, then by device: a total order independent of generation order.
    events.sort_by_key(|e| (e.at_ms, e.device_id, e.card_no));
    place_cards(&mut rng, config, &device_places(registry), &mut events);
    events
}

/// Whether `card`, last seen where `last` says, can be `here` at `at_ms`.
fn fits(
    last: &HashMap<CardNo, (Place, i64)>,
    card: CardNo,
    here: Option<Place>,
    at_ms: i64,
) -> bool {
    match (here, last.get(&card)) {
        (Some(to), Some(&(from, from_ms))) => reachable(from, from_ms, to, at_ms),
        _ => true,
    }
}

/// Walks the day in time order and makes each card's day one a resident could live:
///
/// - A purchase that wants points goes to a card that signed in earlier that day (and so
///   holds points) and could have come here since, for up to that sign-in's worth, never
///   over a quarter of the price; each sign-in's points are spent once (a second purchase
///   would be declined for want of points). With no such card it goes without points.
/// - A card is never at two places farther apart than it could travel in the time between
///   ([`reachable`]); an event whose card could not be there goes to another card (or,
///   after [`CARD_TRIES_MAX`] draws, is dropped).
///
/// Cards drawn uniformly for each event otherwise cross the city in minutes now and then
/// (a few hundred cards appear twice in a day of 100,000 events, and sign-in points
/// follow their cards to any purchase later that day), which the gateway's travel rule
/// rightly calls impossible.
fn place_cards(
    rng: &mut StdRng,
    config: &CityConfig,
    places: &HashMap<DeviceId, Place>,
    events: &mut Vec<PlannedEvent>,
) {
    const POINTS_MAX: u32 = 10;
    let mut last: HashMap<CardNo, (Place, i64)> = HashMap::new();
    let mut signed_in: Vec<CardNo> = Vec::new();
    events.retain_mut(|e| {
        let here = places.get(&e.device_id).copied();
        let at_ms = e.at_ms;
        if e.points.get() > 0 {
            let max = u32::try_from(e.amount_fen.get() / 40)
                .unwrap_or(0)
                .min(POINTS_MAX);
            let mut chosen = None;
            for _ in 0..CARD_TRIES_MAX {
                if max == 0 || signed_in.is_empty() {
                    break;
                }
                let i = rng.random_range(0..signed_in.len());
                let Some(&card) = signed_in.get(i) else {
                    break;
                };
                if fits(&last, card, here, at_ms) {
                    // The sign-in's points are spent: it is not drawn again.
                    chosen = Some(signed_in.swap_remove(i));
                    break;
                }
            }
            match chosen {
                Some(card) => {
                    e.card_no = card;
                    e.points = Points(rng.random_range(1..=max));
                }
                None => e.points = Points(0),
            }
        }
        if !fits(&last, e.card_no, here, at_ms) {
            let mut found = None;
            for _ in 0..CARD_TRIES_MAX {
                let card = draw_card(&mut *rng, config);
                if fits(&last, card, here, at_ms) {
                    found = Some(card);
                    break;
                }
            }
            match found {
                Some(card) => e.card_no = card,
                None => return false,
            }
        }
        if let Some(place) = here {
            last.insert(e.card_no, (place, at_ms));
        }
        if e.kind == TxnKind::SignIn {
            signed_in.push(e.card_no);
        }
        true
    });
}

/// Walks the day in time order and gives each event its card's next counter value: the
/// online counter for top-ups and refunds, the offline one for the rest.
fn assign_counters(events: &mut [PlannedEvent]) {
    let mut counters: HashMap<CardNo, (u32, u16)> = HashMap::new();
    for e in events.iter_mut() {
        let c = counters
            .entry(e.card_no)
            .or_insert_with(|| initial_counters(e.card_no));
        e.card_counter = if moves_online_counter(e.kind) {
            c.1 = c.1.saturating_add(1);
            CardCounter(u32::from(c.1))
        } else {
            c.0 = c.0.saturating_add(1);
            CardCounter(c.0)
        };
    }
}

/// FNV-1a 64's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 over `bytes`, continuing from `h` (start from [`FNV_OFFSET`]).
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a 64 over every event's fields in plan order: two plans are the same day exactly
/// when their digests are equal (for comparing runs by their reports).
pub fn digest(plan: &[PlannedEvent]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut eat = |bytes: &[u8]| h = fnv1a(h, bytes);
    for e in plan {
        eat(&e.at_ms.to_be_bytes());
        eat(&e.device_id.get().to_be_bytes());
        eat(&[e.kind.code(), e.item.code()]);
        eat(&e.card_no.get().to_be_bytes());
        eat(&e.amount_fen.get().to_be_bytes());
        eat(&e.list_price_fen.get().to_be_bytes());
        eat(&e.points.get().to_be_bytes());
        eat(&e.card_counter.get().to_be_bytes());
    }
    h
}

/// First id of the POS terminals a scaled registry adds.
pub const SCALED_POS_BASE: u64 = 310_150_000_001;

/// Writes `merchants.csv` and `devices.csv` under `out`: the registry in `from` plus POS
/// terminals, spread round-robin over its bookstores, cinemas and performance venues,
/// until there are `devices` devices in all (load scenarios with thousands of sessions).
pub fn write_scaled_registry(
    from: &std::path::Path,
    devices: usize,
    out: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use anyhow::Context;
    let merchants_in = from.join("merchants.csv");
    let devices_in = from.join("devices.csv");
    let registry = Registry::from_csv(&merchants_in, &devices_in)?;
    let mut shops: Vec<_> = registry
        .merchants()
        .into_iter()
        .filter(|m| {
            m.active
                && matches!(
                    m.category,
                    Category::Bookstore | Category::Cinema | Category::PerformanceVenue
                )
        })
        .map(|m| m.merchant_id)
        .collect();
    shops.sort_unstable();
    anyhow::ensure!(
        !shops.is_empty(),
        "no contracted merchants to add terminals to"
    );
    let existing = registry.devices().len();
    let mut text = std::fs::read_to_string(&devices_in)
        .with_context(|| format!("read {}", devices_in.display()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    for (i, merchant) in (0..devices.saturating_sub(existing)).zip(shops.iter().cycle()) {
        let id = SCALED_POS_BASE + u64::try_from(i)?;
        text.push_str(&format!("{id},POS,{},,1\n", merchant.0));
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let merchants_out = out.join("merchants.csv");
    let devices_out = out.join("devices.csv");
    std::fs::copy(&merchants_in, &merchants_out)
        .with_context(|| format!("write {}", merchants_out.display()))?;
    std::fs::write(&devices_out, text)
        .with_context(|| format!("write {}", devices_out.display()))?;
    Ok((merchants_out, devices_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn registry() -> Registry {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
        Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap()
    }

    fn small() -> CityConfig {
        CityConfig {
            events_per_day: 5_000,
            ..CityConfig::default()
        }
    }

    #[test]
    fn the_same_seed_plans_the_same_day() {
        let r = registry();
        assert_eq!(plan_day(7, &small(), &r), plan_day(7, &small(), &r));
        assert_ne!(plan_day(7, &small(), &r), plan_day(8, &small(), &r));
        assert_eq!(
            digest(&plan_day(7, &small(), &r)),
            digest(&plan_day(7, &small(), &r))
        );
        assert_ne!(
            digest(&plan_day(7, &small(), &r)),
            digest(&plan_day(8, &small(), &r))
        );
    }

    #[test]
    fn a_scaled_registry_adds_terminals_to_shops() {
        let out = tempfile::tempdir().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
        let (m, d) = write_scaled_registry(&dir, 1_000, out.path()).unwrap();
        let scaled = Registry::from_csv(&m, &d).unwrap();
        assert_eq!(scaled.devices().len(), 1_000);
        let added = scaled
            .devices()
            .into_iter()
            .filter(|d| (SCALED_POS_BASE..SCALED_POS_BASE + 1_000).contains(&d.device_id.get()))
            .count();
        assert_eq!(added, 1_000 - registry().devices().len());
    }

    #[test]
    fn a_plan_follows_the_mix_and_the_evening_peak() {
        let plan = plan_day(1, &small(), &registry());
        assert!(
            plan.len() > 4_900,
            "nearly every event finds a device: {}",
            plan.len()
        );
        assert!(plan.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let count = |k: TxnKind| plan.iter().filter(|e| e.kind == k).count();
        let sign_ins = count(TxnKind::SignIn);
        assert!((600..1_100).contains(&sign_ins), "{sign_ins}");
        let hour = |h: i64| plan.iter().filter(|e| e.at_ms / HOUR_MS == h).count();
        assert!(
            hour(19) > 5 * hour(3),
            "evening {} vs night {}",
            hour(19),
            hour(3)
        );
        // Points never pay more than half a purchase, and go to cards that signed in
        // earlier that day.
        assert!(
            plan.iter()
                .all(|e| e.points.get() as i64 * 10 * 2 <= e.amount_fen.get())
        );
        let with_points: Vec<_> = plan.iter().filter(|e| e.points.get() > 0).collect();
        assert!(!with_points.is_empty());
        for p in with_points {
            assert!(plan.iter().any(|s| s.kind == TxnKind::SignIn
                && s.card_no == p.card_no
                && s.at_ms <= p.at_ms));
        }
        // A card's counters only go up, each counter separately.
        let mut last: HashMap<(CardNo, bool), u32> = HashMap::new();
        for e in &plan {
            let key = (e.card_no, e.kind == TxnKind::TopUp);
            let before = last.insert(key, e.card_counter.get());
            assert!(before.is_none_or(|b| b < e.card_counter.get()), "{e:?}");
        }
        // Cards of all three issuers appear.
        assert!(plan.iter().any(|e| e.card_no.get() >= CHINA_TELECOM_BASE));
        assert!(plan.iter().any(|e| e.card_no.get() < CHINA_MOBILE_BASE));
    }
}
