//! Several gateway nodes on one PostgreSQL, over real mTLS: a HELLO on node B takes the
//! device over from node A (A's session gets SESSION_REPLACED); a write under the old
//! lease epoch is refused by the store and never acknowledged; a device bouncing between
//! the nodes settles on its last HELLO with nothing lost or doubled; a takeover made while
//! a node's event listener was cut off still reaches it; the outbox on both stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};
use wenxiao_gateway::store::cluster::{ClusterStore, EventKind};
use wenxiao_gateway::store::{IngestCtx, IngestTxn, Proposal, Store, StoreAudit};
use wenxiao_protocol::*;
use wenxiao_tests::device::book_purchase;
use wenxiao_tests::env::{KIOSK, POS, POS2, TestEnv};

fn purchase(device: DeviceId, seq: u64, epoch: Option<u64>) -> IngestTxn {
    let txn = book_purchase(device, seq, 8_000 + seq, 1, 5_000);
    IngestTxn {
        device_id: device,
        merchant_id: Some(wenxiao_gateway::registry::MerchantId(1001)),
        txn,
        proposal: Proposal::Store {
            reason: Reason::None,
            subsidy_fen: Fen(500),
            points_awarded: Points(0),
        },
        received_at_ms: wenxiao_gateway::clock::now_ms(),
        business_date: wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms())
            .unwrap(),
        lease_epoch: epoch,
    }
}

async fn fencing<S: Store + ClusterStore + StoreAudit>(store: &S) {
    let policy = wenxiao_gateway::policy::Policy::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.toml"),
    )
    .unwrap();
    let ctx = IngestCtx::new(&policy, 0);
    let d = DeviceId(310_100_000_001);
    let a = store.acquire_lease(d, "node-a".into(), 1).await.unwrap();
    assert_eq!(a.epoch, 1);
    let b = store.acquire_lease(d, "node-b".into(), 2).await.unwrap();
    assert_eq!((b.epoch, b.node_id.as_str()), (2, "node-b"));
    // In one batch: a row of the old holder, one of the new, one without a lease.
    let other = DeviceId(310_100_000_002);
    let answers = store
        .ingest_leased(
            &[
                purchase(d, 1, Some(1)),
                purchase(d, 2, Some(2)),
                purchase(other, 1, None),
                purchase(d, 3, Some(3)),
            ],
            &ctx,
        )
        .await
        .unwrap();
    assert!(answers[0].is_none(), "the old epoch's row was written");
    assert_eq!(answers[1].unwrap().status, TxnStatus::Stored);
    assert_eq!(answers[2].unwrap().status, TxnStatus::Stored);
    assert!(
        answers[3].is_none(),
        "an epoch ahead of the lease was written"
    );
    let audit = store.audit().await.unwrap();
    let rows = audit.devices.iter().find(|x| x.device_id == d).unwrap();
    assert_eq!((rows.rows, rows.min_seq, rows.max_seq), (1, 2, 2));
    // The credit steps are fenced the same way: an OTA claim under the old epoch.
    let claim = |epoch| wenxiao_gateway::store::PushClaim {
        device_id: d,
        cards_from: CardNo(1),
        cards_to: CardNo(u64::MAX / 2),
        include_bound: false,
        limit: 10,
        now_ms: 3,
        binding_timeout_ms: 60_000,
        lease_epoch: epoch,
    };
    let e = store.claim_pushes(claim(Some(1))).await.unwrap_err();
    assert!(
        matches!(
            e,
            wenxiao_gateway::store::StoreError::Fenced {
                epoch: 1,
                current: Some(2),
                ..
            }
        ),
        "{e}"
    );
    assert!(store.claim_pushes(claim(Some(2))).await.unwrap().is_empty());
    assert!(store.claim_pushes(claim(None)).await.is_ok());
    // The plain ingest refuses the whole batch instead.
    let e = store
        .ingest(&[purchase(d, 4, Some(1))], &ctx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("epoch"), "{e}");
    // Events: two takeovers, in order, after the start.
    let events = store.events_after(0, 100).await.unwrap();
    let takeovers: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == Some(EventKind::Takeover))
        .map(|e| e.body.as_str())
        .collect();
    assert_eq!(
        takeovers,
        vec!["310100000001 1 node-a", "310100000001 2 node-b"]
    );
    assert_eq!(
        store.last_event_id().await.unwrap(),
        events.last().unwrap().event_id
    );
    // Pruning keeps the newest, so ids never start over.
    let last = events.last().unwrap().event_id;
    assert_eq!(
        store.prune_events(i64::MAX).await.unwrap(),
        events.len() as u64 - 1
    );
    let left = store.events_after(0, 100).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![last]
    );
    assert_eq!(store.last_event_id().await.unwrap(), last);
    // The gaps are read by id.
    let some = store.events_in(vec![last, last + 1, 1]).await.unwrap();
    assert_eq!(
        some.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![last]
    );
}

