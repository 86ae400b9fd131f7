//! The ledger under concurrency on PostgreSQL: two store instances (two gateway nodes)
//! with four writers each, sharing budget shards, run to exhaustion; and clearing while
//! ingest runs. The tests of this file run one at a time (they read the database's
//! deadlock counter), and no other test binary runs beside them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::time::Duration;
use wenxiao_gateway::registry::MerchantId;
use wenxiao_gateway::store::{IngestCtx, IngestTxn, PgStore, Proposal, Store, StoreAudit};
use wenxiao_protocol::*;

/// One test at a time: they read a database-wide counter.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MONTH: i32 = 202611;

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn purchase(device: u64, seq: u64, card: u64, subsidy: i64, date: u32) -> IngestTxn {
    IngestTxn {
        device_id: DeviceId(device),
        merchant_id: Some(MerchantId(1001)),
        txn: Txn {
            seq: Seq::new(seq).unwrap(),
            kind: TxnKind::Purchase,
            card_no: CardNo(card),
            card_counter: CardCounter(u32::try_from(seq).unwrap()),
            amount_fen: Fen(subsidy * 10),
            list_price_fen: Fen(0),
            item: Item::Book,
            points_hold_id: None,
            points_used: Points(0),
            refund_of_seq: None,
            occurred_at_ms: UnixMillis(1),
            tac: Bytes4::ZERO,
        },
        proposal: Proposal::Store {
            reason: Reason::None,
            subsidy_fen: Fen(subsidy),
            points_awarded: Points(0),
        },
        received_at_ms: 1,
        business_date: BusinessDate::new(date).unwrap(),
        lease_epoch: None,
    }
}

/// Two store instances — two gateway nodes — on one fresh, migrated schema, with pools of
/// `pool` connections; and the schema's URL.
async fn two_nodes(pool: usize) -> (String, [PgStore; 2]) {
    let url = wenxiao_tests::fresh_pg_url().await;
    let nodes = [
        PgStore::connect(&url, pool, 10_000).unwrap(),
        PgStore::connect(&url, pool, 10_000).unwrap(),
    ];
    nodes[0].migrate().await.unwrap();
    (url, nodes)
}

async fn deadlocks(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = driver.await;
    n
}

/// Statistics reach `pg_stat_database` when a backend flushes them, at the latest when it
/// exits: close the stores' connections and give the backends a moment.
async fn settled_deadlocks(url: &str, stores: Vec<PgStore>) -> i64 {
    drop(stores);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    deadlocks(url).await
}

