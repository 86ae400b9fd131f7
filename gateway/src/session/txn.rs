//! TXN frames: validation, the provisional subsidy, the ingest queue, and the acks with
//! the answered-seq watermark they advance.

use super::{Phase, Session};
use crate::clock;
use crate::ingest::{IngestItem, TxnDone};
use crate::metrics as m;
use crate::registry::Merchant;
use crate::store::{IngestTxn, Proposal, TxnAnswer};
use crate::validate;
use actix::prelude::*;
use std::collections::BTreeSet;
use std::time::Instant;
use wenxiao_protocol::{ErrorCode, Fen, Message, Points, Reason, Seq, Txn, TxnAck, TxnStatus};

/// Tracks the highest contiguous answered seq of this session's device.
pub(super) struct SeqTracker {
    pub(super) watermark: u64,
    pub(super) above: BTreeSet<u64>,
    pub(super) above_max: usize,
    pub(super) checkpointed: u64,
}

impl SeqTracker {
    pub(super) fn answered(&mut self, seq: u64) {
        if seq <= self.watermark {
            return;
        }
        if seq == self.watermark + 1 {
            self.watermark = seq;
            while self.above.remove(&(self.watermark + 1)) {
                self.watermark += 1;
            }
        } else if self.above.len() < self.above_max {
            self.above.insert(seq);
        }
    }
}

impl Session {
    pub(super) fn on_txn(&mut self, txn: Txn, ctx: &mut Context<Self>) {
        let Phase::Active { device, merchant } = &self.phase else {
            return;
        };
        if self.in_flight >= usize::from(self.shared.config.session.max_in_flight) {
            return self.fail(
                ctx,
                ErrorCode::TooManyInFlight,
                "more TXNs in flight than max_in_flight",
            );
        }
        let received = Instant::now();
        let received_at_ms = clock::now_ms();
        let Some(business_date) = clock::business_date(received_at_ms) else {
            return self.fail(
                ctx,
                ErrorCode::StoreUnavailable,
                "gateway clock out of range",
            );
        };
        let proposal = match validate::check_txn(
            &txn,
            device,
            merchant.as_ref(),
            &self.shared.config.txn,
            &self.shared.keys,
        )
        .and_then(|()| {
            crate::rules::check_points_paid(
                txn.amount_fen,
                txn.points_used,
                &self.shared.policy.points,
            )
        }) {
            Ok(()) => {
                let subsidy = provisional_subsidy(&txn, merchant.as_ref(), &self.shared.policy);
                Proposal::Store {
                    reason: subsidy.reason,
                    subsidy_fen: subsidy.fen,
                    points_awarded: Points(0),
                }
            }
            Err(reason) => Proposal::Reject(reason),
        };
        let item = IngestItem {
            txn: IngestTxn {
                device_id: device.device_id,
                merchant_id: device.merchant_id,
                txn,
                proposal,
                received_at_ms,
                business_date,
                lease_epoch: Some(self.lease_epoch),
            },
            reply: ctx.address().recipient(),
            received,
        };
        let Some(queue) = self.ingest.clone() else {
            return self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
        };
        self.in_flight += 1;
        match queue.try_send(item) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(item)) => {
                // Backpressure: pause this actor (and so its socket reads) until a slot
                // frees up.
                ctx.wait(
                    actix::fut::wrap_future(async move { queue.send(item).await }).map(
                        |res, act: &mut Session, ctx| {
                            if res.is_err() {
                                act.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
                            }
                        },
                    ),
                );
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
            }
        }
    }

    pub(super) fn checkpoint(&mut self) {
        let (Some(device), Some(seq)) = (self.device_id, Seq::new(self.seqs.watermark)) else {
            return;
        };
        if self.seqs.watermark <= self.seqs.checkpointed {
            return;
        }
        self.seqs.checkpointed = self.seqs.watermark;
        self.shared.watermarks.insert(device, self.seqs.watermark);
        if self.shared.checkpoints.try_send((device, seq)).is_err() {
            tracing::debug!(%device, "stored_seq checkpoint skipped: queue full");
        }
    }
}

/// The subsidy a valid TXN asks of the budget (the store grants it, or less).
fn provisional_subsidy(
    txn: &Txn,
    merchant: Option<&Merchant>,
    policy: &crate::policy::Policy,
) -> crate::rules::Subsidy {
    let none = crate::rules::Subsidy {
        fen: Fen::ZERO,
        reason: Reason::None,
    };
    match (txn.kind, merchant) {
        (wenxiao_protocol::TxnKind::Purchase, Some(m)) => crate::rules::purchase_subsidy(
            &crate::rules::PurchaseFacts {
                category: m.category,
                item: txn.item,
                paid_fen: txn.amount_fen,
                list_price_fen: txn.list_price_fen,
                points_used: txn.points_used,
                // The blacklist lives in the store, which takes the subsidy off a
                // blacklisted card's purchase in the ingest transaction.
                card_blacklisted: false,
                merchant_suspended: !m.active,
            },
            policy,
        ),
        // Sign-ins, top-ups and refunds ask nothing of the budget; refund reversals come
        // with clearing.
        _ => none,
    }
}

impl Handler<TxnDone> for Session {
    type Result = ();

    fn handle(&mut self, done: TxnDone, ctx: &mut Context<Self>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let answer: TxnAnswer = match done.answer {
            Ok(a) => a,
            Err(crate::ingest::Unanswered::Fenced) => {
                metrics::counter!(m::TXNS_FENCED_TOTAL).increment(1);
                return self.fail(
                    ctx,
                    ErrorCode::SessionReplaced,
                    "another session of this device took over; re-send there",
                );
            }
            Err(crate::ingest::Unanswered::StoreUnavailable) => {
                return self.fail(
                    ctx,
                    ErrorCode::StoreUnavailable,
                    "store unavailable; re-send later",
                );
            }
        };
        self.seqs.answered(done.seq.get());
        metrics::counter!(m::TXNS_TOTAL, "status" => answer.status.name(), "reason" => answer.reason.name())
            .increment(1);
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        self.send(
            ctx,
            Message::TxnAck(TxnAck {
                seq: done.seq,
                status: answer.status,
                reason: answer.reason,
                subsidy_fen: answer.subsidy_fen,
                points_awarded: answer.points_awarded,
            }),
        );
        metrics::histogram!(m::TXN_ACK_SECONDS).record(done.received.elapsed());
        debug_assert!(
            answer.status != TxnStatus::Duplicate || answer.reason != Reason::SeqConflict
        );
    }
}
