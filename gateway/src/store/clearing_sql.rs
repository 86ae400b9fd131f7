//! The clearing run's SQL, shared by both stores (SQLite runs the mechanical rewrite of
//! `store/backend.rs`). `$1` is the business date, `$2` the value of a
//! point in fen (MERCHANTS), or the time of the run (RUN). Two scratch tables hold what
//! the day's scans found: `clearing_nets` (one row per card) and `clearing_merchants`
//! (one per merchant).

use super::backend::{Bulk, Sql};

/// Each stored transaction's effect on its card's credit: a purchase's subsidy, minus a
/// refund's reversal as ingest recorded it (the purchase's subsidy in proportion to the
/// amount refunded, cumulatively over its refunds, so never more than the subsidy).
pub(crate) const DAY_NETS: &str = "INSERT INTO clearing_nets (card_no, net_fen) \
    SELECT card_no, SUM(CASE WHEN kind = 1 THEN subsidy_fen ELSE -reversal_fen END) FROM txns \
    WHERE business_date = $1 AND status = 1 AND kind IN (1, 4) GROUP BY card_no";

/// Credits: each card's net after what it owed; ids are the date and the card's rank.
macro_rules! credits {
    ($date:literal) => {
        concat!(
            "INSERT INTO credits (credit_id, business_date, card_no, amount_fen, status) \
        SELECT CAST(",
            $date,
            " AS BIGINT) * 10000000000 + ROW_NUMBER() OVER (ORDER BY n.card_no), \
            CAST(",
            $date,
            " AS INTEGER), n.card_no, \
            n.net_fen - COALESCE(d.owed_fen, 0), 1 \
        FROM clearing_nets n LEFT JOIN card_debts d ON d.card_no = n.card_no \
        WHERE n.net_fen - COALESCE(d.owed_fen, 0) > 0"
        )
    };
}

/// The credits, counted and summed as they are written (PostgreSQL), so the run's row
/// needs no second pass over millions of them; SQLite, which has no data-modifying
/// `WITH`, writes them and counts with [`CREDITS_COUNT`].
pub(crate) const CREDITS: Sql = Sql::each(
    concat!(
        "WITH written AS (",
        credits!("$1"),
        " RETURNING amount_fen) \
        SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM written"
    ),
    credits!("?1"),
);

/// The day's credits counted and summed (SQLite, after [`CREDITS`]).
pub(crate) const CREDITS_COUNT: Sql = Sql::lite_only(
    "SELECT COUNT(*), COALESCE(SUM(amount_fen), 0) FROM credits WHERE business_date = ?1",
);

/// Debts the day's net covered are gone.
pub(crate) const DEBTS_PAID: &str = "DELETE FROM card_debts WHERE card_no IN ( \
    SELECT n.card_no FROM clearing_nets n JOIN card_debts d ON d.card_no = n.card_no \
    WHERE n.net_fen >= d.owed_fen)";

/// What the day's net did not cover stays owed.
pub(crate) const DEBTS_OWED: &str = "INSERT INTO card_debts (card_no, owed_fen) \
    SELECT n.card_no, COALESCE(d.owed_fen, 0) - n.net_fen \
    FROM clearing_nets n LEFT JOIN card_debts d ON d.card_no = n.card_no \
    WHERE COALESCE(d.owed_fen, 0) - n.net_fen > 0 \
    ON CONFLICT (card_no) DO UPDATE SET owed_fen = excluded.owed_fen";

