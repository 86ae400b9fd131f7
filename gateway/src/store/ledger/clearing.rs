//! The daily clearing run, its approval and its report.

use super::super::backend::{Backend, Col, Row, Sql, Tx, TxMode, params};
use super::super::{
    AwardRow, ClearingReport, ClearingSummary, CreditRow, MerchantSettlement, StatisticsRow,
    StoreError, clearing_sql as q, from_db_u64,
};
use super::date_param;
use crate::registry::MerchantId;
use wenxiao_protocol::{BusinessDate, CardNo, CreditId, Fen};

pub(super) const SELECT_RUN: Sql = Sql::both(
    "SELECT status, txn_count, subsidy_fen, credit_count, credit_fen \
     FROM clearing_runs WHERE business_date = $1",
);

/// Serialises clearing runs and approvals across nodes. A table lock, not an advisory
/// one: `LOCK TABLE` takes no snapshot, so the run's REPEATABLE READ snapshot is taken
/// after the lock is granted and sees every run committed before it.
const LOCK_RUNS: Sql = Sql::pg_only("LOCK TABLE clearing_runs IN SHARE ROW EXCLUSIVE MODE");

/// Taken by a clearing run while it closes its day; conflicts with the ROW SHARE lock
/// every ingest transaction takes before it reads the closed days.
const LOCK_DAYS_EXCLUSIVE: Sql = Sql::pg_only("LOCK TABLE closed_days IN EXCLUSIVE MODE");

pub(super) fn summary(date: BusinessDate, r: &Row) -> Result<ClearingSummary, StoreError> {
    Ok(ClearingSummary {
        business_date: date,
        approved: r.get::<i16>(0)? == 2,
        txn_count: r.int(1)?,
        subsidy_fen: Fen(r.int(2)?),
        credit_count: r.int(3)?,
        credit_fen: Fen(r.int(4)?),
    })
}

