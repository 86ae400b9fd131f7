//! The credit load exchange on the store: the decisions are the pure functions of
//! `crate::credits`; this module locks the rows and applies them.
//!
//! Every operation on one card's credits first locks all of that card's credits in
//! credit-id order (`lock_card`), so two of them never wait on each other in a cycle.
//! OTA claims lock across cards with `SKIP LOCKED`, which never waits.

use super::super::backend::{Backend, Bulk, Col, Row, Sql, Tx, TxMode, params};
use super::super::{
    CardSeen, LoadAttempt, LoadDecision, LoadInitRequest, PushClaim, ResultReport, StoreError,
    db_u64, from_db_u64,
};
use crate::credits::{
    BeginCheck, CreditView, FinishStep, Settlement, begin_check, begin_decide, credit_status,
    finish_step, settle,
};
use std::sync::atomic::{AtomicI64, Ordering};
use wenxiao_protocol::{
    BusinessDate, CardNo, CreditId, CreditPush, Fen, OfferedCredit, Reason, ResultStatus,
};

/// One of a card's credits, locked.
struct Locked {
    credit_id: i64,
    amount_fen: i64,
    business_date: BusinessDate,
    bound_at_ms: Option<i64>,
    /// The ledger clock at which the attempt was recorded.
    attempt_order: i64,
    view: CreditView,
}

const LOCK_CARD: Sql = Sql::both(
    "SELECT credit_id, card_no, status, amount_fen, business_date, bound_device, bound_at_ms, \
     attempt_online_seq, attempt_host_time_ms, attempt_order FROM credits WHERE card_no = $1 \
     ORDER BY credit_id FOR UPDATE",
);

const ONE_CREDIT: Sql = Sql::both(
    "SELECT credit_id, card_no, status, amount_fen, business_date, bound_device, bound_at_ms, \
     attempt_online_seq, attempt_host_time_ms, attempt_order FROM credits WHERE credit_id = $1",
);

fn locked(r: &Row) -> Result<Locked, StoreError> {
    let date = r.get::<u32>(4)?;
    let attempt_seq: Option<i32> = r.opt(7)?;
    let attempt_at = r.opt_int(8)?;
    Ok(Locked {
        credit_id: r.int(0)?,
        amount_fen: r.int(3)?,
        business_date: BusinessDate::new(date)
            .map_err(|e| StoreError::Corrupt(format!("credit business_date {date}: {e}")))?,
        bound_at_ms: r.opt_int(6)?,
        attempt_order: r.opt_int(9)?.unwrap_or(0),
        view: CreditView {
            card_no: r.int(1)?,
            status: r.get(2)?,
            amount_fen: r.int(3)?,
            bound_device: r.opt_int(5)?,
            attempt: attempt_seq.zip(attempt_at),
        },
    })
}

/// Locks every credit of `card`, in credit-id order.
async fn lock_card<T: Tx>(tx: &mut T, card: CardNo) -> Result<Vec<Locked>, StoreError> {
    tx.query(&LOCK_CARD, params![db_u64(card.get())])
        .await?
        .iter()
        .map(locked)
        .collect()
}

/// The view of credit `id`: from the locked rows of the card it was asked for, or — when
/// it is not that card's — read without a lock, only to be declined.
async fn view_of<T: Tx>(
    tx: &mut T,
    rows: &[Locked],
    id: CreditId,
) -> Result<Option<CreditView>, StoreError> {
    let id = db_u64(id.get());
    if let Some(l) = rows.iter().find(|l| l.credit_id == id) {
        return Ok(Some(l.view));
    }
    tx.query_opt(&ONE_CREDIT, params![id])
        .await?
        .map(|r| locked(&r).map(|l| l.view))
        .transpose()
}

