//! Ingest: one transaction per batch, every step a set-based statement on PostgreSQL,
//! sent in as few round trips as their dependencies allow. A batch is written one of two
//! ways ([`Way`]):
//! - decided first (the usual batch, every row new): the holds, the sign-in awards, the
//!   blacklist and the budget decide each row's answer, and every row is then inserted
//!   once with it, beside the commit; a row that is not new fails that insert and the
//!   batch is written the other way;
//! - inserted first: the first copy of every (device, seq) is inserted with its proposed
//!   answer; identical re-sends are answered from the recorded row, other content is
//!   SEQ_CONFLICT (recorded as evidence); what is neither inserted nor recorded collided
//!   on the card-counter index (recorded REJECTED CARD_COUNTER_REPLAY); points, blacklist
//!   and budget then decide the new rows' final answers, written back in one statement.
//!
//! Either way refunds are decided last, against the purchases as the batch leaves them,
//! and later copies of a key in the same batch are answered from the row as this batch
//! leaves it, exactly as a re-send in a later batch would be.

use super::super::backend::{Backend, Bulk, Col, Done, Row, Sql, Step, Tx, TxMode, params};
use super::super::{IngestCtx, IngestTxn, Proposal, StoreError, TxnAnswer, db_u64, from_db_u64};
use super::points::{self, Phase};
use super::{Ledger, budget};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use wenxiao_protocol::{
    Bytes4, CardCounter, CardNo, Fen, HoldId, Item, Points, Reason, Seq, Txn, TxnKind, TxnStatus,
    UnixMillis,
};

/// An insert of whole `txns` rows, each database's spelling, ending with `$tail`.
macro_rules! insert_txns {
    ($tail:literal) => {
        Bulk {
            pg: concat!(
                "INSERT INTO txns (device_id, seq, kind, card_no, card_counter, \
                 counter_kind, amount_fen, list_price_fen, item, points_hold_id, points_used, \
                 refund_of_seq, occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, \
                 points_awarded, received_at_ms, business_date) \
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int2[], $4::int8[], \
                 $5::int8[], $6::int2[], $7::int8[], $8::int8[], $9::int2[], $10::int8[], \
                 $11::int8[], $12::int8[], $13::int8[], $14::int4[], $15::int8[], $16::int2[], \
                 $17::int2[], $18::int8[], $19::int8[], $20::int8[], $21::int4[])",
                $tail
            ),
            lite: concat!(
                "INSERT INTO txns (device_id, seq, kind, card_no, card_counter, \
                 counter_kind, amount_fen, list_price_fen, item, points_hold_id, points_used, \
                 refund_of_seq, occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, \
                 points_awarded, received_at_ms, business_date) VALUES (?1, ?2, ?3, ?4, ?5, \
                 ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                $tail
            ),
        }
    };
}

/// The first copies of a batch written first ([`Way::InsertedFirst`]): what is not new is
/// skipped, and the keys inserted come back.
const INSERT_TXNS: Bulk = insert_txns!(" ON CONFLICT DO NOTHING RETURNING device_id, seq");

/// The rows of a batch decided before they are written ([`Way::Decided`]): a row that is
/// not new is an error, not a row skipped.
const INSERT_NEW: Bulk = insert_txns!("");

const SELECT_RECORDED: Bulk = Bulk {
    pg: "SELECT device_id, seq, kind, card_no, card_counter, amount_fen, \
         list_price_fen, item, points_hold_id, points_used, refund_of_seq, occurred_at_ms, tac, \
         status, reason, subsidy_fen, points_awarded FROM txns \
         WHERE (device_id, seq) IN (SELECT * FROM unnest($1::int8[], $2::int8[]))",
    lite: "SELECT device_id, seq, kind, card_no, card_counter, amount_fen, \
           list_price_fen, item, points_hold_id, points_used, refund_of_seq, occurred_at_ms, tac, \
           status, reason, subsidy_fen, points_awarded FROM txns WHERE device_id = ?1 AND seq = ?2",
};

const RECORD_CONFLICT: Sql = Sql::both(
    "INSERT INTO txn_conflicts (device_id, seq, payload, received_at_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
);

const BLACKLISTED: Bulk = Bulk {
    pg: "SELECT card_no FROM card_blacklist WHERE card_no = ANY($1::int8[])",
    lite: "SELECT card_no FROM card_blacklist WHERE card_no = ?1",
};

