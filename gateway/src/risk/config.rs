//! The fraud and risk rules' configuration (`config/risk.toml`, policy: "Fraud and risk":
//! "Rules (all configurable)"). Every threshold has its unit last in its name, every rule
//! has its own `enabled` switch, and the defaults below are the shipped file's values (a
//! test parses the file and compares). Unknown keys are errors, so a typo cannot silently
//! fall back to a default; [`RiskConfig::validate`] range-checks every value and names the
//! key at fault.

use serde::Deserialize;
use std::fmt::Display;

/// The whole rule set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// A hit is MEDIUM when its figure reaches this many thousandths of its threshold
    /// (1500 = 1.5×), for every rule.
    pub medium_at_permille: u32,
    /// A hit is HIGH when its figure reaches this many thousandths of its threshold
    /// (2000 = 2×), for every rule. Below MEDIUM a hit is LOW.
    pub high_at_permille: u32,
    /// Most transactions named as evidence in one hit (the most recent ones). Bounds the
    /// memory held per card and merchant day, and the size of an alert.
    pub evidence_txns_max: u32,
    /// Seqs a device may have above its contiguous watermark before each further one is
    /// counted as an overflow (`seen_above_overflow_total`). Past it they are still
    /// remembered — exactly-once is kept, memory is what gives — see `SeqSeen`.
    pub seen_above_max: u32,
    /// Business days back a transaction may still arrive (a catch-up from the store just
    /// after midnight): per-day state is kept for today and this many days before, and
    /// facts of older days are skipped (counted as stale).
    pub late_days_max: u32,
    /// A card with no transaction for this many days is forgotten (its last merchant for
    /// the travel rule, its highest counter, its recent refunds): the bound on the
    /// per-card memory.
    pub card_idle_days_max: u32,
    /// Velocity per card per business day.
    pub velocity: VelocityConfig,
    /// Impossible travel between two merchants.
    pub travel: TravelConfig,
    /// Card-counter jumps and counters going back in time.
    pub counter: CounterConfig,
    /// Refunds of subsidised purchases, per card and per merchant.
    pub refund: RefundConfig,
    /// Merchant volume against its own history.
    pub spike: SpikeConfig,
    /// Merchant subsidy concentrated on few cards.
    pub collusion: CollusionConfig,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            medium_at_permille: 1_500,
            high_at_permille: 2_000,
            evidence_txns_max: 20,
            // A session has at most 64 TXNs in flight (gateway.toml `max_in_flight`), so
            // honest reordering leaves a few dozen seqs above the watermark; thousands
            // mean seqs that never arrive (see `Engine::mark_seen`).
            seen_above_max: 4_096,
            late_days_max: 1,
            // Four weeks: the spike rule's horizon, and long enough that a cloned card
            // used a week after the original still meets the original's counter.
            card_idle_days_max: 28,
            velocity: VelocityConfig::default(),
            travel: TravelConfig::default(),
            counter: CounterConfig::default(),
            refund: RefundConfig::default(),
            spike: SpikeConfig::default(),
            collusion: CollusionConfig::default(),
        }
    }
}

/// `[velocity]`: one card's purchases in one business day. Fires when any figure is
/// strictly above its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VelocityConfig {
    /// The rule runs.
    pub enabled: bool,
    /// Most purchases per card and day.
    pub purchases_count_max: u64,
    /// Most money paid per card and day.
    pub amount_fen_max: i64,
    /// Most subsidy earned per card and day.
    pub subsidy_fen_max: i64,
}

impl Default for VelocityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // A resident realistically makes a few purchases a day; 12 is several times that.
            purchases_count_max: 12,
            // ¥5,000 a day on culture.
            amount_fen_max: 500_000,
            // The policy has no per-purchase subsidy cap; the largest subsidy of one
            // purchase is 30 % of a performance ticket's regular price, 18,000 fen for the
            // ¥600 top of the simulated range. Three such purchases a day.
            subsidy_fen_max: 60_000,
        }
    }
}

/// `[travel]`: the same card at two merchants too far apart for the time between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TravelConfig {
    /// The rule runs.
    pub enabled: bool,
    /// Fastest plausible movement across the city.
    pub speed_kmh_max: u32,
    /// Pairs of merchants closer than this are ignored (the same mall or street).
    pub distance_m_min: u32,
}