const BIND: Bulk = Bulk {
    pg: "UPDATE credits c SET bound_device = u.d, bound_at_ms = u.t \
         FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(id, d, t) WHERE c.credit_id = u.id",
    lite: "UPDATE credits SET bound_device = ?2, bound_at_ms = ?3 WHERE credit_id = ?1",
};

async fn bind<T: Tx>(tx: &mut T, ids: &[i64], device: i64, now_ms: i64) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let cols = [
        Col::Int(ids.to_vec()),
        Col::Int(vec![device; ids.len()]),
        Col::Int(vec![now_ms; ids.len()]),
    ];
    tx.bulk(&BIND, &cols).await?;
    Ok(())
}

/// The ledger clock's next tick (taken by a recorded attempt; the row lock orders
/// attempts across nodes).
const TICK: Sql =
    Sql::both("UPDATE ledger_clock SET value = value + 1 WHERE id = 1 RETURNING value");

async fn read_clock<T: Tx>(tx: &mut T) -> Result<i64, StoreError> {
    tx.query_one(
        &Sql::both("SELECT value FROM ledger_clock WHERE id = 1"),
        &[],
    )
    .await?
    .int(0)
}

const SETTLE: Sql =
    Sql::both("UPDATE credits SET status = $2, settled_at_ms = $3 WHERE credit_id = $1");

const VOID_ATTEMPT: Sql = Sql::both(
    "UPDATE credits SET attempt_online_seq = NULL, attempt_host_time_ms = NULL, \
     attempt_order = NULL, \
     bound_device = NULL, bound_at_ms = NULL WHERE credit_id = $1",
);

const COUNTER_TAKEN: Sql = Sql::both(
    "SELECT 1 FROM txns WHERE card_no = $1 AND counter_kind = 2 AND card_counter = $2 \
     AND status = 1 LIMIT 1",
);

/// Settles the card's loads in doubt by its online counter `online_seq`, seen at
/// `seen_ms` (contract, Credits 5): N+1 → loaded, still N → void (the credit may be offered
/// again), anything else → still in doubt. `keep` is an attempt left as it is: the
/// LOAD_INIT being answered, re-sent at the counter its attempt recorded. Returns whether
/// a load stays in doubt, and the ids voided.
async fn settle_card<T: Tx>(
    tx: &mut T,
    rows: &mut [Locked],
    online_seq: wenxiao_protocol::OnlineSeq,
    seen_ms: i64,
    received_order: i64,
    keep: Option<(i64, i32)>,
) -> Result<bool, StoreError> {
    let now_seq = i32::from(online_seq.get());
    let mut in_doubt = false;
    for l in rows
        .iter_mut()
        .filter(|l| l.view.status == credit_status::RELEASED)
    {
        let Some((attempt, _)) = l.view.attempt else {
            continue;
        };
        if keep == Some((l.credit_id, attempt)) {
            continue;
        }
        let taken = tx
            .query_opt(
                &COUNTER_TAKEN,
                params![l.view.card_no, i64::from(attempt) + 1],
            )
            .await?
            .is_some();
        // Each change is made to the row and to its locked copy alike, so the caller
        // goes on with the rows as they now are.
        match settle(attempt, l.attempt_order, now_seq, received_order, taken) {
            Settlement::Loaded => {
                tx.execute(
                    &SETTLE,
                    params![l.credit_id, credit_status::LOADED, seen_ms],
                )
                .await?;
                l.view.status = credit_status::LOADED;
            }
            Settlement::Void => {
                tx.execute(&VOID_ATTEMPT, params![l.credit_id]).await?;
                l.view.attempt = None;
                l.view.bound_device = None;
                l.bound_at_ms = None;
            }
            Settlement::Unknown => in_doubt = true,
        }
    }
    Ok(in_doubt)
}

