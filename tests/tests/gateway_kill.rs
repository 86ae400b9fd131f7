//! SIGKILL of the gateway process under load, restart, devices re-send from their
//! journals: every TXN ever acknowledged STORED is in the store exactly once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::Duration;
use wenxiao_gateway::store::StoreAudit;
use wenxiao_protocol::*;
use wenxiao_tests::device::{Recv, TestDevice, book_purchase, hello};
use wenxiao_tests::env::{POS, POS2, TestEnv};

/// TXNs each device sends before waiting for their acks.
const WINDOW_TXNS: u64 = 32;
/// How long the first gateway runs under load before it is killed.
const LOAD_BEFORE_KILL_MS: u64 = 700;

fn start_process(config: &std::path::Path) -> Child {
    wenxiao_tests::process::start(env!("CARGO_BIN_EXE_gateway-under-test"), config, &[])
}

/// A device's journal: everything it ever sent, and what was acknowledged.
#[derive(Default)]
struct Journal {
    sent: BTreeMap<u64, Txn>,
    stored_before_kill: BTreeSet<u64>,
    acked: BTreeSet<u64>,
}

async fn pump(
    env: &TestEnv,
    addr: std::net::SocketAddr,
    id: DeviceId,
    j: &mut Journal,
    card_base: u64,
) {
    let cert = env.device_cert(id);
    let Ok(mut d) = TestDevice::connect(addr, &env.ca_pem(), Some(&cert), id).await else {
        return;
    };
    if d.try_send(hello(id, DeviceKind::Pos)).await.is_err()
        || !matches!(d.recv().await, Recv::Frame(Message::Welcome(_)))
    {
        return;
    }
    let mut next = 1;
    loop {
        for _ in 0..WINDOW_TXNS {
            let t = book_purchase(id, next, card_base + next, 1, 100);
            j.sent.insert(next, t);
            next += 1;
            if d.try_send(t).await.is_err() {
                return;
            }
        }
        for _ in 0..WINDOW_TXNS {
            match d.recv().await {
                Recv::Frame(Message::TxnAck(a)) => {
                    assert_eq!(a.status, TxnStatus::Stored);
                    j.stored_before_kill.insert(a.seq.get());
                    j.acked.insert(a.seq.get());
                }
                Recv::Frame(other) => panic!("{other:?}"),
                Recv::Closed(_) => return,
            }
        }
    }
}

async fn resend_all(env: &TestEnv, addr: std::net::SocketAddr, id: DeviceId, j: &mut Journal) {
    let mut d = env.session_at(addr, id).await;
    let stored_seq = Seq::wire(d.welcome.unwrap().stored_seq);
    // WELCOME's stored_seq covers at least the acknowledged prefix 1..=k.
    let acked_prefix = (1..)
        .take_while(|s| j.stored_before_kill.contains(s))
        .count();
    assert!(
        stored_seq >= u64::try_from(acked_prefix).unwrap(),
        "{id}: stored_seq {stored_seq} < {acked_prefix}"
    );
    for (&seq, &t) in &j.sent {
        d.send(t).await;
        let a = d.ack().await;
        assert_eq!(a.seq.get(), seq);
        if j.stored_before_kill.contains(&seq) {
            // Acknowledged STORED before the kill: it must have survived, so it is a
            // DUPLICATE now — never stored a second time.
            assert_eq!(a.status, TxnStatus::Duplicate, "seq {seq} of {id} was lost");
        } else {
            assert!(matches!(a.status, TxnStatus::Stored | TxnStatus::Duplicate));
        }
        j.acked.insert(seq);
    }
}

async fn kill_under_load_and_restart(env: TestEnv) {
    let config = env.write_config_file(wenxiao_tests::process::free_port());
    let mut gateway = start_process(&config);
    let addr: std::net::SocketAddr = {
        let text = std::fs::read_to_string(&config).unwrap();
        let line = text.lines().find(|l| l.starts_with("listen_addr")).unwrap();
        line.split('"').nth(1).unwrap().parse().unwrap()
    };
    let (mut j1, mut j2) = (Journal::default(), Journal::default());
    let load = async {
        tokio::join!(
            pump(&env, addr, POS, &mut j1, 1_000_000),
            pump(&env, addr, POS2, &mut j2, 2_000_000)
        )
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(LOAD_BEFORE_KILL_MS)).await;
        gateway.kill().unwrap(); // SIGKILL
        gateway.wait().unwrap();
    };
    tokio::join!(load, killer);
    assert!(!j1.stored_before_kill.is_empty() && !j2.stored_before_kill.is_empty());

    let mut gateway = start_process(&config);
    resend_all(&env, addr, POS, &mut j1).await;
    resend_all(&env, addr, POS2, &mut j2).await;
    // SIGTERM: a clean drain and exit 0.
    let pid = i32::try_from(gateway.id()).unwrap();
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(gateway.wait().unwrap().success());

    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    for (id, j) in [(POS, &j1), (POS2, &j2)] {
        let (stored, rejected) = store.count_txns(id).await.unwrap();
        assert_eq!(
            stored,
            u64::try_from(j.sent.len()).unwrap(),
            "{id}: every txn exactly once"
        );
        assert_eq!(rejected, 0);
        assert_eq!(j.acked.len(), j.sent.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_doubles_nothing_postgres() {
    kill_under_load_and_restart(TestEnv::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_doubles_nothing_sqlite() {
    kill_under_load_and_restart(TestEnv::sqlite()).await;
}
