//! Subsidy, budget and points rules as pure functions over typed inputs: no clock, no I/O.
//! The session and the clearing run feed them; the same functions decide the provisional
//! figure in a TXN_ACK and the cleared figure, so the two agree.

use crate::policy::{PointsPolicy, Policy};
use crate::registry::Category;
use rust_decimal::{Decimal, RoundingStrategy};
use wenxiao_protocol::{Fen, Item, Points, Reason};

/// What the subsidy of one purchase depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseFacts {
    /// The merchant's category.
    pub category: Category,
    /// What was bought.
    pub item: Item,
    /// Debited from the card.
    pub paid_fen: Fen,
    /// Cinema agreed price / performance regular price total (0 elsewhere).
    pub list_price_fen: Fen,
    /// Points spent on the purchase.
    pub points_used: Points,
    /// The card is blacklisted.
    pub card_blacklisted: bool,
    /// The merchant is suspended.
    pub merchant_suspended: bool,
}

/// A subsidy and why it is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subsidy {
    /// The amount (≥ 0).
    pub fen: Fen,
    /// NONE, or why it is zero or reduced.
    pub reason: Reason,
}

impl Subsidy {
    const fn none(reason: Reason) -> Self {
        Self {
            fen: Fen::ZERO,
            reason,
        }
    }
}

/// Half-up to the fen: the one rounding of a subsidy (policy: "rounded half-up to the fen
/// once, at the end").
fn round_fen(v: Decimal) -> Option<Fen> {
    v.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .try_into()
        .ok()
        .map(Fen)
}

/// The subsidy a purchase earns before the budget (policy, "Subsidy on purchases"):
/// bookstore 10 % of the amount paid for books; cinema 10 % of the agreed price of a
/// domestic film; performance venue 30 % of the regular ticket price. The part paid with
/// points earns nothing: the base is the paid amount, or the list price × paid / total.
pub fn purchase_subsidy(f: &PurchaseFacts, policy: &Policy) -> Subsidy {
    if f.card_blacklisted {
        return Subsidy::none(Reason::CardBlacklisted);
    }
    if f.merchant_suspended {
        return Subsidy::none(Reason::MerchantSuspended);
    }
    let rates = &policy.subsidy;
    let (rate, list_based) = match (f.category, f.item) {
        (Category::Bookstore, Item::Book) => (rates.bookstore_rate, false),
        (Category::Cinema, Item::FilmDomestic) => (rates.cinema_rate, true),
        (Category::PerformanceVenue, Item::Performance) => (rates.performance_venue_rate, true),
        _ => return Subsidy::none(Reason::NotEligible),
    };
    let paid = Decimal::from(f.paid_fen.get().max(0));
    let points_fen = Decimal::from(points_value(f.points_used, &policy.points).get());
    let base = if list_based {
        let total = paid + points_fen;
        if total.is_zero() {
            return Subsidy::none(Reason::NotEligible);
        }
        Decimal::from(f.list_price_fen.get().max(0)) * paid / total
    } else {
        paid
    };
    match round_fen(base * rate) {
        Some(fen) if fen.get() > 0 => Subsidy {
            fen,
            reason: Reason::None,
        },
        _ => Subsidy::none(Reason::NotEligible),
    }
}

/// The subsidy a refund takes back: the original's, in proportion to the amount refunded
/// (all of it when the whole amount is refunded), half-up.
pub fn refund_reversal(original_subsidy: Fen, original_paid: Fen, refunded: Fen) -> Fen {
    if original_paid.get() <= 0 || refunded.get() >= original_paid.get() {
        return original_subsidy;
    }
    let share = Decimal::from(refunded.get().max(0)) / Decimal::from(original_paid.get());
    round_fen(Decimal::from(original_subsidy.get()) * share).unwrap_or(original_subsidy)
}

/// The points a refund gives back: those the original purchase used, in proportion to
/// the amount refunded, rounded down (all of them when the whole amount is refunded).
pub fn points_returned(points_used: Points, original_paid: Fen, refunded: Fen) -> Points {
    if original_paid.get() <= 0 || refunded.get() >= original_paid.get() {
        return points_used;
    }
    let back = Decimal::from(points_used.get()) * Decimal::from(refunded.get().max(0))
        / Decimal::from(original_paid.get());
    Points(back.floor().try_into().unwrap_or(0))
}

