//! The production backend: PostgreSQL through a deadpool connection pool.
//!
//! Transactions are opened and closed with plain `BEGIN`/`COMMIT` on a pooled connection
//! the transaction owns, so the ledger can hold one across awaits without borrowing the
//! pool. One dropped before its commit is rolled back on the store runtime before its
//! connection goes back to the pool; where that cannot be done the connection is closed.
//!
//! Round trips: `BEGIN` is not sent on its own but ahead of the transaction's first
//! statements, and [`Tx::pipeline`] and [`Tx::commit_after`] send all their statements
//! (and the `COMMIT`) before reading the first answer, as tokio-postgres allows for
//! requests started together. A transaction that runs nothing sends nothing.

use super::StoreError;
use super::backend::{Backend, Bulk, Col, Done, Row, Sql, Step, Tx, TxMode, Value};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::error::Error as StdError;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Bounds on every PostgreSQL store connection (see `StoreConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLimits {
    /// `statement_timeout`.
    pub statement_timeout_ms: u64,
    /// `lock_timeout`.
    pub lock_timeout_ms: u64,
    /// TCP keepalive idle time.
    pub keepalive_idle_s: u64,
    /// The server's CA for TLS (see `store.postgres_ca_cert_path`).
    pub ca_cert_path: Option<std::path::PathBuf>,
}

impl PgLimits {
    /// The configured bounds.
    pub fn of(c: &crate::config::StoreConfig) -> Self {
        Self {
            statement_timeout_ms: c.postgres_statement_timeout_ms,
            lock_timeout_ms: c.postgres_lock_timeout_ms,
            keepalive_idle_s: c.postgres_keepalive_idle_s,
            ca_cert_path: c.postgres_ca_cert_path.clone(),
        }
    }
}

impl Default for PgLimits {
    fn default() -> Self {
        Self::of(&crate::config::StoreConfig::default())
    }
}

/// The TLS connector for `config`: rustls, trusting only `ca_cert_path`, when the URL
/// says `sslmode=require`; `None` (plain connections) otherwise. A URL that asks for TLS
/// without a CA configured is an error, never an unverified connection.
pub fn tls_connector(
    config: &tokio_postgres::Config,
    ca_cert_path: Option<&std::path::Path>,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
    if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        return Ok(None);
    }
    let path = ca_cert_path.ok_or_else(|| {
        StoreError::Pool(
            "postgres_url asks for TLS (sslmode=require) but store.postgres_ca_cert_path is not set"
                .to_owned(),
        )
    })?;
    let pem =
        std::fs::read(path).map_err(|e| StoreError::Pool(format!("{}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| StoreError::Pool(format!("{}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| StoreError::Pool(format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(StoreError::Pool(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Pool(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(client)))
}

/// The PostgreSQL backend. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Pg {
    /// A pool of at most `pool_size_max` connections to `url`; waiting for one is bounded
    /// by `pool_wait_ms`. Connections are opened lazily, on the runtime that first needs
    /// them: callers keep all store work on one dedicated runtime.
    pub(crate) fn connect(
        url: &str,
        pool_size_max: usize,
        pool_wait_ms: u64,
        limits: &PgLimits,
    ) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)?;
        // The server-side bounds go with the session's options (after any the URL sets).
        let options = format!(
            "{} -c statement_timeout={} -c lock_timeout={}",
            config.get_options().unwrap_or_default(),
            limits.statement_timeout_ms,
            limits.lock_timeout_ms
        );
        config
            .options(options.trim())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(limits.keepalive_idle_s))
            .connect_timeout(Duration::from_millis(pool_wait_ms));
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls_connector(&config, limits.ca_cert_path.as_deref())? {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let wait = Some(Duration::from_millis(pool_wait_ms));
        let pool = Pool::builder(manager)
            .max_size(pool_size_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(wait)
            .create_timeout(wait)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        })
    }
}

impl Backend for Pg {
    type Tx = PgTx;

    async fn begin(&self, mode: TxMode) -> Result<PgTx, StoreError> {
        let client = self.client().await?;
        let open = match mode {
            TxMode::Write => Some("BEGIN"),
            TxMode::Snapshot => Some("BEGIN ISOLATION LEVEL REPEATABLE READ"),
            TxMode::Autocommit => None,
        };
        Ok(PgTx {
            client: Some(client),
            begin: open,
            open: false,
        })
    }

    fn retryable(e: &StoreError) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(e, StoreError::Postgres(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }))
    }

    fn schema_text(&self, sql: &str) -> String {
        sql.to_owned()
    }

    fn connections_free(&self) -> usize {
        let s = self.pool.status();
        s.available + s.max_size.saturating_sub(s.size)
    }
}

/// An open PostgreSQL transaction on a connection of its own.
pub struct PgTx {
    client: Option<Object>,
    /// The `BEGIN` to send ahead of the first statement, until it is sent.
    begin: Option<&'static str>,
    /// A `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` has succeeded.
    open: bool,
}

impl std::fmt::Debug for PgTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTx").field("open", &self.open).finish()
    }
}

impl PgTx {
    fn client(&self) -> Result<&Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Task("transaction already closed".to_owned()))
    }

    /// Sends the pending `BEGIN`, `steps` and then `close` (`COMMIT`), all before reading
    /// the first answer, and returns what each step did (see [`PgTx::send_requests`]).
    async fn send(
        &mut self,
        steps: &[Step<'_>],
        close: Option<&'static str>,
    ) -> Result<Vec<Done>, StoreError> {
        let requests = steps
            .iter()
            .map(|step| match step {
                Step::One(sql, params) => (sql.pg, param_refs(params)),
                Step::Bulk(sql, cols) => bulk_request(sql, cols),
            })
            .collect();
        self.send_requests(requests, close).await
    }

    /// Sends the pending `BEGIN`, each request (a statement's text, empty for nothing to
    /// send, and its values) and then `close`, all before reading the first answer, and
    /// returns what each request did. The first error is returned after every answer has
    /// been read, so the connection is left between requests.
    async fn send_requests(
        &mut self,
        requests: Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)>,
        close: Option<&'static str>,
    ) -> Result<Vec<Done>, StoreError> {
        use futures_util::future::{MaybeDone, join_all, maybe_done};
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Task("transaction already closed".to_owned()))?;
        // Every statement is prepared first (cached after its first use): one prepared in
        // the middle of the pipeline would be sent after the statements behind it.
        let mut ops = Vec::with_capacity(requests.len() + 1);
        for (text, values) in requests {
            ops.push(if text.is_empty() {
                Op::Nothing
            } else {
                Op::Statement(client.prepare_cached(text).await?, values)
            });
        }
        if let Some(begin) = self.begin.take() {
            self.open = true;
            ops.insert(0, Op::Simple(begin));
        }
        let mut runs: Vec<std::pin::Pin<Box<MaybeDone<_>>>> = ops
            .into_iter()
            .map(|op| Box::pin(maybe_done(op.run(client))))
            .collect();
        // The first poll of each sends its request: done here in order, so the server runs
        // them in order; then all are driven to their answers. A request that failed
        // before it was sent (a value its column cannot hold) leaves the server without an
        // error, so the COMMIT is only sent when none did: otherwise the rest would commit.
        let failed_unsent = std::future::poll_fn(|cx| {
            let mut failed = false;
            for run in &mut runs {
                let _ = std::future::Future::poll(run.as_mut(), cx);
                failed |= matches!(run.as_ref().get_ref(), MaybeDone::Done(Err(_)));
            }
            std::task::Poll::Ready(failed)
        })
        .await;
        if let Some(close) = close.filter(|_| !failed_unsent) {
            let mut commit = Box::pin(maybe_done(Op::Simple(close).run(client)));
            std::future::poll_fn(|cx| {
                let _ = std::future::Future::poll(commit.as_mut(), cx);
                std::task::Poll::Ready(())
            })
            .await;
            runs.push(commit);
        }
        join_all(runs.iter_mut().map(|r| r.as_mut())).await;
        let mut done = Vec::with_capacity(runs.len());
        let mut first_error = None;
        for (i, run) in runs.iter_mut().enumerate() {
            match run.as_mut().take_output() {
                Some(Ok(Some(d))) => done.push(d),
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => {
                    first_error.get_or_insert(StoreError::Task(format!(
                        "pipelined statement {i} has no answer"
                    )));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

/// One request of a pipeline.
enum Op<'a> {
    /// `BEGIN` or `COMMIT`, by the simple protocol.
    Simple(&'static str),
    /// A prepared statement and its values.
    Statement(tokio_postgres::Statement, Vec<&'a (dyn ToSql + Sync)>),
    /// A step with nothing to send (a statement of the other database, or no rows).
    Nothing,
}

impl Op<'_> {
    /// Sends the request at the first poll and reads its answer: `None` for `BEGIN` and
    /// `COMMIT`, what a step did otherwise.
    async fn run(self, client: &tokio_postgres::Client) -> Result<Option<Done>, StoreError> {
        use futures_util::TryStreamExt;
        match self {
            Op::Simple(text) => {
                client.batch_execute(text).await?;
                Ok(None)
            }
            Op::Nothing => Ok(Some(Done::default())),
            Op::Statement(stmt, values) => {
                let stream = client.query_raw(&stmt, values).await?;
                futures_util::pin_mut!(stream);
                let mut rows = Vec::new();
                while let Some(r) = stream.try_next().await? {
                    rows.push(row_values(&r)?);
                }
                let changed = stream.rows_affected().unwrap_or(0);
                Ok(Some(Done { rows, changed }))
            }
        }
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if !self.open {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        // Never hand a connection in an unknown state back to the pool.
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

fn param_refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A bulk statement's request: one array per column; nothing to send for no rows.
fn bulk_request<'c>(sql: &Bulk, cols: &'c [Col]) -> (&'static str, Vec<&'c (dyn ToSql + Sync)>) {
    if cols.first().is_none_or(|c| c.len() == 0) {
        return ("", Vec::new());
    }
    (
        sql.pg,
        cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect(),
    )
}

impl Tx for PgTx {
    async fn query(&mut self, sql: &Sql, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let request = (sql.pg, param_refs(params));
        let done = self.send_requests(vec![request], None).await?;
        Ok(done.into_iter().next().map(|d| d.rows).unwrap_or_default())
    }

    async fn execute(&mut self, sql: &Sql, params: &[Value]) -> Result<u64, StoreError> {
        let request = (sql.pg, param_refs(params));
        let done = self.send_requests(vec![request], None).await?;
        Ok(done.first().map_or(0, |d| d.changed))
    }

    async fn bulk(&mut self, sql: &Bulk, cols: &[Col]) -> Result<Vec<Row>, StoreError> {
        let done = self
            .send_requests(vec![bulk_request(sql, cols)], None)
            .await?;
        Ok(done.into_iter().next().map(|d| d.rows).unwrap_or_default())
    }

    async fn pipeline(&mut self, steps: &[Step<'_>]) -> Result<Vec<Done>, StoreError> {
        self.send(steps, None).await
    }

    async fn commit_after(mut self, steps: &[Step<'_>]) -> Result<Vec<Done>, StoreError> {
        if self.begin.is_some() && steps.is_empty() {
            // Nothing was run: nothing to begin or commit.
            self.begin = None;
            return Ok(Vec::new());
        }
        let close = (self.open || self.begin.is_some()).then_some("COMMIT");
        let done = self.send(steps, close).await?;
        self.open = false;
        Ok(done)
    }

    async fn batch(&mut self, text: &str) -> Result<(), StoreError> {
        if self.begin.is_some() {
            self.send(&[], None).await?;
        }
        Ok(self.client()?.batch_execute(text).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.commit_after(&[]).await.map(drop)
    }
}

/// A row's columns as [`Value`]s, by their declared types.
fn row_values(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
        let v = match *c.type_() {
            Type::INT2 => int(r.try_get::<_, Option<i16>>(i)?.map(i64::from)),
            Type::INT4 => int(r.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            Type::INT8 => int(r.try_get::<_, Option<i64>>(i)?),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map_or(Value::Null, Value::Bool),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => r
                .try_get::<_, Option<String>>(i)?
                .map_or(Value::Null, Value::Text),
            Type::BYTEA => r
                .try_get::<_, Option<Vec<u8>>>(i)?
                .map_or(Value::Null, Value::Bytes),
            Type::VOID => Value::Null,
            ref t => {
                return Err(StoreError::Corrupt(format!(
                    "column {} has type {t}, which the ledger does not read",
                    c.name()
                )));
            }
        };
        out.push(v);
    }
    Ok(Row(out))
}

type BoxError = Box<dyn StdError + Sync + Send>;

/// An integer narrowed to the parameter's declared type.
fn int_to_sql(v: i64, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
    match *ty {
        Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
        Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
        Type::INT8 => v.to_sql(ty, out),
        Type::BOOL => match v {
            0 | 1 => (v == 1).to_sql(ty, out),
            _ => Err(format!("{v} is not a boolean").into()),
        },
        ref t => Err(format!("an integer cannot be a {t}").into()),
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => int_to_sql(*v, ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, against the statement's declared type.
        true
    }

    to_sql_checked!();
}

/// Narrows a column to the declared array type, checked.
fn narrow<T: TryFrom<i64>>(v: &[Option<i64>]) -> Result<Vec<Option<T>>, BoxError>
where
    T::Error: StdError + Sync + Send + 'static,
{
    v.iter()
        .map(|x| x.map(T::try_from).transpose().map_err(Into::into))
        .collect()
}

impl ToSql for Col {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let values: Vec<Option<i64>> = match self {
            Col::Int(v) => v.iter().copied().map(Some).collect(),
            Col::OptInt(v) => v.clone(),
            Col::Text(v) => return v.to_sql(ty, out),
        };
        match *ty {
            Type::INT2_ARRAY => narrow::<i16>(&values)?.to_sql(ty, out),
            Type::INT4_ARRAY => narrow::<i32>(&values)?.to_sql(ty, out),
            Type::INT8_ARRAY => values.to_sql(ty, out),
            ref t => Err(format!("a column of integers cannot be a {t}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