const WRITE_ANSWERS: Bulk = Bulk {
    pg: "UPDATE txns t SET status = u.status, reason = u.reason, \
         subsidy_fen = u.subsidy_fen, points_awarded = u.points_awarded \
         FROM unnest($1::int8[], $2::int8[], $3::int2[], $4::int2[], $5::int8[], $6::int8[]) \
         AS u(device_id, seq, status, reason, subsidy_fen, points_awarded) \
         WHERE t.device_id = u.device_id AND t.seq = u.seq",
    lite: "UPDATE txns SET status = ?3, reason = ?4, subsidy_fen = ?5, points_awarded = ?6 \
           WHERE device_id = ?1 AND seq = ?2",
};

type Key = (i64, i64);

fn key(t: &IngestTxn) -> Key {
    (db_u64(t.device_id.get()), db_u64(t.txn.seq.get()))
}

fn reason_code(r: Reason) -> i64 {
    i64::from(r.code())
}

/// Statements whose answers nobody reads, held back to go in front of the transaction's
/// next round trip (they run in the order they were deferred, before what follows).
#[derive(Debug, Default)]
pub(super) struct Pending {
    steps: Vec<Step<'static>>,
    /// For each queued step, the ticket its answer is kept under, if it was asked for.
    tickets: Vec<Option<usize>>,
    /// Answers of asked-for steps already sent, by ticket.
    answered: HashMap<usize, Done>,
    next_ticket: usize,
}

/// Where the answer of a step queued with [`Pending::ask`] is kept.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(usize);

impl Pending {
    /// Defers `step`; nobody reads its answer.
    pub(super) fn defer(&mut self, step: Step<'static>) {
        self.steps.push(step);
        self.tickets.push(None);
    }

    /// Queues `step` to go with the next round trip, its answer kept for [`Pending::answer`].
    fn ask(&mut self, step: Step<'static>) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.steps.push(step);
        self.tickets.push(Some(ticket));
        Ticket(ticket)
    }

    /// Whether an asked-for step has been sent.
    fn sent(&self, ticket: Ticket) -> bool {
        self.answered.contains_key(&ticket.0)
    }

    /// The answer of an asked-for step, once sent.
    fn answer(&mut self, ticket: Ticket) -> Result<Done, StoreError> {
        self.answered
            .remove(&ticket.0)
            .ok_or_else(|| StoreError::Corrupt(format!("pipelined step {} not sent", ticket.0)))
    }

    /// Sends the queued statements and then `steps`, in one round trip on PostgreSQL;
    /// returns what `steps` did.
    pub(super) async fn send<T: Tx>(
        &mut self,
        tx: &mut T,
        steps: Vec<Step<'static>>,
    ) -> Result<Vec<Done>, StoreError> {
        if self.steps.is_empty() && steps.is_empty() {
            return Ok(Vec::new());
        }
        let queued = self.steps.len();
        let mut all = std::mem::take(&mut self.steps);
        all.extend(steps);
        let mut done = tx.pipeline(&all).await?;
        let own = done.split_off(queued.min(done.len()));
        for (ticket, d) in std::mem::take(&mut self.tickets).into_iter().zip(done) {
            if let Some(t) = ticket {
                self.answered.insert(t, d);
            }
        }
        Ok(own)
    }

    /// Sends the queued statements and commits, in one round trip on PostgreSQL.
    pub(super) async fn commit<T: Tx>(self, tx: T) -> Result<(), StoreError> {
        tx.commit_after(&self.steps).await.map(drop)
    }
}

/// How an ingest attempt ended.
enum Ingested {
    /// Committed, with every row's answer.
    Done(Vec<TxnAnswer>),
    /// Rolled back before anything was decided: a row's business day is closed, or a
    /// row's session was fenced. The batch must be moved and filtered first.
    Moved,
    /// Rolled back: decided first, a row proposed as stored was rejected before its
    /// insert (its hold not valid), so the card-counter index would not have been asked
    /// about it. The batch must be written inserted first.
    NotDecided,
}

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Every row taken for new: decided first and then inserted once with its final
    /// answer. A row that is not new (a re-send, a card-counter replay) makes the insert
    /// fail and the attempt roll back, and the batch is written the other way.
    Decided,
    /// Inserted first with the proposed answers (the insert tells which rows are new),
    /// then decided, and the answers that changed written back.
    InsertedFirst,
}

