//! One run against a gateway: plan the day, mint a certificate for every device, start the
//! devices, play the day on the accelerated clock (with its storms and faults), wait for
//! every answer, and collect what each device saw. The demo adds clearing and delivery
//! between [`Run::play_day`] and [`Run::finish`].
//!
//! A scenario's `[hotlist]` plantings blacklist cards through the gateway's own command
//! line (`blacklist import`), so a run needs the gateway binary and its configuration file
//! for them ([`Run::set_gateway_cli`]): `bench` has both (its first simulator process
//! plants), `wenxiao-sim run --gateway-bin` too; the demo, whose gateway runs in-process,
//! plants nothing and says so in the report.
//!
//! A scenario's `[fraud]` table plants fraud into the plan ([`crate::fraud`]); the run
//! files the residents' reports it plans through the gateway's admin API halfway through
//! the played hours ([`Run::set_admin`]), and [`crate::fraud::score`] reads the cases
//! after the day.

use crate::device::{self, DeviceFaults, DeviceReport, DeviceSetup, PRESENT_QUEUE_CARDS};
use crate::fraud::{self, AdminApi, Planted};
use crate::hotlist::{self, Planting, Plantings};
use crate::plan::{self, PlannedEvent};
use crate::scenario::Scenario;
use crate::world::{CardBook, Control, Counters, SimClock, World};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wenxiao_gateway::pki::DevCa;
use wenxiao_gateway::registry::Registry;
use wenxiao_protocol::mac::MasterKeys;
use wenxiao_protocol::{CardNo, DeviceId, DeviceKind};

const HOUR_MS: i64 = 3_600_000;
/// How often the live progress line is refreshed.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Longest a `blacklist import` may take: it is one store transaction of at most a few
/// thousand rows, so two minutes means the store is stuck, and the planting is reported
/// failed rather than holding up the run.
pub const BLACKLIST_IMPORT_TIMEOUT_MS: u64 = 120_000;

/// The gateway's command line, for the scenario's `[hotlist]` plantings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCli {
    /// The `wenxiao-gateway` binary.
    pub bin: PathBuf,
    /// The configuration file of the gateway the run drives.
    pub config_path: PathBuf,
}

impl GatewayCli {
    /// Blacklists `cards`: writes them to a temporary CSV file (see
    /// [`hotlist::write_import_csv`]) and runs `<bin> --config <config_path> blacklist
    /// import <file>`, calling `started` with the wall clock (ms since the epoch) just
    /// before the command starts. Blocks until it exits (at most
    /// [`BLACKLIST_IMPORT_TIMEOUT_MS`]); returns what it printed.
    pub fn blacklist_import(
        &self,
        cards: &[CardNo],
        started: impl FnOnce(i64),
    ) -> anyhow::Result<String> {
        let mut file = tempfile::Builder::new()
            .prefix("wenxiao-sim-hotlist-")
            .suffix(".csv")
            .tempfile()
            .context("a temporary file for the blacklist import")?;
        hotlist::write_import_csv(&mut file, cards)?;
        file.flush()?;
        started(wenxiao_gateway::clock::now_ms());
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config_path)
            .arg("blacklist")
            .arg("import")
            .arg(file.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let deadline =
            std::time::Instant::now() + Duration::from_millis(BLACKLIST_IMPORT_TIMEOUT_MS);
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "`blacklist import` did not finish within {} s",
                    BLACKLIST_IMPORT_TIMEOUT_MS / 1_000
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "`blacklist import` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// The version a `blacklist import` reports having made (`… hot-list version N …`), if it
/// says.
pub fn imported_version(output: &str) -> Option<u32> {
    let (_, rest) = output.split_once("hot-list version ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The gateway a run drives.
pub struct Target {
    /// Its device listener.
    pub gateway: SocketAddr,
    /// The registry it serves.
    pub registry: Registry,
    /// The development CA that signs device certificates (and the server's).
    pub ca: Arc<DevCa>,
    /// The card master keys of its configuration.
    pub keys: MasterKeys,
    /// Its process id, to read its memory (`None`: not measured).
    pub gateway_pid: Option<u32>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("gateway", &self.gateway)
            .field("gateway_pid", &self.gateway_pid)
            .finish_non_exhaustive()
    }
}

/// This process's part of the devices when a run is spread over several processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u32,
    /// Processes in all.
    pub count: u32,
}

impl Shard {
    /// The whole run in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether this process runs the device.
    pub fn owns(&self, id: DeviceId) -> bool {
        id.get() % u64::from(self.count.max(1)) == u64::from(self.index)
    }
}

/// A reconnect storm and how long the sessions took to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StormOutcome {
    /// Real seconds after the day started.
    pub at_s: u64,
    /// Sessions open when it struck.
    pub sessions_before: i64,
    /// Until every one of them was open again; `None` if they did not come back in time.
    pub settled_ms: Option<u64>,
}

/// Memory of the gateway process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RssSample {
    /// Before any device connected.
    pub before_kib: u64,
    /// With every session open.
    pub sessions_kib: u64,
    /// Sessions open at that moment.
    pub sessions: u64,
    /// At the end of the day.
    pub end_kib: u64,
}

