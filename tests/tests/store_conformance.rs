//! One conformance suite, run against both stores: the PostgreSQL store (a real server,
//! fresh schema per test) and the embedded SQLite store (a real file).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use wenxiao_gateway::registry::{MerchantId, Registry};
use wenxiao_gateway::store::{
    AwardApproval, AwardInput, CardSeen, DeviceAudit, HoldOutcome, HoldRequest, IngestCtx,
    IngestTxn, LoadDecision, LoadInitRequest, PROGRAMME_BUDGET_KEY, Proposal, ResultReport, Store,
    StoreAudit, TxnAnswer,
};
use wenxiao_protocol::*;

const DEVICE: DeviceId = DeviceId(310_100_000_001);

/// Caps no ordinary test reaches.
const B: IngestCtx = IngestCtx {
    monthly_cap: Fen(1_000_000_000),
    programme_cap: Fen(1_000_000_000),
    shard: 0,
    sign_in_points: Points(10),
};

fn txn(seq: u64, card: u64, counter: u32, amount: i64) -> Txn {
    Txn {
        seq: Seq::new(seq).unwrap(),
        kind: TxnKind::Purchase,
        card_no: CardNo(card),
        card_counter: CardCounter(counter),
        amount_fen: Fen(amount),
        list_price_fen: Fen(0),
        item: Item::Book,
        points_hold_id: None,
        points_used: Points(0),
        refund_of_seq: None,
        occurred_at_ms: UnixMillis(1_795_000_000_000),
        tac: Bytes4([1, 2, 3, 4]),
    }
}

fn ingest(device: DeviceId, t: Txn, proposal: Proposal) -> IngestTxn {
    IngestTxn {
        device_id: device,
        merchant_id: Some(MerchantId(1001)),
        txn: t,
        proposal,
        received_at_ms: 1_795_000_000_500,
        business_date: BusinessDate::new(20261117).unwrap(),
        lease_epoch: None,
    }
}

const STORE_880: Proposal = Proposal::Store {
    reason: Reason::None,
    subsidy_fen: Fen(880),
    points_awarded: Points(0),
};

fn stored(subsidy: i64) -> TxnAnswer {
    TxnAnswer {
        status: TxnStatus::Stored,
        reason: Reason::None,
        subsidy_fen: Fen(subsidy),
        points_awarded: Points(0),
    }
}

async fn new_rows_are_stored_and_resends_are_duplicates(s: &(impl Store + StoreAudit)) {
    let batch = [
        ingest(DEVICE, txn(1, 10, 1, 8800), STORE_880),
        ingest(DEVICE, txn(2, 11, 1, 8800), STORE_880),
    ];
    assert_eq!(
        s.ingest(&batch, &B).await.unwrap(),
        vec![stored(880), stored(880)]
    );
    let again = s.ingest(&batch, &B).await.unwrap();
    assert!(
        again
            .iter()
            .all(|a| a.status == TxnStatus::Duplicate && a.subsidy_fen == Fen(880))
    );
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (2, 0));
}

async fn same_seq_other_content_is_seq_conflict_and_original_stands(s: &(impl Store + StoreAudit)) {
    s.ingest(&[ingest(DEVICE, txn(1, 10, 1, 8800), STORE_880)], &B)
        .await
        .unwrap();
    let other = ingest(DEVICE, txn(1, 10, 1, 9900), STORE_880);
    let a = s.ingest(&[other], &B).await.unwrap();
    assert_eq!(a, vec![TxnAnswer::rejected(Reason::SeqConflict)]);
    // Same answer when re-sent; the original is still the stored one.
    assert_eq!(s.ingest(&[other], &B).await.unwrap(), a);
    let orig = s
        .ingest(&[ingest(DEVICE, txn(1, 10, 1, 8800), STORE_880)], &B)
        .await
        .unwrap();
    assert_eq!(orig[0].status, TxnStatus::Duplicate);
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (1, 0));
}

async fn card_counter_replay_is_rejected_and_recorded(s: &(impl Store + StoreAudit)) {
    s.ingest(&[ingest(DEVICE, txn(1, 10, 7, 100), STORE_880)], &B)
        .await
        .unwrap();
    let replay = ingest(DEVICE, txn(2, 10, 7, 100), STORE_880);
    assert_eq!(
        s.ingest(&[replay], &B).await.unwrap(),
        vec![TxnAnswer::rejected(Reason::CardCounterReplay)]
    );
    // A re-send of the rejected transaction gets the same answer, and nothing doubles.
    assert_eq!(
        s.ingest(&[replay], &B).await.unwrap(),
        vec![TxnAnswer::rejected(Reason::CardCounterReplay)]
    );
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (1, 1));
    // The same counter from another device is a replay too; another card's is not.
    let other_device = ingest(DeviceId(2), txn(1, 10, 7, 100), STORE_880);
    let other_card = ingest(DeviceId(2), txn(2, 11, 7, 100), STORE_880);
    let a = s.ingest(&[other_device, other_card], &B).await.unwrap();
    assert_eq!(
        a,
        vec![TxnAnswer::rejected(Reason::CardCounterReplay), stored(880)]
    );
}

async fn replays_and_duplicates_inside_one_batch(s: &(impl Store + StoreAudit)) {
    let first = ingest(DEVICE, txn(1, 10, 7, 100), STORE_880);
    let replay = ingest(DEVICE, txn(2, 10, 7, 100), STORE_880);
    let conflict = ingest(DEVICE, txn(1, 10, 7, 999), STORE_880);
    let a = s
        .ingest(&[first, replay, first, conflict, replay], &B)
        .await
        .unwrap();
    assert_eq!(a[0], stored(880));
    assert_eq!(a[1], TxnAnswer::rejected(Reason::CardCounterReplay));
    assert_eq!(a[2].status, TxnStatus::Duplicate);
    assert_eq!(a[3], TxnAnswer::rejected(Reason::SeqConflict));
    assert_eq!(a[4], TxnAnswer::rejected(Reason::CardCounterReplay));
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (1, 1));
}

async fn rejected_proposals_are_recorded_and_answered_again(s: &(impl Store + StoreAudit)) {
    let bad = ingest(DEVICE, txn(1, 10, 1, 100), Proposal::Reject(Reason::BadMac));
    assert_eq!(
        s.ingest(&[bad], &B).await.unwrap(),
        vec![TxnAnswer::rejected(Reason::BadMac)]
    );
    assert_eq!(
        s.ingest(&[bad], &B).await.unwrap(),
        vec![TxnAnswer::rejected(Reason::BadMac)]
    );
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (0, 1));
    // A rejected transaction does not hold its card counter.
    let good = ingest(DEVICE, txn(2, 10, 1, 100), STORE_880);
    assert_eq!(s.ingest(&[good], &B).await.unwrap(), vec![stored(880)]);
}

