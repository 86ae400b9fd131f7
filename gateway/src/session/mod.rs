//! One actor per device connection: it owns the TLS stream's framed halves and the
//! session's state, and everything else talks to it by message.
//!
//! Reading is an actix stream; when the shared ingest queue is full the actor waits for a
//! slot with `ctx.wait`, which also stops it polling the socket — backpressure reaches the
//! device through TCP. Acks arrive as [`TxnDone`] messages from the store writers, at
//! most `max_in_flight` per session, so nothing queues without bound.
//!
//! The actor is split by concern: [`shared`] (state every session of a node shares),
//! `hello` (HELLO and WELCOME), `txn` (TXNs and their acks), `points` (POINTS_AUTH),
//! `credits` (offers, loads, results and OTA pushes) and `hotlist` (the hot list).

mod credits;
mod hello;
mod hotlist;
mod leases;
mod points;
mod shared;
mod txn;

use txn::SeqTracker;

pub use hotlist::{HotlistChanged, follow as follow_hotlist, screens_cards};
pub use shared::{CHECKPOINT_PASS_DEVICES_MAX, CHECKPOINT_QUEUE_DEVICES, Shared};

use crate::clock;
use crate::ingest::IngestSender;
use crate::metrics as m;
use crate::registry::{Device, Merchant};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::ReadHalf;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::FramedRead;
use wenxiao_protocol::{
    CodecError, DeviceId, Drain, Error, ErrorCode, Heartbeat, HeartbeatAck, Message, SessionId,
    Text, UnixMillis, WxCodec,
};

/// Initial read-buffer capacity per connection: small, since idle sessions dominate and
/// a TXN frame is 78 bytes; the decoder grows it up to one frame's bound when needed.
const READ_BUFFER_BYTES_INITIAL: usize = 256;

type Tls = crate::tls_conn::TlsConn;

/// Tells a session a newer one of its device took over.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Replaced;

/// A reloaded CRL revokes these certificate serials: a session of one of them closes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Revoked(pub Arc<std::collections::HashSet<Vec<u8>>>);

/// The registry no longer has the session's device active.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Disabled;

/// The session's merchant changed in the registry: its TXNs are judged by the new entry.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MerchantChanged(pub Merchant);

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

/// Why a frame got no room in the write budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoom {
    /// The device did not read for `slow_reader_timeout_ms`.
    Stalled,
    /// The writer ended (a write failed): the session ends too.
    WriterGone,
}

