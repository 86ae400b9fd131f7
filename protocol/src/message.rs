//! The messages of the v1 contract, one struct each, and [`Message`], their sum.
//!
//! Field names are the contract's. Fields whose wire zero means "none" are `Option`s.

use crate::limits::{CREDIT_OFFER_COUNT_MAX, HOTLIST_CARDS_PER_FRAME_MAX};
use crate::types::{
    AuthStatus, BusinessDate, Bytes4, CardCounter, CardNo, CreditId, CreditOutcome, DeviceId,
    DeviceKind, ErrorCode, Fen, HoldId, HotlistVersion, Item, OnlineSeq, Points, Reason, ReqId,
    ResultStatus, Seq, SessionId, Text, TxnKind, TxnStatus, UnixMillis, wire_enum, zero_is_none,
};
use serde::{Deserialize, Serialize};
use std::fmt;

wire_enum! {
    /// The type byte of a frame.
    pub enum MessageType: u8 {
        /// Device → gateway: open a session.
        Hello = 0x01 => "HELLO",
        /// Device → gateway: keep-alive.
        Heartbeat = 0x02 => "HEARTBEAT",
        /// Device → gateway: one transaction.
        Txn = 0x03 => "TXN",
        /// Device → gateway: ask for a points hold.
        PointsAuth = 0x04 => "POINTS_AUTH",
        /// Device → gateway: a card is on the reader; any credits for it?
        CardPresented = 0x05 => "CARD_PRESENTED",
        /// Device → gateway: how a credit load ended.
        CreditResult = 0x06 => "CREDIT_RESULT",
        /// Device → gateway: hot list version applied.
        HotlistAck = 0x07 => "HOTLIST_ACK",
        /// Device → gateway: the card's MAC1 for a credit load.
        LoadInit = 0x08 => "LOAD_INIT",
        /// Gateway → device: session accepted.
        Welcome = 0x41 => "WELCOME",
        /// Gateway → device: heartbeat echo.
        HeartbeatAck = 0x42 => "HEARTBEAT_ACK",
        /// Gateway → device: the answer to a TXN.
        TxnAck = 0x43 => "TXN_ACK",
        /// Gateway → device: the answer to a POINTS_AUTH.
        PointsAuthResult = 0x44 => "POINTS_AUTH_RESULT",
        /// Gateway → device: credits waiting for a presented card.
        CreditOffer = 0x45 => "CREDIT_OFFER",
        /// Gateway → OTA endpoint: a credit to load onto a SIM card.
        CreditPush = 0x46 => "CREDIT_PUSH",
        /// Gateway → device: the answer to a CREDIT_RESULT.
        CreditResultAck = 0x47 => "CREDIT_RESULT_ACK",
        /// Gateway → device: hot list changes.
        HotlistUpdate = 0x48 => "HOTLIST_UPDATE",
        /// Gateway → device: the answer to a LOAD_INIT, with MAC2.
        LoadAuth = 0x49 => "LOAD_AUTH",
        /// Gateway → device: a protocol error.
        Error = 0x4E => "ERROR",
        /// Gateway → device: planned shutdown, reconnect later.
        Drain = 0x4F => "DRAIN",
    }
}

/// Who sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by devices, received by the gateway.
    DeviceToGateway,
    /// Sent by the gateway, received by devices.
    GatewayToDevice,
}

impl MessageType {
    /// Who sends this message.
    pub const fn direction(self) -> Direction {
        if self.code() < 0x40 {
            Direction::DeviceToGateway
        } else {
            Direction::GatewayToDevice
        }
    }

