//! Credits of SIM cards are pushed to their operator's OTA endpoint the moment they are
//! approved, at most `max_in_flight` at a time, and again when the endpoint reconnects;
//! the endpoint loads them through the same exchange. Both stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;
use wenxiao_gateway::store::{Store, StoreAudit};
use wenxiao_protocol::*;
use wenxiao_tests::card::Card;
use wenxiao_tests::device::{TestDevice, book_purchase};
use wenxiao_tests::env::{POS, TestEnv};

const OTA: DeviceId = DeviceId(310_300_000_001);
const SIM: u64 = 8_601_000_000_000_001;

async fn push(d: &mut TestDevice) -> CreditPush {
    match d.frame().await {
        Message::CreditPush(p) => p,
        other => panic!("expected CREDIT_PUSH, got {other:?}"),
    }
}

async fn pushes_reach_the_endpoint_at_once(mut env: TestEnv) {
    env.config.session.max_in_flight = 2;
    env.config.credits.release_poll_interval_ms = 20;
    let gw = env.start();
    let mut pos = env.session(&gw, POS).await;
    for (i, card) in [SIM, SIM + 1, SIM + 2, 5_001].into_iter().enumerate() {
        pos.send(book_purchase(POS, i as u64 + 1, card, 1, 8_800))
            .await;
        pos.ack().await;
    }
    let mut ota = env.session(&gw, OTA).await;
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let today = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    store
        .clear_day(today, 10, wenxiao_gateway::clock::day_end_ms(today) + 1)
        .await
        .unwrap();
    // Approval (the audit step, another connection to the store) releases the credits.
    let approved = Instant::now();
    assert!(store.approve_day(today, 2).await.unwrap());
    let first = push(&mut ota).await;
    println!("release → first CREDIT_PUSH: {:?}", approved.elapsed());
    let second = push(&mut ota).await;
    // Only SIM cards of this operator, oldest credit first; two in flight at most.
    assert_eq!(
        (first.card_no, second.card_no),
        (CardNo(SIM), CardNo(SIM + 1))
    );
    assert_eq!(first.amount_fen, Fen(880));

    // The endpoint loads the first; its result frees a slot and the third is pushed.
    let mut card = Card::new(SIM);
    ota.send(card.load_init(first.credit_id, first.amount_fen, OTA))
        .await;
    let Message::LoadAuth(auth) = ota.frame().await else {
        panic!()
    };
    assert_eq!(auth.status, AuthStatus::Approved);
    let tac = card.apply(&auth, first.amount_fen, OTA);
    ota.send(card.result(first.credit_id, CreditOutcome::Loaded, tac))
        .await;
    let mut third = None;
    for _ in 0..2 {
        match ota.frame().await {
            Message::CreditResultAck(a) => assert_eq!(a.status, ResultStatus::Recorded),
            Message::CreditPush(p) => third = Some(p),
            other => panic!("{other:?}"),
        }
    }
    let third = third.unwrap();
    assert_eq!(third.card_no, CardNo(SIM + 2));
    assert_eq!(
        store.credit_state(first.credit_id).await.unwrap(),
        Some((3, Fen(880)))
    );

    // The endpoint drops and comes back: what it held is pushed again.
    drop(ota);
    let mut ota = env.session(&gw, OTA).await;
    let mut again = vec![
        push(&mut ota).await.credit_id,
        push(&mut ota).await.credit_id,
    ];
    again.sort_unstable();
    let mut held = vec![second.credit_id, third.credit_id];
    held.sort_unstable();
    assert_eq!(again, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_sqlite() {
    pushes_reach_the_endpoint_at_once(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_postgres() {
    pushes_reach_the_endpoint_at_once(TestEnv::postgres().await).await;
}