/// CARD_PRESENTED: see [`super::super::Store::card_presented`].
pub(super) async fn card_presented<B: Backend>(
    backend: &B,
    clock_seen: &AtomicI64,
    seen: CardSeen,
) -> Result<Vec<OfferedCredit>, StoreError> {
    let device = db_u64(seen.device_id.get());
    let mut tx = backend.begin(TxMode::Write).await?;
    super::cluster::check_epoch(&mut tx, seen.device_id, seen.lease_epoch).await?;
    let mut rows = lock_card(&mut tx, seen.card_no).await?;
    let order = read_clock(&mut tx).await?;
    let in_doubt = settle_card(
        &mut tx,
        &mut rows,
        seen.online_seq,
        seen.now_ms,
        seen.received_order,
        None,
    )
    .await?;
    let mut offered = Vec::new();
    if !in_doubt {
        let free = rows.iter().filter(|l| {
            let bound = l.view.bound_device;
            let lapsed = l
                .bound_at_ms
                .is_some_and(|t| t.saturating_add(seen.binding_timeout_ms) <= seen.now_ms);
            l.view.status == credit_status::RELEASED
                && l.view.attempt.is_none()
                && (bound.is_none() || bound == Some(device) || lapsed)
        });
        let chosen: Vec<&Locked> = free
            .take(wenxiao_protocol::limits::CREDIT_OFFER_COUNT_MAX)
            .collect();
        let ids: Vec<i64> = chosen.iter().map(|l| l.credit_id).collect();
        bind(&mut tx, &ids, device, seen.now_ms).await?;
        offered = chosen
            .iter()
            .map(|l| OfferedCredit {
                credit_id: CreditId(from_db_u64(l.credit_id)),
                amount_fen: Fen(l.amount_fen),
                business_date: l.business_date,
            })
            .collect();
    }
    tx.commit().await?;
    // What this node's next requests are stamped with: a presentation that found its
    // card in doubt because it was stamped too early is settled by the next one.
    clock_seen.fetch_max(order, Ordering::Relaxed);
    Ok(offered)
}

/// LOAD_INIT: see [`super::super::Store::begin_load`].
pub(super) async fn begin_load<B: Backend, F>(
    backend: &B,
    clock_seen: &AtomicI64,
    r: LoadInitRequest,
    mac1_ok: F,
) -> Result<LoadDecision, StoreError>
where
    F: FnOnce(Fen) -> bool + Send + 'static,
{
    let mut tx = backend.begin(TxMode::Write).await?;
    super::cluster::check_epoch(&mut tx, r.device_id, r.lease_epoch).await?;
    let id = db_u64(r.credit_id.get());
    let mut rows = lock_card(&mut tx, r.card_no).await?;
    // The card's counter settles its loads in doubt first, as a presentation would; this
    // credit's own attempt stays when the LOAD_INIT is the one it recorded, re-sent.
    let keep = Some((id, i32::from(r.online_seq.get())));
    settle_card(
        &mut tx,
        &mut rows,
        r.online_seq,
        r.host_time_ms,
        r.received_order,
        keep,
    )
    .await?;
    let check = begin_check(view_of(&mut tx, &rows, r.credit_id).await?, &r);
    // Two loads of one card starting at once see each other: both hold the card's rows.
    let other_in_doubt = matches!(check, BeginCheck::Fresh { .. })
        && rows.iter().any(|l| {
            l.credit_id != id
                && l.view.status == credit_status::RELEASED
                && l.view.attempt.is_some()
        });
    let (decision, record) = begin_decide(check, other_in_doubt, r.host_time_ms, mac1_ok);
    // A recorded attempt takes the next tick of the ledger clock: a presentation settles
    // it only if it was received once its session had seen that tick.
    let order = if record {
        tx.query_one(&TICK, &[]).await?.int(0)?
    } else {
        read_clock(&mut tx).await?
    };
    if record {
        tx.execute(
            &Sql::both(
                "UPDATE credits SET attempt_online_seq = $2, attempt_host_time_ms = $3, \
                 attempt_order = $4 WHERE credit_id = $1",
            ),
            params![id, r.online_seq.get(), r.host_time_ms, order],
        )
        .await?;
    }
    tx.commit().await?;
    clock_seen.fetch_max(order, Ordering::Relaxed);
    Ok(decision)
}