/// One `[hotlist]` planting as the run made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlantOutcome {
    /// Real seconds after the day started.
    pub at_s: u64,
    /// Cards blacklisted.
    pub cards: usize,
    /// When the import command started, ms since the epoch (`None`: not run here).
    pub added_at_ms: Option<i64>,
    /// The version the import made, if it said.
    pub version: Option<u32>,
    /// Why it failed or was not run; `None`: the import succeeded.
    pub error: Option<String>,
}

/// What [`Run::play_day`] observed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DayOutcome {
    /// Every planned transaction was answered in time.
    pub all_answered: bool,
    /// Real ms from the clock's start until the last answer (or the timeout).
    pub answered_ms: u64,
    /// Highest number of STORED/DUPLICATE acks in one progress interval, per second.
    pub peak_acked_per_s: u64,
    /// Most sessions open at once.
    pub peak_sessions: i64,
    /// Real ms the devices took to connect before the clock started.
    pub connect_ms: u64,
    /// The storms.
    pub storms: Vec<StormOutcome>,
    /// Gateway memory.
    pub rss: Option<RssSample>,
    /// The scenario's hot-list plantings.
    pub plants: Vec<PlantOutcome>,
    /// The wall clock when the play started, ms since the epoch: alerts and reports from
    /// before are not this run's.
    pub started_at_ms: i64,
    /// The gateway's evaluated-facts counter then (`None`: not read — nothing planted, or
    /// no metrics).
    pub risk_facts_before: Option<u64>,
    /// The residents' reports the run filed (`[fraud] reported_cards`).
    pub resident_reports: Vec<fraud::ReportFiled>,
}

/// A run in progress.
pub struct Run {
    /// Shared with the devices.
    pub world: Arc<World>,
    /// The scenario.
    pub scenario: Scenario,
    /// The shard this process runs.
    pub shard: Shard,
    /// Transactions planned for this process's devices in the played hours.
    pub planned: u64,
    /// A digest of this process's share of the day (see [`digest`]).
    pub plan_digest: u64,
    /// Devices started.
    pub devices: usize,
    tasks: Vec<JoinHandle<DeviceReport>>,
    presenters: Vec<mpsc::Sender<CardNo>>,
    gateway_pid: Option<u32>,
    rss_before_kib: Option<u64>,
    peak: Arc<AtomicU64>,
    /// For the `[hotlist]` plantings; `None`: this process plants nothing.
    gateway_cli: Option<GatewayCli>,
    /// The fraud the scenario's `[fraud]` table planted into the plan.
    pub planted: Planted,
    /// The gateway's admin API, for the residents' reports and the cases; `Err`: why
    /// there is none.
    admin: Result<AdminApi, String>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("devices", &self.devices)
            .field("planned", &self.planned)
            .finish_non_exhaustive()
    }
}

