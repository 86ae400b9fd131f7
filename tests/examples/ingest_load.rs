//! Ingest benchmark (not a test): N TLS devices pipelining TXNs into an in-process gateway
//! on PostgreSQL, and, in the same run, that PostgreSQL's raw rate for the same rows in
//! 100-row multi-row INSERTs per commit from one connection. Prints figures.
//!
//!     cargo run --release -p wenxiao-tests --example ingest_load -- [DEVICES] [SECONDS] [WINDOW]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::float_arithmetic
)]

use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use wenxiao_protocol::*;
use wenxiao_tests::device::{Recv, TestDevice, book_purchase};
use wenxiao_tests::env::TestEnv;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let devices = args.first().copied().unwrap_or(200);
    let seconds = args.get(1).copied().unwrap_or(10);
    let window = args.get(2).copied().unwrap_or(32);

    let mut env = TestEnv::postgres().await;
    let mut csv = String::from("device_id,kind,merchant_id,operator,active\n");
    for i in 0..devices {
        csv.push_str(&format!("{},POS,1001,,1\n", 400_000_000_000 + i));
    }
    std::fs::write(&env.config.registry.devices_path, csv).unwrap();
    env.config.admin.enabled = false;
    let gw = env.start();
    let addr = gw.device_addr;

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..devices {
        let id = DeviceId(400_000_000_000 + i);
        let cert = env.device_cert(id);
        let mut d = TestDevice::connect(addr, &env.ca_pem(), Some(&cert), id)
            .await
            .unwrap();
        d.hello_as(DeviceKind::Pos).await;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut seq, mut stored) = (1u64, 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                for _ in 0..window {
                    d.send(book_purchase(id, seq, i * 10_000_000 + seq, 1, 100))
                        .await;
                    seq += 1;
                }
                for _ in 0..window {
                    match d.recv().await {
                        Recv::Frame(Message::TxnAck(a)) if a.status == TxnStatus::Stored => {
                            stored += 1;
                            hist.record(sent.elapsed().as_micros() as u64).unwrap();
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
            (stored, hist)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        let (n, h) = t.await.unwrap();
        total += n;
        hist.add(h).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    gw.shutdown().unwrap();
    let gateway_rate = total as f64 / elapsed;

    // The limit: the same PostgreSQL, the same rows, 100-row INSERTs per commit.
    let (client, conn) =
        tokio_postgres::connect(&env.config.store.postgres_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE raw_txns (LIKE txns INCLUDING ALL)")
        .await
        .unwrap();
    let mut values = String::new();
    for r in 0..100 {
        if r > 0 {
            values.push(',');
        }
        let b = r * 21;
        values.push('(');
        values.push_str(
            &(1..=21)
                .map(|c| format!("${}", b + c))
                .collect::<Vec<_>>()
                .join(","),
        );
        values.push(')');
    }
    let stmt = client
        .prepare(&format!(
            "INSERT INTO raw_txns (device_id, seq, kind, card_no, card_counter, counter_kind, \
             amount_fen, list_price_fen, item, points_hold_id, points_used, refund_of_seq, \
             occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, points_awarded, \
             received_at_ms, business_date) VALUES {values}"
        ))
        .await
        .unwrap();
    let raw_deadline = Instant::now() + Duration::from_secs(seconds.min(10));
    let raw_started = Instant::now();
    let mut raw_rows = 0i64;
    while Instant::now() < raw_deadline {
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
        for r in 0..100i64 {
            let k = raw_rows + r;
            params.extend([
                Box::new(1i64) as Box<dyn tokio_postgres::types::ToSql + Sync + Send>,
                Box::new(k),
                Box::new(1i16),
                Box::new(k),
                Box::new(1i64),
                Box::new(1i16),
                Box::new(100i64),
                Box::new(0i64),
                Box::new(1i16),
                Box::new(0i64),
                Box::new(0i64),
                Box::new(0i64),
                Box::new(0i64),
                Box::new(0i32),
                Box::new(Some(1001i64)),
                Box::new(1i16),
                Box::new(0i16),
                Box::new(0i64),
                Box::new(0i64),
                Box::new(0i64),
                Box::new(20261127i32),
            ]);
        }
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        client.execute(&stmt, &refs).await.unwrap();
        raw_rows += 100;
    }
    let raw_rate = raw_rows as f64 / raw_started.elapsed().as_secs_f64();

    println!("devices {devices}, window {window}, {seconds} s");
    println!("gateway stored txn/s     {gateway_rate:>10.0}");
    println!("raw 100-row INSERT rows/s {raw_rate:>9.0}");
    println!("ratio                    {:>10.2}", gateway_rate / raw_rate);
    println!(
        "ack latency µs  p50 {}  p99 {}  p999 {}  max {}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}