async fn stored_seq_counts_contiguous_answered_seqs(s: &(impl Store + StoreAudit)) {
    assert_eq!(s.stored_seq(DEVICE, None).await.unwrap(), None);
    let rows: Vec<_> = [1, 2, 3, 5]
        .iter()
        .map(|&q| ingest(DEVICE, txn(q, 100 + q, 1, 100), STORE_880))
        .collect();
    s.ingest(&rows, &B).await.unwrap();
    s.ingest(
        &[ingest(
            DEVICE,
            txn(4, 1, 1, 1),
            Proposal::Reject(Reason::InvalidField),
        )],
        &B,
    )
    .await
    .unwrap();
    assert_eq!(s.stored_seq(DEVICE, None).await.unwrap(), Seq::new(5));
    s.checkpoint_stored_seq(DEVICE, Seq::new(5).unwrap())
        .await
        .unwrap();
    s.checkpoint_stored_seq(DEVICE, Seq::new(2).unwrap())
        .await
        .unwrap();
    s.ingest(&[ingest(DEVICE, txn(6, 200, 1, 1), STORE_880)], &B)
        .await
        .unwrap();
    assert_eq!(s.stored_seq(DEVICE, None).await.unwrap(), Seq::new(6));
    // A floor this node already knew starts the scan there, to the same answer.
    assert_eq!(
        s.stored_seq(DEVICE, Seq::new(3)).await.unwrap(),
        Seq::new(6)
    );
    assert_eq!(s.stored_seq(DeviceId(99), None).await.unwrap(), None);
}

async fn registry_round_trips(s: &(impl Store + StoreAudit)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
    let r = Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap();
    s.import_registry(&r).await.unwrap();
    s.import_registry(&r).await.unwrap();
    let back = s.load_registry().await.unwrap();
    assert_eq!(back.merchants(), r.merchants());
    assert_eq!(back.devices(), r.devices());
    s.ping().await.unwrap();
}

async fn many_concurrent_batches_store_each_txn_once(s: &(impl Store + StoreAudit + Clone)) {
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored_n = 0;
            for b in 0..10u64 {
                // Every writer sends the same 50 rows: exactly one of them stores each.
                let rows: Vec<_> = (1..=50u64)
                    .map(|q| {
                        ingest(
                            DEVICE,
                            txn(b * 50 + q, 1_000 + b * 50 + q, 1, 100),
                            STORE_880,
                        )
                    })
                    .collect();
                let a = s.ingest(&rows, &B).await.unwrap();
                stored_n += a.iter().filter(|x| x.status == TxnStatus::Stored).count();
                assert!(
                    a.iter().all(|x| x.status != TxnStatus::Rejected),
                    "writer {w}: {a:?}"
                );
            }
            stored_n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 500);
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (500, 0));
    assert_eq!(s.stored_seq(DEVICE, None).await.unwrap(), Seq::new(500));
}

fn want(device: DeviceId, seq: u64, card: u64, subsidy: i64, date: u32) -> IngestTxn {
    IngestTxn {
        business_date: BusinessDate::new(date).unwrap(),
        lease_epoch: None,
        ..ingest(
            device,
            // The card's counter follows the seq, so one card can buy several times.
            txn(seq, card, u32::try_from(seq).unwrap(), subsidy * 10),
            Proposal::Store {
                reason: Reason::None,
                subsidy_fen: Fen(subsidy),
                points_awarded: Points(0),
            },
        )
    }
}

async fn the_budget_pays_in_order_exactly_to_the_cap(s: &(impl Store + StoreAudit)) {
    let caps = IngestCtx {
        monthly_cap: Fen(2_000),
        programme_cap: Fen(3_000),
        shard: 3,
        sign_in_points: Points(10),
    };
    let a = s
        .ingest(
            &[
                want(DEVICE, 1, 1, 880, 20261130),
                want(DEVICE, 2, 2, 880, 20261130),
                want(DEVICE, 3, 3, 880, 20261130),
                want(DEVICE, 4, 4, 880, 20261130),
            ],
            &caps,
        )
        .await
        .unwrap();
    let got: Vec<(i64, Reason)> = a.iter().map(|x| (x.subsidy_fen.get(), x.reason)).collect();
    assert_eq!(
        got,
        vec![
            (880, Reason::None),
            (880, Reason::None),
            (240, Reason::BudgetExhausted),
            (0, Reason::BudgetExhausted)
        ]
    );
    assert!(a.iter().all(|x| x.status == TxnStatus::Stored));
    assert_eq!(s.budget_granted(202611).await.unwrap(), Fen(2_000));
    // The stored rows carry the granted figure: a re-send is answered with it.
    let again = s
        .ingest(&[want(DEVICE, 3, 3, 880, 20261130)], &caps)
        .await
        .unwrap();
    assert_eq!(
        (again[0].status, again[0].subsidy_fen, again[0].reason),
        (TxnStatus::Duplicate, Fen(240), Reason::BudgetExhausted)
    );
    // Midnight of the month: December has its own cap, but the programme has 1,000 left.
    let dec = s
        .ingest(
            &[
                want(DEVICE, 5, 5, 880, 20261201),
                want(DEVICE, 6, 6, 880, 20261201),
            ],
            &caps,
        )
        .await
        .unwrap();
    assert_eq!(dec[0].subsidy_fen, Fen(880));
    assert_eq!(
        (dec[1].subsidy_fen, dec[1].reason),
        (Fen(120), Reason::BudgetExhausted)
    );
    assert_eq!(s.budget_granted(202612).await.unwrap(), Fen(1_000));
    assert_eq!(s.budget_granted(0).await.unwrap(), Fen(3_000));
}

async fn concurrent_writers_never_exceed_the_budget(s: &(impl Store + StoreAudit + Clone)) {
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let caps = IngestCtx {
                monthly_cap: Fen(12_345),
                programme_cap: Fen(1_000_000),
                shard: i32::try_from(w).unwrap(),
                sign_in_points: Points(10),
            };
            let mut granted = 0;
            for b in 0..5u64 {
                let rows: Vec<_> = (0..10u64)
                    .map(|q| {
                        want(
                            DeviceId(100 + w),
                            b * 10 + q + 1,
                            w * 1_000 + b * 10 + q,
                            100,
                            20261115,
                        )
                    })
                    .collect();
                for a in s.ingest(&rows, &caps).await.unwrap() {
                    assert_eq!(a.status, TxnStatus::Stored);
                    granted += a.subsidy_fen.get();
                }
            }
            granted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    // 400 purchases want 40,000; exactly the cap is granted, to the fen.
    assert_eq!(total, 12_345);
    assert_eq!(s.budget_granted(202611).await.unwrap(), Fen(12_345));
}

