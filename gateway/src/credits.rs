//! The credit load exchange as pure functions: what LOAD_INIT, CREDIT_RESULT and a
//! presented card do to a credit, given its row. The ledger locks the rows and applies
//! these decisions; nothing here reads the clock or the database.

use crate::store::db_u64;
use wenxiao_protocol::{CardNo, DeviceId, Fen, Reason};

/// Credit statuses in the `credits` table (1, cleared and waiting for the audit step, is
/// only ever written by the clearing SQL).
pub mod credit_status {
    /// Released: may be offered, bound, loaded.
    pub const RELEASED: i16 = 2;
    /// Loaded onto the card: final.
    pub const LOADED: i16 = 3;
    /// Parked for staff (NOT_LOADED_FINAL).
    pub const PARKED: i16 = 4;
}

/// What `card_presented` found for a credit in doubt, given the card's online counter:
/// the attempt recorded `attempt` (the counter before the load). `counter_taken` says
/// whether a recorded top-up or refund of the card already holds `attempt + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The card applied the load.
    Loaded,
    /// It did not: the attempt is void and the credit may be offered again.
    Void,
    /// The counter says neither (it went backwards), or the card was read before the
    /// attempt was recorded: stays in doubt.
    Unknown,
}

/// Settles a recorded attempt (online_seq `attempt` before the load, recorded at ledger
/// clock `attempt_order`) by a card seen with `online_seq_now` in a request received at
/// ledger clock `received_order`. A request received before the attempt was recorded (a
/// presentation still in flight from a replaced session, or delayed) proves nothing about
/// it: the attempt stays in doubt. The order is the store's, never a gateway's wall clock.
pub fn settle(
    attempt: i32,
    attempt_order: i64,
    online_seq_now: i32,
    received_order: i64,
    counter_taken: bool,
) -> Settlement {
    if received_order < attempt_order {
        Settlement::Unknown
    } else if online_seq_now == attempt || (online_seq_now > attempt && counter_taken) {
        Settlement::Void
    } else if online_seq_now > attempt {
        Settlement::Loaded
    } else {
        Settlement::Unknown
    }
}

/// A `credits` row as the load exchange sees it.
#[derive(Debug, Clone, Copy)]
pub struct CreditView {
    pub card_no: i64,
    pub status: i16,
    pub amount_fen: i64,
    pub bound_device: Option<i64>,
    /// (online_seq before the load, host time) of a recorded attempt.
    pub attempt: Option<(i32, i64)>,
}

/// The first part of LOAD_INIT's checks, on the credit's own row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginCheck {
    Decline(Reason),
    /// The same LOAD_INIT again (its LOAD_AUTH was lost): approve with the recorded time.
    Again {
        amount_fen: i64,
        host_time_ms: i64,
    },
    /// Passes so far: check for other loads of the card in doubt, then MAC1, then record.
    Fresh {
        amount_fen: i64,
    },
}

pub fn begin_check(row: Option<CreditView>, r: &LoadInitRequest) -> BeginCheck {
    let Some(c) = row else {
        return BeginCheck::Decline(Reason::UnknownCredit);
    };
    if c.status != credit_status::RELEASED {
        return BeginCheck::Decline(Reason::UnknownCredit);
    }
    if c.card_no != db_u64(r.card_no.get()) || c.bound_device != Some(db_u64(r.device_id.get())) {
        return BeginCheck::Decline(Reason::CreditNotYours);
    }
    let n = i32::from(r.online_seq.get());
    match c.attempt {
        Some((seq, host_time_ms)) if seq == n => BeginCheck::Again {
            amount_fen: c.amount_fen,
            host_time_ms,
        },
        Some(_) => BeginCheck::Decline(Reason::CreditInDoubt),
        // The load TAC covers online_seq + 1, which a card at 65,535 does not have.
        None if r.online_seq.get() == u16::MAX => BeginCheck::Decline(Reason::InvalidField),
        None => BeginCheck::Fresh {
            amount_fen: c.amount_fen,
        },
    }
}

/// The rest of LOAD_INIT's checks, after [`begin_check`]: another load of the card in
/// doubt (`other_in_doubt`, looked up only for a fresh attempt), then MAC1. Returns the
/// answer and whether the attempt must be recorded before it is sent.
pub fn begin_decide(
    check: BeginCheck,
    other_in_doubt: bool,
    host_time_ms: i64,
    mac1_ok: impl FnOnce(Fen) -> bool,
) -> (LoadDecision, bool) {
    // The time of an attempt already recorded (a re-sent LOAD_INIT), or none.
    let (amount_fen, recorded) = match check {
        BeginCheck::Decline(reason) => return (LoadDecision::Declined(reason), false),
        BeginCheck::Fresh { .. } if other_in_doubt => {
            return (LoadDecision::Declined(Reason::CreditInDoubt), false);
        }
        BeginCheck::Again {
            amount_fen,
            host_time_ms,
        } => (amount_fen, Some(host_time_ms)),
        BeginCheck::Fresh { amount_fen } => (amount_fen, None),
    };
    if !mac1_ok(Fen(amount_fen)) {
        return (LoadDecision::Declined(Reason::BadMac), false);
    }
    let approved = |host_time_ms| LoadDecision::Approved {
        amount_fen: Fen(amount_fen),
        host_time_ms,
    };
    match recorded {
        Some(t) => (approved(t), false),
        None => (approved(host_time_ms), true),
    }
}

