//! Points: holds (POINTS_AUTH), their consumption at ingest, sign-in awards, refunds
//! giving points back, and the app's reviews and shares.

use super::super::backend::{Backend, Bulk, Col, Sql, Step, Tx, TxMode, params};
use super::super::{
    Activity, ActivityOutcome, HoldOutcome, HoldRequest, IngestCtx, IngestTxn, StoreError,
    TxnAnswer, db_u64, from_db_u64,
};
use super::ingest::Pending;
use super::points_of;
use std::collections::{BTreeMap, HashMap, HashSet};
use wenxiao_protocol::{Fen, HoldId, Points, Reason, TxnKind, TxnStatus};

const AWARD_SIGN_INS: Bulk = Bulk {
    pg: "INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
         SELECT card_no, award_day, 1, merchant_id, points \
         FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[]) \
         AS i(card_no, award_day, merchant_id, points) ORDER BY card_no, award_day \
         ON CONFLICT DO NOTHING RETURNING card_no, award_day",
    lite: "INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
           VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT DO NOTHING RETURNING card_no, award_day",
};

const CREDIT_ACCOUNTS: Bulk = Bulk {
    pg: "INSERT INTO points_accounts (card_no, balance, held) \
         SELECT card_no, points, 0 FROM unnest($1::int8[], $2::int8[]) AS u(card_no, points) \
         ORDER BY card_no \
         ON CONFLICT (card_no) DO UPDATE SET balance = points_accounts.balance + excluded.balance",
    lite: "INSERT INTO points_accounts (card_no, balance, held) VALUES (?1, ?2, 0) \
           ON CONFLICT (card_no) DO UPDATE SET balance = balance + excluded.balance",
};

const CONSUME_HOLD: Sql = Sql::both(
    "UPDATE points_holds SET status = 2, consumed_seq = $5 \
     WHERE hold_id = $1 AND card_no = $2 AND device_id = $3 AND points = $4 \
     AND status = 1 AND expires_at_ms > $6",
);

const SPEND_HELD: Sql = Sql::both(
    "UPDATE points_accounts SET balance = balance - $2, held = held - $2 WHERE card_no = $1",
);

/// The refunded purchase, locked: refunds of one purchase are decided one at a time,
/// across writers and nodes.
const LOCK_PURCHASE: Sql = Sql::both(
    "SELECT amount_fen, points_used, subsidy_fen, card_no FROM txns \
     WHERE device_id = $1 AND seq = $2 AND status = 1 AND kind = 1 FOR UPDATE",
);

const REFUNDED_BEFORE: Sql = Sql::both(
    "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM txns \
     WHERE device_id = $1 AND refund_of_seq = $2 AND kind = 4 AND status = 1 AND seq <> $3",
);

const REJECT_ROW: Sql =
    Sql::both("UPDATE txns SET status = 3, reason = $3 WHERE device_id = $1 AND seq = $2");

const SET_REVERSAL: Sql =
    Sql::both("UPDATE txns SET reversal_fen = $3 WHERE device_id = $1 AND seq = $2");

const CREDIT_ONE: Sql = Sql::both(
    "INSERT INTO points_accounts (card_no, balance, held) VALUES ($1, $2, 0) \
     ON CONFLICT (card_no) DO UPDATE SET balance = points_accounts.balance + excluded.balance \
     RETURNING balance",
);

/// Which rows [`apply`] decides. Refunds come last, once the purchases they name have
/// their final answers in the table (a purchase of the same batch may have been rejected
/// for its hold, or lost its subsidy to the blacklist or the budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Purchases with holds, and sign-ins: before the blacklist and the budget.
    HoldsAndSignIns,
    /// Refunds: after them, and after the answers so far are written back.
    Refunds,
}