/// Shanghai midnight of `yyyymmdd` (0 = today), epoch ms.
pub fn day_start_ms(date: u32) -> anyhow::Result<i64> {
    use chrono_tz::Asia::Shanghai;
    let today = chrono::Utc::now().with_timezone(&Shanghai).date_naive();
    let day = if date == 0 {
        today
    } else {
        chrono::NaiveDate::from_ymd_opt(
            i32::try_from(date / 10_000)?,
            (date / 100) % 100,
            date % 100,
        )
        .with_context(|| format!("clock.date {date} is not a date"))?
    };
    let midnight = day
        .and_hms_opt(0, 0, 0)
        .context("midnight")?
        .and_local_timezone(Shanghai)
        .single()
        .with_context(|| format!("midnight of {day} in Shanghai"))?;
    Ok(midnight.timestamp_millis())
}

/// A digest of this process's share of the day: every device's events in seq order (which
/// with the day's start and the card keys fix its TXNs byte for byte), and the day's start.
/// The same seed and scenario give the same value.
fn digest(by_device: &[(DeviceId, Vec<PlannedEvent>)], day_start: i64) -> u64 {
    let h = by_device.iter().fold(plan::FNV_OFFSET, |h, (id, events)| {
        plan::fnv1a(
            plan::fnv1a(h, &id.get().to_be_bytes()),
            &plan::digest(events).to_be_bytes(),
        )
    });
    plan::fnv1a(h, &day_start.to_be_bytes())
}

/// The scenario's `[hotlist]` plantings in time order, with their cards drawn from the
/// plan (see [`hotlist::plant`]); the same in every process of a run.
fn plantings(
    scenario: &Scenario,
    plan: &[PlannedEvent],
    window_ms: (i64, i64),
    speed: u64,
) -> Plantings {
    let h = &scenario.hotlist;
    let mut at_s = h.add_at_s.clone();
    at_s.sort_unstable();
    // Real seconds after the clock's start → simulated ms after the day's start.
    let speed = i64::try_from(speed).unwrap_or(i64::MAX);
    let at_sim_ms: Vec<i64> = at_s
        .iter()
        .map(|s| {
            window_ms.0.saturating_add(
                i64::try_from(*s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000)
                    .saturating_mul(speed),
            )
        })
        .collect();
    let batches = hotlist::plant(scenario.seed, plan, window_ms, &at_sim_ms, h.cards_per_add);
    Plantings::new(
        at_s.into_iter()
            .zip(batches)
            .map(|(at_s, cards)| Planting { at_s, cards })
            .collect(),
    )
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn tls_for(ca: &DevCa, id: DeviceId) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let cert = ca.issue_device(id)?;
    let config = wenxiao_gateway::tls::client_config(
        &ca.pem().cert_pem,
        Some((&cert.cert_pem, &cert.key_pem)),
    )?;
    // A few resumable sessions per device: a reconnect resumes instead of a full handshake.
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(4);
    Ok(Arc::new(config))
}

