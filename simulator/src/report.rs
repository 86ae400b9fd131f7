//! The run report: figures as measured, as JSON (for scripts) and as a table (for people).

use crate::check::Invariant;
use crate::device::{DeviceReport, latency_histogram};
use crate::hotlist;
use crate::run::{DayOutcome, PlantOutcome, Run};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::Instant;
use wenxiao_protocol::{Reason, TxnStatus};

/// Quantiles of a latency histogram, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub n: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Quantiles {
    /// From a histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            n: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// From raw samples, µs (nearest rank: each quantile is a sample).
    pub fn of_values(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        let n = values.len();
        let at = |per: usize, of: usize| {
            let rank = n.saturating_mul(per).div_ceil(of).max(1);
            values.get(rank - 1).copied().unwrap_or(0)
        };
        Self {
            n: u64::try_from(n).unwrap_or(u64::MAX),
            p50_us: at(50, 100),
            p99_us: at(99, 100),
            p999_us: at(999, 1_000),
            max_us: values.last().copied().unwrap_or(0),
        }
    }
}

/// A histogram in HdrHistogram's V2 deflate form, base64 (empty if it cannot be written).
pub fn encode_hdr(h: &Histogram<u64>) -> String {
    use base64::Engine as _;
    use hdrhistogram::serialization::Serializer as _;
    let mut bytes = Vec::new();
    match hdrhistogram::serialization::V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(bytes),
        Err(_) => String::new(),
    }
}

/// A histogram written by [`encode_hdr`].
pub fn decode_hdr(text: &str) -> anyhow::Result<Histogram<u64>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("not an HdrHistogram: {e:?}"))
}

/// Transactions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TxnFigures {
    /// Planned for the played hours.
    pub planned: u64,
    /// TXN frames written (re-sends included).
    pub sent: u64,
    /// Re-sends after reconnecting.
    pub resent: u64,
    /// Answered STORED.
    pub stored: u64,
    /// Answered DUPLICATE (a re-send of a stored one).
    pub duplicate: u64,
    /// Answered REJECTED.
    pub rejected: u64,
    /// Never answered.
    pub unanswered: u64,
    /// Refused at the reader because the card is on the hot list: no TXN was made.
    pub refused: u64,
    /// Answered STORED or DUPLICATE, by kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Why answers carried a reason (rejections, no subsidy, budget).
    pub by_reason: BTreeMap<String, u64>,
    /// Provisional subsidy acknowledged, fen.
    pub subsidy_fen: i64,
    /// Points awarded by sign-ins.
    pub points_awarded: u64,
    /// Points spent on purchases.
    pub points_used: u64,
    /// POINTS_AUTH approved / declined.
    pub holds: (u64, u64),
}

/// Sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionFigures {
    /// Devices run.
    pub devices: usize,
    /// Most sessions open at once.
    pub peak_open: i64,
    /// Real ms until every device had a session.
    pub connect_ms: u64,
    /// Sessions after the first.
    pub reconnects: u64,
    /// TLS handshakes, and how many of them resumed a session.
    pub handshakes: (u64, u64),
    /// Failed connections or HELLOs.
    pub connect_failures: u64,
    /// Dropped by fault injection.
    pub dropped_by_faults: u64,
    /// DRAINs received.
    pub drains: u64,
}

/// Credits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreditFigures {
    /// CREDIT_PUSHes received by OTA endpoints.
    pub pushed: u64,
    /// Cards presented at POS and kiosks.
    pub presented: u64,
    /// Loads the gateway recorded.
    pub loaded: u64,
    /// Their amount, fen.
    pub loaded_fen: u64,
    /// LOAD_AUTH declined.
    pub declined: u64,
    /// CREDIT_PUSH received → CREDIT_RESULT_ACK received (OTA endpoints).
    pub push_to_loaded: Quantiles,
    /// The audit step's release → CREDIT_RESULT_ACK, for pushed credits.
    pub release_to_loaded: Option<Quantiles>,
}

/// One hot-list version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct VersionFigures {
    /// Terminals that applied it.
    pub terminals: u64,
    /// Of those, from a full list.
    pub by_full_list: u64,
    /// Its first application on any terminal, ms since the epoch.
    pub first_applied_ms: i64,
}

