//! The card blacklist and its hot-list versions: every change that adds or removes a card
//! is one new version, with the cards it changed kept for the deltas terminals download.

use super::super::backend::{Backend, Bulk, Col, Sql, Tx, TxMode, params};
use super::super::{
    HotlistChange, HotlistChanged, HotlistHead, HotlistVersionChanges, StoreError, db_u64,
    from_db_u64,
};
use wenxiao_protocol::{CardNo, DeviceId};

const LIST: Bulk = Bulk {
    pg: "INSERT INTO card_blacklist (card_no, reason, added_at_ms) \
         SELECT c, r, t FROM unnest($1::int8[], $2::text[], $3::int8[]) AS u(c, r, t) \
         ON CONFLICT (card_no) DO NOTHING RETURNING card_no",
    lite: "INSERT INTO card_blacklist (card_no, reason, added_at_ms) VALUES (?1, ?2, ?3) \
           ON CONFLICT (card_no) DO NOTHING RETURNING card_no",
};

const UNLIST: Bulk = Bulk {
    pg: "DELETE FROM card_blacklist WHERE card_no = ANY($1::int8[]) RETURNING card_no",
    lite: "DELETE FROM card_blacklist WHERE card_no = ?1 RETURNING card_no",
};

const RECORD_CHANGES: Bulk = Bulk {
    pg: "INSERT INTO hotlist_changes (version, card_no, listed) \
         SELECT v, c, l <> 0 FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(v, c, l)",
    lite: "INSERT INTO hotlist_changes (version, card_no, listed) VALUES (?1, ?2, ?3 <> 0)",
};

/// The highest version and the floor below which deltas are no longer kept.
const HEAD: Sql = Sql::both(
    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT), \
     CAST(COALESCE(MAX(created_at_ms), 0) AS BIGINT), \
     CAST(COALESCE(MAX(CASE WHEN changes_kept THEN 0 ELSE version END), 0) AS BIGINT) \
     FROM hotlist_versions",
);

/// Applies a change to the blacklist; a new version when it changes anything.
pub(super) async fn change<B: Backend>(
    backend: &B,
    c: HotlistChange,
) -> Result<HotlistChanged, StoreError> {
    let mut tx = backend.begin(TxMode::Write).await?;
    let done = change_in(&mut tx, c).await?;
    tx.commit().await?;
    Ok(done)
}

/// [`change`] inside the caller's write transaction.
pub(super) async fn change_in<T: Tx>(
    tx: &mut T,
    c: HotlistChange,
) -> Result<HotlistChanged, StoreError> {
    // Versions are taken one at a time: concurrent changes (two operators, two nodes)
    // queue here rather than race for the next number.
    tx.execute(
        &Sql::pg_only("LOCK TABLE hotlist_versions IN EXCLUSIVE MODE"),
        &[],
    )
    .await?;
    let head = head_in(tx).await?;
    let version = head
        .version
        .checked_add(1)
        .ok_or_else(|| StoreError::Refused("the hot list has used every u32 version".to_owned()))?;
    let (cards, reasons): (Vec<i64>, Vec<String>) = c
        .add
        .iter()
        .map(|(card, reason)| (db_u64(card.get()), reason.clone()))
        .unzip();
    let mut changed: Vec<(i64, bool)> = Vec::new();
    if !cards.is_empty() {
        let n = cards.len();
        let added = tx
            .bulk(
                &LIST,
                &[
                    Col::Int(cards),
                    Col::Text(reasons),
                    Col::Int(vec![c.now_ms; n]),
                ],
            )
            .await?;
        for r in added {
            changed.push((r.int(0)?, true));
        }
    }
    if !c.remove.is_empty() {
        let cards = c.remove.iter().map(|card| db_u64(card.get())).collect();
        for r in tx.bulk(&UNLIST, &[Col::Int(cards)]).await? {
            changed.push((r.int(0)?, false));
        }
    }
    if changed.is_empty() {
        return Ok(HotlistChanged {
            version: None,
            added: 0,
            removed: 0,
        });
    }
    let added = changed.iter().filter(|(_, l)| *l).count();
    let removed = changed.len() - added;
    tx.execute(
        &Sql::both(
            "INSERT INTO hotlist_versions (version, created_at_ms, added, removed, source, \
             changes_kept) VALUES ($1, $2, $3, $4, $5, TRUE)",
        ),
        params![
            i64::from(version),
            c.now_ms,
            i64::try_from(added).unwrap_or(i64::MAX),
            i64::try_from(removed).unwrap_or(i64::MAX),
            c.source.as_str()
        ],
    )
    .await?;
    let n = changed.len();
    tx.bulk(
        &RECORD_CHANGES,
        &[
            Col::Int(vec![i64::from(version); n]),
            Col::Int(changed.iter().map(|(card, _)| *card).collect()),
            Col::Int(changed.iter().map(|(_, l)| i64::from(*l)).collect()),
        ],
    )
    .await?;
    // Versions older than the retention keep their summary row but not their cards.
    let floor = i64::from(version.saturating_sub(c.keep_versions));
    if floor > 0 {
        tx.execute(
            &Sql::both("DELETE FROM hotlist_changes WHERE version <= $1"),
            params![floor],
        )
        .await?;
        tx.execute(
            &Sql::both(
                "UPDATE hotlist_versions SET changes_kept = FALSE \
                 WHERE version <= $1 AND changes_kept",
            ),
            params![floor],
        )
        .await?;
    }
    super::audit::append_in(
        tx,
        c.now_ms,
        &c.source,
        "hotlist.change",
        &format!("hot-list version {version}"),
        &serde_json::json!({ "added": added, "removed": removed }),
    )
    .await?;
    // Delivered at commit: every node's listener learns of the version at once.
    super::cluster::append_event(
        tx,
        crate::store::cluster::EventKind::Hotlist,
        &version.to_string(),
        crate::clock::now_ms(),
    )
    .await?;
    Ok(HotlistChanged {
        version: Some(version),
        added: added as u64,
        removed: removed as u64,
    })
}

