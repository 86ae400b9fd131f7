//! The production store: PostgreSQL through a deadpool connection pool.
//!
//! A batch is one transaction: one multi-row `INSERT … SELECT FROM unnest(…) ON CONFLICT
//! DO NOTHING RETURNING` for all its rows (a single prepared statement whatever the batch
//! size), then, only for the rows it did not insert — re-sends and replays, rare in normal
//! traffic — a lookup by key and the answers that follow from it.

use super::rebalance;
use super::{
    BUDGET_SHARDS, IngestCtx, IngestTxn, MIGRATIONS, PROGRAMME_BUDGET_KEY, SEQ_PAGE_ROWS, Store,
    StoreError, TxnAnswer, TxnRow, advance_watermark, answer_resend, apply_grants, budget_wants,
    cut_to_programme, db_u64, distribute, from_db_u64, recorded_from_columns, txn_payload,
};
use crate::registry::{Category, Device, District, Merchant, MerchantId, Operator, Registry};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;
use wenxiao_protocol::{DeviceId, DeviceKind, Reason, Seq};

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Budget keys whose shard rows are known to be committed, so their creation is not
    /// attempted at every batch.
    known_budgets: std::sync::Arc<std::sync::Mutex<HashSet<i32>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgStore {
    /// A pool of at most `pool_size_max` connections to `url`; waiting for one is bounded
    /// by `pool_wait_ms`. Connections are opened lazily, on the runtime that first needs
    /// them: callers keep all store work on one dedicated runtime.
    pub fn connect(url: &str, pool_size_max: usize, pool_wait_ms: u64) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url)?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let wait = Some(Duration::from_millis(pool_wait_ms));
        let pool = Pool::builder(manager)
            .max_size(pool_size_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(wait)
            .create_timeout(wait)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            known_budgets: Default::default(),
        })
    }

    /// Creates the shard rows of budgets not yet known to exist, each in its own
    /// statement outside any ingest transaction. Inside one it would deadlock: an
    /// `INSERT … ON CONFLICT` waits for every transaction that has updated a row with the
    /// same key, while that transaction may wait for the shard rows this one holds.
    async fn ensure_budgets(
        &self,
        client: &deadpool_postgres::Object,
        keys: &[(i32, wenxiao_protocol::Fen)],
    ) -> Result<(), StoreError> {
        for &(key, cap) in keys {
            let known = self
                .known_budgets
                .lock()
                .map(|k| k.contains(&key))
                .unwrap_or(false);
            if known {
                continue;
            }
            let ensure = client
                .prepare_cached(
                    "INSERT INTO budget_shards (budget_key, shard, cap_fen, granted_fen) \
                     SELECT $1, s, $2::int8 / $3 + CASE WHEN s = 0 THEN $2::int8 % $3 ELSE 0 END, 0 \
                     FROM generate_series(0, $3 - 1) AS s ON CONFLICT DO NOTHING",
                )
                .await?;
            client
                .execute(&ensure, &[&key, &cap.get(), &BUDGET_SHARDS])
                .await?;
            if let Ok(mut k) = self.known_budgets.lock() {
                k.insert(key);
            }
        }
        Ok(())
    }

    /// One attempt of [`Store::ingest`].
    async fn ingest_once(
        &self,
        batch: &[IngestTxn],
        budget: &IngestCtx,
    ) -> Result<Vec<TxnAnswer>, StoreError> {
        let mut client = self.client().await?;

        let months: std::collections::BTreeSet<i32> = batch
            .iter()
            .filter(|t| matches!(t.proposal, super::Proposal::Store { subsidy_fen, .. } if subsidy_fen.get() > 0))
            .map(|t| i32::try_from(t.business_date.get() / 100).unwrap_or(i32::MAX))
            .collect();
        if !months.is_empty() {
            let keys: Vec<(i32, wenxiao_protocol::Fen)> = months
                .iter()
                .map(|&m| (m, budget.monthly_cap))
                .chain([(PROGRAMME_BUDGET_KEY, budget.programme_cap)])
                .collect();
            self.ensure_budgets(&client, &keys).await?;
        }
        let tx = client.transaction().await?;
        let mut answers = vec![None; batch.len()];
        let all: Vec<usize> = (0..batch.len()).collect();
        let left = insert_rows(
            &tx,
            batch,
            &all,
            |t| TxnRow::first_answer(t.proposal),
            &mut answers,
        )
        .await?;
        let missing = answer_recorded(&tx, batch, &left, &mut answers).await?;
        // Not recorded under their own key: the card-counter index refused them.
        let replay = TxnAnswer::rejected(Reason::CardCounterReplay);
        let left = insert_rows(&tx, batch, &missing, |_| replay, &mut answers).await?;
        let missing = answer_recorded(&tx, batch, &left, &mut answers).await?;
        if let Some(&i) = missing.first() {
            return Err(StoreError::Corrupt(format!(
                "batch row {i} neither inserted nor found"
            )));
        }
        apply_points_effects(&tx, batch, &mut answers, budget).await?;
        apply_blacklist(&tx, batch, &mut answers).await?;
        apply_budget(&tx, batch, &mut answers, budget).await?;
        tx.commit().await?;
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.ok_or_else(|| StoreError::Corrupt(format!("batch row {i} unanswered"))))
            .collect()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        })
    }
}

const INSERT_TXNS: &str = "INSERT INTO txns (device_id, seq, kind, card_no, card_counter, \
    counter_kind, amount_fen, list_price_fen, item, points_hold_id, points_used, refund_of_seq, \
    occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, points_awarded, \
    received_at_ms, business_date) \
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::int2[], $4::int8[], $5::int8[], \
    $6::int2[], $7::int8[], $8::int8[], $9::int2[], $10::int8[], $11::int8[], $12::int8[], \
    $13::int8[], $14::int4[], $15::int8[], $16::int2[], $17::int2[], $18::int8[], $19::int8[], \
    $20::int8[], $21::int4[]) \
    ON CONFLICT DO NOTHING RETURNING device_id, seq";

const SELECT_RECORDED: &str = "SELECT device_id, seq, kind, card_no, card_counter, amount_fen, \
    list_price_fen, item, points_hold_id, points_used, refund_of_seq, occurred_at_ms, tac, \
    status, reason, subsidy_fen, points_awarded FROM txns \
    WHERE (device_id, seq) IN (SELECT * FROM unnest($1::int8[], $2::int8[]))";

type Key = (i64, i64);

fn key(t: &IngestTxn) -> Key {
    (db_u64(t.device_id.get()), db_u64(t.txn.seq.get()))
}

