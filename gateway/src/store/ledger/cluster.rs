//! Device leases, the ingest fence and the outbox (see [`super::super::cluster`]).

use super::super::backend::{Backend, Bulk, Col, Sql, Tx, TxMode, params};
use super::super::cluster::{ClusterStore, EVENTS_CHANNEL, Event, EventKind, Lease, takeover_body};
use super::super::{IngestTxn, StoreError, db_u64, from_db_u64};
use super::Ledger;
use std::collections::{HashMap, HashSet};
use wenxiao_protocol::DeviceId;

/// The leases of a batch's devices, held `FOR SHARE` to the commit: a HELLO taking one of
/// them over waits for this transaction, and every later batch sees the new epoch.
const LEASES_FOR_SHARE: Bulk = Bulk {
    pg: "SELECT device_id, epoch FROM device_leases WHERE device_id = ANY($1::int8[]) FOR SHARE",
    lite: "SELECT device_id, epoch FROM device_leases WHERE device_id = ?1",
};

/// Appends an event in `tx`, announced by NOTIFY at its commit (PostgreSQL).
pub(super) async fn append_event<T: Tx>(
    tx: &mut T,
    kind: EventKind,
    body: &str,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let id = tx
        .query_one(
            &Sql::both(
                "INSERT INTO outbox (kind, body, at_ms) VALUES ($1, $2, $3) RETURNING event_id",
            ),
            params![kind.name(), body, now_ms],
        )
        .await?
        .int(0)?;
    tx.execute(
        &Sql::pg_only("SELECT pg_notify('wenxiao_events', $1)"), // EVENTS_CHANNEL
        params![id.to_string()],
    )
    .await?;
    debug_assert_eq!(EVENTS_CHANNEL, "wenxiao_events");
    Ok(id)
}

/// The rows of `batch` whose lease epoch is not their device's current one (fenced),
/// by index. Rows without an epoch are not fenced. Holds the leases `FOR SHARE`.
pub(super) async fn fenced<T: Tx>(
    tx: &mut T,
    batch: &[IngestTxn],
) -> Result<HashSet<usize>, StoreError> {
    let devices: HashSet<i64> = batch
        .iter()
        .filter(|t| t.lease_epoch.is_some())
        .map(|t| db_u64(t.device_id.get()))
        .collect();
    if devices.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ids: Vec<i64> = devices.into_iter().collect();
    ids.sort_unstable();
    let current: HashMap<i64, u64> = tx
        .bulk(&LEASES_FOR_SHARE, &[Col::Int(ids)])
        .await?
        .iter()
        .map(|r| Ok((r.int(0)?, from_db_u64(r.int(1)?))))
        .collect::<Result<_, StoreError>>()?;
    Ok(batch
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.lease_epoch
                .is_some_and(|e| current.get(&db_u64(t.device_id.get())).copied() != Some(e))
        })
        .map(|(i, _)| i)
        .collect())
}

/// Refuses a credit step of `device` under `epoch` unless it is the device's lease now
/// (`None`: unfenced), with [`StoreError::Fenced`]. Holds the lease `FOR SHARE` to the
/// commit, so a takeover waits for the step or refuses it.
pub(super) async fn check_epoch<T: Tx>(
    tx: &mut T,
    device: DeviceId,
    epoch: Option<u64>,
) -> Result<(), StoreError> {
    let Some(epoch) = epoch else {
        return Ok(());
    };
    let current = tx
        .query_opt(
            &Sql::both("SELECT epoch FROM device_leases WHERE device_id = $1 FOR SHARE"),
            params![db_u64(device.get())],
        )
        .await?
        .map(|r| r.int(0).map(from_db_u64))
        .transpose()?;
    if current == Some(epoch) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            device,
            epoch,
            current,
        })
    }
}

fn event_of(r: &super::super::backend::Row) -> Result<Event, StoreError> {
    Ok(Event {
        event_id: r.int(0)?,
        kind: EventKind::from_name(&r.text(1)?),
        body: r.text(2)?,
        at_ms: r.int(3)?,
    })
}

fn lease_of(r: &super::super::backend::Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        device_id: DeviceId(from_db_u64(r.int(0)?)),
        node_id: r.text(1)?,
        epoch: from_db_u64(r.int(2)?),
    })
}

impl<B: Backend> ClusterStore for Ledger<B> {
    async fn acquire_lease(
        &self,
        device: DeviceId,
        node: String,
        now_ms: i64,
    ) -> Result<Lease, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let epoch = tx
            .query_one(
                &Sql::both(
                    "INSERT INTO device_leases (device_id, node_id, epoch, acquired_at_ms) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (device_id) DO UPDATE \
                     SET epoch = device_leases.epoch + 1, node_id = excluded.node_id, \
                     acquired_at_ms = excluded.acquired_at_ms RETURNING epoch",
                ),
                params![db_u64(device.get()), node.as_str(), now_ms],
            )
            .await?
            .int(0)?;
        let epoch = from_db_u64(epoch);
        append_event(
            &mut tx,
            EventKind::Takeover,
            &takeover_body(device, epoch, &node),
            now_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(Lease {
            device_id: device,
            node_id: node,
            epoch,
        })
    }

    async fn lease(&self, device: DeviceId) -> Result<Option<Lease>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both("SELECT device_id, node_id, epoch FROM device_leases WHERE device_id = $1"),
            params![db_u64(device.get())],
        )
        .await?
        .as_ref()
        .map(lease_of)
        .transpose()
    }

    async fn leases_of(&self, devices: Vec<DeviceId>) -> Result<Vec<Lease>, StoreError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        const LEASES: Bulk = Bulk {
            pg: "SELECT device_id, node_id, epoch FROM device_leases \
                 WHERE device_id = ANY($1::int8[])",
            lite: "SELECT device_id, node_id, epoch FROM device_leases WHERE device_id = ?1",
        };
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let ids = devices.iter().map(|d| db_u64(d.get())).collect();
        tx.bulk(&LEASES, &[Col::Int(ids)])
            .await?
            .iter()
            .map(lease_of)
            .collect()
    }

    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT event_id, kind, body, at_ms FROM outbox WHERE event_id > $1 \
                 ORDER BY event_id LIMIT $2",
            ),
            params![after, limit],
        )
        .await?
        .iter()
        .map(event_of)
        .collect()
    }

    async fn events_in(&self, ids: Vec<i64>) -> Result<Vec<Event>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        const BY_ID: Bulk = Bulk {
            pg: "SELECT event_id, kind, body, at_ms FROM outbox WHERE event_id = ANY($1::int8[])",
            lite: "SELECT event_id, kind, body, at_ms FROM outbox WHERE event_id = ?1",
        };
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.bulk(&BY_ID, &[Col::Int(ids)])
            .await?
            .iter()
            .map(event_of)
            .collect()
    }

    async fn last_event_id(&self) -> Result<i64, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_one(
            &Sql::both("SELECT CAST(COALESCE(MAX(event_id), 0) AS BIGINT) FROM outbox"),
            &[],
        )
        .await?
        .int(0)
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let n = tx
            .execute(
                &Sql::both(
                    "DELETE FROM outbox WHERE at_ms < $1 \
                     AND event_id < (SELECT MAX(event_id) FROM outbox)",
                ),
                params![before_ms],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}
