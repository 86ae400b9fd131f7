//! The hot list: versions pushed to the terminals that screen cards, and their acks.
//!
//! A session sends one update at a time: the chunks of the delta (or the full list) from
//! the terminal's version to the node's current one, then waits for HOTLIST_ACK of that
//! version before it sends the next. Chunks go out only as the connection's write budget
//! has room, so a 200,000-card list never stalls the session's TXN acks behind it.

use super::{NoRoom, Phase, Session, Shared};
use crate::hotlist::{HotlistView, UpdateCards};
use crate::metrics as m;
use crate::store::Store;
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wenxiao_protocol::{DeviceId, DeviceKind, HotlistAck};

/// A new hot-list version reached this node.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HotlistChanged;

/// Whether a device of this kind is sent the hot list. POS terminals and kiosks accept
/// cards for purchases and loads, and sign-in readers admit cards at venue doors, so all
/// three screen them; an OTA endpoint loads SIM cards the gateway itself has chosen the
/// credits of, and screens nothing.
pub fn screens_cards(kind: DeviceKind) -> bool {
    matches!(
        kind,
        DeviceKind::Pos | DeviceKind::Kiosk | DeviceKind::SigninReader
    )
}

/// Cards per chunk: `hotlist.chunk_cards_max`, or fewer when a chunk's frame would take
/// more than half of `session.write_buffer_bytes_max` — a chunk waiting for room must
/// leave room for the session's other answers.
pub(super) fn chunk_cards(config: &crate::config::Config) -> usize {
    // Frame header 8 + HOTLIST_UPDATE's fixed part 13, then 8 bytes a card.
    const FRAME_FIXED_BYTES: usize = 21;
    let fit = (config.session.write_buffer_bytes_max / 2).saturating_sub(FRAME_FIXED_BYTES) / 8;
    config.hotlist.chunk_cards_max.min(fit).max(1)
}

/// A terminal's hot list as this session knows it.
#[derive(Debug)]
pub(super) struct HotlistState {
    /// The version the terminal holds: its HELLO's, then each one it acknowledged.
    version: u32,
    /// The update being sent (or sent and awaiting its ack).
    sending: Option<Sending>,
}

#[derive(Debug)]
struct Sending {
    cards: Arc<UpdateCards>,
    next_chunk: usize,
    chunk_count: usize,
    /// A chunk waits for room in the write budget.
    waiting: bool,
}

impl HotlistState {
    pub(super) fn new(version: u32) -> Self {
        Self {
            version,
            sending: None,
        }
    }
}

impl Session {
    /// After WELCOME: a card-screening terminal is counted by its version and sent what
    /// it lacks.
    pub(super) fn hotlist_welcomed(&mut self, device: DeviceId, ctx: &mut Context<Self>) {
        let Some(state) = &self.hotlist else {
            return;
        };
        self.shared
            .hotlist_versions
            .insert(device, (self.session_id, state.version));
        self.offer_hotlist(ctx);
    }

