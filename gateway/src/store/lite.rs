//! The embedded backend: one SQLite file in WAL mode with `synchronous = FULL`, so a
//! commit has reached the disk before it returns. SQLite has one writer at a time, so
//! there is one write connection (every write transaction is `BEGIN IMMEDIATE`: it holds
//! the whole database, which is what PostgreSQL's row locks give the ledger there); reads
//! use a second connection and never block on the writer.
//!
//! A transaction owns its connection through an owned async mutex guard. Statements run
//! in process and are short; they run on the store runtime's thread, inside
//! `block_in_place` where the runtime allows it, so other store tasks move off it.

use super::StoreError;
use super::backend::{Backend, Bulk, Col, Done, Row, Sql, Step, Tx, TxMode, Value};
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Longest a statement waits for a lock held by another connection (another process on
/// the same file: the CLI beside a running gateway).
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Prepared statements kept per connection.
const STATEMENT_CACHE_MAX: usize = 128;

/// The SQLite backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lite {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is synced at every commit, so an answered TXN survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
    Ok(conn)
}

impl Lite {
    /// Opens (creating if needed) the database file and its directory.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Task(format!("create {}: {e}", dir.display())))?;
        }
        let writer = open(path)?;
        let reader = open(path)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Runs blocking SQLite work, letting the runtime move its other tasks off this thread
/// when it can (a multi-threaded runtime).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

impl Backend for Lite {
    type Tx = LiteTx;

    async fn begin(&self, mode: TxMode) -> Result<LiteTx, StoreError> {
        let (conn, begin) = match mode {
            TxMode::Write | TxMode::Snapshot => (&self.writer, Some("BEGIN IMMEDIATE")),
            TxMode::Autocommit => (&self.reader, None),
        };
        let conn = Arc::clone(conn).lock_owned().await;
        if let Some(begin) = begin {
            blocking(|| conn.execute_batch(begin))?;
        }
        Ok(LiteTx {
            conn,
            open: begin.is_some(),
        })
    }

    fn retryable(_: &StoreError) -> bool {
        // One writer: SQLite never aborts a transaction to break a cycle.
        false
    }

    fn schema_text(&self, sql: &str) -> String {
        // The column types SQLite spells differently (an auto-assigned `BIGSERIAL` key is
        // SQLite's rowid); a covering index's included columns become trailing key
        // columns (SQLite has no INCLUDE; the index serves the same reads).
        sql.replace("BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY")
            .replace(") INCLUDE (", ", ")
            .replace("BYTEA", "BLOB")
            .replace("BOOLEAN", "INTEGER")
    }

    fn connections_free(&self) -> usize {
        0
    }
}

/// An open SQLite transaction, holding its connection.
pub struct LiteTx {
    conn: OwnedMutexGuard<Connection>,
    open: bool,
}

impl std::fmt::Debug for LiteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiteTx").field("open", &self.open).finish()
    }
}

impl Drop for LiteTx {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves SQLite to roll back on the next BEGIN's error; the
            // connection stays usable.
            let _ = blocking(|| self.conn.execute_batch("ROLLBACK"));
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn row_values(r: &rusqlite::Row<'_>, n: usize) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(t) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))?
                    .to_owned(),
            ),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            ValueRef::Real(_) => {
                return Err(StoreError::Corrupt(format!(
                    "column {i} holds a floating-point value"
                )));
            }
        });
    }
    Ok(Row(out))
}

/// Runs one prepared statement, appending the rows it returns to `rows`; returns the rows
/// it changed (for a statement with RETURNING, what it changed is what it returned).
fn run(
    conn: &Connection,
    text: &str,
    params: &[Value],
    rows: &mut Vec<Row>,
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(text)?;
    let n = stmt.column_count();
    if n == 0 {
        return Ok(u64::try_from(stmt.execute(rusqlite::params_from_iter(params))?).unwrap_or(0));
    }
    let mut q = stmt.query(rusqlite::params_from_iter(params))?;
    let mut returned = 0_u64;
    while let Some(r) = q.next()? {
        rows.push(row_values(r, n)?);
        returned += 1;
    }
    Ok(returned)
}

/// Runs a bulk statement's single-row text once per row of `cols`, appending what it
/// returns to `rows`; returns the rows it changed.
fn run_bulk(
    conn: &Connection,
    sql: &Bulk,
    cols: &[Col],
    rows: &mut Vec<Row>,
) -> Result<u64, StoreError> {
    let n = cols.first().map_or(0, Col::len);
    let mut params = Vec::with_capacity(cols.len());
    let mut changed = 0;
    for i in 0..n {
        params.clear();
        params.extend(cols.iter().map(|c| c.value(i)));
        changed += run(conn, sql.lite, &params, rows)?;
    }
    Ok(changed)
}

impl Tx for LiteTx {
    async fn query(&mut self, sql: &Sql, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let text = sql.lite_text();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        blocking(|| run(&self.conn, &text, params, &mut rows))?;
        Ok(rows)
    }

    async fn execute(&mut self, sql: &Sql, params: &[Value]) -> Result<u64, StoreError> {
        let text = sql.lite_text();
        if text.is_empty() {
            return Ok(0);
        }
        blocking(|| run(&self.conn, &text, params, &mut Vec::new()))
    }

    async fn bulk(&mut self, sql: &Bulk, cols: &[Col]) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        blocking(|| run_bulk(&self.conn, sql, cols, &mut rows))?;
        Ok(rows)
    }

    async fn pipeline(&mut self, steps: &[Step<'_>]) -> Result<Vec<Done>, StoreError> {
        // In process there is no round trip to save: one after the other.
        blocking(|| {
            steps
                .iter()
                .map(|step| {
                    let mut done = Done::default();
                    done.changed = match step {
                        Step::One(sql, params) => {
                            let text = sql.lite_text();
                            if text.is_empty() {
                                0
                            } else {
                                run(&self.conn, &text, params, &mut done.rows)?
                            }
                        }
                        Step::Bulk(sql, cols) => run_bulk(&self.conn, sql, cols, &mut done.rows)?,
                    };
                    Ok(done)
                })
                .collect()
        })
    }

    async fn commit_after(mut self, steps: &[Step<'_>]) -> Result<Vec<Done>, StoreError> {
        let done = self.pipeline(steps).await?;
        self.commit().await?;
        Ok(done)
    }

    async fn batch(&mut self, text: &str) -> Result<(), StoreError> {
        Ok(blocking(|| self.conn.execute_batch(text))?)
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        if self.open {
            blocking(|| self.conn.execute_batch("COMMIT"))?;
            self.open = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_covering_index_becomes_trailing_key_columns() {
        let lite = Lite::open(&std::env::temp_dir().join(format!(
            "wenxiao-schema-{}-{}.db",
            std::process::id(),
            crate::clock::now_ms()
        )))
        .unwrap();
        assert_eq!(
            lite.schema_text(
                "CREATE INDEX d ON credits (business_date, status) INCLUDE (amount_fen);"
            ),
            "CREATE INDEX d ON credits (business_date, status, amount_fen);"
        );
        std::fs::remove_file(lite.path()).unwrap();
    }
}