/// Inserts the first occurrence of each key among `idxs` with `answer_of`'s answer and
/// fills `answers` for the rows inserted; returns the indices left unanswered.
async fn insert_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[IngestTxn],
    idxs: &[usize],
    answer_of: impl Fn(&IngestTxn) -> TxnAnswer,
    answers: &mut [Option<TxnAnswer>],
) -> Result<Vec<usize>, StoreError> {
    let mut seen = HashSet::with_capacity(idxs.len());
    let (mut firsts, mut left) = (Vec::with_capacity(idxs.len()), Vec::new());
    for &i in idxs {
        let Some(t) = batch.get(i) else { continue };
        if seen.insert(key(t)) {
            firsts.push(i);
        } else {
            left.push(i);
        }
    }
    if firsts.is_empty() {
        return Ok(left);
    }
    let rows: Vec<(usize, TxnRow, TxnAnswer)> = firsts
        .iter()
        .filter_map(|&i| batch.get(i).map(|t| (i, t)))
        .map(|(i, t)| {
            let a = answer_of(t);
            (i, TxnRow::new(t, a), a)
        })
        .collect();
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|(_, r, _)| r.$f).collect::<Vec<_>>()
        };
    }
    let stmt = tx.prepare_cached(INSERT_TXNS).await?;
    let inserted: HashSet<Key> = tx
        .query(
            &stmt,
            &[
                &col!(device_id),
                &col!(seq),
                &col!(kind),
                &col!(card_no),
                &col!(card_counter),
                &col!(counter_kind),
                &col!(amount_fen),
                &col!(list_price_fen),
                &col!(item),
                &col!(points_hold_id),
                &col!(points_used),
                &col!(refund_of_seq),
                &col!(occurred_at_ms),
                &col!(tac),
                &col!(merchant_id),
                &col!(status),
                &col!(reason),
                &col!(subsidy_fen),
                &col!(points_awarded),
                &col!(received_at_ms),
                &col!(business_date),
            ],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .collect();
    for (i, row, answer) in rows {
        if inserted.contains(&(row.device_id, row.seq)) {
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(answer);
            }
        } else {
            left.push(i);
        }
    }
    Ok(left)
}

/// Answers the rows among `idxs` whose key is already recorded (re-sends and seq
/// conflicts, recording the conflicts); returns the indices whose key is not recorded.
async fn answer_recorded(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[IngestTxn],
    idxs: &[usize],
    answers: &mut [Option<TxnAnswer>],
) -> Result<Vec<usize>, StoreError> {
    if idxs.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Key> = idxs.iter().filter_map(|&i| batch.get(i)).map(key).collect();
    let devices: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let stmt = tx.prepare_cached(SELECT_RECORDED).await?;
    let mut recorded = HashMap::new();
    for r in tx.query(&stmt, &[&devices, &seqs]).await? {
        let rec = recorded_from_columns(
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
            r.get(8),
            r.get(9),
            r.get(10),
            r.get(11),
            r.get(12),
            r.get(13),
            r.get(14),
            r.get(15),
            r.get(16),
        )?;
        recorded.insert((r.get::<_, i64>(0), r.get::<_, i64>(1)), rec);
    }
    let mut missing = Vec::new();
    for &i in idxs {
        let Some(t) = batch.get(i) else { continue };
        let answer = match recorded.get(&key(t)) {
            None => {
                missing.push(i);
                continue;
            }
            Some(rec) => match answer_resend(rec, &t.txn) {
                super::Resend::Same(a) => a,
                super::Resend::Conflict => {
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO txn_conflicts (device_id, seq, payload, received_at_ms) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        )
                        .await?;
                    let (d, s) = key(t);
                    tx.execute(&stmt, &[&d, &s, &txn_payload(&t.txn), &t.received_at_ms])
                        .await?;
                    TxnAnswer::rejected(Reason::SeqConflict)
                }
            },
        };
        if let Some(slot) = answers.get_mut(i) {
            *slot = Some(answer);
        }
    }
    Ok(missing)
}

/// Takes up to `want` from budget `key`: from this writer's shard while it has room
/// (one row locked), else from all shards' common remainder (all rows locked, in order).
/// The shard rows exist: `PgStore::ensure_budgets` made them before the transaction.
async fn take_budget(
    tx: &deadpool_postgres::Transaction<'_>,
    key: i32,
    shard: i32,
    want: i64,
) -> Result<i64, StoreError> {
    if want <= 0 {
        return Ok(0);
    }
    let fast = tx
        .prepare_cached(
            "UPDATE budget_shards SET granted_fen = granted_fen + $3 \
             WHERE budget_key = $1 AND shard = $2 AND granted_fen + $3 <= cap_fen",
        )
        .await?;
    if tx.execute(&fast, &[&key, &shard, &want]).await? == 1 {
        return Ok(want);
    }
    take_budget_slow(tx, key, shard, want).await
}

/// The slow path: every shard of the budget locked in order, unused cap moved to ours.
async fn take_budget_slow(
    tx: &deadpool_postgres::Transaction<'_>,
    key: i32,
    shard: i32,
    want: i64,
) -> Result<i64, StoreError> {
    let all = tx
        .prepare_cached(
            "SELECT shard, cap_fen, granted_fen FROM budget_shards WHERE budget_key = $1 \
             ORDER BY shard FOR UPDATE",
        )
        .await?;
    let shards: Vec<(i32, i64, i64)> = tx
        .query(&all, &[&key])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let (granted, new_caps) = rebalance(&shards, shard, want);
    let set_cap = tx
        .prepare_cached(
            "UPDATE budget_shards SET cap_fen = $3 WHERE budget_key = $1 AND shard = $2",
        )
        .await?;
    for (s, cap) in new_caps {
        tx.execute(&set_cap, &[&key, &s, &cap]).await?;
    }
    if granted > 0 {
        add_budget(tx, key, shard, granted).await?;
    }
    Ok(granted)
}

async fn add_budget(
    tx: &deadpool_postgres::Transaction<'_>,
    key: i32,
    shard: i32,
    fen: i64,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE budget_shards SET granted_fen = granted_fen + $3 \
             WHERE budget_key = $1 AND shard = $2",
        )
        .await?;
    tx.execute(&stmt, &[&key, &shard, &fen]).await?;
    Ok(())
}

