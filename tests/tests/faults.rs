//! Faults on several gateway nodes sharing one PostgreSQL, each ending with the invariant
//! check: every TXN a device ever had acknowledged STORED is in the store exactly once,
//! nothing is counted twice, and every device is back in session within a bound the test
//! prints. Devices keep journals (`wenxiao_tests::journal`), reconnect to the next node
//! when their connection ends, and re-send what was not acknowledged.
//!
//! - SIGKILL of one node of three under load, 20 times in a row;
//! - the network between the gateway and PostgreSQL cut, then slowed;
//! - the network between the devices and the gateway cut, then slowed;
//! - clock skew between two nodes (one runs ten minutes ahead);
//! - PostgreSQL (a server of the test's own) stopped with `-m immediate` and restarted;
//! - the primary killed and its synchronous standby promoted, the gateway following it
//!   through a multi-host URL with `target_session_attrs=read-write`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wenxiao_gateway::store::StoreAudit;
use wenxiao_protocol::*;
use wenxiao_tests::env::TestEnv;
use wenxiao_tests::faultproxy::{Fault, FaultProxy};
use wenxiao_tests::journal::Journal;

/// The test registry's active POS terminals at its bookstore.
const DEVICES: [u64; 6] = [
    310_100_000_001,
    310_100_000_002,
    310_100_000_014,
    310_100_000_011,
    310_100_000_012,
    310_100_000_013,
];
/// How long devices may still take, after the faults end, to have everything answered.
const SETTLE_S: u64 = 60;

fn journals() -> Vec<Journal> {
    DEVICES
        .iter()
        .enumerate()
        .map(|(i, id)| Journal::new(DeviceId(*id), 1_000_000 * (u64::try_from(i).unwrap() + 1)))
        .collect()
}

/// Drives every journal against `addrs` while `faults` runs, then lets them settle;
/// returns what `faults` did.
async fn drive_during<T, F: std::future::Future<Output = T>>(
    env: &TestEnv,
    addrs: &[SocketAddr],
    js: &mut [Journal],
    faults: F,
) -> T {
    let sending = AtomicBool::new(true);
    let settle = Duration::from_secs(SETTLE_S);
    let devices = futures_util::future::join_all(
        js.iter_mut().map(|j| j.drive(env, addrs, &sending, settle)),
    );
    let faults = async {
        let out = faults.await;
        sending.store(false, Ordering::SeqCst);
        out
    };
    tokio::join!(devices, faults).1
}

/// The invariant: the store holds every journal's TXNs exactly once, none rejected.
async fn check(env: &TestEnv, js: &[Journal], what: &str) {
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let mut sent = 0;
    for j in js {
        let (stored, rejected) = store.count_txns(j.id).await.unwrap();
        assert_eq!(
            stored,
            u64::try_from(j.sent.len()).unwrap(),
            "{what}: {} sent {} TXNs, the store holds {stored}",
            j.id,
            j.sent.len()
        );
        assert_eq!(rejected, 0, "{what}: {}", j.id);
        assert!(j.unacked().is_empty(), "{what}: {}", j.id);
        sent += j.sent.len();
    }
    let gap = js.iter().map(|j| j.longest_gap).max().unwrap_or_default();
    let sessions: u32 = js.iter().map(|j| j.sessions).sum();
    println!(
        "{what}: {sent} TXNs from {} devices, each once in the store; {sessions} sessions; \
         every device back in session within {} ms",
        js.len(),
        gap.as_millis()
    );
}

