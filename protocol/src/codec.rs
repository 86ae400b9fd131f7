//! Encoding into `BytesMut` and the three-outcome decoder.

use crate::error::DecodeError;
use crate::limits::{
    CREDIT_OFFER_COUNT_MAX, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX,
    FRAME_PAYLOAD_BYTES_MIN_CONFIGURABLE, MAGIC, TEXT_BYTES_MAX, VERSION,
};
use crate::message::{
    CardPresented, CreditList, CreditOffer, CreditPush, CreditResult, CreditResultAck, Drain,
    Error, Heartbeat, HeartbeatAck, Hello, HotlistAck, HotlistUpdate, LoadAuth, LoadInit, Message,
    MessageType, OFFERED_CREDIT_BYTES, OfferedCredit, PointsAuth, PointsAuthResult, Txn, TxnAck,
    Welcome,
};
use crate::types::{
    AuthStatus, BusinessDate, Bytes4, CardCounter, CardNo, CreditId, CreditOutcome, DeviceId,
    DeviceKind, ErrorCode, Fen, HoldId, HotlistVersion, Item, OnlineSeq, Points, Reason, ReqId,
    ResultStatus, Seq, SessionId, Text, TxnKind, TxnStatus, UnixMillis,
};
use bytes::{BufMut, BytesMut};

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

