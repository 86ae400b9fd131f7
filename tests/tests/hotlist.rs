//! The hot list over real TLS sessions, on both stores: full lists and deltas, chunking,
//! acknowledgements and their record, re-sending on reconnect, one update at a time per
//! session, the bulk import through the CLI, and the store's version rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use wenxiao_gateway::server;
use wenxiao_gateway::store::{AnyStore, HotlistChange, Store, StoreAudit};
use wenxiao_protocol::*;
use wenxiao_tests::device::{Recv, TestDevice, book_purchase, hello};
use wenxiao_tests::env::{KIOSK, POS, POS2, READER, TestEnv};

const OTA: DeviceId = DeviceId(310_300_000_001);

fn change(add: &[u64], remove: &[u64]) -> HotlistChange {
    HotlistChange {
        add: add
            .iter()
            .map(|c| (CardNo(*c), "test".to_owned()))
            .collect(),
        remove: remove.iter().map(|c| CardNo(*c)).collect(),
        source: "test".to_owned(),
        now_ms: wenxiao_gateway::clock::now_ms(),
        keep_versions: 1_000,
    }
}

async fn store_of(env: &TestEnv) -> AnyStore {
    let s = server::open_store(&env.config).unwrap();
    s.migrate().await.unwrap();
    s
}

