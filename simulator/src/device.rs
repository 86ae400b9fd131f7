//! One emulated device, as a terminal vendor would build it: its own certificate, HELLO,
//! heartbeats, TXNs pipelined up to `max_in_flight` from a journal it re-sends after every
//! reconnect, POINTS_AUTH before a points purchase, the card load exchange on
//! CARD_PRESENTED (POS and kiosks) or CREDIT_PUSH (OTA endpoints), DRAIN, and reconnecting
//! with jittered backoff. Faults (disconnects, slow reading, hours offline, clock skew)
//! come from [`DeviceFaults`]. Terminals (POS, kiosks, sign-in readers) keep a hot list
//! across reconnects ([`crate::hotlist`]): they apply HOTLIST_UPDATEs, acknowledge each
//! version, and refuse a listed card at the reader before it becomes a TXN.
//!
//! A device runs as one tokio task over one `Framed` TLS stream; it owns all its state, and
//! shares only counters, the card book, the hot-list plantings and the run's control
//! channel.

use crate::card::{self, Card};
use crate::hotlist::{self, Applied, AppliedVersion, FullList, HotlistReport, HotlistState};
use crate::plan::PlannedEvent;
use crate::world::{Control, Latencies, World};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use wenxiao_protocol::*;

/// A device waits this long for WELCOME before it gives up on the connection.
pub const WELCOME_WAIT_MS: u64 = 10_000;
/// First reconnect delay after a failed connection; doubles up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_BASE_MS: u64 = 250;
/// Longest reconnect delay.
pub const BACKOFF_MAX_MS: u64 = 8_000;
/// Errors a device keeps word for word in its report (later ones are only counted).
pub const ERRORS_KEPT_MAX: usize = 16;
/// Cards waiting to be presented at one device.
pub const PRESENT_QUEUE_CARDS: usize = 4_096;
/// Longest a device waits for its TLS close before reconnecting to resync its hot list.
pub const RESYNC_CLOSE_WAIT_MS: u64 = 1_000;

/// Faults injected into one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceFaults {
    /// The device clock runs this far ahead (negative: behind) of true time.
    pub skew_ms: i64,
    /// The device reads each frame this late (a slow reader).
    pub slow_read_ms: u64,
    /// Simulated-time window `[from, to)` (ms after the day's start) during which the
    /// device has no network: it keeps capturing transactions and flushes them after.
    pub offline: Option<(i64, i64)>,
    /// Mean real time between random connection drops; 0 = never.
    pub mean_ms_between_drops: u64,
}

/// How one device is set up.
pub struct DeviceSetup {
    /// Its id (its certificate's CN).
    pub id: DeviceId,
    /// Its kind, declared in HELLO.
    pub kind: DeviceKind,
    /// TLS with its own certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// The gateway.
    pub gateway: SocketAddr,
    /// Local address to connect from (spreads devices over source addresses).
    pub source_ip: Option<IpAddr>,
    /// Its share of the day, in time order.
    pub events: Vec<PlannedEvent>,
    /// Injected faults.
    pub faults: DeviceFaults,
    /// Seeds its jitter.
    pub seed: u64,
    /// Cards to present (POS and kiosks, after the day).
    pub present: Option<mpsc::Receiver<CardNo>>,
}

impl std::fmt::Debug for DeviceSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSetup")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("events", &self.events.len())
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// One TXN's answer as the device saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRecord {
    /// The seq.
    pub seq: u64,
    /// What was bought or done.
    pub kind: TxnKind,
    /// The card (to tell planted fraud from the honest city).
    pub card_no: CardNo,
    /// STORED, DUPLICATE or REJECTED.
    pub status: TxnStatus,
    /// Why.
    pub reason: Reason,
    /// Provisional subsidy.
    pub subsidy_fen: Fen,
    /// Points awarded.
    pub points_awarded: Points,
    /// Points spent.
    pub points_used: Points,
}

/// A credit loaded onto a card through this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRecord {
    /// The credit.
    pub credit_id: CreditId,
    /// The card.
    pub card_no: CardNo,
    /// Money loaded.
    pub amount_fen: Fen,
    /// When the gateway recorded the result.
    pub loaded_at: Instant,
}

