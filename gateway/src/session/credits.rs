//! The credit exchange: offers on CARD_PRESENTED, LOAD_INIT/LOAD_AUTH, CREDIT_RESULT,
//! and an OTA endpoint's pushes.

use super::{Phase, PushNow, Session};
use crate::clock;
use crate::store::Store;
use actix::prelude::*;
use wenxiao_protocol::{ErrorCode, Fen, Message, Reason, UnixMillis};

impl Session {
    /// OTA endpoints: claims released credits of the operator's cards up to the free
    /// `max_in_flight` slots and pushes them.
    pub(super) fn claim(&mut self, ctx: &mut Context<Self>, include_bound: bool) {
        let Some((from, to)) = self.ota_range else {
            return;
        };
        let Some(device_id) = self.device_id else {
            return;
        };
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        if self.claiming {
            self.claim_again = true;
            return;
        }
        let window = self
            .shared
            .config
            .session
            .max_in_flight
            .min(self.shared.config.credits.push_window);
        let free = usize::from(window).saturating_sub(self.pushed.len());
        if free == 0 {
            return;
        }
        self.claiming = true;
        let claim = crate::store::PushClaim {
            device_id,
            cards_from: from,
            cards_to: to,
            include_bound,
            limit: i64::try_from(free).unwrap_or(i64::MAX),
            now_ms: clock::now_ms(),
            binding_timeout_ms: self.shared.config.credits.binding_timeout_ms,
            lease_epoch: Some(self.lease_epoch),
        };
        let store = self.shared.store.clone();
        let task = self
            .shared
            .store_rt
            .spawn(async move { store.claim_pushes(claim).await });
        ctx.spawn(
            actix::fut::wrap_future(task).map(|res, act: &mut Session, ctx| {
                act.claiming = false;
                match res {
                    Ok(Ok(pushes)) => {
                        if matches!(act.phase, Phase::Closing) {
                            return;
                        }
                        for p in pushes {
                            if act.pushed.insert(p.credit_id) {
                                act.send(ctx, Message::CreditPush(p));
                            }
                        }
                        if std::mem::take(&mut act.claim_again) {
                            act.claim(ctx, false);
                        }
                    }
                    Ok(Err(crate::store::StoreError::Fenced { .. })) => {
                        act.fail(
                            ctx,
                            ErrorCode::SessionReplaced,
                            "another session of this device took over",
                        );
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "claiming pushes failed");
                        act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claim task failed");
                        act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                }
            }),
        );
    }

    /// CARD_PRESENTED: settle what is in doubt for the card, offer what it is owed. Only
    /// POS terminals and kiosks load cards; other devices get an empty offer.
    pub(super) fn on_card_presented(
        &mut self,
        p: wenxiao_protocol::CardPresented,
        ctx: &mut Context<Self>,
    ) {
        use wenxiao_protocol::{CreditList, CreditOffer, DeviceKind};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let offer = move |credits| {
            Message::CreditOffer(CreditOffer {
                req_id: p.req_id,
                credits: CreditList::new(credits).unwrap_or_default(),
            })
        };
        if !matches!(device.kind, DeviceKind::Pos | DeviceKind::Kiosk) {
            return self.send(ctx, offer(Vec::new()));
        }
        let seen = crate::store::CardSeen {
            card_no: p.card_no,
            online_seq: p.online_seq,
            device_id: device.device_id,
            now_ms: clock::now_ms(),
            received_order: self.shared.store.observed_order(),
            binding_timeout_ms: self.shared.config.credits.binding_timeout_ms,
            lease_epoch: Some(self.lease_epoch),
        };
        let store = self.shared.store.clone();
        self.store_request(ctx, async move { store.card_presented(seen).await }, offer);
    }

