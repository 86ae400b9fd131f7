//! The audit log's hash chain, on both stores: blacklist changes and case steps append
//! rows in their own transactions; `verify_audit` walks them; a row changed or removed
//! behind the gateway's back is found, by its seq.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wenxiao_gateway::audit::Verdict;
use wenxiao_gateway::store::risk::{
    CaseAction, CaseStep, NewReport, ReportOutcome, RiskStore, Subject,
};
use wenxiao_gateway::store::{HotlistChange, Store};
use wenxiao_protocol::{BusinessDate, CardNo};

/// Five rows: two blacklist changes, a report's case assigned and confirmed (the
/// confirmation is also a hot-list change).
async fn write_rows<S: Store + RiskStore>(store: &S) {
    for card in [11_u64, 12] {
        store
            .change_hotlist(HotlistChange {
                add: vec![(CardNo(card), "test".to_owned())],
                remove: Vec::new(),
                source: "cli add".to_owned(),
                now_ms: 1_000,
                keep_versions: 10,
            })
            .await
            .unwrap();
    }
    let ReportOutcome::Filed { case_id, .. } = store
        .file_report(NewReport {
            reporter: "r".to_owned(),
            subject: Subject::Card(CardNo(13)),
            text: "resold".to_owned(),
            at_ms: 2_000,
            business_date: BusinessDate::new(20_261_201).unwrap(),
            per_day_max: 5,
        })
        .await
        .unwrap()
    else {
        panic!("report refused");
    };
    for action in [CaseAction::Assign { to: "ana".into() }, CaseAction::Confirm] {
        store
            .step_case(CaseStep {
                case_id,
                action,
                actor: "ana".to_owned(),
                reason: "checked".to_owned(),
                now_ms: 3_000,
                keep_versions: 10,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_removed_row_breaks_the_chain_sqlite() {
    let (store, dir) = wenxiao_tests::fresh_sqlite_store().await;
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Verdict::Intact { rows: 0 }
    );
    write_rows(&store).await;
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Verdict::Intact { rows: 5 }
    );
    let db = rusqlite::Connection::open(dir.path().join("wenxiao.db")).unwrap();
    db.execute(
        "UPDATE audit_log SET detail = '{\"added\":0,\"removed\":0}' WHERE seq = 2",
        [],
    )
    .unwrap();
    assert!(
        matches!(
            store.verify_audit().await.unwrap(),
            Verdict::Broken { seq: 2, .. }
        ),
        "a changed row"
    );
    db.execute("DELETE FROM audit_log WHERE seq = 2", [])
        .unwrap();
    match store.verify_audit().await.unwrap() {
        Verdict::Broken { seq: 2, reason } => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("a removed row: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_removed_row_breaks_the_chain_postgres() {
    let url = wenxiao_tests::fresh_pg_url().await;
    let store = wenxiao_gateway::store::PgStore::connect(&url, 4, 5_000).unwrap();
    store.migrate().await.unwrap();
    write_rows(&store).await;
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Verdict::Intact { rows: 5 }
    );
    let client = wenxiao_tests::pg_client(&url).await;
    // The last row's actor rewritten, hash left alone.
    client
        .execute("UPDATE audit_log SET actor = 'bob' WHERE seq = 5", &[])
        .await
        .unwrap();
    match store.verify_audit().await.unwrap() {
        Verdict::Broken { seq: 5, reason } => assert!(reason.contains("hash"), "{reason}"),
        other => panic!("a changed row: {other:?}"),
    }
    // The walk names the first row that does not hold.
    client
        .execute("UPDATE audit_log SET hash = 'x' WHERE seq = 3", &[])
        .await
        .unwrap();
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        Verdict::Broken { seq: 3, .. }
    ));
}