/// What a CREDIT_RESULT does to the credit's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishStep {
    Answer(wenxiao_protocol::ResultStatus, Reason),
    /// LOADED: verify the TAC against the attempt; mark loaded if it holds.
    VerifyTac(LoadAttempt),
    /// Release the binding (NOT_LOADED_RETRY before any attempt).
    Unbind,
    /// Park for staff (NOT_LOADED_FINAL).
    Park,
}

pub fn finish_step(row: Option<CreditView>, r: &ResultReport) -> FinishStep {
    use wenxiao_protocol::{CreditOutcome, ResultStatus};
    let Some(c) = row else {
        return FinishStep::Answer(ResultStatus::Rejected, Reason::UnknownCredit);
    };
    if c.card_no != db_u64(r.card_no.get()) {
        return FinishStep::Answer(ResultStatus::Rejected, Reason::CreditNotYours);
    }
    if c.status == credit_status::LOADED || c.status == credit_status::PARKED {
        return FinishStep::Answer(ResultStatus::Duplicate, Reason::None);
    }
    if c.status != credit_status::RELEASED {
        return FinishStep::Answer(ResultStatus::Rejected, Reason::UnknownCredit);
    }
    if c.bound_device != Some(db_u64(r.device_id.get())) {
        return FinishStep::Answer(ResultStatus::Rejected, Reason::CreditNotYours);
    }
    match (r.outcome, c.attempt) {
        (CreditOutcome::Loaded, Some((seq, host_time_ms))) => FinishStep::VerifyTac(LoadAttempt {
            amount_fen: Fen(c.amount_fen),
            online_seq: wenxiao_protocol::OnlineSeq(u16::try_from(seq).unwrap_or(u16::MAX)),
            host_time_ms,
        }),
        (CreditOutcome::Loaded, None) => {
            FinishStep::Answer(ResultStatus::Rejected, Reason::InvalidField)
        }
        (CreditOutcome::NotLoadedRetry, None) => FinishStep::Unbind,
        // After LOAD_AUTH the card may have applied the load: only its counter can tell.
        (CreditOutcome::NotLoadedRetry, Some(_)) => {
            FinishStep::Answer(ResultStatus::Recorded, Reason::None)
        }
        (CreditOutcome::NotLoadedFinal, _) => FinishStep::Park,
    }
}

/// A card on a POS or kiosk reader (CARD_PRESENTED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardSeen {
    /// The card.
    pub card_no: CardNo,
    /// Its online (load) counter now.
    pub online_seq: wenxiao_protocol::OnlineSeq,
    /// The device it is on.
    pub device_id: DeviceId,
    /// Now.
    pub now_ms: i64,
    /// The ledger clock the session had seen when it received the presentation
    /// ([`crate::store::Store::observed_order`]).
    pub received_order: i64,
    /// A binding with no attempt lapses after this long.
    pub binding_timeout_ms: i64,
    /// The session's device lease epoch: the store refuses the step unless it is the
    /// device's lease now (`None`: not fenced, for tools and tests).
    pub lease_epoch: Option<u64>,
}

/// What an OTA endpoint session asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushClaim {
    /// The endpoint.
    pub device_id: DeviceId,
    /// Its operator's card numbers, from…
    pub cards_from: CardNo,
    /// …to (inclusive).
    pub cards_to: CardNo,
    /// Also return credits already bound to this endpoint.
    pub include_bound: bool,
    /// At most this many.
    pub limit: i64,
    /// Now.
    pub now_ms: i64,
    /// Bindings older than this without an attempt have lapsed.
    pub binding_timeout_ms: i64,
    /// The session's device lease epoch: the store refuses the step unless it is the
    /// device's lease now (`None`: not fenced, for tools and tests).
    pub lease_epoch: Option<u64>,
}

/// A LOAD_INIT whose fields parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadInitRequest {
    /// The credit.
    pub credit_id: wenxiao_protocol::CreditId,
    /// The card.
    pub card_no: CardNo,
    /// The card's online counter before the load.
    pub online_seq: wenxiao_protocol::OnlineSeq,
    /// The loading device.
    pub device_id: DeviceId,
    /// The host time MAC2 will carry, unless an attempt is already recorded.
    pub host_time_ms: i64,
    /// The ledger clock the session had seen when it received the LOAD_INIT.
    pub received_order: i64,
    /// The session's device lease epoch: the store refuses the step unless it is the
    /// device's lease now (`None`: not fenced, for tools and tests).
    pub lease_epoch: Option<u64>,
}

/// The answer to a LOAD_INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadDecision {
    /// The attempt is recorded: send LOAD_AUTH with MAC2 over these.
    Approved {
        /// The credit's amount.
        amount_fen: Fen,
        /// The host time of the recorded attempt (the original one for a re-sent
        /// LOAD_INIT, so MAC2 comes out the same).
        host_time_ms: i64,
    },
    /// DECLINED with this reason.
    Declined(Reason),
}

/// The recorded attempt a load TAC is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadAttempt {
    /// The credit's amount.
    pub amount_fen: Fen,
    /// The card's online counter before the load.
    pub online_seq: wenxiao_protocol::OnlineSeq,
    /// The host time in MAC2.
    pub host_time_ms: i64,
}

/// A CREDIT_RESULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultReport {
    /// The credit.
    pub credit_id: wenxiao_protocol::CreditId,
    /// The card.
    pub card_no: CardNo,
    /// The reported outcome.
    pub outcome: wenxiao_protocol::CreditOutcome,
    /// The reporting device.
    pub device_id: DeviceId,
    /// Now.
    pub now_ms: i64,
    /// The session's device lease epoch: the store refuses the step unless it is the
    /// device's lease now (`None`: not fenced, for tools and tests).
    pub lease_epoch: Option<u64>,
}
