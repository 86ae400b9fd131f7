//! The policy configuration (`config/policy.toml`): rates, awards, budget caps and points
//! values, every one with the pilot's default (`shared/spec/policy.md`). Rates are
//! `Decimal`s, money is fen; nothing here is ever a literal in the rules.

use crate::config::ConfigError;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::path::Path;
use wenxiao_protocol::Fen;

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Subsidy rates by merchant category.
    pub subsidy: SubsidyPolicy,
    /// Organizer awards per show.
    pub organizer_award: OrganizerAwardPolicy,
    /// Budget caps.
    pub budget: BudgetPolicy,
    /// Points.
    pub points: PointsPolicy,
}

/// `[subsidy]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubsidyPolicy {
    /// Share of the amount paid for books.
    pub bookstore_rate: Decimal,
    /// Share of the agreed price of a domestic film.
    pub cinema_rate: Decimal,
    /// Share of the regular ticket price.
    pub performance_venue_rate: Decimal,
}

impl Default for SubsidyPolicy {
    fn default() -> Self {
        Self {
            bookstore_rate: Decimal::new(10, 2),
            cinema_rate: Decimal::new(10, 2),
            performance_venue_rate: Decimal::new(30, 2),
        }
    }
}

/// `[organizer_award]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizerAwardPolicy {
    /// Per show by a national-level troupe.
    pub national_troupe_show_fen: i64,
    /// Per show of a national-award work.
    pub national_award_work_show_fen: i64,
}

impl Default for OrganizerAwardPolicy {
    fn default() -> Self {
        Self {
            national_troupe_show_fen: 50_000_000,
            national_award_work_show_fen: 30_000_000,
        }
    }
}

/// `[budget]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetPolicy {
    /// Hard cap per calendar month.
    pub monthly_cap_fen: i64,
    /// Hard cap for the programme.
    pub programme_total_fen: i64,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            monthly_cap_fen: 200_000_000,
            programme_total_fen: 2_000_000_000,
        }
    }
}

/// `[points]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PointsPolicy {
    /// Points for a sign-in at a public venue.
    pub sign_in_points: u32,
    /// Points for a review in the app.
    pub review_points: u32,
    /// Points for a share to social media.
    pub share_points: u32,
    /// Value of one point.
    pub fen_per_point: i64,
    /// Largest share of a purchase points may pay.
    pub max_share_of_purchase: Decimal,
    /// Lifetime of a points hold.
    pub hold_ttl_ms: i64,
}

impl Default for PointsPolicy {
    fn default() -> Self {
        Self {
            sign_in_points: 10,
            review_points: 20,
            share_points: 10,
            fen_per_point: 10,
            max_share_of_purchase: Decimal::new(50, 2),
            hold_ttl_ms: 600_000,
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn rate(key: &'static str, r: Decimal) -> Result<(), ConfigError> {
    if r < Decimal::ZERO || r > Decimal::ONE {
        return Err(invalid(key, format!("{r} is not a rate between 0 and 1")));
    }
    Ok(())
}

fn money(key: &'static str, v: i64) -> Result<(), ConfigError> {
    // A quarter of i64's range leaves room for sums without overflow.
    if !(0..=i64::MAX / 4).contains(&v) {
        return Err(invalid(key, format!("{v} fen is out of range")));
    }
    Ok(())
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let policy: Policy = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Range checks, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        rate("subsidy.bookstore_rate", self.subsidy.bookstore_rate)?;
        rate("subsidy.cinema_rate", self.subsidy.cinema_rate)?;
        rate(
            "subsidy.performance_venue_rate",
            self.subsidy.performance_venue_rate,
        )?;
        money(
            "organizer_award.national_troupe_show_fen",
            self.organizer_award.national_troupe_show_fen,
        )?;
        money(
            "organizer_award.national_award_work_show_fen",
            self.organizer_award.national_award_work_show_fen,
        )?;
        money("budget.monthly_cap_fen", self.budget.monthly_cap_fen)?;
        money(
            "budget.programme_total_fen",
            self.budget.programme_total_fen,
        )?;
        let p = &self.points;
        if !(1..=1_000_000).contains(&p.fen_per_point) {
            return Err(invalid("points.fen_per_point", "must be 1..=1000000"));
        }
        rate("points.max_share_of_purchase", p.max_share_of_purchase)?;
        if !(1_000..=86_400_000).contains(&p.hold_ttl_ms) {
            return Err(invalid("points.hold_ttl_ms", "must be 1000..=86400000"));
        }
        Ok(())
    }

    /// The monthly cap as money.
    pub fn monthly_cap(&self) -> Fen {
        Fen(self.budget.monthly_cap_fen)
    }

    /// The programme cap as money.
    pub fn programme_total(&self) -> Fen {
        Fen(self.budget.programme_total_fen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.toml");
        assert_eq!(Policy::load(&path).unwrap(), Policy::default());
    }

    #[test]
    fn a_rate_above_one_names_its_key() {
        let p = Policy {
            subsidy: SubsidyPolicy {
                cinema_rate: Decimal::new(11, 1),
                ..SubsidyPolicy::default()
            },
            ..Policy::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("subsidy.cinema_rate")
        );
    }
}
