//! One actor per device connection: it owns the TLS stream's framed halves and the
//! session's state, and everything else talks to it by message.
//!
//! Reading is an actix stream; when the shared ingest queue is full the actor waits for a
//! slot with `ctx.wait`, which also stops it polling the socket — backpressure reaches the
//! device through TCP. Acks arrive as [`TxnDone`] messages from the store writers, at
//! most `max_in_flight` per session, so nothing queues without bound.

use crate::clock;
use crate::config::Config;
use crate::ingest::{IngestItem, IngestSender, TxnDone};
use crate::metrics as m;
use crate::registry::{Device, Merchant, Registry};
use crate::store::{AnyStore, IngestTxn, Proposal, Store, TxnAnswer};
use crate::validate;
use actix::prelude::*;
use dashmap::DashMap;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;
use wenxiao_protocol::mac::MasterKeys;
use wenxiao_protocol::{
    CodecError, Decoder, DeviceId, Drain, Error, ErrorCode, Fen, Heartbeat, HeartbeatAck, Hello,
    Message, Points, Reason, Seq, SessionId, Text, Txn, TxnAck, TxnStatus, UnixMillis, Welcome,
    WxCodec,
};

/// Initial read-buffer capacity per connection: small, since idle sessions dominate and
/// a TXN frame is 78 bytes; the decoder grows it up to one frame's bound when needed.
const READ_BUFFER_BYTES_INITIAL: usize = 256;

