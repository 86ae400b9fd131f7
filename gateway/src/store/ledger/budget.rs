//! The budget at ingest: shard rows per month and for the programme, granted in batch
//! order, never past a cap (the arithmetic is pure, in `crate::budget`).

use super::super::backend::{Backend, Bulk, Col, Sql, Step, Tx, TxMode, params};
use super::super::{
    BUDGET_SHARDS, IngestCtx, IngestTxn, PROGRAMME_BUDGET_KEY, StoreError, TxnAnswer,
};
use super::Ledger;
use super::ingest::Pending;
use crate::budget::{cut_to_programme, distribute, rebalance, recap};
use wenxiao_protocol::{Fen, Reason, TxnStatus};

const ENSURE_SHARDS: Bulk = Bulk {
    pg: "INSERT INTO budget_shards (budget_key, shard, cap_fen, granted_fen) \
         SELECT k, s, c, 0 FROM unnest($1::int4[], $2::int4[], $3::int8[]) AS u(k, s, c) \
         ON CONFLICT DO NOTHING",
    lite: "INSERT INTO budget_shards (budget_key, shard, cap_fen, granted_fen) \
           VALUES (?1, ?2, ?3, 0) ON CONFLICT DO NOTHING",
};

impl<B: Backend> Ledger<B> {
    /// Makes the shard rows of the budgets of `months` and the programme exist with the
    /// caps of `ctx`, for the budgets this node has not yet seen at those caps — so a cap
    /// changed in the policy applies from the next batch, also to a month that has started.
    /// In a transaction of its own before the caller's: inside an ingest transaction the
    /// `INSERT … ON CONFLICT` would deadlock (it waits for every transaction that has
    /// updated a row with the same key, while that one may wait for the shard rows this
    /// one holds).
    pub(super) async fn ensure_budgets(
        &self,
        months: &[i32],
        ctx: &IngestCtx,
    ) -> Result<(), StoreError> {
        let mut wanted: Vec<(i32, Fen)> = months
            .iter()
            .map(|&m| (m, ctx.monthly_cap))
            .chain([(PROGRAMME_BUDGET_KEY, ctx.programme_cap)])
            .filter(|(key, cap)| {
                self.budgets
                    .lock()
                    .map(|k| k.get(key) != Some(cap))
                    .unwrap_or(true)
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let (mut keys, mut shards, mut caps) = (Vec::new(), Vec::new(), Vec::new());
        for &(key, cap) in &wanted {
            for s in 0..BUDGET_SHARDS {
                keys.push(i64::from(key));
                shards.push(i64::from(s));
                caps.push(IngestCtx::shard_cap(cap, s));
            }
        }
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.bulk(
            &ENSURE_SHARDS,
            &[Col::Int(keys), Col::Int(shards), Col::Int(caps)],
        )
        .await?;
        tx.commit().await?;
        // Budgets that existed keep their old caps: set the new ones, every shard of a
        // budget locked in shard order (the writers' lock order).
        let mut tx = self.backend.begin(TxMode::Write).await?;
        wanted.sort_unstable_by_key(|&(key, _)| (key == PROGRAMME_BUDGET_KEY, key));
        for &(key, cap) in &wanted {
            let rows = tx
                .query(&ALL_SHARDS, params![key])
                .await?
                .iter()
                .map(|r| Ok((r.get::<i32>(0)?, r.int(1)?, r.int(2)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            for (s, new_cap) in recap(&rows, cap.get()) {
                tx.execute(&SET_CAP, params![key, s, new_cap]).await?;
            }
        }
        tx.commit().await?;
        if let Ok(mut known) = self.budgets.lock() {
            known.extend(wanted);
        }
        Ok(())
    }
}

const SAVEPOINT: Sql = Sql::both("SAVEPOINT budget_fast");
const ROLLBACK_TO_SAVEPOINT: Sql = Sql::both("ROLLBACK TO SAVEPOINT budget_fast");
const FAST: Sql = Sql::both(
    "UPDATE budget_shards SET granted_fen = granted_fen + $3 \
     WHERE budget_key = $1 AND shard = $2 AND granted_fen + $3 <= cap_fen",
);
const ALL_SHARDS: Sql = Sql::both(
    "SELECT shard, cap_fen, granted_fen FROM budget_shards WHERE budget_key = $1 \
     ORDER BY shard FOR UPDATE",
);
const SET_CAP: Sql =
    Sql::both("UPDATE budget_shards SET cap_fen = $3 WHERE budget_key = $1 AND shard = $2");
const ADD: Sql = Sql::both(
    "UPDATE budget_shards SET granted_fen = granted_fen + $3 \
     WHERE budget_key = $1 AND shard = $2",
);

/// Takes up to `want` from budget `key`: from this writer's shard while it has room (one
/// row locked), else from all shards' common remainder (all rows locked, in order). The
/// shard rows exist (`ensure_budgets`).
///
/// The fast attempt runs inside a savepoint: an UPDATE that waited for another writer's
/// lock and then found no room updates nothing but would keep the lock, and the slow path
/// would then take the other shards while holding it — out of shard order, a cycle with
/// another writer's slow path. Rolling back to the savepoint releases it.
pub(super) async fn take<T: Tx>(
    tx: &mut T,
    pending: &mut Pending,
    key: i32,
    shard: i32,
    want: i64,
) -> Result<i64, StoreError> {
    if want <= 0 {
        return Ok(0);
    }
    let fast = pending
        .send(
            tx,
            vec![
                Step::One(&SAVEPOINT, Vec::new()),
                Step::One(&FAST, vec![key.into(), shard.into(), want.into()]),
            ],
        )
        .await?;
    if fast.get(1).is_some_and(|d| d.changed == 1) {
        return Ok(want);
    }
    let slow = pending
        .send(
            tx,
            vec![
                Step::One(&ROLLBACK_TO_SAVEPOINT, Vec::new()),
                Step::One(&ALL_SHARDS, vec![key.into()]),
            ],
        )
        .await?;
    let shards = slow
        .get(1)
        .map(|d| d.rows.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| Ok((r.get::<i32>(0)?, r.int(1)?, r.int(2)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let (granted, new_caps) = rebalance(&shards, shard, want);
    for (s, cap) in new_caps {
        pending.defer(Step::One(&SET_CAP, vec![key.into(), s.into(), cap.into()]));
    }
    if granted > 0 {
        pending.defer(Step::One(
            &ADD,
            vec![key.into(), shard.into(), granted.into()],
        ));
    }
    Ok(granted)
}

const SAVEPOINT_ALL: Sql = Sql::both("SAVEPOINT budget_all");
const ROLLBACK_TO_SAVEPOINT_ALL: Sql = Sql::both("ROLLBACK TO SAVEPOINT budget_all");

/// Draws the batch's new subsidies from the budget, months in ascending order then the
/// programme (one lock order for every writer), and lowers the answers it cannot pay.
/// Returns nothing: the caller writes every changed answer back.
///
/// First, in one round trip, every budget's fast attempt for the whole of what is wanted,
/// inside a savepoint; when one finds no room, the lot is rolled back to it and the
/// budgets are taken one by one ([`take`]). The attempt locks in the same order as the
/// slow way, one shard per budget, and the rollback releases what it took.
pub(super) async fn apply<T: Tx>(
    tx: &mut T,
    pending: &mut Pending,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    ctx: &IngestCtx,
) -> Result<(), StoreError> {
    let wants = budget_wants(batch, answers);
    if wants.is_empty() {
        return Ok(());
    }
    let month_wants: Vec<(i32, i64)> = wants
        .iter()
        .map(|(&month, rows)| (month, rows.iter().map(|r| r.1).sum()))
        .collect();
    let total: i64 = month_wants.iter().map(|m| m.1).sum();
    let mut steps = vec![Step::One(&SAVEPOINT_ALL, Vec::new())];
    for &(key, want) in month_wants
        .iter()
        .chain(std::iter::once(&(PROGRAMME_BUDGET_KEY, total)))
        .filter(|(_, want)| *want > 0)
    {
        steps.push(Step::One(
            &FAST,
            vec![key.into(), ctx.shard.into(), want.into()],
        ));
    }
    let fast = pending.send(tx, steps).await?;
    if fast.iter().skip(1).all(|d| d.changed == 1) {
        // Every budget had room for all of it: every answer stands.
        return Ok(());
    }
    pending.defer(Step::One(&ROLLBACK_TO_SAVEPOINT_ALL, Vec::new()));
    let mut month_grants = Vec::with_capacity(wants.len());
    for (month, want) in month_wants {
        month_grants.push((month, take(tx, pending, month, ctx.shard, want).await?));
    }
    let sum: i64 = month_grants.iter().map(|m| m.1).sum();
    let programme = take(tx, pending, PROGRAMME_BUDGET_KEY, ctx.shard, sum).await?;
    for (month, cut) in cut_to_programme(&mut month_grants, programme) {
        pending.defer(Step::One(
            &ADD,
            vec![month.into(), ctx.shard.into(), (-cut).into()],
        ));
    }
    for (month, granted) in month_grants {
        if let Some(rows) = wants.get(&month) {
            apply_grants(&distribute(rows, granted), answers);
        }
    }
    Ok(())
}

/// The rows of a batch that were just stored with a subsidy, grouped by month in
/// ascending order (the lock order), each month's rows in batch order.
fn budget_wants(
    batch: &[IngestTxn],
    answers: &[Option<TxnAnswer>],
) -> std::collections::BTreeMap<i32, Vec<(usize, i64)>> {
    let mut by_month: std::collections::BTreeMap<i32, Vec<(usize, i64)>> = Default::default();
    for (i, (t, a)) in batch.iter().zip(answers).enumerate() {
        if let Some(a) = a
            && a.status == TxnStatus::Stored
            && a.subsidy_fen.get() > 0
        {
            let month = i32::try_from(t.business_date.get() / 100).unwrap_or(i32::MAX);
            by_month
                .entry(month)
                .or_default()
                .push((i, a.subsidy_fen.get()));
        }
    }
    by_month
}

/// Applies grants to answers: a row granted less than its subsidy gets what was granted,
/// with BUDGET_EXHAUSTED.
fn apply_grants(grants: &[(usize, i64)], answers: &mut [Option<TxnAnswer>]) {
    for &(i, g) in grants {
        if let Some(Some(a)) = answers.get_mut(i)
            && g < a.subsidy_fen.get()
        {
            a.subsidy_fen = Fen(g);
            a.reason = Reason::BudgetExhausted;
        }
    }
}
