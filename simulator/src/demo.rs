//! The one-command demo: a gateway on the embedded store (a fresh data directory with a
//! development PKI and the shipped registry), a simulated city day on an accelerated
//! clock, clearing at simulated midnight with the audit step's approval, delivery of the
//! credits (pushed to the operators' OTA endpoints, loaded at POS and kiosks when residents
//! present their cards the next morning), the invariant check, and a summary printed and
//! written to files.

use crate::check::{self, Caps};
use crate::console::ConsoleApi;
use crate::fraud::{self, AdminApi};
use crate::report::{Report, group, yuan};
use crate::run::{Run, Shard, Target};
use crate::scenario::Scenario;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wenxiao_gateway::config::{Config, StoreKind};
use wenxiao_gateway::policy::Policy;
use wenxiao_gateway::registry::{Category, District, Operator};
use wenxiao_gateway::store::{AnyStore, Store, StoreAudit};
use wenxiao_protocol::{BusinessDate, CardNo, Fen};

/// Delivery has stalled when no credit was loaded for this long.
pub const DELIVERY_STALL_S: u64 = 30;
/// Longest delivery may take in all.
pub const DELIVERY_CAP_S: u64 = 900;
/// The morning over which residents present their city cards (real seconds).
pub const PRESENT_S: u64 = 10;
/// Longest the devices get to finish once the demo is over.
pub const FINISH_GRACE_S: u64 = 10;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The scenario (the city, the clock, faults).
    pub scenario: Scenario,
    /// The gateway configuration to start from (its data directory, listeners, PKI and
    /// store are replaced by the demo's own).
    pub gateway_config: Config,
    /// Where the summary, the JSON report and the settlement files go.
    pub out_dir: PathBuf,
}

/// What the demo produced.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The report (its `pass` is the demo's exit status).
    pub report: Report,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn demo_config(base: &Config, data_dir: &Path) -> anyhow::Result<Config> {
    let pki = data_dir.join("pki");
    wenxiao_gateway::pki::init(&pki)?;
    let mut config = base.clone();
    config.data_dir = data_dir.to_owned();
    config.server.listen_addr = "127.0.0.1:0".parse()?;
    config.admin.listen_addr = "127.0.0.1:0".parse()?;
    config.console.listen_addr = "127.0.0.1:0".parse()?;
    config.tls.device_ca_cert_path = pki.join("ca.pem");
    config.tls.server_cert_path = pki.join("server.pem");
    config.tls.server_key_path = pki.join("server.key");
    config.store.kind = StoreKind::Sqlite;
    // The embedded store has no notifications: poll for releases often, so pushes
    // follow the approval closely.
    config.credits.release_poll_interval_ms = 20;
    config.clearing.settlement_dir = PathBuf::from("settlement");
    // The emulated cards hold the development keys.
    config.keys.allow_development_keys = true;
    // The residents' reports and the cases of a `[fraud]` table go through the admin API.
    config.admin.app_token = fraud::DEV_APP_TOKEN.to_owned();
    config.admin.risk_token = fraud::DEV_RISK_TOKEN.to_owned();
    config.validate()?;
    Ok(config)
}

fn category_name(code: i16) -> String {
    Category::from_code(code).map_or_else(|| code.to_string(), |c| format!("{c:?}"))
}

fn district_name(code: i16) -> String {
    District::from_code(code).map_or_else(|| code.to_string(), |d| format!("{d:?}"))
}