type Tls = TlsStream<TcpStream>;

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
    /// Live sessions by device, for replacement, with the order of their HELLO
    /// ([`Shared::next_hello_order`]): the newest HELLO's session is the device's.
    pub sessions: DashMap<DeviceId, (SessionId, Addr<Session>, u64)>,
    /// Live OTA endpoint sessions, told when credits are released.
    pub ota_sessions: DashMap<DeviceId, Addr<Session>>,
    /// Set once shutdown begins.
    pub draining: AtomicBool,
    /// How the ingest writers are doing (for `/readyz`).
    pub writer_health: Arc<crate::ingest::WriterHealth>,
    /// Each device's `stored_seq` as its last session on this node ended: a floor for the
    /// next HELLO's scan (one entry per registered device at most).
    pub watermarks: DashMap<DeviceId, u64>,
    /// Ended sessions' `stored_seq` checkpoints, for the one task that writes them.
    checkpoints: tokio::sync::mpsc::Sender<(DeviceId, Seq)>,
    session_base: u64,
    session_next: AtomicU64,
    hello_next: AtomicU64,
    decoder: Decoder,
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
    ) -> Self {
        let decoder = Decoder::new(config.session.frame_payload_bytes_max);
        let (checkpoints, pending) = tokio::sync::mpsc::channel(CHECKPOINT_QUEUE_DEVICES);
        store_rt.spawn(write_checkpoints(store.clone(), pending));
        // Session ids: start time in ms in the high bits, a counter in the low 20, so ids
        // stay unique across restarts of one node.
        let start = u64::try_from(clock::now_ms()).unwrap_or(0);
        Self {
            config,
            policy,
            registry: RwLock::new(Arc::new(registry)),
            keys,
            store,
            store_rt,
            ingest: RwLock::new(Some(ingest)),
            sessions: DashMap::new(),
            ota_sessions: DashMap::new(),
            draining: AtomicBool::new(false),
            writer_health,
            watermarks: DashMap::new(),
            checkpoints,
            session_base: start << 20,
            session_next: AtomicU64::new(0),
            hello_next: AtomicU64::new(0),
            decoder,
        }
    }

    /// The order of a HELLO received now: only grows (per device too), so of two sessions
    /// of one device the later HELLO's wins, however their WELCOME lookups finish.
    fn next_hello_order(&self) -> u64 {
        self.hello_next.fetch_add(1, Ordering::Relaxed)
    }

    fn next_session_id(&self) -> SessionId {
        SessionId(
            self.session_base | (self.session_next.fetch_add(1, Ordering::Relaxed) & 0xF_FFFF),
        )
    }

    fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .map(|r| Arc::clone(&r))
            .unwrap_or_default()
    }

    fn ingest_sender(&self) -> Option<IngestSender> {
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

/// Tells a session a newer one of its device took over.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Replaced;

/// The registry no longer has the session's device active.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Disabled;

/// Credits were released: an OTA endpoint session claims and pushes what it may.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PushNow;

/// Shutdown, step one: send DRAIN.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StartDrain;

/// Shutdown, step two: the drain bound expired.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ForceClose;

enum Phase {
    AwaitingHello,
    /// HELLO accepted, WELCOME waits for the store's `stored_seq`.
    Welcoming,
    Active {
        device: Device,
        merchant: Option<Merchant>,
    },
    Closing,
}

/// Tracks the highest contiguous answered seq of this session's device.
struct SeqTracker {
    watermark: u64,
    above: BTreeSet<u64>,
    above_max: usize,
    checkpointed: u64,
}

impl SeqTracker {
    fn answered(&mut self, seq: u64) {
        if seq <= self.watermark {
            return;
        }
        if seq == self.watermark + 1 {
            self.watermark = seq;
            while self.above.remove(&(self.watermark + 1)) {
                self.watermark += 1;
            }
        } else if self.above.len() < self.above_max {
            self.above.insert(seq);
        }
    }
}

/// One device connection.
pub struct Session {
    shared: Arc<Shared>,
    cert_device: Result<DeviceId, String>,
    phase: Phase,
    writer: crate::outbound::Outbound,
    /// A frame waits for room in the outbound budget: later ones wait behind it.
    write_blocked: bool,
    reader: Option<SpawnHandle>,
    ingest: Option<IngestSender>,
    session_id: SessionId,
    device_id: Option<DeviceId>,
    last_rx: Instant,
    in_flight: usize,
    seqs: SeqTracker,
    draining: bool,
    requests_in_flight: usize,
    /// OTA endpoints: the operator's card range, the pushes awaiting a result, and
    /// whether a claim is running (and another was asked for meanwhile).
    ota_range: Option<(wenxiao_protocol::CardNo, wenxiao_protocol::CardNo)>,
    pushed: std::collections::HashSet<wenxiao_protocol::CreditId>,
    claiming: bool,
    claim_again: bool,
    welcomed_kind: Option<&'static str>,
    /// This session's HELLO order (see `Shared::next_hello_order`).
    hello_order: u64,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("device_id", &self.device_id)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Session {
    /// Starts the actor for a handshaken connection on the current arbiter.
    pub fn start(
        stream: Tls,
        cert_device: Result<DeviceId, String>,
        shared: Arc<Shared>,
        permit: OwnedSemaphorePermit,
    ) -> Addr<Session> {
        let (r, w) = tokio::io::split(stream);
        Session::create(move |ctx| {
            let codec = WxCodec::new(shared.decoder);
            let read: FramedRead<ReadHalf<Tls>, WxCodec> =
                FramedRead::with_capacity(r, codec, READ_BUFFER_BYTES_INITIAL);
            let reader = ctx.add_stream(read);
            let me = ctx.address().downgrade();
            let writer = crate::outbound::Outbound::start(
                w,
                shared.config.session.write_buffer_bytes_max,
                move |result| {
                    if let Some(me) = me.upgrade() {
                        me.do_send(WriterDone(result.err().map(|e| e.to_string())));
                    }
                },
            );
            let seq_window = shared.config.session.seq_window_max;
            Session {
                session_id: shared.next_session_id(),
                ingest: shared.ingest_sender(),
                shared,
                cert_device,
                phase: Phase::AwaitingHello,
                writer,
                write_blocked: false,
                reader: Some(reader),
                device_id: None,
                last_rx: Instant::now(),
                in_flight: 0,
                seqs: SeqTracker {
                    watermark: 0,
                    above: BTreeSet::new(),
                    above_max: seq_window,
                    checkpointed: 0,
                },
                draining: false,
                requests_in_flight: 0,
                ota_range: None,
                pushed: std::collections::HashSet::new(),
                claiming: false,
                claim_again: false,
                welcomed_kind: None,
                hello_order: 0,
                _permit: permit,
            }
        })
    }

    /// Queues a frame for the device. When the outbound budget is spent (the device does
    /// not read) the actor waits for room, which also stops it reading its socket: TCP
    /// pushes back to the device. A device still not reading after
    /// `slow_reader_timeout_ms` is closed.
    fn send(&mut self, ctx: &mut Context<Self>, message: Message) {
        metrics::counter!(m::FRAMES_SENT_TOTAL, "type" => message.message_type().name())
            .increment(1);
        let mut buf = bytes::BytesMut::new();
        message.encode(&mut buf);
        let frame = buf.freeze();
        let frame = if self.write_blocked {
            frame
        } else {
            match self.writer.try_send(frame) {
                crate::outbound::Queue::Queued | crate::outbound::Queue::Closed => return,
                crate::outbound::Queue::Full(frame) => frame,
            }
        };
        self.write_blocked = true;
        let room = self.writer.reserve(frame.len());
        let stall = Duration::from_millis(self.shared.config.session.slow_reader_timeout_ms);
        ctx.wait(
            actix::fut::wrap_future(tokio::time::timeout(stall, room)).map(
                move |room, act: &mut Session, ctx| match room {
                    Ok(Ok(permit)) => {
                        act.write_blocked = false;
                        act.writer.send_reserved(frame, permit);
                    }
                    _ => act.drop_slow_reader(ctx),
                },
            ),
        );
    }

    /// Closes a session whose device has not read its answers for `slow_reader_timeout_ms`:
    /// nothing more can reach it, so no ERROR either.
    fn drop_slow_reader(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Closing) {
            return ctx.stop();
        }
        tracing::warn!(
            session = %self.session_id,
            device = ?self.device_id,
            bytes = self.shared.config.session.write_buffer_bytes_max,
            "device does not read its answers: closing the session"
        );
        metrics::counter!(m::SESSIONS_CLOSED_SLOW_READER_TOTAL).increment(1);
        self.phase = Phase::Closing;
        if let Some(h) = self.reader.take() {
            ctx.cancel_future(h);
        }
        ctx.stop();
    }

    /// Sends a fatal ERROR and closes.
    fn fail(&mut self, ctx: &mut Context<Self>, code: ErrorCode, text: &str) {
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        tracing::info!(session = %self.session_id, device = ?self.device_id, code = code.name(), text, "closing session");
        metrics::counter!(m::ERRORS_SENT_TOTAL, "code" => code.name()).increment(1);
        self.send(
            ctx,
            Message::Error(Error {
                code,
                fatal: true,
                message: Text::truncated(text),
            }),
        );
        self.close(ctx);
    }

    /// Stops reading, flushes what is queued, then stops (at the latest after
    /// `close_linger_ms`).
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Closing;
        if let Some(h) = self.reader.take() {
            ctx.cancel_future(h);
        }
        self.writer.close();
        let linger = Duration::from_millis(self.shared.config.session.close_linger_ms);
        ctx.run_later(linger, |_, ctx| ctx.stop());
    }

    fn heartbeat_s(&self) -> u64 {
        u64::from(self.shared.config.session.heartbeat_s)
    }

    /// Arms the idle check for 3 × heartbeat_s after the last frame received.
    fn arm_idle_check(&self, ctx: &mut Context<Self>) {
        let idle = Duration::from_secs(
            self.heartbeat_s() * wenxiao_protocol::limits::IDLE_HEARTBEAT_PERIODS,
        );
        let due = idle.saturating_sub(self.last_rx.elapsed());
        ctx.run_later(due, move |act, ctx| {
            if matches!(act.phase, Phase::Closing) {
                return;
            }
            if act.last_rx.elapsed() >= idle {
                act.fail(
                    ctx,
                    ErrorCode::IdleTimeout,
                    "no frame for 3 heartbeat periods",
                );
            } else {
                act.arm_idle_check(ctx);
            }
        });
    }

    fn on_hello(&mut self, hello: Hello, ctx: &mut Context<Self>) {
        let shared = Arc::clone(&self.shared);
        if shared.draining.load(Ordering::Relaxed) {
            return self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
        }
        match self.cert_device.clone() {
            Ok(id) if id == hello.device_id => {}
            Ok(id) => {
                let text = format!(
                    "certificate is for device {id}, HELLO says {}",
                    hello.device_id
                );
                return self.fail(ctx, ErrorCode::AuthFailed, &text);
            }
            Err(e) => return self.fail(ctx, ErrorCode::AuthFailed, &e),
        }
        let registry = shared.registry();
        let device = match registry.device(hello.device_id) {
            Some(d) if d.kind == hello.kind => *d,
            Some(d) => {
                let text = format!("device {} is registered as {}", hello.device_id, d.kind);
                return self.fail(ctx, ErrorCode::DeviceUnknown, &text);
            }
            None => return self.fail(ctx, ErrorCode::DeviceUnknown, "device not registered"),
        };
        if !device.active {
            return self.fail(ctx, ErrorCode::DeviceDisabled, "device is disabled");
        }
        let merchant = device
            .merchant_id
            .and_then(|id| registry.merchant(id).cloned());
        self.phase = Phase::Welcoming;
        self.device_id = Some(device.device_id);
        self.hello_order = shared.next_hello_order();
        let store = shared.store.clone();
        let floor = shared
            .watermarks
            .get(&device.device_id)
            .and_then(|w| Seq::new(*w));
        let lookup = shared
            .store_rt
            .spawn(async move { store.stored_seq(device.device_id, floor).await });
        // `wait`: no other frame is handled before WELCOME is out.
        ctx.wait(
            actix::fut::wrap_future(lookup).map(move |res, act: &mut Session, ctx| {
                if matches!(act.phase, Phase::Closing) {
                    return;
                }
                let stored = match res {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "stored_seq lookup failed");
                        return act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "stored_seq task failed");
                        return act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                };
                act.welcome(device, merchant, stored, ctx);
            }),
        );
    }

    fn welcome(
        &mut self,
        device: Device,
        merchant: Option<Merchant>,
        stored: Option<Seq>,
        ctx: &mut Context<Self>,
    ) {
        let w = Seq::wire(stored);
        self.seqs.watermark = w;
        self.seqs.checkpointed = w;
        let stale = {
            use dashmap::mapref::entry::Entry;
            let me = (self.session_id, ctx.address(), self.hello_order);
            match self.shared.sessions.entry(device.device_id) {
                // A later HELLO of this device got its WELCOME first: this one is stale.
                Entry::Occupied(e) if !newer_hello_wins(Some(e.get().2), self.hello_order) => true,
                Entry::Occupied(mut e) => {
                    let (_, old, _) = e.insert(me);
                    old.do_send(Replaced);
                    false
                }
                Entry::Vacant(v) => {
                    v.insert(me);
                    false
                }
            }
        };
        if stale {
            return self.fail(
                ctx,
                ErrorCode::SessionReplaced,
                "a newer session of this device took over",
            );
        }
        metrics::gauge!(m::SESSIONS, "kind" => device.kind.name()).increment(1.0);
        self.welcomed_kind = Some(device.kind.name());
        let cfg = &self.shared.config.session;
        let welcome = Welcome {
            session_id: self.session_id,
            server_time_ms: UnixMillis(clock::now_ms()),
            stored_seq: stored,
            heartbeat_s: cfg.heartbeat_s,
            max_in_flight: cfg.max_in_flight,
            hotlist_version: wenxiao_protocol::HotlistVersion(0),
        };
        self.phase = Phase::Active { device, merchant };
        self.send(ctx, Message::Welcome(welcome));
        if self.draining {
            self.send_drain(ctx);
        }
        if let (wenxiao_protocol::DeviceKind::OtaEndpoint, Some(op)) =
            (device.kind, device.operator)
        {
            let (from, to) = self.shared.config.credits.card_range(op);
            self.ota_range = Some((wenxiao_protocol::CardNo(from), wenxiao_protocol::CardNo(to)));
            self.shared
                .ota_sessions
                .insert(device.device_id, ctx.address());
            // Whatever was pushed to this endpoint before it reconnected goes out again.
            self.claim(ctx, true);
        }
    }

    fn on_txn(&mut self, txn: Txn, ctx: &mut Context<Self>) {
        let Phase::Active { device, merchant } = &self.phase else {
            return;
        };
        if self.in_flight >= usize::from(self.shared.config.session.max_in_flight) {
            return self.fail(
                ctx,
                ErrorCode::TooManyInFlight,
                "more TXNs in flight than max_in_flight",
            );
        }
        let received = Instant::now();
        let received_at_ms = clock::now_ms();
        let Some(business_date) = clock::business_date(received_at_ms) else {
            return self.fail(
                ctx,
                ErrorCode::StoreUnavailable,
                "gateway clock out of range",
            );
        };
        let proposal = match validate::check_txn(
            &txn,
            device,
            merchant.as_ref(),
            &self.shared.config.txn,
            &self.shared.keys,
        )
        .and_then(|()| {
            crate::rules::check_points_paid(
                txn.amount_fen,
                txn.points_used,
                &self.shared.policy.points,
            )
        }) {
            Ok(()) => {
                let subsidy = provisional_subsidy(&txn, merchant.as_ref(), &self.shared.policy);
                Proposal::Store {
                    reason: subsidy.reason,
                    subsidy_fen: subsidy.fen,
                    points_awarded: Points(0),
                }
            }
            Err(reason) => Proposal::Reject(reason),
        };
        let item = IngestItem {
            txn: IngestTxn {
                device_id: device.device_id,
                merchant_id: device.merchant_id,
                txn,
                proposal,
                received_at_ms,
                business_date,
            },
            reply: ctx.address().recipient(),
            received,
        };
        let Some(queue) = self.ingest.clone() else {
            return self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
        };
        self.in_flight += 1;
        match queue.try_send(item) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(item)) => {
                // Backpressure: pause this actor (and so its socket reads) until a slot
                // frees up.
                ctx.wait(
                    actix::fut::wrap_future(async move { queue.send(item).await }).map(
                        |res, act: &mut Session, ctx| {
                            if res.is_err() {
                                act.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
                            }
                        },
                    ),
                );
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.fail(ctx, ErrorCode::ShuttingDown, "gateway is shutting down");
            }
        }
    }

    /// POINTS_AUTH: the 50 % cap is checked here (pure), the balance and the hold in the
    /// store. The answer is sent when the store replies; other frames go on meanwhile.
    fn on_points_auth(&mut self, p: wenxiao_protocol::PointsAuth, ctx: &mut Context<Self>) {
        use wenxiao_protocol::{AuthStatus, PointsAuthResult};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let decline = |reason| {
            Message::PointsAuthResult(PointsAuthResult {
                req_id: p.req_id,
                status: AuthStatus::Declined,
                reason,
                hold_id: None,
                points_approved: Points(0),
                points_balance: Points(0),
                expires_at_ms: UnixMillis(0),
            })
        };
        if device.kind != wenxiao_protocol::DeviceKind::Pos {
            return self.send(ctx, decline(Reason::KindNotAllowed));
        }
        let policy = &self.shared.policy.points;
        if let Err(reason) =
            crate::rules::check_points_use(p.purchase_fen, p.points, Points(u32::MAX), policy)
        {
            return self.send(ctx, decline(reason));
        }
        let now = clock::now_ms();
        let request = crate::store::HoldRequest {
            card_no: p.card_no,
            device_id: device.device_id,
            points: p.points,
            purchase_fen: p.purchase_fen,
            now_ms: now,
            expires_at_ms: now.saturating_add(policy.hold_ttl_ms),
        };
        let store = self.shared.store.clone();
        let reply = move |outcome| {
            Message::PointsAuthResult(match outcome {
                crate::store::HoldOutcome::Approved { hold_id, available } => PointsAuthResult {
                    req_id: p.req_id,
                    status: AuthStatus::Approved,
                    reason: Reason::None,
                    hold_id: Some(hold_id),
                    points_approved: p.points,
                    points_balance: available,
                    expires_at_ms: UnixMillis(request.expires_at_ms),
                },
                crate::store::HoldOutcome::Insufficient { available } => PointsAuthResult {
                    req_id: p.req_id,
                    status: AuthStatus::Declined,
                    reason: Reason::InsufficientPoints,
                    hold_id: None,
                    points_approved: Points(0),
                    points_balance: available,
                    expires_at_ms: UnixMillis(0),
                },
            })
        };
        self.store_request(ctx, async move { store.create_hold(request).await }, reply);
    }

    /// OTA endpoints: claims released credits of the operator's cards up to the free
    /// `max_in_flight` slots and pushes them.
    fn claim(&mut self, ctx: &mut Context<Self>, include_bound: bool) {
        let Some((from, to)) = self.ota_range else {
            return;
        };
        let Some(device_id) = self.device_id else {
            return;
        };
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        if self.claiming {
            self.claim_again = true;
            return;
        }
        let window = self
            .shared
            .config
            .session
            .max_in_flight
            .min(self.shared.config.credits.push_window);
        let free = usize::from(window).saturating_sub(self.pushed.len());
        if free == 0 {
            return;
        }
        self.claiming = true;
        let claim = crate::store::PushClaim {
            device_id,
            cards_from: from,
            cards_to: to,
            include_bound,
            limit: i64::try_from(free).unwrap_or(i64::MAX),
            now_ms: clock::now_ms(),
            binding_timeout_ms: self.shared.config.credits.binding_timeout_ms,
        };
        let store = self.shared.store.clone();
        let task = self
            .shared
            .store_rt
            .spawn(async move { store.claim_pushes(claim).await });
        ctx.spawn(
            actix::fut::wrap_future(task).map(|res, act: &mut Session, ctx| {
                act.claiming = false;
                match res {
                    Ok(Ok(pushes)) => {
                        if matches!(act.phase, Phase::Closing) {
                            return;
                        }
                        for p in pushes {
                            if act.pushed.insert(p.credit_id) {
                                act.send(ctx, Message::CreditPush(p));
                            }
                        }
                        if std::mem::take(&mut act.claim_again) {
                            act.claim(ctx, false);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "claiming pushes failed");
                        act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claim task failed");
                        act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                }
            }),
        );
    }

    /// Runs a store request for this session without holding up its other frames, and
    /// sends the message `reply` makes of the answer. Bounded by `max_in_flight`.
    fn store_request<T, F, R>(&mut self, ctx: &mut Context<Self>, work: F, reply: R)
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
        R: FnOnce(T) -> Message + 'static,
    {
        if self.requests_in_flight >= usize::from(self.shared.config.session.max_in_flight) {
            return self.fail(
                ctx,
                ErrorCode::TooManyInFlight,
                "too many requests in flight",
            );
        }
        self.requests_in_flight += 1;
        let task = self.shared.store_rt.spawn(work);
        ctx.spawn(
            actix::fut::wrap_future(task).map(move |res, act: &mut Session, ctx| {
                act.requests_in_flight = act.requests_in_flight.saturating_sub(1);
                match res {
                    Ok(Ok(v)) if !matches!(act.phase, Phase::Closing) => {
                        act.send(ctx, reply(v));
                        // A result may have freed an OTA endpoint's push slot.
                        act.claim(ctx, false);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "store request failed");
                        act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store task failed");
                        act.fail(ctx, ErrorCode::StoreUnavailable, "store unavailable");
                    }
                }
            }),
        );
    }

    /// CARD_PRESENTED: settle what is in doubt for the card, offer what it is owed. Only
    /// POS terminals and kiosks load cards; other devices get an empty offer.
    fn on_card_presented(&mut self, p: wenxiao_protocol::CardPresented, ctx: &mut Context<Self>) {
        use wenxiao_protocol::{CreditList, CreditOffer, DeviceKind};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let offer = move |credits| {
            Message::CreditOffer(CreditOffer {
                req_id: p.req_id,
                credits: CreditList::new(credits).unwrap_or_default(),
            })
        };
        if !matches!(device.kind, DeviceKind::Pos | DeviceKind::Kiosk) {
            return self.send(ctx, offer(Vec::new()));
        }
        let seen = crate::store::CardSeen {
            card_no: p.card_no,
            online_seq: p.online_seq,
            device_id: device.device_id,
            now_ms: clock::now_ms(),
            received_order: self.shared.store.observed_order(),
            binding_timeout_ms: self.shared.config.credits.binding_timeout_ms,
        };
        let store = self.shared.store.clone();
        self.store_request(ctx, async move { store.card_presented(seen).await }, offer);
    }

    /// LOAD_INIT: MAC1 checked and the attempt recorded by the store before LOAD_AUTH.
    fn on_load_init(&mut self, l: wenxiao_protocol::LoadInit, ctx: &mut Context<Self>) {
        use crate::store::LoadDecision;
        use wenxiao_protocol::mac::{KeyPurpose, Mac1Input, Mac2Input, mac_eq};
        use wenxiao_protocol::{AuthStatus, Bytes4, LoadAuth};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let device_id = device.device_id;
        let key = self.shared.keys.card_key(KeyPurpose::Load, l.card_no);
        let mac1_key = key.clone();
        let mac1_ok = move |amount_fen: Fen| {
            let expected = Mac1Input {
                card_no: l.card_no,
                online_seq: l.online_seq,
                balance_fen: l.balance_fen,
                amount_fen,
                device_id,
                card_random: l.card_random,
            }
            .mac(&mac1_key);
            mac_eq(expected, l.mac1)
        };
        let now = clock::now_ms();
        let request = crate::store::LoadInitRequest {
            credit_id: l.credit_id,
            card_no: l.card_no,
            online_seq: l.online_seq,
            device_id,
            host_time_ms: now,
            received_order: self.shared.store.observed_order(),
        };
        let store = self.shared.store.clone();
        let reply = move |decision| {
            let auth = match decision {
                LoadDecision::Approved {
                    amount_fen,
                    host_time_ms,
                } => LoadAuth {
                    credit_id: l.credit_id,
                    status: AuthStatus::Approved,
                    reason: Reason::None,
                    host_time_ms: UnixMillis(host_time_ms),
                    mac2: Mac2Input {
                        card_no: l.card_no,
                        online_seq: l.online_seq,
                        amount_fen,
                        device_id,
                        host_time_ms: UnixMillis(host_time_ms),
                        card_random: l.card_random,
                    }
                    .mac(&key),
                },
                LoadDecision::Declined(reason) => LoadAuth {
                    credit_id: l.credit_id,
                    status: AuthStatus::Declined,
                    reason,
                    host_time_ms: UnixMillis(now),
                    mac2: Bytes4::ZERO,
                },
            };
            Message::LoadAuth(auth)
        };
        self.store_request(
            ctx,
            async move { store.begin_load(request, mac1_ok).await },
            reply,
        );
    }

    /// CREDIT_RESULT: the load TAC verified against the recorded attempt.
    fn on_credit_result(&mut self, r: wenxiao_protocol::CreditResult, ctx: &mut Context<Self>) {
        use wenxiao_protocol::CreditResultAck;
        use wenxiao_protocol::mac::{KeyPurpose, LoadTacInput, mac_eq};
        let Phase::Active { device, .. } = &self.phase else {
            return;
        };
        let device_id = device.device_id;
        self.pushed.remove(&r.credit_id);
        let key = self.shared.keys.card_key(KeyPurpose::Load, r.card_no);
        let tac_ok = move |a: &crate::store::LoadAttempt| {
            let expected = LoadTacInput {
                card_no: r.card_no,
                online_seq: a.online_seq,
                balance_after_fen: r.balance_after_fen,
                amount_fen: a.amount_fen,
                device_id,
                host_time_ms: UnixMillis(a.host_time_ms),
            }
            .tac(&key);
            mac_eq(expected, r.tac)
        };
        let report = crate::store::ResultReport {
            credit_id: r.credit_id,
            card_no: r.card_no,
            outcome: r.outcome,
            device_id,
            now_ms: clock::now_ms(),
        };
        let store = self.shared.store.clone();
        self.store_request(
            ctx,
            async move { store.finish_load(report, tac_ok).await },
            move |(status, reason)| {
                Message::CreditResultAck(CreditResultAck {
                    credit_id: r.credit_id,
                    status,
                    reason,
                })
            },
        );
    }

    fn send_drain(&mut self, ctx: &mut Context<Self>) {
        let after = self.shared.config.session.drain_reconnect_after_ms;
        self.send(
            ctx,
            Message::Drain(Drain {
                reconnect_after_ms: after,
            }),
        );
    }

    fn checkpoint(&mut self) {
        let (Some(device), Some(seq)) = (self.device_id, Seq::new(self.seqs.watermark)) else {
            return;
        };
        if self.seqs.watermark <= self.seqs.checkpointed {
            return;
        }
        self.seqs.checkpointed = self.seqs.watermark;
        self.shared.watermarks.insert(device, self.seqs.watermark);
        if self.shared.checkpoints.try_send((device, seq)).is_err() {
            tracing::debug!(%device, "stored_seq checkpoint skipped: queue full");
        }
    }
}

