//! Console benchmark (not a test): a PostgreSQL store holding ROWS transactions (default
//! 10,000,000) over DAYS business days (default 10: today and the days before it, each
//! past day cleared and approved), a gateway on it, and then each of the console's pages
//! and endpoints under CLIENTS concurrent clients (default 4) for SECONDS (default 10):
//! prints p50, p99 and the maximum latency, requests per second, and any answer that is
//! not 200.
//!
//!     cargo run --release -p wenxiao-tests --example console_bench -- [ROWS] [DAYS] [CLIENTS] [SECONDS]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::float_arithmetic
)]

use std::time::{Duration, Instant};
use wenxiao_gateway::console::auth;
use wenxiao_gateway::store::Store;
use wenxiao_gateway::store::console::ConsoleStore;
use wenxiao_tests::arg;
use wenxiao_tests::env::TestEnv;

/// City cards of the pilot.
const CARDS: i64 = 3_500_000;
/// The app's token (residents' queries).
const APP_TOKEN: &str = "console-bench-app-token";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows = i64::try_from(arg(1, 10_000_000)).unwrap();
    let days = i64::try_from(arg(2, 10)).unwrap().max(1);
    let clients = usize::try_from(arg(3, 4)).unwrap().max(1);
    let seconds = arg(4, 10);
    let mut env = TestEnv::postgres().await;
    env.config.admin.app_token = APP_TOKEN.to_owned();
    env.config.store.postgres_pool_size_max = 8;
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    store.migrate().await.unwrap();
    let client = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;

    // Today and the days before it, ROWS/DAYS purchases each (every 100th a refund), on
    // 1,000 synthetic POS at the test registry's four merchants, spread over the day.
    let now = wenxiao_gateway::clock::now_ms();
    let today = wenxiao_gateway::clock::business_date(now).unwrap();
    let mut dates = vec![today];
    while dates.len() < usize::try_from(days).unwrap() {
        let prev = wenxiao_gateway::clock::previous_day(*dates.last().unwrap()).unwrap();
        dates.push(prev);
    }
    let per_day = rows / days;
    let load = Instant::now();
    for (k, date) in dates.iter().enumerate() {
        let k = i64::try_from(k).unwrap();
        let start = wenxiao_gateway::clock::day_end_ms(*date) - 86_400_000;
        // Today's rows are received before now.
        let span = if k == 0 {
            (now - start).max(1)
        } else {
            86_400_000
        };
        let (lo, hi) = (k * per_day + 1, (k + 1) * per_day);
        client
            .batch_execute(&format!(
                "INSERT INTO txns (device_id, seq, kind, card_no, card_counter, counter_kind, \
                 amount_fen, list_price_fen, item, points_hold_id, points_used, refund_of_seq, \
                 occurred_at_ms, tac, merchant_id, status, reason, subsidy_fen, points_awarded, \
                 received_at_ms, business_date) \
                 SELECT 900000 + i % 1000, i, CASE WHEN i % 100 = 99 THEN 4 ELSE 1 END, \
                 3101000000000000 + i % {CARDS}, i / {CARDS} + 1, CASE WHEN i % 100 = 99 THEN 2 ELSE 1 END, \
                 1000 + i % 9000, 0, 1, 0, 0, \
                 CASE WHEN i % 100 = 99 THEN i - 1000 ELSE 0 END, {start} + i % {span}, 0, 1001 + i % 4, 1, 0, \
                 CASE WHEN i % 100 = 99 THEN 0 ELSE (1000 + i % 9000) / 10 END, 0, {start} + i % {span}, {d} \
                 FROM generate_series({lo}, {hi}) AS i",
                d = date.get()
            ))
            .await
            .unwrap();
    }
    client.batch_execute("ANALYZE").await.unwrap();
    println!(
        "loaded {} transactions over {days} days in {:.1} s",
        per_day * days,
        load.elapsed().as_secs_f64()
    );
    let clearing = Instant::now();
    for date in dates.iter().skip(1) {
        store
            .clear_day(*date, 10, wenxiao_gateway::clock::day_end_ms(*date) + 1)
            .await
            .unwrap();
        store.approve_day(*date, now).await.unwrap();
    }
    client.batch_execute("ANALYZE").await.unwrap();
    println!(
        "cleared and approved {} past days in {:.1} s",
        days - 1,
        clearing.elapsed().as_secs_f64()
    );

    // A token-only user with every staff role.
    let token = auth::new_secret();
    store
        .add_user(
            "bench".to_owned(),
            auth::NO_PASSWORD.to_owned(),
            ["viewer", "operator", "auditor", "risk", "admin"]
                .map(str::to_owned)
                .to_vec(),
            now,
        )
        .await
        .unwrap();
    store
        .set_token("bench".to_owned(), auth::secret_sha256(&token))
        .await
        .unwrap();
    let gw = env.start();
    let addr = gw.console_addr.unwrap();
    let past = dates.get(1).copied().unwrap_or(today).get();
    let first = dates.last().unwrap().get();
    let card = 3_101_000_000_000_000u64 + 12_345;
    let staff = format!("Authorization: Bearer {token}");
    let app = format!("Authorization: Bearer {APP_TOKEN}");
    let routes: Vec<(String, &String)> = vec![
        ("/v1/dashboard".to_owned(), &staff),
        ("/console".to_owned(), &staff),
        ("/v1/clearing/days".to_owned(), &staff),
        (format!("/v1/clearing/days/{past}"), &staff),
        (format!("/console/clearing/{past}"), &staff),
        (format!("/v1/statistics?from={first}&to={past}"), &staff),
        (format!("/v1/statistics.csv?from={first}&to={past}"), &staff),
        (
            format!("/v1/statistics.xlsx?from={first}&to={past}"),
            &staff,
        ),
        (format!("/v1/statistics.svg?from={first}&to={past}"), &staff),
        (
            format!("/console/statistics?from={first}&to={past}"),
            &staff,
        ),
        (
            format!(
                "/v1/statistics/merchant-days?from={first}&to={}",
                today.get()
            ),
            &staff,
        ),
        ("/v1/merchants".to_owned(), &staff),
        ("/v1/devices".to_owned(), &staff),
        ("/v1/commands".to_owned(), &staff),
        ("/v1/audit/log".to_owned(), &staff),
        ("/v1/budget".to_owned(), &staff),
        (format!("/v1/cards/{card}/credits"), &app),
        (format!("/v1/cards/{card}/points"), &app),
        ("/v1/audit/figures".to_owned(), &staff),
    ];
    println!(
        "console at {addr}: {clients} clients, {seconds} s per route, dashboard cache {} ms",
        env.config.console.dashboard_refresh_ms
    );
    println!(
        "{:<58} {:>9} {:>8} {:>9} {:>9} {:>9} {:>6}",
        "route", "first ms", "req/s", "p50 ms", "p99 ms", "max ms", "non200"
    );
    for (path, auth) in &routes {
        // The first read of a route (nothing held yet: the store's aggregates are read).
        let t = Instant::now();
        let first_answer =
            wenxiao_tests::http::request(addr, "GET", path, &[(*auth).clone()], "").await;
        let first_ms = t.elapsed().as_secs_f64() * 1_000.0;
        assert_eq!(first_answer.status, 200, "{path}: {}", first_answer.body);
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (path, auth) = (path.clone(), (*auth).clone());
            tasks.push(tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                let mut bad = 0u64;
                while Instant::now() < until {
                    let t = Instant::now();
                    let a = wenxiao_tests::http::request(
                        addr,
                        "GET",
                        &path,
                        std::slice::from_ref(&auth),
                        "",
                    )
                    .await;
                    h.record(u64::try_from(t.elapsed().as_micros()).unwrap())
                        .unwrap();
                    if a.status != 200 {
                        bad += 1;
                    }
                }
                (h, bad)
            }));
        }
        let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut bad = 0;
        for t in tasks {
            let (h, b) = t.await.unwrap();
            all.add(h).unwrap();
            bad += b;
        }
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1_000.0;
        println!(
            "{:<58} {:>9.1} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>6}",
            path,
            first_ms,
            all.len() as f64 / seconds as f64,
            ms(0.5),
            ms(0.99),
            all.max() as f64 / 1_000.0,
            bad
        );
    }
    gw.shutdown().unwrap();
}
