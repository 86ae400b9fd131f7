//! Device leases, the ingest fence and the outbox (see [`super::super::cluster`]).

use super::super::backend::{Backend, Bulk, Col, Row, Sql, Step, Tx, TxMode, params};
use super::super::cluster::{ClusterStore, EVENTS_CHANNEL, Event, EventKind, Lease, takeover_body};
use super::super::{IngestTxn, StoreError, advance_watermark, db_u64, from_db_u64};
use super::{Ledger, TXN_RETRIES_MAX};
use std::collections::{HashMap, HashSet};
use wenxiao_protocol::{DeviceId, Seq};

/// The leases of a batch's devices, held `FOR SHARE` to the commit: a HELLO taking one of
/// them over waits for this transaction, and every later batch sees the new epoch. Locked
/// in device order (PostgreSQL locks the rows as the sort returns them), the order the
/// lease writers take them in, so the two never wait on each other in a circle.
const LEASES_FOR_SHARE: Bulk = Bulk {
    pg: "SELECT device_id, epoch FROM device_leases WHERE device_id = ANY($1::int8[]) \
         ORDER BY device_id FOR SHARE",
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
    notify(tx, id).await?;
    Ok(id)
}

/// Appends the event that has every node read the registry again.
pub(super) async fn registry_changed<T: Tx>(tx: &mut T) -> Result<(), StoreError> {
    append_event(tx, EventKind::Registry, "", crate::clock::now_ms()).await?;
    Ok(())
}

/// The rows of `batch` whose lease epoch is not their device's current one (fenced),
/// by index. Rows without an epoch are not fenced. Holds the leases `FOR SHARE`.
pub(super) async fn fenced<T: Tx>(
    tx: &mut T,
    batch: &[IngestTxn],
) -> Result<HashSet<usize>, StoreError> {
    let done = tx.pipeline(&[leases_step(batch)]).await?;
    fenced_rows(batch, &done.into_iter().next().unwrap_or_default().rows)
}