/// HELLO declaring `version`, then WELCOME.
async fn hello_at(d: &mut TestDevice, kind: DeviceKind, version: u32) -> Welcome {
    let mut h = hello(d.id, kind);
    h.hotlist_version = HotlistVersion(version);
    d.send(h).await;
    match d.frame().await {
        Message::Welcome(w) => w,
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

/// Reads one update's chunks (checking they agree and `last` comes once, at the end):
/// (version, base, adds, removes, chunk count).
async fn update(d: &mut TestDevice) -> (u32, u32, Vec<u64>, Vec<u64>, usize) {
    let mut first: Option<(u32, u32)> = None;
    let (mut add, mut remove, mut chunks) = (Vec::new(), Vec::new(), 0);
    loop {
        match d.frame().await {
            Message::HotlistUpdate(u) => {
                let vb = (u.version().get(), u.base_version().get());
                assert_eq!(*first.get_or_insert(vb), vb, "chunks of one update differ");
                add.extend(u.add().iter().map(|c| c.get()));
                remove.extend(u.remove().iter().map(|c| c.get()));
                chunks += 1;
                if u.last() {
                    let (v, b) = first.unwrap();
                    return (v, b, add, remove, chunks);
                }
            }
            other => panic!("expected HOTLIST_UPDATE, got {other:?}"),
        }
    }
}

/// A HEARTBEAT whose answer must be the next frame: nothing else was queued.
async fn nothing_pending(d: &mut TestDevice) {
    d.send(Heartbeat {
        sent_at_ms: UnixMillis(42),
    })
    .await;
    match d.frame().await {
        Message::HeartbeatAck(a) => assert_eq!(a.sent_at_ms, UnixMillis(42)),
        other => panic!("expected HEARTBEAT_ACK, got {other:?}"),
    }
}

async fn ack(d: &mut TestDevice, version: u32) {
    d.send(Message::HotlistAck(HotlistAck {
        version: HotlistVersion(version),
    }))
    .await;
}

async fn recorded(store: &AnyStore, device: DeviceId, version: u32) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if store.device_hotlist_version(device).await.unwrap() == Some(version) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{device}: ack of version {version} not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn terminals_follow_the_list(mut env: TestEnv) {
    env.config.hotlist.chunk_cards_max = 4;
    env.config.hotlist.poll_interval_ms = 50;
    let store = store_of(&env).await;
    let cards: Vec<u64> = (1..=10).map(|c| 8_000 + c).collect();
    let v1 = store.change_hotlist(change(&cards, &[])).await.unwrap();
    assert_eq!(v1.version, Some(1));
    let gw = env.start();

    // Version 0: the full list, 10 cards in chunks of 4, acknowledged and recorded.
    let mut pos = env.connect(&gw, POS).await;
    assert_eq!(
        hello_at(&mut pos, DeviceKind::Pos, 0).await.hotlist_version,
        HotlistVersion(1)
    );
    let (v, base, add, remove, chunks) = update(&mut pos).await;
    assert_eq!((v, base, chunks), (1, 0, 3));
    assert_eq!(add, cards);
    assert!(remove.is_empty());
    // TXNs are served while the ack is outstanding.
    pos.send(book_purchase(POS, 1, 7_001, 1, 8_800)).await;
    assert_eq!(pos.ack().await.status, TxnStatus::Stored);
    // An ack of a version never sent is ignored, not fatal.
    ack(&mut pos, 7).await;
    nothing_pending(&mut pos).await;
    ack(&mut pos, 1).await;
    recorded(&store, POS, 1).await;

    // A change is pushed at once as a delta from the acknowledged version.
    store
        .change_hotlist(change(&[9_001], &[8_003]))
        .await
        .unwrap();
    let (v, base, add, remove, _) = update(&mut pos).await;
    assert_eq!((v, base), (2, 1));
    assert_eq!((add, remove), (vec![9_001], vec![8_003]));
    ack(&mut pos, 2).await;
    recorded(&store, POS, 2).await;
    nothing_pending(&mut pos).await;

    // A kiosk one version behind gets the delta; unacknowledged, it is sent again after
    // a reconnect.
    let mut kiosk = env.connect(&gw, KIOSK).await;
    assert_eq!(
        hello_at(&mut kiosk, DeviceKind::Kiosk, 1)
            .await
            .hotlist_version,
        HotlistVersion(2)
    );
    assert_eq!(update(&mut kiosk).await.1, 1);
    drop(kiosk);
    let mut kiosk = env.connect(&gw, KIOSK).await;
    hello_at(&mut kiosk, DeviceKind::Kiosk, 1).await;
    let (v, base, add, remove, _) = update(&mut kiosk).await;
    assert_eq!((v, base, add, remove), (2, 1, vec![9_001], vec![8_003]));
    ack(&mut kiosk, 2).await;
    recorded(&store, KIOSK, 2).await;

    // A sign-in reader ahead of the store (another deployment's list) gets the full list.
    let mut reader = env.connect(&gw, READER).await;
    hello_at(&mut reader, DeviceKind::SigninReader, 99).await;
    let (v, base, add, _, _) = update(&mut reader).await;
    let mut want: BTreeSet<u64> = cards.iter().copied().collect();
    want.remove(&8_003);
    want.insert(9_001);
    assert_eq!((v, base), (2, 0));
    assert_eq!(add.into_iter().collect::<BTreeSet<_>>(), want);

    // An OTA endpoint screens no cards: told the version, sent nothing.
    let mut ota = env.connect(&gw, OTA).await;
    assert_eq!(
        hello_at(&mut ota, DeviceKind::OtaEndpoint, 0)
            .await
            .hotlist_version,
        HotlistVersion(2)
    );
    nothing_pending(&mut ota).await;

    // One update at a time: a terminal that has not acknowledged version 2 is not sent 3
    // until it does, and then gets the delta from 2.
    let mut pos2 = env.connect(&gw, POS2).await;
    hello_at(&mut pos2, DeviceKind::Pos, 0).await;
    assert_eq!(update(&mut pos2).await.0, 2);
    store.change_hotlist(change(&[9_002], &[])).await.unwrap();
    let (v, base, add, _, _) = update(&mut pos).await;
    assert_eq!((v, base, add), (3, 2, vec![9_002]));
    nothing_pending(&mut pos2).await;
    ack(&mut pos2, 2).await;
    let (v, base, add, _, _) = update(&mut pos2).await;
    assert_eq!((v, base, add), (3, 2, vec![9_002]));
    ack(&mut pos2, 3).await;
    recorded(&store, POS2, 3).await;
    drop((pos, pos2, reader, ota));
    gw.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_follow_the_list_sqlite() {
    terminals_follow_the_list(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_follow_the_list_postgres() {
    terminals_follow_the_list(TestEnv::postgres().await).await;
}

/// The store's version rules: a change that changes nothing is no version; deltas are
/// kept for the configured number of versions; the full list is the blacklist.
async fn store_versions(env: TestEnv) {
    let store = store_of(&env).await;
    assert_eq!(store.hotlist_head().await.unwrap().version, 0);
    let mut c = change(&[1, 2, 3], &[]);
    c.keep_versions = 2;
    assert_eq!(
        store.change_hotlist(c.clone()).await.unwrap().version,
        Some(1)
    );
    // Listing listed cards and removing unlisted ones changes nothing.
    let mut same = change(&[1, 2], &[77]);
    same.keep_versions = 2;
    let nothing = store.change_hotlist(same).await.unwrap();
    assert_eq!(
        (nothing.version, nothing.added, nothing.removed),
        (None, 0, 0)
    );
    for (i, card) in [4_u64, 5, 6].iter().enumerate() {
        let mut c = change(&[*card], &[1]);
        c.keep_versions = 2;
        let done = store.change_hotlist(c).await.unwrap();
        assert_eq!(done.version, Some(u32::try_from(i).unwrap() + 2));
    }
    let head = store.hotlist_head().await.unwrap();
    assert_eq!((head.version, head.delta_floor), (4, 2));
    // Versions 3 and 4 are kept; 2 and below are not.
    let kept = store.hotlist_changes(2, 4).await.unwrap().unwrap();
    assert_eq!(
        kept.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(kept[0].changes, vec![(CardNo(5), true)]);
    assert!(store.hotlist_changes(1, 4).await.unwrap().is_none());
    let (head, cards) = store.hotlist_full().await.unwrap();
    assert_eq!(head.version, 4);
    assert_eq!(
        cards,
        [2, 3, 4, 5, 6].map(CardNo).to_vec(),
        "the list is the blacklist"
    );
    // A blacklisted card's purchase earns no subsidy.
    let mut d = change(&[], &[2, 3, 4, 5, 6]);
    d.keep_versions = 2;
    let gone = store.change_hotlist(d).await.unwrap();
    assert_eq!((gone.version, gone.removed), (Some(5), 5));
    assert!(store.hotlist_full().await.unwrap().1.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_versions_sqlite() {
    store_versions(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_versions_postgres() {
    store_versions(TestEnv::postgres().await).await;
}

fn cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gateway-under-test"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A 200,000-card import through the CLI is one version, and a terminal at version 0
/// gets all of it in chunks within the frame bound; a file with one bad line lists
/// nothing.
async fn bulk_import(env: TestEnv) {
    let config = env.write_config_file(0);
    let file = env.path().join("hot.csv");
    let mut text = String::from("card_no,reason\n");
    for c in 0..200_000_u64 {
        text.push_str(&format!("{},verified report\n", 6_000_000 + c * 7));
    }
    let mut bad = text.clone();
    bad.push_str("12x,oops\n");
    std::fs::write(&file, &bad).unwrap();
    let out = cli(&config, &["blacklist", "import", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 200002"), "{err}");
    let store = store_of(&env).await;
    assert_eq!(
        store.hotlist_head().await.unwrap().version,
        0,
        "nothing listed"
    );

    std::fs::write(&file, &text).unwrap();
    let out = cli(&config, &["blacklist", "import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hot-list version 1 (200000 listed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let gw = env.start();
    let mut pos = env.connect(&gw, POS).await;
    hello_at(&mut pos, DeviceKind::Pos, 0).await;
    let (v, base, add, _, chunks) = update(&mut pos).await;
    assert_eq!((v, base, add.len()), (1, 0, 200_000));
    assert_eq!(
        chunks,
        200_000_usize.div_ceil(limits::HOTLIST_CARDS_PER_FRAME_MAX)
    );
    assert!(add.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
    ack(&mut pos, 1).await;
    recorded(&store, POS, 1).await;
    drop(pos);
    gw.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_sqlite() {
    bulk_import(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_postgres() {
    bulk_import(TestEnv::postgres().await).await;
}

/// A terminal that never reads while it is sent a hot list of 1,000,000 cards (8 MB, far
/// past the socket buffers): the session's chunks wait for room beside its other work,
/// and once the device has not read for `session.slow_reader_timeout_ms` the session is
/// closed and counted. Another terminal is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_that_never_reads_its_list_is_closed() {
    let mut env = TestEnv::postgres().await;
    env.config.session.slow_reader_timeout_ms = 1_000;
    let store = store_of(&env).await;
    let cards: Vec<u64> = (0..1_000_000_u64).map(|c| 5_000_000 + c).collect();
    store.change_hotlist(change(&cards, &[])).await.unwrap();
    let gw = env.start();
    let admin = gw.admin_addr.unwrap();
    let mut silent = env.connect(&gw, POS2).await;
    silent.send(hello(POS2, DeviceKind::Pos)).await;
    // The other terminal, already current, keeps being answered.
    let mut pos = env.connect(&gw, POS).await;
    hello_at(&mut pos, DeviceKind::Pos, 1).await;
    let until = Instant::now() + Duration::from_secs(30);
    let mut seq = 1;
    loop {
        pos.send(book_purchase(POS, seq, 7_000 + seq, 1, 100)).await;
        assert_eq!(pos.ack().await.status, TxnStatus::Stored);
        seq += 1;
        let (_, metrics) = wenxiao_tests::http::get(admin, "/metrics", None).await;
        if metrics.lines().any(|l| {
            l.starts_with("wenxiao_sessions_closed_slow_reader_total") && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the terminal that never reads was not closed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((silent, pos));
    gw.shutdown().unwrap();
}

/// Two terminals that read nothing while they are sent a hot list of 1,000,000 cards past
/// a 16 KiB write budget and the socket buffers. The list's two chunks in flight leave the
/// budget 6 bytes of room, so every other answer waits for room. Then they read.
/// - The one that sent 200 HEARTBEATs meanwhile gets the whole list in order and every
///   HEARTBEAT answered once, in the order sent.
/// - The one that sent a bad frame gets an unbroken prefix of the list and then the fatal
///   ERROR, which waited for room, and nothing after it: the close waits behind the
///   frames still waiting for room instead of dropping them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_waiting_for_room_keep_their_order_and_the_close_waits_behind_them() {
    const HEARTBEATS: i64 = 200;
    let mut env = TestEnv::sqlite();
    env.config.session.write_buffer_bytes_max = 16 * 1024;
    env.config.session.slow_reader_timeout_ms = 20_000;
    let store = store_of(&env).await;
    let cards: Vec<u64> = (0..1_000_000_u64).map(|c| 5_000_000 + c).collect();
    store.change_hotlist(change(&cards, &[])).await.unwrap();
    let gw = env.start();
    let mut talker = env.connect(&gw, POS).await;
    hello_at(&mut talker, DeviceKind::Pos, 0).await;
    let mut failer = env.connect(&gw, POS2).await;
    hello_at(&mut failer, DeviceKind::Pos, 0).await;
    // The gateway pushes the list until the sockets and the budget are full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=HEARTBEATS {
        talker
            .send(Heartbeat {
                sent_at_ms: UnixMillis(n),
            })
            .await;
    }
    failer.send_raw(b"XX\x01\x02\0\0\0\x08").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut listed = Vec::new();
    let error = loop {
        match failer.recv().await {
            Recv::Frame(Message::HotlistUpdate(u)) => {
                assert_eq!(u.version().get(), 1);
                listed.extend(u.add().iter().map(|c| c.get()));
            }
            Recv::Frame(Message::Error(e)) => break e,
            other => panic!("expected the list or ERROR, got {other:?}"),
        }
    };
    assert_eq!(error.code, ErrorCode::MalformedFrame, "{}", error.message);
    assert!(error.fatal);
    assert!(
        matches!(failer.recv().await, Recv::Closed(_)),
        "a frame came after the fatal ERROR"
    );
    assert_eq!(
        listed[..],
        cards[..listed.len()],
        "the list is not an unbroken prefix"
    );
    // The rest of the list was still to come: the ERROR did wait behind the list.
    assert!(
        listed.len() < cards.len(),
        "the whole list went out before the ERROR: nothing waited for room"
    );

    let (mut listed, mut answered) = (Vec::new(), Vec::new());
    let (mut chunks_before_first_answer, mut chunks_after_first_answer) = (0_usize, 0_usize);
    let (mut last, want) = (false, usize::try_from(HEARTBEATS).unwrap());
    while !last || answered.len() < want {
        match talker.frame().await {
            Message::HotlistUpdate(u) => {
                assert!(!last, "a chunk after the last");
                assert_eq!(u.version().get(), 1);
                listed.extend(u.add().iter().map(|c| c.get()));
                last = u.last();
                if answered.is_empty() {
                    chunks_before_first_answer += 1;
                } else {
                    chunks_after_first_answer += 1;
                }
            }
            Message::HeartbeatAck(a) => answered.push(a.sent_at_ms.0),
            other => panic!("expected the list or HEARTBEAT_ACKs, got {other:?}"),
        }
    }
    assert_eq!(
        answered,
        (1..=HEARTBEATS).collect::<Vec<_>>(),
        "HEARTBEATs answered out of order or not once each"
    );
    assert!(
        listed == cards,
        "the list arrived incomplete or out of order"
    );
    // The answers came in the middle of the list: they waited for room behind it.
    assert!(
        chunks_before_first_answer > 0 && chunks_after_first_answer > 0,
        "{chunks_before_first_answer} chunks before the first answer, \
         {chunks_after_first_answer} after it"
    );
    ack(&mut talker, 1).await;
    nothing_pending(&mut talker).await;
    recorded(&store, POS, 1).await;
    gw.shutdown().unwrap();
}