/// How far the newest version got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NewestVersion {
    /// The version.
    pub version: u32,
    /// Terminals with a session open when it was first applied anywhere.
    pub online: u64,
    /// Of those, how many applied it within 10 s of that moment.
    pub within_10s: u64,
    /// … within 60 s.
    pub within_60s: u64,
    /// `within_10s` per mille of `online`.
    pub within_10s_per_mille: u64,
    /// `within_60s` per mille of `online`.
    pub within_60s_per_mille: u64,
}

/// Events refused at the reader by the hot list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Refusals {
    /// Of cards the run planted (expected).
    pub planted: u64,
    /// Of other cards: 0 unless something besides this run listed them.
    pub other: u64,
}

/// One planting, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlantFigures {
    /// What the run did.
    #[serde(flatten)]
    pub planting: PlantOutcome,
    /// Terminals (of this process) whose list held all its cards after it.
    pub terminals_listing: u64,
}

/// The hot list, over the terminals (POS, kiosks, sign-in readers) of this process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HotlistFigures {
    /// Terminals run.
    pub terminals: u64,
    /// Every version applied, by version.
    pub versions: BTreeMap<u32, VersionFigures>,
    /// A terminal's first application of a version, after that version's first
    /// application on any terminal.
    pub propagation: Quantiles,
    /// A terminal's list holding a planting's cards, after the planting's import started
    /// (only where this process planted).
    pub propagation_from_added: Option<Quantiles>,
    /// The newest version's reach.
    pub newest: Option<NewestVersion>,
    /// Full lists downloaded.
    pub full_lists: u64,
    /// The longest, cards.
    pub full_list_cards_max: u64,
    /// A full list's first chunk read → its last chunk applied.
    pub full_list_download: Quantiles,
    /// Updates that could not apply (the terminal dropped its list and reconnected).
    pub resyncs: u64,
    /// Those, by reason.
    pub resyncs_by_reason: BTreeMap<String, u64>,
    /// Events refused at the reader.
    pub refusals: Refusals,
    /// Those, by device kind.
    pub refusals_by_kind: BTreeMap<String, Refusals>,
    /// The scenario's plantings.
    pub plantings: Vec<PlantFigures>,
    /// Records the terminals counted but did not keep (over their caps).
    pub records_dropped: u64,
}

/// Windows of the newest version's reach, ms.
const NEWEST_WITHIN_MS: (i64, i64) = (10_000, 60_000);

fn ms_to_us(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000)
}