/// The statement reading (and holding `FOR SHARE`) the leases of `batch`'s devices that
/// carry an epoch, in device order; a step with no rows when none does.
pub(super) fn leases_step(batch: &[IngestTxn]) -> Step<'static> {
    let mut ids: Vec<i64> = batch
        .iter()
        .filter(|t| t.lease_epoch.is_some())
        .map(|t| db_u64(t.device_id.get()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Step::Bulk(&LEASES_FOR_SHARE, vec![Col::Int(ids)])
}

/// The fenced rows of `batch`, given what [`leases_step`] read.
pub(super) fn fenced_rows(
    batch: &[IngestTxn],
    leases: &[Row],
) -> Result<HashSet<usize>, StoreError> {
    let current: HashMap<i64, u64> = leases
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

/// Takes a round's leases (distinct devices, in device order) for one node, returning
/// `device_id, epoch` rows. PostgreSQL inserts in the order of its `SELECT`, so the rows
/// are locked in device order.
const TAKE_LEASES: Bulk = Bulk {
    pg: "INSERT INTO device_leases (device_id, node_id, epoch, acquired_at_ms) \
         SELECT d, n, 1, a FROM unnest($1::int8[], $2::text[], $3::int8[]) AS x(d, n, a) \
         ORDER BY d ON CONFLICT (device_id) DO UPDATE \
         SET epoch = device_leases.epoch + 1, node_id = excluded.node_id, \
         acquired_at_ms = excluded.acquired_at_ms RETURNING device_id, epoch",
    lite: "INSERT INTO device_leases (device_id, node_id, epoch, acquired_at_ms) \
           VALUES (?1, ?2, 1, ?3) ON CONFLICT (device_id) DO UPDATE \
           SET epoch = device_leases.epoch + 1, node_id = excluded.node_id, \
           acquired_at_ms = excluded.acquired_at_ms RETURNING device_id, epoch",
};

/// Appends events (`kind, body, at_ms` columns), returning their ids.
const APPEND_EVENTS: Bulk = Bulk {
    pg: "INSERT INTO outbox (kind, body, at_ms) \
         SELECT k, b, a FROM unnest($1::text[], $2::text[], $3::int8[]) AS x(k, b, a) \
         RETURNING event_id",
    lite: "INSERT INTO outbox (kind, body, at_ms) VALUES (?1, ?2, ?3) RETURNING event_id",
};

/// The `stored_seq` checkpoints of a batch's devices.
const CHECKPOINTS_OF: Bulk = Bulk {
    pg: "SELECT device_id, stored_seq FROM device_seq_checkpoints \
         WHERE device_id = ANY($1::int8[])",
    lite: "SELECT device_id, stored_seq FROM device_seq_checkpoints WHERE device_id = ?1",
};

/// Rows of one device a WELCOME batch reads per round above its watermark; a device with
/// more goes on in the next round. Bounds one statement at `hello_batch_max` × this.
pub(crate) const WELCOME_PAGE_ROWS: i64 = 500;

/// The seqs above each device's watermark (`device, watermark` columns), at most
/// [`WELCOME_PAGE_ROWS`] per device, as `device_id, seq` rows.
const SEQS_ABOVE: Bulk = Bulk {
    pg: "SELECT w.d, t.seq FROM unnest($1::int8[], $2::int8[]) AS w(d, s) \
         CROSS JOIN LATERAL (SELECT seq FROM txns WHERE device_id = w.d AND seq > w.s \
         ORDER BY seq LIMIT 500) AS t",
    lite: "SELECT device_id, seq FROM txns WHERE device_id = ?1 AND seq > ?2 \
           ORDER BY seq LIMIT 500",
};

/// Takes the leases of `devices` (any order, repeats allowed) for `node` in `tx` and
/// writes one takeover event for each; returns the epochs in `devices`' order.
async fn take_leases<T: Tx>(
    tx: &mut T,
    devices: &[DeviceId],
    node: &str,
    now_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    let mut epochs = vec![0; devices.len()];
    // Rounds of distinct devices: one statement may change a row only once, so a device's
    // second HELLO in the batch takes the next epoch in the next round.
    let mut left: Vec<(usize, DeviceId)> = devices.iter().copied().enumerate().collect();
    while !left.is_empty() {
        let mut seen = HashSet::new();
        let (mut round, rest): (Vec<_>, Vec<_>) =
            left.into_iter().partition(|(_, d)| seen.insert(*d));
        round.sort_by_key(|(_, d)| *d);
        let n = round.len();
        let ids: Vec<i64> = round.iter().map(|(_, d)| db_u64(d.get())).collect();
        let taken: HashMap<i64, u64> = tx
            .bulk(
                &TAKE_LEASES,
                &[
                    Col::Int(ids),
                    Col::Text(vec![node.to_owned(); n]),
                    Col::Int(vec![now_ms; n]),
                ],
            )
            .await?
            .iter()
            .map(|r| Ok((r.int(0)?, from_db_u64(r.int(1)?))))
            .collect::<Result<_, StoreError>>()?;
        for (i, d) in round {
            let epoch = taken.get(&db_u64(d.get())).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("no lease row returned for device {d}"))
            })?;
            if let Some(slot) = epochs.get_mut(i) {
                *slot = epoch;
            }
        }
        left = rest;
    }
    let n = devices.len();
    let bodies = devices
        .iter()
        .zip(&epochs)
        .map(|(d, e)| takeover_body(*d, *e, node))
        .collect();
    let ids = tx
        .bulk(
            &APPEND_EVENTS,
            &[
                Col::Text(vec![EventKind::Takeover.name().to_owned(); n]),
                Col::Text(bodies),
                Col::Int(vec![now_ms; n]),
            ],
        )
        .await?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<Vec<i64>, _>>()?;
    // One NOTIFY for the batch: a listener reads the outbox from its cursor at any
    // notification, so the payload (the highest id) is only a hint.
    if let Some(high) = ids.iter().max() {
        notify(tx, *high).await?;
    }
    Ok(epochs)
}

