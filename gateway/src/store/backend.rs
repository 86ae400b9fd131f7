//! The small interface each database implements (public only so the ledger's type can
//! name its backend; nothing outside the store uses it) for the ledger: transactions, statements
//! given as SQL text (data, not code), and rows read through typed accessors that return
//! errors instead of panicking.
//!
//! The ledger (`store/ledger/`) is written once over this interface. A backend differs
//! from another only in how it spells SQL and how it holds connections:
//! - SQL is written in PostgreSQL's spelling with `$n` parameters; the embedded backend
//!   rewrites the few differences mechanically ([`Sql::lite_text`]). Where the dialects
//!   truly differ (set-based statements over arrays, advisory locks, NOTIFY), a statement
//!   carries both texts.
//! - A *bulk* statement ([`Bulk`]) takes columns of values. PostgreSQL runs it once with
//!   one array per column (`unnest`); SQLite runs its single-row text once per row, in
//!   process, and concatenates what the rows return.

use super::StoreError;
use std::future::Future;

/// How a transaction is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// A read-write transaction (READ COMMITTED on PostgreSQL; SQLite's single writer).
    Write,
    /// A read-write transaction over one snapshot (REPEATABLE READ on PostgreSQL): every
    /// statement sees the same committed data. SQLite's single writer already does.
    Snapshot,
    /// No transaction: each statement stands alone (reads that need no snapshot).
    Autocommit,
}

/// One SQL statement: its PostgreSQL text and, when SQLite's differs by more than the
/// mechanical rewrite, SQLite's.
#[derive(Debug, Clone, Copy)]
pub struct Sql {
    /// PostgreSQL's text, `$n` parameters.
    pub(crate) pg: &'static str,
    /// SQLite's text if it is not the rewrite of `pg`; `Some("")` means "nothing to run".
    pub(crate) lite: Option<&'static str>,
}

impl Sql {
    /// A statement both databases run as written (after the mechanical rewrite).
    pub(crate) const fn both(pg: &'static str) -> Self {
        Self { pg, lite: None }
    }

    /// A statement with a text of its own for SQLite.
    pub(crate) const fn each(pg: &'static str, lite: &'static str) -> Self {
        Self {
            pg,
            lite: Some(lite),
        }
    }

    /// A statement only PostgreSQL runs (SQLite's single writer makes it unnecessary).
    pub(crate) const fn pg_only(pg: &'static str) -> Self {
        Self { pg, lite: Some("") }
    }

    /// A statement only SQLite runs.
    pub(crate) const fn lite_only(lite: &'static str) -> Self {
        Self {
            pg: "",
            lite: Some(lite),
        }
    }

    /// SQLite's text: its own, or the rewrite of PostgreSQL's — `$n` becomes `?n`, the
    /// two-argument `LEAST`/`GREATEST` become SQLite's scalar `MIN`/`MAX`, row locks go
    /// (one writer at a time holds the whole database).
    pub(crate) fn lite_text(&self) -> String {
        match self.lite {
            Some(t) => t.to_owned(),
            None => lite_rewrite(self.pg),
        }
    }
}

/// The mechanical PostgreSQL → SQLite rewrite of [`Sql::lite_text`].
pub(crate) fn lite_rewrite(pg: &str) -> String {
    let mut out = String::with_capacity(pg.len());
    let mut chars = pg.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out.replace(" FOR UPDATE SKIP LOCKED", "")
        .replace(" FOR UPDATE", "")
        .replace(" FOR SHARE", "")
        .replace("LEAST(", "MIN(")
        .replace("GREATEST(", "MAX(")
}