/// Whether `e` is a unique index refusing a row: how a [`Way::Decided`] attempt learns
/// that a row of its batch was not new.
fn not_new(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(e) => {
            e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        }
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        _ => false,
    }
}

/// Whether two first copies of the batch proposed as stored share a card counter (the
/// later one is a replay, which only [`Way::InsertedFirst`] answers).
fn counters_repeat(batch: &[IngestTxn], firsts: &[usize]) -> bool {
    let mut seen = HashSet::new();
    firsts
        .iter()
        .filter_map(|&i| batch.get(i))
        .filter(|t| matches!(t.proposal, Proposal::Store { .. }))
        .any(|t| !seen.insert((t.txn.card_no, counter_kind(t.txn.kind), t.txn.card_counter)))
}

impl<B: Backend> Ledger<B> {
    /// One attempt of [`super::super::Store::ingest`].
    ///
    /// The usual batch, every row new, is decided in three round trips on PostgreSQL and
    /// written once: the opening (closed days, leases, blacklist, holds and sign-in
    /// awards), the budget, and the rows inserted with their final answers together with
    /// the commit. A batch holding a re-send or a card-counter replay finds out at that
    /// insert, rolls back, and is written again inserted first (see [`Way`]). A batch
    /// with a row on a closed day or of a fenced session is rolled back after the opening
    /// and run again with those rows moved and left out.
    pub(super) async fn ingest_once(
        &self,
        batch: &[IngestTxn],
        ctx: &IngestCtx,
    ) -> Result<Vec<Option<TxnAnswer>>, StoreError> {
        // The months of the rows' days, and of the days after them (where a row whose day
        // was closed meanwhile is filed).
        let months: BTreeSet<i32> = batch
            .iter()
            .filter(|t| {
                matches!(t.proposal, super::super::Proposal::Store { subsidy_fen, .. }
                    if subsidy_fen.get() > 0)
            })
            .flat_map(|t| {
                [
                    Some(t.business_date),
                    crate::clock::next_day(t.business_date),
                ]
            })
            .flatten()
            .map(|d| i32::try_from(d.get() / 100).unwrap_or(i32::MAX))
            .collect();
        if !months.is_empty() {
            let months: Vec<i32> = months.into_iter().collect();
            self.ensure_budgets(&months, ctx).await?;
        }

        if let Ingested::Done(answers) = self.ingest_either(batch, ctx).await? {
            return Ok(answers.into_iter().map(Some).collect());
        }
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let batch = &*open_days(&mut tx, batch).await?;
        // Rows of sessions whose device another session took over: not written.
        let fenced = super::cluster::fenced(&mut tx, batch).await?;
        let kept: Vec<IngestTxn> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| !fenced.contains(i))
            .map(|(_, t)| *t)
            .collect();
        // The days and leases just read stay locked: the opening finds nothing to move.
        let Ingested::Done(answers) = self.ingest_in(tx, &kept, ctx, Way::InsertedFirst).await?
        else {
            return Err(StoreError::Corrupt(
                "closed days or leases changed while this transaction held them".to_owned(),
            ));
        };
        let mut answers = answers.into_iter();
        Ok((0..batch.len())
            .map(|i| {
                if fenced.contains(&i) {
                    None
                } else {
                    answers.next()
                }
            })
            .collect())
    }

    /// The batch written [`Way::Decided`], or else [`Way::InsertedFirst`].
    async fn ingest_either(
        &self,
        batch: &[IngestTxn],
        ctx: &IngestCtx,
    ) -> Result<Ingested, StoreError> {
        let tx = self.backend.begin(TxMode::Write).await?;
        match self.ingest_in(tx, batch, ctx, Way::Decided).await {
            Err(e) if not_new(&e) => {}
            Ok(Ingested::NotDecided) => {}
            other => return other,
        }
        metrics::counter!(crate::metrics::INGEST_REWRITTEN_TOTAL).increment(1);
        let tx = self.backend.begin(TxMode::Write).await?;
        self.ingest_in(tx, batch, ctx, Way::InsertedFirst).await
    }

    /// The batch's rows written and answered in `tx`, which this commits; or `Moved`,
    /// with `tx` rolled back, when a row's day is closed or its session fenced.
    async fn ingest_in(
        &self,
        mut tx: B::Tx,
        batch: &[IngestTxn],
        ctx: &IngestCtx,
        way: Way,
    ) -> Result<Ingested, StoreError> {
        let Some(first_day) = batch.iter().map(|t| t.business_date).min() else {
            return Ok(Ingested::Done(Vec::new()));
        };
        // The first copy of each key, and the later copies with their first's index.
        let mut first_of: HashMap<Key, usize> = HashMap::with_capacity(batch.len());
        let (mut firsts, mut copies) = (Vec::with_capacity(batch.len()), Vec::new());
        for (i, t) in batch.iter().enumerate() {
            match first_of.get(&key(t)) {
                Some(&f) => copies.push((i, f)),
                None => {
                    first_of.insert(key(t), i);
                    firsts.push(i);
                }
            }
        }
        let way = if way == Way::Decided && counters_repeat(batch, &firsts) {
            Way::InsertedFirst
        } else {
            way
        };

        // The opening: the closed days (locked against a clearing run closing one), the
        // leases (held FOR SHARE), the blacklisted cards among the subsidised rows; then
        // either the first copies inserted with their proposed answers, or (every row
        // taken for new) the holds and sign-in awards, sent with them in one round trip.
        let mut pending = Pending::default();
        pending.defer(Step::One(&LOCK_DAYS_SHARED, Vec::new()));
        let closed = pending.ask(Step::One(&CLOSED_FROM, vec![first_day.get().into()]));
        let leases = pending.ask(super::cluster::leases_step(batch));
        let listed = pending.ask(blacklist_step(batch));
        let mut answers: Vec<Option<TxnAnswer>> = vec![None; batch.len()];
        // Rows recorded before this batch, by key; re-sends with other content.
        let mut before: HashMap<Key, Recorded> = HashMap::new();
        let mut conflicts = Vec::new();
        let mut inserted = None;
        match way {
            Way::Decided => {
                for &i in &firsts {
                    if let (Some(t), Some(slot)) = (batch.get(i), answers.get_mut(i)) {
                        *slot = Some(TxnRow::first_answer(t.proposal));
                    }
                }
                points::apply(
                    &mut tx,
                    &mut pending,
                    batch,
                    &mut answers,
                    ctx,
                    Phase::HoldsAndSignIns,
                )
                .await?;
                if !pending.sent(closed) {
                    pending.send(&mut tx, Vec::new()).await?;
                }
            }
            Way::InsertedFirst => {
                let rows = insert_rows(batch, &firsts, |t| TxnRow::first_answer(t.proposal));
                let done = pending
                    .send(&mut tx, vec![Step::Bulk(&INSERT_TXNS, insert_cols(&rows))])
                    .await?;
                let returned = done.into_iter().next().unwrap_or_default().rows;
                let left = mark_inserted(rows, &returned, &mut answers)?;
                inserted = Some(left);
            }
        }
        let closed: BTreeSet<u32> = pending
            .answer(closed)?
            .rows
            .iter()
            .map(|r| r.get::<u32>(0))
            .collect::<Result<_, _>>()?;
        if batch
            .iter()
            .any(|t| closed.contains(&t.business_date.get()))
            || !super::cluster::fenced_rows(batch, &pending.answer(leases)?.rows)?.is_empty()
        {
            drop(tx);
            return Ok(Ingested::Moved);
        }
        // Decided first, a row the holds rejected must still meet the card-counter index
        // as a stored row would (a replayed purchase with a spent hold is a replay).
        if way == Way::Decided
            && firsts.iter().any(|&i| {
                batch
                    .get(i)
                    .is_some_and(|t| matches!(t.proposal, Proposal::Store { .. }))
                    && answers
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|a| a.status != TxnStatus::Stored)
            })
        {
            drop(tx);
            return Ok(Ingested::NotDecided);
        }
        let listed: HashSet<i64> = pending
            .answer(listed)?
            .rows
            .iter()
            .map(|r| r.int(0))
            .collect::<Result<_, _>>()?;

        // Inserted first: the rows not inserted are re-sends, seq conflicts or card-counter
        // replays; then the points of the new rows.
        let mut as_inserted = None;
        if let Some(left) = inserted {
            let missing = answer_recorded(
                &mut tx,
                batch,
                &left,
                &mut answers,
                &mut before,
                &mut conflicts,
            )
            .await?;
            let replay = TxnAnswer::rejected(Reason::CardCounterReplay);
            let left = insert(&mut tx, batch, &missing, |_| replay, &mut answers).await?;
            let missing = answer_recorded(
                &mut tx,
                batch,
                &left,
                &mut answers,
                &mut before,
                &mut conflicts,
            )
            .await?;
            if let Some(&i) = missing.first() {
                return Err(StoreError::Corrupt(format!(
                    "batch row {i} neither inserted nor found"
                )));
            }
            // The rows as inserted: what changed answers are written over.
            as_inserted = Some(answers.clone());
            points::apply(
                &mut tx,
                &mut pending,
                batch,
                &mut answers,
                ctx,
                Phase::HoldsAndSignIns,
            )
            .await?;
        }
        if !listed.is_empty() {
            mark_blacklisted(batch, &mut answers, &listed);
        }
        budget::apply(&mut tx, &mut pending, batch, &mut answers, ctx).await?;
        if let Some(as_inserted) = as_inserted {
            defer_changed(&mut pending, batch, &as_inserted, &answers);
        } else {
            // Every first copy, once, with its answer as decided so far (final but for
            // the refunds, which need the batch's rows in the table). No ON CONFLICT: a
            // row that is not new fails the statement, and the attempt with it.
            let rows: Vec<(usize, TxnRow, TxnAnswer)> = firsts
                .iter()
                .filter_map(|&i| {
                    let t = batch.get(i)?;
                    let a = answers.get(i).copied().flatten()?;
                    Some((i, TxnRow::new(t, a), a))
                })
                .collect();
            pending.defer(Step::Bulk(&INSERT_NEW, insert_cols(&rows)));
        }
        // Refunds read the purchases they name as this batch leaves them.
        let decided = answers.clone();
        points::apply(
            &mut tx,
            &mut pending,
            batch,
            &mut answers,
            ctx,
            Phase::Refunds,
        )
        .await?;
        defer_changed(&mut pending, batch, &decided, &answers);

        for (c, f) in copies {
            let (Some(copy), Some(first)) = (batch.get(c), batch.get(f)) else {
                continue;
            };
            let recorded =
                match before.get(&key(first)) {
                    Some(r) => *r,
                    None => Recorded {
                        txn: first.txn,
                        answer: answers.get(f).copied().flatten().ok_or_else(|| {
                            StoreError::Corrupt(format!("batch row {f} unanswered"))
                        })?,
                    },
                };
            let answer = match answer_resend(&recorded, &copy.txn) {
                Resend::Same(a) => a,
                Resend::Conflict => {
                    conflicts.push(c);
                    TxnAnswer::rejected(Reason::SeqConflict)
                }
            };
            if let Some(slot) = answers.get_mut(c) {
                *slot = Some(answer);
            }
        }
        for i in conflicts {
            if let Some(t) = batch.get(i) {
                pending.defer(conflict_step(t));
            }
        }
        pending.commit(tx).await?;
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.ok_or_else(|| StoreError::Corrupt(format!("batch row {i} unanswered"))))
            .collect::<Result<_, _>>()
            .map(Ingested::Done)
    }
}

