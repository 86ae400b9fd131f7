//! The end-of-run invariant check: what the devices were told, held against what the
//! store holds. Every TXN acknowledged STORED (or DUPLICATE) is recorded exactly once and
//! stored; no credit was loaded twice; no more was loaded than released; no budget granted
//! more than its cap.

use crate::device::DeviceReport;
use crate::run::Shard;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use wenxiao_gateway::store::{AuditFigures, PROGRAMME_BUDGET_KEY};
use wenxiao_protocol::{CreditId, DeviceId, Fen, TxnStatus};

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invariant {
    /// What must hold.
    pub name: &'static str,
    /// Whether it held.
    pub pass: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// Caps the budget check holds the store to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Each month's cap.
    pub monthly: Fen,
    /// The programme's.
    pub programme: Fen,
}

/// Checks every invariant; `shard` says whether this process saw every device.
pub fn check(
    reports: &[DeviceReport],
    audit: &AuditFigures,
    caps: Caps,
    shard: Shard,
) -> Vec<Invariant> {
    vec![
        acked_txns_stored_once(reports, audit),
        no_credit_loaded_twice(reports, audit, shard),
        loaded_within_released(audit),
        budget_within_caps(audit, caps),
    ]
}

fn acked_txns_stored_once(reports: &[DeviceReport], audit: &AuditFigures) -> Invariant {
    let recorded: HashMap<DeviceId, _> = audit.devices.iter().map(|d| (d.device_id, d)).collect();
    let mut problems = Vec::new();
    let (mut acked, mut devices_checked) = (0u64, 0u64);
    for r in reports.iter().filter(|r| !r.acks.is_empty()) {
        devices_checked += 1;
        let mut seqs = HashSet::new();
        let (mut stored_acks, mut subsidy) = (0i64, 0i64);
        for a in &r.acks {
            acked += 1;
            if !seqs.insert(a.seq) {
                problems.push(format!("{}: seq {} answered twice", r.id, a.seq));
            }
            if a.status != TxnStatus::Rejected {
                stored_acks += 1;
                subsidy += a.subsidy_fen.get();
            }
        }
        let Some(d) = recorded.get(&r.id) else {
            problems.push(format!("{}: {} acks, nothing recorded", r.id, r.acks.len()));
            continue;
        };
        let max_acked = seqs.iter().copied().max().unwrap_or(0);
        let contiguous = d.min_seq == 1 && d.rows == d.max_seq;
        if !contiguous || u64::try_from(d.max_seq).unwrap_or(0) < max_acked {
            problems.push(format!(
                "{}: recorded seqs {}..={} in {} rows, acked up to {max_acked}",
                r.id, d.min_seq, d.max_seq, d.rows
            ));
        }
        // With nothing left unanswered, the device's view and the store's agree exactly.
        if r.unanswered == 0 && (d.stored != stored_acks || d.subsidy_fen.get() != subsidy) {
            problems.push(format!(
                "{}: acked {stored_acks} stored with {subsidy} fen subsidy, store holds {} with {} fen",
                r.id,
                d.stored,
                d.subsidy_fen.get()
            ));
        }
    }
    Invariant {
        name: "every TXN acked STORED is stored exactly once",
        pass: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{acked} answers of {devices_checked} devices match the store")
        } else {
            summarise(&problems)
        },
    }
}

fn no_credit_loaded_twice(
    reports: &[DeviceReport],
    audit: &AuditFigures,
    shard: Shard,
) -> Invariant {
    let mut seen: HashSet<CreditId> = HashSet::new();
    let mut twice = Vec::new();
    let mut fen = 0i64;
    for l in reports.iter().flat_map(|r| &r.loads) {
        fen += l.amount_fen.get();
        if !seen.insert(l.credit_id) {
            twice.push(format!(
                "credit {} loaded twice (card {})",
                l.credit_id, l.card_no
            ));
        }
    }
    let cards_loaded = i64::try_from(seen.len()).unwrap_or(i64::MAX);
    // With every device in this process, the cards' loads and the store's must agree.
    if shard.count == 1 && (cards_loaded, fen) != (audit.loaded.0, audit.loaded.1.get()) {
        twice.push(format!(
            "cards loaded {cards_loaded} credits ({fen} fen), the store says {} ({} fen)",
            audit.loaded.0,
            audit.loaded.1.get()
        ));
    }
    Invariant {
        name: "no credit loaded twice",
        pass: twice.is_empty(),
        detail: if twice.is_empty() {
            format!("{cards_loaded} credits, {fen} fen, each loaded once")
        } else {
            summarise(&twice)
        },
    }
}

fn loaded_within_released(audit: &AuditFigures) -> Invariant {
    let pass = audit.loaded.0 <= audit.released.0 && audit.loaded.1 <= audit.released.1;
    Invariant {
        name: "loaded ≤ released",
        pass,
        detail: format!(
            "loaded {} credits ({} fen) of {} released ({} fen)",
            audit.loaded.0,
            audit.loaded.1.get(),
            audit.released.0,
            audit.released.1.get()
        ),
    }
}

fn budget_within_caps(audit: &AuditFigures, caps: Caps) -> Invariant {
    let mut over = Vec::new();
    for (key, granted) in &audit.budgets {
        let cap = if *key == PROGRAMME_BUDGET_KEY {
            caps.programme
        } else {
            caps.monthly
        };
        if *granted > cap {
            over.push(format!(
                "budget {key}: granted {} fen over cap {} fen",
                granted.get(),
                cap.get()
            ));
        }
    }
    Invariant {
        name: "the budget caps hold",
        pass: over.is_empty(),
        detail: if over.is_empty() {
            let listed: Vec<String> = audit
                .budgets
                .iter()
                .map(|(k, g)| {
                    if *k == PROGRAMME_BUDGET_KEY {
                        format!("programme {} fen", g.get())
                    } else {
                        format!("month {k} {} fen", g.get())
                    }
                })
                .collect();
            format!(
                "granted {} (monthly cap {} fen, programme cap {} fen)",
                if listed.is_empty() {
                    "nothing".to_owned()
                } else {
                    listed.join(", ")
                },
                caps.monthly.get(),
                caps.programme.get()
            )
        } else {
            summarise(&over)
        },
    }
}

/// After a delivery: every released credit was loaded in time.
pub fn every_credit_loaded(all_loaded: bool, audit: &AuditFigures) -> Invariant {
    Invariant {
        name: "every released credit loaded",
        pass: all_loaded && audit.loaded.0 == audit.released.0,
        detail: format!(
            "{} of {} released credits loaded (delivery stops when none loads for {} s)",
            audit.loaded.0,
            audit.released.0,
            crate::demo::DELIVERY_STALL_S
        ),
    }
}

fn summarise(problems: &[String]) -> String {
    const SHOWN_MAX: usize = 5;
    let shown: Vec<&str> = problems
        .iter()
        .take(SHOWN_MAX)
        .map(String::as_str)
        .collect();
    let more = problems.len().saturating_sub(SHOWN_MAX);
    if more > 0 {
        format!("{} (and {more} more)", shown.join("; "))
    } else {
        shown.join("; ")
    }
}