/// What a device did, returned when it stops.
#[derive(Debug)]
pub struct DeviceReport {
    /// Its id.
    pub id: DeviceId,
    /// Its kind.
    pub kind: DeviceKind,
    /// Highest seq it assigned.
    pub last_seq: u64,
    /// Every answer, in the order received.
    pub acks: Vec<AckRecord>,
    /// TXNs still unanswered when it stopped.
    pub unanswered: u64,
    /// Credits it loaded (the gateway recorded the result).
    pub loads: Vec<LoadRecord>,
    /// The first [`ERRORS_KEPT_MAX`] unexpected things it saw.
    pub errors: Vec<String>,
    /// Its hot list: versions applied, full lists, resyncs, refusals (terminals only).
    pub hotlist: HotlistReport,
}

/// A latency histogram in µs, 1 µs to 10 min, 3 significant figures.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram documents as valid
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .expect("low ≥ 1, high ≥ 2 × low and 3 significant figures are valid bounds")
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

struct Entry {
    txn: Txn,
    /// Written in the current session, at this time.
    sent_at: Option<Instant>,
    resend: bool,
}

/// A load in progress on this device.
struct Load {
    card: Card,
    amount: Fen,
    started: Instant,
    pushed: bool,
    /// LOAD_AUTH approved and applied: the result is LOADED.
    loaded: bool,
}

enum SessionEnd {
    /// Connection lost or closed by the gateway: reconnect after a backoff.
    Lost,
    /// Dropped on purpose (fault or storm): reconnect after a short jitter.
    Dropped,
    /// DRAIN: reconnect after this long.
    Drained(u64),
    /// The scheduled offline window starts.
    Offline,
    /// A hot-list update could not apply and the list is dropped: close, then reconnect
    /// after a backoff (HELLO then says version 0, and the full list follows).
    Resync,
    /// Finished.
    Done,
}

type Conn = Framed<TlsStream<TcpStream>, WxCodec>;

/// The running device.
struct Device {
    setup: DeviceSetup,
    world: Arc<World>,
    rng: StdRng,
    next_event: usize,
    next_seq: u64,
    journal: BTreeMap<u64, Entry>,
    in_flight: usize,
    max_in_flight: usize,
    heartbeat: Duration,
    /// Points purchases waiting for POINTS_AUTH_RESULT, by req_id.
    awaiting_points: HashMap<u32, PlannedEvent>,
    /// The cards with a REFUND in this device's day, and the seq of each one's latest
    /// purchase here so far (what the refund names). Only those cards: bounded by the
    /// planted refunds, not by the day's purchases.
    refundable: HashMap<CardNo, Option<u64>>,
    next_req: u32,
    /// Cards on the reader, to be presented when the request window has room.
    to_present: Vec<CardNo>,
    /// Presented cards waiting for CREDIT_OFFER, by req_id.
    awaiting_offer: HashMap<u32, CardNo>,
    /// Credits offered or pushed, not started yet (card, credit, amount, pushed at).
    to_load: VecDeque<(CardNo, CreditId, Fen, Instant, bool)>,
    loads: HashMap<CreditId, Load>,
    /// CREDIT_RESULTs sent and not yet acknowledged (re-sent after a reconnect).
    results: HashMap<CreditId, (CreditResult, Instant, bool, Fen)>,
    /// DRAIN received: reconnect this long after the last ack.
    drain_after_ms: Option<u64>,
    control: tokio::sync::watch::Receiver<Control>,
    storm_epoch: u64,
    report: DeviceReport,
    error_count: u64,
    /// The hot list, kept across reconnects (terminals; an OTA endpoint's stays empty).
    hotlist: HotlistState,
    /// When the first chunk of the update being received arrived.
    update_started_at: Instant,
}

impl Device {
    fn note_error(&mut self, what: String) {
        self.error_count += 1;
        self.world.counters.errors.fetch_add(1, Relaxed);
        if self.report.errors.len() < ERRORS_KEPT_MAX {
            self.report.errors.push(what);
        }
    }

    /// Requests other than TXN unanswered now (their own window of `max_in_flight`).
    fn requests_in_flight(&self) -> usize {
        self.awaiting_points.len()
            + self.awaiting_offer.len()
            + self.loads.len()
            + self.results.len()
    }

    fn request_room(&self) -> bool {
        self.requests_in_flight() < self.max_in_flight
    }

    fn draining(&self) -> bool {
        self.drain_after_ms.is_some()
    }

    fn day_done(&self) -> bool {
        self.next_event >= self.setup.events.len() && self.journal.is_empty()
    }