/// The day's stored rows summed by merchant (rows with none in one group of their own),
/// in one scan: what the settlement, the statistics and the run's count are made of.
/// The columns are those of `clearing_merchants`, in order; `net_fen` sums what
/// [`DAY_NETS`] sums, by merchant instead of by card.
macro_rules! day_merchants {
    () => {
        "SELECT merchant_id, CAST(COUNT(*) AS BIGINT), \
            CAST(SUM(CASE WHEN kind IN (1, 4) THEN 1 ELSE 0 END) AS BIGINT), \
            CAST(SUM(CASE WHEN kind = 1 THEN amount_fen ELSE 0 END) AS BIGINT), \
            CAST(SUM(CASE WHEN kind = 4 THEN amount_fen ELSE 0 END) AS BIGINT), \
            CAST(SUM(CASE WHEN kind = 1 THEN points_used ELSE 0 END) AS BIGINT), \
            CAST(SUM(CASE WHEN kind = 1 THEN subsidy_fen ELSE 0 END) AS BIGINT), \
            CAST(SUM(subsidy_fen) AS BIGINT), \
            CAST(SUM(CASE WHEN kind = 1 THEN subsidy_fen \
                WHEN kind = 4 THEN -reversal_fen ELSE 0 END) AS BIGINT) \
        FROM txns WHERE business_date = $1 AND status = 1 GROUP BY merchant_id"
    };
}

/// `clearing_merchants`'s columns, in the order `day_merchants!` yields them.
macro_rules! merchant_columns {
    () => {
        "clearing_merchants (merchant_id, txn_count, settled_count, sales_fen, refunds_fen, \
        points_used, purchase_subsidy_fen, subsidy_fen, net_fen)"
    };
}

/// The merchants' scan into `clearing_merchants`.
pub(crate) const DAY_MERCHANTS: &str =
    concat!("INSERT INTO ", merchant_columns!(), " ", day_merchants!());

/// The merchants' scan, its rows returned (run on a second connection in the run's
/// snapshot, see `ledger/clearing.rs`).
pub(crate) const DAY_MERCHANTS_SELECT: &str = day_merchants!();

/// Rows of [`DAY_MERCHANTS_SELECT`] into `clearing_merchants`, a column per field.
pub(crate) const DAY_MERCHANTS_IN: Bulk = Bulk {
    pg: concat!(
        "INSERT INTO ",
        merchant_columns!(),
        " SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], \
            $6::int8[], $7::int8[], $8::int8[], $9::int8[])"
    ),
    lite: concat!(
        "INSERT INTO ",
        merchant_columns!(),
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ),
};

/// Per-merchant settlement: sales and refunds (card part), points to reimburse, subsidy.
pub(crate) const MERCHANTS: &str = "INSERT INTO merchant_settlements \
    (business_date, merchant_id, txn_count, sales_fen, refunds_fen, points_fen, subsidy_fen) \
    SELECT CAST($1 AS INTEGER), merchant_id, settled_count, sales_fen, refunds_fen, \
        points_used * $2, purchase_subsidy_fen \
    FROM clearing_merchants WHERE merchant_id IS NOT NULL AND settled_count > 0";

/// Statistics by district and category (every stored row of a registered merchant).
pub(crate) const STATISTICS: &str = "INSERT INTO day_statistics \
    (business_date, district, category, txn_count, sales_fen, subsidy_fen) \
    SELECT CAST($1 AS INTEGER), m.district, m.category, SUM(c.txn_count), \
        SUM(c.sales_fen), SUM(c.subsidy_fen) \
    FROM clearing_merchants c JOIN merchants m ON m.merchant_id = c.merchant_id \
    GROUP BY m.district, m.category";

/// The run's row: `$3` and `$4` are the credits' count and sum.
pub(crate) const RUN: &str = "INSERT INTO clearing_runs (business_date, status, cleared_at_ms, \
    approved_at_ms, txn_count, subsidy_fen, credit_count, credit_fen) \
    SELECT CAST($1 AS INTEGER), 1, CAST($2 AS BIGINT), NULL, \
        (SELECT COALESCE(SUM(txn_count), 0) FROM clearing_merchants), \
        (SELECT COALESCE(SUM(net_fen), 0) FROM clearing_merchants), \
        CAST($3 AS BIGINT), CAST($4 AS BIGINT)";
