//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`, so a commit
//! has reached the disk before it returns. SQLite has one writer at a time, so there is one
//! write connection; reads use a second connection and never block on the writer.

use super::rebalance;
use super::{
    BUDGET_SHARDS, IngestCtx, IngestTxn, MIGRATIONS, PROGRAMME_BUDGET_KEY, Proposal, Recorded,
    Resend, SEQ_PAGE_ROWS, Store, StoreError, TxnAnswer, TxnRow, advance_watermark, answer_resend,
    apply_grants, budget_wants, cut_to_programme, db_u64, distribute, recorded_from_columns,
    txn_payload,
};
use crate::registry::{Category, Device, District, Merchant, MerchantId, Operator, Registry};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wenxiao_protocol::{DeviceId, DeviceKind, Reason, Seq};

/// Longest a statement waits for a lock held by another connection.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The SQLite store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is synced at every commit, so an answered TXN survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Task(format!("create {}: {e}", dir.display())))?;
        }
        let writer = open(path)?;
        let reader = open(path)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("sqlite connection lock poisoned".to_owned()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

const INSERT_TXN: &str = "INSERT INTO txns (device_id, seq, kind, card_no, card_counter, \
    counter_kind, amount_fen, list_price_fen, item, points_hold_id, points_used, refund_of_seq, \
    occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, points_awarded, \
    received_at_ms, business_date) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
    ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) ON CONFLICT DO NOTHING";

const SELECT_RECORDED: &str = "SELECT seq, kind, card_no, card_counter, amount_fen, \
    list_price_fen, item, points_hold_id, points_used, refund_of_seq, occurred_at_ms, tac, \
    status, reason, subsidy_fen, points_awarded FROM txns WHERE device_id = ?1 AND seq = ?2";

fn insert_row(tx: &rusqlite::Transaction<'_>, r: &TxnRow) -> Result<bool, StoreError> {
    let mut stmt = tx.prepare_cached(INSERT_TXN)?;
    let n = stmt.execute(params![
        r.device_id,
        r.seq,
        r.kind,
        r.card_no,
        r.card_counter,
        r.counter_kind,
        r.amount_fen,
        r.list_price_fen,
        r.item,
        r.points_hold_id,
        r.points_used,
        r.refund_of_seq,
        r.occurred_at_ms,
        r.tac,
        r.merchant_id,
        r.status,
        r.reason,
        r.subsidy_fen,
        r.points_awarded,
        r.received_at_ms,
        r.business_date
    ])?;
    Ok(n == 1)
}

fn select_recorded(
    tx: &rusqlite::Transaction<'_>,
    device_id: i64,
    seq: i64,
) -> Result<Option<Recorded>, StoreError> {
    let mut stmt = tx.prepare_cached(SELECT_RECORDED)?;
    let row = stmt
        .query_row(params![device_id, seq], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
                r.get(14)?,
                r.get(15)?,
            ))
        })
        .optional()?;
    row.map(|c| {
        recorded_from_columns(
            c.0, c.1, c.2, c.3, c.4, c.5, c.6, c.7, c.8, c.9, c.10, c.11, c.12, c.13, c.14, c.15,
        )
    })
    .transpose()
}

fn ingest_one(tx: &rusqlite::Transaction<'_>, t: &IngestTxn) -> Result<TxnAnswer, StoreError> {
    let first = TxnRow::first_answer(t.proposal);
    let row = TxnRow::new(t, first);
    if insert_row(tx, &row)? {
        return Ok(first);
    }
    if let Some(recorded) = select_recorded(tx, row.device_id, row.seq)? {
        return Ok(match answer_resend(&recorded, &t.txn) {
            Resend::Same(answer) => answer,
            Resend::Conflict => {
                tx.prepare_cached(
                    "INSERT INTO txn_conflicts (device_id, seq, payload, received_at_ms) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    row.device_id,
                    row.seq,
                    txn_payload(&t.txn),
                    t.received_at_ms
                ])?;
                TxnAnswer::rejected(Reason::SeqConflict)
            }
        });
    }
    // Not there under its own key, so the card-counter index refused it.
    debug_assert!(matches!(t.proposal, Proposal::Store { .. }));
    let answer = TxnAnswer::rejected(Reason::CardCounterReplay);
    if insert_row(tx, &TxnRow::new(t, answer))? {
        Ok(answer)
    } else {
        Err(StoreError::Corrupt(format!(
            "txn {}/{} neither inserted nor found",
            t.device_id, t.txn.seq
        )))
    }
}

/// As the PostgreSQL store's `take_budget`; SQLite's single writer makes every
/// transaction exclusive, so the locks are implicit.
fn take_budget(
    tx: &rusqlite::Transaction<'_>,
    key: i32,
    cap: wenxiao_protocol::Fen,
    shard: i32,
    want: i64,
) -> Result<i64, StoreError> {
    if want <= 0 {
        return Ok(0);
    }
    for s in 0..BUDGET_SHARDS {
        tx.prepare_cached(
            "INSERT INTO budget_shards (budget_key, shard, cap_fen, granted_fen) \
             VALUES (?1, ?2, ?3, 0) ON CONFLICT DO NOTHING",
        )?
        .execute(params![key, s, IngestCtx::shard_cap(cap, s)])?;
    }
    let fast = tx
        .prepare_cached(
            "UPDATE budget_shards SET granted_fen = granted_fen + ?3 \
             WHERE budget_key = ?1 AND shard = ?2 AND granted_fen + ?3 <= cap_fen",
        )?
        .execute(params![key, shard, want])?;
    if fast == 1 {
        return Ok(want);
    }
    let shards: Vec<(i32, i64, i64)> = tx
        .prepare_cached(
            "SELECT shard, cap_fen, granted_fen FROM budget_shards WHERE budget_key = ?1 \
             ORDER BY shard",
        )?
        .query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let (granted, new_caps) = rebalance(&shards, shard, want);
    for (s, cap) in new_caps {
        tx.prepare_cached(
            "UPDATE budget_shards SET cap_fen = ?3 WHERE budget_key = ?1 AND shard = ?2",
        )?
        .execute(params![key, s, cap])?;
    }
    add_budget(tx, key, shard, granted)?;
    Ok(granted)
}