    fn idle(&self) -> bool {
        self.day_done()
            && self.awaiting_points.is_empty()
            && self.awaiting_offer.is_empty()
            && self.to_present.is_empty()
            && self.to_load.is_empty()
            && self.loads.is_empty()
            && self.results.is_empty()
    }

    fn finished(&self) -> bool {
        let ctl = *self.control.borrow();
        ctl.abort || (ctl.finish && self.idle())
    }

    fn offline_now(&self) -> Option<Instant> {
        let (from, to) = self.setup.faults.offline?;
        let now = self.world.clock.sim_ms_now();
        (now >= from && now < to).then(|| self.world.clock.instant_of(to))
    }

    fn next_event_at(&self) -> Option<Instant> {
        self.setup
            .events
            .get(self.next_event)
            .map(|e| self.world.clock.instant_of(e.at_ms))
    }

    /// The next seq's TXN for `e` (`next_seq` starts at 1, so a seq always exists). A
    /// REFUND names its card's latest purchase on this device (the refund_of_seq is not
    /// covered by the TAC).
    fn new_txn(&mut self, e: &PlannedEvent) -> Option<Txn> {
        let seq = Seq::new(self.next_seq)?;
        self.next_seq += 1;
        let mut txn = card::txn(
            e,
            seq,
            self.world.day_start_ms,
            self.setup.faults.skew_ms,
            &self.world.keys,
        );
        match e.kind {
            TxnKind::Refund => {
                txn.refund_of_seq = self
                    .refundable
                    .get(&e.card_no)
                    .copied()
                    .flatten()
                    .and_then(Seq::new);
            }
            TxnKind::Purchase => {
                if let Some(latest) = self.refundable.get_mut(&e.card_no) {
                    *latest = Some(seq.get());
                }
            }
            _ => {}
        }
        Some(txn)
    }

    /// A REFUND whose purchase never became a TXN here: it was refused at the reader (the
    /// card is on the hot list), so there is nothing to refund. Counted with the refusals.
    fn refund_without_purchase(&mut self, e: &PlannedEvent) -> bool {
        if e.kind != TxnKind::Refund || self.refundable.get(&e.card_no).copied().flatten().is_some()
        {
            return false;
        }
        let planted = self.world.plantings.is_planted(e.card_no);
        self.report.hotlist.note_refusal(planted);
        self.world.counters.hotlist_refused.fetch_add(1, Relaxed);
        true
    }

    fn journal_txn(&mut self, txn: Option<Txn>) {
        let Some(txn) = txn else { return };
        self.journal.insert(
            txn.seq.get(),
            Entry {
                txn,
                sent_at: None,
                resend: false,
            },
        );
    }

    /// The reader screens the card against the hot list (online or not: that is what the
    /// list is for). A listed card is refused here, before the event becomes a TXN, so it
    /// takes no seq.
    fn refused(&mut self, e: &PlannedEvent) -> bool {
        if !hotlist::screened(self.setup.kind, e.kind) || !self.hotlist.contains(e.card_no) {
            return false;
        }
        let planted = self.world.plantings.is_planted(e.card_no);
        self.report.hotlist.note_refusal(planted);
        self.world.counters.hotlist_refused.fetch_add(1, Relaxed);
        true
    }

