//! `wenxiao-sim`: the city simulator's command line (the binary calls [`main`]; the tests'
//! `sim-under-test` does too, so that the bench can be run from a test).

use crate::console::ConsoleApi;
use crate::demo::{self, DemoOptions};
use crate::drive;
use crate::run::{GatewayCli, Shard};
use crate::scenario::Scenario;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wenxiao_gateway::config::Config;

#[derive(Parser)]
#[command(
    name = "wenxiao-sim",
    version,
    about = "City-scale simulator for the Wenxiao gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway on the embedded store + a simulated city day, clearing at midnight, credit
    /// delivery, invariant check, summary (exit status 1 if an invariant fails).
    Demo {
        /// The scenario.
        #[arg(long, default_value = "config/demo.toml")]
        scenario: PathBuf,
        /// Gateway configuration to start from (the demo replaces its data directory,
        /// listeners, PKI and store).
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// Card events in the day (overrides the scenario).
        #[arg(long)]
        events: Option<u64>,
        /// Real seconds the day takes (overrides the scenario).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seed (overrides the scenario).
        #[arg(long)]
        seed: Option<u64>,
        /// Where the summary, the JSON report and the settlement files go.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
    /// Drives a running gateway with a scenario, clears and approves through its console
    /// API, and checks the invariants against the console's audit figures; the gateway's
    /// database is never opened. Needs two auditors' bearer tokens in
    /// WENXIAO_CONSOLE_TOKEN (runs, proposes, reads) and WENXIAO_CONSOLE_APPROVER_TOKEN
    /// (approves), and the gateway's `clearing.early_close_allowed` for a day that has not
    /// ended.
    Run {
        /// The gateway's configuration (its listeners, PKI, keys, registry files, policy).
        #[arg(long)]
        config: PathBuf,
        /// The scenario.
        #[arg(long)]
        scenario: PathBuf,
        /// This process's share of the devices, `i/n` (0-based).
        #[arg(long, default_value = "0/1", value_parser = parse_shard)]
        shard: Shard,
        /// The gateway's process id, to measure its memory.
        #[arg(long)]
        gateway_pid: Option<u32>,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The gateway binary, for the scenario's `[hotlist]` plantings (`<bin> --config
        /// <config> blacklist import <file>`); without it this process plants nothing.
        #[arg(long)]
        gateway_bin: Option<PathBuf>,
    },
    /// A load scenario against a gateway process on PostgreSQL, beside the raw INSERT
    /// limit of that PostgreSQL measured in the same run (see `load/run.sh`).
    Bench {
        /// The scenario.
        #[arg(long)]
        scenario: PathBuf,
        /// The gateway binary.
        #[arg(long, default_value = "target/release/wenxiao-gateway")]
        gateway_bin: PathBuf,
        /// PostgreSQL (a fresh schema is made in it).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
        /// Keep the data directory and the schema.
        #[arg(long)]
        keep: bool,
        /// The gateway's `[ingest] writers` (default: its own default).
        #[arg(long)]
        ingest_writers: Option<usize>,
        /// The gateway's `[ingest] batch_linger_us` (default: its own default).
        #[arg(long)]
        batch_linger_us: Option<u64>,
        /// The gateway's `[credits] push_window` (default: its own default).
        #[arg(long)]
        push_window: Option<u16>,
        /// Where the HDR plot of the ack latency goes (SVG; default
        /// `target/bench/<scenario>-ack-latency.svg`).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Prints the plan's size and digest for a scenario and the registry (no gateway): the
    /// same seed and scenario print the same digest.
    Plan {
        /// The scenario.
        #[arg(long)]
        scenario: PathBuf,
        /// The registry's directory (merchants.csv, devices.csv).
        #[arg(long, default_value = "config/registry")]
        registry: PathBuf,
    },
    /// Writes a registry scaled to `devices` devices: the shipped one plus POS terminals
    /// spread over its contracted merchants (for load scenarios).
    Registry {
        /// Devices in all.
        #[arg(long)]
        devices: usize,
        /// The shipped registry's directory.
        #[arg(long, default_value = "config/registry")]
        from: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or("expected i/n")?;
    let index: u32 = i.parse().map_err(|e| format!("{e}"))?;
    let count: u32 = n.parse().map_err(|e| format!("{e}"))?;
    if count == 0 || index >= count {
        return Err("need 0 ≤ i < n".to_owned());
    }
    Ok(Shard { index, count })
}

/// Parses the command line, runs the command, and returns the exit status: 0 passed, 1 an
/// invariant failed, 2 an error.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    if path.exists() {
        Ok(Config::load(path)?)
    } else {
        anyhow::bail!(
            "{} not found (run from the repository root, or pass --config)",
            path.display()
        )
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Demo {
            scenario,
            config,
            events,
            seconds,
            seed,
            out,
        } => {
            let mut scenario = Scenario::load(&scenario)?;
            if let Some(e) = events {
                scenario.city.events_per_day = e;
            }
            if let Some(s) = seconds {
                scenario.clock.real_seconds = s;
            }
            if let Some(s) = seed {
                scenario.seed = s;
            }
            scenario.validate()?;
            let outcome = demo::demo(DemoOptions {
                scenario,
                gateway_config: load_config(&config)?,
                out_dir: out,
            })
            .await?;
            println!("{}", outcome.report.table());
            for f in &outcome.files {
                println!("wrote {}", f.display());
            }
            Ok(outcome.report.pass)
        }
        Command::Run {
            config,
            scenario,
            shard,
            gateway_pid,
            report,
            gateway_bin,
        } => {
            let cli = gateway_bin.map(|bin| GatewayCli {
                bin,
                config_path: config.clone(),
            });
            let config = load_config(&config)?;
            let scenario = Scenario::load(&scenario)?;
            let console = ConsoleApi::from_env(&config).context(
                "`run` clears, approves and reads its invariant figures through the gateway's console",
            )?;
            let r = drive::drive(&config, &console, &scenario, shard, gateway_pid, cli).await?;
            println!("{}", r.table());
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            Ok(r.pass)
        }
        Command::Plan { scenario, registry } => {
            let scenario = Scenario::load(&scenario)?;
            let registry = wenxiao_gateway::registry::Registry::from_csv(
                &registry.join("merchants.csv"),
                &registry.join("devices.csv"),
            )?;
            let day = crate::plan::plan_scenario_day(&scenario, &registry);
            println!(
                "{} events, digest {:016x}",
                day.events.len(),
                crate::plan::digest(&day.events)
            );
            if !day.planted.is_empty() {
                println!("planted fraud: {}", day.planted.summary());
                for note in &day.planted.notes {
                    println!("  {note}");
                }
            }
            Ok(true)
        }
        Command::Bench {
            scenario,
            gateway_bin,
            database_url,
            keep,
            ingest_writers,
            batch_linger_us,
            push_window,
            plot,
        } => {
            let plot_path = plot.unwrap_or_else(|| {
                let stem = scenario.file_stem().unwrap_or_default().to_string_lossy();
                PathBuf::from(format!("target/bench/{stem}-ack-latency.svg"))
            });
            crate::bench::bench(&crate::bench::BenchOptions {
                scenario_path: scenario,
                gateway_bin,
                database_url,
                repo: std::env::current_dir()?,
                keep,
                ingest_writers,
                batch_linger_us,
                push_window,
                plot_path,
            })
            .await
        }
        Command::Registry { devices, from, out } => {
            let (m, d) = crate::plan::write_scaled_registry(&from, devices, &out)?;
            println!("wrote {} and {}", m.display(), d.display());
            Ok(true)
        }
    }
}