/// Clears `date` in one snapshot: see [`super::super::Store::clear_day`].
pub(super) async fn clear_day<B: Backend>(
    backend: &B,
    date: BusinessDate,
    fen_per_point: i64,
    now_ms: i64,
) -> Result<ClearingSummary, StoreError> {
    let ends_at_ms = crate::clock::day_end_ms(date);
    if now_ms < ends_at_ms {
        return Err(StoreError::DayNotEnded { date, ends_at_ms });
    }
    let d = date_param(date);
    // Close the day first, in a short transaction of its own: its lock waits for the
    // ingest transactions in flight (each holds ROW SHARE on `closed_days` from before it
    // read which days are closed), and every later one sees the day closed. So when the
    // run's snapshot is taken below, every row of the day has committed.
    let mut close = backend.begin(TxMode::Write).await?;
    close.execute(&LOCK_DAYS_EXCLUSIVE, &[]).await?;
    close
        .execute(
            &Sql::both(
                "INSERT INTO closed_days (business_date, closed_at_ms) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            ),
            params![d, now_ms],
        )
        .await?;
    close.commit().await?;
    let mut tx = backend.begin(TxMode::Snapshot).await?;
    tx.execute(&LOCK_RUNS, &[]).await?;
    if let Some(r) = tx.query_opt(&SELECT_RUN, params![d]).await? {
        return summary(date, &r);
    }
    // One card per row by construction (GROUP BY), so PostgreSQL's scratch table needs
    // no index; sorts and hashes of a few million rows fit in memory instead of spilling
    // (at 256 MB the credits' ROW_NUMBER sort of 3.5 M cards spilled 88 MB). One run at a
    // time holds it.
    tx.execute(&Sql::pg_only("SET LOCAL work_mem = '512MB'"), &[])
        .await?;
    // A day of millions of rows takes longer than an ingest statement may.
    tx.execute(&Sql::pg_only("SET LOCAL statement_timeout = '10min'"), &[])
        .await?;
    tx.execute(
        &Sql::each(
            "CREATE TEMP TABLE clearing_nets (card_no BIGINT NOT NULL, net_fen BIGINT NOT NULL) \
             ON COMMIT DROP",
            "CREATE TEMP TABLE clearing_nets (card_no INTEGER PRIMARY KEY, net_fen INTEGER NOT NULL)",
        ),
        &[],
    )
    .await?;
    tx.execute(
        &Sql::each(
            "CREATE TEMP TABLE clearing_merchants (merchant_id BIGINT, \
             txn_count BIGINT NOT NULL, settled_count BIGINT NOT NULL, \
             sales_fen BIGINT NOT NULL, refunds_fen BIGINT NOT NULL, \
             points_used BIGINT NOT NULL, purchase_subsidy_fen BIGINT NOT NULL, \
             subsidy_fen BIGINT NOT NULL, net_fen BIGINT NOT NULL) ON COMMIT DROP",
            "CREATE TEMP TABLE clearing_merchants (merchant_id INTEGER, \
             txn_count INTEGER NOT NULL, settled_count INTEGER NOT NULL, \
             sales_fen INTEGER NOT NULL, refunds_fen INTEGER NOT NULL, \
             points_used INTEGER NOT NULL, purchase_subsidy_fen INTEGER NOT NULL, \
             subsidy_fen INTEGER NOT NULL, net_fen INTEGER NOT NULL)",
        ),
        &[],
    )
    .await?;
    scan_day(backend, &mut tx, d).await?;
    // PostgreSQL's statement answers with the count and sum; SQLite's only writes.
    let credited = match step(q::CREDITS.pg, tx.query_opt(&q::CREDITS, params![d])).await? {
        Some(r) => r,
        None => tx.query_one(&q::CREDITS_COUNT, params![d]).await?,
    };
    let (credit_count, credit_fen) = (credited.int(0)?, credited.int(1)?);
    let steps = [
        (q::DEBTS_PAID, params![]),
        (q::DEBTS_OWED, params![]),
        (q::MERCHANTS, params![d, fen_per_point]),
        (q::STATISTICS, params![d]),
        (q::RUN, params![d, now_ms, credit_count, credit_fen]),
    ];
    for (sql, p) in steps {
        step(sql, tx.execute(&Sql::both(sql), p)).await?;
    }
    tx.execute(&Sql::lite_only("DROP TABLE temp.clearing_nets"), &[])
        .await?;
    tx.execute(&Sql::lite_only("DROP TABLE temp.clearing_merchants"), &[])
        .await?;
    let r = tx.query_one(&SELECT_RUN, params![d]).await?;
    let s = summary(date, &r)?;
    tx.commit().await?;
    Ok(s)
}

/// Runs one step of the clearing and logs its rows and time.
async fn step<T>(
    sql: &str,
    run: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError>
where
    T: Rows,
{
    let started = std::time::Instant::now();
    let done = run.await?;
    tracing::debug!(
        rows = done.rows(),
        ms = started.elapsed().as_millis(),
        sql = sql.get(..40).unwrap_or(sql),
        "clearing step"
    );
    Ok(done)
}

/// What a step reports: rows changed or returned.
trait Rows {
    fn rows(&self) -> u64;
}

impl Rows for u64 {
    fn rows(&self) -> u64 {
        *self
    }
}

impl Rows for Vec<Row> {
    fn rows(&self) -> u64 {
        self.len() as u64
    }
}

impl Rows for Option<Row> {
    fn rows(&self) -> u64 {
        u64::from(self.is_some())
    }
}

/// The day's two scans: the nets by card, and the sums by merchant. PostgreSQL runs a
/// statement in one backend, which left one of this machine's two cores idle for the
/// whole run; so on PostgreSQL the merchants' scan runs beside the nets, on a second
/// connection in this transaction's exported snapshot (it sees exactly what the run
/// sees), and its few rows (one per merchant) are written into `clearing_merchants`
/// here. Without a spare connection (SQLite, or a pool with fewer than two free, so that
/// the sessions' reads keep one) the scans run one after the other. A failed merchant
/// scan fails the run once the nets' statement has answered (the run's connection is
/// not left with a statement in flight).
async fn scan_day<B: Backend>(backend: &B, tx: &mut B::Tx, d: i32) -> Result<(), StoreError> {
    let Some(mut side) = beside(backend, tx).await? else {
        step(
            q::DAY_MERCHANTS,
            tx.execute(&Sql::both(q::DAY_MERCHANTS), params![d]),
        )
        .await?;
        step(q::DAY_NETS, tx.execute(&Sql::both(q::DAY_NETS), params![d])).await?;
        return Ok(());
    };
    let (merchants, nets) = (
        Sql::pg_only(q::DAY_MERCHANTS_SELECT),
        Sql::both(q::DAY_NETS),
    );
    let p = params![d];
    let (merchants, nets) = tokio::join!(
        async {
            // The second connection goes back to the pool as soon as its scan is done.
            let rows = step(q::DAY_MERCHANTS_SELECT, side.query(&merchants, p)).await?;
            side.commit().await?;
            Ok::<_, StoreError>(rows)
        },
        step(q::DAY_NETS, tx.execute(&nets, p)),
    );
    let (merchants, _) = (merchants?, nets?);
    let mut cols: [Vec<Option<i64>>; 9] = Default::default();
    for r in &merchants {
        for (i, col) in cols.iter_mut().enumerate() {
            col.push(r.opt_int(i)?);
        }
    }
    let cols = cols.map(Col::OptInt);
    tx.bulk(&q::DAY_MERCHANTS_IN, &cols).await?;
    Ok(())
}

/// A second transaction in `tx`'s snapshot: on PostgreSQL (SQLite exports no
/// snapshot), when the pool has at least two connections free (one stays for the
/// sessions' reads); `None` otherwise, or when the second connection cannot take the
/// snapshot.
async fn beside<B: Backend>(backend: &B, tx: &mut B::Tx) -> Result<Option<B::Tx>, StoreError> {
    let Some(row) = tx
        .query_opt(&Sql::pg_only("SELECT pg_export_snapshot()"), &[])
        .await?
    else {
        return Ok(None);
    };
    if backend.connections_free() < 2 {
        tracing::info!("clearing: no spare connection, the day's scans run one after the other");
        return Ok(None);
    }
    let id = row.text(0)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(StoreError::Corrupt(format!("snapshot id {id:?}")));
    }
    let taken = async {
        let mut side = backend.begin(TxMode::Snapshot).await?;
        side.batch(&format!(
            "SET TRANSACTION SNAPSHOT '{id}'; SET LOCAL statement_timeout = '10min'"
        ))
        .await?;
        Ok::<_, StoreError>(side)
    };
    match taken.await {
        Ok(side) => Ok(Some(side)),
        Err(e) => {
            tracing::info!(error = %e, "clearing: no second connection in the run's snapshot, the day's scans run one after the other");
            Ok(None)
        }
    }
}

/// The audit step: see [`super::super::Store::approve_day`].
pub(super) async fn approve_day<B: Backend>(
    backend: &B,
    date: BusinessDate,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let d = date_param(date);
    let mut tx = backend.begin(TxMode::Write).await?;
    if tx.query_opt(&SELECT_RUN, params![d]).await?.is_none() {
        return Ok(false);
    }
    tx.execute(
        &Sql::both(
            "UPDATE clearing_runs SET status = 2, approved_at_ms = $2 \
             WHERE business_date = $1 AND status = 1",
        ),
        params![d, now_ms],
    )
    .await?;
    tx.execute(
        &Sql::both("UPDATE credits SET status = 2 WHERE business_date = $1 AND status = 1"),
        params![d],
    )
    .await?;
    // Every node hears of it when this commits (the outbox): pushes go out at once.
    super::cluster::append_event(
        &mut tx,
        crate::store::cluster::EventKind::CreditsReleased,
        &date.get().to_string(),
        crate::clock::now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Everything a cleared day produced: see [`super::super::Store::clearing_report`].
pub(super) async fn report<B: Backend>(
    backend: &B,
    date: BusinessDate,
) -> Result<Option<ClearingReport>, StoreError> {
    let d = date_param(date);
    let mut tx = backend.begin(TxMode::Snapshot).await?;
    let Some(run) = tx.query_opt(&SELECT_RUN, params![d]).await? else {
        return Ok(None);
    };
    let mut credits = Vec::new();
    for r in tx
        .query(
            &Sql::both(
                "SELECT credit_id, card_no, amount_fen FROM credits \
                 WHERE business_date = $1 ORDER BY credit_id",
            ),
            params![d],
        )
        .await?
    {
        credits.push(CreditRow {
            credit_id: CreditId(from_db_u64(r.int(0)?)),
            card_no: CardNo(from_db_u64(r.int(1)?)),
            amount_fen: Fen(r.int(2)?),
        });
    }
    let mut merchants = Vec::new();
    for r in tx
        .query(
            &Sql::both(
                "SELECT merchant_id, txn_count, sales_fen, refunds_fen, points_fen, subsidy_fen \
                 FROM merchant_settlements WHERE business_date = $1 ORDER BY merchant_id",
            ),
            params![d],
        )
        .await?
    {
        merchants.push(MerchantSettlement {
            merchant_id: MerchantId(r.int(0)?),
            txn_count: r.int(1)?,
            sales_fen: Fen(r.int(2)?),
            refunds_fen: Fen(r.int(3)?),
            points_fen: Fen(r.int(4)?),
            subsidy_fen: Fen(r.int(5)?),
        });
    }
    let mut statistics = Vec::new();
    for r in tx
        .query(
            &Sql::both(
                "SELECT district, category, txn_count, sales_fen, subsidy_fen FROM day_statistics \
                 WHERE business_date = $1 ORDER BY district, category",
            ),
            params![d],
        )
        .await?
    {
        statistics.push(StatisticsRow {
            district: r.get(0)?,
            category: r.get(1)?,
            txn_count: r.int(2)?,
            sales_fen: Fen(r.int(3)?),
            subsidy_fen: Fen(r.int(4)?),
        });
    }
    let mut awards = Vec::new();
    for r in tx
        .query(
            &Sql::both(
                "SELECT award_id, merchant_id, show_date, kind, amount_fen FROM organizer_awards \
                 WHERE status = 2 AND approved_date = $1 ORDER BY award_id",
            ),
            params![d],
        )
        .await?
    {
        awards.push(AwardRow {
            award_id: r.int(0)?,
            merchant_id: MerchantId(r.int(1)?),
            show_date: r.get(2)?,
            kind: r.get(3)?,
            amount_fen: Fen(r.int(4)?),
        });
    }
    let l = tx
        .query_one(
            &Sql::both(
                "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) \
                 FROM credits WHERE business_date = $1 AND status = 3",
            ),
            params![d],
        )
        .await?;
    let loaded = (l.int(0)?, Fen(l.int(1)?));
    tx.commit().await?;
    Ok(Some(ClearingReport {
        summary: summary(date, &run)?,
        credits,
        merchants,
        statistics,
        awards,
        loaded,
    }))
}