/// Draws the batch's stored subsidies from the budget and lowers the rows it cannot pay.
/// Takes the subsidy off new rows of blacklisted cards (one lookup per batch).
async fn apply_blacklist(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
) -> Result<(), StoreError> {
    let cards: Vec<i64> = batch.iter().map(|t| db_u64(t.txn.card_no.get())).collect();
    let listed: HashSet<i64> = tx
        .query(
            "SELECT card_no FROM card_blacklist WHERE card_no = ANY($1)",
            &[&cards],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if listed.is_empty() {
        return Ok(());
    }
    for i in super::apply_blacklist(batch, answers, &listed) {
        let (Some(t), Some(Some(a))) = (batch.get(i), answers.get(i)) else {
            continue;
        };
        let (d, q) = key(t);
        tx.execute(
            "UPDATE txns SET subsidy_fen = 0, reason = $3 WHERE device_id = $1 AND seq = $2",
            &[&d, &q, &i16::try_from(a.reason.code()).unwrap_or(i16::MAX)],
        )
        .await?;
    }
    Ok(())
}

/// Releases a card's holds past their expiry.
async fn release_expired_holds(
    tx: &deadpool_postgres::Transaction<'_>,
    card: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let released: i64 = tx
        .query(
            "UPDATE points_holds SET status = 3 \
             WHERE card_no = $1 AND status = 1 AND expires_at_ms <= $2 RETURNING points",
            &[&card, &now_ms],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .sum();
    if released > 0 {
        tx.execute(
            "UPDATE points_accounts SET held = held - $2 WHERE card_no = $1",
            &[&card, &released],
        )
        .await?;
    }
    Ok(())
}

/// Awards the sign-in points of a batch in one statement: the first sign-in of each card
/// and day (in batch order) that has no award yet earns; returns the (card, day) pairs
/// awarded.
const SIGN_IN_AWARDS: &str = "WITH i AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::int[]) \
    AS i(card_no, award_day, merchant_id, ord)), \
    firsts AS (SELECT DISTINCT ON (card_no, award_day) card_no, award_day, merchant_id FROM i \
    ORDER BY card_no, award_day, ord), \
    awarded AS (INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
    SELECT card_no, award_day, 1, merchant_id, $5 FROM firsts ORDER BY card_no, award_day \
    ON CONFLICT DO NOTHING RETURNING card_no, award_day), \
    credited AS (INSERT INTO points_accounts (card_no, balance, held) \
    SELECT card_no, SUM($5::bigint), 0 FROM awarded GROUP BY card_no ORDER BY card_no \
    ON CONFLICT (card_no) DO UPDATE SET balance = points_accounts.balance + EXCLUDED.balance) \
    SELECT card_no, award_day FROM awarded";

/// Writes the final answers of the rows the points effects changed, in one statement.
const ANSWER_ROWS: &str = "UPDATE txns t SET status = u.status, reason = u.reason, \
    subsidy_fen = u.subsidy_fen, points_awarded = u.points_awarded \
    FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::smallint[], $5::bigint[], $6::bigint[]) \
    AS u(device_id, seq, status, reason, subsidy_fen, points_awarded) \
    WHERE t.device_id = u.device_id AND t.seq = u.seq";

/// Consumes holds and awards sign-in points for the batch's new rows; rows whose hold is
/// not valid become REJECTED HOLD_INVALID (before the budget, so they take none of it).
/// Sign-ins — most of the points rows — take one statement for the whole batch; holds
/// and refunds one or two each; the changed answers are written back in one statement.
async fn apply_points_effects(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    ctx: &IngestCtx,
) -> Result<(), StoreError> {
    let rows = super::points_rows(batch, answers);
    if rows.is_empty() {
        return Ok(());
    }
    let sign_ins: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&i| {
            batch.get(i).is_some_and(|t| {
                t.txn.points_hold_id.is_none() && t.txn.kind == wenxiao_protocol::TxnKind::SignIn
            })
        })
        .collect();
    let mut awarded: std::collections::HashSet<(i64, i32)> = std::collections::HashSet::new();
    if !sign_ins.is_empty() {
        let (mut cards, mut days, mut merchants, mut ords) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &i in &sign_ins {
            if let Some(t) = batch.get(i) {
                cards.push(db_u64(t.txn.card_no.get()));
                days.push(i32::try_from(t.business_date.get()).unwrap_or(i32::MAX));
                merchants.push(t.merchant_id.map_or(0, |m| m.0));
                ords.push(i32::try_from(i).unwrap_or(i32::MAX));
            }
        }
        let points = i64::from(ctx.sign_in_points.get());
        for r in tx
            .query(SIGN_IN_AWARDS, &[&cards, &days, &merchants, &ords, &points])
            .await?
        {
            awarded.insert((r.get(0), r.get(1)));
        }
    }
    let mut changed = Vec::with_capacity(rows.len());
    for i in rows {
        let (Some(t), Some(Some(answer))) = (batch.get(i), answers.get_mut(i)) else {
            continue;
        };
        let card = db_u64(t.txn.card_no.get());
        let effect = if let Some(hold) = t.txn.points_hold_id {
            let points = i64::from(t.txn.points_used.get());
            let n = tx
                .execute(
                    "UPDATE points_holds SET status = 2, consumed_seq = $5 \
                     WHERE hold_id = $1 AND card_no = $2 AND device_id = $3 AND points = $4 \
                     AND status = 1 AND expires_at_ms > $6",
                    &[
                        &db_u64(hold.get()),
                        &card,
                        &db_u64(t.device_id.get()),
                        &points,
                        &db_u64(t.txn.seq.get()),
                        &t.received_at_ms,
                    ],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "UPDATE points_accounts SET balance = balance - $2, held = held - $2 \
                     WHERE card_no = $1",
                    &[&card, &points],
                )
                .await?;
                super::PointsEffect::HoldConsumed
            } else {
                super::PointsEffect::HoldInvalid
            }
        } else if t.txn.kind == wenxiao_protocol::TxnKind::Refund {
            let original = match t.txn.refund_of_seq {
                Some(of) => {
                    tx.query_opt(
                        "SELECT amount_fen, points_used FROM txns \
                         WHERE device_id = $1 AND seq = $2 AND status = 1 AND kind = 1",
                        &[&db_u64(t.device_id.get()), &db_u64(of.get())],
                    )
                    .await?
                }
                None => None,
            };
            let back = original.map_or(wenxiao_protocol::Points(0), |o| {
                crate::rules::points_returned(
                    wenxiao_protocol::Points(u32::try_from(o.get::<_, i64>(1)).unwrap_or(0)),
                    wenxiao_protocol::Fen(o.get(0)),
                    t.txn.amount_fen,
                )
            });
            if back.get() > 0 {
                tx.execute(
                    "INSERT INTO points_accounts (card_no, balance, held) VALUES ($1, $2, 0) \
                     ON CONFLICT (card_no) DO UPDATE SET balance = points_accounts.balance + $2",
                    &[&card, &i64::from(back.get())],
                )
                .await?;
            }
            super::PointsEffect::Returned(back)
        } else {
            let day = i32::try_from(t.business_date.get()).unwrap_or(i32::MAX);
            // Only the first sign-in of the card and day in this batch earns what the
            // statement awarded.
            if awarded.remove(&(card, day)) {
                super::PointsEffect::Awarded(ctx.sign_in_points)
            } else {
                super::PointsEffect::DailyLimit
            }
        };
        super::apply_points(answer, &effect);
        changed.push((key(t), *answer));
    }
    let (mut ds, mut qs, mut st, mut rs, mut sub, mut pts) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for ((d, q), a) in changed {
        ds.push(d);
        qs.push(q);
        st.push(i16::from(a.status.code()));
        rs.push(i16::try_from(a.reason.code()).unwrap_or(i16::MAX));
        sub.push(a.subsidy_fen.get());
        pts.push(i64::from(a.points_awarded.get()));
    }
    tx.execute(ANSWER_ROWS, &[&ds, &qs, &st, &rs, &sub, &pts])
        .await?;
    Ok(())
}

