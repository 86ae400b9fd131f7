//! The `tokio_util::codec` adapter: frames split at every byte boundary still decode, and
//! an unfinished frame at end of input is an error, not a silent drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_wrap
)]

use bytes::BytesMut;
use tokio_util::codec::{Decoder as _, Encoder as _};
use wenxiao_protocol::{
    CodecError, DecodeErrorKind, Drain, Heartbeat, Message, UnixMillis, WxCodec,
};

fn sample() -> Vec<Message> {
    vec![
        Heartbeat {
            sent_at_ms: UnixMillis(1_700_000_000_000),
        }
        .into(),
        Drain {
            reconnect_after_ms: 5_000,
        }
        .into(),
    ]
}

#[test]
fn byte_by_byte_feeding_yields_every_frame() {
    let mut codec = WxCodec::default();
    let mut wire = BytesMut::new();
    for m in sample() {
        codec.encode(m, &mut wire).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, sample());
    assert!(buf.is_empty());
}

#[test]
fn eof_inside_a_frame_is_truncated() {
    let mut codec = WxCodec::default();
    let mut wire = BytesMut::new();
    codec.encode(sample().remove(0), &mut wire).unwrap();
    wire.truncate(wire.len() - 1);
    match codec.decode_eof(&mut wire) {
        Err(CodecError::Decode(e)) => assert_eq!(e.kind(), DecodeErrorKind::Truncated),
        other => panic!("expected Truncated, got {other:?}"),
    }
}