async fn a_shard_that_borrowed_leaves_no_phantom_room(s: &(impl Store + StoreAudit)) {
    // Cap 800 over 8 shards of 100. Shard 0 takes 500 (borrowing 400 from the others);
    // then every other shard asks for 100: only 300 remain in all.
    let caps = |shard| IngestCtx {
        monthly_cap: Fen(800),
        programme_cap: Fen(1_000_000),
        shard,
        sign_in_points: Points(10),
    };
    let first = s
        .ingest(&[want(DEVICE, 1, 1, 500, 20261110)], &caps(0))
        .await
        .unwrap();
    assert_eq!(first[0].subsidy_fen, Fen(500));
    let mut total = 500;
    for shard in 1..8 {
        let q = u64::try_from(shard).unwrap() + 1;
        let a = s
            .ingest(&[want(DEVICE, q, q, 100, 20261110)], &caps(shard))
            .await
            .unwrap();
        total += a[0].subsidy_fen.get();
    }
    assert_eq!(total, 800);
    assert_eq!(s.budget_granted(202611).await.unwrap(), Fen(800));
}

fn refund(seq: u64, card: u64, counter: u32, amount: i64, of: u64, date: u32) -> IngestTxn {
    let mut t = txn(seq, card, counter, amount);
    t.kind = TxnKind::Refund;
    t.refund_of_seq = Seq::new(of);
    IngestTxn {
        business_date: BusinessDate::new(date).unwrap(),
        lease_epoch: None,
        ..ingest(
            DEVICE,
            t,
            Proposal::Store {
                reason: Reason::None,
                subsidy_fen: Fen(0),
                points_awarded: Points(0),
            },
        )
    }
}

async fn import_shipped_registry(s: &(impl Store + StoreAudit)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
    let r = Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap();
    s.import_registry(&r).await.unwrap();
}

async fn clearing_credits_each_card_once_and_is_idempotent(s: &(impl Store + StoreAudit)) {
    import_shipped_registry(s).await;
    let d = BusinessDate::new(20261127).unwrap();
    s.ingest(
        &[
            want(DEVICE, 1, 10, 880, 20261127),
            want(DEVICE, 2, 10, 120, 20261127),
            want(DEVICE, 3, 11, 1_005, 20261127),
            want(DEVICE, 4, 12, 300, 20261126),   // another day
            refund(5, 11, 2, 5_000, 3, 20261127), // half of the 10,050 purchase
            ingest(DEVICE, txn(6, 13, 1, 100), Proposal::Reject(Reason::BadMac)),
        ],
        &B,
    )
    .await
    .unwrap();
    let first = s
        .clear_day(d, 10, wenxiao_gateway::clock::day_end_ms(d) + 1)
        .await
        .unwrap();
    // Card 10: 880 + 120; card 11: 1,005 − round(1,005 × 5,000 / 10,050) = 1,005 − 500.
    assert_eq!(first.credit_count, 2);
    assert_eq!(first.credit_fen, Fen(1_000 + 505));
    assert_eq!(first.subsidy_fen, Fen(1_505));
    assert_eq!(first.txn_count, 4);
    assert!(!first.approved);
    let report = s.clearing_report(d).await.unwrap().unwrap();
    let credits: Vec<(u64, u64, i64)> = report
        .credits
        .iter()
        .map(|c| (c.credit_id.get(), c.card_no.get(), c.amount_fen.get()))
        .collect();
    assert_eq!(
        credits,
        vec![
            (202611270000000001, 10, 1_000),
            (202611270000000002, 11, 505)
        ]
    );
    let m = report.merchants.first().unwrap();
    assert_eq!(
        (m.txn_count, m.sales_fen, m.refunds_fen, m.subsidy_fen),
        (4, Fen(8_800 + 1_200 + 10_050), Fen(5_000), Fen(2_005))
    );
    assert_eq!(report.statistics.len(), 1);
    // Running it again changes nothing, even with more rows of that day arriving late.
    s.ingest(&[want(DEVICE, 7, 14, 50, 20261127)], &B)
        .await
        .unwrap();
    assert_eq!(
        s.clear_day(d, 10, wenxiao_gateway::clock::day_end_ms(d) + 2)
            .await
            .unwrap(),
        first
    );
    assert_eq!(s.clearing_report(d).await.unwrap().unwrap(), report);
    // Approval releases once.
    assert!(s.approve_day(d, 3).await.unwrap());
    assert!(s.approve_day(d, 4).await.unwrap());
    assert!(
        s.clearing_report(d)
            .await
            .unwrap()
            .unwrap()
            .summary
            .approved
    );
    assert!(
        !s.approve_day(BusinessDate::new(20261128).unwrap(), 5)
            .await
            .unwrap()
    );
}

async fn refunds_beyond_a_days_credit_are_owed_and_recovered(s: &(impl Store + StoreAudit)) {
    s.ingest(&[want(DEVICE, 1, 10, 1_000, 20261201)], &B)
        .await
        .unwrap();
    let day1 = s
        .clear_day(
            BusinessDate::new(20261201).unwrap(),
            10,
            wenxiao_gateway::clock::day_end_ms(BusinessDate::new(20261201).unwrap()) + 1,
        )
        .await
        .unwrap();
    assert_eq!(day1.credit_fen, Fen(1_000));
    // Day 2: the purchase is refunded in full (reversal 1,000) and a small one earns 300.
    s.ingest(
        &[
            refund(2, 10, 2, 10_000, 1, 20261202),
            want(DEVICE, 3, 10, 300, 20261202),
        ],
        &B,
    )
    .await
    .unwrap();
    let day2 = s
        .clear_day(
            BusinessDate::new(20261202).unwrap(),
            10,
            wenxiao_gateway::clock::day_end_ms(BusinessDate::new(20261202).unwrap()) + 2,
        )
        .await
        .unwrap();
    assert_eq!((day2.credit_count, day2.subsidy_fen), (0, Fen(-700)));
    // Day 3: 900 earned, 700 owed → 200 credited.
    s.ingest(&[want(DEVICE, 4, 10, 900, 20261203)], &B)
        .await
        .unwrap();
    let day3 = s
        .clear_day(
            BusinessDate::new(20261203).unwrap(),
            10,
            wenxiao_gateway::clock::day_end_ms(BusinessDate::new(20261203).unwrap()) + 3,
        )
        .await
        .unwrap();
    assert_eq!(day3.credit_fen, Fen(200));
}

fn sign_in(seq: u64, card: u64, date: u32) -> IngestTxn {
    let mut t = txn(seq, card, u32::try_from(seq).unwrap(), 0);
    t.kind = TxnKind::SignIn;
    t.item = Item::None;
    IngestTxn {
        business_date: BusinessDate::new(date).unwrap(),
        lease_epoch: None,
        merchant_id: Some(MerchantId(1071)),
        ..ingest(
            DeviceId(310_400_000_001),
            t,
            Proposal::Store {
                reason: Reason::None,
                subsidy_fen: Fen(0),
                points_awarded: Points(0),
            },
        )
    }
}