/// The HELLO path's batched store work against a model, over seeded random batches:
/// devices repeated within a batch and across batches, floors below, at and above what
/// is stored, seqs with gaps, and one device far enough ahead to need several pages.
/// Each HELLO's epoch is one more than the device's previous one, in queue order; each
/// `stored_seq` is the model's contiguous walk and agrees with `Store::stored_seq`; each
/// HELLO wrote one takeover event.
async fn welcome_batches<S: Store + ClusterStore>(store: &S, seed: u64) {
    use rand::{RngExt, SeedableRng};
    use std::collections::{BTreeSet, HashMap};
    let policy = wenxiao_gateway::policy::Policy::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.toml"),
    )
    .unwrap();
    let ctx = IngestCtx::new(&policy, 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let devices: Vec<DeviceId> = (1..=6).map(|i| DeviceId(310_100_000_000 + i)).collect();
    let walk = |seqs: &BTreeSet<u64>, from: u64| {
        let mut w = from;
        while seqs.contains(&(w + 1)) {
            w += 1;
        }
        Seq::new(w)
    };
    // The first device is 1,203 rows ahead, with a gap after 1,100: pages of 500.
    let mut stored: HashMap<DeviceId, BTreeSet<u64>> = HashMap::new();
    let far: Vec<u64> = (1..=1_100).chain(1_102..=1_104).collect();
    for chunk in far.chunks(400) {
        let rows: Vec<IngestTxn> = chunk
            .iter()
            .map(|&q| purchase(devices[0], q, None))
            .collect();
        store.ingest_leased(&rows, &ctx).await.unwrap();
    }
    stored.insert(devices[0], far.into_iter().collect());
    let mut epochs: HashMap<DeviceId, u64> = HashMap::new();
    let mut checkpoints: HashMap<DeviceId, u64> = HashMap::new();
    let mut takeovers = 0;
    for round in 0..30 {
        // Some rows, with gaps.
        let mut rows = Vec::new();
        for d in &devices[1..] {
            for _ in 0..rng.random_range(0..4) {
                let seqs = stored.entry(*d).or_default();
                let next = seqs.last().copied().unwrap_or(0) + rng.random_range(1..3);
                seqs.insert(next);
                rows.push(purchase(*d, next, None));
            }
        }
        store.ingest_leased(&rows, &ctx).await.unwrap();
        // A session's end checkpoints what it had stored (the highest checkpoint stands).
        if rng.random_bool(0.3) {
            let d = devices[rng.random_range(0..devices.len())];
            let top = walk(stored.get(&d).unwrap_or(&BTreeSet::new()), 0).map_or(0, Seq::get);
            if let Some(c) = Seq::new(rng.random_range(0..=top)) {
                store.checkpoint_stored_seq(d, c).await.unwrap();
                let mark = checkpoints.entry(d).or_insert(0);
                *mark = (*mark).max(c.get());
            }
        }
        // A batch of HELLOs.
        let asked: Vec<(DeviceId, Option<Seq>)> = (0..rng.random_range(1..12))
            .map(|_| {
                let d = devices[rng.random_range(0..devices.len())];
                let top = stored.get(&d).and_then(|s| s.last().copied()).unwrap_or(0);
                let floor = match rng.random_range(0..4) {
                    0 => None,
                    1 => Seq::new(top + 1),
                    _ => Seq::new(rng.random_range(0..=top)),
                };
                (d, floor)
            })
            .collect();
        let got = store
            .welcome_batch(asked.clone(), format!("node-{}", round % 2), 1_000 + round)
            .await
            .unwrap();
        assert_eq!(got.len(), asked.len());
        for ((d, floor), (epoch, seq)) in asked.iter().zip(&got) {
            let e = epochs.entry(*d).or_insert(0);
            *e += 1;
            assert_eq!(*epoch, *e, "round {round}: epoch of {d}");
            let empty = BTreeSet::new();
            let from = floor.map_or_else(|| checkpoints.get(d).copied().unwrap_or(0), Seq::get);
            let want = walk(stored.get(d).unwrap_or(&empty), from);
            assert_eq!(
                *seq, want,
                "round {round}: stored_seq of {d} from {floor:?}"
            );
            assert_eq!(store.stored_seq(*d, *floor).await.unwrap(), want);
            takeovers += 1;
        }
        for (d, e) in &epochs {
            assert_eq!(store.lease(*d).await.unwrap().unwrap().epoch, *e);
        }
    }
    let events = store.events_after(0, 10_000).await.unwrap();
    let bodies: Vec<_> = events
        .iter()
        .filter(|e| e.kind == Some(EventKind::Takeover))
        .filter_map(|e| wenxiao_gateway::store::cluster::parse_takeover(&e.body))
        .map(|(d, e, _)| (d, e))
        .collect();
    assert_eq!(bodies.len(), takeovers, "one takeover event per HELLO");
    for (d, e) in &epochs {
        let mine: BTreeSet<u64> = bodies
            .iter()
            .filter(|(x, _)| x == d)
            .map(|(_, e)| *e)
            .collect();
        assert_eq!(mine, (1..=*e).collect(), "the events of {d}");
    }
    assert!(
        store
            .welcome_batch(Vec::new(), "n".into(), 0)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_batches_match_the_model_on_sqlite() {
    for seed in 0..3 {
        let (store, _dir) = wenxiao_tests::fresh_sqlite_store().await;
        welcome_batches(&store, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_batches_match_the_model_on_postgres() {
    for seed in 0..3 {
        let store = wenxiao_tests::fresh_pg_store().await;
        welcome_batches(&store, seed).await;
    }
}

/// Two nodes' lease writers taking overlapping devices at once, in opposite orders:
/// no deadlock is left standing (PostgreSQL would abort one, and it runs again), and
/// every HELLO gets its own epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_welcome_batches_take_distinct_epochs() {
    let store = wenxiao_tests::fresh_pg_store().await;
    let devices: Vec<DeviceId> = (1..=200).map(|i| DeviceId(310_100_000_000 + i)).collect();
    let mut tasks = Vec::new();
    for k in 0..8u64 {
        let s = store.clone();
        let mut mine: Vec<(DeviceId, Option<Seq>)> = devices.iter().map(|d| (*d, None)).collect();
        if k % 2 == 1 {
            mine.reverse();
        }
        tasks.push(tokio::spawn(async move {
            s.welcome_batch(mine, format!("node-{k}"), 1).await.unwrap()
        }));
    }
    let mut per_device: std::collections::HashMap<DeviceId, Vec<u64>> = Default::default();
    for (k, t) in tasks.into_iter().enumerate() {
        let mut mine: Vec<DeviceId> = devices.clone();
        if k % 2 == 1 {
            mine.reverse();
        }
        for (d, (epoch, _)) in mine.into_iter().zip(t.await.unwrap()) {
            per_device.entry(d).or_default().push(epoch);
        }
    }
    for (d, mut e) in per_device {
        e.sort_unstable();
        assert_eq!(e, (1..=8).collect::<Vec<u64>>(), "the epochs of {d}");
        assert_eq!(store.lease(d).await.unwrap().unwrap().epoch, 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fences_an_old_lease_on_sqlite() {
    let (store, _dir) = wenxiao_tests::fresh_sqlite_store().await;
    fencing(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fences_an_old_lease_on_postgres() {
    let store = wenxiao_tests::fresh_pg_store().await;
    fencing(&store).await;
}

/// Two nodes on one PostgreSQL, reading the outbox every `poll_ms` besides its NOTIFYs;
/// named `a-<tag>` and `b-<tag>` (the tests of this file run at once on one server).
async fn two_nodes(
    poll_ms: u64,
    tag: &str,
) -> (
    TestEnv,
    wenxiao_gateway::server::GatewayHandle,
    wenxiao_gateway::server::GatewayHandle,
) {
    let mut env = TestEnv::postgres().await.small_pool();
    env.config.server.events_poll_interval_ms = poll_ms;
    let mut a = env.config.clone();
    a.server.node_id = format!("a-{tag}");
    let mut b = env.config.clone();
    b.server.node_id = format!("b-{tag}");
    let ga = wenxiao_gateway::server::spawn(a).unwrap();
    let gb = wenxiao_gateway::server::spawn(b).unwrap();
    env.config.server.node_id = "tests".into();
    (env, ga, gb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_on_another_node_takes_the_device_over_and_nothing_is_lost_or_doubled() {
    let (env, ga, gb) = two_nodes(1_000, "takeover").await;
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();

    // On A: three TXNs acknowledged.
    let mut on_a = env.session_at(ga.device_addr, POS).await;
    for seq in 1..=3 {
        on_a.send(book_purchase(POS, seq, 9_000 + seq, 1, 5_000))
            .await;
        assert_eq!(on_a.ack().await.status, TxnStatus::Stored);
    }
    // On B: WELCOME covers them, and A's session is closed.
    let started = Instant::now();
    let mut on_b = env.connect_at(gb.device_addr, POS).await;
    let welcome = on_b.hello().await;
    assert_eq!(welcome.stored_seq, Seq::new(3));
    on_a.expect_fatal(ErrorCode::SessionReplaced).await;
    println!(
        "takeover across nodes: {} ms",
        started.elapsed().as_millis()
    );
    let lease = store.lease(POS).await.unwrap().unwrap();
    assert_eq!((lease.node_id.as_str(), lease.epoch), ("b-takeover", 2));
    for seq in 4..=5 {
        on_b.send(book_purchase(POS, seq, 9_000 + seq, 1, 5_000))
            .await;
        assert_eq!(on_b.ack().await.status, TxnStatus::Stored);
    }

    // A device that bounces between the nodes settles on its last HELLO: every earlier
    // session is replaced, each seq is stored once, and the epoch counts the HELLOs.
    let mut last = on_b;
    let mut seq = 5;
    let mut takeovers_ms = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for round in 0..40u64 {
        let node = if round % 2 == 0 { &ga } else { &gb };
        let t = Instant::now();
        let mut next = env.connect_at(node.device_addr, POS).await;
        let w = next.hello().await;
        assert_eq!(w.stored_seq, Seq::new(seq), "round {round}");
        last.expect_fatal(ErrorCode::SessionReplaced).await;
        takeovers_ms
            .record(u64::try_from(t.elapsed().as_millis()).unwrap())
            .unwrap();
        seq += 1;
        next.send(book_purchase(POS, seq, 9_000 + seq, 1, 5_000))
            .await;
        assert_eq!(next.ack().await.status, TxnStatus::Stored);
        last = next;
    }
    println!(
        "40 alternating takeovers: p50 {} ms, p99 {} ms, max {} ms",
        takeovers_ms.value_at_quantile(0.5),
        takeovers_ms.value_at_quantile(0.99),
        takeovers_ms.max()
    );
    assert_eq!(store.lease(POS).await.unwrap().unwrap().epoch, 2 + 40);
    let audit = store.audit().await.unwrap();
    let d = audit.devices.iter().find(|d| d.device_id == POS).unwrap();
    assert_eq!((d.rows, d.min_seq, d.max_seq, d.stored), (45, 1, 45, 45));
    // The last session is alive and answers.
    seq += 1;
    last.send(book_purchase(POS, seq, 9_000 + seq, 1, 5_000))
        .await;
    assert_eq!(last.ack().await.status, TxnStatus::Stored);
    ga.shutdown().unwrap();
    gb.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_made_while_a_listener_was_cut_off_still_closes_the_old_session() {
    // No poll to mask the cut: only the reconnected listener's catch-up can tell node A.
    let (env, ga, gb) = two_nodes(600_000, "cut").await;
    let mut on_a = env.session_at(ga.device_addr, POS).await;
    on_a.send(book_purchase(POS, 1, 9_001, 1, 5_000)).await;
    assert_eq!(on_a.ack().await.status, TxnStatus::Stored);
    // Node A's event listener loses its connection.
    let pg = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;
    let killed = pg
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'wenxiao-events a-cut'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "node A's listener connection");
    // The takeover on B commits while A listens to nobody.
    let mut on_b = env.connect_at(gb.device_addr, POS).await;
    assert_eq!(on_b.hello().await.stored_seq, Seq::new(1));
    // A's session, not told yet, writes seq 2: the store refuses it under the old epoch,
    // and it is never acknowledged; A closes the session (fenced, or told by its
    // listener once it has reconnected and read what it missed).
    on_a.send(book_purchase(POS, 2, 7_777, 1, 5_000)).await;
    let until = Instant::now() + Duration::from_secs(10);
    tokio::select! {
        () = on_a.expect_fatal(ErrorCode::SessionReplaced) => {}
        () = tokio::time::sleep_until(until.into()) => panic!("node A never learnt of the takeover"),
    }
    // Seq 2 is free: B's own seq 2 is stored, not a duplicate of A's.
    on_b.send(book_purchase(POS, 2, 9_002, 1, 5_000)).await;
    let ack = on_b.ack().await;
    assert_eq!((ack.status, ack.reason), (TxnStatus::Stored, Reason::None));
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let audit = store.audit().await.unwrap();
    let d = audit.devices.iter().find(|d| d.device_id == POS).unwrap();
    assert_eq!((d.rows, d.max_seq), (2, 2));
    ga.shutdown().unwrap();
    gb.shutdown().unwrap();
}

/// The HELLO queue is bounded: while the store cannot take leases (their table locked),
/// one HELLO waits in the writer, one in the queue (`hello_queue_max = 1`), and the next
/// is refused with STORE_UNAVAILABLE at once. Once the store is back, the two waiting get
/// their WELCOME with their own epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_past_the_queue_are_refused_while_the_store_is_stuck() {
    let mut env = TestEnv::postgres().await.small_pool();
    env.config.session.hello_queue_max = 1;
    let gw = env.start();
    let blocker = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE device_leases IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let kinds = [
        (POS, DeviceKind::Pos),
        (POS2, DeviceKind::Pos),
        (KIOSK, DeviceKind::Kiosk),
    ];
    let mut devices = Vec::new();
    for (id, _) in kinds {
        devices.push(env.connect(&gw, id).await);
    }
    // The first HELLO's batch waits on the lock.
    devices[0]
        .send(wenxiao_tests::device::hello(POS, DeviceKind::Pos))
        .await;
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                   WHERE c.relname = 'device_leases' AND NOT l.granted";
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocker
        .query_one(waiting, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the lease writer never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second fills the queue; the third finds it full.
    devices[1]
        .send(wenxiao_tests::device::hello(POS2, DeviceKind::Pos))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    devices[2]
        .send(wenxiao_tests::device::hello(KIOSK, DeviceKind::Kiosk))
        .await;
    devices[2].expect_fatal(ErrorCode::StoreUnavailable).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    for (d, (id, _)) in devices.iter_mut().zip(kinds).take(2) {
        match d.frame().await {
            Message::Welcome(w) => assert_eq!(w.stored_seq, None, "{id}"),
            other => panic!("{id}: expected WELCOME, got {other:?}"),
        }
    }
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    assert_eq!(store.lease(POS).await.unwrap().unwrap().epoch, 1);
    assert_eq!(store.lease(POS2).await.unwrap().unwrap().epoch, 1);
    assert_eq!(
        store.lease(KIOSK).await.unwrap(),
        None,
        "a refused HELLO took a lease"
    );
    // And the refused device comes back.
    let mut again = env.connect(&gw, KIOSK).await;
    again.hello().await;
}
