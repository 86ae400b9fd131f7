//! A device as the contract wants it under faults: it keeps every TXN it sent until it is
//! acknowledged, reconnects (to the next of several addresses) whenever its connection
//! ends, re-sends what was not acknowledged with the same seq and content, and records
//! every answer. The fault tests end by comparing these journals with the store.

use crate::device::{Recv, TestDevice, book_purchase, hello};
use crate::env::TestEnv;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wenxiao_protocol::*;

/// TXNs a device sends before it reads their acks.
const WINDOW_TXNS: u64 = 8;
/// Pause before reconnecting, in ms.
const RECONNECT_PAUSE_MS: u64 = 50;
/// The longest a device waits for a frame before it takes its connection for dead.
const FRAME_WAIT_MS: u64 = 3_000;

/// One device's record.
#[derive(Debug)]
pub struct Journal {
    /// The device.
    pub id: DeviceId,
    /// Every TXN it made, by seq.
    pub sent: BTreeMap<u64, Txn>,
    /// The answers, by seq (the first STORED or DUPLICATE counts).
    pub acked: BTreeMap<u64, TxnStatus>,
    /// Sessions it opened.
    pub sessions: u32,
    /// The longest it was without a session (from a drop to the next WELCOME).
    pub longest_gap: Duration,
    card_base: u64,
}

impl Journal {
    /// A device `id` whose purchases use cards from `card_base` up.
    pub fn new(id: DeviceId, card_base: u64) -> Self {
        Self {
            id,
            sent: BTreeMap::new(),
            acked: BTreeMap::new(),
            sessions: 0,
            longest_gap: Duration::ZERO,
            card_base,
        }
    }

    /// Seqs sent and not acknowledged yet.
    pub fn unacked(&self) -> Vec<u64> {
        self.sent
            .keys()
            .copied()
            .filter(|s| !self.acked.contains_key(s))
            .collect()
    }

    /// Sends new TXNs while `sending` holds, and re-sends unacknowledged ones, over
    /// `addrs` in turn, reconnecting whenever a connection ends; returns once `sending`
    /// is false and every TXN sent is acknowledged. Fails the test when that takes more
    /// than `settle` after `sending` turned false.
    pub async fn drive(
        &mut self,
        env: &TestEnv,
        addrs: &[SocketAddr],
        sending: &AtomicBool,
        settle: Duration,
    ) {
        let mut k = usize::try_from(self.id.get() % 7).unwrap_or(0);
        let mut dropped_at: Option<Instant> = None;
        let mut settle_by: Option<Instant> = None;
        loop {
            if !sending.load(Ordering::SeqCst) {
                let by = *settle_by.get_or_insert_with(|| Instant::now() + settle);
                if self.unacked().is_empty() {
                    return;
                }
                assert!(
                    Instant::now() < by,
                    "{}: {} TXNs still unacknowledged",
                    self.id,
                    self.unacked().len()
                );
            }
            let Some(addr) = addrs.get(k % addrs.len().max(1)).copied() else {
                return;
            };
            k += 1;
            let Some(mut d) = self.open(env, addr).await else {
                dropped_at.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
                continue;
            };
            if let Some(at) = dropped_at.take() {
                self.longest_gap = self.longest_gap.max(at.elapsed());
            }
            self.sessions += 1;
            // Re-send what was not acknowledged, then new TXNs, a window at a time.
            if !self.session(&mut d, sending).await {
                dropped_at = Some(Instant::now());
                tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
            }
        }
    }

    async fn open(&self, env: &TestEnv, addr: SocketAddr) -> Option<TestDevice> {
        let cert = env.device_cert(self.id);
        let mut d = tokio::time::timeout(
            Duration::from_millis(FRAME_WAIT_MS),
            TestDevice::connect(addr, &env.ca_pem(), Some(&cert), self.id),
        )
        .await
        .ok()?
        .ok()?;
        d.try_send(hello(self.id, DeviceKind::Pos)).await.ok()?;
        match tokio::time::timeout(Duration::from_millis(FRAME_WAIT_MS), d.recv_any()).await {
            Ok(Recv::Frame(Message::Welcome(_))) => Some(d),
            _ => None,
        }
    }

    /// One session: false when it ended before the work did.
    async fn session(&mut self, d: &mut TestDevice, sending: &AtomicBool) -> bool {
        loop {
            let mut window: Vec<u64> = self.unacked().into_iter().take(64).collect();
            if window.is_empty() {
                if !sending.load(Ordering::SeqCst) {
                    return true;
                }
                let next = self.sent.keys().next_back().map_or(1, |s| s + 1);
                for seq in next..next + WINDOW_TXNS {
                    let t = book_purchase(self.id, seq, self.card_base + seq, 1, 100);
                    self.sent.insert(seq, t);
                    window.push(seq);
                }
            }
            for seq in &window {
                let Some(t) = self.sent.get(seq).copied() else {
                    continue;
                };
                if d.try_send(t).await.is_err() {
                    return false;
                }
            }
            let mut waiting = window.len();
            while waiting > 0 {
                match tokio::time::timeout(Duration::from_millis(FRAME_WAIT_MS), d.recv_any()).await
                {
                    Ok(Recv::Frame(Message::TxnAck(a))) => {
                        assert!(
                            matches!(a.status, TxnStatus::Stored | TxnStatus::Duplicate),
                            "{}: seq {} answered {:?} {:?}",
                            self.id,
                            a.seq,
                            a.status,
                            a.reason
                        );
                        self.acked.entry(a.seq.get()).or_insert(a.status);
                        waiting -= 1;
                    }
                    Ok(Recv::Frame(Message::Drain(_) | Message::HeartbeatAck(_))) => {}
                    Ok(Recv::Frame(Message::Error(_)) | Recv::Closed(_)) | Err(_) => {
                        return false;
                    }
                    Ok(Recv::Frame(_)) => {}
                }
            }
        }
    }
}