/// Taken before the closed days are read, and held to the commit: a clearing run closing
/// a day waits for it (see `clearing::clear_day`).
const LOCK_DAYS_SHARED: Sql = Sql::pg_only("LOCK TABLE closed_days IN ROW SHARE MODE");

const CLOSED_FROM: Sql =
    Sql::both("SELECT business_date FROM closed_days WHERE business_date >= $1");

/// The batch with every row whose business day is closed moved to the next open day
/// (for every purpose: its row, its budget month, its clearing).
async fn open_days<'a, T: Tx>(
    tx: &mut T,
    batch: &'a [IngestTxn],
) -> Result<Cow<'a, [IngestTxn]>, StoreError> {
    let Some(first) = batch.iter().map(|t| t.business_date).min() else {
        return Ok(Cow::Borrowed(batch));
    };
    tx.execute(&LOCK_DAYS_SHARED, &[]).await?;
    let closed: BTreeSet<u32> = tx
        .query(&CLOSED_FROM, params![first.get()])
        .await?
        .iter()
        .map(|r| r.get::<u32>(0))
        .collect::<Result<_, _>>()?;
    if !batch
        .iter()
        .any(|t| closed.contains(&t.business_date.get()))
    {
        return Ok(Cow::Borrowed(batch));
    }
    let mut moved = batch.to_vec();
    for t in &mut moved {
        while closed.contains(&t.business_date.get()) {
            t.business_date = crate::clock::next_day(t.business_date)
                .ok_or_else(|| StoreError::Corrupt(format!("no day after {}", t.business_date)))?;
        }
    }
    Ok(Cow::Owned(moved))
}