impl HotlistFigures {
    /// From the devices' reports (terminals only) and the run's plantings.
    pub fn of(reports: &[DeviceReport], plants: &[PlantOutcome]) -> Self {
        let terminals: Vec<&DeviceReport> = reports
            .iter()
            .filter(|r| hotlist::screens_cards(r.kind))
            .collect();
        let mut f = HotlistFigures {
            terminals: u64::try_from(terminals.len()).unwrap_or(u64::MAX),
            plantings: plants
                .iter()
                .map(|p| PlantFigures {
                    planting: p.clone(),
                    terminals_listing: 0,
                })
                .collect(),
            ..HotlistFigures::default()
        };
        // Each terminal's first application of each version (after a resync a terminal
        // may apply one again), and whether it came as a full list.
        let firsts: Vec<BTreeMap<u32, (i64, bool)>> = terminals
            .iter()
            .map(|r| {
                let mut m: BTreeMap<u32, (i64, bool)> = BTreeMap::new();
                for a in &r.hotlist.applied {
                    let e = m.entry(a.version.get()).or_insert((a.at_ms, a.full));
                    if a.at_ms < e.0 {
                        *e = (a.at_ms, a.full);
                    }
                }
                m
            })
            .collect();
        for m in &firsts {
            for (v, (at, full)) in m {
                let e = f.versions.entry(*v).or_insert(VersionFigures {
                    terminals: 0,
                    by_full_list: 0,
                    first_applied_ms: *at,
                });
                e.terminals += 1;
                e.by_full_list += u64::from(*full);
                e.first_applied_ms = e.first_applied_ms.min(*at);
            }
        }
        let mut propagation = Vec::new();
        for m in &firsts {
            for (v, (at, _)) in m {
                if let Some(e) = f.versions.get(v) {
                    propagation.push(ms_to_us(at.saturating_sub(e.first_applied_ms)));
                }
            }
        }
        f.propagation = Quantiles::of_values(propagation);
        f.newest = f.versions.iter().next_back().map(|(v, e)| {
            let t0 = e.first_applied_ms;
            let (mut online, mut within_10s, mut within_60s) = (0u64, 0u64, 0u64);
            for (r, m) in terminals.iter().zip(&firsts) {
                if !r.hotlist.online_at(t0) {
                    continue;
                }
                online += 1;
                if let Some((at, _)) = m.get(v) {
                    let after = at.saturating_sub(t0);
                    within_10s += u64::from(after <= NEWEST_WITHIN_MS.0);
                    within_60s += u64::from(after <= NEWEST_WITHIN_MS.1);
                }
            }
            NewestVersion {
                version: *v,
                online,
                within_10s,
                within_60s,
                within_10s_per_mille: within_10s * 1_000 / online.max(1),
                within_60s_per_mille: within_60s * 1_000 / online.max(1),
            }
        });
        let (mut from_added, mut welcome) = (Vec::new(), Vec::new());
        for r in &terminals {
            let h = &r.hotlist;
            for (k, seen) in h.planted_listed_ms.iter().enumerate() {
                let (Some(at), Some(p)) = (seen, f.plantings.get_mut(k)) else {
                    continue;
                };
                let Some(added) = p.planting.added_at_ms else {
                    continue;
                };
                p.terminals_listing += 1;
                from_added.push(ms_to_us(at.saturating_sub(added)));
            }
            for l in &h.full_lists {
                f.full_lists += 1;
                f.full_list_cards_max = f
                    .full_list_cards_max
                    .max(u64::try_from(l.cards).unwrap_or(u64::MAX));
                welcome.push(l.download_us);
            }
            f.resyncs += h.resync_count();
            for (reason, n) in &h.resyncs {
                *f.resyncs_by_reason.entry((*reason).to_owned()).or_default() += n;
            }
            let by_kind = f
                .refusals_by_kind
                .entry(r.kind.name().to_owned())
                .or_default();
            by_kind.planted += h.refused_planted;
            by_kind.other += h.refused_other;
            f.refusals.planted += h.refused_planted;
            f.refusals.other += h.refused_other;
            f.records_dropped += h.records_dropped;
        }
        f.propagation_from_added =
            (!from_added.is_empty()).then(|| Quantiles::of_values(from_added));
        f.full_list_download = Quantiles::of_values(welcome);
        f
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's description.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// `i/n` when spread over processes.
    pub shard: String,
    /// The plan's digest: equal for the same seed and scenario.
    pub plan_digest: String,
    /// Hours played and the clock's speed.
    pub played: String,
    /// Transactions.
    pub txns: TxnFigures,
    /// Stored (or duplicate) answers per second over the played hours and the settling.
    pub stored_per_s: u64,
    /// Best one-second rate.
    pub peak_stored_per_s: u64,
    /// TXN written → TXN_ACK read.
    pub ack_latency: Quantiles,
    /// The same, whole: HdrHistogram's V2 compressed form, base64 (see [`encode_hdr`]), so
    /// the bench can join the shards' histograms and plot them.
    pub ack_latency_hdr: String,
    /// Sessions.
    pub sessions: SessionFigures,
    /// Reconnect storms.
    pub storms: Vec<crate::run::StormOutcome>,
    /// Credits.
    pub credits: CreditFigures,
    /// The hot list.
    pub hotlist: HotlistFigures,
    /// Gateway memory, if measured.
    pub gateway_rss: Option<crate::run::RssSample>,
    /// Gateway RSS per session, bytes (with every session open, over before any).
    pub gateway_rss_per_session_bytes: Option<u64>,
    /// The invariants.
    pub invariants: Vec<Invariant>,
    /// All held, and every planned transaction was answered.
    pub pass: bool,
    /// Errors the devices saw (the first few of each device), and how many in all.
    pub errors: Vec<String>,
    /// All errors counted.
    pub error_count: u64,
    /// Extra figures the caller adds (the demo's clearing summary).
    pub extra: BTreeMap<String, String>,
    /// Planted fraud against the gateway's cases (a scenario's `[fraud]` table; the caller
    /// adds it, see [`crate::fraud::score`]).
    pub fraud: Option<crate::fraud::FraudFigures>,
}

const ERRORS_IN_REPORT_MAX: usize = 20;

impl Report {
    /// Builds the report of a finished run.
    pub fn new(
        run: &Run,
        day: &DayOutcome,
        reports: &[DeviceReport],
        invariants: Vec<Invariant>,
        release_at: Option<Instant>,
    ) -> Self {
        let c = run.counters();
        let mut t = TxnFigures {
            planned: run.planned,
            sent: c.txns_sent.load(Relaxed),
            resent: c.txns_resent.load(Relaxed),
            holds: (
                c.holds_approved.load(Relaxed),
                c.holds_declined.load(Relaxed),
            ),
            ..TxnFigures::default()
        };
        let (mut ack, mut push) = (latency_histogram(), latency_histogram());
        if let (Ok(a), Ok(p)) = (
            run.world.latencies.ack_us.lock(),
            run.world.latencies.push_to_loaded_us.lock(),
        ) {
            let _ = ack.add(&*a);
            let _ = push.add(&*p);
        }
        let mut release = latency_histogram();
        let mut errors = Vec::new();
        for r in reports {
            t.unanswered += r.unanswered;
            for a in &r.acks {
                match a.status {
                    TxnStatus::Stored => t.stored += 1,
                    TxnStatus::Duplicate => t.duplicate += 1,
                    TxnStatus::Rejected => t.rejected += 1,
                }
                if a.status != TxnStatus::Rejected {
                    *t.by_kind.entry(a.kind.name().to_owned()).or_default() += 1;
                    t.subsidy_fen += a.subsidy_fen.get();
                    t.points_awarded += u64::from(a.points_awarded.get());
                    t.points_used += u64::from(a.points_used.get());
                }
                if a.reason != Reason::None {
                    *t.by_reason.entry(a.reason.name().to_owned()).or_default() += 1;
                }
            }
            if let Some(at) = release_at {
                for l in r
                    .loads
                    .iter()
                    .filter(|_| r.kind == wenxiao_protocol::DeviceKind::OtaEndpoint)
                {
                    let us = u64::try_from(l.loaded_at.saturating_duration_since(at).as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = release.record(us);
                }
            }
            for e in &r.errors {
                if errors.len() < ERRORS_IN_REPORT_MAX {
                    errors.push(format!("{}: {e}", r.id));
                }
            }
        }
        let stored_per_s = (t.stored + t.duplicate) * 1_000 / day.answered_ms.max(1);
        // Per session only when this process ran every session (else `bench` divides
        // the gateway's growth by all processes' sessions).
        let rss_per = day.rss.and_then(|r| {
            (r.sessions > 0 && run.shard.count == 1)
                .then(|| r.sessions_kib.saturating_sub(r.before_kib) * 1_024 / r.sessions)
        });
        let hotlist = HotlistFigures::of(reports, &day.plants);
        t.refused = hotlist.refusals.planted + hotlist.refusals.other;
        let pass = invariants.iter().all(|i| i.pass) && day.all_answered && t.unanswered == 0;
        let s = &run.scenario;
        Report {
            scenario: s.description.clone(),
            seed: s.seed,
            shard: format!("{}/{}", run.shard.index, run.shard.count),
            plan_digest: format!("{:016x}", run.plan_digest),
            played: format!(
                "{:02}:00–{:02}:00 in {} s (×{})",
                s.clock.from_hour,
                s.clock.to_hour,
                s.clock.real_seconds,
                s.speed()
            ),
            txns: t,
            stored_per_s,
            peak_stored_per_s: day.peak_acked_per_s,
            ack_latency: Quantiles::of(&ack),
            ack_latency_hdr: encode_hdr(&ack),
            sessions: SessionFigures {
                devices: run.devices,
                peak_open: day.peak_sessions,
                connect_ms: day.connect_ms,
                reconnects: c.reconnects.load(Relaxed),
                handshakes: (
                    c.handshakes.load(Relaxed),
                    c.handshakes_resumed.load(Relaxed),
                ),
                connect_failures: c.connect_failures.load(Relaxed),
                dropped_by_faults: c.faults_dropped.load(Relaxed),
                drains: c.drains.load(Relaxed),
            },
            storms: day.storms.clone(),
            credits: CreditFigures {
                pushed: c.pushes.load(Relaxed),
                presented: c.presented.load(Relaxed),
                loaded: c.credits_loaded.load(Relaxed),
                loaded_fen: c.credits_loaded_fen.load(Relaxed),
                declined: c.loads_declined.load(Relaxed),
                push_to_loaded: Quantiles::of(&push),
                release_to_loaded: (!release.is_empty()).then(|| Quantiles::of(&release)),
            },
            hotlist,
            gateway_rss: day.rss,
            gateway_rss_per_session_bytes: rss_per,
            invariants,
            pass,
            errors,
            error_count: c.errors.load(Relaxed),
            extra: BTreeMap::new(),
            fraud: None,
        }
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let t = &self.txns;
        let q = |q: &Quantiles| {
            if q.n == 0 {
                "—".to_owned()
            } else {
                format!(
                    "p50 {} · p99 {} · p999 {} · max {} (n = {})",
                    ms(q.p50_us),
                    ms(q.p99_us),
                    ms(q.p999_us),
                    ms(q.max_us),
                    q.n
                )
            }
        };
        let _ = writeln!(o, "scenario      {}", self.scenario);
        let _ = writeln!(
            o,
            "seed          {} · plan digest {} · shard {}",
            self.seed, self.plan_digest, self.shard
        );
        let _ = writeln!(o, "played        {}", self.played);
        let _ = writeln!(
            o,
            "transactions  planned {} · stored {} · duplicate {} · rejected {} · unanswered {}{}",
            t.planned,
            t.stored,
            t.duplicate,
            t.rejected,
            t.unanswered,
            if t.refused > 0 {
                format!(" · refused at the reader {}", t.refused)
            } else {
                String::new()
            }
        );
        let kinds: Vec<String> = t.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(o, "  by kind     {}", kinds.join(" · "));
        if !t.by_reason.is_empty() {
            let reasons: Vec<String> = t
                .by_reason
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(o, "  reasons     {}", reasons.join(" · "));
        }
        let _ = writeln!(
            o,
            "  sent        {} frames, {} re-sent after reconnecting",
            t.sent, t.resent
        );
        let _ = writeln!(
            o,
            "  subsidy     {} acknowledged · points awarded {} · points spent {} (holds approved {}, declined {})",
            yuan(t.subsidy_fen),
            t.points_awarded,
            t.points_used,
            t.holds.0,
            t.holds.1
        );
        let _ = writeln!(
            o,
            "stored txn/s  {} over the run · {} best second",
            self.stored_per_s, self.peak_stored_per_s
        );
        let _ = writeln!(o, "ack latency   {}", q(&self.ack_latency));
        let s = &self.sessions;
        let _ = writeln!(
            o,
            "sessions      {} devices · peak {} open · all connected in {} ms · reconnects {} · failed connects {} · dropped by faults {} · drains {}",
            s.devices,
            s.peak_open,
            s.connect_ms,
            s.reconnects,
            s.connect_failures,
            s.dropped_by_faults,
            s.drains
        );
        let _ = writeln!(
            o,
            "  TLS         {} handshakes, {} of them resumed",
            s.handshakes.0, s.handshakes.1
        );
        for storm in &self.storms {
            let _ = writeln!(
                o,
                "storm         at {} s: {} sessions dropped, {}",
                storm.at_s,
                storm.sessions_before,
                storm.settled_ms.map_or(
                    "did NOT all come back within 60 s".to_owned(),
                    |ms| format!("all back in {ms} ms")
                )
            );
        }
        let c = &self.credits;
        let _ = writeln!(
            o,
            "credits       pushed {} · cards presented {} · loaded {} ({}) · declined {}",
            c.pushed,
            c.presented,
            c.loaded,
            yuan(i64::try_from(c.loaded_fen).unwrap_or(i64::MAX)),
            c.declined
        );
        let _ = writeln!(o, "  push → loaded      {}", q(&c.push_to_loaded));
        if let Some(r) = &c.release_to_loaded {
            let _ = writeln!(o, "  release → loaded   {}", q(r));
        }
        self.hotlist_lines(&mut o, &q);
        self.fraud_lines(&mut o);
        if let Some(r) = &self.gateway_rss {
            let _ = writeln!(
                o,
                "gateway RSS   {} KiB before · {} KiB with {} sessions · {} KiB at the end{}",
                r.before_kib,
                r.sessions_kib,
                r.sessions,
                r.end_kib,
                self.gateway_rss_per_session_bytes
                    .map(|b| format!(
                        " · {}.{:02} KiB per session",
                        b / 1_024,
                        (b % 1_024) * 100 / 1_024
                    ))
                    .unwrap_or_default()
            );
        }
        for (k, v) in &self.extra {
            let _ = writeln!(o, "{k:<13} {v}");
        }
        let _ = writeln!(o, "invariants");
        for i in &self.invariants {
            let _ = writeln!(
                o,
                "  {} {} — {}",
                if i.pass { "PASS" } else { "FAIL" },
                i.name,
                i.detail
            );
        }
        if self.error_count > 0 {
            let _ = writeln!(o, "errors        {} (first ones below)", self.error_count);
            for e in &self.errors {
                let _ = writeln!(o, "  {e}");
            }
        } else {
            let _ = writeln!(o, "errors        none");
        }
        let _ = writeln!(
            o,
            "result        {}",
            if self.pass { "PASS" } else { "FAIL" }
        );
        o
    }
}

impl Report {
    /// The "hot list" section of [`Report::table`].
    fn hotlist_lines(&self, o: &mut String, q: &impl Fn(&Quantiles) -> String) {
        // The newest versions only: a long run against a busy gateway makes many.
        const VERSIONS_SHOWN_MAX: usize = 8;
        let h = &self.hotlist;
        let reasons: Vec<String> = h
            .resyncs_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "hot list      {} terminals · {} versions applied · full lists {} (largest {} cards) · resyncs {}{}",
            h.terminals,
            h.versions.len(),
            h.full_lists,
            group(h.full_list_cards_max),
            h.resyncs,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(" · "))
            }
        );
        if !h.versions.is_empty() {
            let shown: Vec<String> = h
                .versions
                .iter()
                .rev()
                .take(VERSIONS_SHOWN_MAX)
                .rev()
                .map(|(v, e)| {
                    format!(
                        "{v} on {} terminals ({} by full list)",
                        e.terminals, e.by_full_list
                    )
                })
                .collect();
            let earlier = h.versions.len().saturating_sub(VERSIONS_SHOWN_MAX);
            let _ = writeln!(
                o,
                "  versions    {}{}",
                shown.join(" · "),
                if earlier > 0 {
                    format!(" (and {earlier} earlier)")
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                o,
                "  propagation {} after the version's first application",
                q(&h.propagation)
            );
        }
        if let Some(p) = &h.propagation_from_added {
            let _ = writeln!(
                o,
                "  from import {} after the planting's import started",
                q(p)
            );
        }
        if let Some(n) = &h.newest {
            let _ = writeln!(
                o,
                "  newest      version {}: {} applied it within 10 s, {} within 60 s, of {} terminals online when it first applied",
                n.version,
                per_mille(n.within_10s_per_mille),
                per_mille(n.within_60s_per_mille),
                n.online
            );
        }
        if h.full_lists > 0 {
            let _ = writeln!(
                o,
                "  full lists  first chunk → last chunk {}",
                q(&h.full_list_download)
            );
        }
        let kinds: Vec<String> = h
            .refusals_by_kind
            .iter()
            .filter(|(_, r)| r.planted + r.other > 0)
            .map(|(k, r)| format!("{k} {}/{}", r.planted, r.other))
            .collect();
        let _ = writeln!(
            o,
            "  refusals    planted cards {} · other cards {} (0 unless listed by someone else){}",
            h.refusals.planted,
            h.refusals.other,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" · planted/other by kind: {}", kinds.join(" · "))
            }
        );
        for p in &h.plantings {
            let pl = &p.planting;
            let what = match (&pl.error, pl.version) {
                (Some(e), _) if pl.added_at_ms.is_some() => format!("FAILED: {e}"),
                (Some(e), _) => e.clone(),
                (None, Some(v)) => format!(
                    "imported as version {v}, then listed by {} terminals",
                    p.terminals_listing
                ),
                (None, None) => {
                    format!("imported, then listed by {} terminals", p.terminals_listing)
                }
            };
            let _ = writeln!(
                o,
                "  planting    at {} s: {} cards, {what}",
                pl.at_s, pl.cards
            );
        }
        if h.records_dropped > 0 {
            let _ = writeln!(
                o,
                "  (terminals counted {} more hot-list records than they kept)",
                h.records_dropped
            );
        }
    }
}