/// Grants from this writer's month shard and programme shard at once, each only if it
/// fits; the programme's update runs only when the month's did (month first: the lock
/// order). Returns the two update counts.
const FAST_BOTH: &str = "WITH m AS (UPDATE budget_shards SET granted_fen = granted_fen + $3 \
    WHERE budget_key = $1 AND shard = $2 AND granted_fen + $3 <= cap_fen RETURNING 1), \
    p AS (UPDATE budget_shards SET granted_fen = granted_fen + $3 \
    WHERE budget_key = 0 AND shard = $2 AND granted_fen + $3 <= cap_fen \
    AND EXISTS (SELECT 1 FROM m) RETURNING 1) \
    SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM p)";

async fn apply_budget(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    budget: &IngestCtx,
) -> Result<(), StoreError> {
    let wants = budget_wants(batch, answers);
    if wants.is_empty() {
        return Ok(());
    }
    // The common case, one month and room in both of this writer's shards, costs one
    // statement.
    if let (1, Some((&month, rows))) = (wants.len(), wants.iter().next()) {
        let want: i64 = rows.iter().map(|r| r.1).sum();
        let stmt = tx.prepare_cached(FAST_BOTH).await?;
        let row = tx.query_one(&stmt, &[&month, &budget.shard, &want]).await?;
        match (row.get::<_, i64>(0), row.get::<_, i64>(1)) {
            (1, 1) => return Ok(()),
            // The month had room but the programme's shard did not: undo, go slow.
            (1, _) => add_budget(tx, month, budget.shard, -want).await?,
            _ => {}
        }
    }
    // Months in ascending order, then the programme: one lock order for every writer.
    let mut month_grants = Vec::with_capacity(wants.len());
    for (&month, rows) in &wants {
        let want = rows.iter().map(|r| r.1).sum();
        month_grants.push((month, take_budget(tx, month, budget.shard, want).await?));
    }
    let sum: i64 = month_grants.iter().map(|m| m.1).sum();
    let programme = take_budget(tx, PROGRAMME_BUDGET_KEY, budget.shard, sum).await?;
    for (month, cut) in cut_to_programme(&mut month_grants, programme) {
        add_budget(tx, month, budget.shard, -cut).await?;
    }
    let mut reduced = Vec::new();
    for (month, granted) in month_grants {
        if let Some(rows) = wants.get(&month) {
            reduced.extend(apply_grants(&distribute(rows, granted), batch, answers));
        }
    }
    if reduced.is_empty() {
        return Ok(());
    }
    let (mut d, mut q, mut f, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, a) in reduced {
        let Some(t) = batch.get(i) else { continue };
        let (dev, seq) = key(t);
        d.push(dev);
        q.push(seq);
        f.push(a.subsidy_fen.get());
        r.push(i16::try_from(a.reason.code()).unwrap_or(i16::MAX));
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE txns SET subsidy_fen = u.s, reason = u.r \
             FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int2[]) AS u(d, q, s, r) \
             WHERE txns.device_id = u.d AND txns.seq = u.q",
        )
        .await?;
    tx.execute(&stmt, &[&d, &q, &f, &r]).await?;
    Ok(())
}

async fn read_registry(client: &deadpool_postgres::Object) -> Result<Registry, StoreError> {
    let bad = |what: &str, v: i16| StoreError::Corrupt(format!("{what} = {v}"));
    let mut merchants = Vec::new();
    for r in client
        .query(
            "SELECT merchant_id, name, category, district, active FROM merchants",
            &[],
        )
        .await?
    {
        let (category, district): (i16, i16) = (r.get(2), r.get(3));
        merchants.push(Merchant {
            merchant_id: MerchantId(r.get(0)),
            name: r.get(1),
            category: Category::from_code(category).ok_or_else(|| bad("category", category))?,
            district: District::from_code(district).ok_or_else(|| bad("district", district))?,
            active: r.get(4),
        });
    }
    let mut devices = Vec::new();
    for r in client
        .query(
            "SELECT device_id, kind, merchant_id, operator, active FROM devices",
            &[],
        )
        .await?
    {
        let kind: i16 = r.get(1);
        let operator: Option<i16> = r.get(3);
        devices.push(Device {
            device_id: DeviceId(from_db_u64(r.get(0))),
            kind: u8::try_from(kind)
                .ok()
                .and_then(DeviceKind::from_code)
                .ok_or_else(|| bad("kind", kind))?,
            merchant_id: r.get::<_, Option<i64>>(2).map(MerchantId),
            operator: operator
                .map(|o| Operator::from_code(o).ok_or_else(|| bad("operator", o)))
                .transpose()?,
            active: r.get(4),
        });
    }
    Registry::new(merchants, devices).map_err(|e| StoreError::Corrupt(e.to_string()))
}

async fn credit_view(
    tx: &deadpool_postgres::Transaction<'_>,
    credit_id: wenxiao_protocol::CreditId,
) -> Result<Option<super::CreditView>, StoreError> {
    // FOR UPDATE: one LOAD_INIT or CREDIT_RESULT per credit at a time, across nodes.
    Ok(tx
        .query_opt(
            "SELECT card_no, status, amount_fen, bound_device, attempt_online_seq, \
             attempt_host_time_ms FROM credits WHERE credit_id = $1 FOR UPDATE",
            &[&db_u64(credit_id.get())],
        )
        .await?
        .map(|r| {
            let seq: Option<i32> = r.get(4);
            let time: Option<i64> = r.get(5);
            super::CreditView {
                card_no: r.get(0),
                status: r.get(1),
                amount_fen: r.get(2),
                bound_device: r.get(3),
                attempt: seq.zip(time),
            }
        }))
}

fn summary_from(
    date: wenxiao_protocol::BusinessDate,
    r: &tokio_postgres::Row,
) -> super::ClearingSummary {
    super::ClearingSummary {
        business_date: date,
        approved: r.get::<_, i16>(0) == 2,
        txn_count: r.get(1),
        subsidy_fen: wenxiao_protocol::Fen(r.get(2)),
        credit_count: r.get(3),
        credit_fen: wenxiao_protocol::Fen(r.get(4)),
    }
}

const SELECT_RUN: &str = "SELECT status, txn_count, subsidy_fen, credit_count, credit_fen \
    FROM clearing_runs WHERE business_date = $1";