/// Consumes holds, awards sign-in points and gives refunds their points back, for the
/// batch's new rows of `phase`; a row whose hold is not valid becomes REJECTED HOLD_INVALID (before
/// the budget, so it takes none of it). The sign-in awards and every hold go in one round
/// trip; what they change in the accounts is deferred to the next (`pending`). Each refund
/// takes a round trip of its own.
pub(super) async fn apply<T: Tx>(
    tx: &mut T,
    pending: &mut Pending,
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    ctx: &IngestCtx,
    phase: Phase,
) -> Result<(), StoreError> {
    let rows: Vec<usize> = points_rows(batch, answers)
        .into_iter()
        .filter(|&i| {
            batch
                .get(i)
                .is_some_and(|t| (t.txn.kind == TxnKind::Refund) == (phase == Phase::Refunds))
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let firsts = first_sign_ins(batch, &rows);
    let points = i64::from(ctx.sign_in_points.get());
    let holds: Vec<(usize, i64, i64)> = rows
        .iter()
        .filter_map(|&i| batch.get(i).map(|t| (i, t)))
        .filter_map(|(i, t)| {
            t.txn.points_hold_id.map(|_| {
                (
                    i,
                    db_u64(t.txn.card_no.get()),
                    i64::from(t.txn.points_used.get()),
                )
            })
        })
        .collect();
    let mut awarded = HashSet::new();
    let mut consumed = HashSet::new();
    if !firsts.is_empty() || !holds.is_empty() {
        let mut steps = vec![Step::Bulk(
            &AWARD_SIGN_INS,
            vec![
                Col::Int(firsts.keys().map(|k| k.0).collect()),
                Col::Int(firsts.keys().map(|k| k.1).collect()),
                Col::Int(firsts.values().map(|v| v.1).collect()),
                Col::Int(vec![points; firsts.len()]),
            ],
        )];
        for &(i, card, used) in &holds {
            let Some(t) = batch.get(i) else { continue };
            steps.push(Step::One(
                &CONSUME_HOLD,
                vec![
                    db_u64(HoldId::wire(t.txn.points_hold_id)).into(),
                    card.into(),
                    db_u64(t.device_id.get()).into(),
                    used.into(),
                    db_u64(t.txn.seq.get()).into(),
                    t.received_at_ms.into(),
                ],
            ));
        }
        let done = pending.send(tx, steps).await?;
        let mut done = done.into_iter();
        let mut per_card: BTreeMap<i64, i64> = BTreeMap::new();
        for r in done.next().unwrap_or_default().rows {
            let k = (r.int(0)?, r.int(1)?);
            if let Some(&(i, _)) = firsts.get(&k) {
                awarded.insert(i);
                *per_card.entry(k.0).or_default() += points;
            }
        }
        if !per_card.is_empty() {
            pending.defer(Step::Bulk(
                &CREDIT_ACCOUNTS,
                vec![
                    Col::Int(per_card.keys().copied().collect()),
                    Col::Int(per_card.values().copied().collect()),
                ],
            ));
        }
        for (&(i, card, used), d) in holds.iter().zip(done) {
            if d.changed == 1 {
                consumed.insert(i);
                pending.defer(Step::One(&SPEND_HELD, vec![card.into(), used.into()]));
            }
        }
    }
    // The batch's refunds not yet decided, by purchase: inserted as stored, they are in
    // the table's sum of a purchase's refunds, but must not count before they are decided.
    let mut undecided: HashMap<(i64, i64), i64> = HashMap::new();
    for t in rows.iter().filter_map(|&i| batch.get(i)) {
        if let (TxnKind::Refund, Some(of)) = (t.txn.kind, t.txn.refund_of_seq) {
            *undecided
                .entry((db_u64(t.device_id.get()), db_u64(of.get())))
                .or_default() += t.txn.amount_fen.get();
        }
    }
    for i in rows {
        let (Some(t), Some(Some(answer))) = (batch.get(i), answers.get_mut(i)) else {
            continue;
        };
        let effect = if t.txn.points_hold_id.is_some() {
            if consumed.contains(&i) {
                PointsEffect::HoldConsumed
            } else {
                PointsEffect::HoldInvalid
            }
        } else if t.txn.kind == TxnKind::Refund {
            let purchase = (
                db_u64(t.device_id.get()),
                db_u64(t.txn.refund_of_seq.map_or(0, |s| s.get())),
            );
            let later = undecided.get_mut(&purchase).map_or(0, |p| {
                *p -= t.txn.amount_fen.get();
                *p
            });
            match refund(tx, pending, t, later).await? {
                Some(back) => PointsEffect::Returned(back),
                None => PointsEffect::RefundInvalid,
            }
        } else if awarded.contains(&i) {
            PointsEffect::Awarded(ctx.sign_in_points)
        } else {
            PointsEffect::DailyLimit
        };
        apply_points(answer, &effect);
    }
    Ok(())
}

/// Decides a new REFUND: it must name a stored purchase of the same device and card, and
/// with the purchase's refunds before it add up to at most the purchase's amount. Records
/// its reversal of the purchase's subsidy and gives back its points, both cumulatively
/// (`rules::refund_reversal_step`), and returns the points; `None` when it is refused,
/// after recording it REJECTED (deferred, but ahead of the next refund's reads), so that
/// a later refund in the same batch does not count it. `undecided_fen` is what the
/// batch's later refunds of the same purchase, recorded but not decided yet, add to the
/// table's sum.
async fn refund<T: Tx>(
    tx: &mut T,
    pending: &mut Pending,
    t: &IngestTxn,
    undecided_fen: i64,
) -> Result<Option<Points>, StoreError> {
    let (device, seq) = (db_u64(t.device_id.get()), db_u64(t.txn.seq.get()));
    let card = db_u64(t.txn.card_no.get());
    let decided = match t.txn.refund_of_seq {
        Some(of) => {
            let of = db_u64(of.get());
            // The purchase locked, then its refunds before this one: one round trip.
            let done = pending
                .send(
                    tx,
                    vec![
                        Step::One(&LOCK_PURCHASE, vec![device.into(), of.into()]),
                        Step::One(&REFUNDED_BEFORE, vec![device.into(), of.into(), seq.into()]),
                    ],
                )
                .await?;
            let mut done = done.into_iter().map(|d| d.rows.into_iter().next());
            match (done.next().flatten(), done.next().flatten()) {
                (Some(o), Some(sum)) if o.int(3)? == card => {
                    let paid = o.int(0)?;
                    let before = sum.int(0)? - undecided_fen;
                    before
                        .checked_add(t.txn.amount_fen.get())
                        .filter(|&a| a <= paid)
                        .map(|after| (o, paid, before, after))
                }
                _ => None,
            }
        }
        None => None,
    };
    let Some((o, paid, before, after)) = decided else {
        pending.defer(Step::One(
            &REJECT_ROW,
            vec![
                device.into(),
                seq.into(),
                wenxiao_protocol::Reason::InvalidField.code().into(),
            ],
        ));
        return Ok(None);
    };
    let (paid, before, after) = (Fen(paid), Fen(before), Fen(after));
    let reversal = crate::rules::refund_reversal_step(Fen(o.int(2)?), paid, before, after);
    if reversal.get() != 0 {
        pending.defer(Step::One(
            &SET_REVERSAL,
            vec![device.into(), seq.into(), reversal.get().into()],
        ));
    }
    let back = crate::rules::points_returned_step(Points(o.get(1)?), paid, before, after);
    if back.get() > 0 {
        pending.defer(Step::One(&CREDIT_ONE, vec![card.into(), back.get().into()]));
    }
    Ok(Some(back))
}

/// The sign-ins of `rows` that may earn: the first of each card and day (in batch order),
/// by (card, day), with its batch row and merchant. Whether it earns is the award table's
/// to say (one award per card and day).
fn first_sign_ins(batch: &[IngestTxn], rows: &[usize]) -> BTreeMap<(i64, i64), (usize, i64)> {
    let mut firsts: BTreeMap<(i64, i64), (usize, i64)> = BTreeMap::new();
    for &i in rows {
        let Some(t) = batch.get(i) else { continue };
        if t.txn.kind == TxnKind::SignIn && t.txn.points_hold_id.is_none() {
            let day = (
                db_u64(t.txn.card_no.get()),
                i64::from(t.business_date.get()),
            );
            firsts
                .entry(day)
                .or_insert((i, t.merchant_id.map_or(0, |m| m.0)));
        }
    }
    firsts
}

/// Releases a card's holds past their expiry.
async fn release_expired_holds<T: Tx>(
    tx: &mut T,
    card: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let released = tx
        .query(
            &Sql::both(
                "UPDATE points_holds SET status = 3 \
                 WHERE card_no = $1 AND status = 1 AND expires_at_ms <= $2 RETURNING points",
            ),
            params![card, now_ms],
        )
        .await?
        .iter()
        .map(|r| r.int(0))
        .sum::<Result<i64, _>>()?;
    if released > 0 {
        tx.execute(
            &Sql::both("UPDATE points_accounts SET held = held - $2 WHERE card_no = $1"),
            params![card, released],
        )
        .await?;
    }
    Ok(())
}

/// POINTS_AUTH: see [`super::super::Store::create_hold`].
pub(super) async fn create_hold<B: Backend>(
    backend: &B,
    r: HoldRequest,
) -> Result<HoldOutcome, StoreError> {
    let card = db_u64(r.card_no.get());
    let points = i64::from(r.points.get());
    let mut tx = backend.begin(TxMode::Write).await?;
    tx.execute(
        &Sql::both(
            "INSERT INTO points_accounts (card_no, balance, held) VALUES ($1, 0, 0) \
             ON CONFLICT DO NOTHING",
        ),
        params![card],
    )
    .await?;
    release_expired_holds(&mut tx, card, r.now_ms).await?;
    let held = tx
        .query_opt(
            &Sql::both(
                "UPDATE points_accounts SET held = held + $2 \
                 WHERE card_no = $1 AND balance - held >= $2 RETURNING balance - held",
            ),
            params![card, points],
        )
        .await?;
    let outcome = match held {
        None => {
            let row = tx
                .query_one(
                    &Sql::both("SELECT balance - held FROM points_accounts WHERE card_no = $1"),
                    params![card],
                )
                .await?;
            HoldOutcome::Insufficient {
                available: points_of(row.int(0)?),
            }
        }
        Some(row) => {
            let id = tx
                .query_one(
                    &Sql::both(
                        "INSERT INTO points_holds (card_no, device_id, points, purchase_fen, \
                         expires_at_ms, status) VALUES ($1, $2, $3, $4, $5, 1) RETURNING hold_id",
                    ),
                    params![
                        card,
                        db_u64(r.device_id.get()),
                        points,
                        r.purchase_fen.get(),
                        r.expires_at_ms
                    ],
                )
                .await?
                .int(0)?;
            HoldOutcome::Approved {
                hold_id: HoldId::new(from_db_u64(id))
                    .ok_or_else(|| StoreError::Corrupt("hold id 0".to_owned()))?,
                available: points_of(row.int(0)?),
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// A review or share: see [`super::super::Store::award_activity`].
pub(super) async fn award_activity<B: Backend>(
    backend: &B,
    a: Activity,
) -> Result<ActivityOutcome, StoreError> {
    let card = db_u64(a.card_no.get());
    let day = i64::from(a.day.get());
    let mut tx = backend.begin(TxMode::Write).await?;
    let signed_in = tx
        .query_opt(
            &Sql::both(
                "SELECT 1 FROM txns WHERE card_no = $1 AND counter_kind = 1 \
                 AND status = 1 AND kind = 2 AND merchant_id = $2 AND business_date = $3 LIMIT 1",
            ),
            params![card, a.venue.0, day],
        )
        .await?
        .is_some();
    if !signed_in {
        return Ok(ActivityOutcome::NoSignIn);
    }
    let points = i64::from(a.points.get());
    let n = tx
        .execute(
            &Sql::both(
                "INSERT INTO points_awards (card_no, award_day, kind, merchant_id, points) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            ),
            params![card, day, a.kind, a.venue.0, points],
        )
        .await?;
    if n == 0 {
        return Ok(ActivityOutcome::DailyLimit);
    }
    let balance = tx
        .query_one(&CREDIT_ONE, params![card, points])
        .await?
        .int(0)?;
    tx.commit().await?;
    Ok(ActivityOutcome::Awarded(points_of(balance)))
}

/// A points effect of the batch on one row, decided in the ingest transaction.
enum PointsEffect {
    /// The purchase consumed its hold.
    HoldConsumed,
    /// The hold is unknown, expired, consumed, or for another card, device or amount.
    HoldInvalid,
    /// The sign-in earned points.
    Awarded(Points),
    /// The card already signed in today.
    DailyLimit,
    /// A refund gave back points of its purchase (reported in the ack's points field).
    Returned(Points),
    /// A refund names no stored purchase of this device and card, or would take the
    /// purchase's refunds past its amount.
    RefundInvalid,
}

/// Rows newly stored in this batch that use a hold or sign in, in batch order.
fn points_rows(batch: &[IngestTxn], answers: &[Option<TxnAnswer>]) -> Vec<usize> {
    batch
        .iter()
        .zip(answers)
        .enumerate()
        .filter(|(_, (t, a))| {
            a.is_some_and(|a| a.status == TxnStatus::Stored)
                && (t.txn.points_hold_id.is_some()
                    || matches!(t.txn.kind, TxnKind::SignIn | TxnKind::Refund))
        })
        .map(|(i, _)| i)
        .collect()
}

/// The answer after a points effect.
fn apply_points(answer: &mut TxnAnswer, effect: &PointsEffect) {
    match effect {
        PointsEffect::HoldConsumed => {}
        PointsEffect::HoldInvalid => *answer = TxnAnswer::rejected(Reason::HoldInvalid),
        PointsEffect::Awarded(p) => answer.points_awarded = *p,
        PointsEffect::DailyLimit => {
            answer.points_awarded = Points(0);
            answer.reason = Reason::DailyLimitReached;
        }
        PointsEffect::Returned(p) => answer.points_awarded = *p,
        PointsEffect::RefundInvalid => *answer = TxnAnswer::rejected(Reason::InvalidField),
    }
}
