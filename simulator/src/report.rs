//! The run report: figures as measured, as JSON (for scripts) and as a table (for people).

use crate::check::Invariant;
use crate::device::{DeviceReport, latency_histogram};
use crate::run::{DayOutcome, Run};
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
    /// Sessions.
    pub sessions: SessionFigures,
    /// Reconnect storms.
    pub storms: Vec<crate::run::StormOutcome>,
    /// Credits.
    pub credits: CreditFigures,
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
        let mut ack = latency_histogram();
        let mut push = latency_histogram();
        let mut release = latency_histogram();
        let mut errors = Vec::new();
        for r in reports {
            t.unanswered += r.unanswered;
            let _ = ack.add(&r.ack_latency_us);
            let _ = push.add(&r.push_to_loaded_us);
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
            gateway_rss: day.rss,
            gateway_rss_per_session_bytes: rss_per,
            invariants,
            pass,
            errors,
            error_count: c.errors.load(Relaxed),
            extra: BTreeMap::new(),
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
            "transactions  planned {} · stored {} · duplicate {} · rejected {} · unanswered {}",
            t.planned, t.stored, t.duplicate, t.rejected, t.unanswered
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
    fn money_and_numbers_print_exactly() {
        assert_eq!(yuan(123_456_789), "¥1,234,567.89");
        assert_eq!(yuan(-5), "¥-0.05");
        assert_eq!(ms(1_234), "1.23 ms");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
    }
}