/// One device connection.
pub struct Session {
    shared: Arc<Shared>,
    cert_device: Result<DeviceId, String>,
    /// The client certificate's serial (see `tls::serial_bytes`), for a reloaded CRL.
    cert_serial: Option<Vec<u8>>,
    phase: Phase,
    writer: crate::outbound::Outbound,
    /// Frames waiting, in order, for room in the outbound budget; while any waits, later
    /// frames queue behind them. Only frames made by one handler can gather here: the
    /// wait for room stops the actor handling anything else.
    blocked: std::collections::VecDeque<bytes::Bytes>,
    /// `close` was asked for while frames waited: the writer closes behind them.
    close_when_sent: bool,
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
    /// Card-screening terminals: their hot list (see `hotlist`).
    hotlist: Option<hotlist::HotlistState>,
    /// This session's device lease epoch (0 before WELCOME): its TXNs and credit steps
    /// are refused by the store once another session holds a later one.
    lease_epoch: u64,
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
        (cert_device, cert_serial): (Result<DeviceId, String>, Option<Vec<u8>>),
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
                cert_serial,
                phase: Phase::AwaitingHello,
                writer,
                blocked: std::collections::VecDeque::new(),
                close_when_sent: false,
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
                lease_epoch: 0,
                hotlist: None,
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
        if !self.blocked.is_empty() {
            self.blocked.push_back(frame);
            return;
        }
        match self.writer.try_send(frame) {
            crate::outbound::Queue::Queued | crate::outbound::Queue::Closed => {}
            crate::outbound::Queue::Full(frame) => {
                self.blocked.push_back(frame);
                self.wait_for_room(ctx);
            }
        }
    }

    /// Waits for room for the first blocked frame, queues it and those behind it that fit,
    /// and waits again for the next that does not. One wait at a time, so the frames
    /// keep their order. Once none waits, a close asked for meanwhile is done, and the
    /// hot list's chunks go on.
    fn wait_for_room(&mut self, ctx: &mut Context<Self>) {
        let Some(len) = self.blocked.front().map(bytes::Bytes::len) else {
            return;
        };
        ctx.wait(actix::fut::wrap_future(self.room_for(len)).map(
            move |room, act: &mut Session, ctx| match room {
                Ok(room) => {
                    if let Some(frame) = act.blocked.pop_front() {
                        act.writer.send_reserved(frame, room);
                    }
                    while let Some(frame) = act.blocked.pop_front() {
                        if let crate::outbound::Queue::Full(frame) = act.writer.try_send(frame) {
                            act.blocked.push_front(frame);
                            return act.wait_for_room(ctx);
                        }
                    }
                    if std::mem::take(&mut act.close_when_sent) {
                        act.close(ctx);
                    } else {
                        act.pump_hotlist(ctx);
                    }
                }
                Err(NoRoom::Stalled) => act.drop_slow_reader(ctx),
                Err(NoRoom::WriterGone) => {
                    act.blocked.clear();
                    ctx.stop();
                }
            },
        ));
    }

    /// Room for a frame of `len` bytes in the write budget, or why there is none: the
    /// device has not read for `slow_reader_timeout_ms`, or the writer is gone.
    fn room_for(
        &self,
        len: usize,
    ) -> impl std::future::Future<Output = Result<crate::outbound::Room, NoRoom>> + use<> {
        let room = self.writer.reserve(len);
        let stall = Duration::from_millis(self.shared.config.session.slow_reader_timeout_ms);
        async move {
            match tokio::time::timeout(stall, room).await {
                Ok(Ok(room)) => Ok(room),
                Ok(Err(_)) => Err(NoRoom::WriterGone),
                Err(_) => Err(NoRoom::Stalled),
            }
        }
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
        metrics::counter!(m::SESSIONS_CLOSED_TOTAL, "reason" => code.name()).increment(1);
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
    /// `close_linger_ms`). Frames still waiting for room go first: the writer closes
    /// behind them.
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Closing;
        if let Some(h) = self.reader.take() {
            ctx.cancel_future(h);
        }
        if !self.blocked.is_empty() {
            self.close_when_sent = true;
            return;
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
                    Ok(Err(crate::store::StoreError::Fenced { .. })) => {
                        act.fail(
                            ctx,
                            ErrorCode::SessionReplaced,
                            "another session of this device took over",
                        );
                    }
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

    fn send_drain(&mut self, ctx: &mut Context<Self>) {
        let after = self.shared.config.session.drain_reconnect_after_ms;
        self.send(
            ctx,
            Message::Drain(Drain {
                reconnect_after_ms: after,
            }),
        );
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
            self.shared
                .hotlist_versions
                .remove_if(&id, |_, (sid, _)| *sid == self.session_id);
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
            (_, Message::HotlistAck(a)) => self.on_hotlist_ack(a, ctx),
            // Every device-to-gateway type is served above; this is for a type a later
            // protocol version adds before this gateway serves it.
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

impl Handler<Revoked> for Session {
    type Result = ();
    fn handle(&mut self, revoked: Revoked, ctx: &mut Context<Self>) {
        if self
            .cert_serial
            .as_ref()
            .is_some_and(|s| revoked.0.contains(s))
        {
            self.fail(
                ctx,
                ErrorCode::AuthFailed,
                "the device's certificate was revoked",
            );
        }
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

impl Handler<MerchantChanged> for Session {
    type Result = ();
    fn handle(&mut self, changed: MerchantChanged, _: &mut Context<Self>) {
        if let Phase::Active { merchant, .. } = &mut self.phase
            && merchant
                .as_ref()
                .is_some_and(|m| m.merchant_id == changed.0.merchant_id)
        {
            *merchant = Some(changed.0);
        }
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