fn add_budget(
    tx: &rusqlite::Transaction<'_>,
    key: i32,
    shard: i32,
    fen: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE budget_shards SET granted_fen = granted_fen + ?3 WHERE budget_key = ?1 AND shard = ?2",
    )?
    .execute(params![key, shard, fen])?;
    Ok(())
}

fn apply_budget(
    tx: &rusqlite::Transaction<'_>,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    budget: &IngestCtx,
) -> Result<(), StoreError> {
    let wants = budget_wants(batch, answers);
    let mut month_grants = Vec::with_capacity(wants.len());
    for (&month, rows) in &wants {
        let want = rows.iter().map(|r| r.1).sum();
        month_grants.push((
            month,
            take_budget(tx, month, budget.monthly_cap, budget.shard, want)?,
        ));
    }
    let sum: i64 = month_grants.iter().map(|m| m.1).sum();
    let programme = take_budget(
        tx,
        PROGRAMME_BUDGET_KEY,
        budget.programme_cap,
        budget.shard,
        sum,
    )?;
    for (month, cut) in cut_to_programme(&mut month_grants, programme) {
        add_budget(tx, month, budget.shard, -cut)?;
    }
    for (month, granted) in month_grants {
        let Some(rows) = wants.get(&month) else {
            continue;
        };
        for (i, a) in apply_grants(&distribute(rows, granted), batch, answers) {
            let Some(t) = batch.get(i) else { continue };
            tx.prepare_cached(
                "UPDATE txns SET subsidy_fen = ?3, reason = ?4 WHERE device_id = ?1 AND seq = ?2",
            )?
            .execute(params![
                db_u64(t.device_id.get()),
                db_u64(t.txn.seq.get()),
                a.subsidy_fen.get(),
                i16::try_from(a.reason.code()).unwrap_or(i16::MAX)
            ])?;
        }
    }
    Ok(())
}

/// Takes the subsidy off new rows of blacklisted cards.
fn apply_blacklist(
    tx: &rusqlite::Transaction<'_>,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
) -> Result<(), StoreError> {
    let mut listed = std::collections::HashSet::new();
    for t in batch {
        let card = db_u64(t.txn.card_no.get());
        let on: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM card_blacklist WHERE card_no = ?1)")?
            .query_row([card], |r| r.get(0))?;
        if on {
            listed.insert(card);
        }
    }
    if listed.is_empty() {
        return Ok(());
    }
    for i in super::apply_blacklist(batch, answers, &listed) {
        let Some(t) = batch.get(i) else { continue };
        tx.execute(
            "UPDATE txns SET subsidy_fen = 0, reason = ?3 WHERE device_id = ?1 AND seq = ?2",
            params![
                db_u64(t.device_id.get()),
                db_u64(t.txn.seq.get()),
                wenxiao_protocol::Reason::CardBlacklisted.code()
            ],
        )?;
    }
    Ok(())
}