    /// LOAD_INIT: MAC1 checked and the attempt recorded by the store before LOAD_AUTH.
    pub(super) fn on_load_init(&mut self, l: wenxiao_protocol::LoadInit, ctx: &mut Context<Self>) {
        use crate::store::LoadDecision;
        use wenxiao_protocol::mac::{KeyPurpose, Mac1Input, Mac2Input, mac_eq};
        use wenxiao_protocol::{AuthStatus, Bytes4, LoadAuth};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let device_id = device.device_id;
        let key = self.shared.keys.card_key(KeyPurpose::Load, l.card_no);
        let mac1_key = key.clone();
        let mac1_ok = move |amount_fen: Fen| {
            let expected = Mac1Input {
                card_no: l.card_no,
                online_seq: l.online_seq,
                balance_fen: l.balance_fen,
                amount_fen,
                device_id,
                card_random: l.card_random,
            }
            .mac(&mac1_key);
            mac_eq(expected, l.mac1)
        };
        let now = clock::now_ms();
        let request = crate::store::LoadInitRequest {
            credit_id: l.credit_id,
            card_no: l.card_no,
            online_seq: l.online_seq,
            device_id,
            host_time_ms: now,
            received_order: self.shared.store.observed_order(),
            lease_epoch: Some(self.lease_epoch),
        };
        let store = self.shared.store.clone();
        let reply = move |decision| {
            let auth = match decision {
                LoadDecision::Approved {
                    amount_fen,
                    host_time_ms,
                } => LoadAuth {
                    credit_id: l.credit_id,
                    status: AuthStatus::Approved,
                    reason: Reason::None,
                    host_time_ms: UnixMillis(host_time_ms),
                    mac2: Mac2Input {
                        card_no: l.card_no,
                        online_seq: l.online_seq,
                        amount_fen,
                        device_id,
                        host_time_ms: UnixMillis(host_time_ms),
                        card_random: l.card_random,
                    }
                    .mac(&key),
                },
                LoadDecision::Declined(reason) => LoadAuth {
                    credit_id: l.credit_id,
                    status: AuthStatus::Declined,
                    reason,
                    host_time_ms: UnixMillis(now),
                    mac2: Bytes4::ZERO,
                },
            };
            Message::LoadAuth(auth)
        };
        self.store_request(
            ctx,
            async move { store.begin_load(request, mac1_ok).await },
            reply,
        );
    }

    /// CREDIT_RESULT: the load TAC verified against the recorded attempt.
    pub(super) fn on_credit_result(
        &mut self,
        r: wenxiao_protocol::CreditResult,
        ctx: &mut Context<Self>,
    ) {
        use wenxiao_protocol::CreditResultAck;
        use wenxiao_protocol::mac::{KeyPurpose, LoadTacInput, mac_eq};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let device_id = device.device_id;
        self.pushed.remove(&r.credit_id);
        let key = self.shared.keys.card_key(KeyPurpose::Load, r.card_no);
        let tac_ok = move |a: &crate::store::LoadAttempt| {
            let expected = LoadTacInput {
                card_no: r.card_no,
                online_seq: a.online_seq,
                balance_after_fen: r.balance_after_fen,
                amount_fen: a.amount_fen,
                device_id,
                host_time_ms: UnixMillis(a.host_time_ms),
            }
            .tac(&key);
            mac_eq(expected, r.tac)
        };
        let report = crate::store::ResultReport {
            credit_id: r.credit_id,
            card_no: r.card_no,
            outcome: r.outcome,
            device_id,
            now_ms: clock::now_ms(),
            lease_epoch: Some(self.lease_epoch),
        };
        let store = self.shared.store.clone();
        self.store_request(
            ctx,
            async move { store.finish_load(report, tac_ok).await },
            move |(status, reason)| {
                Message::CreditResultAck(CreditResultAck {
                    credit_id: r.credit_id,
                    status,
                    reason,
                })
            },
        );
    }
}

impl Handler<PushNow> for Session {
    type Result = ();
    fn handle(&mut self, _: PushNow, ctx: &mut Context<Self>) {
        self.claim(ctx, false);
    }
}