async fn sign_ins_earn_points_once_per_card_and_day(s: &(impl Store + StoreAudit)) {
    let a = s
        .ingest(
            &[
                sign_in(1, 50, 20261127),
                sign_in(2, 50, 20261127),
                sign_in(3, 51, 20261127),
            ],
            &B,
        )
        .await
        .unwrap();
    let got: Vec<_> = a
        .iter()
        .map(|x| (x.status, x.reason, x.points_awarded))
        .collect();
    assert_eq!(
        got,
        vec![
            (TxnStatus::Stored, Reason::None, Points(10)),
            (TxnStatus::Stored, Reason::DailyLimitReached, Points(0)),
            (TxnStatus::Stored, Reason::None, Points(10)),
        ]
    );
    // A re-send is answered as first recorded; the next day earns again.
    let again = s.ingest(&[sign_in(2, 50, 20261127)], &B).await.unwrap();
    assert_eq!(
        (again[0].status, again[0].reason),
        (TxnStatus::Duplicate, Reason::DailyLimitReached)
    );
    s.ingest(&[sign_in(4, 50, 20261128)], &B).await.unwrap();
    assert_eq!(
        s.points_balance(CardNo(50)).await.unwrap(),
        (Points(20), Points(0))
    );
}

fn hold(card: u64, points: u32, now: i64) -> HoldRequest {
    HoldRequest {
        card_no: CardNo(card),
        device_id: DEVICE,
        points: Points(points),
        purchase_fen: Fen(10_000),
        now_ms: now,
        expires_at_ms: now + 600_000,
    }
}

fn purchase_with(seq: u64, card: u64, hold: HoldId, points: u32, received: i64) -> IngestTxn {
    let mut t = txn(seq, card, u32::try_from(seq).unwrap(), 8_500);
    t.points_hold_id = Some(hold);
    t.points_used = Points(points);
    IngestTxn {
        received_at_ms: received,
        ..ingest(DEVICE, t, STORE_880)
    }
}

async fn a_purchase_consumes_its_hold_exactly_once(s: &(impl Store + StoreAudit)) {
    s.ingest(&[sign_in(1, 60, 20261101), sign_in(2, 60, 20261102)], &B)
        .await
        .unwrap();
    let now = 1_795_000_000_000;
    let HoldOutcome::Approved { hold_id, available } =
        s.create_hold(hold(60, 15, now)).await.unwrap()
    else {
        panic!("hold refused");
    };
    assert_eq!(available, Points(5));
    assert_eq!(
        s.create_hold(hold(60, 10, now)).await.unwrap(),
        HoldOutcome::Insufficient {
            available: Points(5)
        }
    );
    let a = s
        .ingest(&[purchase_with(10, 60, hold_id, 15, now + 1)], &B)
        .await
        .unwrap();
    assert_eq!(
        (a[0].status, a[0].subsidy_fen),
        (TxnStatus::Stored, Fen(880))
    );
    assert_eq!(
        s.points_balance(CardNo(60)).await.unwrap(),
        (Points(5), Points(0))
    );
    // Refunding half the purchase gives back half its points, rounded down: 7 of 15.
    let mut back = txn(13, 60, 20, 4_250);
    back.kind = TxnKind::Refund;
    back.refund_of_seq = Seq::new(10);
    let r = s
        .ingest(
            &[ingest(
                DEVICE,
                back,
                Proposal::Store {
                    reason: Reason::None,
                    subsidy_fen: Fen(0),
                    points_awarded: Points(0),
                },
            )],
            &B,
        )
        .await
        .unwrap();
    assert_eq!(
        (r[0].status, r[0].points_awarded),
        (TxnStatus::Stored, Points(7))
    );
    assert_eq!(
        s.points_balance(CardNo(60)).await.unwrap(),
        (Points(12), Points(0))
    );
    // The same hold again, for another purchase: refused, and takes no budget.
    let b = s
        .ingest(&[purchase_with(11, 60, hold_id, 15, now + 2)], &B)
        .await
        .unwrap();
    assert_eq!(b[0], TxnAnswer::rejected(Reason::HoldInvalid));
    // The purchase and the refund stored; the reused hold rejected.
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (2, 1));
    // A replay of the purchase (its card counter, its spent hold, a new seq) is a replay,
    // not an invalid hold: the counter is what gives it away, whichever way the batch is
    // written.
    let mut replayed = txn(15, 60, 10, 8_500);
    replayed.points_hold_id = Some(hold_id);
    replayed.points_used = Points(15);
    let r = s
        .ingest(
            &[IngestTxn {
                received_at_ms: now + 3,
                ..ingest(DEVICE, replayed, STORE_880)
            }],
            &B,
        )
        .await
        .unwrap();
    assert_eq!(r[0], TxnAnswer::rejected(Reason::CardCounterReplay));
    // A hold that expired before its purchase arrived is invalid, and is released.
    let HoldOutcome::Approved { hold_id: late, .. } =
        s.create_hold(hold(60, 5, now)).await.unwrap()
    else {
        panic!("hold refused");
    };
    let c = s
        .ingest(&[purchase_with(14, 60, late, 5, now + 600_001)], &B)
        .await
        .unwrap();
    assert_eq!(c[0], TxnAnswer::rejected(Reason::HoldInvalid));
    assert!(matches!(
        s.create_hold(hold(60, 5, now + 600_001)).await.unwrap(),
        HoldOutcome::Approved { .. }
    ));
}

const POS_A: DeviceId = DeviceId(310_100_000_005);
const POS_B: DeviceId = DeviceId(310_100_000_006);

/// Clears and approves a day in which `card` earned `subsidy`; returns the credit.
async fn released_credit(
    s: &(impl Store + StoreAudit),
    seq: u64,
    card: u64,
    subsidy: i64,
    date: u32,
) -> CreditId {
    s.ingest(&[want(DEVICE, seq, card, subsidy, date)], &B)
        .await
        .unwrap();
    let d = BusinessDate::new(date).unwrap();
    s.clear_day(d, 10, wenxiao_gateway::clock::day_end_ms(d) + 1)
        .await
        .unwrap();
    assert!(s.approve_day(d, 2).await.unwrap());
    let report = s.clearing_report(d).await.unwrap().unwrap();
    report
        .credits
        .iter()
        .find(|c| c.card_no == CardNo(card))
        .unwrap()
        .credit_id
}

fn seen(card: u64, online_seq: u16, device: DeviceId, now: i64) -> CardSeen {
    CardSeen {
        card_no: CardNo(card),
        online_seq: OnlineSeq(online_seq),
        device_id: device,
        now_ms: now,
        // Received after everything recorded so far (see `stale` for one that was not).
        received_order: i64::MAX,
        binding_timeout_ms: 300_000,
        lease_epoch: None,
    }
}