fn release_expired_holds(
    tx: &rusqlite::Transaction<'_>,
    card: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let released: i64 = tx
        .prepare_cached(
            "UPDATE points_holds SET status = 3 \
             WHERE card_no = ?1 AND status = 1 AND expires_at_ms <= ?2 RETURNING points",
        )?
        .query_map(params![card, now_ms], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    if released > 0 {
        tx.execute(
            "UPDATE points_accounts SET held = held - ?2 WHERE card_no = ?1",
            params![card, released],
        )?;
    }
    Ok(())
}

/// As the PostgreSQL store's `apply_points_effects`.
fn apply_points_effects(
    tx: &rusqlite::Transaction<'_>,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    ctx: &IngestCtx,
) -> Result<(), StoreError> {
    for i in super::points_rows(batch, answers) {
        let (Some(t), Some(Some(answer))) = (batch.get(i), answers.get_mut(i)) else {
            continue;
        };
        let card = db_u64(t.txn.card_no.get());
        let effect = if let Some(hold) = t.txn.points_hold_id {
            let points = i64::from(t.txn.points_used.get());
            let n = tx
                .prepare_cached(
                    "UPDATE points_holds SET status = 2, consumed_seq = ?5 \
                     WHERE hold_id = ?1 AND card_no = ?2 AND device_id = ?3 AND points = ?4 \
                     AND status = 1 AND expires_at_ms > ?6",
                )?
                .execute(params![
                    db_u64(hold.get()),
                    card,
                    db_u64(t.device_id.get()),
                    points,
                    db_u64(t.txn.seq.get()),
                    t.received_at_ms
                ])?;
            if n == 1 {
                tx.execute(
                    "UPDATE points_accounts SET balance = balance - ?2, held = held - ?2 \
                     WHERE card_no = ?1",
                    params![card, points],
                )?;
                super::PointsEffect::HoldConsumed
            } else {
                super::PointsEffect::HoldInvalid
            }
        } else if t.txn.kind == wenxiao_protocol::TxnKind::Refund {
            let original: Option<(i64, i64)> = match t.txn.refund_of_seq {
                Some(of) => tx
                    .query_row(
                        "SELECT amount_fen, points_used FROM txns \
                         WHERE device_id = ?1 AND seq = ?2 AND status = 1 AND kind = 1",
                        params![db_u64(t.device_id.get()), db_u64(of.get())],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?,
                None => None,
            };
            let back = original.map_or(wenxiao_protocol::Points(0), |(amount, used)| {
                crate::rules::points_returned(
                    wenxiao_protocol::Points(u32::try_from(used).unwrap_or(0)),
                    wenxiao_protocol::Fen(amount),
                    t.txn.amount_fen,
                )
            });
            if back.get() > 0 {
                tx.prepare_cached(
                    "INSERT INTO points_accounts (card_no, balance, held) VALUES (?1, ?2, 0) \
                     ON CONFLICT (card_no) DO UPDATE SET balance = balance + ?2",
                )?
                .execute(params![card, i64::from(back.get())])?;
            }
            super::PointsEffect::Returned(back)
        } else {
            let points = i64::from(ctx.sign_in_points.get());
            let n = tx
                .prepare_cached(
                    "INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
                     VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    card,
                    t.business_date.get(),
                    t.merchant_id.map_or(0, |m| m.0),
                    points
                ])?;
            if n == 1 {
                tx.prepare_cached(
                    "INSERT INTO points_accounts (card_no, balance, held) VALUES (?1, ?2, 0) \
                     ON CONFLICT (card_no) DO UPDATE SET balance = balance + ?2",
                )?
                .execute(params![card, points])?;
                super::PointsEffect::Awarded(ctx.sign_in_points)
            } else {
                super::PointsEffect::DailyLimit
            }
        };
        super::apply_points(answer, &effect);
        tx.prepare_cached(
            "UPDATE txns SET status = ?3, reason = ?4, subsidy_fen = ?5, points_awarded = ?6 \
             WHERE device_id = ?1 AND seq = ?2",
        )?
        .execute(params![
            db_u64(t.device_id.get()),
            db_u64(t.txn.seq.get()),
            answer.status.code(),
            answer.reason.code(),
            answer.subsidy_fen.get(),
            answer.points_awarded.get()
        ])?;
    }
    Ok(())
}

const SELECT_CREDIT: &str = "SELECT card_no, status, amount_fen, bound_device, \
    attempt_online_seq, attempt_host_time_ms FROM credits WHERE credit_id = ?1";

fn credit_view(
    tx: &rusqlite::Transaction<'_>,
    credit_id: wenxiao_protocol::CreditId,
) -> Result<Option<super::CreditView>, StoreError> {
    Ok(tx
        .query_row(SELECT_CREDIT, [db_u64(credit_id.get())], |r| {
            let seq: Option<i32> = r.get(4)?;
            let time: Option<i64> = r.get(5)?;
            Ok(super::CreditView {
                card_no: r.get(0)?,
                status: r.get(1)?,
                amount_fen: r.get(2)?,
                bound_device: r.get(3)?,
                attempt: seq.zip(time),
            })
        })
        .optional()?)
}

const SELECT_RUN: &str = "SELECT status, txn_count, subsidy_fen, credit_count, credit_fen \
    FROM clearing_runs WHERE business_date = ?1";

fn read_run(
    conn: &Connection,
    date: wenxiao_protocol::BusinessDate,
) -> Result<Option<super::ClearingSummary>, StoreError> {
    Ok(conn
        .query_row(SELECT_RUN, [date.get()], |r| {
            Ok(super::ClearingSummary {
                business_date: date,
                approved: r.get::<_, i16>(0)? == 2,
                txn_count: r.get(1)?,
                subsidy_fen: wenxiao_protocol::Fen(r.get(2)?),
                credit_count: r.get(3)?,
                credit_fen: wenxiao_protocol::Fen(r.get(4)?),
            })
        })
        .optional()?)
}

fn code<T>(v: i16, what: &str, f: fn(i16) -> Option<T>) -> Result<T, StoreError> {
    f(v).ok_or_else(|| StoreError::Corrupt(format!("{what} = {v}")))
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Self::with(&self.writer, |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
            )?;
            for (version, sql) in MIGRATIONS {
                let done: Option<i32> = tx
                    .query_row(
                        "SELECT version FROM schema_migrations WHERE version = ?1",
                        [version],
                        |r| r.get(0),
                    )
                    .optional()?;
                if done.is_none() {
                    tx.execute_batch(&super::sqlite_schema(sql))?;
                    tx.execute(
                        "INSERT INTO schema_migrations VALUES (?1, ?2)",
                        params![version, chrono::Utc::now().timestamp_millis()],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn ingest(
        &self,
        batch: &[IngestTxn],
        budget: &IngestCtx,
    ) -> Result<Vec<TxnAnswer>, StoreError> {
        let (batch, budget) = (batch.to_vec(), *budget);
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // A row's answer is `Some` once decided; a re-sent row's is never STORED, so
            // only new rows draw on the budget.
            let mut answers = batch
                .iter()
                .map(|t| ingest_one(&tx, t).map(Some))
                .collect::<Result<Vec<_>, _>>()?;
            apply_points_effects(&tx, &batch, &mut answers, &budget)?;
            apply_blacklist(&tx, &batch, &mut answers)?;
            apply_budget(&tx, &batch, &mut answers, &budget)?;
            tx.commit()?;
            Ok(answers.into_iter().flatten().collect())
        })
        .await
    }

    async fn budget_granted(&self, key: i32) -> Result<wenxiao_protocol::Fen, StoreError> {
        Self::with(&self.reader, move |conn| {
            let v: i64 = conn.query_row(
                "SELECT COALESCE(SUM(granted_fen), 0) FROM budget_shards WHERE budget_key = ?1",
                [key],
                |r| r.get(0),
            )?;
            Ok(wenxiao_protocol::Fen(v))
        })
        .await
    }

    async fn stored_seq(
        &self,
        device_id: DeviceId,
        floor: Option<Seq>,
    ) -> Result<Option<Seq>, StoreError> {
        Self::with(&self.reader, move |conn| {
            let device = db_u64(device_id.get());
            let tx = conn.transaction()?;
            let mut watermark = match floor {
                Some(f) => f.get(),
                None => tx
                    .query_row(
                        "SELECT stored_seq FROM device_seq_checkpoints WHERE device_id = ?1",
                        [device],
                        |r| r.get(0),
                    )
                    .optional()?
                    .map_or(0, super::from_db_u64),
            };
            loop {
                let page: Vec<i64> = tx
                    .prepare_cached(
                        "SELECT seq FROM txns WHERE device_id = ?1 AND seq > ?2 \
                         ORDER BY seq LIMIT ?3",
                    )?
                    .query_map(params![device, db_u64(watermark), SEQ_PAGE_ROWS], |r| {
                        r.get(0)
                    })?
                    .collect::<Result<_, _>>()?;
                let full = i64::try_from(page.len()).unwrap_or(i64::MAX) == SEQ_PAGE_ROWS;
                let (next, go_on) = advance_watermark(watermark, &page);
                watermark = next;
                if !go_on || !full {
                    break;
                }
            }
            Ok(Seq::new(watermark))
        })
        .await
    }

    async fn checkpoint_stored_seq(&self, device_id: DeviceId, seq: Seq) -> Result<(), StoreError> {
        Self::with(&self.writer, move |conn| {
            conn.execute(
                "INSERT INTO device_seq_checkpoints (device_id, stored_seq) VALUES (?1, ?2) \
                 ON CONFLICT (device_id) DO UPDATE SET \
                 stored_seq = MAX(stored_seq, excluded.stored_seq)",
                params![db_u64(device_id.get()), db_u64(seq.get())],
            )?;
            Ok(())
        })
        .await
    }

    async fn import_registry(&self, registry: &Registry) -> Result<(), StoreError> {
        let merchants: Vec<Merchant> = registry.merchants().into_iter().cloned().collect();
        let devices: Vec<Device> = registry.devices().into_iter().copied().collect();
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for m in &merchants {
                tx.prepare_cached(
                    "INSERT INTO merchants (merchant_id, name, category, district, active) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (merchant_id) DO UPDATE SET \
                     name = excluded.name, category = excluded.category, \
                     district = excluded.district, active = excluded.active",
                )?
                .execute(params![
                    m.merchant_id.0,
                    m.name,
                    m.category.code(),
                    m.district.code(),
                    m.active
                ])?;
            }
            for d in &devices {
                tx.prepare_cached(
                    "INSERT INTO devices (device_id, kind, merchant_id, operator, active) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (device_id) DO UPDATE SET \
                     kind = excluded.kind, merchant_id = excluded.merchant_id, \
                     operator = excluded.operator, active = excluded.active",
                )?
                .execute(params![
                    db_u64(d.device_id.get()),
                    i16::from(d.kind.code()),
                    d.merchant_id.map(|m| m.0),
                    d.operator.map(Operator::code),
                    d.active
                ])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn load_registry(&self) -> Result<Registry, StoreError> {
        Self::with(&self.reader, |conn| {
            let merchants = conn
                .prepare("SELECT merchant_id, name, category, district, active FROM merchants")?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i16>(2)?,
                        r.get::<_, i16>(3)?,
                        r.get::<_, bool>(4)?,
                    ))
                })?
                .map(|row| {
                    let (id, name, category, district, active) = row?;
                    Ok(Merchant {
                        merchant_id: MerchantId(id),
                        name,
                        category: code(category, "category", Category::from_code)?,
                        district: code(district, "district", District::from_code)?,
                        active,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let devices = conn
                .prepare("SELECT device_id, kind, merchant_id, operator, active FROM devices")?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i16>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i16>>(3)?,
                        r.get::<_, bool>(4)?,
                    ))
                })?
                .map(|row| {
                    let (id, kind, merchant, operator, active) = row?;
                    Ok(Device {
                        device_id: DeviceId(super::from_db_u64(id)),
                        kind: code(kind, "kind", |k| {
                            u8::try_from(k).ok().and_then(DeviceKind::from_code)
                        })?,
                        merchant_id: merchant.map(MerchantId),
                        operator: operator
                            .map(|o| code(o, "operator", Operator::from_code))
                            .transpose()?,
                        active,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Registry::new(merchants, devices).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Self::with(&self.reader, |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn clear_day(
        &self,
        date: wenxiao_protocol::BusinessDate,
        fen_per_point: i64,
        now_ms: i64,
    ) -> Result<super::ClearingSummary, StoreError> {
        use super::clearing_sql as q;
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(summary) = read_run(&tx, date)? {
                return Ok(summary);
            }
            tx.execute_batch(
                "CREATE TEMP TABLE clearing_nets (card_no INTEGER PRIMARY KEY, net_fen INTEGER NOT NULL)",
            )?;
            let values = [i64::from(date.get()), fen_per_point, now_ms];
            for sql in [q::DAY_NETS, q::CREDITS, q::DEBTS_PAID, q::DEBTS_OWED, q::MERCHANTS, q::STATISTICS, q::RUN] {
                let mut stmt = tx.prepare(&q::sqlite(sql))?;
                let n = stmt.parameter_count();
                stmt.execute(rusqlite::params_from_iter(values.iter().take(n)))?;
            }
            tx.execute_batch("DROP TABLE temp.clearing_nets")?;
            let summary = read_run(&tx, date)?
                .ok_or_else(|| StoreError::Corrupt("clearing run row missing".to_owned()))?;
            tx.commit()?;
            Ok(summary)
        })
        .await
    }

    async fn approve_day(
        &self,
        date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if read_run(&tx, date)?.is_none() {
                return Ok(false);
            }
            tx.execute(
                "UPDATE clearing_runs SET status = 2, approved_at_ms = ?2 \
                 WHERE business_date = ?1 AND status = 1",
                params![date.get(), now_ms],
            )?;
            tx.execute(
                "UPDATE credits SET status = 2 WHERE business_date = ?1 AND status = 1",
                [date.get()],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn clearing_report(
        &self,
        date: wenxiao_protocol::BusinessDate,
    ) -> Result<Option<super::ClearingReport>, StoreError> {
        use wenxiao_protocol::{CardNo, CreditId, Fen};
        Self::with(&self.reader, move |conn| {
            let Some(summary) = read_run(conn, date)? else {
                return Ok(None);
            };
            let d = date.get();
            let credits = conn
                .prepare(
                    "SELECT credit_id, card_no, amount_fen FROM credits \
                     WHERE business_date = ?1 ORDER BY credit_id",
                )?
                .query_map([d], |r| {
                    Ok(super::CreditRow {
                        credit_id: CreditId(super::from_db_u64(r.get(0)?)),
                        card_no: CardNo(super::from_db_u64(r.get(1)?)),
                        amount_fen: wenxiao_protocol::Fen(r.get(2)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let merchants = conn
                .prepare(
                    "SELECT merchant_id, txn_count, sales_fen, refunds_fen, points_fen, subsidy_fen \
                     FROM merchant_settlements WHERE business_date = ?1 ORDER BY merchant_id",
                )?
                .query_map([d], |r| {
                    Ok(super::MerchantSettlement {
                        merchant_id: MerchantId(r.get(0)?),
                        txn_count: r.get(1)?,
                        sales_fen: wenxiao_protocol::Fen(r.get(2)?),
                        refunds_fen: wenxiao_protocol::Fen(r.get(3)?),
                        points_fen: wenxiao_protocol::Fen(r.get(4)?),
                        subsidy_fen: wenxiao_protocol::Fen(r.get(5)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let statistics = conn
                .prepare(
                    "SELECT district, category, txn_count, sales_fen, subsidy_fen FROM day_statistics \
                     WHERE business_date = ?1 ORDER BY district, category",
                )?
                .query_map([d], |r| {
                    Ok(super::StatisticsRow {
                        district: r.get(0)?,
                        category: r.get(1)?,
                        txn_count: r.get(2)?,
                        sales_fen: wenxiao_protocol::Fen(r.get(3)?),
                        subsidy_fen: wenxiao_protocol::Fen(r.get(4)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let awards = conn
                .prepare(
                    "SELECT award_id, merchant_id, show_date, kind, amount_fen FROM organizer_awards \
                     WHERE status = 2 AND approved_date = ?1 ORDER BY award_id",
                )?
                .query_map([d], |r| {
                    Ok(super::AwardRow {
                        award_id: r.get(0)?,
                        merchant_id: MerchantId(r.get(1)?),
                        show_date: r.get(2)?,
                        kind: r.get(3)?,
                        amount_fen: wenxiao_protocol::Fen(r.get(4)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let loaded: (i64, i64) = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(amount_fen), 0) FROM credits \
                 WHERE business_date = ?1 AND status = 3",
                [d],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Some(super::ClearingReport {
                summary,
                credits,
                merchants,
                statistics,
                awards,
                loaded: (loaded.0, Fen(loaded.1)),
            }))
        })
        .await
    }

    async fn create_hold(&self, r: super::HoldRequest) -> Result<super::HoldOutcome, StoreError> {
        use wenxiao_protocol::{HoldId, Points};
        Self::with(&self.writer, move |conn| {
            let card = db_u64(r.card_no.get());
            let points = i64::from(r.points.get());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO points_accounts (card_no, balance, held) VALUES (?1, 0, 0) \
                 ON CONFLICT DO NOTHING",
                [card],
            )?;
            release_expired_holds(&tx, card, r.now_ms)?;
            let free = |v: i64| Points(u32::try_from(v.max(0)).unwrap_or(u32::MAX));
            let held: Option<i64> = tx
                .query_row(
                    "UPDATE points_accounts SET held = held + ?2 \
                     WHERE card_no = ?1 AND balance - held >= ?2 RETURNING balance - held",
                    params![card, points],
                    |row| row.get(0),
                )
                .optional()?;
            let outcome = match held {
                None => {
                    let available: i64 = tx.query_row(
                        "SELECT balance - held FROM points_accounts WHERE card_no = ?1",
                        [card],
                        |row| row.get(0),
                    )?;
                    super::HoldOutcome::Insufficient {
                        available: free(available),
                    }
                }
                Some(available) => {
                    let id: i64 = tx.query_row(
                        "INSERT INTO points_holds (card_no, device_id, points, purchase_fen, \
                         expires_at_ms, status) VALUES (?1, ?2, ?3, ?4, ?5, 1) RETURNING hold_id",
                        params![
                            card,
                            db_u64(r.device_id.get()),
                            points,
                            r.purchase_fen.get(),
                            r.expires_at_ms
                        ],
                        |row| row.get(0),
                    )?;
                    let hold_id = HoldId::new(super::from_db_u64(id))
                        .ok_or_else(|| StoreError::Corrupt("hold id 0".to_owned()))?;
                    super::HoldOutcome::Approved {
                        hold_id,
                        available: free(available),
                    }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn card_presented(
        &self,
        seen: super::CardSeen,
    ) -> Result<Vec<wenxiao_protocol::OfferedCredit>, StoreError> {
        use super::credit_status::{LOADED, RELEASED};
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let card = db_u64(seen.card_no.get());
            let now_seq = i32::from(seen.online_seq.get());
            let doubts: Vec<(i64, i32, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT credit_id, attempt_online_seq, attempt_host_time_ms FROM credits \
                     WHERE card_no = ?1 AND status = 2 AND attempt_online_seq IS NOT NULL",
                )?
                .query_map([card], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut in_doubt = false;
            for (id, attempt, attempt_at) in doubts {
                let taken: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM txns WHERE card_no = ?1 AND counter_kind = 2 \
                     AND card_counter = ?2 AND status = 1)",
                    params![card, i64::from(attempt) + 1],
                    |r| r.get(0),
                )?;
                match super::settle(attempt, attempt_at.unwrap_or(0), now_seq, seen.now_ms, taken) {
                    super::Settlement::Loaded => {
                        tx.execute(
                            "UPDATE credits SET status = ?2, settled_at_ms = ?3 WHERE credit_id = ?1",
                            params![id, LOADED, seen.now_ms],
                        )?;
                    }
                    super::Settlement::Void => {
                        tx.execute(
                            "UPDATE credits SET attempt_online_seq = NULL, attempt_host_time_ms = NULL, \
                             bound_device = NULL, bound_at_ms = NULL WHERE credit_id = ?1",
                            [id],
                        )?;
                    }
                    super::Settlement::Unknown => in_doubt = true,
                }
            }
            let mut offered = Vec::new();
            if !in_doubt {
                let device = db_u64(seen.device_id.get());
                let rows: Vec<(i64, i64, u32)> = tx
                    .prepare_cached(
                        "SELECT credit_id, amount_fen, business_date FROM credits \
                         WHERE card_no = ?1 AND status = ?2 AND attempt_online_seq IS NULL \
                         AND (bound_device IS NULL OR bound_device = ?3 OR bound_at_ms + ?5 <= ?4) \
                         ORDER BY credit_id LIMIT ?6",
                    )?
                    .query_map(
                        params![card, RELEASED, device, seen.now_ms, seen.binding_timeout_ms, 16],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                for (id, amount, date) in rows {
                    tx.execute(
                        "UPDATE credits SET bound_device = ?2, bound_at_ms = ?3 WHERE credit_id = ?1",
                        params![id, device, seen.now_ms],
                    )?;
                    offered.push(wenxiao_protocol::OfferedCredit {
                        credit_id: wenxiao_protocol::CreditId(super::from_db_u64(id)),
                        amount_fen: wenxiao_protocol::Fen(amount),
                        business_date: wenxiao_protocol::BusinessDate::new(date)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    });
                }
            }
            tx.commit()?;
            Ok(offered)
        })
        .await
    }

    async fn begin_load<F>(
        &self,
        r: super::LoadInitRequest,
        mac1_ok: F,
    ) -> Result<super::LoadDecision, StoreError>
    where
        F: FnOnce(wenxiao_protocol::Fen) -> bool + Send + 'static,
    {
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let check = super::begin_check(credit_view(&tx, r.credit_id)?, &r);
            let other_in_doubt = matches!(check, super::BeginCheck::Fresh { .. })
                && tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM credits WHERE card_no = ?1 AND status = 2 \
                     AND attempt_online_seq IS NOT NULL AND credit_id != ?2)",
                    params![db_u64(r.card_no.get()), db_u64(r.credit_id.get())],
                    |row| row.get::<_, bool>(0),
                )?;
            let (decision, record) =
                super::begin_decide(check, other_in_doubt, r.host_time_ms, mac1_ok);
            if record {
                tx.execute(
                    "UPDATE credits SET attempt_online_seq = ?2, attempt_host_time_ms = ?3 \
                     WHERE credit_id = ?1",
                    params![
                        db_u64(r.credit_id.get()),
                        r.online_seq.get(),
                        r.host_time_ms
                    ],
                )?;
            }
            tx.commit()?;
            Ok(decision)
        })
        .await
    }

    async fn finish_load<F>(
        &self,
        r: super::ResultReport,
        tac_ok: F,
    ) -> Result<(wenxiao_protocol::ResultStatus, wenxiao_protocol::Reason), StoreError>
    where
        F: FnOnce(&super::LoadAttempt) -> bool + Send + 'static,
    {
        use super::FinishStep;
        use super::credit_status::{LOADED, PARKED};
        use wenxiao_protocol::{Reason, ResultStatus};
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let id = db_u64(r.credit_id.get());
            let answer = match super::finish_step(credit_view(&tx, r.credit_id)?, &r) {
                FinishStep::Answer(status, reason) => (status, reason),
                FinishStep::VerifyTac(attempt) => {
                    if tac_ok(&attempt) {
                        tx.execute(
                            "UPDATE credits SET status = ?2, settled_at_ms = ?3 WHERE credit_id = ?1",
                            params![id, LOADED, r.now_ms],
                        )?;
                        (ResultStatus::Recorded, Reason::None)
                    } else {
                        (ResultStatus::Rejected, Reason::BadMac)
                    }
                }
                FinishStep::Unbind => {
                    tx.execute(
                        "UPDATE credits SET bound_device = NULL, bound_at_ms = NULL WHERE credit_id = ?1",
                        [id],
                    )?;
                    (ResultStatus::Recorded, Reason::None)
                }
                FinishStep::Park => {
                    tx.execute(
                        "UPDATE credits SET status = ?2, settled_at_ms = ?3 WHERE credit_id = ?1",
                        params![id, PARKED, r.now_ms],
                    )?;
                    (ResultStatus::Recorded, Reason::None)
                }
            };
            tx.commit()?;
            Ok(answer)
        })
        .await
    }

    async fn claim_pushes(
        &self,
        c: super::PushClaim,
    ) -> Result<Vec<wenxiao_protocol::CreditPush>, StoreError> {
        use super::credit_status::RELEASED;
        Self::with(&self.writer, move |conn| {
            let device = db_u64(c.device_id.get());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows: Vec<(i64, i64, i64, u32)> = tx
                .prepare_cached(
                    "SELECT credit_id, card_no, amount_fen, business_date FROM credits \
                     WHERE status = ?1 AND card_no BETWEEN ?2 AND ?3 \
                     AND (bound_device IS NULL \
                          OR (bound_device = ?4 AND ?5) \
                          OR (attempt_online_seq IS NULL AND bound_device <> ?4 \
                              AND bound_at_ms + ?7 <= ?6)) \
                     ORDER BY credit_id LIMIT ?8",
                )?
                .query_map(
                    params![
                        RELEASED,
                        db_u64(c.cards_from.get()),
                        db_u64(c.cards_to.get()),
                        device,
                        c.include_bound,
                        c.now_ms,
                        c.binding_timeout_ms,
                        c.limit
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?
                .collect::<Result<_, _>>()?;
            let mut pushes = Vec::with_capacity(rows.len());
            for (id, card, amount, date) in rows {
                tx.execute(
                    "UPDATE credits SET bound_device = ?2, bound_at_ms = ?3 WHERE credit_id = ?1",
                    params![id, device, c.now_ms],
                )?;
                pushes.push(wenxiao_protocol::CreditPush {
                    credit_id: wenxiao_protocol::CreditId(super::from_db_u64(id)),
                    card_no: wenxiao_protocol::CardNo(super::from_db_u64(card)),
                    amount_fen: wenxiao_protocol::Fen(amount),
                    business_date: wenxiao_protocol::BusinessDate::new(date)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                });
            }
            tx.commit()?;
            Ok(pushes)
        })
        .await
    }

    async fn award_activity(
        &self,
        a: super::Activity,
    ) -> Result<super::ActivityOutcome, StoreError> {
        use super::ActivityOutcome;
        Self::with(&self.writer, move |conn| {
            let card = db_u64(a.card_no.get());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let signed_in: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM txns WHERE card_no = ?1 AND counter_kind = 1 \
                 AND status = 1 AND kind = 2 AND merchant_id = ?2 AND business_date = ?3)",
                params![card, a.venue.0, a.day.get()],
                |r| r.get(0),
            )?;
            if !signed_in {
                return Ok(ActivityOutcome::NoSignIn);
            }
            let points = i64::from(a.points.get());
            let n = tx.execute(
                "INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![card, a.day.get(), a.kind, a.venue.0, points],
            )?;
            if n == 0 {
                return Ok(ActivityOutcome::DailyLimit);
            }
            let balance: i64 = tx.query_row(
                "INSERT INTO points_accounts (card_no, balance, held) VALUES (?1, ?2, 0) \
                 ON CONFLICT (card_no) DO UPDATE SET balance = balance + ?2 RETURNING balance",
                params![card, points],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(ActivityOutcome::Awarded(wenxiao_protocol::Points(
                u32::try_from(balance).unwrap_or(u32::MAX),
            )))
        })
        .await
    }

    async fn set_blacklisted(
        &self,
        card_no: wenxiao_protocol::CardNo,
        blacklisted: bool,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Self::with(&self.writer, move |conn| {
            let card = db_u64(card_no.get());
            if blacklisted {
                conn.execute(
                    "INSERT INTO card_blacklist (card_no, reason, added_at_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (card_no) DO UPDATE SET reason = excluded.reason",
                    params![card, reason, now_ms],
                )?;
            } else {
                conn.execute("DELETE FROM card_blacklist WHERE card_no = ?1", [card])?;
            }
            Ok(())
        })
        .await
    }

    async fn record_award(&self, a: super::AwardInput) -> Result<i64, StoreError> {
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let id: i64 = tx.query_row(
                "SELECT COALESCE(MAX(award_id), 0) + 1 FROM organizer_awards",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO organizer_awards (award_id, merchant_id, show_date, kind, amount_fen, \
                 evidence, status, recorded_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
                params![
                    id,
                    a.merchant_id.0,
                    a.show_date.get(),
                    a.kind,
                    a.amount_fen.get(),
                    a.evidence,
                    a.now_ms
                ],
            )?;
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    async fn approve_award(
        &self,
        award_id: i64,
        budget: IngestCtx,
        approved_date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<super::AwardApproval, StoreError> {
        use super::AwardApproval;
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<(i16, i32, i64)> = tx
                .query_row(
                    "SELECT status, show_date, amount_fen FROM organizer_awards WHERE award_id = ?1",
                    [award_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((status, show_date, amount)) = row else {
                return Ok(AwardApproval::Unknown);
            };
            if status == 2 {
                return Ok(AwardApproval::AlreadyApproved);
            }
            let m = take_budget(&tx, show_date / 100, budget.monthly_cap, budget.shard, amount)?;
            let p = take_budget(&tx, PROGRAMME_BUDGET_KEY, budget.programme_cap, budget.shard, amount)?;
            if m < amount || p < amount {
                // Dropping the transaction rolls back what was taken.
                return Ok(AwardApproval::BudgetExhausted);
            }
            tx.execute(
                "UPDATE organizer_awards SET status = 2, approved_at_ms = ?2, approved_date = ?3 \
                 WHERE award_id = ?1",
                params![award_id, now_ms, approved_date.get()],
            )?;
            tx.commit()?;
            Ok(AwardApproval::Approved)
        })
        .await
    }

    async fn latest_release_ms(&self) -> Result<i64, StoreError> {
        Self::with(&self.reader, |conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(MAX(approved_at_ms), 0) FROM clearing_runs",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn credit_state(
        &self,
        credit_id: wenxiao_protocol::CreditId,
    ) -> Result<Option<(i16, wenxiao_protocol::Fen)>, StoreError> {
        Self::with(&self.reader, move |conn| {
            Ok(conn
                .query_row(
                    "SELECT status, amount_fen FROM credits WHERE credit_id = ?1",
                    [db_u64(credit_id.get())],
                    |r| Ok((r.get(0)?, wenxiao_protocol::Fen(r.get(1)?))),
                )
                .optional()?)
        })
        .await
    }

    async fn points_balance(
        &self,
        card_no: wenxiao_protocol::CardNo,
    ) -> Result<(wenxiao_protocol::Points, wenxiao_protocol::Points), StoreError> {
        Self::with(&self.reader, move |conn| {
            let row: Option<(i64, i64)> = conn
                .query_row(
                    "SELECT balance, held FROM points_accounts WHERE card_no = ?1",
                    [db_u64(card_no.get())],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let p = |v: i64| wenxiao_protocol::Points(u32::try_from(v.max(0)).unwrap_or(u32::MAX));
            Ok(row.map_or((p(0), p(0)), |(b, h)| (p(b), p(h))))
        })
        .await
    }

    async fn count_txns(&self, device_id: DeviceId) -> Result<(u64, u64), StoreError> {
        Self::with(&self.reader, move |conn| {
            let (stored, rejected): (i64, i64) = conn.query_row(
                "SELECT COALESCE(SUM(status = 1), 0), COALESCE(SUM(status = 3), 0) \
                 FROM txns WHERE device_id = ?1",
                [db_u64(device_id.get())],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((
                u64::try_from(stored).unwrap_or(0),
                u64::try_from(rejected).unwrap_or(0),
            ))
        })
        .await
    }

    async fn audit(&self) -> Result<super::AuditFigures, StoreError> {
        Self::with(&self.reader, |conn| {
            use super::audit_sql;
            let mut figures = super::AuditFigures::default();
            let mut stmt = conn.prepare(audit_sql::DEVICES)?;
            let rows = stmt.query_map([], |r| {
                Ok(super::DeviceAudit {
                    device_id: DeviceId(super::from_db_u64(r.get(0)?)),
                    rows: r.get(1)?,
                    min_seq: r.get(2)?,
                    max_seq: r.get(3)?,
                    stored: r.get(4)?,
                    subsidy_fen: wenxiao_protocol::Fen(r.get(5)?),
                })
            })?;
            for d in rows {
                figures.devices.push(d?);
            }
            let (released, loaded) = conn.query_row(audit_sql::CREDITS, [], |r| {
                Ok((
                    (r.get(0)?, wenxiao_protocol::Fen(r.get(1)?)),
                    (r.get(2)?, wenxiao_protocol::Fen(r.get(3)?)),
                ))
            })?;
            figures.released = released;
            figures.loaded = loaded;
            let mut stmt = conn.prepare(audit_sql::BUDGETS)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, wenxiao_protocol::Fen(r.get(1)?))))?;
            for b in rows {
                figures.budgets.push(b?);
            }
            Ok(figures)
        })
        .await
    }
}
