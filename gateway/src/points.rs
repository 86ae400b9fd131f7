//! The points exchange's vocabulary: POINTS_AUTH holds and the app's reviews and shares.
//! The rules are in `rules.rs` (the 50 % cap, refunds' share); the ledger applies them.

use crate::registry::MerchantId;
use wenxiao_protocol::{BusinessDate, CardNo, DeviceId, Fen, HoldId, Points};

/// A review (kind 2) or share (kind 3) in the app, for points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// The card.
    pub card_no: CardNo,
    /// The public venue reviewed or shared.
    pub venue: MerchantId,
    /// The Shanghai day it happened (the gateway's clock).
    pub day: BusinessDate,
    /// 2 review, 3 share.
    pub kind: i16,
    /// Points it earns.
    pub points: Points,
}

/// The answer to an [`Activity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityOutcome {
    /// Points credited; the card's balance now.
    Awarded(Points),
    /// This kind was already awarded to the card today.
    DailyLimit,
    /// The card did not sign in at that venue today.
    NoSignIn,
}

/// A POINTS_AUTH to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRequest {
    /// The card.
    pub card_no: CardNo,
    /// The POS asking.
    pub device_id: DeviceId,
    /// Points to hold.
    pub points: Points,
    /// The whole purchase.
    pub purchase_fen: Fen,
    /// Now (expired holds are released against it).
    pub now_ms: i64,
    /// When the new hold lapses.
    pub expires_at_ms: i64,
}

/// The answer to a POINTS_AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Held.
    Approved {
        /// The hold to quote in the TXN.
        hold_id: HoldId,
        /// Points still free after the hold.
        available: Points,
    },
    /// Not enough free points.
    Insufficient {
        /// Points free.
        available: Points,
    },
}
