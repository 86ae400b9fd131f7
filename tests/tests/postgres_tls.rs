//! The store over TLS: a PostgreSQL server of the test's own with a certificate the test
//! makes, which refuses plain connections from TCP. The gateway connects with
//! `sslmode=require` and the test's CA (its pool and its event listener), and the server
//! reports those connections encrypted; without the CA, with another CA, or with a plain
//! URL, it does not start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wenxiao_protocol::*;
use wenxiao_tests::device::book_purchase;
use wenxiao_tests::env::{POS, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_postgres_over_tls_with_the_ca_it_is_given_and_only_then() {
    if wenxiao_tests::pgcluster::bin_dir().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL's server binaries are required in CI"
        );
        eprintln!("not run: PostgreSQL's server binaries (initdb) are not installed");
        return;
    }
    let pg = wenxiao_tests::pgcluster::PgCluster::init("");
    let ca = wenxiao_gateway::pki::DevCa::generate("postgres test CA").unwrap();
    let cert = ca.issue_server(&["127.0.0.1"]).unwrap();
    pg.put_file("server.crt", &cert.cert_pem, 0o644);
    pg.put_file("server.key", &cert.key_pem, 0o600);
    pg.prepend_hba("hostnossl all all 127.0.0.1/32 reject\n");
    pg.reconfigure("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("postgres-ca.pem");
    std::fs::write(&ca_path, &ca.pem().cert_pem).unwrap();
    let other = wenxiao_gateway::pki::DevCa::generate("another CA").unwrap();
    let other_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_path, &other.pem().cert_pem).unwrap();

    let tls_url = format!("{}?sslmode=require", pg.url());
    let mut env = TestEnv::postgres_at(tls_url.clone());
    // Plain: the server refuses it.
    env.config.store.postgres_url = pg.url();
    let e = wenxiao_gateway::server::spawn(env.config.clone()).unwrap_err();
    assert!(
        format!("{e:#}").contains("no encryption") || format!("{e:#}").contains("reject"),
        "{e:#}"
    );
    // TLS asked for without a CA: refused before connecting.
    env.config.store.postgres_url = tls_url.clone();
    let e = wenxiao_gateway::server::spawn(env.config.clone()).unwrap_err();
    assert!(format!("{e:#}").contains("postgres_ca_cert_path"), "{e:#}");
    // The wrong CA: the server's certificate is not trusted.
    env.config.store.postgres_ca_cert_path = Some(other_path);
    let e = wenxiao_gateway::server::spawn(env.config.clone()).unwrap_err();
    assert!(
        format!("{e:#}").to_lowercase().contains("certificate"),
        "{e:#}"
    );

    // The right one.
    env.config.store.postgres_ca_cert_path = Some(ca_path);
    env.config.server.node_id = "tls-node".into();
    let gw = env.start();
    let mut d = env.session(&gw, POS).await;
    d.send(book_purchase(POS, 1, 9_001, 1, 5_000)).await;
    assert_eq!(d.ack().await.status, TxnStatus::Stored);
    // The server saw the pool's and the listener's connections encrypted.
    let admin = format!(
        "host={} port={} user=postgres dbname=postgres",
        pg_socket(&pg),
        pg.port
    );
    let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = c
            .query(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s ON s.pid = a.pid \
                 WHERE a.client_addr IS NOT NULL AND a.backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap();
        let listener = rows
            .iter()
            .any(|r| r.get::<_, String>(0) == "wenxiao-events tls-node");
        assert!(
            rows.iter().all(|r| r.get::<_, bool>(1)),
            "a plain connection"
        );
        if listener && rows.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{} connections",
            rows.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(d);
    gw.shutdown().unwrap();
}

/// The server's socket directory (local connections are not TCP, so not refused).
fn pg_socket(pg: &wenxiao_tests::pgcluster::PgCluster) -> String {
    pg.socket_dir().display().to_string()
}
