//! Fraud-rule benchmark (not a test): the rule engine fed a city mix at a simulated
//! 20,000 transactions per second of receipt time — purchases by 3.5 M cards at the
//! pilot's merchants (with their places), sign-ins, top-ups and 1 % refunds of recent
//! purchases, a few re-offered facts — and each `evaluate` call timed. Prints the
//! latency quantiles per transaction, the throughput of one core, and the alerts.
//!
//!     cargo run --release -p wenxiao-tests --example risk_bench -- [FACTS] [RATE_PER_S]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::float_arithmetic,
    clippy::indexing_slicing
)]

use rand::{RngExt, SeedableRng};
use std::path::Path;
use std::time::Instant;
use wenxiao_gateway::registry::{Category, Registry};
use wenxiao_gateway::risk::config::RiskConfig;
use wenxiao_gateway::risk::engine::{Engine, Fact, Place, Places, RefundOf};
use wenxiao_protocol::{CardNo, DeviceId, Fen, TxnKind};

const CARDS: u64 = 3_500_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let facts: u64 = args.next().map_or(2_000_000, |a| a.parse().unwrap());
    let rate: u64 = args.next().map_or(20_000, |a| a.parse().unwrap());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let registry = Registry::from_csv(
        &repo.join("config/registry/merchants.csv"),
        &repo.join("config/registry/devices.csv"),
    )
    .unwrap();
    let config = RiskConfig::load(&repo.join("config/risk.toml")).unwrap();
    let places: Places = registry
        .merchants()
        .into_iter()
        .filter_map(|m| {
            m.place
                .map(|(lat, lon)| (m.merchant_id, Place::new(lat, lon)))
        })
        .collect();
    // Terminals that take purchases, with their merchants.
    let terminals: Vec<_> = registry
        .devices()
        .into_iter()
        .filter_map(|d| {
            let m = registry.merchant(d.merchant_id?)?;
            matches!(
                m.category,
                Category::Bookstore | Category::Cinema | Category::PerformanceVenue
            )
            .then_some((d.device_id, m.merchant_id))
        })
        .collect();
    let mut by_merchant = std::collections::BTreeMap::<_, Vec<_>>::new();
    for (d, m) in &terminals {
        by_merchant.entry(*m).or_default().push((*d, *m));
    }
    let merchants: Vec<Vec<_>> = by_merchant.into_values().collect();
    let mut engine = Engine::new(config, places);
    let mut by_rule = std::collections::BTreeMap::<&'static str, u64>::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_201);
    let mut seqs = std::collections::HashMap::<DeviceId, u64>::new();
    let mut counters = std::collections::HashMap::<u64, u32>::new();
    let mut recent: Vec<Fact> = Vec::new();
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
    let start_ms = wenxiao_gateway::clock::day_end_ms(
        wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap(),
    ) - 86_400_000
        + 8 * 3_600_000;
    let (mut alerts, mut hits) = (0_u64, 0_u64);
    let wall = Instant::now();
    for i in 0..facts {
        let received = start_ms + i64::try_from(i * 1_000 / rate).unwrap();
        // A resident shops near home: a card's purchases go to one merchant's terminals
        // (honest cards do not jump across the city within minutes).
        let card = rng.random_range(1..=CARDS);
        let home = usize::try_from(card).unwrap() % merchants.len();
        let at_home = &merchants[home];
        let (device, merchant) = at_home[rng.random_range(0..at_home.len())];
        let seq = seqs.entry(device).or_insert(0);
        *seq += 1;
        let roll = rng.random_range(0..100);
        let mut fact = Fact {
            device_id: device,
            seq: *seq,
            merchant_id: Some(merchant),
            kind: TxnKind::Purchase,
            card_no: CardNo(card),
            card_counter: 0,
            amount_fen: Fen(rng.random_range(2_000..20_000)),
            subsidy_fen: Fen(0),
            occurred_at_ms: received - rng.random_range(0..2_000),
            received_at_ms: received,
            business_date: wenxiao_gateway::clock::business_date(received).unwrap(),
            refund_of: None,
        };
        fact.subsidy_fen = Fen(fact.amount_fen.get() / 10);
        if roll == 0 && !recent.is_empty() {
            // A refund of a recent purchase, at its own terminal.
            // Each purchase is refunded at most once.
            let p = recent.swap_remove(rng.random_range(0..recent.len()));
            let seq = seqs.entry(p.device_id).or_insert(0);
            *seq += 1;
            fact = Fact {
                device_id: p.device_id,
                seq: *seq,
                merchant_id: p.merchant_id,
                kind: TxnKind::Refund,
                card_no: p.card_no,
                amount_fen: p.amount_fen,
                subsidy_fen: Fen(0),
                refund_of: Some(RefundOf {
                    purchase_seq: p.seq,
                    purchase_occurred_at_ms: p.occurred_at_ms,
                    purchase_amount_fen: p.amount_fen,
                    purchase_subsidy_fen: p.subsidy_fen,
                }),
                ..fact
            };
        } else {
            let c = counters.entry(card).or_insert(0);
            *c += 1;
            fact.card_counter = *c;
            if roll < 3 {
                fact.kind = TxnKind::SignIn;
                fact.amount_fen = Fen(0);
                fact.subsidy_fen = Fen(0);
            }
        }
        let t = Instant::now();
        let out = engine.evaluate(&fact);
        hist.record(u64::try_from(t.elapsed().as_nanos()).unwrap().max(1))
            .unwrap();
        alerts += out.len() as u64;
        for h in out.iter().flat_map(|a| &a.hits) {
            hits += 1;
            *by_rule.entry(h.rule.name()).or_default() += 1;
        }
        if fact.kind == TxnKind::Purchase {
            if recent.len() < 10_000 {
                recent.push(fact);
            } else {
                let k = rng.random_range(0..recent.len());
                recent[k] = fact;
            }
        }
        // One fact in a thousand offered twice (a catch-up overlapping the queue).
        if rng.random_range(0..1_000) == 0 {
            let t = Instant::now();
            assert!(engine.evaluate(&fact).is_empty());
            hist.record(u64::try_from(t.elapsed().as_nanos()).unwrap().max(1))
                .unwrap();
        }
    }
    let secs = wall.elapsed().as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    let stats = engine.stats();
    println!(
        "risk_bench: {facts} facts ({} s of receipt time at {rate}/s), {} terminals, {} cards held",
        facts / rate,
        terminals.len(),
        stats.cards_count
    );
    println!(
        "evaluate per fact: p50 {:.2} µs · p99 {:.2} µs · p99.9 {:.2} µs · max {:.1} µs",
        us(0.5),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1_000.0
    );
    println!(
        "one core: {:.0} facts/s ({:.1} s wall, generation included); alerts {alerts}, rule hits {hits} {by_rule:?}",
        facts as f64 / secs,
        secs
    );
}