/// The rows `idxs` (distinct keys) as they are inserted, with `answer_of`'s answer.
fn insert_rows(
    batch: &[IngestTxn],
    idxs: &[usize],
    answer_of: impl Fn(&IngestTxn) -> TxnAnswer,
) -> Vec<(usize, TxnRow, TxnAnswer)> {
    idxs.iter()
        .filter_map(|&i| batch.get(i).map(|t| (i, t)))
        .map(|(i, t)| {
            let a = answer_of(t);
            (i, TxnRow::new(t, a), a)
        })
        .collect()
}

/// The columns of [`INSERT_TXNS`] for `rows`.
fn insert_cols(rows: &[(usize, TxnRow, TxnAnswer)]) -> Vec<Col> {
    macro_rules! col {
        ($f:ident) => {
            Col::Int(rows.iter().map(|(_, r, _)| i64::from(r.$f)).collect())
        };
    }
    vec![
        col!(device_id),
        col!(seq),
        col!(kind),
        col!(card_no),
        col!(card_counter),
        col!(counter_kind),
        col!(amount_fen),
        col!(list_price_fen),
        col!(item),
        col!(points_hold_id),
        col!(points_used),
        col!(refund_of_seq),
        col!(occurred_at_ms),
        col!(tac),
        Col::OptInt(rows.iter().map(|(_, r, _)| r.merchant_id).collect()),
        col!(status),
        col!(reason),
        col!(subsidy_fen),
        col!(points_awarded),
        col!(received_at_ms),
        col!(business_date),
    ]
}

