//! Property tests of the clearing run on both stores: random days of purchases, refunds
//! and sign-ins at random merchants (some rows with none) are credited exactly as the
//! pure rules say (`rules::refund_reversal_step`; a refund past its purchase's amount
//! changes nothing), the credits add up to the cleared subsidy, the merchants' settlement,
//! the district and category statistics and the run's count are what a model summing the
//! stored rows says, and clearing twice is clearing once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use std::collections::BTreeMap;
use wenxiao_gateway::registry::{MerchantId, Registry};
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

/// The value of a point in fen the runs use.
const FEN_PER_POINT: i64 = 10;

/// A day: purchases (card, amount, subsidy, points used, merchant), refunds (index of a
/// purchase, share in percent of its amount) and sign-ins (card, merchant). A merchant is
/// an index into the registry's first merchants, or none.
#[derive(Debug, Clone)]
struct Day {
    purchases: Vec<(u64, i64, i64, u32, Option<usize>)>,
    refunds: Vec<(prop::sample::Index, i64)>,
    sign_ins: Vec<(u64, Option<usize>)>,
    batch_rows: usize,
}

/// How many of the registry's merchants the days use.
const MERCHANTS_USED: usize = 6;

fn merchant() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.85, 0..MERCHANTS_USED)
}

fn day() -> impl Strategy<Value = Day> {
    (
        prop::collection::vec(
            (0u64..12, 1i64..100_000, 0i64..10_000, 0u32..50, merchant()),
            1..40,
        ),
        prop::collection::vec((any::<prop::sample::Index>(), 1i64..=120), 0..10),
        prop::collection::vec((0u64..12, merchant()), 0..8),
        1usize..16,
    )
        .prop_map(|(purchases, refunds, sign_ins, batch_rows)| Day {
            purchases,
            refunds,
            sign_ins,
            batch_rows,
        })
}

/// The registry the days' merchants come from.
fn registry() -> Registry {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
    Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap()
}

/// What the model expects of a stored row in the settlement and the statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sums {
    txn_count: i64,
    sales_fen: i64,
    refunds_fen: i64,
    points_fen: i64,
    subsidy_fen: i64,
}