/// A statement over columns of values, run for every row of them (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// PostgreSQL's set-based text: `$n` is the n-th column as an array.
    pub(crate) pg: &'static str,
    /// SQLite's single-row text: `?n` is the n-th column's value in that row.
    pub(crate) lite: &'static str,
}

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer; PostgreSQL narrows it to the parameter's declared type, checked.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
int_value!(i64, i32, i16, u32, u16, u8);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a parameter list: `params![a, b, c]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::backend::Value::from($v)),*][..]
    };
}
pub(crate) use params;

/// A column of a bulk statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Col {
    /// Integers (PostgreSQL narrows them to the declared array type, checked).
    Int(Vec<i64>),
    /// Integers or NULL.
    OptInt(Vec<Option<i64>>),
    /// Text.
    Text(Vec<String>),
}

impl Col {
    pub(crate) fn len(&self) -> usize {
        match self {
            Col::Int(v) => v.len(),
            Col::OptInt(v) => v.len(),
            Col::Text(v) => v.len(),
        }
    }

    /// Row `i`'s value.
    pub(crate) fn value(&self, i: usize) -> Value {
        match self {
            Col::Int(v) => v.get(i).copied().map_or(Value::Null, Value::Int),
            Col::OptInt(v) => v.get(i).copied().flatten().map_or(Value::Null, Value::Int),
            Col::Text(v) => v.get(i).cloned().map_or(Value::Null, Value::Text),
        }
    }
}

/// One statement of a [`Tx::pipeline`], with its values.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// A statement and its parameters.
    One(&'a Sql, Vec<Value>),
    /// A bulk statement over columns (all of one length; none, and it is not run).
    Bulk(&'a Bulk, Vec<Col>),
}

/// What one statement of a pipeline did: the rows it returned and the rows it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// The rows it returned.
    pub(crate) rows: Vec<Row>,
    /// The rows it changed (for a statement with RETURNING: the rows it returned).
    pub(crate) changed: u64,
}

/// One row read back. Accessors check the column's type and range and name the column in
/// their error: a row never panics, whatever the database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("row has no column {i}")))
    }

    /// Column `i` as an integer, NULL allowed.
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            Value::Bool(b) => Ok(Some(i64::from(*b))),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: integer expected, found {other:?}"
            ))),
        }
    }

    /// Column `i` as text, NULL allowed.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    /// Column `i` as a non-NULL integer.
    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} is NULL")))
    }

    /// Column `i` narrowed to `T`, checked.
    pub(crate) fn get<T: TryFrom<i64>>(&self, i: usize) -> Result<T, StoreError> {
        let v = self.int(i)?;
        T::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {i} = {v} out of range")))
    }

    /// Column `i` narrowed to `T`, NULL allowed.
    pub(crate) fn opt<T: TryFrom<i64>>(&self, i: usize) -> Result<Option<T>, StoreError> {
        self.opt_int(i)?
            .map(|v| {
                T::try_from(v)
                    .map_err(|_| StoreError::Corrupt(format!("column {i} = {v} out of range")))
            })
            .transpose()
    }

    /// Column `i` as a boolean (SQLite stores 0 and 1).
    pub(crate) fn bool(&self, i: usize) -> Result<bool, StoreError> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: boolean expected, found {other:?}"
            ))),
        }
    }

    /// Column `i` as text.
    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i)? {
            Value::Text(s) => Ok(s.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: text expected, found {other:?}"
            ))),
        }
    }
}

/// A database the ledger runs on.
pub trait Backend: Clone + Send + Sync + 'static {
    /// An open transaction (or, in [`TxMode::Autocommit`], a connection).
    type Tx: Tx;

    /// Opens a transaction; waiting for a connection is bounded by the backend's config.
    fn begin(&self, mode: TxMode) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Whether the failed transaction may simply be run again (a deadlock or a
    /// serialization failure that the database resolved by aborting it).
    fn retryable(e: &StoreError) -> bool;

    /// A migration's text in this database's spelling.
    fn schema_text(&self, sql: &str) -> String;

    /// Transactions that could begin now without waiting for a connection: the pool's
    /// idle connections and those it may still open. SQLite's single writer has none to
    /// spare.
    fn connections_free(&self) -> usize;
}

/// An open transaction. Dropping it without [`Tx::commit`] rolls it back.
pub trait Tx: Send {
    /// Runs a statement and returns its rows.
    fn query(
        &mut self,
        sql: &Sql,
        params: &[Value],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// Runs a statement and returns the number of rows it changed.
    fn execute(
        &mut self,
        sql: &Sql,
        params: &[Value],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs a bulk statement over `cols` (all of one length) and returns every row it
    /// returned.
    fn bulk(
        &mut self,
        sql: &Bulk,
        cols: &[Col],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// Runs `steps` in order and returns what each did. PostgreSQL sends them all before
    /// it reads the first answer: one round trip for the lot. The first failure fails the
    /// call, and the transaction is then aborted (only a rollback is left to do).
    fn pipeline(
        &mut self,
        steps: &[Step<'_>],
    ) -> impl Future<Output = Result<Vec<Done>, StoreError>> + Send;

    /// Runs `steps` as [`Tx::pipeline`] does, then commits; on PostgreSQL the `COMMIT`
    /// goes in the same round trip. Nothing is committed unless every step succeeded.
    fn commit_after(
        self,
        steps: &[Step<'_>],
    ) -> impl Future<Output = Result<Vec<Done>, StoreError>> + Send;

    /// Runs several statements without parameters (schema changes).
    fn batch(&mut self, text: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits.
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The single row a statement returns, or none.
    fn query_opt(
        &mut self,
        sql: &Sql,
        params: &[Value],
    ) -> impl Future<Output = Result<Option<Row>, StoreError>> + Send {
        async move { Ok(self.query(sql, params).await?.into_iter().next()) }
    }

    /// The single row a statement must return.
    fn query_one(
        &mut self,
        sql: &Sql,
        params: &[Value],
    ) -> impl Future<Output = Result<Row, StoreError>> + Send {
        async move {
            self.query_opt(sql, params).await?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "no row from {}",
                    sql.pg.get(..60).unwrap_or(sql.pg)
                ))
            })
        }
    }
}

/// The backend chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyBackend {
    /// PostgreSQL.
    Postgres(super::Pg),
    /// SQLite.
    Sqlite(super::Lite),
}

/// A transaction of [`AnyBackend`].
#[derive(Debug)]
pub enum AnyTx {
    /// PostgreSQL.
    Postgres(Box<super::PgTx>),
    /// SQLite.
    Sqlite(super::LiteTx),
}

macro_rules! either {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            AnyTx::Postgres($t) => $e,
            AnyTx::Sqlite($t) => $e,
        }
    };
}

impl Backend for AnyBackend {
    type Tx = AnyTx;

    async fn begin(&self, mode: TxMode) -> Result<AnyTx, StoreError> {
        Ok(match self {
            AnyBackend::Postgres(b) => AnyTx::Postgres(Box::new(b.begin(mode).await?)),
            AnyBackend::Sqlite(b) => AnyTx::Sqlite(b.begin(mode).await?),
        })
    }

    fn retryable(e: &StoreError) -> bool {
        super::Pg::retryable(e) || super::Lite::retryable(e)
    }

    fn schema_text(&self, sql: &str) -> String {
        match self {
            AnyBackend::Postgres(b) => b.schema_text(sql),
            AnyBackend::Sqlite(b) => b.schema_text(sql),
        }
    }

    fn connections_free(&self) -> usize {
        match self {
            AnyBackend::Postgres(b) => b.connections_free(),
            AnyBackend::Sqlite(b) => b.connections_free(),
        }
    }
}

impl Tx for AnyTx {
    async fn query(&mut self, sql: &Sql, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        either!(self, t => t.query(sql, params).await)
    }

    async fn execute(&mut self, sql: &Sql, params: &[Value]) -> Result<u64, StoreError> {
        either!(self, t => t.execute(sql, params).await)
    }

    async fn bulk(&mut self, sql: &Bulk, cols: &[Col]) -> Result<Vec<Row>, StoreError> {
        either!(self, t => t.bulk(sql, cols).await)
    }

    async fn pipeline(&mut self, steps: &[Step<'_>]) -> Result<Vec<Done>, StoreError> {
        either!(self, t => t.pipeline(steps).await)
    }

    async fn commit_after(self, steps: &[Step<'_>]) -> Result<Vec<Done>, StoreError> {
        match self {
            AnyTx::Postgres(t) => t.commit_after(steps).await,
            AnyTx::Sqlite(t) => t.commit_after(steps).await,
        }
    }

    async fn batch(&mut self, text: &str) -> Result<(), StoreError> {
        either!(self, t => t.batch(text).await)
    }

    async fn commit(self) -> Result<(), StoreError> {
        match self {
            AnyTx::Postgres(t) => t.commit().await,
            AnyTx::Sqlite(t) => t.commit().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_rewrite_renumbers_parameters_and_drops_row_locks() {
        assert_eq!(
            lite_rewrite(
                "SELECT LEAST($1, $12) FROM t WHERE a = $2 AND b = '$x' ORDER BY a FOR UPDATE"
            ),
            "SELECT MIN(?1, ?12) FROM t WHERE a = ?2 AND b = '$x' ORDER BY a"
        );
    }

    #[test]
    fn rows_refuse_what_they_cannot_hold() {
        let row = Row(vec![
            Value::Int(70_000),
            Value::Null,
            Value::Text("x".into()),
        ]);
        assert_eq!(row.int(0).ok(), Some(70_000));
        assert!(row.get::<i16>(0).is_err());
        assert!(row.int(1).is_err());
        assert_eq!(row.opt_int(1).ok(), Some(None));
        assert!(row.int(2).is_err());
        assert!(row.bool(0).is_err());
        assert!(row.int(3).is_err());
    }
}

/// The pipeline's contract on both databases: statements run in the order given (also
/// past the length where a joined set of futures stops polling in order), each step's
/// rows and count come back with it, and a failing step commits nothing of the lot and
/// leaves the connection usable.
#[cfg(test)]
mod pipeline_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const STEPS: i64 = 100;

    const CREATE: &str = "CREATE TEMP TABLE pipe (i BIGINT PRIMARY KEY, v BIGINT NOT NULL)";
    const INSERT: Sql = Sql::both("INSERT INTO pipe (i, v) VALUES ($1, $2)");
    /// Order-dependent: v = 3v + k (mod a prime), returned.
    const STEP: Sql =
        Sql::both("UPDATE pipe SET v = (v * 3 + $1) % 1000003 WHERE i = 1 RETURNING v");
    const COUNT: Sql = Sql::both("SELECT COUNT(*) FROM pipe WHERE i > 1");

    /// No row but the first (`i = 1`) is stored: what a failed pipeline sent was not
    /// committed, and the connection still answers.
    async fn holds_no_failed_rows<B: Backend>(b: &B) {
        let mut tx = b.begin(TxMode::Write).await.unwrap();
        let done = tx.pipeline(&[Step::One(&COUNT, Vec::new())]).await.unwrap();
        assert_eq!(done[0].rows, vec![Row(vec![Value::Int(0)])]);
        tx.commit().await.unwrap();
    }

    /// `steps`, one of which fails, sent with their COMMIT: an error, and none of them
    /// committed.
    async fn commits_nothing_of<B: Backend>(b: &B, steps: &[Step<'_>]) {
        let tx = b.begin(TxMode::Write).await.unwrap();
        assert!(tx.commit_after(steps).await.is_err());
        holds_no_failed_rows(b).await;
    }

    async fn contract<B: Backend>(b: B) {
        let mut setup = b.begin(TxMode::Write).await.unwrap();
        setup.batch(CREATE).await.unwrap();
        setup.commit().await.unwrap();

        // In order, each step's answer with it.
        let tx = b.begin(TxMode::Write).await.unwrap();
        let mut steps = vec![Step::One(&INSERT, vec![1.into(), 0.into()])];
        steps.extend((1..=STEPS).map(|k| Step::One(&STEP, vec![k.into()])));
        let done = tx.commit_after(&steps).await.unwrap();
        assert_eq!(done.len(), steps.len());
        assert_eq!(done[0].changed, 1);
        let mut v = 0_i64;
        for (k, d) in (1..=STEPS).zip(&done[1..]) {
            v = (v * 3 + k) % 1_000_003;
            assert_eq!(d.changed, 1, "step {k}");
            assert_eq!(d.rows, vec![Row(vec![Value::Int(v)])], "step {k}");
        }

        // A failure in the middle: nothing of the lot is committed, before or after it.
        let failing = [
            Step::One(&INSERT, vec![2.into(), 0.into()]),
            Step::One(&INSERT, vec![1.into(), 0.into()]),
            Step::One(&INSERT, vec![3.into(), 0.into()]),
        ];
        commits_nothing_of(&b, &failing).await;
        let mut tx = b.begin(TxMode::Write).await.unwrap();
        assert!(tx.pipeline(&failing).await.is_err());
        drop(tx);
        // The connection is usable and holds neither insert.
        holds_no_failed_rows(&b).await;

        // A transaction that runs nothing commits.
        b.begin(TxMode::Write)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_contract_holds_on_sqlite() {
        let path = std::env::temp_dir().join(format!(
            "wenxiao-pipe-{}-{}.db",
            std::process::id(),
            crate::clock::now_ms()
        ));
        contract(super::super::Lite::open(&path).unwrap()).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_contract_holds_on_postgres() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        // One connection, so the temporary table is the same one throughout.
        let pg =
            super::super::Pg::connect(&url, 1, 5_000, &super::super::PgLimits::default()).unwrap();
        contract(pg.clone()).await;

        // A value its parameter cannot hold fails before it is sent, so the server sees no
        // error: the COMMIT behind it must not be sent either.
        const NARROW: Sql = Sql::both("INSERT INTO pipe (i, v) VALUES ($1, CAST($2 AS SMALLINT))");
        let unsendable = [
            Step::One(&INSERT, vec![5.into(), 0.into()]),
            Step::One(&NARROW, vec![6.into(), 70_000.into()]),
            Step::One(&INSERT, vec![7.into(), 0.into()]),
        ];
        commits_nothing_of(&pg, &unsendable).await;
    }
}