fn date_param(date: wenxiao_protocol::BusinessDate) -> i32 {
    i32::try_from(date.get()).unwrap_or(i32::MAX)
}

/// Serialises clearing runs of one day across nodes (offset from the migration lock).
const CLEARING_LOCK_BASE: i64 = 0x5758_0000_0000;

/// Times a transaction aborted by a deadlock or a serialization failure is run again.
const TXN_RETRIES_MAX: u32 = 5;

/// A deadlock or serialization failure: the transaction was rolled back and may simply be
/// run again.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Serialises migrations across gateway nodes sharing one database.
const MIGRATION_LOCK_KEY: i64 = 0x5758_0001;

impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version INTEGER PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .await?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?;
            if done.is_none() {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2)",
                    &[version, &chrono::Utc::now().timestamp_millis()],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ingest(
        &self,
        batch: &[IngestTxn],
        budget: &IngestCtx,
    ) -> Result<Vec<TxnAnswer>, StoreError> {
        // Concurrent writers lock budget shards and conflicting rows in orders PostgreSQL
        // can find circular; it then aborts one transaction, which is simply run again.
        let mut attempt = 0;
        loop {
            match self.ingest_once(batch, budget).await {
                Err(StoreError::Postgres(e)) if is_retryable(&e) && attempt < TXN_RETRIES_MAX => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "ingest transaction retried");
                }
                other => return other,
            }
        }
    }

    async fn budget_granted(&self, key: i32) -> Result<wenxiao_protocol::Fen, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COALESCE(SUM(granted_fen), 0)::int8 FROM budget_shards WHERE budget_key = $1",
                &[&key],
            )
            .await?;
        Ok(wenxiao_protocol::Fen(row.get(0)))
    }

    async fn stored_seq(
        &self,
        device_id: DeviceId,
        floor: Option<Seq>,
    ) -> Result<Option<Seq>, StoreError> {
        let client = self.client().await?;
        let device = db_u64(device_id.get());
        let mut watermark = match floor {
            Some(f) => f.get(),
            None => client
                .query_opt(
                    "SELECT stored_seq FROM device_seq_checkpoints WHERE device_id = $1",
                    &[&device],
                )
                .await?
                .map_or(0, |r| from_db_u64(r.get(0))),
        };
        let stmt = client
            .prepare_cached(
                "SELECT seq FROM txns WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await?;
        loop {
            let page: Vec<i64> = client
                .query(&stmt, &[&device, &db_u64(watermark), &SEQ_PAGE_ROWS])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) == SEQ_PAGE_ROWS;
            let (next, go_on) = advance_watermark(watermark, &page);
            watermark = next;
            if !go_on || !full {
                break;
            }
        }
        Ok(Seq::new(watermark))
    }

    async fn checkpoint_stored_seq(&self, device_id: DeviceId, seq: Seq) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO device_seq_checkpoints (device_id, stored_seq) VALUES ($1, $2) \
                 ON CONFLICT (device_id) DO UPDATE SET stored_seq = \
                 GREATEST(device_seq_checkpoints.stored_seq, EXCLUDED.stored_seq)",
                &[&db_u64(device_id.get()), &db_u64(seq.get())],
            )
            .await?;
        Ok(())
    }

    async fn import_registry(&self, registry: &Registry) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let upsert_merchant = tx
            .prepare(
                "INSERT INTO merchants (merchant_id, name, category, district, active) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (merchant_id) DO UPDATE SET \
                 name = EXCLUDED.name, category = EXCLUDED.category, \
                 district = EXCLUDED.district, active = EXCLUDED.active",
            )
            .await?;
        for m in registry.merchants() {
            tx.execute(
                &upsert_merchant,
                &[
                    &m.merchant_id.0,
                    &m.name,
                    &m.category.code(),
                    &m.district.code(),
                    &m.active,
                ],
            )
            .await?;
        }
        let upsert_device = tx
            .prepare(
                "INSERT INTO devices (device_id, kind, merchant_id, operator, active) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE SET \
                 kind = EXCLUDED.kind, merchant_id = EXCLUDED.merchant_id, \
                 operator = EXCLUDED.operator, active = EXCLUDED.active",
            )
            .await?;
        for d in registry.devices() {
            tx.execute(
                &upsert_device,
                &[
                    &db_u64(d.device_id.get()),
                    &i16::from(d.kind.code()),
                    &d.merchant_id.map(|m| m.0),
                    &d.operator.map(Operator::code),
                    &d.active,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_registry(&self) -> Result<Registry, StoreError> {
        let client = self.client().await?;
        read_registry(&client).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn clear_day(
        &self,
        date: wenxiao_protocol::BusinessDate,
        fen_per_point: i64,
        now_ms: i64,
    ) -> Result<super::ClearingSummary, StoreError> {
        use super::clearing_sql as q;
        use tokio_postgres::types::Type;
        let d = date_param(date);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&(CLEARING_LOCK_BASE + i64::from(d))],
        )
        .await?;
        if let Some(r) = tx.query_opt(SELECT_RUN, &[&d]).await? {
            return Ok(summary_from(date, &r));
        }
        // One card per row by construction (GROUP BY), so the scratch table needs no index;
        // sorts and hashes of a few million rows fit in memory instead of spilling.
        tx.batch_execute(
            "SET LOCAL work_mem = '256MB'; \
             CREATE TEMP TABLE clearing_nets (card_no BIGINT NOT NULL, net_fen BIGINT NOT NULL) \
             ON COMMIT DROP",
        )
        .await?;
        for sql in [
            q::DAY_NETS,
            q::CREDITS,
            q::DEBTS_PAID,
            q::DEBTS_OWED,
            q::MERCHANTS,
            q::STATISTICS,
            q::RUN,
        ] {
            let stmt = tx
                .prepare_typed(sql, &[Type::INT4, Type::INT8, Type::INT8])
                .await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&d, &fen_per_point, &now_ms];
            let n = stmt.params().len();
            let started = std::time::Instant::now();
            let rows = tx
                .execute(&stmt, params.get(..n).unwrap_or(&params))
                .await?;
            tracing::debug!(
                rows,
                ms = started.elapsed().as_millis(),
                sql = sql.get(..40).unwrap_or(sql),
                "clearing step"
            );
        }
        let r = tx.query_one(SELECT_RUN, &[&d]).await?;
        tx.commit().await?;
        Ok(summary_from(date, &r))
    }

    async fn approve_day(
        &self,
        date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let d = date_param(date);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx.query_opt(SELECT_RUN, &[&d]).await?.is_none() {
            return Ok(false);
        }
        tx.execute(
            "UPDATE clearing_runs SET status = 2, approved_at_ms = $2 \
             WHERE business_date = $1 AND status = 1",
            &[&d, &now_ms],
        )
        .await?;
        tx.execute(
            "UPDATE credits SET status = 2 WHERE business_date = $1 AND status = 1",
            &[&d],
        )
        .await?;
        // Every gateway LISTENing hears it when this commits: pushes go out at once.
        tx.batch_execute(&format!("NOTIFY {}", super::RELEASE_CHANNEL))
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn clearing_report(
        &self,
        date: wenxiao_protocol::BusinessDate,
    ) -> Result<Option<super::ClearingReport>, StoreError> {
        use wenxiao_protocol::{CardNo, CreditId, Fen};
        let d = date_param(date);
        let client = self.client().await?;
        let Some(r) = client.query_opt(SELECT_RUN, &[&d]).await? else {
            return Ok(None);
        };
        let credits = client
            .query(
                "SELECT credit_id, card_no, amount_fen FROM credits \
                 WHERE business_date = $1 ORDER BY credit_id",
                &[&d],
            )
            .await?
            .iter()
            .map(|r| super::CreditRow {
                credit_id: CreditId(from_db_u64(r.get(0))),
                card_no: CardNo(from_db_u64(r.get(1))),
                amount_fen: wenxiao_protocol::Fen(r.get(2)),
            })
            .collect();
        let merchants = client
            .query(
                "SELECT merchant_id, txn_count, sales_fen, refunds_fen, points_fen, subsidy_fen \
                 FROM merchant_settlements WHERE business_date = $1 ORDER BY merchant_id",
                &[&d],
            )
            .await?
            .iter()
            .map(|r| super::MerchantSettlement {
                merchant_id: MerchantId(r.get(0)),
                txn_count: r.get(1),
                sales_fen: wenxiao_protocol::Fen(r.get(2)),
                refunds_fen: wenxiao_protocol::Fen(r.get(3)),
                points_fen: wenxiao_protocol::Fen(r.get(4)),
                subsidy_fen: wenxiao_protocol::Fen(r.get(5)),
            })
            .collect();
        let statistics = client
            .query(
                "SELECT district, category, txn_count, sales_fen, subsidy_fen FROM day_statistics \
                 WHERE business_date = $1 ORDER BY district, category",
                &[&d],
            )
            .await?
            .iter()
            .map(|r| super::StatisticsRow {
                district: r.get(0),
                category: r.get(1),
                txn_count: r.get(2),
                sales_fen: wenxiao_protocol::Fen(r.get(3)),
                subsidy_fen: wenxiao_protocol::Fen(r.get(4)),
            })
            .collect();
        let awards = client
            .query(
                "SELECT award_id, merchant_id, show_date, kind, amount_fen FROM organizer_awards \
                 WHERE status = 2 AND approved_date = $1 ORDER BY award_id",
                &[&d],
            )
            .await?
            .iter()
            .map(|r| super::AwardRow {
                award_id: r.get(0),
                merchant_id: MerchantId(r.get(1)),
                show_date: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                kind: r.get(3),
                amount_fen: wenxiao_protocol::Fen(r.get(4)),
            })
            .collect();
        let l = client
            .query_one(
                "SELECT COUNT(*), COALESCE(SUM(amount_fen), 0)::int8 FROM credits \
                 WHERE business_date = $1 AND status = 3",
                &[&d],
            )
            .await?;
        Ok(Some(super::ClearingReport {
            summary: summary_from(date, &r),
            credits,
            merchants,
            statistics,
            awards,
            loaded: (l.get(0), Fen(l.get(1))),
        }))
    }

    async fn create_hold(&self, r: super::HoldRequest) -> Result<super::HoldOutcome, StoreError> {
        use wenxiao_protocol::{HoldId, Points};
        let card = db_u64(r.card_no.get());
        let points = i64::from(r.points.get());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO points_accounts (card_no, balance, held) VALUES ($1, 0, 0) \
             ON CONFLICT DO NOTHING",
            &[&card],
        )
        .await?;
        release_expired_holds(&tx, card, r.now_ms).await?;
        let free = |v: i64| Points(u32::try_from(v.max(0)).unwrap_or(u32::MAX));
        let held = tx
            .query_opt(
                "UPDATE points_accounts SET held = held + $2 \
                 WHERE card_no = $1 AND balance - held >= $2 RETURNING balance - held",
                &[&card, &points],
            )
            .await?;
        let outcome = match held {
            None => {
                let row = tx
                    .query_one(
                        "SELECT balance - held FROM points_accounts WHERE card_no = $1",
                        &[&card],
                    )
                    .await?;
                super::HoldOutcome::Insufficient {
                    available: free(row.get(0)),
                }
            }
            Some(row) => {
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO points_holds (card_no, device_id, points, purchase_fen, \
                         expires_at_ms, status) VALUES ($1, $2, $3, $4, $5, 1) RETURNING hold_id",
                        &[
                            &card,
                            &db_u64(r.device_id.get()),
                            &points,
                            &r.purchase_fen.get(),
                            &r.expires_at_ms,
                        ],
                    )
                    .await?
                    .get(0);
                let hold_id = HoldId::new(from_db_u64(id))
                    .ok_or_else(|| StoreError::Corrupt("hold id 0".to_owned()))?;
                super::HoldOutcome::Approved {
                    hold_id,
                    available: free(row.get(0)),
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn card_presented(
        &self,
        seen: super::CardSeen,
    ) -> Result<Vec<wenxiao_protocol::OfferedCredit>, StoreError> {
        use super::credit_status::{LOADED, RELEASED};
        let card = db_u64(seen.card_no.get());
        let now_seq = i32::from(seen.online_seq.get());
        let device = db_u64(seen.device_id.get());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Lock the card's released credits: one presentation of a card at a time.
        let rows = tx
            .query(
                "SELECT credit_id, amount_fen, business_date, bound_device, bound_at_ms, \
                 attempt_online_seq, attempt_host_time_ms FROM credits \
                 WHERE card_no = $1 AND status = $2 ORDER BY credit_id FOR UPDATE",
                &[&card, &RELEASED],
            )
            .await?;
        let mut in_doubt = false;
        let mut free = Vec::new();
        for r in &rows {
            let id: i64 = r.get(0);
            match r.get::<_, Option<i32>>(5) {
                Some(attempt) => {
                    let taken: bool = tx
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM txns WHERE card_no = $1 \
                             AND counter_kind = 2 AND card_counter = $2 AND status = 1)",
                            &[&card, &(i64::from(attempt) + 1)],
                        )
                        .await?
                        .get(0);
                    let attempt_at: i64 = r.get::<_, Option<i64>>(6).unwrap_or(0);
                    match super::settle(attempt, attempt_at, now_seq, seen.now_ms, taken) {
                        super::Settlement::Loaded => {
                            tx.execute(
                                "UPDATE credits SET status = $2, settled_at_ms = $3 WHERE credit_id = $1",
                                &[&id, &LOADED, &seen.now_ms],
                            )
                            .await?;
                        }
                        super::Settlement::Void => {
                            tx.execute(
                                "UPDATE credits SET attempt_online_seq = NULL, \
                                 attempt_host_time_ms = NULL, bound_device = NULL, \
                                 bound_at_ms = NULL WHERE credit_id = $1",
                                &[&id],
                            )
                            .await?;
                            free.push(r);
                        }
                        super::Settlement::Unknown => in_doubt = true,
                    }
                }
                None => {
                    let bound: Option<i64> = r.get(3);
                    let bound_at: Option<i64> = r.get(4);
                    let lapsed = bound_at
                        .is_some_and(|t| t.saturating_add(seen.binding_timeout_ms) <= seen.now_ms);
                    if bound.is_none() || bound == Some(device) || lapsed {
                        free.push(r);
                    }
                }
            }
        }
        let mut offered = Vec::new();
        if !in_doubt {
            for r in free
                .into_iter()
                .take(wenxiao_protocol::limits::CREDIT_OFFER_COUNT_MAX)
            {
                let id: i64 = r.get(0);
                tx.execute(
                    "UPDATE credits SET bound_device = $2, bound_at_ms = $3 WHERE credit_id = $1",
                    &[&id, &device, &seen.now_ms],
                )
                .await?;
                let date: i32 = r.get(2);
                offered.push(wenxiao_protocol::OfferedCredit {
                    credit_id: wenxiao_protocol::CreditId(from_db_u64(id)),
                    amount_fen: wenxiao_protocol::Fen(r.get(1)),
                    business_date: wenxiao_protocol::BusinessDate::new(
                        u32::try_from(date).unwrap_or(0),
                    )
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                });
            }
        }
        tx.commit().await?;
        Ok(offered)
    }

    async fn begin_load<F>(
        &self,
        r: super::LoadInitRequest,
        mac1_ok: F,
    ) -> Result<super::LoadDecision, StoreError>
    where
        F: FnOnce(wenxiao_protocol::Fen) -> bool + Send + 'static,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let check = super::begin_check(credit_view(&tx, r.credit_id).await?, &r);
        let other_in_doubt = if matches!(check, super::BeginCheck::Fresh { .. }) {
            // Lock the card's other released credits too: two loads of one card starting
            // at once must see each other.
            tx.query(
                "SELECT attempt_online_seq FROM credits WHERE card_no = $1 AND status = 2 \
                 AND credit_id != $2 FOR UPDATE",
                &[&db_u64(r.card_no.get()), &db_u64(r.credit_id.get())],
            )
            .await?
            .iter()
            .any(|o| o.get::<_, Option<i32>>(0).is_some())
        } else {
            false
        };
        let (decision, record) =
            super::begin_decide(check, other_in_doubt, r.host_time_ms, mac1_ok);
        if record {
            tx.execute(
                "UPDATE credits SET attempt_online_seq = $2, attempt_host_time_ms = $3 \
                 WHERE credit_id = $1",
                &[
                    &db_u64(r.credit_id.get()),
                    &i32::from(r.online_seq.get()),
                    &r.host_time_ms,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(decision)
    }

    async fn finish_load<F>(
        &self,
        r: super::ResultReport,
        tac_ok: F,
    ) -> Result<(wenxiao_protocol::ResultStatus, Reason), StoreError>
    where
        F: FnOnce(&super::LoadAttempt) -> bool + Send + 'static,
    {
        use super::FinishStep;
        use super::credit_status::{LOADED, PARKED};
        use wenxiao_protocol::ResultStatus;
        let id = db_u64(r.credit_id.get());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let answer = match super::finish_step(credit_view(&tx, r.credit_id).await?, &r) {
            FinishStep::Answer(status, reason) => (status, reason),
            FinishStep::VerifyTac(attempt) => {
                if tac_ok(&attempt) {
                    tx.execute(
                        "UPDATE credits SET status = $2, settled_at_ms = $3 WHERE credit_id = $1",
                        &[&id, &LOADED, &r.now_ms],
                    )
                    .await?;
                    (ResultStatus::Recorded, Reason::None)
                } else {
                    (ResultStatus::Rejected, Reason::BadMac)
                }
            }
            FinishStep::Unbind => {
                tx.execute(
                    "UPDATE credits SET bound_device = NULL, bound_at_ms = NULL WHERE credit_id = $1",
                    &[&id],
                )
                .await?;
                (ResultStatus::Recorded, Reason::None)
            }
            FinishStep::Park => {
                tx.execute(
                    "UPDATE credits SET status = $2, settled_at_ms = $3 WHERE credit_id = $1",
                    &[&id, &PARKED, &r.now_ms],
                )
                .await?;
                (ResultStatus::Recorded, Reason::None)
            }
        };
        tx.commit().await?;
        Ok(answer)
    }

    async fn claim_pushes(
        &self,
        c: super::PushClaim,
    ) -> Result<Vec<wenxiao_protocol::CreditPush>, StoreError> {
        use super::credit_status::RELEASED;
        let device = db_u64(c.device_id.get());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT credit_id, card_no, amount_fen, business_date FROM credits \
                 WHERE status = $1 AND card_no BETWEEN $2 AND $3 \
                 AND (bound_device IS NULL \
                      OR (bound_device = $4 AND $5) \
                      OR (attempt_online_seq IS NULL AND bound_device <> $4 \
                          AND bound_at_ms + $7 <= $6)) \
                 ORDER BY credit_id LIMIT $8 FOR UPDATE SKIP LOCKED",
                &[
                    &RELEASED,
                    &db_u64(c.cards_from.get()),
                    &db_u64(c.cards_to.get()),
                    &device,
                    &c.include_bound,
                    &c.now_ms,
                    &c.binding_timeout_ms,
                    &c.limit,
                ],
            )
            .await?;
        let mut pushes = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.get(0);
            tx.execute(
                "UPDATE credits SET bound_device = $2, bound_at_ms = $3 WHERE credit_id = $1",
                &[&id, &device, &c.now_ms],
            )
            .await?;
            let date: i32 = r.get(3);
            pushes.push(wenxiao_protocol::CreditPush {
                credit_id: wenxiao_protocol::CreditId(from_db_u64(id)),
                card_no: wenxiao_protocol::CardNo(from_db_u64(r.get(1))),
                amount_fen: wenxiao_protocol::Fen(r.get(2)),
                business_date: wenxiao_protocol::BusinessDate::new(
                    u32::try_from(date).unwrap_or(0),
                )
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            });
        }
        tx.commit().await?;
        Ok(pushes)
    }

    async fn award_activity(
        &self,
        a: super::Activity,
    ) -> Result<super::ActivityOutcome, StoreError> {
        use super::ActivityOutcome;
        let card = db_u64(a.card_no.get());
        let day = i32::try_from(a.day.get()).unwrap_or(i32::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let signed_in: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM txns WHERE card_no = $1 AND counter_kind = 1 \
                 AND status = 1 AND kind = 2 AND merchant_id = $2 AND business_date = $3)",
                &[&card, &a.venue.0, &day],
            )
            .await?
            .get(0);
        if !signed_in {
            return Ok(ActivityOutcome::NoSignIn);
        }
        let points = i64::from(a.points.get());
        let n = tx
            .execute(
                "INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&card, &day, &a.kind, &a.venue.0, &points],
            )
            .await?;
        if n == 0 {
            return Ok(ActivityOutcome::DailyLimit);
        }
        let balance: i64 = tx
            .query_one(
                "INSERT INTO points_accounts (card_no, balance, held) VALUES ($1, $2, 0) \
                 ON CONFLICT (card_no) DO UPDATE SET balance = points_accounts.balance + $2 \
                 RETURNING balance",
                &[&card, &points],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok(ActivityOutcome::Awarded(wenxiao_protocol::Points(
            u32::try_from(balance).unwrap_or(u32::MAX),
        )))
    }

    async fn set_blacklisted(
        &self,
        card_no: wenxiao_protocol::CardNo,
        blacklisted: bool,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let card = db_u64(card_no.get());
        if blacklisted {
            client
                .execute(
                    "INSERT INTO card_blacklist (card_no, reason, added_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (card_no) DO UPDATE SET reason = EXCLUDED.reason",
                    &[&card, &reason, &now_ms],
                )
                .await?;
        } else {
            client
                .execute("DELETE FROM card_blacklist WHERE card_no = $1", &[&card])
                .await?;
        }
        Ok(())
    }

    async fn record_award(&self, a: super::AwardInput) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Awards are few: ids from the table's maximum, under a lock of the table.
        tx.batch_execute("LOCK TABLE organizer_awards IN EXCLUSIVE MODE")
            .await?;
        let id: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(award_id), 0) + 1 FROM organizer_awards",
                &[],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO organizer_awards (award_id, merchant_id, show_date, kind, amount_fen, \
             evidence, status, recorded_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 1, $7)",
            &[
                &id,
                &a.merchant_id.0,
                &i32::try_from(a.show_date.get()).unwrap_or(i32::MAX),
                &a.kind,
                &a.amount_fen.get(),
                &a.evidence,
                &a.now_ms,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn approve_award(
        &self,
        award_id: i64,
        budget: IngestCtx,
        approved_date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<super::AwardApproval, StoreError> {
        use super::AwardApproval;
        let mut client = self.client().await?;
        let show_date: Option<i32> = client
            .query_opt(
                "SELECT show_date FROM organizer_awards WHERE award_id = $1",
                &[&award_id],
            )
            .await?
            .map(|r| r.get(0));
        if let Some(date) = show_date {
            let keys = [
                (date / 100, budget.monthly_cap),
                (PROGRAMME_BUDGET_KEY, budget.programme_cap),
            ];
            self.ensure_budgets(&client, &keys).await?;
        }
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT status, show_date, amount_fen FROM organizer_awards \
                 WHERE award_id = $1 FOR UPDATE",
                &[&award_id],
            )
            .await?
        else {
            return Ok(AwardApproval::Unknown);
        };
        if row.get::<_, i16>(0) == 2 {
            return Ok(AwardApproval::AlreadyApproved);
        }
        let (month, amount) = (row.get::<_, i32>(1) / 100, row.get::<_, i64>(2));
        // Month first, then the programme: the writers' lock order. All or nothing: a
        // rollback returns whatever was taken.
        let m = take_budget(&tx, month, budget.shard, amount).await?;
        let p = take_budget(&tx, PROGRAMME_BUDGET_KEY, budget.shard, amount).await?;
        if m < amount || p < amount {
            return Ok(AwardApproval::BudgetExhausted);
        }
        tx.execute(
            "UPDATE organizer_awards SET status = 2, approved_at_ms = $2, approved_date = $3 \
             WHERE award_id = $1",
            &[
                &award_id,
                &now_ms,
                &i32::try_from(approved_date.get()).unwrap_or(i32::MAX),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(AwardApproval::Approved)
    }

    async fn latest_release_ms(&self) -> Result<i64, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT COALESCE(MAX(approved_at_ms), 0)::int8 FROM clearing_runs",
                &[],
            )
            .await?
            .get(0))
    }

    async fn credit_state(
        &self,
        credit_id: wenxiao_protocol::CreditId,
    ) -> Result<Option<(i16, wenxiao_protocol::Fen)>, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT status, amount_fen FROM credits WHERE credit_id = $1",
                &[&db_u64(credit_id.get())],
            )
            .await?
            .map(|r| (r.get(0), wenxiao_protocol::Fen(r.get(1)))))
    }

    async fn points_balance(
        &self,
        card_no: wenxiao_protocol::CardNo,
    ) -> Result<(wenxiao_protocol::Points, wenxiao_protocol::Points), StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT balance, held FROM points_accounts WHERE card_no = $1",
                &[&db_u64(card_no.get())],
            )
            .await?;
        let p = |v: i64| wenxiao_protocol::Points(u32::try_from(v.max(0)).unwrap_or(u32::MAX));
        Ok(row.map_or((p(0), p(0)), |r| (p(r.get(0)), p(r.get(1)))))
    }

    async fn count_txns(&self, device_id: DeviceId) -> Result<(u64, u64), StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE status = 1), COUNT(*) FILTER (WHERE status = 3) \
                 FROM txns WHERE device_id = $1",
                &[&db_u64(device_id.get())],
            )
            .await?;
        let (s, r): (i64, i64) = (row.get(0), row.get(1));
        Ok((u64::try_from(s).unwrap_or(0), u64::try_from(r).unwrap_or(0)))
    }

    async fn audit(&self) -> Result<super::AuditFigures, StoreError> {
        use super::audit_sql;
        let client = self.client().await?;
        let mut figures = super::AuditFigures::default();
        for r in client.query(audit_sql::DEVICES, &[]).await? {
            figures.devices.push(super::DeviceAudit {
                device_id: DeviceId(from_db_u64(r.get(0))),
                rows: r.get(1),
                min_seq: r.get(2),
                max_seq: r.get(3),
                stored: r.get(4),
                subsidy_fen: wenxiao_protocol::Fen(r.get(5)),
            });
        }
        let c = client.query_one(audit_sql::CREDITS, &[]).await?;
        figures.released = (c.get(0), wenxiao_protocol::Fen(c.get(1)));
        figures.loaded = (c.get(2), wenxiao_protocol::Fen(c.get(3)));
        for r in client.query(audit_sql::BUDGETS, &[]).await? {
            figures
                .budgets
                .push((r.get(0), wenxiao_protocol::Fen(r.get(1))));
        }
        Ok(figures)
    }
}
