//! Hot-list download benchmark (not a test): a gateway on PostgreSQL whose hot list holds
//! CARDS cards (default 200,000); terminals reconnect with version 0, ROUNDS times each,
//! and download the full list over real mTLS while one POS keeps sending TXNs. Prints the
//! time from HELLO to the last chunk, and the POS's TXN ack latency with and without the
//! downloads running.
//!
//!     cargo run --release -p wenxiao-tests --example hotlist_download -- [CARDS] [ROUNDS]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::float_arithmetic
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wenxiao_gateway::store::{HotlistChange, Store};
use wenxiao_protocol::*;
use wenxiao_tests::device::{TestDevice, book_purchase, hello};
use wenxiao_tests::env::{CINEMA_POS, KIOSK, MORE_POS, POS, POS2, READER, TestEnv};

fn quantiles(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let q = |permille: usize| {
        v.get((v.len() - 1) * permille / 1_000)
            .copied()
            .unwrap_or(0.0)
    };
    format!(
        "p50 {:.1} · p99 {:.1} · max {:.1} ms (n = {})",
        q(500),
        q(990),
        q(1_000),
        v.len()
    )
}

/// Sends TXNs one at a time until `stop`, returning each ack's latency in ms.
async fn probe(mut pos: TestDevice, first_seq: u64, stop: Arc<AtomicBool>) -> (Vec<f64>, u64) {
    let mut lat = Vec::new();
    let mut seq = first_seq;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        pos.send(book_purchase(POS, seq, 1_000_000 + seq, 1, 100))
            .await;
        let a = pos.ack().await;
        assert_eq!(a.status, TxnStatus::Stored);
        lat.push(t.elapsed().as_secs_f64() * 1_000.0);
        seq += 1;
    }
    (lat, seq)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let cards: u64 = args.next().map_or(200_000, |a| a.parse().unwrap());
    let rounds: usize = args.next().map_or(5, |a| a.parse().unwrap());
    let env = TestEnv::postgres().await;
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    store.migrate().await.unwrap();
    let t = Instant::now();
    let changed = store
        .change_hotlist(HotlistChange {
            add: (0..cards)
                .map(|c| (CardNo(6_000_000 + c * 7), "bench".to_owned()))
                .collect(),
            remove: Vec::new(),
            source: "bench".to_owned(),
            now_ms: wenxiao_gateway::clock::now_ms(),
            keep_versions: 1_000,
        })
        .await
        .unwrap();
    println!(
        "hot list: {cards} cards listed as version {:?} in {:.2} s (one transaction)",
        changed.version,
        t.elapsed().as_secs_f64()
    );
    let gw = env.start();

    // The POS's ack latency without downloads.
    let mut pos = env.connect(&gw, POS).await;
    let mut h = hello(POS, DeviceKind::Pos);
    h.hotlist_version = HotlistVersion(changed.version.unwrap());
    pos.send(h).await;
    assert!(matches!(pos.frame().await, Message::Welcome(_)));
    let stop = Arc::new(AtomicBool::new(false));
    let probe_task = tokio::spawn(probe(pos, 1, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (idle, next_seq) = probe_task.await.unwrap();
    println!("TXN ack latency, no downloads: {}", quantiles(idle));

    // Downloads by every other terminal, `rounds` times each, beside the probe.
    let pos = {
        let mut d = env.connect(&gw, POS).await;
        let mut h = hello(POS, DeviceKind::Pos);
        h.hotlist_version = HotlistVersion(changed.version.unwrap());
        d.send(h).await;
        assert!(matches!(d.frame().await, Message::Welcome(_)));
        d
    };
    let stop = Arc::new(AtomicBool::new(false));
    let probe_task = tokio::spawn(probe(pos, next_seq, Arc::clone(&stop)));
    let terminals: Vec<(DeviceId, DeviceKind)> = MORE_POS
        .iter()
        .map(|d| (*d, DeviceKind::Pos))
        .chain([
            (POS2, DeviceKind::Pos),
            (CINEMA_POS, DeviceKind::Pos),
            (KIOSK, DeviceKind::Kiosk),
            (READER, DeviceKind::SigninReader),
        ])
        .collect();
    let env = Arc::new(env);
    let addr = gw.device_addr;
    let mut tasks = Vec::new();
    for (id, kind) in terminals.clone() {
        let env = Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..rounds {
                let cert = env.device_cert(id);
                let mut d = TestDevice::connect(addr, &env.ca_pem(), Some(&cert), id)
                    .await
                    .unwrap();
                let t = Instant::now();
                d.send(hello(id, kind)).await;
                assert!(matches!(d.frame().await, Message::Welcome(_)));
                let mut got = 0_usize;
                loop {
                    match d.frame().await {
                        Message::HotlistUpdate(u) => {
                            got += u.add().len();
                            if u.last() {
                                break;
                            }
                        }
                        other => panic!("{id}: {other:?}"),
                    }
                }
                times.push(t.elapsed().as_secs_f64() * 1_000.0);
                assert_eq!(got as u64, cards);
            }
            times
        }));
    }
    let t = Instant::now();
    let mut downloads = Vec::new();
    for task in tasks {
        downloads.extend(task.await.unwrap());
    }
    let wall = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (busy, _) = probe_task.await.unwrap();
    println!(
        "full-list downloads ({} terminals at once, {rounds} rounds, {:.1} MB each): {}; {:.1} s wall",
        terminals.len(),
        (cards * 8) as f64 / 1e6,
        quantiles(downloads),
        wall
    );
    println!("TXN ack latency during the downloads: {}", quantiles(busy));
    gw.shutdown().unwrap();
}