    /// Starts the update the terminal needs, unless one is under way or it is current.
    pub(super) fn offer_hotlist(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Active { .. }) {
            return;
        }
        let Some(state) = &mut self.hotlist else {
            return;
        };
        if state.sending.is_some() {
            return;
        }
        let Some(cards) = self.shared.hotlist_view().update_for(state.version) else {
            return;
        };
        let per = chunk_cards(&self.shared.config);
        let form = if cards.base_version == 0 {
            "full"
        } else {
            "delta"
        };
        metrics::counter!(m::HOTLIST_UPDATES_SENT_TOTAL, "form" => form).increment(1);
        state.sending = Some(Sending {
            chunk_count: cards.chunk_count(per),
            cards,
            next_chunk: 0,
            waiting: false,
        });
        self.pump_hotlist(ctx);
    }

    /// Queues the update's next chunks while the write budget has room; when it has none,
    /// waits for room beside the session's other work (not instead of it).
    pub(super) fn pump_hotlist(&mut self, ctx: &mut Context<Self>) {
        let per = chunk_cards(&self.shared.config);
        loop {
            if matches!(self.phase, Phase::Closing) {
                return;
            }
            let Some(s) = self.hotlist.as_mut().and_then(|h| h.sending.as_mut()) else {
                return;
            };
            // Frames the session made wait for room go first; their wait pumps again.
            if s.waiting || !self.blocked.is_empty() {
                return;
            }
            let Some(frame) = s.cards.frame(s.next_chunk, per) else {
                return;
            };
            match self.writer.try_send(frame) {
                crate::outbound::Queue::Queued => {
                    s.next_chunk += 1;
                    metrics::counter!(m::FRAMES_SENT_TOTAL, "type" => "HOTLIST_UPDATE")
                        .increment(1);
                }
                crate::outbound::Queue::Closed => return,
                crate::outbound::Queue::Full(frame) => {
                    s.waiting = true;
                    ctx.spawn(actix::fut::wrap_future(self.room_for(frame.len())).map(
                        move |room, act: &mut Session, ctx| match room {
                            Ok(room) => {
                                act.writer.send_reserved(frame, room);
                                metrics::counter!(m::FRAMES_SENT_TOTAL, "type" => "HOTLIST_UPDATE")
                                    .increment(1);
                                if let Some(s) =
                                    act.hotlist.as_mut().and_then(|h| h.sending.as_mut())
                                {
                                    s.waiting = false;
                                    s.next_chunk += 1;
                                }
                                act.pump_hotlist(ctx);
                            }
                            Err(NoRoom::Stalled) => act.drop_slow_reader(ctx),
                            Err(NoRoom::WriterGone) => ctx.stop(),
                        },
                    ));
                    return;
                }
            }
        }
    }

    /// HOTLIST_ACK: the terminal applied the update whose last chunk it was sent. An ack
    /// of any other version (early, late, or never sent here) is ignored and counted.
    pub(super) fn on_hotlist_ack(&mut self, ack: HotlistAck, ctx: &mut Context<Self>) {
        let (Some(device), Some(state)) = (self.device_id, self.hotlist.as_mut()) else {
            metrics::counter!(m::HOTLIST_ACKS_IGNORED_TOTAL).increment(1);
            return;
        };
        let complete = state
            .sending
            .as_ref()
            .is_some_and(|s| s.cards.version == ack.version.get() && s.next_chunk >= s.chunk_count);
        if !complete {
            tracing::debug!(%device, version = ack.version.get(), "HOTLIST_ACK for no update sent: ignored");
            metrics::counter!(m::HOTLIST_ACKS_IGNORED_TOTAL).increment(1);
            return;
        }
        let Some(sent) = state.sending.take() else {
            return;
        };
        state.version = sent.cards.version;
        let now = crate::clock::now_ms();
        let latency_ms = now.saturating_sub(sent.cards.created_at_ms).max(0);
        metrics::histogram!(m::HOTLIST_ACK_SECONDS)
            .record(Duration::from_millis(latency_ms.unsigned_abs()));
        self.shared
            .hotlist_versions
            .insert(device, (self.session_id, state.version));
        if self
            .shared
            .hotlist_acks
            .try_send((device, state.version, now))
            .is_err()
        {
            metrics::counter!(m::HOTLIST_ACKS_UNRECORDED_TOTAL).increment(1);
        }
        self.offer_hotlist(ctx);
    }
}

impl Handler<HotlistChanged> for Session {
    type Result = ();
    fn handle(&mut self, _: HotlistChanged, ctx: &mut Context<Self>) {
        self.offer_hotlist(ctx);
    }
}

/// Acknowledgements one pass of the recorder writes in one transaction.
pub(super) const HOTLIST_ACKS_PASS_MAX: usize = 4_096;