    /// Smallest and largest payload length this type can have, in bytes. The decoder
    /// checks the header's length against these before it buffers the payload.
    pub const fn payload_bytes_range(self) -> (usize, usize) {
        use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, HOTLIST_FIXED_BYTES, TEXT_BYTES_MAX};
        match self {
            Self::Hello => (
                HELLO_FIXED_BYTES + 2,
                HELLO_FIXED_BYTES + 2 + TEXT_BYTES_MAX,
            ),
            Self::Heartbeat => (8, 8),
            Self::Txn => (TXN_BYTES, TXN_BYTES),
            Self::PointsAuth => (24, 24),
            Self::CardPresented => (22, 22),
            Self::CreditResult => (31, 31),
            Self::HotlistAck => (4, 4),
            Self::LoadInit => (34, 34),
            Self::Welcome => (32, 32),
            Self::HeartbeatAck => (16, 16),
            Self::TxnAck => (23, 23),
            Self::PointsAuthResult => (31, 31),
            Self::CreditOffer => (5, 5 + CREDIT_OFFER_COUNT_MAX * OFFERED_CREDIT_BYTES),
            Self::CreditPush => (28, 28),
            Self::CreditResultAck => (11, 11),
            Self::HotlistUpdate => (HOTLIST_FIXED_BYTES, FRAME_PAYLOAD_BYTES_MAX as usize),
            Self::LoadAuth => (23, 23),
            Self::Error => (5, 5 + TEXT_BYTES_MAX),
            Self::Drain => (4, 4),
        }
    }
}

/// HELLO without its firmware string: device_id 8 + kind 1 + last_seq 8 + hotlist_version 4.
const HELLO_FIXED_BYTES: usize = 21;
/// TXN payload: every field is fixed-size.
pub(crate) const TXN_BYTES: usize = 70;
/// One CREDIT_OFFER entry: credit_id 8 + amount_fen 8 + business_date 4.
pub(crate) const OFFERED_CREDIT_BYTES: usize = 20;

/// HELLO (0x01): the first message of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Must equal the certificate's CN.
    pub device_id: DeviceId,
    /// Must equal the registry's kind for this device.
    pub kind: DeviceKind,
    /// Highest seq the device has assigned; `None` (0) if none.
    #[serde(with = "zero_is_none")]
    pub last_seq: Option<Seq>,
    /// Hot list version the device holds.
    pub hotlist_version: HotlistVersion,
    /// Free-form firmware identification.
    pub firmware: Text,
}

/// HEARTBEAT (0x02).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The device's clock when sent; echoed in HEARTBEAT_ACK.
    pub sent_at_ms: UnixMillis,
}

/// TXN (0x03): one transaction, pipelined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Txn {
    /// ≥ 1, strictly increasing per device.
    pub seq: Seq,
    /// What happened.
    pub kind: TxnKind,
    /// The card.
    pub card_no: CardNo,
    /// The card's counter after this transaction (offline counter for PURCHASE and
    /// SIGN_IN, online counter for TOP_UP and REFUND).
    pub card_counter: CardCounter,
    /// Debited for PURCHASE, credited for TOP_UP and REFUND, 0 for SIGN_IN.
    pub amount_fen: Fen,
    /// Cinema: agreed price total; performance: regular ticket price total; else 0.
    pub list_price_fen: Fen,
    /// What was bought.
    pub item: Item,
    /// The points hold this purchase consumes, if any.
    #[serde(with = "zero_is_none")]
    pub points_hold_id: Option<HoldId>,
    /// Points spent on this purchase.
    pub points_used: Points,
    /// REFUND: the seq of the original purchase on this device.
    #[serde(with = "zero_is_none")]
    pub refund_of_seq: Option<Seq>,
    /// When the card was debited, device clock.
    pub occurred_at_ms: UnixMillis,
    /// The card's transaction authentication code.
    pub tac: Bytes4,
}

/// POINTS_AUTH (0x04): ask for a hold on a card's points before a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsAuth {
    /// Echoed in the result.
    pub req_id: ReqId,
    /// The card.
    pub card_no: CardNo,
    /// The whole purchase amount.
    pub purchase_fen: Fen,
    /// Points the resident wants to use.
    pub points: Points,
}

/// CARD_PRESENTED (0x05): a card is on a POS or kiosk reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardPresented {
    /// Echoed in CREDIT_OFFER.
    pub req_id: ReqId,
    /// The card.
    pub card_no: CardNo,
    /// The card's load counter now.
    pub online_seq: OnlineSeq,
    /// The card's balance now.
    pub balance_fen: Fen,
}

/// CREDIT_RESULT (0x06): how a credit load ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditResult {
    /// The credit.
    pub credit_id: CreditId,
    /// The card.
    pub card_no: CardNo,
    /// What happened.
    pub outcome: CreditOutcome,
    /// The card's load counter after the load.
    pub online_seq: OnlineSeq,
    /// The card's balance after the load.
    pub balance_after_fen: Fen,
    /// The card's load TAC (zeros unless LOADED).
    pub tac: Bytes4,
}