fn init(
    credit: CreditId,
    card: u64,
    online_seq: u16,
    device: DeviceId,
    host_time: i64,
) -> LoadInitRequest {
    LoadInitRequest {
        credit_id: credit,
        card_no: CardNo(card),
        online_seq: OnlineSeq(online_seq),
        device_id: device,
        host_time_ms: host_time,
        received_order: i64::MAX,
        lease_epoch: None,
    }
}

fn result(credit: CreditId, card: u64, outcome: CreditOutcome, device: DeviceId) -> ResultReport {
    ResultReport {
        credit_id: credit,
        card_no: CardNo(card),
        outcome,
        device_id: device,
        now_ms: 9,
        lease_epoch: None,
    }
}

async fn a_credit_loads_once_through_offer_attempt_and_settlement(s: &(impl Store + StoreAudit)) {
    let c = released_credit(s, 1, 70, 880, 20261127).await;
    let offered = s.card_presented(seen(70, 5, POS_A, 100)).await.unwrap();
    assert_eq!(
        offered
            .iter()
            .map(|o| (o.credit_id, o.amount_fen))
            .collect::<Vec<_>>(),
        vec![(c, Fen(880))]
    );
    // Bound to A: not offered at B, and B may not load it.
    assert!(
        s.card_presented(seen(70, 5, POS_B, 101))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.begin_load(init(c, 70, 5, POS_B, 1), |_| true)
            .await
            .unwrap(),
        LoadDecision::Declined(Reason::CreditNotYours)
    );
    assert_eq!(
        s.begin_load(init(c, 70, 5, POS_A, 1), |_| false)
            .await
            .unwrap(),
        LoadDecision::Declined(Reason::BadMac)
    );
    assert_eq!(
        s.begin_load(init(c, 71, 5, POS_A, 1), |_| true)
            .await
            .unwrap(),
        LoadDecision::Declined(Reason::CreditNotYours)
    );
    let approved = LoadDecision::Approved {
        amount_fen: Fen(880),
        host_time_ms: 1_000,
    };
    assert_eq!(
        s.begin_load(init(c, 70, 5, POS_A, 1_000), |a| a == Fen(880))
            .await
            .unwrap(),
        approved
    );
    // A re-sent LOAD_INIT gets the recorded host time (the same MAC2); a counter that went
    // backwards proves nothing, so the load stays in doubt (N+1 would settle it loaded:
    // a_load_init_settles_the_cards_load_in_doubt).
    assert_eq!(
        s.begin_load(init(c, 70, 5, POS_A, 2_000), |_| true)
            .await
            .unwrap(),
        approved
    );
    assert_eq!(
        s.begin_load(init(c, 70, 4, POS_A, 2_000), |_| true)
            .await
            .unwrap(),
        LoadDecision::Declined(Reason::CreditInDoubt)
    );
    // A TAC that does not verify changes nothing.
    assert_eq!(
        s.finish_load(result(c, 70, CreditOutcome::Loaded, POS_A), |_| false)
            .await
            .unwrap(),
        (ResultStatus::Rejected, Reason::BadMac)
    );
    // A presentation received before the attempt was recorded (still in flight from a
    // replaced session: its session had not seen the attempt's tick of the ledger clock)
    // proves nothing: the attempt stays in doubt, nothing is offered.
    assert!(
        s.card_presented(CardSeen {
            received_order: 0,
            ..seen(70, 5, POS_B, 900)
        })
        .await
        .unwrap()
        .is_empty()
    );
    // The card comes back unchanged: the attempt was void, the credit is offered again.
    let again = s.card_presented(seen(70, 5, POS_B, 2_500)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        s.begin_load(init(c, 70, 5, POS_B, 3_000), |_| true)
            .await
            .unwrap(),
        LoadDecision::Approved {
            amount_fen: Fen(880),
            host_time_ms: 3_000
        }
    );
    // The result was lost, but the card shows the load: loaded, final, offered nowhere.
    assert!(
        s.card_presented(seen(70, 6, POS_A, 3_500))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.credit_state(c).await.unwrap(), Some((3, Fen(880))));
    assert_eq!(
        s.finish_load(result(c, 70, CreditOutcome::Loaded, POS_B), |_| true)
            .await
            .unwrap(),
        (ResultStatus::Duplicate, Reason::None)
    );
    assert_eq!(
        s.begin_load(init(c, 70, 6, POS_A, 4_000), |_| true)
            .await
            .unwrap(),
        LoadDecision::Declined(Reason::UnknownCredit)
    );
}

