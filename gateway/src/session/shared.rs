//! State shared by every session of one gateway node.

use super::Session;
use crate::clock;
use crate::config::Config;
use crate::ingest::IngestSender;
use crate::registry::Registry;
use crate::store::{AnyStore, Store};
use actix::prelude::*;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use wenxiao_protocol::mac::MasterKeys;
use wenxiao_protocol::{Decoder, DeviceId, Seq, SessionId};

/// State shared by every session of one gateway.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// Subsidy, points and budget policy.
    pub policy: crate::policy::Policy,
    /// The registry, replaced whole on reload.
    pub registry: RwLock<Arc<Registry>>,
    /// Master keys for TAC checks.
    pub keys: MasterKeys,
    /// The clearing store.
    pub store: AnyStore,
    /// The runtime that owns store connections; store calls run there.
    pub store_rt: tokio::runtime::Handle,
    /// The ingest queue; taken (dropped) at shutdown so writers can finish.
    pub ingest: RwLock<Option<IngestSender>>,
    /// Live sessions by device, for replacement, with their device lease's epoch: the
    /// highest epoch's session is the device's, on every node.
    pub sessions: DashMap<DeviceId, (SessionId, Addr<Session>, u64)>,
    /// This node's name in the device leases (`server.node_id`, or host, pid and a random
    /// suffix).
    pub node_id: String,
    /// The highest lease epoch this node has seen for each device (its own HELLOs and the
    /// other nodes' takeover events): a session below it is stale. One entry per device
    /// seen, so at most the registry's devices.
    pub lease_epochs: DashMap<DeviceId, u64>,
    /// The certificate serials the latest device CRL revokes (checked again at WELCOME,
    /// for sessions handshaken before the list was reloaded).
    pub revoked: RwLock<Arc<std::collections::HashSet<Vec<u8>>>>,
    /// Live OTA endpoint sessions, told when credits are released.
    pub ota_sessions: DashMap<DeviceId, Addr<Session>>,
    /// Set once shutdown begins.
    pub draining: AtomicBool,
    /// How the ingest writers are doing (for `/readyz`).
    pub writer_health: Arc<crate::ingest::WriterHealth>,
    /// Each device's `stored_seq` as its last session on this node ended: a floor for the
    /// next HELLO's scan (one entry per registered device at most).
    pub watermarks: DashMap<DeviceId, u64>,
    /// The hot list as this node holds it, replaced whole at each new version.
    pub hotlist: RwLock<Arc<crate::hotlist::HotlistView>>,
    /// Woken when a merchant's registry entry changed (a NOTIFY, or this node's API): the
    /// registry is read again at once.
    pub registry_wake: tokio::sync::Notify,
    /// Woken by a NOTIFY of a new hot-list version (PostgreSQL).
    pub hotlist_wake: tokio::sync::Notify,
    /// Online card-screening terminals' hot-list versions (with the session that holds
    /// each), for the devices-behind gauge.
    pub hotlist_versions: DashMap<DeviceId, (SessionId, u32)>,
    /// Acknowledged hot-list versions, for the one task that records them.
    pub(super) hotlist_acks: tokio::sync::mpsc::Sender<(DeviceId, u32, i64)>,
    /// Ended sessions' `stored_seq` checkpoints, for the one task that writes them.
    pub(super) checkpoints: tokio::sync::mpsc::Sender<(DeviceId, Seq)>,
    /// HELLOs waiting for their lease and `stored_seq`, for the lease writers.
    pub(super) welcomes: super::leases::WelcomeSender,
    session_base: u64,
    session_next: AtomicU64,
    pub(super) decoder: Decoder,
}

