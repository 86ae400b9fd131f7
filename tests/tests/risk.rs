//! The risk path end to end, over real TLS sessions and the admin server's HTTP API, on
//! both stores: a rule's hit becomes a case; confirming it lists the card, which reaches
//! the POS's hot list and loses its subsidy; lifting it undoes that; the rules rebuild
//! from the store after a restart and catch up after their queue overflowed; residents'
//! reports and their bad inputs; a merchant's case suspends it; the CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wenxiao_protocol::*;
use wenxiao_tests::device::{TestDevice, book_purchase};
use wenxiao_tests::env::{POS, TestEnv};
use wenxiao_tests::http;

const RISK: &str = "risk-t0ken";
const APP: &str = "app-t0ken";

fn risk_env(mut env: TestEnv) -> TestEnv {
    env.config.admin.risk_token = RISK.to_owned();
    env.config.admin.app_token = APP.to_owned();
    env.config.hotlist.poll_interval_ms = 100;
    env
}

/// The cases about `subject` (`{"card": N}` or `{"merchant": M}` as the API writes it),
/// waiting up to 10 s for at least one.
async fn cases_about(admin: std::net::SocketAddr, subject: &Value) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http::get(admin, "/v1/cases?limit=1000", Some(RISK)).await;
        assert_eq!(status, 200, "{body}");
        let all: Value = serde_json::from_str(&body).unwrap();
        let mine: Vec<Value> = all["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| &c["subject"] == subject)
            .cloned()
            .collect();
        if !mine.is_empty() {
            return mine;
        }
        assert!(
            Instant::now() < until,
            "no case about {subject} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn case(admin: std::net::SocketAddr, id: i64) -> Value {
    let (status, body) = http::get(admin, &format!("/v1/cases/{id}"), Some(RISK)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn step(admin: std::net::SocketAddr, id: i64, action: &str, body: Value) -> (u16, Value) {
    let (status, text) = http::post(
        admin,
        &format!("/v1/cases/{id}/{action}"),
        RISK,
        &body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Reads frames up to the next HOTLIST_UPDATE (a one-chunk update) and acknowledges it.
async fn hotlist_update(d: &mut TestDevice) -> HotlistUpdate {
    loop {
        match d.frame().await {
            Message::HotlistUpdate(u) => {
                assert!(u.last());
                d.send(Message::HotlistAck(HotlistAck {
                    version: u.version(),
                }))
                .await;
                return u;
            }
            Message::HeartbeatAck(_) => {}
            other => panic!("expected HOTLIST_UPDATE, got {other:?}"),
        }
    }
}

async fn buy(d: &mut TestDevice, seq: u64, card: u64) -> TxnAck {
    d.send(book_purchase(
        POS,
        seq,
        card,
        u32::try_from(seq).unwrap(),
        8_800,
    ))
    .await;
    d.ack().await
}

async fn case_to_pos(env: TestEnv) {
    let env = risk_env(env);
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let mut pos = env.session(&gw, POS).await;
    // 13 purchases in a day: one more than the velocity rule's 12.
    for seq in 1..=13 {
        assert_eq!(buy(&mut pos, seq, 5_555).await.status, TxnStatus::Stored);
    }
    let cases = cases_about(admin, &json!({ "card": 5_555 })).await;
    assert_eq!(cases.len(), 1);
    let id = cases[0]["case_id"].as_i64().unwrap();
    assert_eq!(cases[0]["status"], "OPEN");
    let detail = case(admin, id).await;
    let alert = &detail["alert_list"][0];
    assert_eq!(alert["rule"], "velocity");
    assert_eq!(alert["figures"]["purchases_count"], 13, "{alert}");
    assert!(
        alert["evidence"]
            .as_array()
            .unwrap()
            .contains(&json!([POS.get(), 13])),
        "{alert}"
    );

    // Careless steps are refused and change nothing.
    assert_eq!(
        step(admin, id, "confirm", json!({ "by": "ana" })).await.0,
        400
    );
    assert_eq!(
        step(admin, id, "lift", json!({ "by": "ana", "reason": "x" }))
            .await
            .0,
        409
    );
    assert_eq!(step(admin, id, "explode", json!({})).await.0, 404);
    assert_eq!(
        step(admin, 999, "dismiss", json!({ "by": "a", "reason": "x" }))
            .await
            .0,
        409
    );
    let (status, _) = http::post(admin, &format!("/v1/cases/{id}/confirm"), "wrong", "{}").await;
    assert_eq!(status, 401);

    let (status, body) = step(admin, id, "assign", json!({ "by": "lead", "to": "ana" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["case"]["status"], "ASSIGNED");
    let (status, body) = step(
        admin,
        id,
        "confirm",
        json!({ "by": "ana", "reason": "13 books in an hour, resold" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hotlist_version"], 1);
    assert_eq!(body["case"]["status"], "CONFIRMED");

    // The hot list reaches the POS, and the card's next purchase earns no subsidy.
    let u = hotlist_update(&mut pos).await;
    assert_eq!((u.version().get(), u.base_version().get()), (1, 0));
    assert_eq!(u.add(), &[CardNo(5_555)]);
    let a = buy(&mut pos, 14, 5_555).await;
    assert_eq!((a.reason, a.subsidy_fen), (Reason::CardBlacklisted, Fen(0)));
    assert_eq!(
        step(
            admin,
            id,
            "confirm",
            json!({ "by": "ana", "reason": "again" })
        )
        .await
        .0,
        409,
        "a confirmed case is not confirmed twice"
    );

    // Lifting takes it off. The list is empty now, smaller than the delta: the POS gets
    // the (empty) full list.
    let (status, body) = step(
        admin,
        id,
        "lift",
        json!({ "by": "lead", "reason": "the bookshop's bulk order for a school" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let u = hotlist_update(&mut pos).await;
    assert_eq!((u.version().get(), u.base_version().get()), (2, 0));
    assert!(u.add().is_empty() && u.remove().is_empty());
    assert!(buy(&mut pos, 15, 5_555).await.subsidy_fen > Fen(0));

    // The trail: who did what, and the evidence the confirmation rested on.
    let detail = case(admin, id).await;
    let trail: Vec<(String, String)> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("opened", "rules"),
        ("assigned", "lead"),
        ("confirmed", "ana"),
        ("lifted", "lead"),
    ];
    assert_eq!(
        trail,
        want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
    );
    let confirmed = &detail["events"][2];
    assert_eq!(confirmed["reason"], "13 books in an hour, resold");
    assert_eq!(confirmed["evidence"]["alerts"][0]["rule"], "velocity");
    assert_eq!(detail["status"], "LIFTED");
    drop(pos);
    gw.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_case_reaches_the_pos_sqlite() {
    case_to_pos(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_case_reaches_the_pos_postgres() {
    case_to_pos(TestEnv::postgres().await).await;
}

/// Eight purchases, a restart, five more: the thirteenth fires, because the rules rebuilt
/// the first eight from the store; a second restart replays all thirteen and records no
/// second alert.
async fn rebuild_after_restart(env: TestEnv) {
    let env = risk_env(env);
    let gw = env.start();
    let mut pos = env.session(&gw, POS).await;
    for seq in 1..=8 {
        buy(&mut pos, seq, 6_666).await;
    }
    drop(pos);
    gw.shutdown().unwrap();

    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let mut pos = env.session(&gw, POS).await;
    for seq in 9..=13 {
        buy(&mut pos, seq, 6_666).await;
    }
    let cases = cases_about(admin, &json!({ "card": 6_666 })).await;
    let id = cases[0]["case_id"].as_i64().unwrap();
    drop(pos);
    gw.shutdown().unwrap();

    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    // Give the rebuilt rules time to replay and (wrongly) record again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cases = cases_about(admin, &json!({ "card": 6_666 })).await;
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["alerts"], 1, "{}", cases[0]);
    assert_eq!(
        case(admin, id).await["alert_list"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    gw.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_rebuild_from_the_store_sqlite() {
    rebuild_after_restart(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_rebuild_from_the_store_postgres() {
    rebuild_after_restart(TestEnv::postgres().await).await;
}

/// A rules queue of one: the writers' offers overflow, and the rules catch up from the
/// store, so the hit is found all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_rules_queue_catches_up_from_the_store() {
    let mut env = risk_env(TestEnv::postgres().await);
    env.config.risk.queue_txns_max = 1;
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let mut pos = env.session(&gw, POS).await;
    for round in 0..4_u64 {
        // Pipelined: a batch of many rows offers many facts at once.
        for i in 1..=13 {
            let seq = round * 13 + i;
            let card = 7_000 + round;
            pos.send(book_purchase(
                POS,
                seq,
                card,
                u32::try_from(i).unwrap(),
                8_800,
            ))
            .await;
        }
        for _ in 1..=13 {
            assert_eq!(pos.ack().await.status, TxnStatus::Stored);
        }
    }
    for round in 0..4_u64 {
        cases_about(admin, &json!({ "card": 7_000 + round })).await;
    }
    let (_, metrics) = http::get(admin, "/metrics", None).await;
    let overflows: f64 = metrics
        .lines()
        .find(|l| l.starts_with("wenxiao_risk_queue_overflows_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        overflows > 0.0,
        "the queue never overflowed: the test proves nothing"
    );
    drop(pos);
    gw.shutdown().unwrap();
}

async fn report(admin: std::net::SocketAddr, body: &str) -> (u16, Value) {
    let (status, text) = http::post(admin, "/v1/reports", APP, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Residents' reports: every bad input is 400 naming its field and files nothing; five a
/// day per reporter; reports about one card share its case; a merchant's confirmed case
/// suspends it, and its purchases get MERCHANT_SUSPENDED.
async fn reports(env: TestEnv) {
    let env = risk_env(env);
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let long = "x".repeat(4_001);
    let bad: Vec<(String, &str)> = vec![
        ("not json".into(), "body"),
        ("[1]".into(), "body"),
        (
            r#"{"reporter":"r","card_no":5,"text":"t","extra":1}"#.into(),
            "extra",
        ),
        (r#"{"card_no":5,"text":"t"}"#.into(), "reporter"),
        (
            r#"{"reporter":" ","card_no":5,"text":"t"}"#.into(),
            "reporter",
        ),
        (
            r#"{"reporter":7,"card_no":5,"text":"t"}"#.into(),
            "reporter",
        ),
        (r#"{"reporter":"r","card_no":5}"#.into(), "text"),
        (
            format!(r#"{{"reporter":"r","card_no":5,"text":"{long}"}}"#),
            "text",
        ),
        (
            r#"{"reporter":"r","card_no":0,"text":"t"}"#.into(),
            "card_no",
        ),
        (
            r#"{"reporter":"r","card_no":"5","text":"t"}"#.into(),
            "card_no",
        ),
        (
            r#"{"reporter":"r","card_no":-5,"text":"t"}"#.into(),
            "card_no",
        ),
        (r#"{"reporter":"r","text":"t"}"#.into(), "card_no"),
        (
            r#"{"reporter":"r","card_no":5,"merchant_id":1001,"text":"t"}"#.into(),
            "merchant_id",
        ),
        (
            r#"{"reporter":"r","merchant_id":4242,"text":"t"}"#.into(),
            "merchant_id",
        ),
    ];
    for (body, field) in &bad {
        let (status, answer) = report(admin, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], *field, "{body}: {answer}");
    }
    let (status, _) = http::post(admin, "/v1/reports", "wrong", "{}").await;
    assert_eq!(status, 401);
    let (_, body) = http::get(admin, "/v1/cases", Some(RISK)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["cases"],
        json!([]),
        "bad reports filed nothing"
    );

    // Five a day per reporter; two reporters' reports about one card share a case.
    let mut case_ids = Vec::new();
    for i in 0..5 {
        let (status, answer) = report(
            admin,
            &json!({ "reporter": "resident-1", "card_no": 9_100 + i, "text": "sells his card's subsidy" })
                .to_string(),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        case_ids.push(answer["case_id"].as_i64().unwrap());
    }
    let (status, answer) = report(
        admin,
        &json!({ "reporter": "resident-1", "card_no": 9_100, "text": "again" }).to_string(),
    )
    .await;
    assert_eq!(
        (status, answer["reason"].clone()),
        (429, json!("RATE_LIMITED"))
    );
    let (status, answer) = report(
        admin,
        &json!({ "reporter": "resident-2", "card_no": 9_100, "text": "I saw it too" }).to_string(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(answer["case_id"].as_i64().unwrap(), case_ids[0]);
    assert_eq!(
        case(admin, case_ids[0]).await["report_list"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A merchant's case: confirmed, its purchases lose their subsidy.
    let mut pos = env.session(&gw, POS).await;
    assert!(buy(&mut pos, 1, 8_001).await.subsidy_fen > Fen(0));
    let (status, answer) = report(
        admin,
        &json!({ "reporter": "resident-3", "merchant_id": 1001, "text": "cash back for subsidy" })
            .to_string(),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["case_id"].as_i64().unwrap();
    let (status, body) = step(
        admin,
        id,
        "confirm",
        json!({ "by": "ana", "reason": "cash back confirmed on site" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hotlist_version"], Value::Null);
    let until = Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    loop {
        let a = buy(&mut pos, seq, 8_000 + seq).await;
        seq += 1;
        if a.reason == Reason::MerchantSuspended {
            assert_eq!(a.subsidy_fen, Fen(0));
            break;
        }
        assert!(Instant::now() < until, "the suspension never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(pos);
    gw.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_reports_sqlite() {
    reports(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_reports_postgres() {
    reports(TestEnv::postgres().await).await;
}

fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-under-test"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The CLI lists, shows, assigns and confirms cases; confirming lists the card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_through_the_cli() {
    let env = risk_env(TestEnv::sqlite());
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let (status, _) = report(
        admin,
        &json!({ "reporter": "r", "card_no": 4_321, "text": "resold" }).to_string(),
    )
    .await;
    assert_eq!(status, 201);
    gw.shutdown().unwrap();
    let config = env.write_config_file(0);
    let (ok, out) = cli(&config, &["cases", "list", "--status", "open"]);
    assert!(
        ok && out.contains("card 4321") && out.contains("OPEN"),
        "{out}"
    );
    let (ok, out) = cli(&config, &["cases", "show", "1"]);
    assert!(ok && out.contains("\"resold\""), "{out}");
    let (ok, out) = cli(
        &config,
        &["cases", "confirm", "1", "--by", "ana", "--reason", " "],
    );
    assert!(!ok && out.contains("reason"), "{out}");
    let (ok, out) = cli(
        &config,
        &["cases", "assign", "1", "--to", "ana", "--by", "lead"],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &config,
        &[
            "cases", "confirm", "1", "--by", "ana", "--reason", "checked",
        ],
    );
    assert!(ok && out.contains("hot-list version 1"), "{out}");
    let (ok, out) = cli(
        &config,
        &["cases", "dismiss", "1", "--by", "ana", "--reason", "no"],
    );
    assert!(!ok && out.contains("CONFIRMED"), "{out}");
    let (ok, out) = cli(&config, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 3 rows"), "{out}");
    let (ok, out) = cli(&config, &["blacklist", "status"]);
    assert!(
        ok && out.contains("version 1") && out.contains("1 cards"),
        "{out}"
    );
    let (ok, out) = cli(&config, &["cases", "list", "--status", "bogus"]);
    assert!(!ok && out.contains("bogus"), "{out}");
}

/// The spike rule against a merchant's stored history: four past same weekdays of ten
/// purchases each (written into the store as a gateway would have stored them), then a
/// day of 200 — the rules load the history at start, and fire at the 200th purchase, not
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_spike_against_its_stored_history() {
    use wenxiao_gateway::clock;
    let env = risk_env(TestEnv::postgres().await);
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    wenxiao_gateway::store::Store::migrate(&store)
        .await
        .unwrap();
    let client = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;
    let today = clock::business_date(clock::now_ms()).unwrap();
    let mut day = today;
    for week in 0..4_i64 {
        for _ in 0..7 {
            day = clock::previous_day(day).unwrap();
        }
        let at = clock::day_end_ms(day) - 12 * 3_600_000;
        client
            .execute(
                "INSERT INTO txns SELECT 310100000002, $1::int8 * 100 + g, 1, 900000 + $1::int8 * 100 + g, 1, \
                 1, 8800, 0, 1, 0, 0, 0, $2::int8, 0, 1001, 1, 0, 880, 0, $2::int8, $3::int4 \
                 FROM generate_series(1, 10) AS g",
                &[&week, &at, &i32::try_from(day.get()).unwrap()],
            )
            .await
            .unwrap();
    }
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let mut pos = env.session(&gw, POS).await;
    for seq in 1..=199_u64 {
        pos.send(book_purchase(POS, seq, 50_000 + seq, 1, 8_800))
            .await;
        assert_eq!(pos.ack().await.status, TxnStatus::Stored);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, body) = http::get(admin, "/v1/cases", Some(RISK)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["cases"],
        json!([]),
        "199 purchases are under the rule's minimum of 200"
    );
    pos.send(book_purchase(POS, 200, 50_200, 1, 8_800)).await;
    pos.ack().await;
    let cases = cases_about(admin, &json!({ "merchant": 1001 })).await;
    let detail = case(admin, cases[0]["case_id"].as_i64().unwrap()).await;
    let alert = &detail["alert_list"][0];
    assert_eq!(alert["rule"], "spike", "{alert}");
    assert_eq!(alert["figures"]["purchases_count"], 200, "{alert}");
    assert_eq!(alert["figures"]["mean_count"], 10, "{alert}");
    assert_eq!(alert["figures"]["weeks_known_count"], 4, "{alert}");
    drop(pos);
    gw.shutdown().unwrap();
}
