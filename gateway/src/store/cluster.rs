//! What several gateway nodes on one store share: device leases with their fencing
//! epochs, and the outbox of events for the other nodes (see ARCHITECTURE.md, "Several
//! nodes").

use super::StoreError;
use std::future::Future;
use wenxiao_protocol::{DeviceId, Seq};

/// The PostgreSQL NOTIFY channel an outbox event's id is announced on.
pub const EVENTS_CHANNEL: &str = "wenxiao_events";

/// What an outbox event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A device's lease was taken (body: `device epoch node`).
    Takeover,
    /// Credits were released by an approval (body: the day).
    CreditsReleased,
    /// A new hot-list version (body: the version).
    Hotlist,
    /// The registry changed (body: a merchant id, or empty).
    Registry,
}

impl EventKind {
    /// Its name in the store.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Takeover => "takeover",
            Self::CreditsReleased => "credits_released",
            Self::Hotlist => "hotlist",
            Self::Registry => "registry",
        }
    }

    /// The kind of a stored name; `None` for one a later version writes.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Takeover,
            Self::CreditsReleased,
            Self::Hotlist,
            Self::Registry,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// One outbox event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its id (assigned before commit: ids can commit out of order).
    pub event_id: i64,
    /// What it says; `None`: a kind this version does not know.
    pub kind: Option<EventKind>,
    /// Its body.
    pub body: String,
    /// When it was written (the writing node's clock).
    pub at_ms: i64,
}

/// A device's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The device.
    pub device_id: DeviceId,
    /// The node holding it.
    pub node_id: String,
    /// Its fencing epoch (1 at the first HELLO, one more at each).
    pub epoch: u64,
}

/// A takeover event's body: `device epoch node`.
pub fn takeover_body(device: DeviceId, epoch: u64, node: &str) -> String {
    format!("{} {epoch} {node}", device.get())
}

/// A takeover event's device, epoch and node; `None` when the body is not one.
pub fn parse_takeover(body: &str) -> Option<(DeviceId, u64, &str)> {
    let mut parts = body.splitn(3, ' ');
    let device = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    Some((DeviceId(device), epoch, parts.next()?))
}

/// Leases and events.
pub trait ClusterStore {
    /// Takes `device`'s lease for `node`: its epoch grows by one, and a takeover event is
    /// written with it, in one transaction (which waits for the ingest transactions in
    /// flight for the device under the previous epoch). Returns the new lease.
    fn acquire_lease(
        &self,
        device: DeviceId,
        node: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// The HELLO path's store work for a batch of HELLOs: in one transaction, each
    /// device's lease taken for `node` (epoch one more, a takeover event written with
    /// it); once that has committed, its `stored_seq` read above its floor (as
    /// [`super::Store::stored_seq`]), which sees whatever the previous holder committed. A device twice in `hellos`
    /// takes two epochs, in order. Returns, in `hellos`' order, each one's epoch and
    /// `stored_seq`. PostgreSQL takes the leases in device order, so two nodes' batches
    /// never wait on each other in a circle.
    fn welcome_batch(
        &self,
        hellos: Vec<(DeviceId, Option<Seq>)>,
        node: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<(u64, Option<Seq>)>, StoreError>> + Send;

    /// A device's lease, if it ever had one.
    fn lease(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// The leases of `devices` (those that have one).
    fn leases_of(
        &self,
        devices: Vec<DeviceId>,
    ) -> impl Future<Output = Result<Vec<Lease>, StoreError>> + Send;

    /// Events with an id above `after`, oldest first, at most `limit`.
    fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The events among `ids` (those that have committed).
    fn events_in(
        &self,
        ids: Vec<i64>,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The highest event id written so far (0: none).
    fn last_event_id(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Deletes events written before `before_ms`, except the newest (so ids never start
    /// over and a starting reader knows where the outbox ends); returns how many.
    fn prune_events(&self, before_ms: i64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn takeover_bodies_round_trip_and_bad_ones_are_refused() {
        let b = takeover_body(DeviceId(310_100_000_001), 7, "node-a:12:ab");
        assert_eq!(
            parse_takeover(&b),
            Some((DeviceId(310_100_000_001), 7, "node-a:12:ab"))
        );
        assert_eq!(parse_takeover("x 1 n"), None);
        assert_eq!(parse_takeover("1 x n"), None);
        assert_eq!(parse_takeover("1 2"), None);
        for k in [
            EventKind::Takeover,
            EventKind::CreditsReleased,
            EventKind::Hotlist,
            EventKind::Registry,
        ] {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
        }
        assert_eq!(EventKind::from_name("later"), None);
    }
}
