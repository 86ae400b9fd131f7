//! What the devices of one run share: the simulated clock, the card keys, the cards'
//! state for loads, the scenario's hot-list plantings, live counters, and the run's
//! control channel.

use crate::card::Card;
use crate::hotlist::Plantings;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use wenxiao_protocol::mac::MasterKeys;
use wenxiao_protocol::{CardNo, Fen};

/// Simulated time: the day runs `speed` times faster than real time from `origin`, whose
/// simulated time is `sim_origin_ms` (ms after the day's start).
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    /// Real instant of `sim_origin_ms`.
    pub origin: Instant,
    /// Simulated ms after the day's start at `origin`.
    pub sim_origin_ms: i64,
    /// Simulated ms per real ms (≥ 1).
    pub speed: u64,
}

impl SimClock {
    /// Simulated ms after the day's start, now.
    pub fn sim_ms_now(&self) -> i64 {
        let real_us = i64::try_from(self.origin.elapsed().as_micros()).unwrap_or(i64::MAX);
        let speed = i64::try_from(self.speed.max(1)).unwrap_or(1);
        self.sim_origin_ms
            .saturating_add(real_us.saturating_mul(speed) / 1_000)
    }

    /// The real instant at which the simulated clock shows `sim_ms`.
    pub fn instant_of(&self, sim_ms: i64) -> Instant {
        let ahead_ms = u64::try_from(sim_ms.saturating_sub(self.sim_origin_ms)).unwrap_or(0);
        let real_us = ahead_ms.saturating_mul(1_000) / self.speed.max(1);
        self.origin + Duration::from_micros(real_us)
    }
}

/// Counters every device adds to; the progress display and the report read them.
#[derive(Debug, Default)]
pub struct Counters {
    /// TXN frames written (first sends and re-sends).
    pub txns_sent: AtomicU64,
    /// Of those, re-sends after a reconnect.
    pub txns_resent: AtomicU64,
    /// TXN_ACK STORED.
    pub acks_stored: AtomicU64,
    /// TXN_ACK DUPLICATE.
    pub acks_duplicate: AtomicU64,
    /// TXN_ACK REJECTED.
    pub acks_rejected: AtomicU64,
    /// POINTS_AUTH approved.
    pub holds_approved: AtomicU64,
    /// POINTS_AUTH declined.
    pub holds_declined: AtomicU64,
    /// Sessions open now.
    pub sessions_open: AtomicI64,
    /// First sessions.
    pub connects: AtomicU64,
    /// Sessions after the first.
    pub reconnects: AtomicU64,
    /// TLS handshakes completed.
    pub handshakes: AtomicU64,
    /// Of those, resumed sessions (no certificate exchange).
    pub handshakes_resumed: AtomicU64,
    /// Connections or HELLOs that failed.
    pub connect_failures: AtomicU64,
    /// Sessions dropped on purpose by fault injection.
    pub faults_dropped: AtomicU64,
    /// Devices offline now (store-and-forward).
    pub offline_devices: AtomicI64,
    /// DRAINs received.
    pub drains: AtomicU64,
    /// CARD_PRESENTED sent.
    pub presented: AtomicU64,
    /// CREDIT_PUSH received.
    pub pushes: AtomicU64,
    /// Loads the gateway recorded LOADED.
    pub credits_loaded: AtomicU64,
    /// Money they loaded, fen.
    pub credits_loaded_fen: AtomicU64,
    /// LOAD_AUTH declined.
    pub loads_declined: AtomicU64,
    /// Hot-list versions applied by terminals.
    pub hotlist_applied: AtomicU64,
    /// Hot-list updates that could not apply (the terminal dropped its list and resynced).
    pub hotlist_resyncs: AtomicU64,
    /// Planned events refused at the reader because the card is on the hot list (no TXN).
    pub hotlist_refused: AtomicU64,
    /// Unexpected frames, refusals, connection errors.
    pub errors: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct CardSlot {
    online_seq: u16,
    balance: Fen,
    busy: bool,
}

/// The cards' state for the load exchange (balance and online counter), created on first
/// use from the day's top-ups; a card is held by one load at a time.
#[derive(Debug)]
pub struct CardBook {
    slots: DashMap<CardNo, CardSlot>,
    /// Online counters after the day's top-ups.
    online_after_day: HashMap<CardNo, u16>,
    keys: MasterKeys,
}

impl CardBook {
    /// A book whose cards stand where `online_after_day` says (else at their initial
    /// counters).
    pub fn new(online_after_day: HashMap<CardNo, u16>, keys: MasterKeys) -> Self {
        Self {
            slots: DashMap::new(),
            online_after_day,
            keys,
        }
    }