impl Default for TravelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Faster than any car or metro within the city.
            speed_kmh_max: 120,
            // Merchants in one mall or block; device clocks there may also disagree.
            distance_m_min: 2_000,
        }
    }
}

/// `[counter]`: the card's offline (purchase) counter, carried by PURCHASE and SIGN_IN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CounterConfig {
    /// The rule runs.
    pub enabled: bool,
    /// Largest rise over the card's highest counter seen: more means transactions the
    /// gateway never saw (offline use elsewhere, or a tampered card).
    pub jump_count_max: u32,
    /// A counter lower than the card's highest may carry a time up to this much later
    /// than the highest's before it counts as going back in time (a clone): device
    /// clocks disagree by a few minutes.
    pub clock_skew_ms_max: i64,
}

impl Default for CounterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            jump_count_max: 50,
            clock_skew_ms_max: 300_000,
        }
    }
}

/// `[refund]`: refunds soon after subsidised purchases (refund cycling: buy, earn the
/// subsidy, refund), per card and per merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefundConfig {
    /// The per-card rule (`refund`) runs.
    pub enabled: bool,
    /// A refund counts when it comes at most this long after the subsidised purchase it
    /// refunds, and a card's counted refunds must fall within this long of each other.
    pub window_days: u32,
    /// Counted refunds of one card within the window that fire: one honest refund must
    /// not alert.
    pub refunds_count_min: u32,
    /// The per-merchant rule (`refund_ratio`) runs.
    pub merchant_ratio_enabled: bool,
    /// Per merchant and day: refunds of subsidised purchases per subsidised purchase, in
    /// thousandths, above which the rule fires.
    pub merchant_ratio_permille_max: u32,
    /// The merchant ratio is judged only once the merchant has this many subsidised
    /// purchases that day (a small sample says nothing).
    pub merchant_purchases_min: u64,
}

impl Default for RefundConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_days: 3,
            refunds_count_min: 3,
            merchant_ratio_enabled: true,
            merchant_ratio_permille_max: 300,
            merchant_purchases_min: 20,
        }
    }
}

/// `[spike]`: a merchant's purchases today against the same weekday of the last four
/// weeks. Fires when today's count is above mean + k·σ and at least `count_min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeConfig {
    /// The rule runs.
    pub enabled: bool,
    /// k, in thousandths of σ (4000 = 4σ).
    pub k_sigma_permille: u32,
    /// Fewest purchases in the day for the rule to fire: small merchants' counts are noise.
    pub count_min: u64,
    /// Of the four same weekdays, at least this many must be known.
    pub history_weeks_min: u32,
    /// σ is at least this many thousandths of the mean, so a flat history does not fire
    /// on one purchase more.
    pub sigma_floor_permille: u32,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            k_sigma_permille: 4_000,
            count_min: 200,
            history_weeks_min: 2,
            sigma_floor_permille: 100,
        }
    }
}

/// `[collusion]`: a merchant whose subsidised sales of a day go to few cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollusionConfig {
    /// The rule runs.
    pub enabled: bool,
    /// The merchant's subsidy of the day must reach this before the rule judges it.
    pub subsidy_fen_min: i64,
    /// …and its subsidised purchases of the day this many: a quiet day of a few honest
    /// customers is always "few cards".
    pub purchases_min: u64,
    /// How many of the merchant's biggest cards of the day are summed.
    pub top_cards_count: u32,
    /// Those cards' share of the merchant's day subsidy, in thousandths, that fires.
    pub top_share_permille_min: u32,
}

impl Default for CollusionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // ¥500 of subsidy: above what a handful of honest residents earn at one
            // merchant in a day.
            subsidy_fen_min: 50_000,
            // A theatre's honest day of five ¥600 tickets passes ¥500 of subsidy with
            // three cards holding most of it; twenty purchases on three cards do not
            // happen honestly.
            purchases_min: 20,
            top_cards_count: 3,
            top_share_permille_min: 600,
        }
    }
}