    /// Events due now, less those refused by the hot list: offline, straight into the
    /// journal (points purchases go without points: the card cannot be checked); online,
    /// POINTS_AUTH first where wanted.
    fn take_due(&mut self, online: bool) -> Vec<PointsAuth> {
        let now_sim = self.world.clock.sim_ms_now();
        let mut auths = Vec::new();
        while let Some(e) = self.setup.events.get(self.next_event).copied() {
            if e.at_ms > now_sim {
                break;
            }
            self.next_event += 1;
            if self.refused(&e) || self.refund_without_purchase(&e) {
                continue;
            }
            if online && e.points.get() > 0 && !self.draining() && self.request_room() {
                let req = self.next_req;
                self.next_req = self.next_req.wrapping_add(1);
                self.awaiting_points.insert(req, e);
                auths.push(PointsAuth {
                    req_id: ReqId(req),
                    card_no: e.card_no,
                    purchase_fen: e.amount_fen,
                    points: e.points,
                });
            } else {
                let t = self.new_txn(&e);
                self.journal_txn(t);
            }
        }
        auths
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = self.setup.source_ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(self.setup.gateway).await?;
        tcp.set_nodelay(true)?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.setup.tls))
            .connect(name, tcp)
            .await?;
        let c = &self.world.counters;
        c.handshakes.fetch_add(1, Relaxed);
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            c.handshakes_resumed.fetch_add(1, Relaxed);
        }
        Ok(Framed::new(tls, WxCodec::default()))
    }

    /// HELLO → WELCOME.
    async fn open(&mut self, conn: &mut Conn) -> Result<Welcome, String> {
        let hello = Hello {
            device_id: self.setup.id,
            kind: self.setup.kind,
            last_seq: Seq::new(self.next_seq.saturating_sub(1)),
            hotlist_version: self.hotlist.version(),
            firmware: Text::new("wenxiao-sim 1").map_err(|e| e.to_string())?,
        };
        conn.send(Message::Hello(hello))
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_millis(WELCOME_WAIT_MS), conn.next()).await {
            Err(_) => Err("no WELCOME in time".to_owned()),
            Ok(None) => Err("closed before WELCOME".to_owned()),
            Ok(Some(Err(e))) => Err(e.to_string()),
            Ok(Some(Ok(Message::Welcome(w)))) => Ok(w),
            Ok(Some(Ok(Message::Error(e)))) => Err(format!("{}: {}", e.code, e.message)),
            Ok(Some(Ok(other))) => Err(format!("expected WELCOME, got {other:?}")),
        }
    }

    async fn send(&mut self, conn: &mut Conn, m: Message) -> bool {
        conn.send(m).await.is_ok()
    }

    /// Writes journal entries not yet sent in this session, up to the window.
    async fn fill_window(&mut self, conn: &mut Conn) -> bool {
        if self.draining() {
            return true;
        }
        while self.in_flight < self.max_in_flight {
            let Some(entry) = self.journal.values_mut().find(|e| e.sent_at.is_none()) else {
                break;
            };
            entry.sent_at = Some(Instant::now());
            let (txn, resend) = (entry.txn, entry.resend);
            self.in_flight += 1;
            let c = &self.world.counters;
            c.txns_sent.fetch_add(1, Relaxed);
            if resend {
                c.txns_resent.fetch_add(1, Relaxed);
            }
            if conn.feed(Message::Txn(txn)).await.is_err() {
                return false;
            }
        }
        SinkExt::<Message>::flush(conn).await.is_ok()
    }

    fn on_ack(&mut self, a: TxnAck) {
        let Some(entry) = self.journal.remove(&a.seq.get()) else {
            self.note_error(format!("TXN_ACK for seq {} not in flight", a.seq));
            return;
        };
        if let Some(at) = entry.sent_at {
            self.in_flight = self.in_flight.saturating_sub(1);
            Latencies::record(&self.world.latencies.ack_us, micros_since(at));
        }
        let c = &self.world.counters;
        match a.status {
            TxnStatus::Stored => c.acks_stored.fetch_add(1, Relaxed),
            TxnStatus::Duplicate => c.acks_duplicate.fetch_add(1, Relaxed),
            TxnStatus::Rejected => c.acks_rejected.fetch_add(1, Relaxed),
        };
        self.report.acks.push(AckRecord {
            seq: a.seq.get(),
            kind: entry.txn.kind,
            card_no: entry.txn.card_no,
            status: a.status,
            reason: a.reason,
            subsidy_fen: a.subsidy_fen,
            points_awarded: a.points_awarded,
            points_used: entry.txn.points_used,
        });
    }

    fn on_points(&mut self, r: PointsAuthResult) {
        let Some(e) = self.awaiting_points.remove(&r.req_id.get()) else {
            self.note_error(format!("POINTS_AUTH_RESULT for unknown req {}", r.req_id));
            return;
        };
        let mut t = self.new_txn(&e);
        if r.status == AuthStatus::Approved {
            self.world.counters.holds_approved.fetch_add(1, Relaxed);
            if let Some(t) = t.as_mut() {
                t.points_hold_id = r.hold_id;
                t.points_used = r.points_approved;
            }
        } else {
            self.world.counters.holds_declined.fetch_add(1, Relaxed);
        }
        self.journal_txn(t);
    }

    /// Starts loads whose card is free, one per card.
    async fn start_loads(&mut self, conn: &mut Conn) -> bool {
        let mut waiting = VecDeque::new();
        while let Some((card_no, credit, amount, started, pushed)) = self.to_load.pop_front() {
            if !self.request_room() || self.draining() {
                waiting.push_back((card_no, credit, amount, started, pushed));
                continue;
            }
            let Some(card) = self.world.cards.take(card_no) else {
                // Being loaded elsewhere (or by another credit here): later.
                waiting.push_back((card_no, credit, amount, started, pushed));
                continue;
            };
            let init = card.load_init(credit, amount, self.setup.id);
            self.loads.insert(
                credit,
                Load {
                    card,
                    amount,
                    started,
                    pushed,
                    loaded: false,
                },
            );
            if conn.send(Message::LoadInit(init)).await.is_err() {
                self.to_load.extend(waiting);
                return false;
            }
        }
        self.to_load = waiting;
        true
    }

    async fn on_load_auth(&mut self, conn: &mut Conn, a: LoadAuth) -> bool {
        let Some(mut load) = self.loads.remove(&a.credit_id) else {
            self.note_error(format!("LOAD_AUTH for credit {} not loading", a.credit_id));
            return true;
        };
        let result = if a.status == AuthStatus::Approved {
            match load.card.apply(a.credit_id, &a, load.amount, self.setup.id) {
                Ok(tac) => {
                    load.loaded = true;
                    load.card.result(a.credit_id, CreditOutcome::Loaded, tac)
                }
                Err(e) => {
                    self.note_error(e.to_string());
                    load.card
                        .result(a.credit_id, CreditOutcome::NotLoadedFinal, Bytes4::ZERO)
                }
            }
        } else {
            self.world.counters.loads_declined.fetch_add(1, Relaxed);
            self.note_error(format!("LOAD_AUTH declined: {}", a.reason));
            load.card
                .result(a.credit_id, CreditOutcome::NotLoadedRetry, Bytes4::ZERO)
        };
        self.results.insert(
            a.credit_id,
            (result, load.started, load.pushed, load.amount),
        );
        // The card leaves the reader (or the SIM session ends) once the load is done.
        self.world.cards.put(load.card);
        conn.send(Message::CreditResult(result)).await.is_ok()
    }

    fn on_result_ack(&mut self, a: CreditResultAck) {
        let Some((result, started, pushed, amount)) = self.results.remove(&a.credit_id) else {
            self.note_error(format!(
                "CREDIT_RESULT_ACK for unknown credit {}",
                a.credit_id
            ));
            return;
        };
        if a.status == ResultStatus::Rejected {
            self.note_error(format!(
                "CREDIT_RESULT {} rejected: {}",
                a.credit_id, a.reason
            ));
            return;
        }
        if result.outcome == CreditOutcome::Loaded {
            let c = &self.world.counters;
            c.credits_loaded.fetch_add(1, Relaxed);
            c.credits_loaded_fen
                .fetch_add(u64::try_from(amount.get()).unwrap_or(0), Relaxed);
            if pushed {
                Latencies::record(
                    &self.world.latencies.push_to_loaded_us,
                    micros_since(started),
                );
            }
            self.report.loads.push(LoadRecord {
                credit_id: a.credit_id,
                card_no: result.card_no,
                amount_fen: amount,
                loaded_at: Instant::now(),
            });
        }
    }

    /// One HOTLIST_UPDATE chunk: staged; on the last chunk applied and acknowledged; if
    /// it cannot apply, the list is dropped and the session ends for a resync.
    async fn on_hotlist(&mut self, conn: &mut Conn, u: &HotlistUpdate) -> Option<SessionEnd> {
        if !hotlist::screens_cards(self.setup.kind) {
            self.note_error(format!(
                "HOTLIST_UPDATE {} to an {}",
                u.version(),
                self.setup.kind.name()
            ));
            return None;
        }
        if !self.hotlist.in_update() {
            self.update_started_at = Instant::now();
        }
        match self.hotlist.apply(u) {
            Applied::Partial => None,
            Applied::Complete(version) => {
                let full = u.base_version() == HotlistVersion(0);
                if full {
                    self.report.hotlist.note_full_list(FullList {
                        version,
                        cards: self.hotlist.len(),
                        download_us: micros_since(self.update_started_at),
                    });
                }
                let applied = AppliedVersion {
                    version,
                    at_ms: wenxiao_gateway::clock::now_ms(),
                    full,
                };
                self.report
                    .hotlist
                    .note_applied(applied, &self.hotlist, &self.world.plantings);
                self.world.counters.hotlist_applied.fetch_add(1, Relaxed);
                let ack = Message::HotlistAck(HotlistAck { version });
                if self.send(conn, ack).await {
                    None
                } else {
                    Some(SessionEnd::Lost)
                }
            }
            Applied::Resync(reason) => {
                self.world.counters.hotlist_resyncs.fetch_add(1, Relaxed);
                self.report.hotlist.note_resync(reason);
                self.note_error(format!("hot list resync: {reason}"));
                Some(SessionEnd::Resync)
            }
        }
    }

    async fn on_frame(&mut self, conn: &mut Conn, m: Message) -> Option<SessionEnd> {
        match m {
            Message::TxnAck(a) => self.on_ack(a),
            Message::HeartbeatAck(_) => {}
            Message::PointsAuthResult(r) => self.on_points(r),
            Message::CreditOffer(o) => {
                let card_no = self.awaiting_offer.remove(&o.req_id.get());
                match card_no {
                    None => self.note_error(format!("CREDIT_OFFER for unknown req {}", o.req_id)),
                    Some(card_no) => {
                        let now = Instant::now();
                        for c in o.credits.as_slice() {
                            self.to_load.push_back((
                                card_no,
                                c.credit_id,
                                c.amount_fen,
                                now,
                                false,
                            ));
                        }
                    }
                }
            }
            Message::CreditPush(p) => {
                self.world.counters.pushes.fetch_add(1, Relaxed);
                let known = self.loads.contains_key(&p.credit_id)
                    || self.results.contains_key(&p.credit_id)
                    || self.to_load.iter().any(|l| l.1 == p.credit_id);
                if !known {
                    self.to_load.push_back((
                        p.card_no,
                        p.credit_id,
                        p.amount_fen,
                        Instant::now(),
                        true,
                    ));
                }
            }
            Message::LoadAuth(a) => {
                if !self.on_load_auth(conn, a).await {
                    return Some(SessionEnd::Lost);
                }
            }
            Message::CreditResultAck(a) => self.on_result_ack(a),
            Message::HotlistUpdate(u) => {
                if let Some(end) = self.on_hotlist(conn, &u).await {
                    return Some(end);
                }
            }
            Message::Drain(d) => {
                self.world.counters.drains.fetch_add(1, Relaxed);
                self.drain_after_ms = Some(u64::from(d.reconnect_after_ms));
            }
            Message::Error(e) => {
                self.note_error(format!(
                    "ERROR {} (fatal {}): {}",
                    e.code, e.fatal, e.message
                ));
                if e.fatal {
                    return Some(SessionEnd::Lost);
                }
            }
            other => self.note_error(format!("unexpected {other:?}")),
        }
        None
    }
}