/// Records terminals' acknowledged versions in batches, one pooled connection at a time,
/// so 19,000 acks after a change are a handful of commits.
pub(super) async fn record_acks(
    store: crate::store::AnyStore,
    mut pending: tokio::sync::mpsc::Receiver<(DeviceId, u32, i64)>,
) {
    let mut pass = Vec::with_capacity(HOTLIST_ACKS_PASS_MAX);
    while pending.recv_many(&mut pass, HOTLIST_ACKS_PASS_MAX).await > 0 {
        // One row per device: its last ack in the pass (a full list after a restored
        // store can lower a version, so the last one, not the highest).
        let last: std::collections::HashMap<DeviceId, (u32, i64)> =
            pass.drain(..).map(|(d, v, at)| (d, (v, at))).collect();
        let acks = last.into_iter().map(|(d, (v, at))| (d, v, at)).collect();
        if let Err(e) = store.record_hotlist_acks(acks).await {
            tracing::warn!(error = %e, "recording hot-list acks failed");
        }
    }
}

/// Follows the store's hot list: at every notification (PostgreSQL) or poll, reads what
/// changed, replaces the node's view, and tells every session. Also keeps the hot-list
/// gauges.
pub async fn follow(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config.hotlist.poll_interval_ms);
    let keep = shared.config.hotlist.delta_versions_kept;
    while !shared.draining.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(every, shared.hotlist_wake.notified()).await;
        match refresh(&shared.store, &shared.hotlist_view(), keep).await {
            Ok(Some(view)) => {
                let version = view.version();
                tracing::info!(version, cards = view.len(), "hot list version");
                if let Ok(mut slot) = shared.hotlist.write() {
                    *slot = Arc::new(view);
                }
                announce(&shared).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "hot-list refresh failed"),
        }
        gauges(&shared);
    }
}

/// Period of the slices a new version is announced in.
const ANNOUNCE_SLICE_MS: u64 = 10;

/// Tells every session of a new version, spread over `hotlist.push_spread_ms`: each
/// session then sends what its terminal lacks from the newest view, whenever its turn
/// comes.
async fn announce(shared: &Shared) {
    let sessions: Vec<Addr<Session>> = shared
        .sessions
        .iter()
        .map(|s| s.value().1.clone())
        .collect();
    let slices = (shared.config.hotlist.push_spread_ms / ANNOUNCE_SLICE_MS).max(1);
    let per_slice = sessions
        .len()
        .div_ceil(usize::try_from(slices).unwrap_or(1))
        .max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(ANNOUNCE_SLICE_MS));
    for slice in sessions.chunks(per_slice) {
        tick.tick().await;
        for s in slice {
            s.do_send(HotlistChanged);
        }
    }
}

/// The view after the store's latest version, or `None` when the view is current.
async fn refresh(
    store: &crate::store::AnyStore,
    view: &HotlistView,
    keep: u32,
) -> Result<Option<HotlistView>, crate::store::StoreError> {
    let head = store.hotlist_head().await?;
    if head.version == view.version() {
        return Ok(None);
    }
    if head.version > view.version()
        && let Some(changes) = store.hotlist_changes(view.version(), head.version).await?
        && let Some(next) = view.advanced(head, changes, keep)
    {
        return Ok(Some(next));
    }
    // Too far behind (or the store went back, restored from a backup): read it whole.
    let (head, cards) = store.hotlist_full().await?;
    Ok(Some(HotlistView::full(head, cards)))
}

fn gauges(shared: &Shared) {
    let view = shared.hotlist_view();
    let current = view.version();
    metrics::gauge!(m::HOTLIST_VERSION).set(f64::from(current));
    metrics::gauge!(m::HOTLIST_CARDS).set(view.len() as f64);
    let mut bands = [0_u64; crate::hotlist::BEHIND_BANDS.len()];
    for e in shared.hotlist_versions.iter() {
        let behind = current.saturating_sub(e.value().1);
        let band = crate::hotlist::behind_band(behind);
        if let Some(i) = crate::hotlist::BEHIND_BANDS.iter().position(|b| *b == band)
            && let Some(n) = bands.get_mut(i)
        {
            *n += 1;
        }
    }
    for (band, n) in crate::hotlist::BEHIND_BANDS.iter().zip(bands) {
        metrics::gauge!(m::HOTLIST_DEVICES_BEHIND, "behind" => *band).set(n as f64);
    }
}
