//! `wenxiao-gateway clearing run` and `approve` as a process, on the store a gateway
//! wrote: settlement files with control totals, the same bytes on a second run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use wenxiao_protocol::*;
use wenxiao_tests::device::book_purchase;
use wenxiao_tests::env::{POS, TestEnv};

fn gateway(config: &std::path::Path, args: &[&str]) -> String {
    gateway_at(config, 0, args)
}

/// The gateway CLI with its clock `offset_ms` ahead.
fn gateway_at(config: &std::path::Path, offset_ms: i64, args: &[&str]) -> String {
    wenxiao_tests::cli::run(
        env!("CARGO_BIN_EXE_gateway-under-test"),
        config,
        &[("WENXIAO_TEST_CLOCK_OFFSET_MS", &offset_ms.to_string())],
        args,
    )
}

fn control_total(file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // An approved day's files end with its seal, after the control total.
    if lines.last().unwrap().starts_with("SEAL,") {
        assert_eq!(
            lines.last().unwrap().len(),
            "SEAL,".len() + 64,
            "{}",
            file.display()
        );
        lines.pop();
    }
    let last = lines.last().unwrap();
    assert!(last.starts_with("TOTAL,"), "{}: {last}", file.display());
    last.split(',').map(str::to_owned).collect()
}

async fn clear_what_a_gateway_stored(env: TestEnv) {
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    for seq in 1..=3u64 {
        d.send(book_purchase(POS, seq, 7_000 + seq, 1, 8_800)).await;
        assert_eq!(d.ack().await.subsidy_fen, Fen(880));
    }
    drop(d);
    gw.shutdown().unwrap();
    let date = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms())
        .unwrap()
        .get()
        .to_string();
    let config = env.write_config_file(0);
    // An organizer award, approved today, goes into today's bureau files.
    std::fs::write(
        &env.config.registry.merchants_path,
        format!(
            "{}1005,Test organizer,ORGANIZER,ERQI,1\n",
            std::fs::read_to_string(&env.config.registry.merchants_path).unwrap()
        ),
    )
    .unwrap();
    gateway(&config, &["registry", "import"]);
    let out = gateway(
        &config,
        &[
            "awards",
            "add",
            "--organizer",
            "1005",
            "--show-date",
            &date,
            "--kind",
            "national-troupe",
            "--evidence",
            "ministry list 2026/3",
        ],
    );
    assert!(out.contains("award 1 recorded: 500000.00 yuan"), "{out}");
    gateway(&config, &["awards", "approve", "--id", "1"]);
    // Today cannot be cleared before it has ended, plus the grace.
    let out = wenxiao_tests::cli::output(
        env!("CARGO_BIN_EXE_gateway-under-test"),
        &config,
        &[],
        &["clearing", "run", "--date", &date],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be cleared yet"), "{stderr}");
    // Replayed after midnight and the grace, it can.
    let now = wenxiao_gateway::clock::now_ms();
    let today = BusinessDate::new(date.parse().unwrap()).unwrap();
    let later = wenxiao_gateway::clock::day_end_ms(today)
        + i64::try_from(env.config.clearing.grace_ms).unwrap()
        - now
        + 1_000;
    let gateway = |config: &std::path::Path, args: &[&str]| gateway_at(config, later, args);
    let out = gateway(&config, &["clearing", "run", "--date", &date]);
    assert!(out.contains("3 credits totalling 26.40 yuan"), "{out}");
    assert!(out.contains("awaiting approval"), "{out}");
    let day = env.path().join("settlement").join(&date);
    let cards = day.join("card_credits.csv");
    assert_eq!(control_total(&cards), ["TOTAL", "3", "2640"]);
    assert_eq!(
        control_total(&day.join("merchant_settlement.csv"))[1..4],
        ["3", "26400", "0"]
    );
    assert_eq!(
        control_total(&day.join("statistics.csv"))[2..],
        ["3", "26400", "2640"]
    );
    let first = std::fs::read(&cards).unwrap();
    // Idempotent: a second run reports and writes the same.
    gateway(&config, &["clearing", "run", "--date", &date]);
    assert_eq!(std::fs::read(&cards).unwrap(), first);
    let out = gateway(&config, &["clearing", "approve", "--date", &date]);
    assert!(out.contains("approved"), "{out}");
    let bureau = std::fs::read_to_string(day.join("bureau_settlement.csv")).unwrap();
    assert!(
        bureau.lines().nth(1).unwrap().ends_with(",50000000,1"),
        "{bureau}"
    );
    assert_eq!(
        control_total(&day.join("organizer_awards.csv")),
        ["TOTAL", "1", "", "", "50000000"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_cli_sqlite() {
    clear_what_a_gateway_stored(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_cli_postgres() {
    clear_what_a_gateway_stored(TestEnv::postgres().await).await;
}