impl Shared {
    /// Shared state for a gateway starting now.
    // Each argument is one part of the state, built by `server::run` in its own step.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        policy: crate::policy::Policy,
        registry: Registry,
        keys: MasterKeys,
        store: AnyStore,
        store_rt: tokio::runtime::Handle,
        ingest: IngestSender,
        writer_health: Arc<crate::ingest::WriterHealth>,
        hotlist: crate::hotlist::HotlistView,
    ) -> Self {
        let decoder = Decoder::new(config.session.frame_payload_bytes_max);
        let (checkpoints, pending) = tokio::sync::mpsc::channel(CHECKPOINT_QUEUE_DEVICES);
        store_rt.spawn(write_checkpoints(store.clone(), pending));
        let (hotlist_acks, acks) = tokio::sync::mpsc::channel(config.hotlist.ack_queue_devices);
        store_rt.spawn(super::hotlist::record_acks(store.clone(), acks));
        // Session ids: start time in ms in the high bits, a counter in the low 20, so ids
        // stay unique across restarts of one node.
        let start = u64::try_from(clock::now_ms()).unwrap_or(0);
        let node_id = node_id(&config.server.node_id);
        let welcomes = {
            let _enter = store_rt.enter();
            let se = &config.session;
            super::leases::start(
                store.clone(),
                node_id.clone(),
                se.hello_queue_max,
                se.hello_batch_max,
                se.hello_writers,
            )
        };
        Self {
            config,
            policy,
            registry: RwLock::new(Arc::new(registry)),
            keys,
            store,
            store_rt,
            ingest: RwLock::new(Some(ingest)),
            sessions: DashMap::new(),
            node_id,
            lease_epochs: DashMap::new(),
            revoked: RwLock::new(Arc::new(std::collections::HashSet::new())),
            ota_sessions: DashMap::new(),
            draining: AtomicBool::new(false),
            writer_health,
            watermarks: DashMap::new(),
            hotlist: RwLock::new(Arc::new(hotlist)),
            hotlist_wake: tokio::sync::Notify::new(),
            registry_wake: tokio::sync::Notify::new(),
            hotlist_versions: DashMap::new(),
            hotlist_acks,
            checkpoints,
            welcomes,
            session_base: start << 20,
            session_next: AtomicU64::new(0),
            decoder,
        }
    }

    /// Records that `device`'s lease reached `epoch` (a HELLO here or a takeover event);
    /// returns whether it is the highest seen.
    pub fn saw_lease(&self, device: DeviceId, epoch: u64) -> bool {
        let mut e = self.lease_epochs.entry(device).or_insert(0);
        if *e > epoch {
            return false;
        }
        *e = epoch;
        true
    }

    /// The serials the latest CRL revokes.
    pub fn revoked_serials(&self) -> Arc<std::collections::HashSet<Vec<u8>>> {
        self.revoked
            .read()
            .map(|r| Arc::clone(&r))
            .unwrap_or_default()
    }

    /// Another node took `device` over at `epoch`: a session of it here under an older
    /// epoch is closed with SESSION_REPLACED.
    pub fn taken_over(&self, device: DeviceId, epoch: u64) {
        self.saw_lease(device, epoch);
        if let Some(s) = self.sessions.get(&device)
            && s.value().2 < epoch
        {
            s.value().1.do_send(super::Replaced);
        }
    }

    pub(super) fn next_session_id(&self) -> SessionId {
        SessionId(
            self.session_base | (self.session_next.fetch_add(1, Ordering::Relaxed) & 0xF_FFFF),
        )
    }

    pub(super) fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .map(|r| Arc::clone(&r))
            .unwrap_or_default()
    }

    /// The node's current hot-list view.
    pub fn hotlist_view(&self) -> Arc<crate::hotlist::HotlistView> {
        self.hotlist
            .read()
            .map(|r| Arc::clone(&r))
            .unwrap_or_default()
    }

    pub(super) fn ingest_sender(&self) -> Option<IngestSender> {
        self.ingest.read().ok().and_then(|s| s.clone())
    }
}

/// Ended sessions whose `stored_seq` checkpoint waits to be written; beyond it a
/// checkpoint is skipped (safe: it only shortens the next HELLO's scan).
pub const CHECKPOINT_QUEUE_DEVICES: usize = 65_536;
/// Checkpoints one pass of the writer takes from the queue (one per device, the highest).
pub const CHECKPOINT_PASS_DEVICES_MAX: usize = 4_096;

/// Writes `stored_seq` checkpoints one at a time, so that ending thousands of sessions at
/// once (a reconnect storm) takes one pooled connection, not the whole pool that the
/// reconnecting sessions' HELLOs need.
async fn write_checkpoints(
    store: AnyStore,
    mut pending: tokio::sync::mpsc::Receiver<(DeviceId, Seq)>,
) {
    let mut pass: std::collections::HashMap<DeviceId, Seq> = std::collections::HashMap::new();
    while let Some((device, seq)) = pending.recv().await {
        pass.insert(device, seq);
        while pass.len() < CHECKPOINT_PASS_DEVICES_MAX {
            let Ok((device, seq)) = pending.try_recv() else {
                break;
            };
            let highest = pass.get(&device).map_or(seq, |s| (*s).max(seq));
            pass.insert(device, highest);
        }
        for (device, seq) in pass.drain() {
            if let Err(e) = store.checkpoint_stored_seq(device, seq).await {
                tracing::warn!(error = %e, %device, "stored_seq checkpoint failed");
            }
        }
    }
}

/// This node's name: `configured`, or host name, process id and a random suffix (unique
/// per start, so a restarted node is a new holder).
fn node_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    format!(
        "{host}:{}:{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}