impl Message {
    /// Length of this message's payload in bytes.
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Hello(m) => 21 + 2 + m.firmware.as_str().len(),
            Self::Error(m) => 5 + m.message.as_str().len(),
            Self::CreditOffer(m) => 5 + m.credits.as_slice().len() * OFFERED_CREDIT_BYTES,
            Self::HotlistUpdate(m) => 13 + 8 * (m.add().len() + m.remove().len()),
            // Every other type has a fixed size.
            other => other.message_type().payload_bytes_range().0,
        }
    }

    /// Length of this message's whole frame in bytes.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_len()
    }

    /// Appends this message's frame to `dst`. Cannot fail: the types guarantee every frame
    /// fits [`FRAME_PAYLOAD_BYTES_MAX`].
    pub fn encode(&self, dst: &mut BytesMut) {
        let payload_len = self.payload_len();
        dst.reserve(FRAME_HEADER_BYTES + payload_len);
        dst.put_slice(&MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(self.message_type().code());
        // `payload_len` ≤ FRAME_PAYLOAD_BYTES_MAX (a u32) by construction of the types.
        dst.put_u32(u32::try_from(payload_len).unwrap_or(u32::MAX));
        let start = dst.len();
        self.encode_payload(dst);
        debug_assert_eq!(
            dst.len() - start,
            payload_len,
            "payload_len disagrees with encode"
        );
    }

    fn encode_payload(&self, d: &mut BytesMut) {
        match self {
            Self::Hello(m) => {
                d.put_u64(m.device_id.get());
                d.put_u8(m.kind.code());
                d.put_u64(Seq::wire(m.last_seq));
                d.put_u32(m.hotlist_version.get());
                put_text(d, &m.firmware);
            }
            Self::Heartbeat(m) => d.put_i64(m.sent_at_ms.get()),
            Self::Txn(m) => encode_txn(m, d),
            Self::PointsAuth(m) => {
                d.put_u32(m.req_id.get());
                d.put_u64(m.card_no.get());
                d.put_i64(m.purchase_fen.get());
                d.put_u32(m.points.get());
            }
            Self::CardPresented(m) => {
                d.put_u32(m.req_id.get());
                d.put_u64(m.card_no.get());
                d.put_u16(m.online_seq.get());
                d.put_i64(m.balance_fen.get());
            }
            Self::CreditResult(m) => {
                d.put_u64(m.credit_id.get());
                d.put_u64(m.card_no.get());
                d.put_u8(m.outcome.code());
                d.put_u16(m.online_seq.get());
                d.put_i64(m.balance_after_fen.get());
                d.put_slice(&m.tac.0);
            }
            Self::HotlistAck(m) => d.put_u32(m.version.get()),
            Self::LoadInit(m) => {
                d.put_u64(m.credit_id.get());
                d.put_u64(m.card_no.get());
                d.put_u16(m.online_seq.get());
                d.put_i64(m.balance_fen.get());
                d.put_slice(&m.card_random.0);
                d.put_slice(&m.mac1.0);
            }
            Self::Welcome(m) => {
                d.put_u64(m.session_id.get());
                d.put_i64(m.server_time_ms.get());
                d.put_u64(Seq::wire(m.stored_seq));
                d.put_u16(m.heartbeat_s);
                d.put_u16(m.max_in_flight);
                d.put_u32(m.hotlist_version.get());
            }
            Self::HeartbeatAck(m) => {
                d.put_i64(m.sent_at_ms.get());
                d.put_i64(m.server_time_ms.get());
            }
            Self::TxnAck(m) => {
                d.put_u64(m.seq.get());
                d.put_u8(m.status.code());
                d.put_u16(m.reason.code());
                d.put_i64(m.subsidy_fen.get());
                d.put_u32(m.points_awarded.get());
            }
            Self::PointsAuthResult(m) => {
                d.put_u32(m.req_id.get());
                d.put_u8(m.status.code());
                d.put_u16(m.reason.code());
                d.put_u64(HoldId::wire(m.hold_id));
                d.put_u32(m.points_approved.get());
                d.put_u32(m.points_balance.get());
                d.put_i64(m.expires_at_ms.get());
            }
            Self::CreditOffer(m) => {
                d.put_u32(m.req_id.get());
                let credits = m.credits.as_slice();
                // ≤ CREDIT_OFFER_COUNT_MAX (16) by construction of CreditList.
                d.put_u8(u8::try_from(credits.len()).unwrap_or(u8::MAX));
                for c in credits {
                    d.put_u64(c.credit_id.get());
                    d.put_i64(c.amount_fen.get());
                    d.put_u32(c.business_date.get());
                }
            }
            Self::CreditPush(m) => {
                d.put_u64(m.credit_id.get());
                d.put_u64(m.card_no.get());
                d.put_i64(m.amount_fen.get());
                d.put_u32(m.business_date.get());
            }
            Self::CreditResultAck(m) => {
                d.put_u64(m.credit_id.get());
                d.put_u8(m.status.code());
                d.put_u16(m.reason.code());
            }
            Self::HotlistUpdate(m) => {
                d.put_u32(m.version().get());
                d.put_u32(m.base_version().get());
                d.put_u8(u8::from(m.last()));
                for list in [m.add(), m.remove()] {
                    // ≤ HOTLIST_CARDS_PER_FRAME_MAX (8,190) by construction.
                    d.put_u16(u16::try_from(list.len()).unwrap_or(u16::MAX));
                    for card in list {
                        d.put_u64(card.get());
                    }
                }
            }
            Self::LoadAuth(m) => {
                d.put_u64(m.credit_id.get());
                d.put_u8(m.status.code());
                d.put_u16(m.reason.code());
                d.put_i64(m.host_time_ms.get());
                d.put_slice(&m.mac2.0);
            }
            Self::Error(m) => {
                d.put_u16(m.code.code());
                d.put_u8(u8::from(m.fatal));
                put_text(d, &m.message);
            }
            Self::Drain(m) => d.put_u32(m.reconnect_after_ms),
        }
    }
}

fn encode_txn(m: &Txn, d: &mut BytesMut) {
    d.put_u64(m.seq.get());
    d.put_u8(m.kind.code());
    d.put_u64(m.card_no.get());
    d.put_u32(m.card_counter.get());
    d.put_i64(m.amount_fen.get());
    d.put_i64(m.list_price_fen.get());
    d.put_u8(m.item.code());
    d.put_u64(HoldId::wire(m.points_hold_id));
    d.put_u32(m.points_used.get());
    d.put_u64(Seq::wire(m.refund_of_seq));
    d.put_i64(m.occurred_at_ms.get());
    d.put_slice(&m.tac.0);
}