/// Whether a purchase that pays `amount_fen` by card and `points_used` in points keeps
/// the points within `max_share_of_purchase` of its own whole price (card part plus the
/// points' value): the cap checked again at use, whatever the hold was approved for.
pub fn check_points_paid(
    amount_fen: Fen,
    points_used: Points,
    policy: &PointsPolicy,
) -> Result<(), Reason> {
    if points_used.get() == 0 {
        return Ok(());
    }
    let whole = amount_fen
        .checked_add(points_value(points_used, policy))
        .ok_or(Reason::InvalidField)?;
    match check_points_use(whole, points_used, Points(u32::MAX), policy) {
        Err(Reason::InvalidField) => Err(Reason::InvalidField),
        Err(_) => Err(Reason::PointsCapExceeded),
        Ok(()) => Ok(()),
    }
}

/// What one refund of a purchase reverses when its refunds before it came to
/// `refunded_before` and with it come to `refunded_after` (at most the amount paid): the
/// difference of the cumulative reversals, so however a purchase is refunded in parts,
/// the parts reverse exactly its subsidy once in all (each rounded half-up on the
/// running total, not on its own).
pub fn refund_reversal_step(
    original_subsidy: Fen,
    original_paid: Fen,
    refunded_before: Fen,
    refunded_after: Fen,
) -> Fen {
    let upto = |r| refund_reversal(original_subsidy, original_paid, r).get();
    Fen(upto(refunded_after) - upto(refunded_before))
}

/// The points one refund gives back, cumulatively as [`refund_reversal_step`]: the parts
/// give back at most the points the purchase used.
pub fn points_returned_step(
    points_used: Points,
    original_paid: Fen,
    refunded_before: Fen,
    refunded_after: Fen,
) -> Points {
    let upto = |r| points_returned(points_used, original_paid, r).get();
    Points(upto(refunded_after).saturating_sub(upto(refunded_before)))
}

/// The money value of points.
pub fn points_value(points: Points, policy: &PointsPolicy) -> Fen {
    Fen(i64::from(points.get()).saturating_mul(policy.fen_per_point))
}

/// Whether `points` may pay part of a purchase of `purchase_fen` (the whole price) for a
/// card holding `balance`: at most `max_share_of_purchase` of it (POINTS_CAP_EXCEEDED),
/// and no more than the balance (INSUFFICIENT_POINTS).
pub fn check_points_use(
    purchase_fen: Fen,
    points: Points,
    balance: Points,
    policy: &PointsPolicy,
) -> Result<(), Reason> {
    if points.get() == 0 || purchase_fen.get() <= 0 {
        return Err(Reason::InvalidField);
    }
    let value = Decimal::from(points_value(points, policy).get());
    if value > Decimal::from(purchase_fen.get()) * policy.max_share_of_purchase {
        return Err(Reason::PointsCapExceeded);
    }
    if points > balance {
        return Err(Reason::InsufficientPoints);
    }
    Ok(())
}

/// A month of the Asia/Shanghai calendar, as `yyyymm`.
pub type Month = u32;

/// The budget ledger: what each month and the programme have spent. Grants are exact to
/// the fen: a subsidy larger than what is left gets what is left, with BUDGET_EXHAUSTED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    monthly_cap: Fen,
    programme_total: Fen,
    spent_total: Fen,
    spent_by_month: std::collections::BTreeMap<Month, Fen>,
}

impl Budget {
    /// An untouched budget with the policy's caps.
    pub fn new(policy: &Policy) -> Self {
        Self {
            monthly_cap: policy.monthly_cap(),
            programme_total: policy.programme_total(),
            spent_total: Fen::ZERO,
            spent_by_month: std::collections::BTreeMap::new(),
        }
    }

    /// What `month` has spent.
    pub fn spent_in(&self, month: Month) -> Fen {
        self.spent_by_month
            .get(&month)
            .copied()
            .unwrap_or(Fen::ZERO)
    }

    /// What the programme has spent.
    pub fn spent_total(&self) -> Fen {
        self.spent_total
    }

