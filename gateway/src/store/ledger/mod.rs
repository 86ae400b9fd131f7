//! The ledger: every store operation written once, over [`Backend`]. PostgreSQL and
//! SQLite differ only in their backend (`store/pg.rs`, `store/lite.rs`).
//!
//! Lock order, the same in every operation that takes more than one lock (PostgreSQL;
//! SQLite's single writer takes the whole database instead):
//! 1. budget shards: months in ascending order, then the programme; within a budget, a
//!    writer's own shard alone (fast path, inside a savepoint that is rolled back when
//!    it finds no room, so a failed attempt keeps no lock), or every shard in shard order;
//! 2. a card's credits, all of them, in credit-id order, before any one is changed.

// Defined before the modules, so that they can use it.
/// Runs `$op` (an expression producing a fresh future each time) again while it fails
/// with an error the backend calls retryable, at most [`TXN_RETRIES_MAX`] more times.
macro_rules! retried {
    ($op:expr) => {{
        let mut attempt = 0;
        loop {
            match $op.await {
                Err(e) if B::retryable(&e) && attempt < TXN_RETRIES_MAX => {
                    attempt += 1;
                    let text = e.to_string();
                    let cause = if text.contains("deadlock") {
                        "deadlock"
                    } else if text.contains("serializ") {
                        "serialization"
                    } else if text.contains("locked") || text.contains("busy") {
                        "busy"
                    } else {
                        "other"
                    };
                    metrics::counter!(crate::metrics::STORE_RETRIES_TOTAL, "cause" => cause)
                        .increment(1);
                    tracing::debug!(error = %e, attempt, cause, "transaction retried");
                }
                other => break other,
            }
        }
    }};
}

mod audit;
mod budget;
mod clearing;
mod cluster;
mod console;
mod credits;
mod hotlist;
mod ingest;
mod points;
mod risk;

use super::backend::{AnyBackend, Backend, Sql, Step, Tx, TxMode, params};
use super::lite::Lite;
use super::pg::Pg;
use super::{
    AuditFigures, DeviceAudit, MIGRATIONS, Store, StoreAudit, StoreError, db_u64, from_db_u64,
};
use crate::registry::{Category, Device, District, Merchant, MerchantId, Operator, Registry};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wenxiao_protocol::{CardNo, CreditId, DeviceId, DeviceKind, Fen, Points, Seq};

/// The store over one backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger<B> {
    backend: B,
    /// Budget keys whose shard rows are known to be committed, with the cap they were
    /// last set to, so neither is done again at every batch.
    budgets: Arc<Mutex<HashMap<i32, Fen>>>,
    /// The highest ledger-clock value this instance has seen (`Store::observed_order`).
    clock_seen: Arc<std::sync::atomic::AtomicI64>,
}

/// The PostgreSQL store.
pub type PgStore = Ledger<Pg>;
/// The embedded SQLite store.
pub type SqliteStore = Ledger<Lite>;
/// The store chosen by configuration.
pub type AnyStore = Ledger<AnyBackend>;

impl<B: Backend> Ledger<B> {
    fn new(backend: B) -> Self {
        Self {
            backend,
            budgets: Arc::default(),
            clock_seen: Arc::default(),
        }
    }
}

impl Ledger<Pg> {
    /// A pool of at most `pool_size_max` connections to `url`; waiting for one is bounded
    /// by `pool_wait_ms`. Connections are opened lazily, on the runtime that first needs
    /// them: callers keep all store work on one dedicated runtime.
    pub fn connect(url: &str, pool_size_max: usize, pool_wait_ms: u64) -> Result<Self, StoreError> {
        Self::connect_with(
            url,
            pool_size_max,
            pool_wait_ms,
            &super::PgLimits::default(),
        )
    }

    /// As [`Ledger::connect`], with the connections' server-side bounds.
    pub fn connect_with(
        url: &str,
        pool_size_max: usize,
        pool_wait_ms: u64,
        limits: &super::PgLimits,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(Pg::connect(
            url,
            pool_size_max,
            pool_wait_ms,
            limits,
        )?))
    }
}

impl Ledger<Lite> {
    /// Opens (creating if needed) the database file and its directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(Lite::open(path)?))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.backend.path()
    }
}

