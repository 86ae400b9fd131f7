//! The credit load exchange end to end over real TLS, with the connection cut at every
//! step of the load (after the offer, after LOAD_INIT, after LOAD_AUTH, after the card
//! wrote, after CREDIT_RESULT): each credit is loaded exactly once and no card gets money
//! it is not owed. The card is emulated with the contract's MACs and the development keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use wenxiao_gateway::store::{Store, StoreAudit};
use wenxiao_protocol::*;
use wenxiao_tests::card::Card;
use wenxiao_tests::device::{TestDevice, book_purchase};
use wenxiao_tests::env::{POS, POS2, TestEnv};

async fn present(d: &mut TestDevice, card: &Card) -> Vec<OfferedCredit> {
    d.send(CardPresented {
        req_id: ReqId(1),
        card_no: card.no,
        online_seq: OnlineSeq(card.online_seq),
        balance_fen: card.balance,
    })
    .await;
    loop {
        match d.frame().await {
            Message::CreditOffer(o) => return o.credits.as_slice().to_vec(),
            Message::CreditResultAck(_) | Message::LoadAuth(_) => continue,
            other => panic!("expected CREDIT_OFFER, got {other:?}"),
        }
    }
}

async fn load_auth(d: &mut TestDevice, card: &Card, credit: CreditId, amount: Fen) -> LoadAuth {
    d.send(card.load_init(credit, amount, d.id)).await;
    match d.frame().await {
        Message::LoadAuth(a) => a,
        other => panic!("expected LOAD_AUTH, got {other:?}"),
    }
}

async fn result_ack(d: &mut TestDevice, r: CreditResult) -> CreditResultAck {
    d.send(r).await;
    match d.frame().await {
        Message::CreditResultAck(a) => a,
        other => panic!("expected CREDIT_RESULT_ACK, got {other:?}"),
    }
}

/// Loads the one offered credit from start to finish.
async fn load_fully(d: &mut TestDevice, card: &mut Card) -> CreditId {
    let offered = present(d, card).await;
    assert_eq!(offered.len(), 1, "{offered:?}");
    let (credit, amount) = (offered[0].credit_id, offered[0].amount_fen);
    let auth = load_auth(d, card, credit, amount).await;
    assert_eq!(auth.status, AuthStatus::Approved, "{auth:?}");
    let tac = card.apply(&auth, amount, d.id);
    let ack = result_ack(d, card.result(credit, CreditOutcome::Loaded, tac)).await;
    assert_eq!(ack.status, ResultStatus::Recorded);
    credit
}

#[derive(Debug, Clone, Copy)]
/// Where the connection is cut: after which step of the load.
enum Cut {
    Offer,
    LoadInit,
    LoadAuth,
    CardWrote,
    Result,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credit_loads_exactly_once_whatever_the_cut() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let cuts = [
        Cut::Offer,
        Cut::LoadInit,
        Cut::LoadAuth,
        Cut::CardWrote,
        Cut::Result,
    ];
    // Each card buys a ¥88 book: it is owed ¥8.80.
    let mut pos = env.session(&gw, POS).await;
    for (i, _) in cuts.iter().enumerate() {
        let seq = i as u64 + 1;
        pos.send(book_purchase(POS, seq, 5_000 + seq, 1, 8_800))
            .await;
        assert_eq!(pos.ack().await.subsidy_fen, Fen(880));
    }
    drop(pos);
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let today = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    store
        .clear_day(today, 10, wenxiao_gateway::clock::day_end_ms(today) + 1)
        .await
        .unwrap();
    let mut d = env.session(&gw, POS).await;
    // Not approved yet: nothing to offer.
    assert!(present(&mut d, &Card::new(5_001)).await.is_empty());
    assert!(store.approve_day(today, 2).await.unwrap());