impl Run {
    /// Plans the day, starts this shard's devices and returns once they are connecting;
    /// the clock starts `run.connect_s` later.
    pub async fn start(target: &Target, scenario: &Scenario, shard: Shard) -> anyhow::Result<Run> {
        let day_start = day_start_ms(scenario.clock.date)?;
        let plan::DayPlan {
            events: plan,
            planted,
        } = plan::plan_scenario_day(scenario, &target.registry);
        let from_ms = i64::from(scenario.clock.from_hour) * HOUR_MS;
        let to_ms = i64::from(scenario.clock.to_hour) * HOUR_MS;
        let mut devices: Vec<_> = target
            .registry
            .devices()
            .into_iter()
            .filter(|d| d.active && shard.owns(d.device_id))
            .map(|d| (d.device_id, d.kind))
            .collect();
        devices.sort_unstable();
        let mut by_device: HashMap<DeviceId, Vec<PlannedEvent>> = HashMap::new();
        for e in plan
            .iter()
            .filter(|e| e.at_ms >= from_ms && e.at_ms < to_ms)
        {
            if shard.owns(e.device_id) {
                by_device.entry(e.device_id).or_default().push(*e);
            }
        }
        let mut ordered: Vec<(DeviceId, Vec<PlannedEvent>)> = devices
            .iter()
            .map(|(id, _)| (*id, by_device.remove(id).unwrap_or_default()))
            .collect();
        let planned = ordered.iter().map(|(_, e)| e.len()).sum::<usize>();
        let plan_digest = digest(&ordered, day_start);

        let mut online_after: HashMap<CardNo, u16> = HashMap::new();
        for e in plan.iter().filter(|e| plan::moves_online_counter(e.kind)) {
            let v = u16::try_from(e.card_counter.get()).unwrap_or(u16::MAX);
            let slot = online_after.entry(e.card_no).or_insert(v);
            *slot = (*slot).max(v);
        }
        let speed = scenario.speed();
        let plantings = plantings(scenario, &plan, (from_ms, to_ms), speed);
        let connect = Duration::from_secs(scenario.run.connect_s);
        let (control, _) = watch::channel(Control::default());
        let world = Arc::new(World {
            clock: SimClock {
                origin: Instant::now() + connect,
                sim_origin_ms: from_ms,
                speed,
            },
            day_start_ms: day_start,
            keys: target.keys.clone(),
            counters: Counters::default(),
            cards: CardBook::new(online_after, target.keys.clone()),
            plantings,
            control,
            reconnect_jitter_ms: scenario.faults.reconnect_jitter_ms,
            latencies: crate::world::Latencies::default(),
        });

        let rss_before_kib = target.gateway_pid.and_then(rss_kib);
        let mut rng = StdRng::seed_from_u64(scenario.seed);
        let f = &scenario.faults;
        let mut tasks = Vec::with_capacity(devices.len());
        let mut presenters = Vec::new();
        for (i, ((id, kind), (_, events))) in devices.iter().zip(ordered.drain(..)).enumerate() {
            let ca = Arc::clone(&target.ca);
            let id_ = *id;
            let tls = tokio::task::spawn_blocking(move || tls_for(&ca, id_)).await??;
            let faults = DeviceFaults {
                skew_ms: if f.clock_skew_max_ms > 0 {
                    rng.random_range(-f.clock_skew_max_ms..=f.clock_skew_max_ms)
                } else {
                    0
                },
                slow_read_ms: if rng.random_range(0..1_000u32) < f.slow_reader_per_mille {
                    f.slow_read_ms
                } else {
                    0
                },
                offline: (rng.random_range(0..1_000u32) < f.offline_per_mille).then(|| {
                    let from = i64::from(f.offline_from_hour) * HOUR_MS;
                    (from, from + i64::from(f.offline_hours) * HOUR_MS)
                }),
                mean_ms_between_drops: f.disconnect_mean_s.saturating_mul(1_000),
            };
            let present = if matches!(kind, DeviceKind::Pos | DeviceKind::Kiosk) {
                let (tx, rx) = mpsc::channel(PRESENT_QUEUE_CARDS);
                presenters.push(tx);
                Some(rx)
            } else {
                None
            };
            let octet = u8::try_from(i % usize::try_from(scenario.run.source_addresses)?)? + 1;
            let setup = DeviceSetup {
                id: *id,
                kind: *kind,
                tls,
                gateway: target.gateway,
                source_ip: (scenario.run.source_addresses > 1)
                    .then_some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet))),
                events,
                faults,
                seed: scenario.seed,
                present,
            };
            tasks.push(tokio::spawn(device::run_device(setup, Arc::clone(&world))));
        }
        let peak = Arc::new(AtomicU64::new(0));
        Ok(Run {
            world,
            scenario: scenario.clone(),
            shard,
            planned: u64::try_from(planned)?,
            plan_digest,
            devices: devices.len(),
            tasks,
            presenters,
            gateway_pid: target.gateway_pid,
            rss_before_kib,
            peak,
            gateway_cli: None,
            planted,
            admin: Err("no admin API was given to the run".to_owned()),
        })
    }

    /// The gateway's admin API (or why there is none), for the `[fraud]` table's residents'
    /// reports and the cases read after the day.
    pub fn set_admin(&mut self, admin: Result<AdminApi, String>) {
        self.admin = admin;
    }

    /// The admin API, or why there is none.
    pub fn admin(&self) -> Result<&AdminApi, &str> {
        self.admin.as_ref().map_err(String::as_str)
    }

    /// Lets this process make the scenario's `[hotlist]` plantings through the gateway's
    /// command line (one process of a run should: each planting is a new version).
    pub fn set_gateway_cli(&mut self, cli: GatewayCli) {
        self.gateway_cli = Some(cli);
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.world.counters
    }

    /// Planned events done with: answered, or refused at the reader (no TXN).
    fn answered(&self) -> u64 {
        let c = &self.world.counters;
        c.acks_stored.load(Relaxed)
            + c.acks_duplicate.load(Relaxed)
            + c.acks_rejected.load(Relaxed)
            + c.hotlist_refused.load(Relaxed)
    }

    /// Starts the live progress display (a line on stderr, redrawn in place on a terminal).
    pub fn progress(&self, label: &'static str) -> JoinHandle<()> {
        let world = Arc::clone(&self.world);
        let planned = self.planned;
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_INTERVAL_MS));
            let mut last = 0u64;
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let c = &world.counters;
                let acked = c.acks_stored.load(Relaxed) + c.acks_duplicate.load(Relaxed);
                let rate = (acked - last.min(acked)) * 1_000 / PROGRESS_INTERVAL_MS;
                last = acked;
                let sim = world.clock.sim_ms_now().clamp(0, 24 * HOUR_MS);
                let line = format!(
                    "{label} {:02}:{:02} sim · stored {acked}/{planned} ({rate}/s) · rejected {} · refused {} · sessions {} · reconnects {} · offline {} · loaded {} · errors {}",
                    sim / HOUR_MS,
                    (sim % HOUR_MS) / 60_000,
                    c.acks_rejected.load(Relaxed),
                    c.hotlist_refused.load(Relaxed),
                    c.sessions_open.load(Relaxed),
                    c.reconnects.load(Relaxed),
                    c.offline_devices.load(Relaxed),
                    c.credits_loaded.load(Relaxed),
                    c.errors.load(Relaxed),
                );
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else if n.is_multiple_of(5) {
                    eprintln!("{line}");
                }
            }
        })
    }

    /// Waits for the devices to connect, plays the hours (with the scenario's storms),
    /// then waits for every planned transaction's answer (or the settle timeout).
    pub async fn play_day(&mut self) -> DayOutcome {
        let started_at_ms = wenxiao_gateway::clock::now_ms();
        // Before any TXN: the devices send nothing before the clock starts.
        let risk_facts_before = match (&self.admin, self.planted.is_empty()) {
            (Ok(api), false) => api.facts_total().await.ok(),
            _ => None,
        };
        let origin = self.world.clock.origin;
        let connect_started = Instant::now();
        let devices = i64::try_from(self.devices).unwrap_or(i64::MAX);
        let c = &self.world.counters;
        while c.sessions_open.load(Relaxed) < devices
            && Instant::now() < origin + Duration::from_secs(self.scenario.run.connect_s.max(1) * 4)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut outcome = DayOutcome {
            connect_ms: u64::try_from(connect_started.elapsed().as_millis()).unwrap_or(0),
            started_at_ms,
            risk_facts_before,
            ..DayOutcome::default()
        };
        let sessions = c.sessions_open.load(Relaxed);
        let rss_sessions = self.gateway_pid.and_then(rss_kib);
        tokio::time::sleep_until(origin).await;
        let sampler = {
            let world = Arc::clone(&self.world);
            let peak = Arc::clone(&self.peak);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_INTERVAL_MS));
                let mut last = 0u64;
                loop {
                    tick.tick().await;
                    let c = &world.counters;
                    let acked = c.acks_stored.load(Relaxed) + c.acks_duplicate.load(Relaxed);
                    peak.fetch_max(
                        (acked - last.min(acked)) * 1_000 / PROGRESS_INTERVAL_MS,
                        Relaxed,
                    );
                    last = acked;
                }
            })
        };
        let day_end = self
            .world
            .clock
            .instant_of(i64::from(self.scenario.clock.to_hour) * HOUR_MS);
        // Plantings keep their own time: a storm's wait for the sessions does not delay them.
        let planter = self.start_planting(origin);
        let reporter = self.start_reports(origin);
        let mut storms: Vec<u64> = self.scenario.faults.storm_at_s.clone();
        storms.sort_unstable();
        for at_s in storms {
            tokio::time::sleep_until(origin + Duration::from_secs(at_s)).await;
            outcome.storms.push(self.storm(at_s).await);
        }
        let deadline = day_end + Duration::from_secs(self.scenario.run.settle_timeout_s);
        loop {
            outcome.peak_sessions = outcome.peak_sessions.max(c.sessions_open.load(Relaxed));
            let now = Instant::now();
            if now >= day_end && self.answered() >= self.planned {
                outcome.all_answered = true;
                break;
            }
            if now >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outcome.answered_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(0);
        sampler.abort();
        if let Some(planter) = planter {
            match planter.await {
                Ok(plants) => outcome.plants = plants,
                Err(e) => tracing::error!("hot-list planting task failed: {e}"),
            }
        }
        if let Some(reporter) = reporter {
            match reporter.await {
                Ok(filed) => outcome.resident_reports = filed,
                Err(e) => tracing::error!("residents' reports task failed: {e}"),
            }
        }
        if self.scenario.run.hold_s > 0 {
            tokio::time::sleep(Duration::from_secs(self.scenario.run.hold_s)).await;
        }
        outcome.peak_acked_per_s = self.peak.load(Relaxed);
        outcome.rss = self.gateway_pid.and_then(|pid| {
            Some(RssSample {
                before_kib: self.rss_before_kib?,
                sessions_kib: rss_sessions?,
                sessions: u64::try_from(sessions).unwrap_or(0),
                end_kib: rss_kib(pid)?,
            })
        });
        outcome
    }

    /// Makes the plantings at their times (each import on a blocking thread), or — with
    /// no gateway command line — records that they were not made here.
    fn start_planting(&self, origin: Instant) -> Option<JoinHandle<Vec<PlantOutcome>>> {
        if self.world.plantings.is_empty() {
            return None;
        }
        let world = Arc::clone(&self.world);
        let cli = self.gateway_cli.clone();
        Some(tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(world.plantings.len());
            for (k, p) in world.plantings.list().iter().enumerate() {
                let mut o = PlantOutcome {
                    at_s: p.at_s,
                    cards: p.cards.len(),
                    added_at_ms: None,
                    version: None,
                    error: None,
                };
                let Some(cli) = cli.clone() else {
                    o.error = Some(
                        "not planted by this process (it has no gateway binary: \
                         `wenxiao-sim run --gateway-bin`, or `bench`)"
                            .to_owned(),
                    );
                    outcomes.push(o);
                    continue;
                };
                tokio::time::sleep_until(origin + Duration::from_secs(p.at_s)).await;
                let (w, cards) = (Arc::clone(&world), p.cards.clone());
                let done = tokio::task::spawn_blocking(move || {
                    cli.blacklist_import(&cards, |at| w.plantings.mark_added(k, at))
                })
                .await;
                o.added_at_ms = world.plantings.added_at_ms(k);
                match done {
                    Ok(Ok(printed)) => o.version = imported_version(&printed),
                    Ok(Err(e)) => o.error = Some(format!("{e:#}")),
                    Err(e) => o.error = Some(format!("import task: {e}")),
                }
                if let Some(e) = &o.error {
                    tracing::warn!("hot-list planting at {} s: {e}", p.at_s);
                }
                outcomes.push(o);
            }
            outcomes
        }))
    }

    /// Files the `[fraud]` table's residents' reports halfway through the played hours:
    /// the reported cards' purchases are under way, and the cases open before the day
    /// ends. Without an admin API each is recorded as not filed, and why.
    fn start_reports(&self, origin: Instant) -> Option<JoinHandle<Vec<fraud::ReportFiled>>> {
        let reports = self.planted.reports.clone();
        if reports.is_empty() {
            return None;
        }
        let admin = self.admin.clone();
        let at = origin + Duration::from_secs(self.scenario.clock.real_seconds / 2);
        Some(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut filed = Vec::with_capacity(reports.len());
            for r in &reports {
                filed.push(match &admin {
                    Ok(api) => api.file_report(r).await,
                    Err(e) => fraud::ReportFiled {
                        card_no: r.card_no,
                        reporter: r.reporter.clone(),
                        status: None,
                        case_id: None,
                        error: Some(e.clone()),
                    },
                });
            }
            filed
        }))
    }

    /// Every device drops its connection at once; waits (up to a minute) until as many
    /// sessions are open as before.
    async fn storm(&self, at_s: u64) -> StormOutcome {
        const STORM_WAIT_MS_MAX: u64 = 60_000;
        let c = &self.world.counters;
        let before = c.sessions_open.load(Relaxed);
        let reconnects_before = c.reconnects.load(Relaxed);
        let struck = Instant::now();
        self.world.control.send_modify(|ctl| ctl.storm_epoch += 1);
        let mut settled_ms = None;
        let want = u64::try_from(before).unwrap_or(0);
        while struck.elapsed() < Duration::from_millis(STORM_WAIT_MS_MAX) {
            let back = c.reconnects.load(Relaxed) - reconnects_before;
            if back >= want && c.sessions_open.load(Relaxed) >= before {
                settled_ms = Some(u64::try_from(struck.elapsed().as_millis()).unwrap_or(0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        StormOutcome {
            at_s,
            sessions_before: before,
            settled_ms,
        }
    }

    /// Presents each card once at a POS or kiosk (round robin), evenly over `over`, as
    /// residents do through the morning after; the devices load what is offered.
    pub async fn present(&self, cards: &[CardNo], over: Duration) -> anyhow::Result<()> {
        if self.presenters.is_empty() || cards.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let n = u32::try_from(cards.len()).unwrap_or(u32::MAX);
        for (i, card) in cards.iter().enumerate() {
            let due = started + over / n * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due).await;
            let tx = self
                .presenters
                .get(i % self.presenters.len())
                .context("presenter")?;
            tx.send(*card).await.context("device stopped")?;
        }
        Ok(())
    }

    /// Waits until `count` loads were recorded by the gateway; gives up when none was
    /// recorded for `stall` (delivery stopped), or after `cap` in all.
    pub async fn wait_loads(&self, count: u64, stall: Duration, cap: Duration) -> bool {
        let started = Instant::now();
        let (mut last, mut last_at) = (0, started);
        loop {
            let loaded = self.world.counters.credits_loaded.load(Relaxed);
            if loaded >= count {
                return true;
            }
            let now = Instant::now();
            if loaded > last {
                (last, last_at) = (loaded, now);
            }
            if now.duration_since(last_at) >= stall || now.duration_since(started) >= cap {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets the devices finish what they are doing and stop — those still busy after
    /// `grace` stop where they are (their unanswered TXNs are counted); their reports.
    pub async fn finish(&mut self, grace: Duration) -> Vec<DeviceReport> {
        self.world.control.send_modify(|ctl| ctl.finish = true);
        self.presenters.clear();
        let until = Instant::now() + grace;
        while Instant::now() < until && self.tasks.iter().any(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.world.control.send_modify(|ctl| ctl.abort = true);
        let mut reports = Vec::with_capacity(self.tasks.len());
        for t in self.tasks.drain(..) {
            match t.await {
                Ok(r) => reports.push(r),
                Err(e) => tracing::error!("device task failed: {e}"),
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_reports_its_version() {
        assert_eq!(
            imported_version("5 cards imported: hot-list version 7 (5 listed, 0 taken off)"),
            Some(7)
        );
        assert_eq!(
            imported_version("5 cards imported: nothing changed (hot list unchanged)"),
            None
        );
    }
}
