//! Defect 12: a gateway never starts by accident with the development master keys, nor
//! on defaults because its configuration file was not found, and keys never print.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use wenxiao_gateway::config::{DEV_LOAD_MASTER_KEY_HEX, DEV_PURCHASE_MASTER_KEY_HEX};
use wenxiao_gateway::server;
use wenxiao_tests::env::TestEnv;

#[test]
fn the_development_keys_are_refused_unless_the_config_allows_them() {
    let env = TestEnv::sqlite();
    let mut config = env.config.clone();
    config.keys.allow_development_keys = false;
    let Err(err) = server::spawn(config.clone()) else {
        panic!("started with the development keys");
    };
    let text = format!("{err:#}");
    assert!(text.contains("development master keys"), "{text}");
    assert!(text.contains("keys.allow_development_keys"), "{text}");
    // Other keys start.
    config.keys.purchase_master_key_hex = "11".repeat(32);
    config.keys.load_master_key_hex = "22".repeat(32);
    server::spawn(config).unwrap().shutdown().unwrap();
}

#[test]
fn keys_are_redacted_in_debug() {
    let config = TestEnv::sqlite().config;
    let shown = format!("{config:?}");
    for key in [DEV_PURCHASE_MASTER_KEY_HEX, DEV_LOAD_MASTER_KEY_HEX] {
        assert!(!shown.contains(key), "a master key printed");
        assert!(!shown.contains(&key[..16]), "part of a master key printed");
    }
}

#[test]
fn no_configuration_file_is_an_error_that_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-under-test"))
        .current_dir(dir.path())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config/gateway.toml"), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("--config"), "{stderr}");
}

/// Defect 11: a row the store cannot read back (a corrupted or foreign database) is an
/// error, never a panic, on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_an_error_not_a_panic() {
    use wenxiao_gateway::registry::MerchantId;
    use wenxiao_gateway::store::{IngestCtx, IngestTxn, Proposal, Store};
    use wenxiao_protocol::*;
    let row = IngestTxn {
        device_id: DeviceId(7),
        merchant_id: Some(MerchantId(1001)),
        txn: wenxiao_tests::device::book_purchase(DeviceId(7), 1, 5, 1, 100),
        proposal: Proposal::Store {
            reason: Reason::None,
            subsidy_fen: Fen(10),
            points_awarded: Points(0),
        },
        received_at_ms: 1,
        business_date: BusinessDate::new(20261120).unwrap(),
        lease_epoch: None,
    };
    let ctx = IngestCtx {
        monthly_cap: Fen(1_000_000),
        programme_cap: Fen(1_000_000),
        shard: 0,
        sign_in_points: Points(10),
    };
    // SQLite: a kind no TXN has.
    let (lite, dir) = wenxiao_tests::fresh_sqlite_store().await;
    lite.ingest(&[row], &ctx).await.unwrap();
    rusqlite::Connection::open(dir.path().join("wenxiao.db"))
        .unwrap()
        .execute("UPDATE txns SET kind = 99", [])
        .unwrap();
    let err = lite.ingest(&[row], &ctx).await.unwrap_err();
    assert!(err.to_string().contains("kind"), "{err}");
    // PostgreSQL: a status out of range, and a NULL where a number must be.
    let url = wenxiao_tests::fresh_pg_url().await;
    let pg = wenxiao_gateway::store::PgStore::connect(&url, 2, 5_000).unwrap();
    pg.migrate().await.unwrap();
    pg.ingest(&[row], &ctx).await.unwrap();
    let client = wenxiao_tests::pg_client(&url).await;
    client
        .batch_execute("UPDATE txns SET status = 42")
        .await
        .unwrap();
    let err = pg.ingest(&[row], &ctx).await.unwrap_err();
    assert!(err.to_string().contains("status"), "{err}");
    client
        .batch_execute("ALTER TABLE txns ALTER COLUMN points_awarded DROP NOT NULL; UPDATE txns SET status = 1, points_awarded = NULL")
        .await
        .unwrap();
    assert!(pg.ingest(&[row], &ctx).await.is_err());
}