    /// Grants as much of `want` as `month` and the programme still allow, and books it.
    pub fn grant(&mut self, month: Month, want: Subsidy) -> Subsidy {
        if want.fen.get() <= 0 {
            return want;
        }
        let left_month = self.monthly_cap.get() - self.spent_in(month).get();
        let left_total = self.programme_total.get() - self.spent_total.get();
        let left = left_month.min(left_total).max(0);
        let granted = want.fen.get().min(left);
        self.spent_by_month
            .insert(month, Fen(self.spent_in(month).get() + granted));
        self.spent_total = Fen(self.spent_total.get() + granted);
        if granted < want.fen.get() {
            Subsidy {
                fen: Fen(granted),
                reason: Reason::BudgetExhausted,
            }
        } else {
            want
        }
    }

    /// Gives back a reversed subsidy to the month it was granted in.
    pub fn give_back(&mut self, month: Month, fen: Fen) {
        let back = fen.get().clamp(0, self.spent_in(month).get());
        self.spent_by_month
            .insert(month, Fen(self.spent_in(month).get() - back));
        self.spent_total = Fen(self.spent_total.get() - back);
    }
}

/// The month of a business date.
pub fn month_of(date: wenxiao_protocol::BusinessDate) -> Month {
    date.get() / 100
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(category: Category, item: Item, paid: i64, list: i64, points: u32) -> PurchaseFacts {
        PurchaseFacts {
            category,
            item,
            paid_fen: Fen(paid),
            list_price_fen: Fen(list),
            points_used: Points(points),
            card_blacklisted: false,
            merchant_suspended: false,
        }
    }

    fn sub(f: PurchaseFacts) -> Subsidy {
        purchase_subsidy(&f, &Policy::default())
    }

    #[test]
    fn the_category_table() {
        // Bookstore: 10 % of ¥88.00 paid.
        assert_eq!(
            sub(facts(Category::Bookstore, Item::Book, 8_800, 0, 0)).fen,
            Fen(880)
        );
        // Cinema: 10 % of the agreed price ¥40, not of the ¥30 paid.
        assert_eq!(
            sub(facts(Category::Cinema, Item::FilmDomestic, 3_000, 4_000, 0)).fen,
            Fen(400)
        );
        // Performance: 30 % of the regular price ¥200.
        assert_eq!(
            sub(facts(
                Category::PerformanceVenue,
                Item::Performance,
                18_000,
                20_000,
                0
            ))
            .fen,
            Fen(6_000)
        );
    }

    #[test]
    fn ineligible_purchases_say_why() {
        for f in [
            facts(Category::Cinema, Item::FilmForeign, 3_000, 4_000, 0),
            facts(Category::Bookstore, Item::Other, 3_000, 0, 0),
            facts(Category::Cinema, Item::Other, 3_000, 0, 0),
            facts(Category::PerformanceVenue, Item::Other, 3_000, 0, 0),
            facts(Category::Bookstore, Item::Book, 4, 0, 0), // 0.4 fen rounds to 0
        ] {
            assert_eq!(sub(f), Subsidy::none(Reason::NotEligible), "{f:?}");
        }
        let mut f = facts(Category::Bookstore, Item::Book, 8_800, 0, 0);
        f.card_blacklisted = true;
        f.merchant_suspended = true;
        assert_eq!(sub(f), Subsidy::none(Reason::CardBlacklisted));
        f.card_blacklisted = false;
        assert_eq!(sub(f), Subsidy::none(Reason::MerchantSuspended));
    }

    #[test]
    fn rounding_is_half_up_once_at_the_end() {
        // 10 % of 1,005 fen = 100.5 → 101; of 1,004 = 100.4 → 100; of 1,325 = 132.5 → 133
        // (half-up, where banker's rounding would give 132).
        assert_eq!(
            sub(facts(Category::Bookstore, Item::Book, 1_005, 0, 0)).fen,
            Fen(101)
        );
        assert_eq!(
            sub(facts(Category::Bookstore, Item::Book, 1_004, 0, 0)).fen,
            Fen(100)
        );
        assert_eq!(
            sub(facts(Category::Bookstore, Item::Book, 1_325, 0, 0)).fen,
            Fen(133)
        );
        // Cinema with points, rounded once: 4,001 × 2,000 / 3,000 × 10 % = 266.73… → 267.
        assert_eq!(
            sub(facts(
                Category::Cinema,
                Item::FilmDomestic,
                2_000,
                4_001,
                100
            ))
            .fen,
            Fen(267)
        );
        // 4,004 × 1,000 / 3,000 = 1,334.67 fen of base; × 10 % = 133.47 → 133. Rounding the
        // base to 1,335 first would give 133.5 → 134: one rounding, at the end.
        assert_eq!(
            sub(facts(
                Category::Cinema,
                Item::FilmDomestic,
                1_000,
                4_004,
                200
            ))
            .fen,
            Fen(133)
        );
    }

    #[test]
    fn the_points_part_earns_nothing() {
        // ¥88 book paid ¥78 by card and ¥10 with 100 points: 10 % of ¥78.
        assert_eq!(
            sub(facts(Category::Bookstore, Item::Book, 7_800, 0, 100)).fen,
            Fen(780)
        );
        // Performance ¥200 regular, ¥150 paid + ¥50 points: 30 % × 200 × 150/200 = ¥45.
        assert_eq!(
            sub(facts(
                Category::PerformanceVenue,
                Item::Performance,
                15_000,
                20_000,
                500
            ))
            .fen,
            Fen(4_500)
        );
    }

    #[test]
    fn points_may_pay_half_and_no_more_than_the_balance() {
        let p = PointsPolicy::default();
        // ¥100 purchase: 500 points = ¥50 is exactly half.
        assert_eq!(
            check_points_use(Fen(10_000), Points(500), Points(500), &p),
            Ok(())
        );
        assert_eq!(
            check_points_use(Fen(10_000), Points(501), Points(900), &p),
            Err(Reason::PointsCapExceeded)
        );
        // Odd amounts: ¥1.01 allows 5 points (50 fen ≤ 50.5), not 6.
        assert_eq!(check_points_use(Fen(101), Points(5), Points(9), &p), Ok(()));
        assert_eq!(
            check_points_use(Fen(101), Points(6), Points(9), &p),
            Err(Reason::PointsCapExceeded)
        );
        assert_eq!(
            check_points_use(Fen(10_000), Points(300), Points(299), &p),
            Err(Reason::InsufficientPoints)
        );
        assert_eq!(
            check_points_use(Fen(10_000), Points(0), Points(9), &p),
            Err(Reason::InvalidField)
        );
    }

    #[test]
    fn points_pay_at_most_half_of_the_whole_price_at_use() {
        let p = crate::policy::Policy::default().points;
        // 10 points are 100 fen: beside 100 fen by card that is exactly half.
        assert_eq!(check_points_paid(Fen(100), Points(10), &p), Ok(()));
        assert_eq!(
            check_points_paid(Fen(99), Points(10), &p),
            Err(Reason::PointsCapExceeded)
        );
        assert_eq!(
            check_points_paid(Fen(20), Points(10), &p),
            Err(Reason::PointsCapExceeded)
        );
        assert_eq!(check_points_paid(Fen(1), Points(0), &p), Ok(()));
        assert_eq!(
            check_points_paid(Fen(i64::MAX), Points(10), &p),
            Err(Reason::InvalidField)
        );
    }

    proptest::proptest! {
        #[test]
        fn refunds_in_parts_reverse_exactly_the_subsidy_once(
            subsidy in 0i64..100_000,
            paid in 1i64..1_000_000,
            points in 0u32..10_000,
            cuts in proptest::collection::vec(1i64..1_000_000, 1..8),
        ) {
            // Refund the purchase in parts until it is refunded whole.
            let (mut before, mut reversed, mut back) = (0, 0, 0);
            for c in cuts.iter().chain([&paid]) {
                let after = (before + c).min(paid);
                let step = refund_reversal_step(Fen(subsidy), Fen(paid), Fen(before), Fen(after));
                proptest::prop_assert!(step.get() >= 0);
                reversed += step.get();
                back += points_returned_step(Points(points), Fen(paid), Fen(before), Fen(after)).get();
                before = after;
            }
            proptest::prop_assert_eq!(reversed, subsidy);
            proptest::prop_assert_eq!(back, points);
        }
    }

    #[test]
    fn refunds_give_back_points_in_proportion_rounded_down() {
        assert_eq!(
            points_returned(Points(100), Fen(9_000), Fen(9_000)),
            Points(100)
        );
        assert_eq!(
            points_returned(Points(100), Fen(9_000), Fen(4_500)),
            Points(50)
        );
        assert_eq!(
            points_returned(Points(100), Fen(9_000), Fen(100)),
            Points(1)
        ); // 1.11…
        assert_eq!(points_returned(Points(0), Fen(9_000), Fen(100)), Points(0));
    }

    #[test]
    fn refunds_take_back_in_proportion() {
        assert_eq!(refund_reversal(Fen(880), Fen(8_800), Fen(8_800)), Fen(880));
        assert_eq!(refund_reversal(Fen(880), Fen(8_800), Fen(4_400)), Fen(440));
        assert_eq!(refund_reversal(Fen(101), Fen(1_005), Fen(500)), Fen(50)); // 50.24… → 50
        assert_eq!(refund_reversal(Fen(880), Fen(8_800), Fen(99_999)), Fen(880));
    }

    #[test]
    fn the_budget_is_exact_to_the_fen_and_monthly() {
        let policy = Policy {
            budget: crate::policy::BudgetPolicy {
                monthly_cap_fen: 1_000,
                programme_total_fen: 1_500,
            },
            ..Policy::default()
        };
        let mut b = Budget::new(&policy);
        let s = |fen| Subsidy {
            fen: Fen(fen),
            reason: Reason::None,
        };
        assert_eq!(b.grant(202611, s(600)), s(600));
        assert_eq!(
            b.grant(202611, s(600)),
            Subsidy {
                fen: Fen(400),
                reason: Reason::BudgetExhausted
            }
        );
        assert_eq!(
            b.grant(202611, s(1)),
            Subsidy {
                fen: Fen(0),
                reason: Reason::BudgetExhausted
            }
        );
        // The month boundary opens a new monthly cap; the programme total still binds.
        assert_eq!(
            b.grant(202612, s(600)),
            Subsidy {
                fen: Fen(500),
                reason: Reason::BudgetExhausted
            }
        );
        assert_eq!(b.spent_total(), Fen(1_500));
        b.give_back(202611, Fen(100));
        assert_eq!(
            b.grant(202611, s(600)),
            Subsidy {
                fen: Fen(100),
                reason: Reason::BudgetExhausted
            }
        );
    }

    proptest! {
        #[test]
        fn the_budget_is_never_exceeded(wants in proptest::collection::vec((0u32..3, 0i64..5_000), 0..300)) {
            let policy = Policy {
                budget: crate::policy::BudgetPolicy { monthly_cap_fen: 20_000, programme_total_fen: 45_000 },
                ..Policy::default()
            };
            let mut b = Budget::new(&policy);
            let mut granted = 0;
            for (m, want) in wants {
                let month = 202_601 + m;
                let g = b.grant(month, Subsidy { fen: Fen(want), reason: Reason::None });
                prop_assert!(g.fen.get() >= 0 && g.fen.get() <= want);
                prop_assert!(b.spent_in(month).get() <= 20_000);
                granted += g.fen.get();
            }
            prop_assert!(b.spent_total().get() <= 45_000);
            prop_assert_eq!(b.spent_total().get(), granted);
        }

        #[test]
        fn subsidy_is_never_negative_nor_above_rate_times_base(
            paid in 0i64..10_000_000, list in 0i64..10_000_000, points in 0u32..100_000,
        ) {
            for (c, i) in [(Category::Bookstore, Item::Book), (Category::Cinema, Item::FilmDomestic), (Category::PerformanceVenue, Item::Performance)] {
                let s = sub(facts(c, i, paid, list, points));
                prop_assert!(s.fen.get() >= 0);
                let base = if c == Category::Bookstore { paid } else { list };
                // ≤ 30 % of the base, plus the half fen of rounding.
                prop_assert!(s.fen.get() * 10 <= base * 3 + 5);
            }
        }
    }
}