/// Two nodes, eight writers (shards 0..3 on each node, so the nodes share them), batches
/// of random size and random wants, until the month's cap is reached: no deadlock, every
/// batch answered, the cap granted exactly, and only one purchase cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_on_two_nodes_exhaust_the_budget_exactly_without_deadlock() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (url, nodes) = two_nodes(6).await;
    let before = deadlocks(&url).await;
    const CAP: i64 = 250_003;
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = nodes[usize::try_from(w % 2).unwrap()].clone();
        tasks.push(tokio::spawn(async move {
            let ctx = IngestCtx {
                monthly_cap: Fen(CAP),
                programme_cap: Fen(10 * CAP),
                shard: i32::try_from(w / 2).unwrap(),
                sign_in_points: Points(10),
            };
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            let (mut seq, mut answers) = (0u64, Vec::new());
            // About 2,000 purchases of 1..=500 fen each: ~2× the cap.
            while seq < 250 {
                let rows: Vec<IngestTxn> = (0..1 + rng.below(20))
                    .map(|_| {
                        seq += 1;
                        let want = i64::try_from(1 + rng.below(500)).unwrap();
                        purchase(1_000 + w, seq, w * 100_000 + seq, want, 20261115)
                    })
                    .collect();
                let got = store.ingest(&rows, &ctx).await.unwrap();
                assert_eq!(got.len(), rows.len());
                for (r, a) in rows.iter().zip(got) {
                    let Proposal::Store { subsidy_fen, .. } = r.proposal else {
                        unreachable!()
                    };
                    answers.push((subsidy_fen.get(), a));
                }
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let granted: i64 = all.iter().map(|(_, a)| a.subsidy_fen.get()).sum();
    assert!(all.iter().all(|(_, a)| a.status == TxnStatus::Stored));
    assert_eq!(granted, CAP, "the cap, to the fen");
    assert_eq!(nodes[0].budget_granted(MONTH).await.unwrap(), Fen(CAP));
    // Refused only once the cap was reached: a purchase is cut only when nothing is left
    // after it, so at most one is cut short, and every short one says BUDGET_EXHAUSTED.
    let short: Vec<_> = all
        .iter()
        .filter(|(want, a)| a.subsidy_fen.get() < *want)
        .collect();
    assert!(
        short
            .iter()
            .all(|(_, a)| a.reason == Reason::BudgetExhausted),
        "{short:?}"
    );
    let partial = short
        .iter()
        .filter(|(_, a)| a.subsidy_fen.get() > 0)
        .count();
    assert!(
        partial <= 1,
        "{partial} purchases were cut short while room was left"
    );
    let after = settled_deadlocks(&url, nodes.to_vec()).await;
    assert_eq!(after - before, 0, "deadlocks while writing");
}

/// Clearing a day while writers keep sending rows with that business date: every stored
/// subsidy lands in exactly one clearing (the day, or the next one for rows that
/// committed after the day was closed), and the reports' credits agree with the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_while_ingest_runs_credits_every_row_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (url, nodes) = two_nodes(6).await;
    let registry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
    let registry = wenxiao_gateway::registry::Registry::from_csv(
        &registry.join("merchants.csv"),
        &registry.join("devices.csv"),
    )
    .unwrap();
    nodes[0].import_registry(&registry).await.unwrap();
    let before = deadlocks(&url).await;
    const DAY: u32 = 20261116;
    const NEXT: u32 = 20261117;
    let day = BusinessDate::new(DAY).unwrap();
    let next = BusinessDate::new(NEXT).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for w in 0..6u64 {
        let store = nodes[usize::try_from(w % 2).unwrap()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let ctx = IngestCtx {
                monthly_cap: Fen(i64::MAX / 8),
                programme_cap: Fen(i64::MAX / 8),
                shard: i32::try_from(w).unwrap(),
                sign_in_points: Points(10),
            };
            let mut rng = Rng(w + 7);
            let mut per_card: BTreeMap<u64, i64> = BTreeMap::new();
            let mut seq = 0u64;
            while !*stop.borrow() && seq < 20_000 {
                let rows: Vec<IngestTxn> = (0..1 + rng.below(10))
                    .map(|_| {
                        seq += 1;
                        // Each writer's own 50 cards: a card's counter is its writer's seq.
                        let card = w * 1_000 + rng.below(50);
                        purchase(2_000 + w, seq, card, 7, DAY)
                    })
                    .collect();
                for (r, a) in rows.iter().zip(store.ingest(&rows, &ctx).await.unwrap()) {
                    assert_eq!(a.status, TxnStatus::Stored);
                    *per_card.entry(r.txn.card_no.get()).or_default() += a.subsidy_fen.get();
                }
            }
            per_card
        }));
    }
    // Let the writers run, clear the day under them, let them run on, then stop them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after_day = wenxiao_gateway::clock::day_end_ms(day) + 1;
    let first = nodes[0].clear_day(day, 10, after_day).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop_tx.send(true).unwrap();
    let mut acked: BTreeMap<u64, i64> = BTreeMap::new();
    for t in tasks {
        for (card, fen) in t.await.unwrap() {
            *acked.entry(card).or_default() += fen;
        }
    }
    // The day did not change after its run; the late rows went to the next day.
    assert_eq!(
        nodes[1].clear_day(day, 10, after_day + 1).await.unwrap(),
        first
    );
    let second = nodes[1]
        .clear_day(next, 10, wenxiao_gateway::clock::day_end_ms(next) + 1)
        .await
        .unwrap();
    assert!(
        second.txn_count > 0,
        "no row committed after the day was closed"
    );
    let mut credited: BTreeMap<u64, i64> = BTreeMap::new();
    for (date, summary) in [(day, first), (next, second)] {
        let report = nodes[0].clearing_report(date).await.unwrap().unwrap();
        let sum: i64 = report.credits.iter().map(|c| c.amount_fen.get()).sum();
        assert_eq!(sum, summary.credit_fen.get());
        assert_eq!(summary.subsidy_fen, summary.credit_fen);
        // The merchant file and the statistics saw the same rows as the credits.
        let merchants: i64 = report.merchants.iter().map(|m| m.subsidy_fen.get()).sum();
        let statistics: i64 = report.statistics.iter().map(|m| m.subsidy_fen.get()).sum();
        assert_eq!((merchants, statistics), (sum, sum));
        let counted: i64 = report.merchants.iter().map(|m| m.txn_count).sum();
        assert_eq!(counted, summary.txn_count);
        for c in report.credits {
            *credited.entry(c.card_no.get()).or_default() += c.amount_fen.get();
        }
    }
    assert_eq!(
        credited, acked,
        "each stored subsidy in exactly one clearing"
    );
    let after = settled_deadlocks(&url, nodes.to_vec()).await;
    assert_eq!(after - before, 0, "deadlocks while clearing");
}

