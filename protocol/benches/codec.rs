//! Encoding and decoding TXN frames on one core. Run: cargo bench -p wenxiao-protocol
//! The throughput line ("thrpt") is in frames per second (elements/s).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_wrap
)]

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use wenxiao_protocol::{
    Bytes4, CardCounter, CardNo, Decoder, Fen, Item, Message, Points, Seq, Txn, TxnKind, UnixMillis,
};

/// Frames per iteration: large enough that per-iteration overhead vanishes.
const BATCH_FRAMES: u64 = 1_000;

fn txn(seq: u64) -> Message {
    Message::Txn(Txn {
        seq: Seq::new(seq).unwrap(),
        kind: TxnKind::Purchase,
        card_no: CardNo(3_101_000_012_345_678 + seq),
        card_counter: CardCounter(41),
        amount_fen: Fen(8_800),
        list_price_fen: Fen(0),
        item: Item::Book,
        points_hold_id: None,
        points_used: Points(0),
        refund_of_seq: None,
        occurred_at_ms: UnixMillis(1_795_000_000_000),
        tac: Bytes4([1, 2, 3, 4]),
    })
}

fn bench(c: &mut Criterion) {
    let messages: Vec<Message> = (1..=BATCH_FRAMES).map(txn).collect();
    let mut wire = BytesMut::new();
    for m in &messages {
        m.encode(&mut wire);
    }
    let wire = wire.freeze();

    let mut group = c.benchmark_group("txn");
    group.throughput(Throughput::Elements(BATCH_FRAMES));
    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            buf.clear();
            for m in &messages {
                m.encode(&mut buf);
            }
            black_box(buf.len())
        })
    });
    group.bench_function("decode", |b| {
        let decoder = Decoder::default();
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut n = 0u64;
            while let Some(m) = decoder.decode_buf(&mut buf).unwrap() {
                black_box(&m);
                n += 1;
            }
            assert_eq!(n, BATCH_FRAMES);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