fn put_text(d: &mut BytesMut, t: &Text) {
    let s = t.as_str();
    // ≤ TEXT_BYTES_MAX (1,024) by construction of Text.
    d.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    d.put_slice(s.as_bytes());
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// The result of offering bytes to the [`Decoder`] when they are not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// One whole frame: the message, and how many bytes of the input it took.
    Frame {
        /// The decoded message.
        message: Message,
        /// Bytes consumed from the start of the input.
        frame_bytes: usize,
    },
    /// The input is a valid beginning of a frame that needs at least this many bytes in
    /// all (header included). Never more than the header plus the payload bound.
    NeedMore {
        /// Total bytes needed before the next call can make progress.
        frame_bytes_min: usize,
    },
}

/// The v1 frame decoder. Holds only its configuration; it never buffers by itself.
///
/// Order of checks, each as soon as its bytes are there: magic, version, type, then the
/// announced payload length against the configured bound and against the type's own size
/// range — all before a single payload byte is waited for — and finally every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    payload_bytes_max: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            payload_bytes_max: FRAME_PAYLOAD_BYTES_MAX,
        }
    }
}

impl Decoder {
    /// A decoder with the given payload bound, clamped to
    /// [[`FRAME_PAYLOAD_BYTES_MIN_CONFIGURABLE`], [`FRAME_PAYLOAD_BYTES_MAX`]].
    pub fn new(payload_bytes_max: u32) -> Self {
        Self {
            payload_bytes_max: payload_bytes_max.clamp(
                FRAME_PAYLOAD_BYTES_MIN_CONFIGURABLE,
                FRAME_PAYLOAD_BYTES_MAX,
            ),
        }
    }

    /// The payload bound in force.
    pub fn payload_bytes_max(&self) -> u32 {
        self.payload_bytes_max
    }

    /// The largest frame this decoder can ask to buffer, header included.
    pub fn frame_bytes_max(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes_max as usize
    }

    /// Decodes the frame at the start of `input`, if it is complete.
    pub fn decode(&self, input: &[u8]) -> Result<Progress, DecodeError> {
        let (message_type, payload_bytes) = match self.check_header(input)? {
            HeaderCheck::Incomplete(frame_bytes_min) => {
                return Ok(Progress::NeedMore { frame_bytes_min });
            }
            HeaderCheck::Complete {
                message_type,
                payload_bytes,
            } => (message_type, payload_bytes),
        };
        let frame_bytes = FRAME_HEADER_BYTES + payload_bytes;
        let Some(payload) = input.get(FRAME_HEADER_BYTES..frame_bytes) else {
            return Ok(Progress::NeedMore {
                frame_bytes_min: frame_bytes,
            });
        };
        let message = decode_payload(message_type, payload)?;
        Ok(Progress::Frame {
            message,
            frame_bytes,
        })
    }

    /// Decodes one frame from the front of `buf` and advances past it; `Ok(None)` when more
    /// bytes are needed, after reserving room for them (never beyond
    /// [`Decoder::frame_bytes_max`]).
    pub fn decode_buf(&self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match self.decode(buf)? {
            Progress::Frame {
                message,
                frame_bytes,
            } => {
                let _ = buf.split_to(frame_bytes);
                Ok(Some(message))
            }
            Progress::NeedMore { frame_bytes_min } => {
                buf.reserve(frame_bytes_min.saturating_sub(buf.len()));
                Ok(None)
            }
        }
    }

    /// As [`Decoder::decode_buf`] when the input has ended: leftover bytes of an
    /// unfinished frame are [`DecodeError::Truncated`].
    pub fn decode_eof(&self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match self.decode_buf(buf)? {
            Some(m) => Ok(Some(m)),
            None if buf.is_empty() => Ok(None),
            None => {
                let needed = match self.decode(buf)? {
                    Progress::NeedMore { frame_bytes_min } => frame_bytes_min,
                    Progress::Frame { frame_bytes, .. } => frame_bytes,
                };
                Err(DecodeError::Truncated {
                    available: buf.len(),
                    needed,
                })
            }
        }
    }

