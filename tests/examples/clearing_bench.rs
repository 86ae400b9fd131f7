//! Clearing benchmark (not a test): one city day of N transactions in a fresh PostgreSQL
//! schema — purchases at the pilot's merchants by 3.5 M cards, with 1 % refunds — then
//! `clear_day`, timed. Prints wall time and rows/s.
//!
//!     cargo run --release -p wenxiao-tests --example clearing_bench -- [ROWS]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::float_arithmetic
)]

use std::path::Path;
use std::time::Instant;
use wenxiao_gateway::registry::Registry;
use wenxiao_gateway::store::{PgStore, Store};
use wenxiao_protocol::BusinessDate;

/// City cards of the pilot.
const CARDS: i64 = 3_500_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    wenxiao_gateway::cli::init_tracing();
    let rows: i64 = std::env::args()
        .nth(1)
        .map_or(10_000_000, |a| a.parse().unwrap());
    let url = wenxiao_tests::fresh_pg_url().await;
    let store = PgStore::connect(&url, 4, 60_000).unwrap();
    store.migrate().await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
    store
        .import_registry(
            &Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap(),
        )
        .await
        .unwrap();
    let client = wenxiao_tests::pg_client(&url).await;
    // Purchases: device = one of 1,000 synthetic POS ids, merchant = one of the 100
    // contracted bookstores, cinemas and venues; every 100th row is a refund of the row
    // before it on the same device.
    let load = Instant::now();
    client
        .batch_execute(&format!(
            "INSERT INTO txns (device_id, seq, kind, card_no, card_counter, counter_kind, \
             amount_fen, list_price_fen, item, points_hold_id, points_used, refund_of_seq, \
             occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, points_awarded, \
             received_at_ms, business_date) \
             SELECT 900000 + i % 1000, i, CASE WHEN i % 100 = 99 THEN 4 ELSE 1 END, \
             3101000000000000 + i % {CARDS}, i / {CARDS} + 1, CASE WHEN i % 100 = 99 THEN 2 ELSE 1 END, \
             1000 + i % 9000, 0, 1, 0, CASE WHEN i % 10 = 0 THEN 50 ELSE 0 END, \
             CASE WHEN i % 100 = 99 THEN i - 1000 ELSE 0 END, 1795700000000, 0, 1001 + i % 100, 1, 0, \
             CASE WHEN i % 100 = 99 THEN 0 ELSE (1000 + i % 9000) / 10 END, 0, 1795700000000, 20261127 \
             FROM generate_series(1, {rows}) AS i; ANALYZE txns;"
        ))
        .await
        .unwrap();
    println!(
        "loaded {rows} transactions in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let date = BusinessDate::new(20261127).unwrap();
    let started = Instant::now();
    let summary = store
        .clear_day(date, 10, wenxiao_gateway::clock::day_end_ms(date) + 1)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("clear_day: {secs:.1} s, {:.0} rows/s", rows as f64 / secs);
    println!(
        "{} transactions, {} credits, subsidy {} yuan, credited {} yuan",
        summary.txn_count, summary.credit_count, summary.subsidy_fen, summary.credit_fen
    );
    let again = Instant::now();
    assert_eq!(
        store
            .clear_day(date, 10, wenxiao_gateway::clock::day_end_ms(date) + 2)
            .await
            .unwrap(),
        summary
    );
    println!(
        "second run (idempotent no-op): {:.3} s",
        again.elapsed().as_secs_f64()
    );
    let report = Instant::now();
    let r = store.clearing_report(date).await.unwrap().unwrap();
    let files = wenxiao_gateway::clearing::write_settlement_files(
        &r,
        &std::env::temp_dir().join("wenxiao-clearing-bench"),
        None,
    )
    .unwrap();
    println!(
        "report + {} settlement files: {:.1} s",
        files.len(),
        report.elapsed().as_secs_f64()
    );
}