/// `key: v is outside lo..=hi`, unless `v` is within.
fn within<T: PartialOrd + Display + Copy>(key: &str, v: T, lo: T, hi: T) -> Result<(), String> {
    if !(lo..=hi).contains(&v) {
        return Err(format!("{key}: {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

/// Money thresholds: a quarter of i64's range leaves room for day sums (as `policy.rs`).
const FEN_MAX: i64 = i64::MAX / 4;

impl RiskConfig {
    /// Reads and checks the rules' file; errors name the file and the key.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Range checks, each naming its dotted key (`travel.speed_kmh_max: 0 is outside …`).
    /// The bounds keep the engine's integer arithmetic far from overflow.
    pub fn validate(&self) -> Result<(), String> {
        within(
            "medium_at_permille",
            self.medium_at_permille,
            1_000,
            1_000_000,
        )?;
        within(
            "high_at_permille",
            self.high_at_permille,
            self.medium_at_permille,
            1_000_000,
        )?;
        // Two: the travel and counter rules name a pair of transactions.
        within("evidence_txns_max", self.evidence_txns_max, 2, 1_000)?;
        within("seen_above_max", self.seen_above_max, 1, 100_000_000)?;
        within("late_days_max", self.late_days_max, 0, 31)?;
        within("card_idle_days_max", self.card_idle_days_max, 1, 3_660)?;

        let v = &self.velocity;
        within(
            "velocity.purchases_count_max",
            v.purchases_count_max,
            1,
            1_000_000_000,
        )?;
        within("velocity.amount_fen_max", v.amount_fen_max, 1, FEN_MAX)?;
        within("velocity.subsidy_fen_max", v.subsidy_fen_max, 1, FEN_MAX)?;

        let t = &self.travel;
        within("travel.speed_kmh_max", t.speed_kmh_max, 1, 100_000)?;
        within("travel.distance_m_min", t.distance_m_min, 0, 20_000_000)?;

        let c = &self.counter;
        within("counter.jump_count_max", c.jump_count_max, 1, 1_000_000_000)?;
        within(
            "counter.clock_skew_ms_max",
            c.clock_skew_ms_max,
            0,
            86_400_000,
        )?;

        let r = &self.refund;
        within("refund.window_days", r.window_days, 1, 366)?;
        // The card's counted refunds are kept in an evidence-sized list.
        within(
            "refund.refunds_count_min",
            r.refunds_count_min,
            1,
            self.evidence_txns_max,
        )?;
        within(
            "refund.merchant_ratio_permille_max",
            r.merchant_ratio_permille_max,
            0,
            1_000_000,
        )?;
        within(
            "refund.merchant_purchases_min",
            r.merchant_purchases_min,
            1,
            1_000_000_000,
        )?;

        let s = &self.spike;
        within("spike.k_sigma_permille", s.k_sigma_permille, 0, 100_000)?;
        within("spike.count_min", s.count_min, 1, 1_000_000_000)?;
        within("spike.history_weeks_min", s.history_weeks_min, 1, 4)?;
        within(
            "spike.sigma_floor_permille",
            s.sigma_floor_permille,
            0,
            10_000,
        )?;

        let k = &self.collusion;
        within("collusion.subsidy_fen_min", k.subsidy_fen_min, 1, FEN_MAX)?;
        within("collusion.purchases_min", k.purchases_min, 1, 1_000_000)?;
        within("collusion.top_cards_count", k.top_cards_count, 1, 100)?;
        within(
            "collusion.top_share_permille_min",
            k.top_share_permille_min,
            1,
            1_000,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(RiskConfig::default().validate(), Ok(()));
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let mut c = RiskConfig::default();
        c.travel.speed_kmh_max = 0;
        let e = c.validate().unwrap_err();
        assert!(e.starts_with("travel.speed_kmh_max:"), "{e}");

        let c = RiskConfig {
            high_at_permille: 1_200, // below medium_at_permille
            ..RiskConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("high_at_permille:"));

        let mut c = RiskConfig::default();
        c.refund.refunds_count_min = 21; // more than evidence_txns_max can hold
        assert!(
            c.validate()
                .unwrap_err()
                .starts_with("refund.refunds_count_min:")
        );
    }

    #[test]
    fn the_shipped_file_is_the_default() {
        let text = include_str!("../../../config/risk.toml");
        let parsed: RiskConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed, RiskConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<RiskConfig>("[velocity]\npurchase_count_max = 3\n").is_err());
        let partial: RiskConfig = toml::from_str("[travel]\nspeed_kmh_max = 90\n").unwrap();
        assert_eq!(partial.travel.speed_kmh_max, 90);
        assert_eq!(partial.travel.distance_m_min, 2_000);
        assert_eq!(partial.velocity, VelocityConfig::default());
    }
}
