//! POINTS_AUTH: holds of points against a purchase.

use super::{Phase, Session};
use crate::clock;
use crate::store::Store;
use actix::prelude::*;
use wenxiao_protocol::{Message, Points, Reason, UnixMillis};

impl Session {
    /// POINTS_AUTH: the 50 % cap is checked here (pure), the balance and the hold in the
    /// store. The answer is sent when the store replies; other frames go on meanwhile.
    pub(super) fn on_points_auth(
        &mut self,
        p: wenxiao_protocol::PointsAuth,
        ctx: &mut Context<Self>,
    ) {
        use wenxiao_protocol::{AuthStatus, PointsAuthResult};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let decline = |reason| {
            Message::PointsAuthResult(PointsAuthResult {
                req_id: p.req_id,
                status: AuthStatus::Declined,
                reason,
                hold_id: None,
                points_approved: Points(0),
                points_balance: Points(0),
                expires_at_ms: UnixMillis(0),
            })
        };
        if device.kind != wenxiao_protocol::DeviceKind::Pos {
            return self.send(ctx, decline(Reason::KindNotAllowed));
        }
        let policy = &self.shared.policy.points;
        if let Err(reason) =
            crate::rules::check_points_use(p.purchase_fen, p.points, Points(u32::MAX), policy)
        {
            return self.send(ctx, decline(reason));
        }
        let now = clock::now_ms();
        let request = crate::store::HoldRequest {
            card_no: p.card_no,
            device_id: device.device_id,
            points: p.points,
            purchase_fen: p.purchase_fen,
            now_ms: now,
            expires_at_ms: now.saturating_add(policy.hold_ttl_ms),
        };
        let store = self.shared.store.clone();
        let reply = move |outcome| {
            Message::PointsAuthResult(match outcome {
                crate::store::HoldOutcome::Approved { hold_id, available } => PointsAuthResult {
                    req_id: p.req_id,
                    status: AuthStatus::Approved,
                    reason: Reason::None,
                    hold_id: Some(hold_id),
                    points_approved: p.points,
                    points_balance: available,
                    expires_at_ms: UnixMillis(request.expires_at_ms),
                },
                crate::store::HoldOutcome::Insufficient { available } => PointsAuthResult {
                    req_id: p.req_id,
                    status: AuthStatus::Declined,
                    reason: Reason::InsufficientPoints,
                    hold_id: None,
                    points_approved: Points(0),
                    points_balance: available,
                    expires_at_ms: UnixMillis(0),
                },
            })
        };
        self.store_request(ctx, async move { store.create_hold(request).await }, reply);
    }
}