async fn head_in<T: Tx>(tx: &mut T) -> Result<HotlistHead, StoreError> {
    let r = tx.query_one(&HEAD, &[]).await?;
    Ok(HotlistHead {
        version: r.get(0)?,
        created_at_ms: r.int(1)?,
        delta_floor: r.get(2)?,
    })
}

/// The current version.
pub(super) async fn head<B: Backend>(backend: &B) -> Result<HotlistHead, StoreError> {
    let mut tx = backend.begin(TxMode::Autocommit).await?;
    head_in(&mut tx).await
}

/// The whole list with the version it is, read in one snapshot.
pub(super) async fn full<B: Backend>(
    backend: &B,
) -> Result<(HotlistHead, Vec<CardNo>), StoreError> {
    let mut tx = backend.begin(TxMode::Snapshot).await?;
    let head = head_in(&mut tx).await?;
    let cards = tx
        .query(
            &Sql::both("SELECT card_no FROM card_blacklist ORDER BY card_no"),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.int(0).map(|c| CardNo(from_db_u64(c))))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    Ok((head, cards))
}

/// The changes of versions `after + 1 ..= upto`, in version order; `None` when some of
/// them are no longer kept.
pub(super) async fn changes<B: Backend>(
    backend: &B,
    after: u32,
    upto: u32,
) -> Result<Option<Vec<HotlistVersionChanges>>, StoreError> {
    let mut tx = backend.begin(TxMode::Snapshot).await?;
    let versions = tx
        .query(
            &Sql::both(
                "SELECT version, created_at_ms, changes_kept FROM hotlist_versions \
                 WHERE version > $1 AND version <= $2 ORDER BY version",
            ),
            params![i64::from(after), i64::from(upto)],
        )
        .await?;
    let mut out: Vec<HotlistVersionChanges> = Vec::with_capacity(versions.len());
    for r in &versions {
        if !r.bool(2)? {
            return Ok(None);
        }
        out.push(HotlistVersionChanges {
            version: r.get(0)?,
            created_at_ms: r.int(1)?,
            changes: Vec::new(),
        });
    }
    if out.len() != usize::try_from(upto.saturating_sub(after)).unwrap_or(usize::MAX) {
        return Ok(None);
    }
    let rows = tx
        .query(
            &Sql::both(
                "SELECT version, card_no, listed FROM hotlist_changes \
                 WHERE version > $1 AND version <= $2 ORDER BY version, card_no",
            ),
            params![i64::from(after), i64::from(upto)],
        )
        .await?;
    tx.commit().await?;
    for r in &rows {
        let version: u32 = r.get(0)?;
        let i = usize::try_from(version - after - 1).unwrap_or(usize::MAX);
        let Some(v) = out.get_mut(i) else {
            return Err(StoreError::Corrupt(format!(
                "hot-list change of version {version} outside {after}..={upto}"
            )));
        };
        v.changes.push((CardNo(from_db_u64(r.int(1)?)), r.bool(2)?));
    }
    Ok(Some(out))
}

const RECORD_ACKS: Bulk = Bulk {
    pg: "INSERT INTO device_hotlist (device_id, version, acked_at_ms) \
         SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[]) \
         ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, \
         acked_at_ms = excluded.acked_at_ms",
    lite: "INSERT INTO device_hotlist (device_id, version, acked_at_ms) VALUES (?1, ?2, ?3) \
           ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, \
           acked_at_ms = excluded.acked_at_ms",
};

/// Records terminals' acknowledged versions (one row per device: its latest).
pub(super) async fn record_acks<B: Backend>(
    backend: &B,
    acks: &[(DeviceId, u32, i64)],
) -> Result<(), StoreError> {
    if acks.is_empty() {
        return Ok(());
    }
    let mut tx = backend.begin(TxMode::Write).await?;
    tx.bulk(
        &RECORD_ACKS,
        &[
            Col::Int(acks.iter().map(|a| db_u64(a.0.get())).collect()),
            Col::Int(acks.iter().map(|a| i64::from(a.1)).collect()),
            Col::Int(acks.iter().map(|a| a.2).collect()),
        ],
    )
    .await?;
    tx.commit().await
}

/// A device's recorded acknowledged version.
pub(super) async fn device_version<B: Backend>(
    backend: &B,
    device: DeviceId,
) -> Result<Option<u32>, StoreError> {
    let mut tx = backend.begin(TxMode::Autocommit).await?;
    tx.query_opt(
        &Sql::both("SELECT version FROM device_hotlist WHERE device_id = $1"),
        params![db_u64(device.get())],
    )
    .await?
    .map(|r| r.get(0))
    .transpose()
}
