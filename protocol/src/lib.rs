//! The Wenxiao terminal protocol, version 1, without I/O.
//!
//! This crate turns bytes into [`Message`]s and back, and computes the contract's MACs.
//! It knows nothing of sockets, TLS, runtimes or storage: the gateway and the simulator
//! drive it. The contract itself is `docs/protocol.md`.
//!
//! ```
//! use bytes::BytesMut;
//! use wenxiao_protocol::{Decoder, Heartbeat, Message, UnixMillis};
//!
//! let mut buf = BytesMut::new();
//! Message::from(Heartbeat { sent_at_ms: UnixMillis(1) }).encode(&mut buf);
//! let decoded = Decoder::default().decode_buf(&mut buf).unwrap();
//! assert_eq!(decoded, Some(Message::Heartbeat(Heartbeat { sent_at_ms: UnixMillis(1) })));
//! ```

#![warn(missing_docs)]

mod codec;
mod error;
pub mod limits;
pub mod mac;
mod message;
mod serde_util;
#[cfg(feature = "codec")]
mod tokio_codec;
mod types;

pub use codec::{Decoder, Progress};
pub use error::{DecodeError, DecodeErrorKind};
pub use message::{
    CardPresented, CountTooLarge, CreditList, CreditOffer, CreditPush, CreditResult,
    CreditResultAck, Direction, Drain, Error, Heartbeat, HeartbeatAck, Hello, HotlistAck,
    HotlistUpdate, LoadAuth, LoadInit, Message, MessageType, OfferedCredit, PointsAuth,
    PointsAuthResult, Txn, TxnAck, Welcome,
};
#[cfg(feature = "codec")]
pub use tokio_codec::{CodecError, WxCodec};
pub use types::{
    AuthStatus, BusinessDate, Bytes4, CardCounter, CardNo, CreditId, CreditOutcome, DeviceId,
    DeviceKind, ErrorCode, Fen, HoldId, HotlistVersion, InvalidDate, Item, OnlineSeq, Points,
    Reason, ReqId, ResultStatus, Seq, SessionId, Text, TextTooLong, TxnKind, TxnStatus, UnixMillis,
    ZeroValue,
};