    fn check_header(&self, input: &[u8]) -> Result<HeaderCheck, DecodeError> {
        let byte = |i: usize| input.get(i).copied();
        if let Some(b0) = byte(0) {
            let b1 = byte(1);
            if b0 != MAGIC[0] || b1.is_some_and(|b| b != MAGIC[1]) {
                return Err(DecodeError::BadMagic {
                    found: [b0, b1.unwrap_or(0)],
                });
            }
        }
        if let Some(version) = byte(2)
            && version != VERSION
        {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        let Some(type_byte) = byte(3) else {
            return Ok(HeaderCheck::Incomplete(FRAME_HEADER_BYTES));
        };
        let message_type = MessageType::from_code(type_byte).ok_or(DecodeError::UnknownType {
            message_type: type_byte,
        })?;
        let Some(len_bytes) = input.get(4..8).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
            return Ok(HeaderCheck::Incomplete(FRAME_HEADER_BYTES));
        };
        let announced = u32::from_be_bytes(len_bytes);
        if announced > self.payload_bytes_max {
            return Err(DecodeError::FrameTooLarge {
                payload_bytes: announced,
                payload_bytes_max: self.payload_bytes_max,
            });
        }
        let payload_bytes = announced as usize;
        let (min, max) = message_type.payload_bytes_range();
        if payload_bytes < min {
            return Err(DecodeError::PayloadTooShort { message_type });
        }
        if payload_bytes > max {
            return Err(DecodeError::PayloadTooLong { message_type });
        }
        Ok(HeaderCheck::Complete {
            message_type,
            payload_bytes,
        })
    }
}

enum HeaderCheck {
    /// The header is a valid prefix; this many bytes are needed at least.
    Incomplete(usize),
    Complete {
        message_type: MessageType,
        payload_bytes: usize,
    },
}

/// Reads fields off a payload; running past its end is `PayloadTooShort`.
struct Reader<'a> {
    rest: &'a [u8],
    message_type: MessageType,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) =
            self.rest
                .split_first_chunk::<N>()
                .ok_or(DecodeError::PayloadTooShort {
                    message_type: self.message_type,
                })?;
        self.rest = rest;
        Ok(*head)
    }

    fn take_slice(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::PayloadTooShort {
                message_type: self.message_type,
            });
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take().map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.take().map(i64::from_be_bytes)
    }
    fn fen(&mut self) -> Result<Fen, DecodeError> {
        self.i64().map(Fen)
    }
    fn millis(&mut self) -> Result<UnixMillis, DecodeError> {
        self.i64().map(UnixMillis)
    }
    fn bytes4(&mut self) -> Result<Bytes4, DecodeError> {
        self.take().map(Bytes4)
    }

    fn bad_enum(&self, field: &'static str, value: u16) -> DecodeError {
        DecodeError::BadEnum {
            message_type: self.message_type,
            field,
            value,
        }
    }

    fn enum8<T>(&mut self, field: &'static str, f: fn(u8) -> Option<T>) -> Result<T, DecodeError> {
        let v = self.u8()?;
        f(v).ok_or_else(|| self.bad_enum(field, u16::from(v)))
    }

    fn enum16<T>(
        &mut self,
        field: &'static str,
        f: fn(u16) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let v = self.u16()?;
        f(v).ok_or_else(|| self.bad_enum(field, v))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad_enum(field, u16::from(v))),
        }
    }

    fn seq(&mut self, field: &'static str) -> Result<Seq, DecodeError> {
        Seq::new(self.u64()?).ok_or(DecodeError::OutOfRange {
            message_type: self.message_type,
            field,
        })
    }

    fn date(&mut self, field: &'static str) -> Result<BusinessDate, DecodeError> {
        let value = self.u32()?;
        BusinessDate::new(value).map_err(|_| DecodeError::BadDate {
            message_type: self.message_type,
            field,
            value,
        })
    }

    fn text(&mut self, field: &'static str) -> Result<Text, DecodeError> {
        let bytes = self.u16()?;
        if usize::from(bytes) > TEXT_BYTES_MAX {
            return Err(DecodeError::StringTooLong {
                message_type: self.message_type,
                field,
                bytes,
            });
        }
        let raw = self.take_slice(usize::from(bytes))?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8 {
            message_type: self.message_type,
            field,
        })?;
        // Cannot fail: the length was checked above.
        Text::new(s).map_err(|_| DecodeError::StringTooLong {
            message_type: self.message_type,
            field,
            bytes,
        })
    }

    /// A u16 count of u64 card numbers; the count is checked against the bytes present
    /// before anything is allocated.
    fn cards(&mut self) -> Result<Vec<CardNo>, DecodeError> {
        let count = usize::from(self.u16()?);
        let raw = self.take_slice(count.saturating_mul(8))?;
        Ok(raw
            .chunks_exact(8)
            .filter_map(|c| <[u8; 8]>::try_from(c).ok())
            .map(|c| CardNo(u64::from_be_bytes(c)))
            .collect())
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::PayloadTooLong {
                message_type: self.message_type,
            })
        }
    }
}