    for (i, cut) in cuts.into_iter().enumerate() {
        let mut card = Card::new(5_000 + i as u64 + 1);
        let start = card.balance;
        let mut d = env.session(&gw, POS).await;
        let offered = present(&mut d, &card).await;
        assert_eq!(offered.len(), 1, "{cut:?}");
        let (credit, amount) = (offered[0].credit_id, offered[0].amount_fen);
        // Bound to this POS: the other one is offered nothing meanwhile.
        let mut other = env.session(&gw, POS2).await;
        assert!(present(&mut other, &card).await.is_empty(), "{cut:?}");
        drop(other);
        match cut {
            Cut::Offer => {}
            Cut::LoadInit => d.send(card.load_init(credit, amount, POS)).await,
            Cut::LoadAuth => {
                let auth = load_auth(&mut d, &card, credit, amount).await;
                assert_eq!(auth.status, AuthStatus::Approved);
            }
            Cut::CardWrote | Cut::Result => {
                let auth = load_auth(&mut d, &card, credit, amount).await;
                let tac = card.apply(&auth, amount, POS);
                if matches!(cut, Cut::Result) {
                    d.send(card.result(credit, CreditOutcome::Loaded, tac))
                        .await;
                }
            }
        }
        drop(d); // the cut
        let mut d = env.session(&gw, POS).await;
        match cut {
            Cut::Offer | Cut::LoadInit | Cut::LoadAuth => {
                // The card never wrote: the load is offered again and completes once.
                assert_eq!(load_fully(&mut d, &mut card).await, credit, "{cut:?}");
            }
            Cut::CardWrote => {
                // The card shows the load: settled, nothing more offered; the late
                // result is a duplicate.
                assert!(present(&mut d, &card).await.is_empty(), "{cut:?}");
                let ack = result_ack(
                    &mut d,
                    card.result(credit, CreditOutcome::Loaded, Bytes4::ZERO),
                )
                .await;
                assert_eq!(ack.status, ResultStatus::Duplicate);
            }
            Cut::Result => {
                assert!(present(&mut d, &card).await.is_empty(), "{cut:?}");
            }
        }
        // Exactly the amount owed, once; and nothing more on later visits.
        assert_eq!(card.balance, Fen(start.get() + 880), "{cut:?}");
        assert!(present(&mut d, &card).await.is_empty(), "{cut:?}");
        assert_eq!(
            store.credit_state(credit).await.unwrap(),
            Some((3, Fen(880))),
            "{cut:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_loads_are_refused() {
    let env = TestEnv::sqlite();
    let gw = env.start();
    let mut pos = env.session(&gw, POS).await;
    pos.send(book_purchase(POS, 1, 6_001, 1, 8_800)).await;
    pos.ack().await;
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let today = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    store
        .clear_day(today, 10, wenxiao_gateway::clock::day_end_ms(today) + 1)
        .await
        .unwrap();
    store.approve_day(today, 2).await.unwrap();
    let mut card = Card::new(6_001);
    let offered = present(&mut pos, &card).await;
    let (credit, amount) = (offered[0].credit_id, offered[0].amount_fen);
    // A LOAD_INIT claiming a bigger amount fails MAC1 (the card signed the real one).
    let mut forged = card.load_init(credit, amount, POS);
    forged.mac1 = card.load_init(credit, Fen(88_000), POS).mac1;
    pos.send(forged).await;
    let Message::LoadAuth(a) = pos.frame().await else {
        panic!()
    };
    assert_eq!(
        (a.status, a.reason, a.mac2),
        (AuthStatus::Declined, Reason::BadMac, Bytes4::ZERO)
    );
    // Another card cannot load it.
    let stranger = Card::new(6_002);
    let a = load_auth(&mut pos, &stranger, credit, amount).await;
    assert_eq!(a.reason, Reason::CreditNotYours);
    // A result with a forged TAC is refused and the credit stays to be settled by the card.
    let auth = load_auth(&mut pos, &card, credit, amount).await;
    let tac = card.apply(&auth, amount, POS);
    let mut bad = tac;
    bad.0[0] ^= 1;
    let ack = result_ack(&mut pos, card.result(credit, CreditOutcome::Loaded, bad)).await;
    assert_eq!(
        (ack.status, ack.reason),
        (ResultStatus::Rejected, Reason::BadMac)
    );
    let ack = result_ack(&mut pos, card.result(credit, CreditOutcome::Loaded, tac)).await;
    assert_eq!(ack.status, ResultStatus::Recorded);
    let ack = result_ack(
        &mut pos,
        card.result(CreditId(42), CreditOutcome::Loaded, tac),
    )
    .await;
    assert_eq!(ack.reason, Reason::UnknownCredit);
}