impl From<PgStore> for AnyStore {
    fn from(s: PgStore) -> Self {
        Self {
            backend: AnyBackend::Postgres(s.backend),
            budgets: s.budgets,
            clock_seen: s.clock_seen,
        }
    }
}

impl From<SqliteStore> for AnyStore {
    fn from(s: SqliteStore) -> Self {
        Self {
            backend: AnyBackend::Sqlite(s.backend),
            budgets: s.budgets,
            clock_seen: s.clock_seen,
        }
    }
}

impl AnyStore {
    /// Whether this is the PostgreSQL store (which notifies; the embedded one is polled).
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, AnyBackend::Postgres(_))
    }
}

/// Times a transaction aborted by a deadlock or a serialization failure is run again.
const TXN_RETRIES_MAX: u32 = 5;

/// Serialises migrations across gateway nodes sharing one database.
const MIGRATION_LOCK: Sql = Sql::pg_only("SELECT pg_advisory_xact_lock(1465384961)");

fn date_param(date: wenxiao_protocol::BusinessDate) -> i32 {
    i32::try_from(date.get()).unwrap_or(i32::MAX)
}

fn points_of(v: i64) -> Points {
    Points(u32::try_from(v.max(0)).unwrap_or(u32::MAX))
}

fn code<T>(v: i16, what: &str, f: impl FnOnce(i16) -> Option<T>) -> Result<T, StoreError> {
    f(v).ok_or_else(|| StoreError::Corrupt(format!("{what} = {v}")))
}

impl<B: Backend> Store for Ledger<B> {
    fn observed_order(&self) -> i64 {
        self.clock_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(&MIGRATION_LOCK, &[]).await?;
        tx.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version INTEGER PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .await?;
        for &(version, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    &Sql::both("SELECT version FROM schema_migrations WHERE version = $1"),
                    params![version],
                )
                .await?;
            if done.is_none() {
                tx.batch(&self.backend.schema_text(sql)).await?;
                tx.execute(
                    &Sql::both("INSERT INTO schema_migrations VALUES ($1, $2)"),
                    params![version, chrono::Utc::now().timestamp_millis()],
                )
                .await?;
            }
        }
        // A node starting now has seen everything recorded so far.
        let clock = tx
            .query_one(
                &Sql::both("SELECT value FROM ledger_clock WHERE id = 1"),
                &[],
            )
            .await?
            .int(0)?;
        tx.commit().await?;
        self.clock_seen
            .fetch_max(clock, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn ingest(
        &self,
        batch: &[super::IngestTxn],
        ctx: &super::IngestCtx,
    ) -> Result<Vec<super::TxnAnswer>, StoreError> {
        let answers = self.ingest_leased(batch, ctx).await?;
        answers
            .into_iter()
            .zip(batch)
            .map(|(a, t)| {
                a.ok_or(StoreError::Fenced {
                    device: t.device_id,
                    epoch: t.lease_epoch.unwrap_or(0),
                    current: None,
                })
            })
            .collect()
    }

    async fn ingest_leased(
        &self,
        batch: &[super::IngestTxn],
        ctx: &super::IngestCtx,
    ) -> Result<Vec<Option<super::TxnAnswer>>, StoreError> {
        // Concurrent writers lock conflicting rows in orders PostgreSQL can find circular
        // (card counters, points accounts); it then aborts one transaction, run again.
        retried!(self.ingest_once(batch, ctx))
    }

    async fn stored_seq(
        &self,
        device_id: DeviceId,
        floor: Option<Seq>,
    ) -> Result<Option<Seq>, StoreError> {
        // The HELLO path's walk (`welcome_batch`), for one device.
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let key = (device_id, floor);
        Ok(cluster::stored_seqs(&mut tx, &[key])
            .await?
            .get(&key)
            .copied()
            .flatten())
    }

    async fn checkpoint_stored_seq(&self, device_id: DeviceId, seq: Seq) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(
            &Sql::both(
                "INSERT INTO device_seq_checkpoints (device_id, stored_seq) VALUES ($1, $2) \
                 ON CONFLICT (device_id) DO UPDATE SET stored_seq = \
                 GREATEST(device_seq_checkpoints.stored_seq, excluded.stored_seq)",
            ),
            params![db_u64(device_id.get()), db_u64(seq.get())],
        )
        .await?;
        tx.commit().await
    }