fn decode_payload(message_type: MessageType, payload: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader {
        rest: payload,
        message_type,
    };
    let message = match message_type {
        MessageType::Hello => Message::Hello(Hello {
            device_id: DeviceId(r.u64()?),
            kind: r.enum8("kind", DeviceKind::from_code)?,
            last_seq: Seq::new(r.u64()?),
            hotlist_version: HotlistVersion(r.u32()?),
            firmware: r.text("firmware")?,
        }),
        MessageType::Heartbeat => Message::Heartbeat(Heartbeat {
            sent_at_ms: r.millis()?,
        }),
        MessageType::Txn => Message::Txn(Txn {
            seq: r.seq("seq")?,
            kind: r.enum8("kind", TxnKind::from_code)?,
            card_no: CardNo(r.u64()?),
            card_counter: CardCounter(r.u32()?),
            amount_fen: r.fen()?,
            list_price_fen: r.fen()?,
            item: r.enum8("item", Item::from_code)?,
            points_hold_id: HoldId::new(r.u64()?),
            points_used: Points(r.u32()?),
            refund_of_seq: Seq::new(r.u64()?),
            occurred_at_ms: r.millis()?,
            tac: r.bytes4()?,
        }),
        MessageType::PointsAuth => Message::PointsAuth(PointsAuth {
            req_id: ReqId(r.u32()?),
            card_no: CardNo(r.u64()?),
            purchase_fen: r.fen()?,
            points: Points(r.u32()?),
        }),
        MessageType::CardPresented => Message::CardPresented(CardPresented {
            req_id: ReqId(r.u32()?),
            card_no: CardNo(r.u64()?),
            online_seq: OnlineSeq(r.u16()?),
            balance_fen: r.fen()?,
        }),
        MessageType::CreditResult => Message::CreditResult(CreditResult {
            credit_id: CreditId(r.u64()?),
            card_no: CardNo(r.u64()?),
            outcome: r.enum8("outcome", CreditOutcome::from_code)?,
            online_seq: OnlineSeq(r.u16()?),
            balance_after_fen: r.fen()?,
            tac: r.bytes4()?,
        }),
        MessageType::HotlistAck => Message::HotlistAck(HotlistAck {
            version: HotlistVersion(r.u32()?),
        }),
        MessageType::LoadInit => Message::LoadInit(LoadInit {
            credit_id: CreditId(r.u64()?),
            card_no: CardNo(r.u64()?),
            online_seq: OnlineSeq(r.u16()?),
            balance_fen: r.fen()?,
            card_random: r.bytes4()?,
            mac1: r.bytes4()?,
        }),
        MessageType::Welcome => Message::Welcome(Welcome {
            session_id: SessionId(r.u64()?),
            server_time_ms: r.millis()?,
            stored_seq: Seq::new(r.u64()?),
            heartbeat_s: r.u16()?,
            max_in_flight: r.u16()?,
            hotlist_version: HotlistVersion(r.u32()?),
        }),
        MessageType::HeartbeatAck => Message::HeartbeatAck(HeartbeatAck {
            sent_at_ms: r.millis()?,
            server_time_ms: r.millis()?,
        }),
        MessageType::TxnAck => Message::TxnAck(TxnAck {
            seq: r.seq("seq")?,
            status: r.enum8("status", TxnStatus::from_code)?,
            reason: r.enum16("reason", Reason::from_code)?,
            subsidy_fen: r.fen()?,
            points_awarded: Points(r.u32()?),
        }),
        MessageType::PointsAuthResult => Message::PointsAuthResult(PointsAuthResult {
            req_id: ReqId(r.u32()?),
            status: r.enum8("status", AuthStatus::from_code)?,
            reason: r.enum16("reason", Reason::from_code)?,
            hold_id: HoldId::new(r.u64()?),
            points_approved: Points(r.u32()?),
            points_balance: Points(r.u32()?),
            expires_at_ms: r.millis()?,
        }),
        MessageType::CreditOffer => {
            let req_id = ReqId(r.u32()?);
            let count = r.u8()?;
            if usize::from(count) > CREDIT_OFFER_COUNT_MAX {
                return Err(DecodeError::CountTooLarge {
                    message_type,
                    field: "count",
                    count: usize::from(count),
                    count_max: CREDIT_OFFER_COUNT_MAX,
                });
            }
            let mut credits = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                credits.push(OfferedCredit {
                    credit_id: CreditId(r.u64()?),
                    amount_fen: r.fen()?,
                    business_date: r.date("business_date")?,
                });
            }
            // Cannot fail: count ≤ 16 was checked above.
            let credits = CreditList::new(credits).map_err(|_| DecodeError::CountTooLarge {
                message_type,
                field: "count",
                count: usize::from(count),
                count_max: CREDIT_OFFER_COUNT_MAX,
            })?;
            Message::CreditOffer(CreditOffer { req_id, credits })
        }
        MessageType::CreditPush => Message::CreditPush(CreditPush {
            credit_id: CreditId(r.u64()?),
            card_no: CardNo(r.u64()?),
            amount_fen: r.fen()?,
            business_date: r.date("business_date")?,
        }),
        MessageType::CreditResultAck => Message::CreditResultAck(CreditResultAck {
            credit_id: CreditId(r.u64()?),
            status: r.enum8("status", ResultStatus::from_code)?,
            reason: r.enum16("reason", Reason::from_code)?,
        }),
        MessageType::HotlistUpdate => {
            let version = HotlistVersion(r.u32()?);
            let base_version = HotlistVersion(r.u32()?);
            let last = r.flag("last")?;
            let add = r.cards()?;
            let remove = r.cards()?;
            // The payload bound (≤ 65,536) already limits the cards to 8,190.
            let update =
                HotlistUpdate::new(version, base_version, last, add, remove).map_err(|e| {
                    DecodeError::CountTooLarge {
                        message_type,
                        field: "add_count",
                        count: e.count,
                        count_max: e.count_max,
                    }
                })?;
            Message::HotlistUpdate(update)
        }
        MessageType::LoadAuth => Message::LoadAuth(LoadAuth {
            credit_id: CreditId(r.u64()?),
            status: r.enum8("status", AuthStatus::from_code)?,
            reason: r.enum16("reason", Reason::from_code)?,
            host_time_ms: r.millis()?,
            mac2: r.bytes4()?,
        }),
        MessageType::Error => Message::Error(Error {
            code: r.enum16("code", ErrorCode::from_code)?,
            fatal: r.flag("fatal")?,
            message: r.text("message")?,
        }),
        MessageType::Drain => Message::Drain(Drain {
            reconnect_after_ms: r.u32()?,
        }),
    };
    r.finish()?;
    Ok(message)
}