/// HOTLIST_ACK (0x07): the device applied this hot list version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotlistAck {
    /// The version now held.
    pub version: HotlistVersion,
}

/// LOAD_INIT (0x08): the card's opening of a credit load, with MAC1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadInit {
    /// The credit being loaded.
    pub credit_id: CreditId,
    /// The card.
    pub card_no: CardNo,
    /// The card's load counter before the load.
    pub online_seq: OnlineSeq,
    /// The card's balance before the load.
    pub balance_fen: Fen,
    /// The card's random challenge.
    pub card_random: Bytes4,
    /// The card's MAC1.
    pub mac1: Bytes4,
}

/// WELCOME (0x41): the session is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The gateway's number for this session.
    pub session_id: SessionId,
    /// The gateway's clock.
    pub server_time_ms: UnixMillis,
    /// Highest S such that every seq ≤ S of this device was answered and recorded;
    /// `None` (0) if none.
    #[serde(with = "zero_is_none")]
    pub stored_seq: Option<Seq>,
    /// Heartbeat period in seconds.
    pub heartbeat_s: u16,
    /// Most TXNs (and, for OTA endpoints, pushes) unacknowledged at once.
    pub max_in_flight: u16,
    /// Current hot list version.
    pub hotlist_version: HotlistVersion,
}

/// HEARTBEAT_ACK (0x42).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatAck {
    /// The HEARTBEAT's `sent_at_ms`, echoed.
    pub sent_at_ms: UnixMillis,
    /// The gateway's clock.
    pub server_time_ms: UnixMillis,
}

/// TXN_ACK (0x43): the answer to one TXN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnAck {
    /// The TXN's seq.
    pub seq: Seq,
    /// STORED, DUPLICATE or REJECTED.
    pub status: TxnStatus,
    /// Why it was rejected, or why it earns no subsidy.
    pub reason: Reason,
    /// Provisional subsidy, 0 if none.
    pub subsidy_fen: Fen,
    /// Points awarded (sign-ins).
    pub points_awarded: Points,
}

/// POINTS_AUTH_RESULT (0x44).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsAuthResult {
    /// The request's `req_id`.
    pub req_id: ReqId,
    /// APPROVED or DECLINED.
    pub status: AuthStatus,
    /// Why declined.
    pub reason: Reason,
    /// The hold to quote in the TXN; `None` (0) when declined.
    #[serde(with = "zero_is_none")]
    pub hold_id: Option<HoldId>,
    /// Points held.
    pub points_approved: Points,
    /// The card's points balance after the hold.
    pub points_balance: Points,
    /// When the hold lapses unless a TXN consumes it.
    pub expires_at_ms: UnixMillis,
}

/// One credit in a CREDIT_OFFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferedCredit {
    /// The credit.
    pub credit_id: CreditId,
    /// Money to load.
    pub amount_fen: Fen,
    /// The business day whose clearing produced it.
    pub business_date: BusinessDate,
}

/// At most [`CREDIT_OFFER_COUNT_MAX`] offered credits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<OfferedCredit>", into = "Vec<OfferedCredit>")]
pub struct CreditList(Vec<OfferedCredit>);

/// A list longer than its message allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{count} entries exceed the limit of {count_max}")]
pub struct CountTooLarge {
    /// Entries given.
    pub count: usize,
    /// Entries allowed.
    pub count_max: usize,
}

impl CreditList {
    /// Wraps `credits` if there are at most [`CREDIT_OFFER_COUNT_MAX`].
    pub fn new(credits: Vec<OfferedCredit>) -> Result<Self, CountTooLarge> {
        if credits.len() > CREDIT_OFFER_COUNT_MAX {
            return Err(CountTooLarge {
                count: credits.len(),
                count_max: CREDIT_OFFER_COUNT_MAX,
            });
        }
        Ok(Self(credits))
    }

    /// The credits.
    pub fn as_slice(&self) -> &[OfferedCredit] {
        &self.0
    }
}

impl TryFrom<Vec<OfferedCredit>> for CreditList {
    type Error = CountTooLarge;
    fn try_from(v: Vec<OfferedCredit>) -> Result<Self, CountTooLarge> {
        Self::new(v)
    }
}