/// The `stored_seq` of each `(device, floor)` in `tx` (see `Store::stored_seq`, which
/// calls this for one).
pub(super) async fn stored_seqs<T: Tx>(
    tx: &mut T,
    asked: &[(DeviceId, Option<Seq>)],
) -> Result<HashMap<(DeviceId, Option<Seq>), Option<Seq>>, StoreError> {
    let distinct: HashSet<(DeviceId, Option<Seq>)> = asked.iter().copied().collect();
    let unfloored: Vec<i64> = distinct
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(d, _)| db_u64(d.get()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let checkpoints: HashMap<i64, u64> = tx
        .bulk(&CHECKPOINTS_OF, &[Col::Int(unfloored)])
        .await?
        .iter()
        .map(|r| Ok((r.int(0)?, from_db_u64(r.int(1)?))))
        .collect::<Result<_, StoreError>>()?;
    let mut marks: Vec<((DeviceId, Option<Seq>), u64)> = distinct
        .into_iter()
        .map(|(d, f)| {
            let start = f.map_or_else(
                || checkpoints.get(&db_u64(d.get())).copied().unwrap_or(0),
                Seq::get,
            );
            ((d, f), start)
        })
        .collect();
    marks.sort_unstable();
    let mut done = HashMap::with_capacity(marks.len());
    while !marks.is_empty() {
        // A device asked with two floors is walked once per floor, in separate rounds.
        let mut seen = HashSet::new();
        let (round, later): (Vec<_>, Vec<_>) =
            marks.into_iter().partition(|((d, _), _)| seen.insert(*d));
        let mut pages: HashMap<i64, Vec<i64>> = HashMap::new();
        for r in tx
            .bulk(
                &SEQS_ABOVE,
                &[
                    Col::Int(round.iter().map(|((d, _), _)| db_u64(d.get())).collect()),
                    Col::Int(round.iter().map(|(_, w)| db_u64(*w)).collect()),
                ],
            )
            .await?
        {
            pages.entry(r.int(0)?).or_default().push(r.int(1)?);
        }
        marks = later;
        for (key, watermark) in round {
            let mut page = pages.remove(&db_u64(key.0.get())).unwrap_or_default();
            page.sort_unstable();
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= WELCOME_PAGE_ROWS;
            let (next, go_on) = advance_watermark(watermark, &page);
            if go_on && full {
                marks.push((key, next));
            } else {
                done.insert(key, Seq::new(next));
            }
        }
    }
    Ok(done)
}

/// Announces outbox events at the commit (PostgreSQL; the embedded store is polled).
async fn notify<T: Tx>(tx: &mut T, event_id: i64) -> Result<(), StoreError> {
    tx.execute(
        &Sql::pg_only("SELECT pg_notify('wenxiao_events', $1)"), // EVENTS_CHANNEL
        params![event_id.to_string()],
    )
    .await?;
    debug_assert_eq!(EVENTS_CHANNEL, "wenxiao_events");
    Ok(())
}

impl<B: Backend> Ledger<B> {
    async fn take_leases_once(
        &self,
        devices: &[DeviceId],
        node: &str,
        now_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let epochs = take_leases(&mut tx, devices, node, now_ms).await?;
        tx.commit().await?;
        Ok(epochs)
    }
}

impl<B: Backend> ClusterStore for Ledger<B> {
    async fn acquire_lease(
        &self,
        device: DeviceId,
        node: String,
        now_ms: i64,
    ) -> Result<Lease, StoreError> {
        let epoch = retried!(self.take_leases_once(&[device], &node, now_ms))?;
        Ok(Lease {
            device_id: device,
            node_id: node,
            epoch: epoch.first().copied().unwrap_or_default(),
        })
    }

    async fn welcome_batch(
        &self,
        hellos: Vec<(DeviceId, Option<Seq>)>,
        node: String,
        now_ms: i64,
    ) -> Result<Vec<(u64, Option<Seq>)>, StoreError> {
        if hellos.is_empty() {
            return Ok(Vec::new());
        }
        let devices: Vec<DeviceId> = hellos.iter().map(|(d, _)| *d).collect();
        let epochs = retried!(self.take_leases_once(&devices, &node, now_ms))?;
        // After the commit, as `Store::stored_seq` reads: the upsert waited for the
        // previous holders' ingest transactions, so these reads see their rows, and the
        // walk holds no lease locked (a far-behind device delays no ingest batch).
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let seqs = stored_seqs(&mut tx, &hellos).await?;
        Ok(hellos
            .iter()
            .zip(epochs)
            .map(|(h, e)| (e, seqs.get(h).copied().flatten()))
            .collect())
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

#[cfg(test)]
mod tests {
    use super::{SEQS_ABOVE, WELCOME_PAGE_ROWS};

    #[test]
    fn the_welcome_page_statements_read_the_page_bound() {
        let limit = format!("LIMIT {WELCOME_PAGE_ROWS}");
        assert!(SEQS_ABOVE.pg.contains(&limit), "{}", SEQS_ABOVE.pg);
        assert!(SEQS_ABOVE.lite.contains(&limit), "{}", SEQS_ABOVE.lite);
    }
}
