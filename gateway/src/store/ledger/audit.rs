//! The audit log in the store: rows appended inside the transaction of what they record,
//! and the walk that checks the chain.

use super::super::StoreError;
use super::super::backend::{Backend, Sql, Tx, TxMode, params};
use crate::audit::{Entry, GENESIS_HASH, Verdict, chain_hash};

/// Rows one page of the walk reads.
const VERIFY_PAGE_ROWS: i64 = 10_000;

/// Appends a row, chained to the last one, in the caller's write transaction.
pub(super) async fn append_in<T: Tx>(
    tx: &mut T,
    at_ms: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    // One appender at a time: the chain has one end.
    tx.execute(&Sql::pg_only("LOCK TABLE audit_log IN EXCLUSIVE MODE"), &[])
        .await?;
    let last = tx
        .query_opt(
            &Sql::both("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"),
            &[],
        )
        .await?;
    let (seq, prev) = match last {
        Some(r) => (r.int(0)? + 1, r.text(1)?),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let detail = detail.to_string();
    let hash = chain_hash(
        &prev,
        &Entry {
            seq,
            at_ms,
            actor,
            action,
            subject,
            detail: &detail,
        },
    );
    tx.execute(
        &Sql::both(
            "INSERT INTO audit_log (seq, at_ms, actor, action, subject, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        ),
        params![seq, at_ms, actor, action, subject, detail, prev, hash],
    )
    .await?;
    Ok(())
}

/// Walks the whole log in seq order, recomputing every hash.
pub(super) async fn verify<B: Backend>(backend: &B) -> Result<Verdict, StoreError> {
    let mut tx = backend.begin(TxMode::Snapshot).await?;
    let mut expect_seq = 1_i64;
    let mut prev = GENESIS_HASH.to_owned();
    loop {
        let page = tx
            .query(
                &Sql::both(
                    "SELECT seq, at_ms, actor, action, subject, detail, prev_hash, hash \
                     FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
                ),
                params![expect_seq, VERIFY_PAGE_ROWS],
            )
            .await?;
        for r in &page {
            let seq = r.int(0)?;
            let broken = |reason: String| Ok(Verdict::Broken { seq, reason });
            if seq != expect_seq {
                return Ok(Verdict::Broken {
                    seq: expect_seq,
                    reason: format!("row {expect_seq} is missing (the next is {seq})"),
                });
            }
            let (actor, action, subject, detail) = (r.text(2)?, r.text(3)?, r.text(4)?, r.text(5)?);
            if r.text(6)? != prev {
                return broken("its prev_hash is not the previous row's hash".to_owned());
            }
            let hash = chain_hash(
                &prev,
                &Entry {
                    seq,
                    at_ms: r.int(1)?,
                    actor: &actor,
                    action: &action,
                    subject: &subject,
                    detail: &detail,
                },
            );
            if r.text(7)? != hash {
                return broken("its fields do not hash to its hash".to_owned());
            }
            prev = hash;
            expect_seq += 1;
        }
        if page.len() < usize::try_from(VERIFY_PAGE_ROWS).unwrap_or(usize::MAX) {
            tx.commit().await?;
            return Ok(Verdict::Intact {
                rows: u64::try_from(expect_seq - 1).unwrap_or(0),
            });
        }
    }
}
