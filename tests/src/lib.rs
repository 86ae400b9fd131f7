//! Shared helpers of the cross-crate integration tests in `tests/tests/`.
//!
//! PostgreSQL: tests use `DATABASE_URL` when set, else
//! `postgres://postgres@127.0.0.1:5432/postgres`; `scripts/test` makes sure one of them
//! answers. Each test gets a fresh schema, so tests run in parallel without sharing rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use wenxiao_gateway::store::{PgStore, SqliteStore, Store};

/// The PostgreSQL server tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The benchmark examples' `n`-th command-line argument as a number, else `default`.
pub fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map_or(default, |a| a.parse().unwrap())
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

/// A URL whose connections use a new, empty schema of the test database.
pub async fn fresh_pg_url() -> String {
    let base = database_url();
    let schema = format!(
        "wxtest_{}_{}_{}_{}",
        host_tag(),
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
    let driver = tokio::spawn(conn);
    drop_dead_schemas(&client).await;
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// This machine's boot and process-id namespace, as 8 hex digits: a process id means
/// the same process only among schemas with the same tag ("0" where they cannot be read).
fn host_tag() -> String {
    use std::hash::{Hash, Hasher};
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let ns = std::fs::read_link("/proc/self/ns/pid");
    match (boot, ns) {
        (Ok(boot), Ok(ns)) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (boot.trim(), ns).hash(&mut h);
            format!("{:08x}", h.finish() & 0xffff_ffff)
        }
        _ => "0".to_owned(),
    }
}

/// Drops, once per process, the schemas that test processes of this machine (same boot,
/// same process-id namespace: see [`host_tag`]) left behind and that are gone, so the
/// test database does not grow with every run. Schemas of other machines, or of a live
/// process, are not touched; a drop that waits for a lock over a second is given up.
async fn drop_dead_schemas(client: &tokio_postgres::Client) {
    SWEPT
        .get_or_init(|| async {
            let tag = host_tag();
            if tag == "0" {
                return;
            }
            let Ok(rows) = client
                .query(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                    &[&format!("wxtest\\_{tag}\\_%")],
                )
                .await
            else {
                return;
            };
            let _ = client.batch_execute("SET lock_timeout = '1s'").await;
            for row in rows {
                let name: String = row.get(0);
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    continue;
                }
                let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
                let Some(pid) = pid else { continue };
                if pid == std::process::id()
                    || std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    continue;
                }
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
            }
            let _ = client.batch_execute("RESET lock_timeout").await;
        })
        .await;
}

/// A plain client of `url` (its connection driven in the background), for a test that
/// reaches behind the gateway: writing history, tampering, taking tables away.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A migrated PostgreSQL store in a fresh schema.
pub async fn fresh_pg_store() -> PgStore {
    let store = PgStore::connect(&fresh_pg_url().await, 8, 5_000).unwrap();
    store.migrate().await.unwrap();
    store
}

/// A migrated SQLite store in a new temporary directory (kept alive by the returned guard).
pub async fn fresh_sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("wenxiao.db")).unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

pub mod card;
pub mod cli;
pub mod device;
pub mod env;
pub mod faultproxy;
pub mod http;
pub mod journal;
pub mod pgcluster;
pub mod process;