impl From<CreditList> for Vec<OfferedCredit> {
    fn from(v: CreditList) -> Self {
        v.0
    }
}

/// CREDIT_OFFER (0x45): credits waiting for the presented card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditOffer {
    /// The CARD_PRESENTED's `req_id`.
    pub req_id: ReqId,
    /// The credits, now bound to this device (the wire's `count` is their number).
    pub credits: CreditList,
}

/// CREDIT_PUSH (0x46): a credit for an OTA endpoint to load onto a SIM card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditPush {
    /// The credit, now bound to this endpoint.
    pub credit_id: CreditId,
    /// The SIM card.
    pub card_no: CardNo,
    /// Money to load.
    pub amount_fen: Fen,
    /// The business day whose clearing produced it.
    pub business_date: BusinessDate,
}

/// CREDIT_RESULT_ACK (0x47).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditResultAck {
    /// The result's credit.
    pub credit_id: CreditId,
    /// RECORDED, DUPLICATE or REJECTED.
    pub status: ResultStatus,
    /// Why rejected.
    pub reason: Reason,
}

/// HOTLIST_UPDATE (0x48): hot list changes, possibly in several chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "HotlistUpdateFields")]
pub struct HotlistUpdate {
    version: HotlistVersion,
    base_version: HotlistVersion,
    #[serde(with = "flag")]
    last: bool,
    add: Vec<CardNo>,
    remove: Vec<CardNo>,
}

/// The unchecked shape of [`HotlistUpdate`], for deserialisation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HotlistUpdateFields {
    version: HotlistVersion,
    base_version: HotlistVersion,
    #[serde(with = "flag")]
    last: bool,
    add: Vec<CardNo>,
    remove: Vec<CardNo>,
}

impl TryFrom<HotlistUpdateFields> for HotlistUpdate {
    type Error = CountTooLarge;
    fn try_from(f: HotlistUpdateFields) -> Result<Self, CountTooLarge> {
        Self::new(f.version, f.base_version, f.last, f.add, f.remove)
    }
}

impl HotlistUpdate {
    /// Builds a chunk if its cards fit one frame ([`HOTLIST_CARDS_PER_FRAME_MAX`]).
    /// `base_version` zero means the full list follows; `last` marks the final chunk.
    pub fn new(
        version: HotlistVersion,
        base_version: HotlistVersion,
        last: bool,
        add: Vec<CardNo>,
        remove: Vec<CardNo>,
    ) -> Result<Self, CountTooLarge> {
        let count = add.len().saturating_add(remove.len());
        if count > HOTLIST_CARDS_PER_FRAME_MAX {
            return Err(CountTooLarge {
                count,
                count_max: HOTLIST_CARDS_PER_FRAME_MAX,
            });
        }
        Ok(Self {
            version,
            base_version,
            last,
            add,
            remove,
        })
    }

    /// The version this chunk brings the device to.
    pub fn version(&self) -> HotlistVersion {
        self.version
    }

    /// The version the changes apply to; zero: the full list follows.
    pub fn base_version(&self) -> HotlistVersion {
        self.base_version
    }

    /// True on the final chunk of this version.
    pub fn last(&self) -> bool {
        self.last
    }

    /// Cards to add to the hot list.
    pub fn add(&self) -> &[CardNo] {
        &self.add
    }

    /// Cards to remove from the hot list.
    pub fn remove(&self) -> &[CardNo] {
        &self.remove
    }
}

/// LOAD_AUTH (0x49): the host's answer to LOAD_INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAuth {
    /// The credit.
    pub credit_id: CreditId,
    /// APPROVED or DECLINED.
    pub status: AuthStatus,
    /// Why declined.
    pub reason: Reason,
    /// The host's time, an input of MAC2 and of the load TAC.
    pub host_time_ms: UnixMillis,
    /// MAC2; zeros when declined.
    pub mac2: Bytes4,
}

/// ERROR (0x4E).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Error {
    /// What went wrong.
    pub code: ErrorCode,
    /// True: the gateway closes the connection after this frame.
    #[serde(with = "flag")]
    pub fatal: bool,
    /// Human-readable detail.
    pub message: Text,
}