impl Device {
    /// One session: fill the window, then react to frames, due events, heartbeats,
    /// presented cards, faults and the run's control until the session ends.
    async fn session(&mut self, conn: &mut Conn, welcome: Welcome) -> SessionEnd {
        self.max_in_flight = usize::from(welcome.max_in_flight.max(1));
        self.heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_s.max(1)));
        self.drain_after_ms = None;
        self.in_flight = 0;
        // An update cut off with the last connection is sent again from the version held.
        self.hotlist.abandon_partial();
        // Everything unanswered goes again, same seq and content; results too.
        for e in self.journal.values_mut() {
            e.resend = e.resend || e.sent_at.is_some();
            e.sent_at = None;
        }
        // Loads whose LOAD_AUTH was lost with the connection never touched the card: the
        // card goes back, and the credit is loaded again in this session (the gateway
        // settles the unanswered attempt by the unchanged online counter).
        let void: Vec<(CreditId, Load)> = self.loads.drain().collect();
        for (credit, load) in void {
            let card_no = load.card.no;
            self.world.cards.put(load.card);
            self.to_load
                .push_front((card_no, credit, load.amount, load.started, load.pushed));
        }
        let results: Vec<CreditResult> = self.results.values().map(|r| r.0).collect();
        for r in results {
            if conn.feed(Message::CreditResult(r)).await.is_err() {
                return SessionEnd::Lost;
            }
        }
        // Points requests and offers of the last session are void: the purchase goes
        // without points, the card will be presented again.
        let void: Vec<PlannedEvent> = self.awaiting_points.drain().map(|(_, e)| e).collect();
        for e in void {
            let t = self.new_txn(&e);
            self.journal_txn(t);
        }
        let again: Vec<CardNo> = self.awaiting_offer.drain().map(|(_, c)| c).collect();
        self.to_present.extend(again);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let drop_at = self.next_drop();
        loop {
            let auths = self.take_due(true);
            for a in auths {
                if conn.feed(Message::PointsAuth(a)).await.is_err() {
                    return SessionEnd::Lost;
                }
            }
            while self.request_room() && !self.draining() {
                let Some(card_no) = self.to_present.pop() else {
                    break;
                };
                if !self.present(conn, card_no).await {
                    return SessionEnd::Lost;
                }
            }
            if !self.fill_window(conn).await || !self.start_loads(conn).await {
                return SessionEnd::Lost;
            }
            if SinkExt::<Message>::flush(conn).await.is_err() {
                return SessionEnd::Lost;
            }
            if self.finished() {
                return SessionEnd::Done;
            }
            // Drained once every TXN in flight is answered (the loop comes back here
            // after each frame).
            if let Some(ms) = self.drain_after_ms
                && self.in_flight == 0
            {
                return SessionEnd::Drained(ms);
            }
            if self.offline_now().is_some() && self.in_flight == 0 {
                return SessionEnd::Offline;
            }
            let next_event = self.next_event_at();
            let offline_from = self
                .setup
                .faults
                .offline
                .map(|(from, _)| self.world.clock.instant_of(from))
                .filter(|at| *at > Instant::now());
            let wake = [next_event, offline_from, drop_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3_600));
            let slow = self.setup.faults.slow_read_ms;
            tokio::select! {
                frame = async {
                    if slow > 0 {
                        tokio::time::sleep(Duration::from_millis(slow)).await;
                    }
                    conn.next().await
                } => match frame {
                    Some(Ok(m)) => {
                        if let Some(end) = self.on_frame(conn, m).await {
                            return end;
                        }
                    }
                    Some(Err(e)) => {
                        self.note_error(format!("connection: {e}"));
                        return SessionEnd::Lost;
                    }
                    None => return SessionEnd::Lost,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if drop_at.is_some_and(|at| at <= Instant::now()) {
                        self.world.counters.faults_dropped.fetch_add(1, Relaxed);
                        return SessionEnd::Dropped;
                    }
                }
                _ = heartbeat.tick() => {
                    let hb = Heartbeat { sent_at_ms: UnixMillis(self.world.device_now_ms(self.setup.faults.skew_ms)) };
                    if conn.feed(Message::Heartbeat(hb)).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                card = recv_card(&mut self.setup.present), if !self.draining() && self.to_present.is_empty() => match card {
                    Some(card_no) => self.to_present.push(card_no),
                    None => self.setup.present = None,
                },
                changed = self.control.changed() => {
                    if changed.is_err() {
                        return SessionEnd::Done;
                    }
                    let ctl = *self.control.borrow();
                    if ctl.abort {
                        return SessionEnd::Done;
                    }
                    let epoch = ctl.storm_epoch;
                    if epoch != self.storm_epoch {
                        self.storm_epoch = epoch;
                        return SessionEnd::Dropped;
                    }
                }
            }
        }
    }

    /// CARD_PRESENTED for a card whose state the card book holds.
    async fn present(&mut self, conn: &mut Conn, card_no: CardNo) -> bool {
        let (online_seq, balance) = self.world.cards.peek(card_no);
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.awaiting_offer.insert(req, card_no);
        self.world.counters.presented.fetch_add(1, Relaxed);
        conn.feed(Message::CardPresented(CardPresented {
            req_id: ReqId(req),
            card_no,
            online_seq: OnlineSeq(online_seq),
            balance_fen: balance,
        }))
        .await
        .is_ok()
    }

    fn next_drop(&mut self) -> Option<Instant> {
        let mean = self.setup.faults.mean_ms_between_drops;
        (mean > 0).then(|| {
            // Uniform in [0, 2 × mean): the mean is as configured.
            Instant::now() + Duration::from_millis(self.rng.random_range(0..mean.saturating_mul(2)))
        })
    }

    fn jitter(&mut self, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(0..=max_ms))
    }

    /// Offline: transactions go on into the journal until the window ends.
    async fn offline(&mut self, until: Instant) {
        self.world.counters.offline_devices.fetch_add(1, Relaxed);
        loop {
            let _ = self.take_due(false);
            let next = self.next_event_at().map_or(until, |t| t.min(until));
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
        self.world.counters.offline_devices.fetch_sub(1, Relaxed);
    }

    async fn run(mut self) -> DeviceReport {
        let mut backoff_ms = BACKOFF_BASE_MS;
        let mut first = true;
        let reconnect_jitter_ms = self.world.reconnect_jitter_ms;
        loop {
            if let Some(until) = self.offline_now() {
                self.offline(until).await;
            }
            if self.finished() {
                break;
            }
            let mut conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    self.world.counters.connect_failures.fetch_add(1, Relaxed);
                    if self.error_count < 3 {
                        self.note_error(format!("connect: {e}"));
                    }
                    let wait = self.jitter(backoff_ms);
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let welcome = match self.open(&mut conn).await {
                Ok(w) => w,
                Err(e) => {
                    self.world.counters.connect_failures.fetch_add(1, Relaxed);
                    self.note_error(format!("HELLO: {e}"));
                    let wait = self.jitter(backoff_ms);
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            backoff_ms = BACKOFF_BASE_MS;
            let c = &self.world.counters;
            if first {
                c.connects.fetch_add(1, Relaxed);
                first = false;
            } else {
                c.reconnects.fetch_add(1, Relaxed);
            }
            c.sessions_open.fetch_add(1, Relaxed);
            let opened_ms = wenxiao_gateway::clock::now_ms();
            let end = self.session(&mut conn, welcome).await;
            self.world.counters.sessions_open.fetch_sub(1, Relaxed);
            self.report
                .hotlist
                .note_session(opened_ms, wenxiao_gateway::clock::now_ms());
            match end {
                SessionEnd::Done => {
                    let _ = SinkExt::<Message>::close(&mut conn).await;
                    break;
                }
                SessionEnd::Offline => drop(conn),
                SessionEnd::Drained(ms) => {
                    let _ = SinkExt::<Message>::close(&mut conn).await;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                SessionEnd::Dropped => {
                    // As a pulled cable: no close_notify, no FIN handshake awaited.
                    drop(conn);
                    let wait = self.jitter(reconnect_jitter_ms);
                    tokio::time::sleep(wait).await;
                }
                SessionEnd::Lost => {
                    drop(conn);
                    let wait = self.jitter(backoff_ms);
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    tokio::time::sleep(wait).await;
                }
                SessionEnd::Resync => {
                    // A clean close, bounded: the gateway may have stopped reading.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(RESYNC_CLOSE_WAIT_MS),
                        SinkExt::<Message>::close(&mut conn),
                    )
                    .await;
                    drop(conn);
                    let wait = self.jitter(backoff_ms);
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.report.last_seq = self.next_seq.saturating_sub(1);
        self.report.unanswered = u64::try_from(self.journal.len()).unwrap_or(u64::MAX);
        self.report
    }
}

async fn recv_card(present: &mut Option<mpsc::Receiver<CardNo>>) -> Option<CardNo> {
    match present {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one device until the run finishes and it has nothing left to do.
pub async fn run_device(setup: DeviceSetup, world: Arc<World>) -> DeviceReport {
    let control = world.control.subscribe();
    let storm_epoch = control.borrow().storm_epoch;
    let report = DeviceReport {
        id: setup.id,
        kind: setup.kind,
        last_seq: 0,
        acks: Vec::new(),
        unanswered: 0,
        loads: Vec::new(),
        errors: Vec::new(),
        hotlist: HotlistReport::default(),
    };
    let seed = setup.seed ^ setup.id.get();
    let refundable = setup
        .events
        .iter()
        .filter(|e| e.kind == TxnKind::Refund)
        .map(|e| (e.card_no, None))
        .collect();
    Device {
        setup,
        world,
        rng: StdRng::seed_from_u64(seed),
        next_event: 0,
        next_seq: 1,
        journal: BTreeMap::new(),
        in_flight: 0,
        max_in_flight: 1,
        heartbeat: Duration::from_secs(30),
        awaiting_points: HashMap::new(),
        refundable,
        next_req: 1,
        awaiting_offer: HashMap::new(),
        to_present: Vec::new(),
        to_load: VecDeque::new(),
        loads: HashMap::new(),
        results: HashMap::new(),
        drain_after_ms: None,
        control,
        storm_epoch,
        report,
        error_count: 0,
        hotlist: HotlistState::new(),
        update_started_at: Instant::now(),
    }
    .run()
    .await
}
