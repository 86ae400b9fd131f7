//! Property tests: every message survives encode → decode unchanged, in any split of the
//! byte stream, and arbitrary bytes never panic the decoder or make it ask for more than
//! one frame's bound.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_wrap
)]

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use wenxiao_protocol::limits::{CREDIT_OFFER_COUNT_MAX, HOTLIST_CARDS_PER_FRAME_MAX};
use wenxiao_protocol::*;

fn text() -> impl Strategy<Value = Text> {
    // Any Unicode, cut to the wire's 1,024-byte bound at a character boundary.
    ".{0,300}".prop_map(|s: String| Text::truncated(&s))
}
fn fen() -> impl Strategy<Value = Fen> {
    any::<i64>().prop_map(Fen)
}
fn ms() -> impl Strategy<Value = UnixMillis> {
    any::<i64>().prop_map(UnixMillis)
}
fn b4() -> impl Strategy<Value = Bytes4> {
    any::<[u8; 4]>().prop_map(Bytes4)
}
fn seq() -> impl Strategy<Value = Seq> {
    (1..=u64::MAX).prop_map(|v| Seq::new(v).unwrap())
}
fn opt_seq() -> impl Strategy<Value = Option<Seq>> {
    any::<u64>().prop_map(Seq::new)
}
fn opt_hold() -> impl Strategy<Value = Option<HoldId>> {
    any::<u64>().prop_map(HoldId::new)
}
fn card() -> impl Strategy<Value = CardNo> {
    any::<u64>().prop_map(CardNo)
}
fn date() -> impl Strategy<Value = BusinessDate> {
    (1u32..=9999, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| BusinessDate::from_ymd(y, m, d).unwrap())
}
fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

fn txn() -> impl Strategy<Value = Txn> {
    (
        (
            seq(),
            pick(TxnKind::ALL),
            card(),
            any::<u32>(),
            fen(),
            fen(),
        ),
        (
            pick(Item::ALL),
            opt_hold(),
            any::<u32>(),
            opt_seq(),
            ms(),
            b4(),
        ),
    )
        .prop_map(
            |((seq, kind, card_no, cc, amount, list), (item, hold, pu, refund, at, tac))| Txn {
                seq,
                kind,
                card_no,
                card_counter: CardCounter(cc),
                amount_fen: amount,
                list_price_fen: list,
                item,
                points_hold_id: hold,
                points_used: Points(pu),
                refund_of_seq: refund,
                occurred_at_ms: at,
                tac,
            },
        )
}

pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u64>(),
            pick(DeviceKind::ALL),
            opt_seq(),
            any::<u32>(),
            text()
        )
            .prop_map(|(id, kind, last, hv, fw)| Message::Hello(Hello {
                device_id: DeviceId(id),
                kind,
                last_seq: last,
                hotlist_version: HotlistVersion(hv),
                firmware: fw,
            })),
        ms().prop_map(|t| Message::Heartbeat(Heartbeat { sent_at_ms: t })),
        txn().prop_map(Message::Txn),
        (any::<u32>(), card(), fen(), any::<u32>()).prop_map(|(r, c, f, p)| {
            Message::PointsAuth(PointsAuth {
                req_id: ReqId(r),
                card_no: c,
                purchase_fen: f,
                points: Points(p),
            })
        }),
        (any::<u32>(), card(), any::<u16>(), fen()).prop_map(|(r, c, s, b)| {
            Message::CardPresented(CardPresented {
                req_id: ReqId(r),
                card_no: c,
                online_seq: OnlineSeq(s),
                balance_fen: b,
            })
        }),
        (
            any::<u64>(),
            card(),
            pick(CreditOutcome::ALL),
            any::<u16>(),
            fen(),
            b4()
        )
            .prop_map(|(id, c, o, s, b, t)| Message::CreditResult(CreditResult {
                credit_id: CreditId(id),
                card_no: c,
                outcome: o,
                online_seq: OnlineSeq(s),
                balance_after_fen: b,
                tac: t,
            })),
        any::<u32>().prop_map(|v| Message::HotlistAck(HotlistAck {
            version: HotlistVersion(v)
        })),
        (any::<u64>(), card(), any::<u16>(), fen(), b4(), b4()).prop_map(|(id, c, s, b, r, m)| {
            Message::LoadInit(LoadInit {
                credit_id: CreditId(id),
                card_no: c,
                online_seq: OnlineSeq(s),
                balance_fen: b,
                card_random: r,
                mac1: m,
            })
        }),
        (
            any::<u64>(),
            ms(),
            opt_seq(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(|(id, t, s, hb, mif, hv)| Message::Welcome(Welcome {
                session_id: SessionId(id),
                server_time_ms: t,
                stored_seq: s,
                heartbeat_s: hb,
                max_in_flight: mif,
                hotlist_version: HotlistVersion(hv),
            })),
        (ms(), ms()).prop_map(|(a, b)| Message::HeartbeatAck(HeartbeatAck {
            sent_at_ms: a,
            server_time_ms: b
        })),
        (
            seq(),
            pick(TxnStatus::ALL),
            pick(Reason::ALL),
            fen(),
            any::<u32>()
        )
            .prop_map(|(s, st, r, f, p)| Message::TxnAck(TxnAck {
                seq: s,
                status: st,
                reason: r,
                subsidy_fen: f,
                points_awarded: Points(p),
            })),
        (
            any::<u32>(),
            pick(AuthStatus::ALL),
            pick(Reason::ALL),
            opt_hold(),
            any::<u32>(),
            any::<u32>(),
            ms()
        )
            .prop_map(|(r, s, reason, h, a, b, e)| {
                Message::PointsAuthResult(PointsAuthResult {
                    req_id: ReqId(r),
                    status: s,
                    reason,
                    hold_id: h,
                    points_approved: Points(a),
                    points_balance: Points(b),
                    expires_at_ms: e,
                })
            }),
        (
            any::<u32>(),
            vec((any::<u64>(), fen(), date()), 0..=CREDIT_OFFER_COUNT_MAX)
        )
            .prop_map(|(r, cs)| Message::CreditOffer(CreditOffer {
                req_id: ReqId(r),
                credits: CreditList::new(
                    cs.into_iter()
                        .map(|(id, a, d)| OfferedCredit {
                            credit_id: CreditId(id),
                            amount_fen: a,
                            business_date: d,
                        })
                        .collect()
                )
                .unwrap(),
            })),
        (any::<u64>(), card(), fen(), date()).prop_map(|(id, c, a, d)| {
            Message::CreditPush(CreditPush {
                credit_id: CreditId(id),
                card_no: c,
                amount_fen: a,
                business_date: d,
            })
        }),
        (any::<u64>(), pick(ResultStatus::ALL), pick(Reason::ALL)).prop_map(|(id, s, r)| {
            Message::CreditResultAck(CreditResultAck {
                credit_id: CreditId(id),
                status: s,
                reason: r,
            })
        }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            vec(card(), 0..200),
            vec(card(), 0..200)
        )
            .prop_map(|(v, b, l, a, r)| Message::HotlistUpdate(
                HotlistUpdate::new(HotlistVersion(v), HotlistVersion(b), l, a, r).unwrap()
            )),
        (
            any::<u64>(),
            pick(AuthStatus::ALL),
            pick(Reason::ALL),
            ms(),
            b4()
        )
            .prop_map(|(id, s, r, t, m)| Message::LoadAuth(LoadAuth {
                credit_id: CreditId(id),
                status: s,
                reason: r,
                host_time_ms: t,
                mac2: m,
            })),
        (pick(ErrorCode::ALL), any::<bool>(), text()).prop_map(|(c, f, m)| {
            Message::Error(Error {
                code: c,
                fatal: f,
                message: m,
            })
        }),
        any::<u32>().prop_map(|v| Message::Drain(Drain {
            reconnect_after_ms: v
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encode_then_decode_is_identity(m in message()) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        prop_assert_eq!(buf.len(), m.frame_len());
        match Decoder::default().decode(&buf) {
            Ok(Progress::Frame { message, frame_bytes }) => {
                prop_assert_eq!(frame_bytes, buf.len());
                prop_assert_eq!(message, m);
            }
            other => prop_assert!(false, "decode gave {:?}", other),
        }
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same(
        ms in vec(message(), 1..8),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        for m in &ms {
            m.encode(&mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let decoder = Decoder::default();
        let (mut buf, mut out, mut from) = (BytesMut::new(), Vec::new(), 0);
        for to in points {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(m) = decoder.decode_buf(&mut buf).unwrap() {
                out.push(m);
            }
        }
        prop_assert_eq!(out, ms);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_ask_beyond_the_bound(
        bytes in vec(any::<u8>(), 0..512),
        valid_header in any::<bool>(),
        type_byte in prop_oneof![proptest::sample::select(MessageType::ALL).prop_map(MessageType::code), any::<u8>()],
        len in prop_oneof![0u32..2_048, 0u32..=70_000, any::<u32>()],
        bound in 1_024u32..=65_536,
    ) {
        let mut input = bytes;
        if valid_header {
            // Steer half the cases past the magic/version checks into the length and
            // payload logic.
            let mut header = vec![0x57, 0x58, 1, type_byte];
            header.extend_from_slice(&len.to_be_bytes());
            input.splice(0..0, header);
        }
        let decoder = Decoder::new(bound);
        match decoder.decode(&input) {
            Ok(Progress::NeedMore { frame_bytes_min }) => {
                prop_assert!(frame_bytes_min <= decoder.frame_bytes_max());
                prop_assert!(frame_bytes_min > input.len());
            }
            Ok(Progress::Frame { frame_bytes, .. }) => prop_assert!(frame_bytes <= input.len()),
            Err(e) => {
                // Every error maps to an ERROR code the gateway can send.
                let _ = e.error_code();
            }
        }
        let mut buf = BytesMut::from(input.as_slice());
        let cap_before = buf.capacity();
        let _ = decoder.decode_buf(&mut buf);
        prop_assert!(buf.capacity() <= cap_before.max(decoder.frame_bytes_max()));
    }

    #[test]
    fn hotlist_beyond_one_frame_is_refused(extra in 1usize..100) {
        let cards = vec![CardNo(1); HOTLIST_CARDS_PER_FRAME_MAX + extra];
        prop_assert!(HotlistUpdate::new(HotlistVersion(1), HotlistVersion(0), true, cards, vec![]).is_err());
    }
}

#[test]
fn largest_hotlist_frame_is_exactly_the_v1_bound() {
    let cards = vec![CardNo(7); HOTLIST_CARDS_PER_FRAME_MAX];
    let m = Message::from(
        HotlistUpdate::new(HotlistVersion(1), HotlistVersion(0), true, cards, vec![]).unwrap(),
    );
    assert!(m.payload_len() <= limits::FRAME_PAYLOAD_BYTES_MAX as usize);
    assert!(m.payload_len() + 8 > limits::FRAME_PAYLOAD_BYTES_MAX as usize);
}

#[test]
fn a_lowered_bound_refuses_frames_above_it() {
    let decoder = Decoder::new(2_000);
    let cards = vec![CardNo(7); 300]; // 13 + 2,400 bytes of payload
    let mut buf = BytesMut::new();
    Message::from(
        HotlistUpdate::new(HotlistVersion(1), HotlistVersion(0), true, cards, vec![]).unwrap(),
    )
    .encode(&mut buf);
    let err = decoder.decode(&buf[..8]).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::FrameTooLarge);
    assert_eq!(err.error_code(), ErrorCode::FrameTooLarge);
}
