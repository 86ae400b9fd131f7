//! Takeover benchmark (not a test): two gateway nodes on one PostgreSQL (a fresh schema),
//! DEVICES devices (default 100) each moved MOVES times (default 100: 10,000 forced
//! migrations) from one node to the other. A move is: a new mTLS connection to the other
//! node, HELLO, WELCOME, and the old session's ERROR SESSION_REPLACED (carried by the
//! outbox from one node to the other). Each device sends one TXN per session. Prints the
//! takeover time (connect to the old session's ERROR, TLS handshake included) and the
//! event time (the new session's WELCOME to the old one's ERROR: commit to arrival on
//! the other node), and checks that every TXN is stored exactly once.
//!
//!     cargo run --release -p wenxiao-tests --example takeover_bench -- [DEVICES] [MOVES]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::float_arithmetic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};
use wenxiao_gateway::store::StoreAudit;
use wenxiao_protocol::*;
use wenxiao_tests::arg;
use wenxiao_tests::device::{Recv, TestDevice, book_purchase, hello};
use wenxiao_tests::env::TestEnv;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices = arg(1, 100);
    let moves = arg(2, 100);
    let mut env = TestEnv::postgres().await;
    // A registry of DEVICES POS terminals at the test bookstore.
    let mut csv = String::from("device_id,kind,merchant_id,operator,active\n");
    for i in 0..devices {
        csv.push_str(&format!("{},POS,1001,,1\n", 310_100_100_000 + i));
    }
    let devices_csv = env.path().join("bench-devices.csv");
    std::fs::write(&devices_csv, csv).unwrap();
    env.config.registry.devices_path = devices_csv;
    env.config.session.max_in_flight = 64;
    let mut a = env.config.clone();
    a.server.node_id = "bench-a".into();
    let mut b = env.config.clone();
    b.server.node_id = "bench-b".into();
    let ga = wenxiao_gateway::server::spawn(a).unwrap();
    let gb = wenxiao_gateway::server::spawn(b).unwrap();
    let nodes = [ga.device_addr, gb.device_addr];
    let env = std::sync::Arc::new(env);
    println!(
        "{devices} devices × {moves} moves = {} forced migrations between 2 nodes",
        devices * moves
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..devices {
        let env = std::sync::Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let id = DeviceId(310_100_100_000 + i);
            let mut takeover = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut event = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let cert = env.device_cert(id);
            let open = |node: usize| {
                let (env, cert) = (std::sync::Arc::clone(&env), cert.clone());
                async move {
                    let mut d = TestDevice::connect(nodes[node], &env.ca_pem(), Some(&cert), id)
                        .await
                        .unwrap();
                    d.send(hello(id, DeviceKind::Pos)).await;
                    match d.frame().await {
                        Message::Welcome(w) => (d, w),
                        other => panic!("{id}: {other:?}"),
                    }
                }
            };
            let (mut current, _) = open(0).await;
            let mut seq = 1u64;
            current
                .send(book_purchase(id, seq, 1_000_000 * i + seq, 1, 100))
                .await;
            assert_eq!(current.ack().await.status, TxnStatus::Stored);
            for m in 0..moves {
                let t = Instant::now();
                let (mut next, w) = open(usize::try_from((m + 1) % 2).unwrap()).await;
                let welcomed = Instant::now();
                assert_eq!(w.stored_seq, Seq::new(seq), "{id}");
                loop {
                    match current.recv().await {
                        Recv::Frame(Message::Error(e)) => {
                            assert_eq!(e.code, ErrorCode::SessionReplaced);
                            break;
                        }
                        Recv::Frame(_) => {}
                        Recv::Closed(why) => panic!("{id}: closed without ERROR: {why}"),
                    }
                }
                takeover
                    .record(u64::try_from(t.elapsed().as_micros()).unwrap())
                    .unwrap();
                event
                    .record(u64::try_from(welcomed.elapsed().as_micros()).unwrap())
                    .unwrap();
                seq += 1;
                next.send(book_purchase(id, seq, 1_000_000 * i + seq, 1, 100))
                    .await;
                assert_eq!(next.ack().await.status, TxnStatus::Stored);
                current = next;
            }
            (takeover, event, seq)
        }));
    }
    let mut takeover = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut event = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut sent = 0u64;
    for t in tasks {
        let (a, b, n) = t.await.unwrap();
        takeover.add(a).unwrap();
        event.add(b).unwrap();
        sent += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    println!(
        "{} migrations in {secs:.1} s ({:.0}/s)",
        takeover.len(),
        takeover.len() as f64 / secs
    );
    println!(
        "takeover (connect + TLS + HELLO + the old session's ERROR): p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        ms(&takeover, 0.5),
        ms(&takeover, 0.99),
        takeover.max() as f64 / 1_000.0
    );
    println!(
        "event (the new lease's commit to the other node's session closed): p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        ms(&event, 0.5),
        ms(&event, 0.99),
        event.max() as f64 / 1_000.0
    );
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let audit = store.audit().await.unwrap();
    let stored: i64 = audit.devices.iter().map(|d| d.stored).sum();
    let rows: i64 = audit.devices.iter().map(|d| d.rows).sum();
    println!(
        "TXNs acknowledged {sent} · stored {stored} · rows {rows} (lost 0 and doubled 0 when all three agree)"
    );
    assert_eq!(
        (u64::try_from(stored).unwrap(), u64::try_from(rows).unwrap()),
        (sent, sent)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    ga.shutdown().unwrap();
    gb.shutdown().unwrap();
}
