//! Property tests of the clearing run on both stores: random days of purchases and
//! refunds are credited exactly as the pure rules say (`rules::refund_reversal_step`; a
//! refund past its purchase's amount changes nothing), the credits add up to the cleared
//! subsidy, and clearing twice is clearing once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use std::collections::BTreeMap;
use wenxiao_gateway::registry::MerchantId;
use wenxiao_gateway::rules::refund_reversal_step;
use wenxiao_gateway::store::{IngestCtx, IngestTxn, Proposal, Store};
use wenxiao_protocol::*;

const DATE: u32 = 20261127;
const CTX: IngestCtx = IngestCtx {
    monthly_cap: Fen(i64::MAX / 8),
    programme_cap: Fen(i64::MAX / 8),
    shard: 0,
    sign_in_points: Points(10),
};

/// A day: purchases (card, amount, subsidy) and refunds (index of a purchase, share in
/// percent of its amount).
#[derive(Debug, Clone)]
struct Day {
    purchases: Vec<(u64, i64, i64)>,
    refunds: Vec<(prop::sample::Index, i64)>,
    batch_rows: usize,
}

fn day() -> impl Strategy<Value = Day> {
    (
        prop::collection::vec((0u64..12, 1i64..100_000, 0i64..10_000), 1..40),
        prop::collection::vec((any::<prop::sample::Index>(), 1i64..=120), 0..10),
        1usize..16,
    )
        .prop_map(|(purchases, refunds, batch_rows)| Day {
            purchases,
            refunds,
            batch_rows,
        })
}

fn row(
    seq: u64,
    kind: TxnKind,
    card: u64,
    amount: i64,
    subsidy: i64,
    refund_of: Option<u64>,
) -> IngestTxn {
    IngestTxn {
        device_id: DeviceId(310_100_000_001),
        merchant_id: Some(MerchantId(1001)),
        txn: Txn {
            seq: Seq::new(seq).unwrap(),
            kind,
            card_no: CardNo(card),
            card_counter: CardCounter(u32::try_from(seq).unwrap()),
            amount_fen: Fen(amount),
            list_price_fen: Fen(0),
            item: if kind == TxnKind::Purchase {
                Item::Book
            } else {
                Item::None
            },
            points_hold_id: None,
            points_used: Points(0),
            refund_of_seq: refund_of.and_then(Seq::new),
            occurred_at_ms: UnixMillis(1),
            tac: Bytes4::ZERO,
        },
        proposal: Proposal::Store {
            reason: Reason::None,
            subsidy_fen: Fen(subsidy),
            points_awarded: Points(0),
        },
        received_at_ms: 1,
        business_date: BusinessDate::new(DATE).unwrap(),
        lease_epoch: None,
    }
}

async fn check(store: impl Store, day: Day) {
    let mut rows = Vec::new();
    let mut expected: BTreeMap<u64, i64> = BTreeMap::new();
    for (i, &(card, amount, subsidy)) in day.purchases.iter().enumerate() {
        rows.push(row(
            i as u64 + 1,
            TxnKind::Purchase,
            card,
            amount,
            subsidy,
            None,
        ));
        *expected.entry(card).or_default() += subsidy;
    }
    let mut refunded_so_far = vec![0_i64; day.purchases.len()];
    for (k, (which, percent)) in day.refunds.iter().enumerate() {
        let p = which.index(day.purchases.len());
        let (card, amount, subsidy) = day.purchases[p];
        let refunded = amount * percent / 100;
        let seq = (day.purchases.len() + k) as u64 + 1;
        rows.push(row(
            seq,
            TxnKind::Refund,
            card,
            refunded.max(1),
            0,
            Some(p as u64 + 1),
        ));
        // The purchase's refunds add up to at most its amount (a refund past it is
        // rejected and changes nothing); each reverses its step of the cumulative reversal.
        let before = refunded_so_far[p];
        let after = before + refunded.max(1);
        if after <= amount {
            refunded_so_far[p] = after;
            *expected.entry(card).or_default() -=
                refund_reversal_step(Fen(subsidy), Fen(amount), Fen(before), Fen(after)).get();
        }
    }
    for chunk in rows.chunks(day.batch_rows) {
        store.ingest(chunk, &CTX).await.unwrap();
    }
    let date = BusinessDate::new(DATE).unwrap();
    let first = store
        .clear_day(date, 10, wenxiao_gateway::clock::day_end_ms(date) + 1)
        .await
        .unwrap();
    let report = store.clearing_report(date).await.unwrap().unwrap();
    let got: BTreeMap<u64, i64> = report
        .credits
        .iter()
        .map(|c| (c.card_no.get(), c.amount_fen.get()))
        .collect();
    let want: BTreeMap<u64, i64> = expected
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(got, want);
    assert_eq!(first.subsidy_fen.get(), expected.values().sum::<i64>());
    assert_eq!(first.credit_fen.get(), want.values().sum::<i64>());
    assert_eq!(
        store
            .clear_day(date, 10, wenxiao_gateway::clock::day_end_ms(date) + 2)
            .await
            .unwrap(),
        first
    );
    assert_eq!(store.clearing_report(date).await.unwrap().unwrap(), report);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sqlite_credits_follow_the_rules(d in day()) {
        runtime().block_on(async {
            let (store, _dir) = wenxiao_tests::fresh_sqlite_store().await;
            check(store, d).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn postgres_credits_follow_the_rules(d in day()) {
        runtime().block_on(async {
            check(wenxiao_tests::fresh_pg_store().await, d).await;
        });
    }
}