/// CREDIT_RESULT: see [`super::super::Store::finish_load`].
pub(super) async fn finish_load<B: Backend, F>(
    backend: &B,
    r: ResultReport,
    tac_ok: F,
) -> Result<(ResultStatus, Reason), StoreError>
where
    F: FnOnce(&LoadAttempt) -> bool + Send + 'static,
{
    let id = db_u64(r.credit_id.get());
    let mut tx = backend.begin(TxMode::Write).await?;
    super::cluster::check_epoch(&mut tx, r.device_id, r.lease_epoch).await?;
    let rows = lock_card(&mut tx, r.card_no).await?;
    let recorded = (ResultStatus::Recorded, Reason::None);
    let answer = match finish_step(view_of(&mut tx, &rows, r.credit_id).await?, &r) {
        FinishStep::Answer(status, reason) => (status, reason),
        FinishStep::VerifyTac(attempt) if tac_ok(&attempt) => {
            tx.execute(&SETTLE, params![id, credit_status::LOADED, r.now_ms])
                .await?;
            recorded
        }
        FinishStep::VerifyTac(_) => (ResultStatus::Rejected, Reason::BadMac),
        FinishStep::Unbind => {
            tx.execute(
                &Sql::both(
                    "UPDATE credits SET bound_device = NULL, bound_at_ms = NULL \
                     WHERE credit_id = $1",
                ),
                params![id],
            )
            .await?;
            recorded
        }
        FinishStep::Park => {
            tx.execute(&SETTLE, params![id, credit_status::PARKED, r.now_ms])
                .await?;
            recorded
        }
    };
    tx.commit().await?;
    Ok(answer)
}

/// Credits for an OTA endpoint: see [`super::super::Store::claim_pushes`].
pub(super) async fn claim_pushes<B: Backend>(
    backend: &B,
    c: PushClaim,
) -> Result<Vec<CreditPush>, StoreError> {
    let device = db_u64(c.device_id.get());
    let mut tx = backend.begin(TxMode::Write).await?;
    super::cluster::check_epoch(&mut tx, c.device_id, c.lease_epoch).await?;
    let rows = tx
        .query(
            &Sql::both(
                "SELECT credit_id, card_no, amount_fen, business_date FROM credits \
                 WHERE status = $1 AND card_no BETWEEN $2 AND $3 \
                 AND (bound_device IS NULL \
                      OR (bound_device = $4 AND $5) \
                      OR (attempt_online_seq IS NULL AND bound_device <> $4 \
                          AND bound_at_ms + $7 <= $6)) \
                 ORDER BY credit_id LIMIT $8 FOR UPDATE SKIP LOCKED",
            ),
            params![
                credit_status::RELEASED,
                db_u64(c.cards_from.get()),
                db_u64(c.cards_to.get()),
                device,
                c.include_bound,
                c.now_ms,
                c.binding_timeout_ms,
                c.limit
            ],
        )
        .await?;
    let mut pushes = Vec::with_capacity(rows.len());
    for r in &rows {
        let date = r.get::<u32>(3)?;
        pushes.push(CreditPush {
            credit_id: CreditId(from_db_u64(r.int(0)?)),
            card_no: CardNo(from_db_u64(r.int(1)?)),
            amount_fen: Fen(r.int(2)?),
            business_date: BusinessDate::new(date)
                .map_err(|e| StoreError::Corrupt(format!("credit business_date {date}: {e}")))?,
        });
    }
    let ids: Vec<i64> = pushes.iter().map(|p| db_u64(p.credit_id.get())).collect();
    bind(&mut tx, &ids, device, c.now_ms).await?;
    tx.commit().await?;
    Ok(pushes)
}