impl Report {
    /// The "fraud" section of [`Report::table`]: planted against detected per kind, and
    /// the false alerts.
    fn fraud_lines(&self, o: &mut String) {
        let Some(f) = &self.fraud else {
            return;
        };
        let rate = f
            .false_alerts_per_100k_centi
            .map_or("—".to_owned(), |c| format!("{}.{:02}", c / 100, c % 100));
        let _ = writeln!(
            o,
            "fraud         recall {} of the measurable planted cases · false alerts {} in {} honest transactions ({rate} per 100,000) · aims (recall 100 %, ≤ 1 per 100,000) {}",
            f.recall_per_mille
                .map_or("— (nothing measurable)".to_owned(), per_mille),
            f.false_alerts,
            group(f.honest_txns),
            if f.aims_met { "met" } else { "NOT met" }
        );
        for k in &f.kinds {
            if k.planted == 0 {
                continue;
            }
            let found = match k.recall_per_mille {
                Some(r) => format!(
                    "detected {} of {} · recall {}",
                    k.detected,
                    k.measurable,
                    per_mille(r)
                ),
                None => "not measurable".to_owned(),
            };
            let _ = writeln!(
                o,
                "  {:<14}planted {} · {found} (by {})",
                k.kind, k.planted, k.rule
            );
            if !k.missed.is_empty() {
                let _ = writeln!(o, "    missed      {}", k.missed.join(", "));
            }
            if let Some(n) = &k.note {
                let _ = writeln!(o, "    note        {n}");
            }
        }
        if f.false_alerts > 0 {
            let rules: Vec<String> = f
                .false_by_rule
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                o,
                "  false         by rule: {} · first: {}",
                rules.join(" · "),
                f.false_subjects.join(", ")
            );
        }
        if !f.planted_alerts_by_rule.is_empty() {
            let rules: Vec<String> = f
                .planted_alerts_by_rule
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(o, "  on planted    alerts by rule: {}", rules.join(" · "));
        }
        if !f.reports.is_empty() {
            let filed: Vec<String> = f
                .reports
                .iter()
                .map(|r| match (&r.error, r.case_id) {
                    (Some(e), _) => format!("card {} NOT filed: {e}", r.card_no),
                    (None, Some(c)) => format!("card {} → case {c}", r.card_no),
                    (None, None) => format!("card {} filed", r.card_no),
                })
                .collect();
            let _ = writeln!(o, "  reports       {}", filed.join(" · "));
        }
        let r = &f.rules;
        let _ = writeln!(
            o,
            "  rules         {} of {} stored transactions evaluated, cases {} after {} ms · {} cases listed{}",
            r.facts_evaluated.map_or("?".to_owned(), group),
            group(r.facts_expected),
            if r.settled { "settled" } else { "NOT settled" },
            r.waited_ms,
            f.cases_listed,
            if f.cases_truncated {
                " (the API's maximum: later cases not counted)"
            } else {
                ""
            }
        );
        for n in &f.notes {
            let _ = writeln!(o, "  note          {n}");
        }
        if let Some(e) = &f.error {
            let _ = writeln!(o, "  error         {e}");
        }
    }
}