fn row(
    seq: u64,
    kind: TxnKind,
    card: u64,
    amount: i64,
    subsidy: i64,
    refund_of: Option<u64>,
    merchant_id: Option<MerchantId>,
) -> IngestTxn {
    IngestTxn {
        device_id: DeviceId(310_100_000_001),
        merchant_id,
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
    let registry = registry();
    store.import_registry(&registry).await.unwrap();
    let merchants: Vec<_> = registry
        .merchants()
        .into_iter()
        .take(MERCHANTS_USED)
        .collect();
    let merchant_of = |m: Option<usize>| m.map(|m| merchants[m].merchant_id);
    let mut rows = Vec::new();
    let mut expected: BTreeMap<u64, i64> = BTreeMap::new();
    // The model of the settlement (purchases and refunds by merchant), the statistics
    // (every stored row of a merchant, by district and category) and the run's count.
    let mut settled: BTreeMap<i64, Sums> = BTreeMap::new();
    let mut statistics: BTreeMap<(i16, i16), Sums> = BTreeMap::new();
    let mut stored = 0_i64;
    let mut count = |m: Option<usize>, kind: TxnKind, amount: i64, points: i64, subsidy: i64| {
        stored += 1;
        let Some(m) = m else { return };
        let merchant = merchants[m];
        let s = statistics
            .entry((merchant.district.code(), merchant.category.code()))
            .or_default();
        s.txn_count += 1;
        s.subsidy_fen += subsidy;
        if kind == TxnKind::Purchase {
            s.sales_fen += amount;
        }
        if matches!(kind, TxnKind::Purchase | TxnKind::Refund) {
            let e = settled.entry(merchant.merchant_id.0).or_default();
            e.txn_count += 1;
            if kind == TxnKind::Purchase {
                e.sales_fen += amount;
                e.points_fen += points * FEN_PER_POINT;
                e.subsidy_fen += subsidy;
            } else {
                e.refunds_fen += amount;
            }
        }
    };
    for (i, &(card, amount, subsidy, points, m)) in day.purchases.iter().enumerate() {
        let mut r = row(
            i as u64 + 1,
            TxnKind::Purchase,
            card,
            amount,
            subsidy,
            None,
            merchant_of(m),
        );
        r.txn.points_used = Points(points);
        rows.push(r);
        *expected.entry(card).or_default() += subsidy;
        count(m, TxnKind::Purchase, amount, i64::from(points), subsidy);
    }
    let mut refunded_so_far = vec![0_i64; day.purchases.len()];
    for (k, (which, percent)) in day.refunds.iter().enumerate() {
        let p = which.index(day.purchases.len());
        let (card, amount, subsidy, _, m) = day.purchases[p];
        let refunded = amount * percent / 100;
        let seq = (day.purchases.len() + k) as u64 + 1;
        rows.push(row(
            seq,
            TxnKind::Refund,
            card,
            refunded.max(1),
            0,
            Some(p as u64 + 1),
            merchant_of(m),
        ));
        // The purchase's refunds add up to at most its amount (a refund past it is
        // rejected and changes nothing); each reverses its step of the cumulative reversal.
        let before = refunded_so_far[p];
        let after = before + refunded.max(1);
        if after <= amount {
            refunded_so_far[p] = after;
            *expected.entry(card).or_default() -=
                refund_reversal_step(Fen(subsidy), Fen(amount), Fen(before), Fen(after)).get();
            count(m, TxnKind::Refund, refunded.max(1), 0, 0);
        }
    }
    for (k, &(card, m)) in day.sign_ins.iter().enumerate() {
        let seq = (day.purchases.len() + day.refunds.len() + k) as u64 + 1;
        rows.push(row(seq, TxnKind::SignIn, card, 0, 0, None, merchant_of(m)));
        count(m, TxnKind::SignIn, 0, 0, 0);
    }
    for chunk in rows.chunks(day.batch_rows) {
        store.ingest(chunk, &CTX).await.unwrap();
    }
    let date = BusinessDate::new(DATE).unwrap();
    let first = store
        .clear_day(
            date,
            FEN_PER_POINT,
            wenxiao_gateway::clock::day_end_ms(date) + 1,
        )
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
    assert_eq!(first.txn_count, stored);
    let got: BTreeMap<i64, Sums> = report
        .merchants
        .iter()
        .map(|m| {
            (
                m.merchant_id.0,
                Sums {
                    txn_count: m.txn_count,
                    sales_fen: m.sales_fen.get(),
                    refunds_fen: m.refunds_fen.get(),
                    points_fen: m.points_fen.get(),
                    subsidy_fen: m.subsidy_fen.get(),
                },
            )
        })
        .collect();
    assert_eq!(got, settled);
    let got: BTreeMap<(i16, i16), Sums> = report
        .statistics
        .iter()
        .map(|s| {
            (
                (s.district, s.category),
                Sums {
                    txn_count: s.txn_count,
                    sales_fen: s.sales_fen.get(),
                    subsidy_fen: s.subsidy_fen.get(),
                    ..Sums::default()
                },
            )
        })
        .collect();
    assert_eq!(got, statistics);
    assert_eq!(
        store
            .clear_day(
                date,
                FEN_PER_POINT,
                wenxiao_gateway::clock::day_end_ms(date) + 2
            )
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// With one pooled connection the run has none to spare for the merchants' scan,
    /// which then runs after the nets on the run's own: the same rules hold.
    #[test]
    fn postgres_with_one_connection_credits_follow_the_rules(d in day()) {
        runtime().block_on(async {
            let store = wenxiao_gateway::store::PgStore::connect(
                &wenxiao_tests::fresh_pg_url().await,
                1,
                5_000,
            )
            .unwrap();
            store.migrate().await.unwrap();
            check(store, d).await;
        });
    }
}