/// A node's configuration file, on `port`.
fn node_config(env: &TestEnv, port: u16, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(env.write_config_file(port)).unwrap();
    let path = env.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &std::path::Path, envs: &[(&str, &str)]) -> Child {
    wenxiao_tests::process::start(env!("CARGO_BIN_EXE_gateway-under-test"), config, envs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_node_of_three_twenty_times_loses_and_doubles_nothing() {
    let env = TestEnv::postgres().await.small_pool();
    let ports: Vec<u16> = (0..3)
        .map(|_| wenxiao_tests::process::free_port())
        .collect();
    let configs: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| node_config(&env, *p, &format!("node-{i}")))
        .collect();
    let mut nodes: Vec<Child> = configs.iter().map(|c| start(c, &[])).collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let mut js = journals();
    let killer = async {
        for round in 0..20usize {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let i = round % 3;
            nodes[i].kill().unwrap(); // SIGKILL
            nodes[i].wait().unwrap();
            let config = configs[i].clone();
            nodes[i] = tokio::task::spawn_blocking(move || start(&config, &[]))
                .await
                .unwrap();
        }
        nodes
    };
    let mut nodes = drive_during(&env, &addrs, &mut js, killer).await;
    for n in &mut nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    check(&env, &js, "20 SIGKILLs of one node of three").await;
}

/// `env`'s PostgreSQL URL with its host and port replaced by `proxy`'s.
fn through(url: &str, proxy: SocketAddr) -> String {
    let at = url.find('@').map_or(0, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    format!("{}{proxy}{}", &url[..at], &url[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_to_postgres_cut_then_slow_loses_and_doubles_nothing() {
    let mut env = TestEnv::postgres().await.small_pool();
    let target: SocketAddr = {
        let cfg: tokio_postgres::Config = env.config.store.postgres_url.parse().unwrap();
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        format!("127.0.0.1:{port}").parse().unwrap()
    };
    let proxy = FaultProxy::start(target).await;
    // The gateway's pool and its event listener both go through the proxy.
    env.config.store.postgres_url = through(&env.config.store.postgres_url, proxy.addr);
    env.config.ingest.store_wait_ms = 2_000;
    let gw = env.start();
    let mut js = journals();
    let faults = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.set(Fault::Cut);
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        proxy.set(Fault::DelayMs(30));
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        proxy.set(Fault::Cut);
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.set(Fault::None);
        tokio::time::sleep(Duration::from_millis(800)).await;
    };
    drive_during(&env, &[gw.device_addr], &mut js, faults).await;
    gw.shutdown().unwrap();
    // Checked over a direct connection.
    env.config.store.postgres_url = through(&env.config.store.postgres_url, target);
    check(
        &env,
        &js,
        "gateway–PostgreSQL cut 3 s, slowed 30 ms, cut again",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_to_the_devices_cut_then_slow_loses_and_doubles_nothing() {
    let env = TestEnv::postgres().await.small_pool();
    let (ga, gb) = {
        let mut a = env.config.clone();
        a.server.node_id = "net-a".into();
        let mut b = env.config.clone();
        b.server.node_id = "net-b".into();
        (
            wenxiao_gateway::server::spawn(a).unwrap(),
            wenxiao_gateway::server::spawn(b).unwrap(),
        )
    };
    let pa = FaultProxy::start(ga.device_addr).await;
    let pb = FaultProxy::start(gb.device_addr).await;
    let mut js = journals();
    let faults = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            pa.set(Fault::Cut);
            tokio::time::sleep(Duration::from_millis(600)).await;
            pa.set(Fault::DelayMs(20));
            pb.set(Fault::Cut);
            tokio::time::sleep(Duration::from_millis(600)).await;
            pa.set(Fault::None);
            pb.set(Fault::DelayMs(20));
        }
        pb.set(Fault::None);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drive_during(&env, &[pa.addr, pb.addr], &mut js, faults).await;
    ga.shutdown().unwrap();
    gb.shutdown().unwrap();
    check(
        &env,
        &js,
        "devices–gateway cuts and 20 ms delays on two nodes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_between_nodes_loses_and_doubles_nothing() {
    let env = TestEnv::postgres().await.small_pool();
    let ports: Vec<u16> = (0..2)
        .map(|_| wenxiao_tests::process::free_port())
        .collect();
    let ahead = node_config(&env, ports[0], "skew-ahead");
    let behind = node_config(&env, ports[1], "skew-behind");
    // Ten minutes ahead, and four minutes behind.
    let mut a = start(&ahead, &[("WENXIAO_TEST_CLOCK_OFFSET_MS", "600000")]);
    let mut b = start(&behind, &[("WENXIAO_TEST_CLOCK_OFFSET_MS", "-240000")]);
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let mut js = journals();
    // Each device moves between the skewed nodes at every reconnect.
    let faults = async {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(a.id().to_string())
                .status();
            a.wait().unwrap();
            let cfg = ahead.clone();
            a = tokio::task::spawn_blocking(move || {
                start(&cfg, &[("WENXIAO_TEST_CLOCK_OFFSET_MS", "600000")])
            })
            .await
            .unwrap();
        }
    };
    drive_during(&env, &addrs, &mut js, faults).await;
    for n in [&mut a, &mut b] {
        let _ = n.kill();
        let _ = n.wait();
    }
    check(
        &env,
        &js,
        "two nodes 14 minutes apart, one restarted 4 times",
    )
    .await;
}

/// A server of the test's own, or `None` (the test says why) where PostgreSQL's binaries
/// are not installed, outside CI.
fn own_server(conf: &str) -> Option<wenxiao_tests::pgcluster::PgCluster> {
    if wenxiao_tests::pgcluster::bin_dir().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL's server binaries are required in CI"
        );
        eprintln!("not run: PostgreSQL's server binaries (initdb) are not installed");
        return None;
    }
    Some(wenxiao_tests::pgcluster::PgCluster::init(conf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_immediately_and_restarted_loses_and_doubles_nothing() {
    let Some(pg) = own_server("") else {
        return;
    };
    let mut env = TestEnv::postgres_at(pg.url());
    env.config.ingest.store_wait_ms = 2_000;
    let gw = env.start();
    let mut js = journals();
    let faults = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        // A crash: no checkpoint, what was committed comes back from the WAL.
        pg.stop("immediate");
        // Longer than the writers' store wait: batches are answered STORE_UNAVAILABLE
        // (never acknowledged) and re-sent.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        pg.start();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    };
    drive_during(&env, &[gw.device_addr], &mut js, faults).await;
    gw.shutdown().unwrap();
    check(&env, &js, "PostgreSQL stopped -m immediate and restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_and_its_synchronous_standby_promoted_loses_nothing() {
    // Synchronous: a commit returns once the standby has the WAL, so nothing
    // acknowledged is only on the primary when it dies.
    let Some(primary) = own_server("synchronous_standby_names = '*'\nsynchronous_commit = on\n")
    else {
        return;
    };
    // The standby's copy of the configuration must not wait for a standby of its own
    // once promoted (it would hang every commit).
    let standby =
        wenxiao_tests::pgcluster::PgCluster::standby_of(&primary, "synchronous_standby_names = ''");
    // Wait until the standby streams synchronously.
    let (c, conn) = tokio_postgres::connect(&primary.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while c
        .query(
            "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
            &[],
        )
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < until,
            "the standby is not synchronous"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut env = TestEnv::postgres_at(url);
    env.config.ingest.store_wait_ms = 2_000;
    let gw = env.start();
    let mut js = journals();
    let faults = async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        primary.stop("immediate");
        standby.promote().await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    };
    drive_during(&env, &[gw.device_addr], &mut js, faults).await;
    gw.shutdown().unwrap();
    check(&env, &js, "primary killed, synchronous standby promoted").await;
}
