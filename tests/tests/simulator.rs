//! The simulator against real gateways: the demo end to end on the embedded store, and a
//! faulty city on PostgreSQL (drops, a reconnect storm, slow readers, devices offline that
//! flush their backlog, skewed clocks). Each run ends with the invariant check against the
//! store; these tests fail when any invariant does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wenxiao_gateway::config::Config;
use wenxiao_gateway::store::{Store, StoreAudit};
use wenxiao_simulator::check::{self, Caps};
use wenxiao_simulator::console::ConsoleApi;
use wenxiao_simulator::demo::{DemoOptions, demo};
use wenxiao_simulator::drive::drive;
use wenxiao_simulator::report::Report;
use wenxiao_simulator::run::{Run, Shard, Target};
use wenxiao_simulator::scenario::Scenario;
use wenxiao_tests::env::TestEnv;

/// The run's view of a gateway started from `env`.
async fn target(
    env: &TestEnv,
    gw: &wenxiao_gateway::server::GatewayHandle,
    store: &wenxiao_gateway::store::AnyStore,
) -> Target {
    Target {
        gateway: gw.device_addr,
        registry: store.load_registry().await.unwrap(),
        ca: Arc::new(wenxiao_gateway::pki::DevCa::load(&env.path().join("pki")).unwrap()),
        keys: env.config.master_keys().unwrap(),
        gateway_pid: None,
    }
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_clears_delivers_and_passes_its_invariants() {
    let mut scenario = Scenario::load(&repo("config/demo.toml")).unwrap();
    scenario.city.events_per_day = 3_000;
    scenario.clock.real_seconds = 6;
    scenario.faults.storm_at_s = vec![3];
    scenario.faults.disconnect_mean_s = 4;
    let mut config = Config::load(&repo("config/gateway.toml")).unwrap();
    config.policy_path = repo("config/policy.toml");
    config.risk.rules_path = repo("config/risk.toml");
    config.registry.merchants_path = repo("config/registry/merchants.csv");
    config.registry.devices_path = repo("config/registry/devices.csv");
    let out = tempfile::tempdir().unwrap();
    let outcome = demo(DemoOptions {
        scenario,
        gateway_config: config,
        out_dir: out.path().to_owned(),
    })
    .await
    .unwrap();
    let r = &outcome.report;
    println!("{}", r.table());
    assert!(r.pass, "{}", r.table());
    assert!(r.txns.planned > 2_900, "{}", r.txns.planned);
    assert_eq!(
        r.txns.stored + r.txns.duplicate + r.txns.rejected,
        r.txns.planned
    );
    assert!(r.credits.loaded > 100, "{:?}", r.credits);
    assert!(r.credits.pushed > 0 && r.credits.presented > 0);
    assert!(r.storms.iter().all(|s| s.settled_ms.is_some()));
    assert!(r.sessions.reconnects >= 200, "{:?}", r.sessions);
    // Reconnects resume their TLS session instead of a full handshake.
    assert!(
        r.sessions.handshakes.1 * 2 > r.sessions.reconnects,
        "{:?}",
        r.sessions
    );
    for f in ["demo-summary.txt", "demo-report.json"] {
        assert!(out.path().join(f).exists(), "{f}");
    }
    assert!(
        outcome
            .files
            .iter()
            .any(|f| f.ends_with("card_credits.csv"))
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("demo-report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["pass"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_city_on_postgres_loses_and_doubles_nothing() {
    let env = TestEnv::postgres().await;
    let gw = env.start();
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let policy = wenxiao_gateway::policy::Policy::load(&env.config.policy_path).unwrap();
    let target = target(&env, &gw, &store).await;
    let mut scenario = Scenario {
        seed: 5,
        ..Scenario::default()
    };
    scenario.city.events_per_day = 3_000;
    scenario.clock.real_seconds = 6;
    scenario.faults.disconnect_mean_s = 2;
    scenario.faults.slow_reader_per_mille = 300;
    scenario.faults.slow_read_ms = 5;
    scenario.faults.offline_per_mille = 400;
    scenario.faults.offline_from_hour = 8;
    scenario.faults.offline_hours = 6;
    scenario.faults.clock_skew_max_ms = 600_000;
    scenario.faults.storm_at_s = vec![3];
    scenario.faults.reconnect_jitter_ms = 300;
    scenario.run.connect_s = 1;
    scenario.run.source_addresses = 3;
    let mut run = Run::start(&target, &scenario, Shard::ALL).await.unwrap();
    let day = run.play_day().await;
    let reports = run.finish(Duration::from_secs(10)).await;
    let audit = store.audit().await.unwrap();
    let caps = Caps {
        monthly: policy.monthly_cap(),
        programme: policy.programme_total(),
    };
    let invariants = check::check(&reports, &audit, caps, Shard::ALL);
    let r = Report::new(&run, &day, &reports, invariants, None);
    println!("{}", r.table());
    assert!(r.pass, "{}", r.table());
    // The test registry has no performance venue: their share of the plan finds no device.
    assert!(r.txns.planned > 2_500, "{}", r.txns.planned);
    assert_eq!(
        r.txns.stored + r.txns.duplicate + r.txns.rejected,
        r.txns.planned
    );
    assert!(
        r.sessions.reconnects >= 10 && r.sessions.dropped_by_faults > 0,
        "{:?}",
        r.sessions
    );
    // The store agrees with the devices, device by device (the invariant), and in total.
    let stored: i64 = audit.devices.iter().map(|d| d.stored).sum();
    assert_eq!(
        u64::try_from(stored).unwrap(),
        r.txns.stored + r.txns.duplicate
    );
    gw.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariant_check_catches_an_acknowledged_txn_the_store_lacks() {
    // The check itself must be able to fail: a run on SQLite, then one stored row removed
    // behind the gateway's back.
    let env = TestEnv::sqlite();
    let gw = env.start();
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let target = target(&env, &gw, &store).await;
    let mut scenario = Scenario::default();
    scenario.city.events_per_day = 400;
    scenario.clock.real_seconds = 2;
    scenario.run.connect_s = 1;
    let mut run = Run::start(&target, &scenario, Shard::ALL).await.unwrap();
    let day = run.play_day().await;
    assert!(day.all_answered);
    let reports = run.finish(Duration::from_secs(10)).await;
    gw.shutdown().unwrap();
    let caps = Caps {
        monthly: wenxiao_protocol::Fen(200_000_000),
        programme: wenxiao_protocol::Fen(2_000_000_000),
    };
    let before = check::check(&reports, &store.audit().await.unwrap(), caps, Shard::ALL);
    assert!(before.iter().all(|i| i.pass), "{before:?}");
    let db = rusqlite_path(&env);
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "DELETE FROM txns WHERE rowid = (SELECT MAX(rowid) FROM txns)",
        [],
    )
    .unwrap();
    let after = check::check(&reports, &store.audit().await.unwrap(), caps, Shard::ALL);
    assert!(!after[0].pass, "{after:?}");
}

fn rusqlite_path(env: &TestEnv) -> std::path::PathBuf {
    env.config.sqlite_path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_clears_through_the_console_with_four_eyes_and_never_opens_the_database() {
    use wenxiao_gateway::store::console::{CommandStatus, ConsoleStore};
    let mut env = TestEnv::sqlite();
    env.config.clearing.early_close_allowed = true;
    // The shipped city: both operators' OTA endpoints, so every credit can be loaded.
    env.config.registry.merchants_path = repo("config/registry/merchants.csv");
    env.config.registry.devices_path = repo("config/registry/devices.csv");
    let config = env.write_config_file(0);
    let bin = env!("CARGO_BIN_EXE_gateway-under-test");
    let mut tokens = Vec::new();
    for name in ["sim-proposer", "sim-approver"] {
        wenxiao_tests::cli::run(
            bin,
            &config,
            &[],
            &["users", "add", name, "--roles", "auditor", "--no-password"],
        );
        tokens.push(
            wenxiao_tests::cli::run(bin, &config, &[], &["users", "token", name])
                .trim()
                .to_owned(),
        );
    }
    let gw = env.start();
    // What the load tool is given: the gateway's listeners, PKI and registry files, and a
    // store it cannot reach (nothing listens on port 9).
    let run_config = Config::load(&env.write_client_config(
        &gw,
        "kind = \"postgres\"\npostgres_url = \"postgres://nobody@127.0.0.1:9/unreachable\"",
        "run.toml",
    ))
    .unwrap();
    let console = ConsoleApi::new(
        gw.console_addr.unwrap(),
        tokens[0].clone(),
        tokens[1].clone(),
    );
    let mut scenario = Scenario {
        seed: 11,
        ..Scenario::default()
    };
    scenario.city.events_per_day = 2_000;
    scenario.clock.real_seconds = 5;
    scenario.run.connect_s = 1;
    scenario.run.deliver = true;
    let report = drive(&run_config, &console, &scenario, Shard::ALL, None, None)
        .await
        .unwrap();
    println!("{}", report.table());
    assert!(report.pass, "{}", report.table());
    assert!(report.txns.stored > 1_000, "{:?}", report.txns);

    // The day was cleared early, proposed by one auditor and approved by the other, and
    // sealed; the files the run downloaded end with that seal.
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let commands = store
        .list_commands(Some(CommandStatus::Approved), 10)
        .await
        .unwrap();
    let day = commands
        .iter()
        .find(|c| c.kind == "clearing")
        .expect("an approved clearing command");
    assert_eq!(day.proposed_by, "sim-proposer");
    assert_eq!(day.decided_by.as_deref(), Some("sim-approver"));
    let date = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    let seal = store.seal(date).await.unwrap().expect("a seal");
    let file = run_config
        .data_dir
        .join("settlement-out/settlement")
        .join(date.get().to_string())
        .join("card_credits.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().last().unwrap(), format!("SEAL,{seal}"));

    // Clearing and approving again changes nothing: the same credits, the same seal.
    let out = tempfile::tempdir().unwrap();
    let again = console.clear_and_approve(date, out.path()).await.unwrap();
    assert_eq!(again.seal.as_deref(), Some(seal.as_str()));
    assert_eq!(
        wenxiao_simulator::console::parse_card_credits(&text).unwrap(),
        again.credits
    );
    // The figures the run checked are the store's.
    assert_eq!(
        console.figures().await.unwrap(),
        wenxiao_gateway::store::StoreAudit::audit(&store)
            .await
            .unwrap()
    );
    gw.shutdown().unwrap();
}
