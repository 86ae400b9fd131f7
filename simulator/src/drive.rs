//! `wenxiao-sim run`: a scenario against a running gateway, as a load tester runs it from
//! another machine: the device protocol over mTLS, the admin API, the console API, and
//! the gateway's CLI for the hot-list plantings; never the gateway's database.

use crate::check::{self, Caps};
use crate::console::ConsoleApi;
use crate::demo;
use crate::fraud::{self, AdminApi};
use crate::report::Report;
use crate::run::{GatewayCli, Run, Shard, Target};
use crate::scenario::Scenario;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use wenxiao_gateway::config::Config;

/// `run`: a scenario against a running gateway, whose store it never opens: the registry
/// comes from the gateway's registry files, clearing and approval (four eyes) and the
/// invariant figures from its console API (`console`, see [`ConsoleApi::from_env`]).
pub async fn drive(
    config: &Config,
    console: &ConsoleApi,
    scenario: &Scenario,
    shard: Shard,
    gateway_pid: Option<u32>,
    gateway_cli: Option<GatewayCli>,
) -> anyhow::Result<Report> {
    // The gateway's store is not opened here: the registry is the one the gateway was
    // given, clearing and the figures go through its console API.
    let registry = wenxiao_gateway::registry::Registry::from_csv(
        &config.registry.merchants_path,
        &config.registry.devices_path,
    )?;
    let pki = config
        .tls
        .device_ca_cert_path
        .parent()
        .context("the device CA's directory")?;
    let target = Target {
        gateway: config.server.listen_addr,
        registry,
        ca: Arc::new(wenxiao_gateway::pki::DevCa::load(pki)?),
        keys: config.master_keys()?,
        gateway_pid,
    };
    let policy = wenxiao_gateway::policy::Policy::load(&config.policy_path)?;
    let first_day = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms())
        .context("today's business date")?;
    let mut run = Run::start(&target, scenario, shard).await?;
    if let Some(cli) = gateway_cli {
        run.set_gateway_cli(cli);
    }
    if !run.planted.is_empty() {
        run.set_admin(AdminApi::new(config.admin.listen_addr, &config.admin));
    }
    eprintln!(
        "shard {}/{}: {} devices, {} transactions planned",
        shard.index, shard.count, run.devices, run.planned
    );
    let progress = run.progress("run");
    let day = run.play_day().await;
    let delivery = if scenario.run.deliver {
        let out = config.data_dir.join("settlement-out");
        Some(
            demo::midnight(
                &run,
                demo::Clearing::Console(console),
                config,
                first_day,
                &out,
            )
            .await?,
        )
    } else {
        None
    };
    progress.abort();
    eprintln!();
    let reports = run.finish(Duration::from_secs(30)).await;
    let fraud = fraud::score(
        &run,
        &day,
        &reports,
        fraud::History::Console(console),
        first_day,
    )
    .await;
    let audit = console.figures().await?;
    let caps = Caps {
        monthly: policy.monthly_cap(),
        programme: policy.programme_total(),
    };
    let mut invariants = check::check(&reports, &audit, caps, shard);
    if let Some(d) = &delivery {
        invariants.push(check::every_credit_loaded(d.all_loaded, &audit));
    }
    let mut report = Report::new(
        &run,
        &day,
        &reports,
        invariants,
        delivery.map(|d| d.release_at),
    );
    report.fraud = fraud;
    Ok(report)
}