/// Defect 9 (lock order): presentations, LOAD_INITs and results of the same cards from
/// two nodes at once lock each card's credits in one order, so none deadlocks, and every
/// request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_exchange_on_two_nodes_locks_a_cards_credits_in_one_order() {
    use wenxiao_gateway::store::{CardSeen, LoadInitRequest, ResultReport};
    let _one = ONE_AT_A_TIME.lock().await;
    let (url, nodes) = two_nodes(6).await;
    // Ten cards with three credits each (three cleared and approved days).
    let ctx = IngestCtx {
        monthly_cap: Fen(i64::MAX / 8),
        programme_cap: Fen(i64::MAX / 8),
        shard: 0,
        sign_in_points: Points(10),
    };
    for (d, day) in [20261121u32, 20261122, 20261123].into_iter().enumerate() {
        let rows: Vec<IngestTxn> = (0..10u64)
            .map(|card| {
                let seq = u64::try_from(d).unwrap() * 10 + card + 1;
                purchase(3_000, seq, 500 + card, 100, day)
            })
            .collect();
        nodes[0].ingest(&rows, &ctx).await.unwrap();
        let date = BusinessDate::new(day).unwrap();
        let end = wenxiao_gateway::clock::day_end_ms(date);
        nodes[0].clear_day(date, 10, end + 1).await.unwrap();
        assert!(nodes[0].approve_day(date, end + 2).await.unwrap());
    }
    let before = deadlocks(&url).await;
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = nodes[usize::try_from(w % 2).unwrap()].clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(w + 11);
            let device = DeviceId(4_000 + w % 2);
            for i in 0..150i64 {
                let card = CardNo(500 + rng.below(10));
                let seq = OnlineSeq(u16::try_from(rng.below(3)).unwrap());
                let now = 1_000 + i;
                let offered = store
                    .card_presented(CardSeen {
                        card_no: card,
                        online_seq: seq,
                        device_id: device,
                        now_ms: now,
                        received_order: store.observed_order(),
                        binding_timeout_ms: 0,
                        lease_epoch: None,
                    })
                    .await
                    .unwrap();
                if let Some(c) = offered.first() {
                    store
                        .begin_load(
                            LoadInitRequest {
                                credit_id: c.credit_id,
                                card_no: card,
                                online_seq: seq,
                                device_id: device,
                                host_time_ms: now,
                                received_order: store.observed_order(),
                                lease_epoch: None,
                            },
                            |_| true,
                        )
                        .await
                        .unwrap();
                    if rng.below(2) == 0 {
                        store
                            .finish_load(
                                ResultReport {
                                    credit_id: c.credit_id,
                                    card_no: card,
                                    outcome: CreditOutcome::NotLoadedFinal,
                                    device_id: device,
                                    now_ms: now,
                                    lease_epoch: None,
                                },
                                |_| true,
                            )
                            .await
                            .unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = settled_deadlocks(&url, nodes.to_vec()).await;
    assert_eq!(after - before, 0, "deadlocks in the load exchange");
}

/// Defect 9 (order from the store): whether a presentation was received after a load
/// attempt was recorded is decided by the store's ledger clock, not by the nodes' wall
/// clocks. Node B has not seen node A's attempt: its presentation, whatever its clock
/// says, leaves the attempt in doubt; once B's transaction has read the clock, B's next
/// presentation settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presentation_is_ordered_against_an_attempt_by_the_store_not_by_clocks() {
    use wenxiao_gateway::store::{CardSeen, LoadDecision, LoadInitRequest};
    let _one = ONE_AT_A_TIME.lock().await;
    let (_, [a, b]) = two_nodes(2).await;
    let ctx = IngestCtx {
        monthly_cap: Fen(1_000_000),
        programme_cap: Fen(1_000_000),
        shard: 0,
        sign_in_points: Points(10),
    };
    let day = BusinessDate::new(20261124).unwrap();
    a.ingest(&[purchase(3_100, 1, 600, 100, 20261124)], &ctx)
        .await
        .unwrap();
    let end = wenxiao_gateway::clock::day_end_ms(day);
    a.clear_day(day, 10, end + 1).await.unwrap();
    assert!(a.approve_day(day, end + 2).await.unwrap());
    let card = CardNo(600);
    let pos_a = DeviceId(5_001);
    let seen = |store: &PgStore, device, online_seq, now_ms| CardSeen {
        card_no: card,
        online_seq: OnlineSeq(online_seq),
        device_id: device,
        now_ms,
        received_order: store.observed_order(),
        binding_timeout_ms: 300_000,
        lease_epoch: None,
    };
    let offered = a.card_presented(seen(&a, pos_a, 7, 1_000)).await.unwrap();
    let credit = offered[0].credit_id;
    // Node A records the attempt at wall clock 1,000 (its clock may be anything).
    let load = LoadInitRequest {
        credit_id: credit,
        card_no: card,
        online_seq: OnlineSeq(7),
        device_id: pos_a,
        host_time_ms: 1_000,
        received_order: a.observed_order(),
        lease_epoch: None,
    };
    assert!(matches!(
        a.begin_load(load, |_| true).await.unwrap(),
        LoadDecision::Approved { .. }
    ));
    // Node B's clock says hours later, but B received this before it had seen the
    // attempt: its unchanged counter proves nothing.
    let pos_b = DeviceId(5_002);
    let stale = seen(&b, pos_b, 7, 10_000_000);
    assert!(b.card_presented(stale).await.unwrap().is_empty());
    assert_eq!(a.credit_state(credit).await.unwrap().unwrap().0, 2);
    // B has now read the clock: a presentation it receives next is after the attempt,
    // even with a clock behind A's, and settles it (counter unchanged: void, offered).
    let fresh = seen(&b, pos_b, 7, 500);
    let again = b.card_presented(fresh).await.unwrap();
    assert_eq!(again.len(), 1, "the void attempt's credit is offered again");
    assert_eq!(again[0].credit_id, credit);
}