/// The subsidy a valid TXN asks of the budget (the store grants it, or less).
/// Whether a session whose HELLO came `mine`-th may take over from the registered one
/// (whose HELLO came `registered`-th): only a later HELLO replaces a session.
fn newer_hello_wins(registered: Option<u64>, mine: u64) -> bool {
    registered.is_none_or(|r| mine > r)
}

fn provisional_subsidy(
    txn: &Txn,
    merchant: Option<&Merchant>,
    policy: &crate::policy::Policy,
) -> crate::rules::Subsidy {
    let none = crate::rules::Subsidy {
        fen: Fen::ZERO,
        reason: Reason::None,
    };
    match (txn.kind, merchant) {
        (wenxiao_protocol::TxnKind::Purchase, Some(m)) => crate::rules::purchase_subsidy(
            &crate::rules::PurchaseFacts {
                category: m.category,
                item: txn.item,
                paid_fen: txn.amount_fen,
                list_price_fen: txn.list_price_fen,
                points_used: txn.points_used,
                // The blacklist lives in the store, which takes the subsidy off a
                // blacklisted card's purchase in the ingest transaction.
                card_blacklisted: false,
                merchant_suspended: !m.active,
            },
            policy,
        ),
        // Sign-ins, top-ups and refunds ask nothing of the budget; refund reversals come
        // with clearing.
        _ => none,
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let hello = Duration::from_millis(self.shared.config.session.hello_timeout_ms);
        ctx.run_later(hello, |act, ctx| {
            if matches!(act.phase, Phase::AwaitingHello) {
                act.fail(ctx, ErrorCode::HelloTimeout, "no HELLO within the deadline");
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        if let Some(id) = self.device_id {
            self.shared
                .sessions
                .remove_if(&id, |_, (sid, _, _)| *sid == self.session_id);
            let me = ctx.address();
            self.shared
                .ota_sessions
                .remove_if(&id, |_, addr| *addr == me);
        }
        // Only a welcomed session was counted in the gauge.
        if let Some(kind) = self.welcomed_kind {
            metrics::gauge!(m::SESSIONS, "kind" => kind).decrement(1.0);
        }
        self.checkpoint();
    }
}

impl StreamHandler<Result<Message, CodecError>> for Session {
    fn handle(&mut self, item: Result<Message, CodecError>, ctx: &mut Context<Self>) {
        let message = match item {
            Ok(m) => m,
            Err(CodecError::Decode(e)) => {
                return self.fail(ctx, e.error_code(), &e.to_string());
            }
            Err(CodecError::Io(e)) => {
                tracing::debug!(session = %self.session_id, error = %e, "read failed");
                return ctx.stop();
            }
        };
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        self.last_rx = Instant::now();
        metrics::counter!(m::FRAMES_RECEIVED_TOTAL, "type" => message.message_type().name())
            .increment(1);
        match (&self.phase, message) {
            (Phase::AwaitingHello, Message::Hello(h)) => {
                self.arm_idle_check(ctx);
                self.on_hello(h, ctx);
            }
            (Phase::AwaitingHello, _) => {
                self.fail(ctx, ErrorCode::HelloRequired, "HELLO must come first");
            }
            (_, Message::Hello(_)) => {
                self.fail(
                    ctx,
                    ErrorCode::UnexpectedMessage,
                    "HELLO twice in one session",
                );
            }
            (_, m)
                if m.message_type().direction() == wenxiao_protocol::Direction::GatewayToDevice =>
            {
                let text = format!("{m} is sent by the gateway, not to it");
                self.fail(ctx, ErrorCode::UnexpectedMessage, &text);
            }
            (_, Message::Heartbeat(Heartbeat { sent_at_ms })) => {
                self.send(
                    ctx,
                    Message::HeartbeatAck(HeartbeatAck {
                        sent_at_ms,
                        server_time_ms: UnixMillis(clock::now_ms()),
                    }),
                );
            }
            (_, Message::Txn(t)) => self.on_txn(t, ctx),
            (_, Message::PointsAuth(p)) => self.on_points_auth(p, ctx),
            (_, Message::CardPresented(p)) => self.on_card_presented(p, ctx),
            (_, Message::LoadInit(l)) => self.on_load_init(l, ctx),
            (_, Message::CreditResult(r)) => self.on_credit_result(r, ctx),
            // Points, credits and hot lists arrive with the clearing issue; until then a
            // device that uses them is told plainly rather than left waiting.
            (_, m) => {
                let text = format!("{m} is not served by this gateway version");
                self.fail(ctx, ErrorCode::UnexpectedMessage, &text);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // After a decode error the stream ends too; the ERROR being flushed decides when
        // to stop then. Otherwise the device closed its side: nothing more will be read,
        // and acks cannot reach it; whatever is committed will be answered DUPLICATE when
        // it re-sends.
        if !matches!(self.phase, Phase::Closing) {
            ctx.stop();
        }
    }
}

/// The writer task ended: it flushed and shut the stream down after the session closed
/// it, or a write failed (the message).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct WriterDone(Option<String>);

impl Handler<WriterDone> for Session {
    type Result = ();
    fn handle(&mut self, done: WriterDone, ctx: &mut Context<Self>) {
        if let Some(e) = done.0 {
            tracing::debug!(session = %self.session_id, error = %e, "write failed");
        }
        ctx.stop();
    }
}

impl Handler<TxnDone> for Session {
    type Result = ();

    fn handle(&mut self, done: TxnDone, ctx: &mut Context<Self>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let answer: TxnAnswer = match done.answer {
            Ok(a) => a,
            Err(_) => {
                return self.fail(
                    ctx,
                    ErrorCode::StoreUnavailable,
                    "store unavailable; re-send later",
                );
            }
        };
        self.seqs.answered(done.seq.get());
        metrics::counter!(m::TXNS_TOTAL, "status" => answer.status.name(), "reason" => answer.reason.name())
            .increment(1);
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        self.send(
            ctx,
            Message::TxnAck(TxnAck {
                seq: done.seq,
                status: answer.status,
                reason: answer.reason,
                subsidy_fen: answer.subsidy_fen,
                points_awarded: answer.points_awarded,
            }),
        );
        metrics::histogram!(m::TXN_ACK_SECONDS).record(done.received.elapsed());
        debug_assert!(
            answer.status != TxnStatus::Duplicate || answer.reason != Reason::SeqConflict
        );
    }
}

impl Handler<Replaced> for Session {
    type Result = ();
    fn handle(&mut self, _: Replaced, ctx: &mut Context<Self>) {
        self.fail(
            ctx,
            ErrorCode::SessionReplaced,
            "a newer session of this device took over",
        );
    }
}

impl Handler<Disabled> for Session {
    type Result = ();
    fn handle(&mut self, _: Disabled, ctx: &mut Context<Self>) {
        self.fail(
            ctx,
            ErrorCode::DeviceDisabled,
            "the device was disabled in the registry",
        );
    }
}

impl Handler<PushNow> for Session {
    type Result = ();
    fn handle(&mut self, _: PushNow, ctx: &mut Context<Self>) {
        self.claim(ctx, false);
    }
}

impl Handler<StartDrain> for Session {
    type Result = ();
    fn handle(&mut self, _: StartDrain, ctx: &mut Context<Self>) {
        self.draining = true;
        if matches!(self.phase, Phase::Active { .. }) {
            self.send_drain(ctx);
        }
    }
}

impl Handler<ForceClose> for Session {
    type Result = ();
    fn handle(&mut self, _: ForceClose, ctx: &mut Context<Self>) {
        self.fail(ctx, ErrorCode::ShuttingDown, "drain period over");
    }
}

#[cfg(test)]
mod tests {
    use super::newer_hello_wins;

    /// Defect 9: two HELLOs of one device whose WELCOME lookups finish out of order — the
    /// older one, finishing last, must not replace the newer session.
    #[test]
    fn only_a_later_hello_replaces_a_session() {
        assert!(newer_hello_wins(None, 0));
        assert!(newer_hello_wins(Some(3), 4));
        assert!(!newer_hello_wins(Some(4), 3));
        assert!(!newer_hello_wins(Some(4), 4));
    }
}