async fn results_are_idempotent_and_retry_final_behave(s: &(impl Store + StoreAudit)) {
    let c = released_credit(s, 1, 80, 500, 20261127).await;
    s.card_presented(seen(80, 1, POS_A, 1)).await.unwrap();
    // RETRY before LOAD_AUTH releases it to any device.
    assert_eq!(
        s.finish_load(result(c, 80, CreditOutcome::NotLoadedRetry, POS_A), |_| {
            true
        })
        .await
        .unwrap(),
        (ResultStatus::Recorded, Reason::None)
    );
    assert_eq!(
        s.card_presented(seen(80, 1, POS_B, 2)).await.unwrap().len(),
        1
    );
    assert_eq!(
        s.begin_load(init(c, 80, 1, POS_B, 10), |_| true)
            .await
            .unwrap(),
        LoadDecision::Approved {
            amount_fen: Fen(500),
            host_time_ms: 10
        }
    );
    // RETRY after LOAD_AUTH keeps it in doubt: no other device gets it.
    s.finish_load(result(c, 80, CreditOutcome::NotLoadedRetry, POS_B), |_| {
        true
    })
    .await
    .unwrap();
    assert_eq!(
        s.finish_load(result(c, 80, CreditOutcome::Loaded, POS_B), |a| a
            .online_seq
            == OnlineSeq(1)
            && a.host_time_ms == 10)
            .await
            .unwrap(),
        (ResultStatus::Recorded, Reason::None)
    );
    assert_eq!(
        s.finish_load(result(c, 80, CreditOutcome::Loaded, POS_B), |_| true)
            .await
            .unwrap(),
        (ResultStatus::Duplicate, Reason::None)
    );
    assert_eq!(
        s.finish_load(
            result(CreditId(1), 80, CreditOutcome::Loaded, POS_B),
            |_| true
        )
        .await
        .unwrap(),
        (ResultStatus::Rejected, Reason::UnknownCredit)
    );
    // FINAL parks.
    let d = released_credit(s, 2, 81, 300, 20261128).await;
    s.card_presented(seen(81, 1, POS_A, 1)).await.unwrap();
    assert_eq!(
        s.finish_load(result(d, 81, CreditOutcome::NotLoadedFinal, POS_A), |_| {
            true
        })
        .await
        .unwrap(),
        (ResultStatus::Recorded, Reason::None)
    );
    assert_eq!(s.credit_state(d).await.unwrap(), Some((4, Fen(300))));
    assert!(
        s.card_presented(seen(81, 1, POS_A, 2))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_top_up_that_took_the_counter_voids_the_attempt(s: &(impl Store + StoreAudit)) {
    let c = released_credit(s, 1, 90, 700, 20261127).await;
    s.card_presented(seen(90, 7, POS_A, 1)).await.unwrap();
    s.begin_load(init(c, 90, 7, POS_A, 5), |_| true)
        .await
        .unwrap();
    // The card went to a kiosk and was topped up: the kiosk's TXN holds online counter 8.
    let mut top_up = txn(50, 90, 8, 10_000);
    top_up.kind = TxnKind::TopUp;
    top_up.item = Item::None;
    s.ingest(&[ingest(DeviceId(310_200_000_001), top_up, STORE_880)], &B)
        .await
        .unwrap();
    // Counter 8 now: taken by the top-up, so the credit did not load; offered again.
    assert_eq!(
        s.card_presented(seen(90, 8, POS_A, 6)).await.unwrap().len(),
        1
    );
    assert_eq!(s.credit_state(c).await.unwrap(), Some((2, Fen(700))));
}

async fn awards_are_paid_whole_from_the_budget_once(s: &(impl Store + StoreAudit)) {
    let caps = IngestCtx {
        monthly_cap: Fen(80_000_000),
        programme_cap: Fen(1_000_000_000),
        shard: 2,
        sign_in_points: Points(10),
    };
    let award = |date| AwardInput {
        merchant_id: MerchantId(1101),
        show_date: BusinessDate::new(date).unwrap(),
        kind: 1,
        amount_fen: Fen(50_000_000),
        evidence: "troupe registration 2026-17".to_owned(),
        now_ms: 1,
    };
    let first = s.record_award(award(20261120)).await.unwrap();
    let second = s.record_award(award(20261125)).await.unwrap();
    assert_ne!(first, second);
    let d = BusinessDate::new(20261127).unwrap();
    assert_eq!(
        s.approve_award(first, caps, d, 2).await.unwrap(),
        AwardApproval::Approved
    );
    assert_eq!(
        s.approve_award(first, caps, d, 3).await.unwrap(),
        AwardApproval::AlreadyApproved
    );
    assert_eq!(s.budget_granted(202611).await.unwrap(), Fen(50_000_000));
    // Only ¥300,000 of November's ¥800,000 cap is left: the second award is not paid in part.
    assert_eq!(
        s.approve_award(second, caps, d, 4).await.unwrap(),
        AwardApproval::BudgetExhausted
    );
    assert_eq!(s.budget_granted(202611).await.unwrap(), Fen(50_000_000));
    assert_eq!(
        s.approve_award(999, caps, d, 5).await.unwrap(),
        AwardApproval::Unknown
    );
    // It appears in the bureau's report of the day it was approved.
    s.clear_day(d, 10, wenxiao_gateway::clock::day_end_ms(d) + 6)
        .await
        .unwrap();
    let report = s.clearing_report(d).await.unwrap().unwrap();
    assert_eq!(report.awards.len(), 1);
    assert_eq!(
        (report.awards[0].award_id, report.awards[0].amount_fen),
        (first, Fen(50_000_000))
    );
}

async fn blacklisted_cards_earn_no_subsidy_and_take_no_budget(s: &(impl Store + StoreAudit)) {
    s.set_blacklisted(CardNo(33), true, "report 2026-114".to_owned(), 1)
        .await
        .unwrap();
    let a = s
        .ingest(
            &[
                want(DEVICE, 1, 33, 880, 20261127),
                want(DEVICE, 2, 34, 880, 20261127),
            ],
            &B,
        )
        .await
        .unwrap();
    assert_eq!(
        (a[0].status, a[0].subsidy_fen, a[0].reason),
        (TxnStatus::Stored, Fen(0), Reason::CardBlacklisted)
    );
    assert_eq!(a[1].subsidy_fen, Fen(880));
    assert_eq!(s.budget_granted(202611).await.unwrap(), Fen(880));
    let again = s
        .ingest(&[want(DEVICE, 1, 33, 880, 20261127)], &B)
        .await
        .unwrap();
    assert_eq!(
        (again[0].status, again[0].reason),
        (TxnStatus::Duplicate, Reason::CardBlacklisted)
    );
    s.set_blacklisted(CardNo(33), false, String::new(), 2)
        .await
        .unwrap();
    let later = s
        .ingest(&[want(DEVICE, 3, 33, 880, 20261127)], &B)
        .await
        .unwrap();
    assert_eq!(later[0].subsidy_fen, Fen(880));
}

async fn the_audit_sums_devices_credits_and_budgets(s: &(impl Store + StoreAudit)) {
    let other = DeviceId(310_100_000_002);
    s.ingest(
        &[
            want(DEVICE, 1, 11, 100, 20261130),
            want(DEVICE, 2, 12, 50, 20261130),
            want(other, 5, 13, 7, 20261130),
        ],
        &B,
    )
    .await
    .unwrap();
    // A replayed card counter is recorded as rejected: a row, not a stored one.
    s.ingest(&[ingest(DEVICE, txn(3, 11, 1, 1_000), STORE_880)], &B)
        .await
        .unwrap();
    let before = s.audit().await.unwrap();
    assert_eq!(
        before.devices,
        vec![
            DeviceAudit {
                device_id: DEVICE,
                rows: 3,
                min_seq: 1,
                max_seq: 3,
                stored: 2,
                subsidy_fen: Fen(150),
            },
            DeviceAudit {
                device_id: other,
                rows: 1,
                min_seq: 5,
                max_seq: 5,
                stored: 1,
                subsidy_fen: Fen(7),
            },
        ]
    );
    assert_eq!(before.released, (0, Fen(0)));
    assert!(before.budgets.contains(&(202611, Fen(157))));
    assert!(before.budgets.contains(&(PROGRAMME_BUDGET_KEY, Fen(157))));
    let d = BusinessDate::new(20261130).unwrap();
    s.clear_day(d, 10, wenxiao_gateway::clock::day_end_ms(d) + 1)
        .await
        .unwrap();
    assert!(s.approve_day(d, 2).await.unwrap());
    let after = s.audit().await.unwrap();
    assert_eq!(after.released, (3, Fen(157)));
    assert_eq!(after.loaded, (0, Fen(0)));
}

/// Defect 8: a later copy of a TXN in the same batch (an old session's queued copy beside
/// the new session's re-send) gets the first copy's final answer, after points, blacklist
/// and budget decided it — never DUPLICATE for a row recorded REJECTED.
async fn copies_in_one_batch_get_the_first_copys_final_answer(s: &(impl Store + StoreAudit)) {
    // A purchase quoting a hold that does not exist: REJECTED HOLD_INVALID, twice.
    let bad_hold = purchase_with(1, 70, HoldId::new(999).unwrap(), 10, 1_795_000_000_500);
    let a = s.ingest(&[bad_hold, bad_hold], &B).await.unwrap();
    assert_eq!(a, vec![TxnAnswer::rejected(Reason::HoldInvalid); 2]);
    // A blacklisted card's purchase: both copies say CARD_BLACKLISTED with no subsidy.
    s.set_blacklisted(CardNo(71), true, "test".into(), 1)
        .await
        .unwrap();
    let listed = ingest(DEVICE, txn(2, 71, 2, 8800), STORE_880);
    let b = s.ingest(&[listed, listed], &B).await.unwrap();
    assert_eq!(
        (b[0].status, b[0].reason, b[0].subsidy_fen),
        (TxnStatus::Stored, Reason::CardBlacklisted, Fen(0))
    );
    assert_eq!(
        (b[1].status, b[1].reason, b[1].subsidy_fen),
        (TxnStatus::Duplicate, Reason::CardBlacklisted, Fen(0))
    );
    // A sign-in and its copy: the copy reports the points the first earned.
    let si = sign_in(3, 72, 20261117);
    let c = s.ingest(&[si, si], &B).await.unwrap();
    assert_eq!(c[0].points_awarded, Points(10));
    assert_eq!(
        (c[1].status, c[1].points_awarded),
        (TxnStatus::Duplicate, Points(10))
    );
    // And a re-send in a later batch agrees with the copies.
    assert_eq!(
        s.ingest(&[bad_hold, listed, si], &B).await.unwrap(),
        vec![a[1], b[1], c[1]]
    );
}

/// Defect 2: the refunds of one purchase add up to at most its amount, and reverse its
/// subsidy at most once in total, in proportion and without rounding past it. An excess
/// refund — a second full one, one in the same batch, one for another card — is REJECTED
/// INVALID_FIELD and reverses nothing.
async fn refunds_of_one_purchase_never_exceed_it(s: &(impl Store + StoreAudit)) {
    const D: u32 = 20261204;
    // Purchase 1: 8,800 fen with 880 subsidy. Purchase 2: 1,000 fen with 5 (odd, so
    // halves round). Another card's purchase keeps its subsidy whatever happens.
    let mut small = want(DEVICE, 2, 80, 5, D);
    small.txn.amount_fen = Fen(1_000);
    s.ingest(
        &[
            want(DEVICE, 1, 80, 880, D),
            small,
            want(DEVICE, 3, 81, 100, D),
        ],
        &B,
    )
    .await
    .unwrap();
    let invalid = TxnAnswer::rejected(Reason::InvalidField);
    // A full refund, and a second one in the same batch.
    let a = s
        .ingest(
            &[
                refund(10, 80, 10, 8_800, 1, D),
                refund(11, 80, 11, 8_800, 1, D),
            ],
            &B,
        )
        .await
        .unwrap();
    assert_eq!((a[0].status, a[1]), (TxnStatus::Stored, invalid));
    // A third, in a later batch; and one that names the purchase for another card.
    let b = s
        .ingest(
            &[refund(12, 80, 12, 1, 1, D), refund(13, 81, 13, 100, 2, D)],
            &B,
        )
        .await
        .unwrap();
    assert_eq!(b, vec![invalid, invalid]);
    // Halves of the odd purchase: 2.5 + 2.5 reverse 5 in all, not 3 + 3.
    let c = s
        .ingest(
            &[refund(14, 80, 14, 500, 2, D), refund(15, 80, 15, 500, 2, D)],
            &B,
        )
        .await
        .unwrap();
    assert!(c.iter().all(|a| a.status == TxnStatus::Stored), "{c:?}");
    assert_eq!(
        s.ingest(&[refund(16, 80, 16, 1, 2, D)], &B).await.unwrap(),
        vec![invalid]
    );
    let day = s
        .clear_day(
            BusinessDate::new(D).unwrap(),
            10,
            wenxiao_gateway::clock::day_end_ms(BusinessDate::new(D).unwrap()) + 1,
        )
        .await
        .unwrap();
    // Card 80: 880 + 5 earned, 880 + 5 reversed; card 81: 100.
    assert_eq!((day.subsidy_fen, day.credit_fen), (Fen(100), Fen(100)));
    let report = s
        .clearing_report(BusinessDate::new(D).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.credits.len(), 1);
    assert_eq!(report.credits[0].card_no, CardNo(81));
    assert_eq!(s.count_txns(DEVICE).await.unwrap(), (6, 4));
}

/// The end of Shanghai business day `date`, plus `ms`: a clock at which the day may be
/// cleared.
fn after(date: u32, ms: i64) -> i64 {
    wenxiao_gateway::clock::day_end_ms(BusinessDate::new(date).unwrap()) + ms
}

/// Defect 3: a day is cleared only once it has ended in Shanghai (so a future day cannot
/// be frozen empty), and a row that commits after its day was cleared is stored and
/// credited with the next open day — nothing acknowledged is left uncredited.
async fn late_rows_go_to_the_next_open_day(s: &(impl Store + StoreAudit)) {
    const D: u32 = 20261205;
    const NEXT: u32 = 20261206;
    let day = BusinessDate::new(D).unwrap();
    s.ingest(&[want(DEVICE, 1, 90, 100, D)], &B).await.unwrap();
    // Not before the day has ended; not a day in the future.
    assert!(s.clear_day(day, 10, after(D, -1)).await.is_err());
    assert!(
        s.clear_day(BusinessDate::new(NEXT).unwrap(), 10, after(D, 1))
            .await
            .is_err()
    );
    let first = s.clear_day(day, 10, after(D, 1)).await.unwrap();
    assert_eq!(first.credit_fen, Fen(100));
    // A purchase received on D that commits after D was cleared: STORED all the same.
    let late = s.ingest(&[want(DEVICE, 2, 91, 40, D)], &B).await.unwrap();
    assert_eq!(late, vec![stored(40)]);
    // D is unchanged; the next day credits the late row.
    assert_eq!(s.clear_day(day, 10, after(D, 2)).await.unwrap(), first);
    let next = s
        .clear_day(BusinessDate::new(NEXT).unwrap(), 10, after(NEXT, 1))
        .await
        .unwrap();
    assert_eq!((next.txn_count, next.credit_fen), (1, Fen(40)));
    let report = s
        .clearing_report(BusinessDate::new(NEXT).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.credits[0].card_no, CardNo(91));
    // A re-send of the late row is a duplicate, wherever it was filed.
    assert_eq!(
        s.ingest(&[want(DEVICE, 2, 91, 40, D)], &B).await.unwrap()[0].status,
        TxnStatus::Duplicate
    );
}

/// Defect 4: a LOAD_INIT settles the card's load in doubt by its online_seq, exactly as a
/// CARD_PRESENTED does (contract, Credits 5) — an OTA endpoint never presents a card, so
/// without this a SIM card whose result was lost stays stuck.
async fn a_load_init_settles_the_cards_load_in_doubt(s: &(impl Store + StoreAudit)) {
    // Two credits of one card, both offered to POS_A.
    let a = released_credit(s, 1, 75, 300, 20261206).await;
    let b = released_credit(s, 2, 75, 200, 20261207).await;
    assert_eq!(
        s.card_presented(seen(75, 5, POS_A, 100))
            .await
            .unwrap()
            .len(),
        2
    );
    let ok = |_: Fen| true;
    // A's load is authorised at counter 5; its result never comes.
    assert!(matches!(
        s.begin_load(init(a, 75, 5, POS_A, 200), ok).await.unwrap(),
        LoadDecision::Approved { .. }
    ));
    // B's LOAD_INIT at counter 6: the card applied A's load, so A is loaded and B may go.
    assert!(matches!(
        s.begin_load(init(b, 75, 6, POS_A, 300), ok).await.unwrap(),
        LoadDecision::Approved { .. }
    ));
    assert_eq!(s.credit_state(a).await.unwrap().unwrap().0, 3);
    // B's result is lost too; a LOAD_INIT of B again at 6 is the same exchange re-sent.
    assert!(matches!(
        s.begin_load(init(b, 75, 6, POS_A, 400), ok).await.unwrap(),
        LoadDecision::Approved {
            host_time_ms: 300,
            ..
        }
    ));
    // A third credit, LOAD_INIT at 6 again: the card did not apply B, so B is void
    // (offered again later) and C may go.
    let c = released_credit(s, 3, 75, 100, 20261208).await;
    let offered = s.card_presented(seen(75, 6, POS_B, 500)).await.unwrap();
    // The presentation itself settled B as void (counter still 6): both are offered.
    assert_eq!(offered.len(), 2);
    assert!(matches!(
        s.begin_load(init(c, 75, 6, POS_B, 600), ok).await.unwrap(),
        LoadDecision::Approved { .. }
    ));
    // Now B again on POS_B at counter 6 while C is in doubt: C's counter says void.
    assert!(matches!(
        s.begin_load(init(b, 75, 6, POS_B, 700), ok).await.unwrap(),
        LoadDecision::Approved {
            host_time_ms: 700,
            ..
        }
    ));
    assert_eq!(s.credit_state(c).await.unwrap().unwrap().0, 2);
    // A counter that went backwards proves nothing: B stays in doubt.
    assert_eq!(
        s.begin_load(init(b, 75, 3, POS_B, 800), ok).await.unwrap(),
        LoadDecision::Declined(Reason::CreditInDoubt)
    );
}

/// Defect 10: a change of a month's cap in the policy applies from the next batch, also
/// to a month that has started; a cap lowered below what was granted grants nothing more.
async fn a_months_cap_change_applies_from_the_next_batch(s: &(impl Store + StoreAudit)) {
    const D: u32 = 20261210;
    let cap = |fen| IngestCtx {
        monthly_cap: Fen(fen),
        ..B
    };
    let granted = |a: Vec<TxnAnswer>| a.iter().map(|a| a.subsidy_fen.get()).sum::<i64>();
    let a = s
        .ingest(&[want(DEVICE, 1, 95, 600, D)], &cap(1_000))
        .await
        .unwrap();
    assert_eq!(granted(a), 600);
    // Raised: the next batch is paid from the new cap.
    let b = s
        .ingest(
            &[want(DEVICE, 2, 95, 500, D), want(DEVICE, 3, 95, 500, D)],
            &cap(2_000),
        )
        .await
        .unwrap();
    assert_eq!(granted(b), 1_000);
    // Lowered below the 1,600 granted: nothing more.
    let c = s
        .ingest(&[want(DEVICE, 4, 95, 100, D)], &cap(1_200))
        .await
        .unwrap();
    assert_eq!(c[0].reason, Reason::BudgetExhausted);
    assert_eq!(granted(c), 0);
    // Raised again to 1,700: 100 left, the purchase wanting 200 is cut to it.
    let d = s
        .ingest(&[want(DEVICE, 5, 95, 200, D)], &cap(1_700))
        .await
        .unwrap();
    assert_eq!(
        (d[0].subsidy_fen, d[0].reason),
        (Fen(100), Reason::BudgetExhausted)
    );
    assert_eq!(s.budget_granted(202612).await.unwrap(), Fen(1_700));
}

macro_rules! conformance {
    ($store:ident, $make:expr, $($test:ident),+ $(,)?) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    #[allow(unused_variables)]
                    let (s, guard) = $make;
                    super::$test(&s).await;
                }
            )+
        }
    };
}