/// Runs the demo.
pub async fn demo(options: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let data = tempfile::Builder::new().prefix("wenxiao-demo-").tempdir()?;
    let config = demo_config(&options.gateway_config, data.path())?;
    let policy = Policy::load(&config.policy_path)?;
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("create {}", options.out_dir.display()))?;
    eprintln!(
        "starting the gateway on the embedded store in {}",
        data.path().display()
    );
    let gateway = wenxiao_gateway::server::spawn(config.clone())?;
    let store = wenxiao_gateway::server::open_store(&config)?;
    let registry = store.load_registry().await?;
    let target = Target {
        gateway: gateway.device_addr,
        registry,
        ca: Arc::new(wenxiao_gateway::pki::DevCa::load(&data.path().join("pki"))?),
        keys: config.master_keys()?,
        // The gateway shares this process with the simulator: its memory is not its own.
        gateway_pid: None,
    };
    let first_day = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms())
        .context("today's business date")?;
    let mut run = Run::start(&target, &options.scenario, Shard::ALL).await?;
    if !run.planted.is_empty() {
        run.set_admin(match gateway.admin_addr {
            Some(addr) => AdminApi::new(addr, &config.admin),
            None => Err("the gateway's admin server is off".to_owned()),
        });
    }
    eprintln!(
        "{} devices connecting; {} transactions planned for a day played in {} s",
        run.devices,
        group(run.planned),
        options.scenario.clock.real_seconds
    );
    let progress = run.progress("day");
    let day = run.play_day().await;
    eprintln!();
    eprintln!("simulated midnight: clearing and approving");

    let delivery = midnight(
        &run,
        Clearing::Store {
            store: &store,
            policy: &policy,
        },
        &config,
        first_day,
        &options.out_dir,
    )
    .await?;
    let Delivery {
        clearing,
        mut files,
        release_at,
        all_loaded,
        ..
    } = delivery;
    progress.abort();
    eprintln!();
    let reports = run.finish(Duration::from_secs(FINISH_GRACE_S)).await;
    let fraud = fraud::score(
        &run,
        &day,
        &reports,
        fraud::History::Store(&store),
        first_day,
    )
    .await;
    let audit = store.audit().await?;
    let caps = Caps {
        monthly: policy.monthly_cap(),
        programme: policy.programme_total(),
    };
    let mut invariants = check::check(&reports, &audit, caps, Shard::ALL);
    invariants.push(check::every_credit_loaded(all_loaded, &audit));
    let mut report = Report::new(&run, &day, &reports, invariants, Some(release_at));
    report.fraud = fraud;

    // The day in figures, from the store.
    let mut by_category: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    let mut by_district: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in &clearing {
        for s in &r.statistics {
            let c = by_category.entry(category_name(s.category)).or_default();
            c.0 += s.txn_count;
            c.1 += s.sales_fen.get();
            c.2 += s.subsidy_fen.get();
            let d = by_district.entry(district_name(s.district)).or_default();
            d.0 += s.txn_count;
            d.1 += s.subsidy_fen.get();
        }
    }
    let month = i32::try_from(first_day.get() / 100)?;
    let granted = store.budget_granted(month).await?;
    let x = &mut report.extra;
    for (i, r) in clearing.iter().enumerate() {
        let s = &r.summary;
        x.insert(
            format!("clearing {}", i + 1),
            format!(
                "{}: {} transactions · subsidy {} · {} credits totalling {} · approved",
                s.business_date,
                group(u64::try_from(s.txn_count).unwrap_or(0)),
                yuan(s.subsidy_fen.get()),
                group(u64::try_from(s.credit_count).unwrap_or(0)),
                yuan(s.credit_fen.get())
            ),
        );
    }
    let cats: Vec<String> = by_category
        .iter()
        .map(|(k, (n, sales, sub))| {
            format!(
                "{k}: {} txns, sales {}, subsidy {}",
                group(u64::try_from(*n).unwrap_or(0)),
                yuan(*sales),
                yuan(*sub)
            )
        })
        .collect();
    x.insert("by category".to_owned(), cats.join("\n              "));
    let districts: Vec<String> = by_district
        .iter()
        .map(|(k, (n, sub))| {
            format!(
                "{k}: {} txns, subsidy {}",
                group(u64::try_from(*n).unwrap_or(0)),
                yuan(*sub)
            )
        })
        .collect();
    x.insert("by district".to_owned(), districts.join("\n              "));
    x.insert(
        "budget".to_owned(),
        format!(
            "{month}: {} granted of the month's {} · programme {}",
            yuan(granted.get()),
            yuan(policy.monthly_cap().get()),
            yuan(policy.programme_total().get())
        ),
    );
    x.insert(
        "settlement".to_owned(),
        format!(
            "{} files in {}",
            files.len(),
            options.out_dir.join("settlement").display()
        ),
    );

    gateway.shutdown()?;
    let json = options.out_dir.join("demo-report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let summary = options.out_dir.join("demo-summary.txt");
    std::fs::write(&summary, report.table())?;
    files.push(json);
    files.push(summary);
    Ok(DemoOutcome { report, files })
}

