//! The gateway over real TLS sockets: every refusal, the TXN path and its answers, and
//! the session's timers. Store-dependent behaviour runs on both PostgreSQL and SQLite.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use wenxiao_gateway::store::StoreAudit;
use wenxiao_protocol::*;
use wenxiao_tests::device::{Recv, TestDevice, book_purchase, hello, sign};
use wenxiao_tests::env::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    // In TLS 1.3 the client's connect succeeds; the refusal arrives as an alert on read.
    let d = TestDevice::connect(gw.device_addr, &env.ca_pem(), None, POS).await;
    if let Ok(mut d) = d {
        d.send(Heartbeat {
            sent_at_ms: UnixMillis(1),
        })
        .await;
        assert!(matches!(d.recv().await, Recv::Closed(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let rogue = wenxiao_gateway::pki::DevCa::generate("rogue").unwrap();
    let cert = rogue.issue_device(POS).unwrap();
    if let Ok(mut d) = TestDevice::connect(gw.device_addr, &env.ca_pem(), Some(&cert), POS).await {
        d.send(Heartbeat {
            sent_at_ms: UnixMillis(1),
        })
        .await;
        assert!(matches!(d.recv().await, Recv::Closed(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_refusals() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    // Certificate for POS, HELLO claims POS2.
    let cert = env.device_cert(POS);
    let mut d = TestDevice::connect(gw.device_addr, &env.ca_pem(), Some(&cert), POS2)
        .await
        .unwrap();
    d.send(hello(POS2, DeviceKind::Pos)).await;
    d.expect_fatal(ErrorCode::AuthFailed).await;
    // A certificate whose CN is not a device id.
    let odd = env.ca.issue_client("pos-1").unwrap();
    let mut d = TestDevice::connect(gw.device_addr, &env.ca_pem(), Some(&odd), POS)
        .await
        .unwrap();
    d.send(hello(POS, DeviceKind::Pos)).await;
    d.expect_fatal(ErrorCode::AuthFailed).await;
    let mut d = env.connect(&gw, UNKNOWN).await;
    d.send(hello(UNKNOWN, DeviceKind::Pos)).await;
    d.expect_fatal(ErrorCode::DeviceUnknown).await;
    // Registered, but as another kind.
    let mut d = env.connect(&gw, KIOSK).await;
    d.send(hello(KIOSK, DeviceKind::Pos)).await;
    d.expect_fatal(ErrorCode::DeviceUnknown).await;
    let mut d = env.connect(&gw, DISABLED_POS).await;
    d.send(hello(DISABLED_POS, DeviceKind::Pos)).await;
    d.expect_fatal(ErrorCode::DeviceDisabled).await;
    // Anything before HELLO.
    let mut d = env.connect(&gw, POS).await;
    d.send(Heartbeat {
        sent_at_ms: UnixMillis(1),
    })
    .await;
    d.expect_fatal(ErrorCode::HelloRequired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_hello_times_out() {
    let mut env = TestEnv::sqlite();
    env.config.session.hello_timeout_ms = 300;
    let gw = env.start();
    let mut d = env.connect(&gw, POS).await;
    d.expect_fatal(ErrorCode::HelloTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_is_closed_after_three_heartbeats() {
    let mut env = TestEnv::sqlite();
    env.config.session.heartbeat_s = 1;
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    // Heartbeats keep it alive past 3 periods…
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        d.send(Heartbeat {
            sent_at_ms: UnixMillis(5),
        })
        .await;
        assert!(matches!(
            d.frame().await,
            Message::HeartbeatAck(HeartbeatAck {
                sent_at_ms: UnixMillis(5),
                ..
            })
        ));
    }
    // …silence closes it.
    let started = std::time::Instant::now();
    d.expect_fatal(ErrorCode::IdleTimeout).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(2_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_session_replaces_the_older() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut old = env.session(&gw, POS).await;
    let mut new = env.session(&gw, POS).await;
    old.expect_fatal(ErrorCode::SessionReplaced).await;
    new.send(book_purchase(POS, 1, 77, 1, 100)).await;
    assert_eq!(new.ack().await.status, TxnStatus::Stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hello_and_wrong_direction_are_unexpected() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    d.send(Drain {
        reconnect_after_ms: 1,
    })
    .await;
    d.expect_fatal(ErrorCode::UnexpectedMessage).await;
    let mut d = env.session(&gw, POS).await;
    d.send(hello(POS, DeviceKind::Pos)).await;
    d.expect_fatal(ErrorCode::UnexpectedMessage).await;
}

async fn txn_answers(env: TestEnv) {
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    assert_eq!(d.welcome.unwrap().stored_seq, None);
    // Pipelined purchases, each acked STORED.
    for seq in 1..=20 {
        d.send(book_purchase(
            POS,
            seq,
            1_000 + seq,
            1,
            100 * i64::try_from(seq).unwrap(),
        ))
        .await;
    }
    let mut seqs: Vec<u64> = Vec::new();
    for _ in 1..=20 {
        let a = d.ack().await;
        assert_eq!(a.status, TxnStatus::Stored);
        // The provisional subsidy: 10 % of a bookstore's paid amount.
        let amount = 100 * i64::try_from(a.seq.get()).unwrap();
        assert_eq!((a.subsidy_fen, a.reason), (Fen(amount / 10), Reason::None));
        seqs.push(a.seq.get());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Bad TAC, a card counter already used, a field out of range.
    let mut bad = book_purchase(POS, 21, 5, 1, 100);
    bad.amount_fen = Fen(101);
    d.send(bad).await;
    assert_eq!((d.ack().await.reason), Reason::BadMac);
    d.send(book_purchase(POS, 22, 1_001, 1, 999)).await;
    let a = d.ack().await;
    assert_eq!(
        (a.status, a.reason),
        (TxnStatus::Rejected, Reason::CardCounterReplay)
    );
    d.send(book_purchase(POS, 23, 6, 1, 0)).await;
    assert_eq!(d.ack().await.reason, Reason::InvalidField);
    // A film at a bookstore.
    let mut film = book_purchase(POS, 24, 7, 1, 100);
    film.item = Item::FilmDomestic;
    film.list_price_fen = Fen(100);
    d.send(sign(POS, film)).await;
    assert_eq!(d.ack().await.reason, Reason::KindNotAllowed);
    drop(d);

    // Reconnect: stored_seq counts every answered seq; re-sends are DUPLICATE or the same
    // REJECTED; the same seq with other content is SEQ_CONFLICT.
    let mut d = env.session(&gw, POS).await;
    assert_eq!(d.welcome.unwrap().stored_seq, Seq::new(24));
    d.send(book_purchase(POS, 5, 1_005, 1, 500)).await;
    let a = d.ack().await;
    assert_eq!((a.status, a.seq.get()), (TxnStatus::Duplicate, 5));
    d.send(bad).await;
    assert_eq!((d.ack().await.status), TxnStatus::Rejected);
    d.send(book_purchase(POS, 5, 1_005, 1, 501)).await;
    let a = d.ack().await;
    assert_eq!(
        (a.status, a.reason),
        (TxnStatus::Rejected, Reason::SeqConflict)
    );
    drop(d);
    gw.shutdown().unwrap();

    // Exactly the stored rows are in the store, once each.
    let rt_store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    assert_eq!(rt_store.count_txns(POS).await.unwrap(), (20, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_answers_sqlite() {
    txn_answers(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_answers_postgres() {
    txn_answers(TestEnv::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_frames_close_and_keep_earlier_rows() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (b"XX\x01\x02\0\0\0\x08".to_vec(), ErrorCode::MalformedFrame),
        (
            b"WX\x02\x02\0\0\0\x08".to_vec(),
            ErrorCode::UnsupportedVersion,
        ),
        (b"WX\x01\x33\0\0\0\x00".to_vec(), ErrorCode::UnknownType),
        (b"WX\x01\x03\0\x01\0\x01".to_vec(), ErrorCode::FrameTooLarge),
        (
            b"WX\x01\x02\0\0\0\x07abcdefg".to_vec(),
            ErrorCode::MalformedFrame,
        ),
    ];
    for (i, (raw, code)) in cases.into_iter().enumerate() {
        let mut d = env.session(&gw, POS).await;
        let seq = u64::try_from(i).unwrap() + 1;
        d.send(book_purchase(POS, seq, 50 + seq, 1, 100)).await;
        assert_eq!(d.ack().await.status, TxnStatus::Stored);
        d.send_raw(&raw).await;
        d.expect_fatal(code).await;
    }
    let d = env.session(&gw, POS).await;
    assert_eq!(d.welcome.unwrap().stored_seq, Seq::new(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_max_in_flight_is_refused() {
    let mut env = TestEnv::sqlite();
    env.config.session.max_in_flight = 4;
    // A long linger keeps the first TXNs unanswered while more arrive.
    env.config.ingest.batch_linger_us = 500_000;
    env.config.ingest.batch_rows_max = 100;
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    for seq in 1..=5 {
        d.send(book_purchase(POS, seq, 60 + seq, 1, 100)).await;
    }
    d.expect_fatal(ErrorCode::TooManyInFlight).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_sessions_and_answers_what_was_sent() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    for seq in 1..=10 {
        d.send(book_purchase(POS, seq, 80 + seq, 1, 100)).await;
    }
    let stopping = std::thread::spawn(move || gw.shutdown());
    let mut acks = 0;
    let mut drained = false;
    loop {
        match d.recv().await {
            Recv::Frame(Message::TxnAck(_)) => acks += 1,
            Recv::Frame(Message::Drain(dr)) => {
                drained = true;
                assert_eq!(
                    dr.reconnect_after_ms,
                    env.config.session.drain_reconnect_after_ms
                );
                if acks == 10 {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
        if acks == 10 && drained {
            break;
        }
    }
    drop(d);
    stopping.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_gives_store_unavailable_and_loses_nothing() {
    let env = TestEnv::postgres().await;
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    d.send(book_purchase(POS, 1, 90, 1, 100)).await;
    assert_eq!(d.ack().await.status, TxnStatus::Stored);
    // Take the table away: commits fail until it is back.
    let admin = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;
    admin
        .batch_execute("ALTER TABLE txns RENAME TO txns_away")
        .await
        .unwrap();
    d.send(book_purchase(POS, 2, 91, 1, 100)).await;
    d.expect_fatal(ErrorCode::StoreUnavailable).await;
    admin
        .batch_execute("ALTER TABLE txns_away RENAME TO txns")
        .await
        .unwrap();
    let mut d = env.session(&gw, POS).await;
    assert_eq!(d.welcome.unwrap().stored_seq, Seq::new(1));
    d.send(book_purchase(POS, 2, 91, 1, 100)).await;
    assert_eq!(d.ack().await.status, TxnStatus::Stored);
    d.send(book_purchase(POS, 2, 91, 1, 100)).await;
    assert_eq!(d.ack().await.status, TxnStatus::Duplicate);
    drop(d);
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    assert_eq!(store.count_txns(POS).await.unwrap(), (2, 0));
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    wenxiao_tests::http::get(addr, path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_report_the_sessions_work() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let mut d = env.session(&gw, POS).await;
    d.send(book_purchase(POS, 1, 4242, 1, 100)).await;
    assert_eq!(d.ack().await.status, TxnStatus::Stored);
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "wenxiao_sessions{kind=\"POS\"}",
        "wenxiao_frames_received_total{type=\"TXN\"}",
        "wenxiao_frames_sent_total{type=\"TXN_ACK\"}",
        "wenxiao_txns_total{status=\"STORED\",reason=\"NONE\"}",
        "wenxiao_ingest_batch_rows",
        "wenxiao_store_commit_seconds",
        "wenxiao_txn_ack_seconds",
        "wenxiao_ingest_queue_txns",
    ] {
        assert!(
            body.contains(needle),
            "{needle} missing from /metrics:\n{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cinema_acks_carry_the_subsidy_of_the_agreed_price() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut d = env.session(&gw, CINEMA_POS).await;
    let mut film = book_purchase(CINEMA_POS, 1, 501, 1, 3_000);
    film.item = Item::FilmDomestic;
    film.list_price_fen = Fen(4_000);
    d.send(sign(CINEMA_POS, film)).await;
    let a = d.ack().await;
    assert_eq!(
        (a.status, a.subsidy_fen, a.reason),
        (TxnStatus::Stored, Fen(400), Reason::None)
    );
    let mut foreign = book_purchase(CINEMA_POS, 2, 502, 1, 3_000);
    foreign.item = Item::FilmForeign;
    foreign.list_price_fen = Fen(4_000);
    d.send(sign(CINEMA_POS, foreign)).await;
    let a = d.ack().await;
    assert_eq!(
        (a.status, a.subsidy_fen, a.reason),
        (TxnStatus::Stored, Fen(0), Reason::NotEligible)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_from_sign_ins_pay_part_of_a_purchase() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut reader = env.session(&gw, READER).await;
    let mut visit = book_purchase(READER, 1, 900, 1, 0);
    visit.kind = TxnKind::SignIn;
    visit.item = Item::None;
    reader.send(sign_txn(visit)).await;
    let a = reader.ack().await;
    assert_eq!(
        (a.status, a.points_awarded),
        (TxnStatus::Stored, Points(10))
    );
    let mut again = visit;
    again.seq = Seq::new(2).unwrap();
    again.card_counter = CardCounter(2);
    reader.send(sign_txn(again)).await;
    let a = reader.ack().await;
    assert_eq!(
        (a.reason, a.points_awarded),
        (Reason::DailyLimitReached, Points(0))
    );

    let mut pos = env.session(&gw, POS).await;
    // 20 points are more than the card has.
    pos.send(PointsAuth {
        req_id: ReqId(1),
        card_no: CardNo(900),
        purchase_fen: Fen(1_000),
        points: Points(20),
    })
    .await;
    let Message::PointsAuthResult(r) = pos.frame().await else {
        panic!()
    };
    assert_eq!(
        (r.status, r.reason, r.points_balance),
        (AuthStatus::Declined, Reason::InsufficientPoints, Points(10))
    );
    // 60 points on a ¥1 purchase would pay more than 50 %.
    pos.send(PointsAuth {
        req_id: ReqId(2),
        card_no: CardNo(900),
        purchase_fen: Fen(100),
        points: Points(6),
    })
    .await;
    let Message::PointsAuthResult(r) = pos.frame().await else {
        panic!()
    };
    assert_eq!(r.reason, Reason::PointsCapExceeded);
    pos.send(PointsAuth {
        req_id: ReqId(3),
        card_no: CardNo(900),
        purchase_fen: Fen(1_000),
        points: Points(10),
    })
    .await;
    let Message::PointsAuthResult(r) = pos.frame().await else {
        panic!()
    };
    assert_eq!(
        (r.req_id, r.status, r.points_approved, r.points_balance),
        (ReqId(3), AuthStatus::Approved, Points(10), Points(0))
    );
    // The purchase: ¥9 by card, ¥1 in points; the subsidy is 10 % of the ¥9 paid.
    let mut buy = book_purchase(POS, 1, 900, 3, 900);
    buy.points_hold_id = r.hold_id;
    buy.points_used = Points(10);
    pos.send(sign(POS, buy)).await;
    let a = pos.ack().await;
    assert_eq!((a.status, a.subsidy_fen), (TxnStatus::Stored, Fen(90)));
    // The hold is spent: quoting it again is refused.
    let mut twice = buy;
    twice.seq = Seq::new(2).unwrap();
    twice.card_counter = CardCounter(4);
    pos.send(sign(POS, twice)).await;
    assert_eq!(pos.ack().await.reason, Reason::HoldInvalid);
}

/// Defect 1: the 50 % cap holds at use, against the purchase that spends the hold, not
/// only at authorisation: a hold approved for a ¥10 purchase cannot pay 10 points of a
/// 20-fen one. The refused purchase takes nothing from the hold; at exactly 50 % it pays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_pay_at_most_half_of_the_purchase_that_spends_them() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut reader = env.session(&gw, READER).await;
    let mut visit = book_purchase(READER, 1, 901, 1, 0);
    visit.kind = TxnKind::SignIn;
    visit.item = Item::None;
    reader.send(sign_txn(visit)).await;
    assert_eq!(reader.ack().await.points_awarded, Points(10));
    let mut pos = env.session(&gw, POS).await;
    pos.send(PointsAuth {
        req_id: ReqId(1),
        card_no: CardNo(901),
        purchase_fen: Fen(1_000),
        points: Points(10),
    })
    .await;
    let Message::PointsAuthResult(r) = pos.frame().await else {
        panic!()
    };
    assert_eq!(r.status, AuthStatus::Approved);
    // 10 points (100 fen) beside 20 fen by card: 83 % in points. Then 99 fen: just over.
    for (seq, card_part) in [(1, 20), (2, 99)] {
        let mut buy = book_purchase(POS, seq, 901, u32::try_from(seq).unwrap() + 1, card_part);
        buy.points_hold_id = r.hold_id;
        buy.points_used = Points(10);
        pos.send(sign(POS, buy)).await;
        let a = pos.ack().await;
        assert_eq!(
            (a.status, a.reason, a.subsidy_fen),
            (TxnStatus::Rejected, Reason::PointsCapExceeded, Fen(0)),
            "{card_part} fen by card"
        );
    }
    // Exactly half: 100 fen by card, 100 in points. The hold is still there to spend.
    let mut buy = book_purchase(POS, 3, 901, 4, 100);
    buy.points_hold_id = r.hold_id;
    buy.points_used = Points(10);
    pos.send(sign(POS, buy)).await;
    let a = pos.ack().await;
    assert_eq!((a.status, a.subsidy_fen), (TxnStatus::Stored, Fen(10)));
}

fn sign_txn(t: Txn) -> Txn {
    sign(READER, t)
}

use wenxiao_tests::http::post as http_post;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reports_reviews_and_shares_after_a_sign_in() {
    let mut env = TestEnv::sqlite();
    env.config.admin.app_token = "s3cret".to_owned();
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let path = "/v1/points/activities";
    let review = |card: u64, venue: i64| {
        format!(r#"{{"card_no": {card}, "venue_id": {venue}, "kind": "REVIEW"}}"#)
    };
    assert_eq!(
        http_post(admin, path, "wrong", &review(901, 1004)).await.0,
        401
    );
    // No sign-in at the venue today yet.
    let (status, body) = http_post(admin, path, "s3cret", &review(901, 1004)).await;
    assert_eq!(status, 422, "{body}");
    let mut reader = env.session(&gw, READER).await;
    let mut visit = book_purchase(READER, 1, 901, 1, 0);
    visit.kind = TxnKind::SignIn;
    visit.item = Item::None;
    reader.send(sign(READER, visit)).await;
    assert_eq!(reader.ack().await.points_awarded, Points(10));
    let (status, body) = http_post(admin, path, "s3cret", &review(901, 1004)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""points":20"#) && body.contains(r#""balance":30"#),
        "{body}"
    );
    assert_eq!(
        http_post(admin, path, "s3cret", &review(901, 1004)).await.0,
        409
    );
    let share = r#"{"card_no": 901, "venue_id": 1004, "kind": "SHARE"}"#;
    let (status, body) = http_post(admin, path, "s3cret", share).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""balance":40"#), "{body}");
    // A bookstore is not a public venue.
    assert_eq!(
        http_post(admin, path, "s3cret", &review(901, 1001)).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_at_once_never_exceed_the_budget_by_one_fen() {
    let mut env = TestEnv::postgres().await;
    // A month of ¥100 (10,000 fen) against 6 devices × 60 purchases wanting ¥8.80 each.
    let policy = env.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[budget]\nmonthly_cap_fen = 10000\nprogramme_total_fen = 1000000\n",
    )
    .unwrap();
    env.config.policy_path = policy;
    env.config.ingest.writers = 4;
    let gw = env.start();
    let mut tasks = Vec::new();
    let devices = [
        POS,
        POS2,
        MORE_POS[0],
        MORE_POS[1],
        MORE_POS[2],
        MORE_POS[3],
    ];
    for (n, id) in devices.into_iter().enumerate() {
        let mut d = env.session(&gw, id).await;
        tasks.push(tokio::spawn(async move {
            let mut granted = 0i64;
            for seq in 1..=60u64 {
                d.send(book_purchase(
                    id,
                    seq,
                    10_000 * (n as u64 + 1) + seq,
                    1,
                    8_800,
                ))
                .await;
            }
            for _ in 1..=60 {
                let a = d.ack().await;
                assert_eq!(a.status, TxnStatus::Stored);
                assert!(
                    a.subsidy_fen.get() == 880 || a.reason == Reason::BudgetExhausted,
                    "{a:?}"
                );
                granted += a.subsidy_fen.get();
            }
            granted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 10_000);
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let month = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms())
        .unwrap()
        .get()
        / 100;
    assert_eq!(
        store
            .budget_granted(i32::try_from(month).unwrap())
            .await
            .unwrap(),
        Fen(10_000)
    );
}

/// Defect 13: a device disabled in the registry has its open session closed with ERROR
/// DEVICE_DISABLED at the next reload; what it had sent stays stored, and it cannot come
/// back until it is enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_disabled_in_the_registry_is_closed_at_the_next_reload() {
    let mut env = TestEnv::sqlite();
    env.config.registry.reload_interval_ms = 100;
    let gw = env.start();
    let mut pos = env.session(&gw, POS).await;
    pos.send(book_purchase(POS, 1, 950, 1, 8_800)).await;
    assert_eq!(pos.ack().await.status, TxnStatus::Stored);
    // Staff disable the terminal: the registry in the store says so.
    let path = env.path().join("devices-disabled.csv");
    let devices = std::fs::read_to_string(&env.config.registry.devices_path).unwrap();
    std::fs::write(
        &path,
        devices.replace("310100000001,POS,1001,,1", "310100000001,POS,1001,,0"),
    )
    .unwrap();
    let registry =
        wenxiao_gateway::registry::Registry::from_csv(&env.config.registry.merchants_path, &path)
            .unwrap();
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    use wenxiao_gateway::store::Store;
    store.import_registry(&registry).await.unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pos.expect_fatal(ErrorCode::DeviceDisabled),
    )
    .await
    .expect("no DEVICE_DISABLED within 10 s");
    assert_eq!(store.count_txns(POS).await.unwrap(), (1, 0));
    // Another device's session is untouched.
    let mut other = env.session(&gw, POS2).await;
    other.send(book_purchase(POS2, 1, 951, 1, 8_800)).await;
    assert_eq!(other.ack().await.status, TxnStatus::Stored);
}

/// Defect 10 at the gateway: a cap raised in the policy file applies from the next batch
/// after the reload, in the month under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_raised_in_the_policy_file_applies_while_the_gateway_runs() {
    let mut env = TestEnv::sqlite();
    let policy = env.path().join("policy.toml");
    let write = |cap: i64| {
        std::fs::write(
            &policy,
            format!("[budget]\nmonthly_cap_fen = {cap}\nprogramme_total_fen = 1000000\n"),
        )
        .unwrap();
    };
    write(1_000);
    env.config.policy_path = policy.clone();
    env.config.registry.reload_interval_ms = 100;
    let gw = env.start();
    let mut pos = env.session(&gw, POS).await;
    pos.send(book_purchase(POS, 1, 960, 1, 8_800)).await;
    assert_eq!(pos.ack().await.subsidy_fen, Fen(880));
    pos.send(book_purchase(POS, 2, 961, 1, 8_800)).await;
    let cut = pos.ack().await;
    assert_eq!(
        (cut.subsidy_fen, cut.reason),
        (Fen(120), Reason::BudgetExhausted)
    );
    write(5_000);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    pos.send(book_purchase(POS, 3, 962, 1, 8_800)).await;
    let paid = pos.ack().await;
    assert_eq!((paid.subsidy_fen, paid.reason), (Fen(880), Reason::None));
}

/// Defect 11: a statement that hangs (here: a table locked by another session) is bounded
/// — the batch is answered STORE_UNAVAILABLE within the store wait, nothing is lost or
/// stored twice — and
/// `/readyz` says the writers are failing until a batch commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_is_bounded_and_readyz_reports_failing_writers() {
    let mut env = TestEnv::postgres().await;
    env.config.ingest.store_wait_ms = 1_500;
    let gw = env.start();
    let admin_http = gw.admin_addr.unwrap();
    let mut d = env.session(&gw, POS).await;
    d.send(book_purchase(POS, 1, 92, 1, 100)).await;
    assert_eq!(d.ack().await.status, TxnStatus::Stored);
    assert_eq!(http_get(admin_http, "/readyz").await.0, 200);
    // Another session holds the table: every ingest statement would wait for it forever.
    let admin = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;
    admin
        .batch_execute("BEGIN; LOCK TABLE txns IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    d.send(book_purchase(POS, 2, 93, 1, 100)).await;
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        d.expect_fatal(ErrorCode::StoreUnavailable),
    )
    .await
    .expect("the hung batch was not answered");
    let (status, body) = http_get(admin_http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("writer"), "{body}");
    let (_, metrics) = http_get(admin_http, "/metrics").await;
    assert!(
        metrics.contains("wenxiao_ingest_batches_failed_total"),
        "{metrics}"
    );
    admin.batch_execute("ROLLBACK").await.unwrap();
    // The abandoned batch's COMMIT may already have been sent behind its statements, so
    // it may commit once the lock goes: its outcome is unknown to the gateway, which is
    // why it was not acknowledged. The re-send settles it, stored exactly once.
    let mut d = env.session(&gw, POS).await;
    d.send(book_purchase(POS, 2, 93, 1, 100)).await;
    let status = d.ack().await.status;
    assert!(
        matches!(status, TxnStatus::Stored | TxnStatus::Duplicate),
        "{status:?}"
    );
    let rows: i64 = admin
        .query_one(
            "SELECT count(*) FROM txns WHERE device_id = $1 AND seq = 2",
            &[&i64::try_from(POS.0).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    assert_eq!(http_get(admin_http, "/readyz").await.0, 200);
}

/// Defect 5: a device that sends and never reads. Its answers queue up to
/// `session.write_buffer_bytes_max`; past it the session stops reading (TCP pushes back),
/// and when the device still does not read within `session.slow_reader_timeout_ms` it is
/// closed — the gateway does not buffer its answers without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_is_pushed_back_then_closed() {
    let mut env = TestEnv::sqlite();
    env.config.session.write_buffer_bytes_max = 16 * 1024;
    env.config.session.slow_reader_timeout_ms = 1_000;
    let gw = env.start();
    let admin_http = gw.admin_addr.unwrap();
    let mut d = env.session(&gw, POS).await;
    // 1,000 HEARTBEATs per write, each answered with a HEARTBEAT_ACK nobody reads.
    let mut chunk = bytes::BytesMut::new();
    for _ in 0..1_000 {
        Message::Heartbeat(Heartbeat {
            sent_at_ms: UnixMillis(1),
        })
        .encode(&mut chunk);
    }
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..3_000 {
        match tokio::time::timeout(std::time::Duration::from_secs(15), d.try_send_raw(&chunk)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => panic!("a write blocked 15 s: the session was not closed"),
        }
    }
    assert!(
        closed,
        "3,000,000 HEARTBEATs sent in {:?} and the session is still open",
        started.elapsed()
    );
    let (_, metrics) = http_get(admin_http, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("wenxiao_sessions_closed_slow_reader_total") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}