    async fn import_registry(&self, registry: &Registry) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let merchant = Sql::both(
            "INSERT INTO merchants (merchant_id, name, category, district, active, lat_e6, \
             lon_e6) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (merchant_id) DO UPDATE SET \
             name = excluded.name, category = excluded.category, \
             district = excluded.district, active = excluded.active, \
             lat_e6 = excluded.lat_e6, lon_e6 = excluded.lon_e6",
        );
        for m in registry.merchants() {
            tx.execute(
                &merchant,
                params![
                    m.merchant_id.0,
                    m.name.as_str(),
                    m.category.code(),
                    m.district.code(),
                    m.active,
                    m.place.map(|p| p.0),
                    m.place.map(|p| p.1)
                ],
            )
            .await?;
        }
        let device = Sql::both(
            "INSERT INTO devices (device_id, kind, merchant_id, operator, active) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE SET \
             kind = excluded.kind, merchant_id = excluded.merchant_id, \
             operator = excluded.operator, active = excluded.active",
        );
        for d in registry.devices() {
            tx.execute(
                &device,
                params![
                    db_u64(d.device_id.get()),
                    d.kind.code(),
                    d.merchant_id.map(|m| m.0),
                    d.operator.map(Operator::code),
                    d.active
                ],
            )
            .await?;
        }
        tx.commit().await
    }

    async fn load_registry(&self) -> Result<Registry, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let mut merchants = Vec::new();
        for r in tx
            .query(
                &Sql::both(
                    "SELECT merchant_id, name, category, district, active, lat_e6, lon_e6 \
                     FROM merchants",
                ),
                &[],
            )
            .await?
        {
            merchants.push(Merchant {
                merchant_id: MerchantId(r.int(0)?),
                name: r.text(1)?,
                category: code(r.get(2)?, "category", Category::from_code)?,
                district: code(r.get(3)?, "district", District::from_code)?,
                active: r.bool(4)?,
                place: r.opt::<i32>(5)?.zip(r.opt::<i32>(6)?),
            });
        }
        let mut devices = Vec::new();
        for r in tx
            .query(
                &Sql::both("SELECT device_id, kind, merchant_id, operator, active FROM devices"),
                &[],
            )
            .await?
        {
            devices.push(Device {
                device_id: DeviceId(from_db_u64(r.int(0)?)),
                kind: code(r.get(1)?, "kind", |k| {
                    u8::try_from(k).ok().and_then(DeviceKind::from_code)
                })?,
                merchant_id: r.opt_int(2)?.map(MerchantId),
                operator: r
                    .opt::<i16>(3)?
                    .map(|o| code(o, "operator", Operator::from_code))
                    .transpose()?,
                active: r.bool(4)?,
            });
        }
        Registry::new(merchants, devices).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_one(&Sql::both("SELECT 1"), &[]).await?;
        Ok(())
    }

    async fn clear_day(
        &self,
        date: wenxiao_protocol::BusinessDate,
        fen_per_point: i64,
        now_ms: i64,
    ) -> Result<super::ClearingSummary, StoreError> {
        clearing::clear_day(&self.backend, date, fen_per_point, now_ms).await
    }

    async fn approve_day(
        &self,
        date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        clearing::approve_day(&self.backend, date, now_ms).await
    }

    async fn clearing_report(
        &self,
        date: wenxiao_protocol::BusinessDate,
    ) -> Result<Option<super::ClearingReport>, StoreError> {
        clearing::report(&self.backend, date).await
    }

    async fn create_hold(&self, r: super::HoldRequest) -> Result<super::HoldOutcome, StoreError> {
        points::create_hold(&self.backend, r).await
    }

    async fn card_presented(
        &self,
        seen: super::CardSeen,
    ) -> Result<Vec<wenxiao_protocol::OfferedCredit>, StoreError> {
        retried!(credits::card_presented(
            &self.backend,
            &self.clock_seen,
            seen
        ))
    }

    async fn begin_load<F>(
        &self,
        r: super::LoadInitRequest,
        mac1_ok: F,
    ) -> Result<super::LoadDecision, StoreError>
    where
        F: FnOnce(Fen) -> bool + Send + 'static,
    {
        credits::begin_load(&self.backend, &self.clock_seen, r, mac1_ok).await
    }

    async fn finish_load<F>(
        &self,
        r: super::ResultReport,
        tac_ok: F,
    ) -> Result<(wenxiao_protocol::ResultStatus, wenxiao_protocol::Reason), StoreError>
    where
        F: FnOnce(&super::LoadAttempt) -> bool + Send + 'static,
    {
        credits::finish_load(&self.backend, r, tac_ok).await
    }

    async fn claim_pushes(
        &self,
        c: super::PushClaim,
    ) -> Result<Vec<wenxiao_protocol::CreditPush>, StoreError> {
        credits::claim_pushes(&self.backend, c).await
    }

    async fn latest_release_ms(&self) -> Result<i64, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_one(
            &Sql::both(
                "SELECT CAST(COALESCE(MAX(approved_at_ms), 0) AS BIGINT) FROM clearing_runs",
            ),
            &[],
        )
        .await?
        .int(0)
    }

    async fn award_activity(
        &self,
        a: super::Activity,
    ) -> Result<super::ActivityOutcome, StoreError> {
        points::award_activity(&self.backend, a).await
    }

    async fn change_hotlist(
        &self,
        change: super::HotlistChange,
    ) -> Result<super::HotlistChanged, StoreError> {
        hotlist::change(&self.backend, change).await
    }

    async fn hotlist_head(&self) -> Result<super::HotlistHead, StoreError> {
        hotlist::head(&self.backend).await
    }

    async fn hotlist_full(&self) -> Result<(super::HotlistHead, Vec<CardNo>), StoreError> {
        hotlist::full(&self.backend).await
    }

    async fn hotlist_changes(
        &self,
        after: u32,
        upto: u32,
    ) -> Result<Option<Vec<super::HotlistVersionChanges>>, StoreError> {
        hotlist::changes(&self.backend, after, upto).await
    }

    async fn record_hotlist_acks(&self, acks: Vec<(DeviceId, u32, i64)>) -> Result<(), StoreError> {
        hotlist::record_acks(&self.backend, &acks).await
    }

    async fn verify_audit(&self) -> Result<crate::audit::Verdict, StoreError> {
        audit::verify(&self.backend).await
    }

    async fn set_blacklisted(
        &self,
        card_no: CardNo,
        blacklisted: bool,
        reason: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (add, remove) = if blacklisted {
            (vec![(card_no, reason)], Vec::new())
        } else {
            (Vec::new(), vec![card_no])
        };
        let change = super::HotlistChange {
            add,
            remove,
            source: "single card".to_owned(),
            now_ms,
            keep_versions: crate::config::HotlistConfig::default().delta_versions_kept,
        };
        hotlist::change(&self.backend, change).await.map(|_| ())
    }

    async fn record_award(&self, a: super::AwardInput) -> Result<i64, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        // Awards are few: ids from the table's maximum, under a lock of the table.
        tx.execute(
            &Sql::pg_only("LOCK TABLE organizer_awards IN EXCLUSIVE MODE"),
            &[],
        )
        .await?;
        let id = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(MAX(award_id), 0) + 1 AS BIGINT) FROM organizer_awards",
                ),
                &[],
            )
            .await?
            .int(0)?;
        tx.execute(
            &Sql::both(
                "INSERT INTO organizer_awards (award_id, merchant_id, show_date, kind, amount_fen, \
                 evidence, status, recorded_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 1, $7)",
            ),
            params![
                id,
                a.merchant_id.0,
                date_param(a.show_date),
                a.kind,
                a.amount_fen.get(),
                a.evidence,
                a.now_ms
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn approve_award(
        &self,
        award_id: i64,
        ctx: super::IngestCtx,
        approved_date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<super::AwardApproval, StoreError> {
        retried!(self.approve_award_once(award_id, &ctx, approved_date, now_ms))
    }
}

impl<B: Backend> Ledger<B> {
    async fn approve_award_once(
        &self,
        award_id: i64,
        ctx: &super::IngestCtx,
        approved_date: wenxiao_protocol::BusinessDate,
        now_ms: i64,
    ) -> Result<super::AwardApproval, StoreError> {
        use super::AwardApproval;
        let select = Sql::both(
            "SELECT status, show_date, amount_fen FROM organizer_awards \
             WHERE award_id = $1 FOR UPDATE",
        );
        // The budget rows must exist before the transaction (see `ensure_budgets`).
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let Some(row) = tx.query_opt(&select, params![award_id]).await? else {
            return Ok(AwardApproval::Unknown);
        };
        drop(tx);
        let month = row.get::<i32>(1)? / 100;
        self.ensure_budgets(&[month], ctx).await?;
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let Some(row) = tx.query_opt(&select, params![award_id]).await? else {
            return Ok(AwardApproval::Unknown);
        };
        if row.get::<i16>(0)? == 2 {
            return Ok(AwardApproval::AlreadyApproved);
        }
        let amount = row.int(2)?;
        // Month first, then the programme: the writers' lock order. All or nothing: the
        // rollback of a refused approval returns whatever was taken.
        let mut pending = ingest::Pending::default();
        let m = budget::take(&mut tx, &mut pending, month, ctx.shard, amount).await?;
        let p = budget::take(
            &mut tx,
            &mut pending,
            super::PROGRAMME_BUDGET_KEY,
            ctx.shard,
            amount,
        )
        .await?;
        if m < amount || p < amount {
            return Ok(AwardApproval::BudgetExhausted);
        }
        pending.defer(Step::One(
            &APPROVE_AWARD,
            vec![
                award_id.into(),
                now_ms.into(),
                date_param(approved_date).into(),
            ],
        ));
        pending.commit(tx).await?;
        Ok(AwardApproval::Approved)
    }
}

const APPROVE_AWARD: Sql = Sql::both(
    "UPDATE organizer_awards SET status = 2, approved_at_ms = $2, approved_date = $3 \
     WHERE award_id = $1",
);

impl<B: Backend> StoreAudit for Ledger<B> {
    async fn budget_granted(&self, key: i32) -> Result<Fen, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        Ok(Fen(tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(SUM(granted_fen), 0) AS BIGINT) FROM budget_shards \
                     WHERE budget_key = $1",
                ),
                params![key],
            )
            .await?
            .int(0)?))
    }

    async fn credit_state(&self, credit_id: CreditId) -> Result<Option<(i16, Fen)>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both("SELECT status, amount_fen FROM credits WHERE credit_id = $1"),
            params![db_u64(credit_id.get())],
        )
        .await?
        .map(|r| Ok((r.get(0)?, Fen(r.int(1)?))))
        .transpose()
    }

    async fn points_balance(&self, card_no: CardNo) -> Result<(Points, Points), StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let row = tx
            .query_opt(
                &Sql::both("SELECT balance, held FROM points_accounts WHERE card_no = $1"),
                params![db_u64(card_no.get())],
            )
            .await?;
        match row {
            Some(r) => Ok((points_of(r.int(0)?), points_of(r.int(1)?))),
            None => Ok((Points(0), Points(0))),
        }
    }

    async fn count_txns(&self, device_id: DeviceId) -> Result<(u64, u64), StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let r = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(SUM(CASE WHEN status = 1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN status = 3 THEN 1 ELSE 0 END), 0) AS BIGINT) \
                     FROM txns WHERE device_id = $1",
                ),
                params![db_u64(device_id.get())],
            )
            .await?;
        Ok((r.get(0)?, r.get(1)?))
    }

    async fn device_hotlist_version(&self, device_id: DeviceId) -> Result<Option<u32>, StoreError> {
        hotlist::device_version(&self.backend, device_id).await
    }

    async fn audit(&self) -> Result<AuditFigures, StoreError> {
        use super::audit_sql;
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let mut figures = AuditFigures::default();
        for r in tx.query(&Sql::both(audit_sql::DEVICES), &[]).await? {
            figures.devices.push(DeviceAudit {
                device_id: DeviceId(from_db_u64(r.int(0)?)),
                rows: r.int(1)?,
                min_seq: r.int(2)?,
                max_seq: r.int(3)?,
                stored: r.int(4)?,
                subsidy_fen: Fen(r.int(5)?),
            });
        }
        let c = tx.query_one(&Sql::both(audit_sql::CREDITS), &[]).await?;
        figures.released = (c.int(0)?, Fen(c.int(1)?));
        figures.loaded = (c.int(2)?, Fen(c.int(3)?));
        for r in tx.query(&Sql::both(audit_sql::BUDGETS), &[]).await? {
            figures.budgets.push((r.get(0)?, Fen(r.int(1)?)));
        }
        tx.commit().await?;
        Ok(figures)
    }
}
