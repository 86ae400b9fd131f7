//! A rolling restart behind the shipped HAProxy configuration (`config/haproxy.cfg`, with
//! this test's addresses), run with Debian's haproxy: two gateway nodes on one
//! PostgreSQL, a device connected through the proxy. The node serving it is stopped: the
//! device gets DRAIN, reconnects once through the proxy, lands on the other node, and
//! nothing acknowledged is lost or doubled. The stopped node comes back and the proxy
//! sends it devices again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wenxiao_gateway::store::StoreAudit;
use wenxiao_gateway::store::cluster::ClusterStore;
use wenxiao_protocol::*;
use wenxiao_tests::device::{Recv, book_purchase};
use wenxiao_tests::env::{POS, TestEnv};

use wenxiao_tests::process::{KillOnDrop as Proxy, free_port};

/// The shipped configuration with this test's listener and nodes.
fn config(port: u16, nodes: &[(std::net::SocketAddr, std::net::SocketAddr)]) -> String {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/haproxy.cfg"),
    )
    .unwrap();
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if t.starts_with("server ") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains("option httpchk GET /readyz"), "{out}");
    for (i, (device, admin)) in nodes.iter().enumerate() {
        out.push_str(&format!(
            "    server node{i} {device} check port {}\n",
            admin.port()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_moves_the_device_once_and_loses_nothing() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "haproxy is not installed (CI installs Debian's haproxy)"
        );
        eprintln!("haproxy test not run: install haproxy");
        return;
    }
    let mut env = TestEnv::postgres().await.small_pool();
    env.config.session.drain_reconnect_after_ms = 100;
    env.config.session.drain_spread_ms = 200;
    let mut configs = Vec::new();
    for name in ["roll-a", "roll-b"] {
        let mut c = env.config.clone();
        c.server.node_id = name.into();
        configs.push(c);
    }
    let mut nodes: Vec<Option<wenxiao_gateway::server::GatewayHandle>> = configs
        .iter()
        .map(|c| Some(wenxiao_gateway::server::spawn(c.clone()).unwrap()))
        .collect();
    let addrs: Vec<_> = nodes
        .iter()
        .map(|n| {
            let n = n.as_ref().unwrap();
            (n.device_addr, n.admin_addr.unwrap())
        })
        .collect();
    // A node restarted on its own ports again.
    for (c, (device, admin)) in configs.iter_mut().zip(&addrs) {
        c.server.listen_addr = *device;
        c.admin.listen_addr = *admin;
    }
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, config(port, &addrs)).unwrap();
    let _proxy = Proxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Through the proxy, once it listens and checks both nodes up.
    let until = Instant::now() + Duration::from_secs(20);
    let mut d = loop {
        match tokio::time::timeout(Duration::from_secs(2), env.connect_at_checked(proxy, POS)).await
        {
            Ok(Some(mut d)) => {
                d.hello().await;
                break d;
            }
            _ => {
                assert!(Instant::now() < until, "no session through haproxy");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    for seq in 1..=20 {
        d.send(book_purchase(POS, seq, 9_000 + seq, 1, 5_000)).await;
        assert_eq!(d.ack().await.status, TxnStatus::Stored);
    }
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let first = store.lease(POS).await.unwrap().unwrap().node_id;
    let serving = usize::from(first == "roll-b");

    // Stop the node serving the device: it drains.
    let node = nodes[serving].take().unwrap();
    let stopping = tokio::task::spawn_blocking(move || node.shutdown());
    match d.recv().await {
        Recv::Frame(Message::Drain(_)) => {}
        other => panic!("expected DRAIN, got {other:?}"),
    }
    drop(d);
    // The device reconnects once, after reconnect_after_ms, through the proxy.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut reconnects = 0;
    let mut d = loop {
        reconnects += 1;
        assert!(reconnects <= 20, "the proxy never reached the other node");
        match env.connect_at_checked(proxy, POS).await {
            Some(mut d) => match d.try_hello().await {
                Some(w) => {
                    assert_eq!(w.stored_seq, Seq::new(20));
                    break d;
                }
                None => tokio::time::sleep(Duration::from_millis(250)).await,
            },
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    println!("reconnect attempts through haproxy: {reconnects}");
    assert_eq!(reconnects, 1, "the device had to try more than once");
    let now_on = store.lease(POS).await.unwrap().unwrap().node_id;
    assert_ne!(now_on, first);
    for seq in 21..=40 {
        d.send(book_purchase(POS, seq, 9_000 + seq, 1, 5_000)).await;
        assert_eq!(d.ack().await.status, TxnStatus::Stored);
    }
    stopping.await.unwrap().unwrap();

    // The stopped node comes back on its ports; the proxy checks it up again.
    nodes[serving] = Some(wenxiao_gateway::server::spawn(configs[serving].clone()).unwrap());
    let audit = store.audit().await.unwrap();
    let rows = audit.devices.iter().find(|x| x.device_id == POS).unwrap();
    assert_eq!(
        (rows.rows, rows.min_seq, rows.max_seq, rows.stored),
        (40, 1, 40, 40)
    );
    drop(d);
    for n in nodes.into_iter().flatten() {
        n.shutdown().unwrap();
    }
}