/// DRAIN (0x4F): planned shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Reconnect after this long.
    pub reconnect_after_ms: u32,
}

/// Serde for `u8` flags (0 or 1 on the wire and in JSON).
mod flag {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(u8::from(*v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(serde::de::Error::custom(format!(
                "flag must be 0 or 1, not {v}"
            ))),
        }
    }
}

/// Any v1 message. In JSON: `{"type": "TXN", "fields": {...}}`, as in the test vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "fields")]
#[allow(missing_docs)]
pub enum Message {
    #[serde(rename = "HELLO")]
    Hello(Hello),
    #[serde(rename = "HEARTBEAT")]
    Heartbeat(Heartbeat),
    #[serde(rename = "TXN")]
    Txn(Txn),
    #[serde(rename = "POINTS_AUTH")]
    PointsAuth(PointsAuth),
    #[serde(rename = "CARD_PRESENTED")]
    CardPresented(CardPresented),
    #[serde(rename = "CREDIT_RESULT")]
    CreditResult(CreditResult),
    #[serde(rename = "HOTLIST_ACK")]
    HotlistAck(HotlistAck),
    #[serde(rename = "LOAD_INIT")]
    LoadInit(LoadInit),
    #[serde(rename = "WELCOME")]
    Welcome(Welcome),
    #[serde(rename = "HEARTBEAT_ACK")]
    HeartbeatAck(HeartbeatAck),
    #[serde(rename = "TXN_ACK")]
    TxnAck(TxnAck),
    #[serde(rename = "POINTS_AUTH_RESULT")]
    PointsAuthResult(PointsAuthResult),
    #[serde(rename = "CREDIT_OFFER")]
    CreditOffer(CreditOffer),
    #[serde(rename = "CREDIT_PUSH")]
    CreditPush(CreditPush),
    #[serde(rename = "CREDIT_RESULT_ACK")]
    CreditResultAck(CreditResultAck),
    #[serde(rename = "HOTLIST_UPDATE")]
    HotlistUpdate(HotlistUpdate),
    #[serde(rename = "LOAD_AUTH")]
    LoadAuth(LoadAuth),
    #[serde(rename = "ERROR")]
    Error(Error),
    #[serde(rename = "DRAIN")]
    Drain(Drain),
}

impl Message {
    /// This message's frame type.
    pub const fn message_type(&self) -> MessageType {
        match self {
            Self::Hello(_) => MessageType::Hello,
            Self::Heartbeat(_) => MessageType::Heartbeat,
            Self::Txn(_) => MessageType::Txn,
            Self::PointsAuth(_) => MessageType::PointsAuth,
            Self::CardPresented(_) => MessageType::CardPresented,
            Self::CreditResult(_) => MessageType::CreditResult,
            Self::HotlistAck(_) => MessageType::HotlistAck,
            Self::LoadInit(_) => MessageType::LoadInit,
            Self::Welcome(_) => MessageType::Welcome,
            Self::HeartbeatAck(_) => MessageType::HeartbeatAck,
            Self::TxnAck(_) => MessageType::TxnAck,
            Self::PointsAuthResult(_) => MessageType::PointsAuthResult,
            Self::CreditOffer(_) => MessageType::CreditOffer,
            Self::CreditPush(_) => MessageType::CreditPush,
            Self::CreditResultAck(_) => MessageType::CreditResultAck,
            Self::HotlistUpdate(_) => MessageType::HotlistUpdate,
            Self::LoadAuth(_) => MessageType::LoadAuth,
            Self::Error(_) => MessageType::Error,
            Self::Drain(_) => MessageType::Drain,
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message_type().name())
    }
}

macro_rules! from_struct {
    ($($variant:ident),+) => {
        $(impl From<$variant> for Message {
            fn from(m: $variant) -> Self {
                Self::$variant(m)
            }
        })+
    };
}

from_struct!(
    Hello,
    Heartbeat,
    Txn,
    PointsAuth,
    CardPresented,
    CreditResult,
    HotlistAck,
    LoadInit,
    Welcome,
    HeartbeatAck,
    TxnAck,
    PointsAuthResult,
    CreditOffer,
    CreditPush,
    CreditResultAck,
    HotlistUpdate,
    LoadAuth,
    Error,
    Drain
);