    fn initial(&self, card_no: CardNo) -> CardSlot {
        let online_seq = self
            .online_after_day
            .get(&card_no)
            .copied()
            .unwrap_or_else(|| crate::plan::initial_counters(card_no).1);
        // A balance that differs by card: ¥50 to ¥149.
        let balance = Fen(5_000 + i64::try_from(card_no.get() % 100).unwrap_or(0) * 100);
        CardSlot {
            online_seq,
            balance,
            busy: false,
        }
    }

    /// (online counter, balance) now.
    pub fn peek(&self, card_no: CardNo) -> (u16, Fen) {
        let slot = self
            .slots
            .get(&card_no)
            .map_or_else(|| self.initial(card_no), |s| *s);
        (slot.online_seq, slot.balance)
    }

    /// The card, for one load; `None` while another load holds it.
    pub fn take(&self, card_no: CardNo) -> Option<Card> {
        let mut slot = self
            .slots
            .entry(card_no)
            .or_insert_with(|| self.initial(card_no));
        if slot.busy {
            return None;
        }
        slot.busy = true;
        Some(Card::new(
            card_no,
            slot.balance,
            slot.online_seq,
            self.keys.clone(),
        ))
    }

    /// Returns a card after its load.
    pub fn put(&self, card: Card) {
        self.slots.insert(
            card.no,
            CardSlot {
                online_seq: card.online_seq,
                balance: card.balance,
                busy: false,
            },
        );
    }
}

/// The run's instructions to every device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    /// Bumped to make every device drop its connection at once (a reconnect storm).
    pub storm_epoch: u64,
    /// Set when devices may stop once they have nothing left to do.
    pub finish: bool,
    /// Set when devices must stop now, done or not.
    pub abort: bool,
}

/// Everything the devices of a run share.
#[derive(Debug)]
pub struct World {
    /// Simulated time.
    pub clock: SimClock,
    /// Epoch ms of the simulated day's start (Shanghai midnight).
    pub day_start_ms: i64,
    /// The card master keys (the gateway's configuration).
    pub keys: MasterKeys,
    /// Live counters.
    pub counters: Counters,
    /// Cards' state for loads.
    pub cards: CardBook,
    /// The cards the scenario blacklists during the run, and when.
    pub plantings: Plantings,
    /// The run's control.
    pub control: watch::Sender<Control>,
    /// Longest random wait before reconnecting after a deliberate drop.
    pub reconnect_jitter_ms: u64,
    /// The devices' latencies, one histogram each for the whole process (one per device
    /// would cost some 500 KiB a device: 5 GB at 10,000 devices).
    pub latencies: Latencies,
}

/// Latency histograms every device of a process records into.
#[derive(Debug)]
pub struct Latencies {
    /// TXN written → TXN_ACK read, µs.
    pub ack_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// CREDIT_PUSH read → CREDIT_RESULT_ACK read, µs (OTA endpoints).
    pub push_to_loaded_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            ack_us: std::sync::Mutex::new(crate::device::latency_histogram()),
            push_to_loaded_us: std::sync::Mutex::new(crate::device::latency_histogram()),
        }
    }
}

impl Latencies {
    /// Records `us` into `h` (a value past the histogram's 10 min is clamped).
    pub fn record(h: &std::sync::Mutex<hdrhistogram::Histogram<u64>>, us: u64) {
        if let Ok(mut h) = h.lock() {
            h.saturating_record(us);
        }
    }
}

impl World {
    /// A device's clock now (the simulated time, off by its skew).
    pub fn device_now_ms(&self, skew_ms: i64) -> i64 {
        self.day_start_ms + self.clock.sim_ms_now() + skew_ms
    }
}