/// Fills `answers` for the rows [`INSERT_TXNS`] returned (inserted); returns the indices
/// of the others.
fn mark_inserted(
    rows: Vec<(usize, TxnRow, TxnAnswer)>,
    returned: &[Row],
    answers: &mut [Option<TxnAnswer>],
) -> Result<Vec<usize>, StoreError> {
    let inserted: HashSet<Key> = returned
        .iter()
        .map(|r| Ok((r.int(0)?, r.int(1)?)))
        .collect::<Result<_, StoreError>>()?;
    let mut left = Vec::new();
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

/// Inserts the rows `idxs` (distinct keys) with `answer_of`'s answer and fills `answers`
/// for the rows inserted; returns the indices not inserted.
async fn insert<T: Tx>(
    tx: &mut T,
    batch: &[IngestTxn],
    idxs: &[usize],
    answer_of: impl Fn(&IngestTxn) -> TxnAnswer,
    answers: &mut [Option<TxnAnswer>],
) -> Result<Vec<usize>, StoreError> {
    if idxs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = insert_rows(batch, idxs, answer_of);
    let returned = tx.bulk(&INSERT_TXNS, &insert_cols(&rows)).await?;
    mark_inserted(rows, &returned, answers)
}

/// Answers the rows among `idxs` whose key is already recorded (re-sends, and seq
/// conflicts, whose indices go to `conflicts` to be recorded) and keeps the recorded rows
/// in `before`; returns the indices whose key is not recorded.
async fn answer_recorded<T: Tx>(
    tx: &mut T,
    batch: &[IngestTxn],
    idxs: &[usize],
    answers: &mut [Option<TxnAnswer>],
    before: &mut HashMap<Key, Recorded>,
    conflicts: &mut Vec<usize>,
) -> Result<Vec<usize>, StoreError> {
    if idxs.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Key> = idxs.iter().filter_map(|&i| batch.get(i)).map(key).collect();
    let cols = [
        Col::Int(keys.iter().map(|k| k.0).collect()),
        Col::Int(keys.iter().map(|k| k.1).collect()),
    ];
    for r in tx.bulk(&SELECT_RECORDED, &cols).await? {
        before.insert((r.int(0)?, r.int(1)?), recorded_of(&r)?);
    }
    let mut missing = Vec::new();
    for &i in idxs {
        let Some(t) = batch.get(i) else { continue };
        let answer = match before.get(&key(t)) {
            None => {
                missing.push(i);
                continue;
            }
            Some(rec) => match answer_resend(rec, &t.txn) {
                Resend::Same(a) => a,
                Resend::Conflict => {
                    conflicts.push(i);
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

/// The statement recording the payload of a TXN that reused a recorded seq with other
/// content (answered SEQ_CONFLICT).
fn conflict_step(t: &IngestTxn) -> Step<'static> {
    let (d, s) = key(t);
    Step::One(
        &RECORD_CONFLICT,
        vec![
            d.into(),
            s.into(),
            txn_payload(&t.txn).into(),
            t.received_at_ms.into(),
        ],
    )
}

/// The statement finding which of the batch's cards proposed a subsidy are blacklisted
/// (read ahead: whatever points decide, only those rows can lose a subsidy to it).
fn blacklist_step(batch: &[IngestTxn]) -> Step<'static> {
    let cards: BTreeSet<i64> = batch
        .iter()
        .filter(
            |t| matches!(t.proposal, Proposal::Store { subsidy_fen, .. } if subsidy_fen.get() > 0),
        )
        .map(|t| db_u64(t.txn.card_no.get()))
        .collect();
    Step::Bulk(&BLACKLISTED, vec![Col::Int(cards.into_iter().collect())])
}

/// Defers the write-back, in one statement, of the answers that points, blacklist and
/// budget changed from `inserted` to `answers`.
fn defer_changed(
    pending: &mut Pending,
    batch: &[IngestTxn],
    inserted: &[Option<TxnAnswer>],
    answers: &[Option<TxnAnswer>],
) {
    let mut cols: [Vec<i64>; 6] = Default::default();
    for ((t, before), after) in batch.iter().zip(inserted).zip(answers) {
        let (Some(before), Some(a)) = (before, after) else {
            continue;
        };
        if before == a {
            continue;
        }
        let (d, s) = key(t);
        let [ds, qs, st, rs, sub, pts] = &mut cols;
        ds.push(d);
        qs.push(s);
        st.push(i64::from(a.status.code()));
        rs.push(reason_code(a.reason));
        sub.push(a.subsidy_fen.get());
        pts.push(i64::from(a.points_awarded.get()));
    }
    if !cols[0].is_empty() {
        pending.defer(Step::Bulk(&WRITE_ANSWERS, cols.map(Col::Int).to_vec()));
    }
}

/// Rows newly stored with a subsidy whose card is blacklisted lose it (before the budget,
/// so they take none of it). `blacklisted` holds the batch's cards found on the list.
fn mark_blacklisted(
    batch: &[IngestTxn],
    answers: &mut [Option<TxnAnswer>],
    blacklisted: &HashSet<i64>,
) {
    for (t, a) in batch.iter().zip(answers.iter_mut()) {
        if let Some(a) = a
            && a.status == TxnStatus::Stored
            && a.subsidy_fen.get() > 0
            && blacklisted.contains(&db_u64(t.txn.card_no.get()))
        {
            a.subsidy_fen = Fen::ZERO;
            a.reason = Reason::CardBlacklisted;
        }
    }
}

// The rows of `txns` as the ledger writes and reads them.

/// Which card counter a TXN kind carries (contract: offline for PURCHASE and SIGN_IN,
/// online for TOP_UP and REFUND).
const fn counter_kind(kind: TxnKind) -> i16 {
    match kind {
        TxnKind::Purchase | TxnKind::SignIn => 1,
        TxnKind::TopUp | TxnKind::Refund => 2,
    }
}

/// The columns of a `txns` row, in the order both schemas declare them.
#[derive(Debug, Clone, Copy)]
struct TxnRow {
    device_id: i64,
    seq: i64,
    kind: i16,
    card_no: i64,
    card_counter: i64,
    counter_kind: i16,
    amount_fen: i64,
    list_price_fen: i64,
    item: i16,
    points_hold_id: i64,
    points_used: i64,
    refund_of_seq: i64,
    occurred_at_ms: i64,
    tac: i32,
    merchant_id: Option<i64>,
    status: i16,
    reason: i16,
    subsidy_fen: i64,
    points_awarded: i64,
    received_at_ms: i64,
    business_date: i32,
}

impl TxnRow {
    /// The row recording `t` with the given answer.
    fn new(t: &IngestTxn, answer: TxnAnswer) -> Self {
        let x = &t.txn;
        Self {
            device_id: db_u64(t.device_id.get()),
            seq: db_u64(x.seq.get()),
            kind: i16::from(x.kind.code()),
            card_no: db_u64(x.card_no.get()),
            card_counter: i64::from(x.card_counter.get()),
            counter_kind: counter_kind(x.kind),
            amount_fen: x.amount_fen.get(),
            list_price_fen: x.list_price_fen.get(),
            item: i16::from(x.item.code()),
            points_hold_id: db_u64(HoldId::wire(x.points_hold_id)),
            points_used: i64::from(x.points_used.get()),
            refund_of_seq: db_u64(Seq::wire(x.refund_of_seq)),
            occurred_at_ms: x.occurred_at_ms.get(),
            tac: i32::from_be_bytes(x.tac.0),
            merchant_id: t.merchant_id.map(|m| m.0),
            status: i16::from(answer.status.code()),
            reason: i16::try_from(answer.reason.code()).unwrap_or(i16::MAX),
            subsidy_fen: answer.subsidy_fen.get(),
            points_awarded: i64::from(answer.points_awarded.get()),
            received_at_ms: t.received_at_ms,
            business_date: i32::try_from(t.business_date.get()).unwrap_or(i32::MAX),
        }
    }

    /// The first answer a new TXN gets: its proposal.
    fn first_answer(p: Proposal) -> TxnAnswer {
        match p {
            Proposal::Store {
                reason,
                subsidy_fen,
                points_awarded,
            } => TxnAnswer {
                status: TxnStatus::Stored,
                reason,
                subsidy_fen,
                points_awarded,
            },
            Proposal::Reject(reason) => TxnAnswer::rejected(reason),
        }
    }
}

/// A recorded TXN read back: its content and its first answer.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    txn: Txn,
    answer: TxnAnswer,
}

/// A recorded row read back by [`SELECT_RECORDED`] (device_id, seq, then the TXN's fields
/// and its first answer), checked into our types: a value they cannot hold is an error
/// naming its column.
fn recorded_of(r: &Row) -> Result<Recorded, StoreError> {
    let corrupt = |what: &str, v: i64| StoreError::Corrupt(format!("txns.{what} = {v}"));
    let code = |i: usize, what: &str| -> Result<u8, StoreError> {
        let v = r.int(i)?;
        u8::try_from(v).map_err(|_| corrupt(what, v))
    };
    let seq = r.int(1)?;
    let kind = code(2, "kind")?;
    let item = code(7, "item")?;
    let status = code(13, "status")?;
    let reason = r.int(14)?;
    let txn = Txn {
        seq: Seq::new(from_db_u64(seq)).ok_or_else(|| corrupt("seq", seq))?,
        kind: TxnKind::from_code(kind).ok_or_else(|| corrupt("kind", kind.into()))?,
        card_no: CardNo(from_db_u64(r.int(3)?)),
        card_counter: CardCounter(r.get(4)?),
        amount_fen: Fen(r.int(5)?),
        list_price_fen: Fen(r.int(6)?),
        item: Item::from_code(item).ok_or_else(|| corrupt("item", item.into()))?,
        points_hold_id: HoldId::new(from_db_u64(r.int(8)?)),
        points_used: Points(r.get(9)?),
        refund_of_seq: Seq::new(from_db_u64(r.int(10)?)),
        occurred_at_ms: UnixMillis(r.int(11)?),
        tac: Bytes4(r.get::<i32>(12)?.to_be_bytes()),
    };
    let answer = TxnAnswer {
        status: TxnStatus::from_code(status).ok_or_else(|| corrupt("status", status.into()))?,
        reason: u16::try_from(reason)
            .ok()
            .and_then(Reason::from_code)
            .ok_or_else(|| corrupt("reason", reason))?,
        subsidy_fen: Fen(r.int(15)?),
        points_awarded: Points(r.get(16)?),
    };
    Ok(Recorded { txn, answer })
}

/// How an incoming TXN whose (device, seq) is already recorded is answered.
enum Resend {
    /// Identical content: the original answer (STORED becomes DUPLICATE).
    Same(TxnAnswer),
    /// Different content: SEQ_CONFLICT, and the payload is recorded as evidence.
    Conflict,
}

fn answer_resend(recorded: &Recorded, incoming: &Txn) -> Resend {
    if recorded.txn != *incoming {
        return Resend::Conflict;
    }
    let mut answer = recorded.answer;
    if answer.status == TxnStatus::Stored {
        answer.status = TxnStatus::Duplicate;
    }
    Resend::Same(answer)
}

/// The 70-byte wire payload of a TXN: the exact evidence of a conflicting re-send.
fn txn_payload(txn: &Txn) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    wenxiao_protocol::Message::Txn(*txn).encode(&mut buf);
    buf.get(wenxiao_protocol::limits::FRAME_HEADER_BYTES..)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}