/// A per-mille figure as a percentage with one decimal.
pub fn per_mille(p: u64) -> String {
    format!("{}.{} %", p / 10, p % 10)
}

/// µs as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{}.{:02} ms", us / 1_000, (us % 1_000) / 10)
}

/// Fen as yuan with two decimals.
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let f = fen.unsigned_abs();
    format!("¥{sign}{}.{:02}", group(f / 100), f % 100)
}

/// Thousands separated by commas.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_report() {
        let mut h = latency_histogram();
        for v in [1_u64, 250, 1_000, 99_000, 600_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_hdr(&encode_hdr(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode_hdr("not base64!").is_err());
        assert!(decode_hdr("AAAA").is_err());
    }

    #[test]
    fn money_and_numbers_print_exactly() {
        assert_eq!(yuan(123_456_789), "¥1,234,567.89");
        assert_eq!(yuan(-5), "¥-0.05");
        assert_eq!(ms(1_234), "1.23 ms");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(per_mille(973), "97.3 %");
    }

    #[test]
    fn quantiles_of_samples_are_samples() {
        let q = Quantiles::of_values((1..=1_000).rev().collect());
        assert_eq!(
            (q.n, q.p50_us, q.p99_us, q.p999_us, q.max_us),
            (1_000, 500, 990, 999, 1_000)
        );
        assert_eq!(Quantiles::of_values(vec![7]).p50_us, 7);
        assert_eq!(Quantiles::of_values(Vec::new()), Quantiles::default());
    }
}