/// Every test of the suite, run against both stores.
macro_rules! on_both_stores {
    ($($test:ident),+ $(,)?) => {
        conformance!(postgres, (wenxiao_tests::fresh_pg_store().await, ()), $($test),+);
        conformance!(sqlite, wenxiao_tests::fresh_sqlite_store().await, $($test),+);
    };
}

on_both_stores!(
    new_rows_are_stored_and_resends_are_duplicates,
    same_seq_other_content_is_seq_conflict_and_original_stands,
    card_counter_replay_is_rejected_and_recorded,
    replays_and_duplicates_inside_one_batch,
    rejected_proposals_are_recorded_and_answered_again,
    stored_seq_counts_contiguous_answered_seqs,
    registry_round_trips,
    many_concurrent_batches_store_each_txn_once,
    the_budget_pays_in_order_exactly_to_the_cap,
    concurrent_writers_never_exceed_the_budget,
    a_shard_that_borrowed_leaves_no_phantom_room,
    clearing_credits_each_card_once_and_is_idempotent,
    refunds_beyond_a_days_credit_are_owed_and_recovered,
    sign_ins_earn_points_once_per_card_and_day,
    a_purchase_consumes_its_hold_exactly_once,
    a_credit_loads_once_through_offer_attempt_and_settlement,
    results_are_idempotent_and_retry_final_behave,
    a_top_up_that_took_the_counter_voids_the_attempt,
    awards_are_paid_whole_from_the_budget_once,
    blacklisted_cards_earn_no_subsidy_and_take_no_budget,
    the_audit_sums_devices_credits_and_budgets,
    copies_in_one_batch_get_the_first_copys_final_answer,
    refunds_of_one_purchase_never_exceed_it,
    late_rows_go_to_the_next_open_day,
    a_load_init_settles_the_cards_load_in_doubt,
    a_months_cap_change_applies_from_the_next_batch,
);