/// What simulated midnight and the next morning produced.
#[derive(Debug)]
pub struct Delivery {
    /// The cleared days' reports (clearing on the store; empty through the console).
    pub clearing: Vec<wenxiao_gateway::store::ClearingReport>,
    /// Every credit of the cleared days: card and amount.
    pub credits: Vec<(CardNo, Fen)>,
    /// Settlement files written.
    pub files: Vec<PathBuf>,
    /// When the audit step released the credits.
    pub release_at: Instant,
    /// Every credit was loaded before delivery stalled for [`DELIVERY_STALL_S`] (or ran
    /// past [`DELIVERY_CAP_S`]).
    pub all_loaded: bool,
}

/// How midnight clears and approves.
#[derive(Debug, Clone, Copy)]
pub enum Clearing<'a> {
    /// On the store, in this process (the demo), approving at once.
    Store {
        /// The gateway's store.
        store: &'a AnyStore,
        /// Its policy (points' worth).
        policy: &'a Policy,
    },
    /// Through the gateway's console API, with four eyes (`run`).
    Console(&'a ConsoleApi),
}

/// Simulated midnight and the next morning: clears and approves every business day the
/// gateway recorded since `first_day` (a run that crosses real midnight in Shanghai has
/// two), writes the settlement files under `out_dir`, then waits while the OTA endpoints
/// load what is pushed to them and residents present their city cards at POS and kiosks.
pub async fn midnight(
    run: &Run,
    how: Clearing<'_>,
    config: &Config,
    first_day: BusinessDate,
    out_dir: &Path,
) -> anyhow::Result<Delivery> {
    // Midnight: every business day the gateway recorded (a run that crosses real
    // midnight in Shanghai has two).
    let last_day = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms())
        .context("today's business date")?;
    let mut files = Vec::new();
    let release_at = Instant::now();
    let mut clearing = Vec::new();
    let mut credits = Vec::new();
    let mut days = vec![first_day];
    if last_day != first_day {
        days.push(last_day);
    }
    for date in days {
        match how {
            Clearing::Store { store, policy } => {
                // The demo's accelerated clock has passed midnight and the grace: the day
                // is cleared by the same rule as any other, with that clock.
                let grace_ms = i64::try_from(config.clearing.grace_ms)?;
                let simulated_now =
                    wenxiao_gateway::clock::day_end_ms(date).saturating_add(grace_ms);
                let (report, written) = wenxiao_gateway::clearing::run_day(
                    store,
                    wenxiao_gateway::clearing::Step::Clear { approve: true },
                    date,
                    policy.points.fen_per_point,
                    (simulated_now, grace_ms),
                    &out_dir.join("settlement"),
                )
                .await?;
                files.extend(written);
                credits.extend(report.credits.iter().map(|c| (c.card_no, c.amount_fen)));
                clearing.push(report);
            }
            Clearing::Console(console) => {
                let day = console
                    .clear_and_approve(date, &out_dir.join("settlement"))
                    .await
                    .with_context(|| format!("clearing {date} through the console"))?;
                files.extend(day.files);
                credits.extend(day.credits);
            }
        }
    }

    // The next morning: SIM credits are pushed at once; residents present city cards.
    let sim_ranges = [
        config.credits.card_range(Operator::ChinaMobile),
        config.credits.card_range(Operator::ChinaTelecom),
    ];
    let is_sim = |c: CardNo| {
        sim_ranges
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&c.get()))
    };
    let mut city_cards: Vec<CardNo> = credits
        .iter()
        .map(|c| c.0)
        .filter(|c| !is_sim(*c))
        .collect();
    city_cards.sort_unstable();
    city_cards.dedup();
    eprintln!(
        "delivering {} credits: {} to SIM cards by OTA push, {} city cards presented at POS and kiosks",
        credits.len(),
        credits.iter().filter(|c| is_sim(c.0)).count(),
        city_cards.len()
    );
    run.present(&city_cards, Duration::from_secs(PRESENT_S))
        .await?;
    let all_loaded = run
        .wait_loads(
            u64::try_from(credits.len())?,
            Duration::from_secs(DELIVERY_STALL_S),
            Duration::from_secs(DELIVERY_CAP_S),
        )
        .await;
    Ok(Delivery {
        clearing,
        credits,
        files,
        release_at,
        all_loaded,
    })
}
