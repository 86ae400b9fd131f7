//! `wenxiao-sim bench`: one load scenario against a gateway process on PostgreSQL, with
//! the figures printed beside the limit measured in the same run — the raw batched INSERT
//! rate of that PostgreSQL for the same rows. It prepares a data directory (development
//! PKI, the registry scaled to the scenario's devices, a fresh schema), starts the gateway
//! binary, runs the scenario from `run.processes` simulator processes (`wenxiao-sim run
//! --shard i/n`: one process holds at most ~19,000 connections here), and stops the
//! gateway with SIGTERM.

use crate::scenario::Scenario;
use anyhow::Context;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Rows per INSERT statement of the raw limit (one commit each).
pub const RAW_ROWS_PER_INSERT: usize = 100;
/// How long each raw INSERT measurement runs.
pub const RAW_SECONDS: u64 = 10;

/// What `bench` needs besides the scenario.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The scenario file.
    pub scenario_path: PathBuf,
    /// The gateway binary.
    pub gateway_bin: PathBuf,
    /// PostgreSQL (a fresh schema is made in it).
    pub database_url: String,
    /// The repository root (for `config/`).
    pub repo: PathBuf,
    /// Keep the data directory and the schema.
    pub keep: bool,
    /// The gateway's `[ingest] writers` (None: its default).
    pub ingest_writers: Option<usize>,
    /// The gateway's `[ingest] batch_linger_us` (None: its default).
    pub batch_linger_us: Option<u64>,
    /// The gateway's `[credits] push_window` (None: its default).
    pub push_window: Option<u16>,
    /// Where the HDR plot of the ack latency goes (SVG).
    pub plot_path: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn pg(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("PostgreSQL at {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

fn with_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Raw limit: the gateway's own rows (into a copy of `txns` with the same indexes),
/// [`RAW_ROWS_PER_INSERT`] rows per INSERT and commit, from `connections` connections.
pub async fn raw_insert_rate(url: &str, connections: usize, seconds: u64) -> anyhow::Result<u64> {
    let c = pg(url).await?;
    c.batch_execute(
        "DROP TABLE IF EXISTS raw_txns; CREATE TABLE raw_txns (LIKE txns INCLUDING ALL)",
    )
    .await?;
    let values: Vec<String> = (0..RAW_ROWS_PER_INSERT)
        .map(|r| {
            let k = r * 3;
            format!(
                "(${}, ${}, 1, ${}, 1, 1, 10000, 0, 1, 0, 0, 0, 1795000000000, 16909060, 1001, 1, 0, 1000, 0, 1795000000500, 20261127)",
                k + 1,
                k + 2,
                k + 3
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO raw_txns (device_id, seq, kind, card_no, card_counter, counter_kind, amount_fen, \
         list_price_fen, item, points_hold_id, points_used, refund_of_seq, occurred_at_ms, tac, \
         merchant_id, status, reason, subsidy_fen, points_awarded, received_at_ms, business_date) VALUES {}",
        values.join(",")
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..i64::try_from(connections)? {
        let (url, sql) = (url.to_owned(), sql.clone());
        tasks.push(tokio::spawn(async move {
            let c = pg(&url).await?;
            let stmt = c.prepare(&sql).await?;
            let mut rows = 0i64;
            let per = i64::try_from(RAW_ROWS_PER_INSERT)?;
            while Instant::now() < deadline {
                let keys: Vec<(i64, i64)> = (0..per)
                    .map(|r| (rows + r, w * 1_000_000_000_000 + rows + r))
                    .collect();
                let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                for (k, card) in &keys {
                    p.push(&w);
                    p.push(k);
                    p.push(card);
                }
                c.execute(&stmt, &p).await?;
                rows += per;
            }
            anyhow::Ok(rows)
        }));
    }
    let mut total = 0i64;
    for t in tasks {
        total += t.await??;
    }
    let ms = u64::try_from(started.elapsed().as_millis())?.max(1);
    Ok(u64::try_from(total)? * 1_000 / ms)
}

/// A gateway binary running as its own process on a fresh PostgreSQL schema, in a
/// temporary data directory with a development PKI (for benchmarks).
pub struct GatewayProcess {
    /// The data directory (`pki/`, `registry/`, `gateway.toml`); removed on drop.
    pub dir: tempfile::TempDir,
    /// The schema made for it.
    pub schema: String,
    /// PostgreSQL URL whose connections use that schema.
    pub url: String,
    /// Its configuration file.
    pub config_path: PathBuf,
    /// Its device listener.
    pub addr: std::net::SocketAddr,
    /// Its admin (metrics) port.
    pub admin_port: u16,
    child: Child,
}

impl std::fmt::Debug for GatewayProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayProcess")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GatewayProcess {
    /// Makes the data directory, lets `write_registry` put `merchants.csv` and
    /// `devices.csv` into its `registry/`, makes a schema in `database_url`, writes the
    /// configuration (listeners on free ports, the PKI, the store, `policy_path`, a pool of
    /// `pool_size`, the admin API's development tokens [`crate::fraud::DEV_APP_TOKEN`] and
    /// [`crate::fraud::DEV_RISK_TOKEN`], then `extra_toml` for sections not written here),
    /// starts `bin` and returns once it listens.
    pub async fn start(
        bin: &Path,
        database_url: &str,
        policy_path: &Path,
        pool_size: usize,
        extra_toml: &str,
        write_registry: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wenxiao-bench-")
            .tempdir()?;
        let pki = dir.path().join("pki");
        wenxiao_gateway::pki::init(&pki)?;
        let registry = dir.path().join("registry");
        std::fs::create_dir_all(&registry)?;
        write_registry(&registry)?;
        let schema = format!("wxbench_{}_{}", std::process::id(), rand::random::<u32>());
        pg(database_url)
            .await?
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await?;
        let url = with_schema(database_url, &schema);
        let (port, admin_port, console_port) = (free_port()?, free_port()?, free_port()?);
        let config = format!(
            "data_dir = {d:?}\npolicy_path = {policy_path:?}\n\
             [server]\nlisten_addr = \"127.0.0.1:{port}\"\n\
             [admin]\nlisten_addr = \"127.0.0.1:{admin_port}\"\n\
             app_token = {app_token:?}\nrisk_token = {risk_token:?}\n\
             [console]\nlisten_addr = \"127.0.0.1:{console_port}\"\n\
             [clearing]\nearly_close_allowed = true\n\
             [tls]\ndevice_ca_cert_path = {ca:?}\nserver_cert_path = {cert:?}\nserver_key_path = {key:?}\n\
             [store]\nkind = \"postgres\"\npostgres_url = {url:?}\npostgres_pool_size_max = {pool_size}\n\
             [registry]\nmerchants_path = {m:?}\ndevices_path = {dv:?}\n\
             [keys]\nallow_development_keys = true\n\
             [risk]\nrules_path = {rules:?}\n{extra_toml}",
            d = dir.path(),
            ca = pki.join("ca.pem"),
            cert = pki.join("server.pem"),
            key = pki.join("server.key"),
            m = registry.join("merchants.csv"),
            dv = registry.join("devices.csv"),
            // The fraud rules ship beside the policy.
            rules = policy_path.with_file_name("risk.toml"),
            // Residents' reports and the cases of a `[fraud]` scenario (development values).
            app_token = crate::fraud::DEV_APP_TOKEN,
            risk_token = crate::fraud::DEV_RISK_TOKEN,
        );
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config)?;
        let (child, addr) = serve(bin, &config_path)?;
        Ok(Self {
            dir,
            schema,
            url,
            config_path,
            addr,
            admin_port,
            child,
        })
    }

    /// Makes two auditors with the gateway's own CLI (`users add`, `users token`) and
    /// returns their bearer tokens (proposer, approver), for `run`'s clearing through the
    /// console. No password is set: they log in with tokens only.
    pub fn auditor_tokens(&self, bin: &Path) -> anyhow::Result<(String, String)> {
        let cli = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new(bin)
                .arg("--config")
                .arg(&self.config_path)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("run {} {args:?}", bin.display()))?;
            anyhow::ensure!(
                out.status.success(),
                "{} {args:?}: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        };
        let mut tokens = Vec::new();
        for name in ["bench-proposer", "bench-approver"] {
            cli(&["users", "add", name, "--roles", "auditor", "--no-password"])?;
            tokens.push(cli(&["users", "token", name])?);
        }
        let approver = tokens.pop().context("the approver's token")?;
        let proposer = tokens.pop().context("the proposer's token")?;
        Ok((proposer, approver))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (the gateway drains), then waits for it to exit.
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// The shards' hot-list figures (each shard's own terminals; propagation from the
/// import only in the shard that planted).
fn print_hotlist(reports: &[Value]) {
    let q = |v: &Value| {
        format!(
            "p50 {} µs · p99 {} µs · max {} µs (n = {})",
            num(v, &["p50_us"]),
            num(v, &["p99_us"]),
            num(v, &["max_us"]),
            num(v, &["n"])
        )
    };
    for r in reports {
        let h = &r["hotlist"];
        let versions = h["versions"].as_object().map_or(0, serde_json::Map::len);
        if versions == 0 && num(h, &["refusals", "planted"]) + num(h, &["refusals", "other"]) == 0 {
            continue;
        }
        println!(
            "hot list (shard {}): {versions} versions · full lists {} · resyncs {} · refusals planted {} / other {}",
            r["shard"],
            num(h, &["full_lists"]),
            num(h, &["resyncs"]),
            num(h, &["refusals", "planted"]),
            num(h, &["refusals", "other"])
        );
        println!(
            "  propagation after first application {}",
            q(&h["propagation"])
        );
        if !h["propagation_from_added"].is_null() {
            println!(
                "  propagation after the import started {}",
                q(&h["propagation_from_added"])
            );
        }
        if !h["newest"].is_null() {
            let n = &h["newest"];
            println!(
                "  newest version {}: {} ‰ within 10 s, {} ‰ within 60 s of {} online terminals",
                num(n, &["version"]),
                num(n, &["within_10s_per_mille"]),
                num(n, &["within_60s_per_mille"]),
                num(n, &["online"])
            );
        }
    }
}

/// The fraud section of each shard that scored one (only a single-process run does).
fn print_fraud(reports: &[Value]) {
    for r in reports {
        let f = &r["fraud"];
        if f.is_null() {
            continue;
        }
        let kinds: Vec<String> = f["kinds"]
            .as_array()
            .map(|ks| {
                ks.iter()
                    .filter(|k| num(k, &["planted"]) > 0)
                    .map(|k| match k["recall_per_mille"].as_u64() {
                        Some(p) => format!(
                            "{} {}/{} ({})",
                            k["kind"].as_str().unwrap_or("?"),
                            num(k, &["detected"]),
                            num(k, &["measurable"]),
                            crate::report::per_mille(p)
                        ),
                        None => format!(
                            "{} {} planted, not measurable",
                            k["kind"].as_str().unwrap_or("?"),
                            num(k, &["planted"])
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rate = f["false_alerts_per_100k_centi"]
            .as_u64()
            .map_or("—".to_owned(), |c| format!("{}.{:02}", c / 100, c % 100));
        println!("fraud: detected/measurable {}", kinds.join(" · "));
        println!(
            "fraud: false alerts {} in {} honest transactions ({rate} per 100,000) · aims {}",
            num(f, &["false_alerts"]),
            num(f, &["honest_txns"]),
            if f["aims_met"].as_bool() == Some(true) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}

/// Runs the bench; true when every shard passed.
/// SIGTERM (the gateway drains), then waits for it to exit.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Starts `bin --config config serve` and returns once it listens: the process and its
/// device listener's address (its other output is drained, so it never blocks).
fn serve(bin: &Path, config: &Path) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let out = child.stdout.take().context("gateway stdout")?;
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(a) = l.strip_prefix("listening for devices on ") {
                    break a.parse()?;
                }
            }
            _ => {
                let _ = child.wait();
                anyhow::bail!("the gateway exited before listening");
            }
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, addr))
}

/// Another gateway node on the same store, data directory and PKI as a [`GatewayProcess`]
/// (its own listeners), for scenarios with `run.gateways` > 1.
#[derive(Debug)]
pub struct GatewayPeer {
    /// Its configuration file.
    pub config_path: PathBuf,
    child: Child,
}

impl GatewayPeer {
    /// Starts node `k` beside `first`: its configuration with fresh ports for every
    /// listener and its own `server.node_id`.
    pub fn start(first: &GatewayProcess, bin: &Path, k: usize) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&first.config_path)?;
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"127.0.0.1:") {
            let (head, tail) = rest.split_at(i);
            out.push_str(head);
            let after = tail
                .get("\"127.0.0.1:".len()..)
                .context("a listen address")?;
            let digits = after.find('"').context("a listen address")?;
            out.push_str(&format!("\"127.0.0.1:{}\"", free_port()?));
            rest = after.get(digits + 1..).unwrap_or_default();
        }
        out.push_str(rest);
        let out = out.replacen(
            "[server]\n",
            &format!("[server]\nnode_id = \"bench-{k}\"\n"),
            1,
        );
        let config_path = first.dir.path().join(format!("gateway-{k}.toml"));
        std::fs::write(&config_path, out)?;
        let (child, _) = serve(bin, &config_path).with_context(|| format!("gateway {k}"))?;
        Ok(Self { config_path, child })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Joins the shards' ack-latency histograms, prints their quantiles and writes the HDR
/// plot (all shards, then each shard when there are several) to `path`.
fn plot_ack_latency(title: &str, reports: &[Value], path: &Path) -> anyhow::Result<()> {
    let mut all = crate::device::latency_histogram();
    let mut shards = Vec::new();
    for r in reports {
        let text = r["ack_latency_hdr"].as_str().unwrap_or_default();
        let h = crate::report::decode_hdr(text)
            .with_context(|| format!("the ack latency of shard {}", r["shard"]))?;
        all.add(&h)?;
        shards.push((r["shard"].as_str().unwrap_or("?").to_owned(), h));
    }
    let q = crate::report::Quantiles::of(&all);
    println!(
        "ack latency (all shards) p50 {} µs · p99 {} µs · p999 {} µs · max {} µs (n = {})",
        q.p50_us, q.p99_us, q.p999_us, q.max_us, q.n
    );
    let mut series = vec![crate::plot::Series {
        name: "all shards".to_owned(),
        hist: &all,
    }];
    if shards.len() > 1 {
        series.extend(shards.iter().map(|(name, h)| crate::plot::Series {
            name: format!("shard {name}"),
            hist: h,
        }));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let svg = crate::plot::percentile_svg(&format!("{title}: ack latency by percentile"), &series);
    std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))?;
    println!("ack latency plot: {}", path.display());
    Ok(())
}

pub async fn bench(o: &BenchOptions) -> anyhow::Result<bool> {
    let scenario = Scenario::load(&o.scenario_path)?;
    let mut extra = String::new();
    let mut ingest = String::new();
    if let Some(w) = o.ingest_writers {
        ingest.push_str(&format!("writers = {w}\n"));
    }
    if let Some(l) = o.batch_linger_us {
        ingest.push_str(&format!("batch_linger_us = {l}\n"));
    }
    if !ingest.is_empty() {
        extra.push_str("[ingest]\n");
        extra.push_str(&ingest);
        println!("gateway [ingest]: {}", ingest.trim().replace('\n', ", "));
    }
    if let Some(w) = o.push_window {
        extra.push_str(&format!("[credits]\npush_window = {w}\n"));
        println!("gateway [credits]: push_window = {w}");
    }
    let shipped = o.repo.join("config/registry");
    let mut gateway = GatewayProcess::start(
        &o.gateway_bin,
        &o.database_url,
        &o.repo.join("config/policy.toml"),
        8,
        &extra,
        |dir| crate::plan::write_scaled_registry(&shipped, scenario.run.devices, dir).map(drop),
    )
    .await?;
    let (proposer_token, approver_token) = gateway.auditor_tokens(&o.gateway_bin)?;
    let mut peers = Vec::new();
    for k in 1..usize::try_from(scenario.run.gateways)? {
        peers.push(GatewayPeer::start(&gateway, &o.gateway_bin, k)?);
    }
    // Node i of the run: its configuration and process id.
    let node = |i: usize| -> (PathBuf, u32) {
        match i.checked_sub(1).and_then(|p| peers.get(p)) {
            Some(p) => (p.config_path.clone(), p.pid()),
            None => (gateway.config_path.clone(), gateway.pid()),
        }
    };
    let (pid, admin_port) = (gateway.pid(), gateway.admin_port);
    let rss_before = crate::run::rss_kib(pid);
    println!(
        "scenario {} · {} devices · {} simulator process(es) · gateway pid {pid}, metrics on http://127.0.0.1:{admin_port}/metrics",
        o.scenario_path.display(),
        scenario.run.devices,
        scenario.run.processes
    );
    let exe = std::env::current_exe()?;
    let n = scenario.run.processes;
    let mut shards = Vec::new();
    let gateways = usize::try_from(scenario.run.gateways)?;
    if gateways > 1 {
        println!(
            "{gateways} gateway processes on one PostgreSQL; simulator process i drives gateway i mod {gateways}"
        );
    }
    for i in 0..n {
        let report = gateway.dir.path().join(format!("report-{i}.json"));
        let (config_path, node_pid) = node(usize::try_from(i)? % gateways);
        let mut command = Command::new(&exe);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--scenario")
            .arg(&o.scenario_path)
            .arg("--shard")
            .arg(format!("{i}/{n}"))
            .arg("--gateway-pid")
            .arg(node_pid.to_string())
            .arg("--report")
            .arg(&report)
            .env(crate::console::PROPOSER_TOKEN_ENV, &proposer_token)
            .env(crate::console::APPROVER_TOKEN_ENV, &approver_token);
        // The first process makes the `[hotlist]` plantings (each is a new version; the
        // others know the planted cards from the seed, to count their refusals apart).
        if i == 0 && !scenario.hotlist.add_at_s.is_empty() {
            command.arg("--gateway-bin").arg(&o.gateway_bin);
        }
        let child = command.spawn().context("start a simulator process")?;
        shards.push((child, report));
    }
    let mut pass = true;
    let mut reports: Vec<Value> = Vec::new();
    for (mut child, report) in shards {
        pass &= child.wait()?.success();
        let text = std::fs::read_to_string(&report)
            .with_context(|| format!("read {}", report.display()))?;
        reports.push(serde_json::from_str::<Value>(&text)?);
    }
    for p in &mut peers {
        p.stop();
    }
    gateway.stop();

    // All shards together.
    let sum = |path: &[&str]| reports.iter().map(|r| num(r, path)).sum::<u64>();
    let max = |path: &[&str]| reports.iter().map(|r| num(r, path)).max().unwrap_or(0);
    let stored = sum(&["txns", "stored"]) + sum(&["txns", "duplicate"]);
    println!("== all {n} shard(s) ==");
    println!(
        "stored {stored} of {} planned · stored txn/s {} over the run · {} best second (sum of shards)",
        sum(&["txns", "planned"]),
        sum(&["stored_per_s"]),
        sum(&["peak_stored_per_s"])
    );
    println!(
        "ack latency (worst shard) p50 {} µs · p99 {} µs · p999 {} µs",
        max(&["ack_latency", "p50_us"]),
        max(&["ack_latency", "p99_us"]),
        max(&["ack_latency", "p999_us"])
    );
    plot_ack_latency(&scenario.description, &reports, &o.plot_path)?;
    println!(
        "sessions: peak {} open (sum of shards) · reconnects {} · failed connects {}",
        sum(&["sessions", "peak_open"]),
        sum(&["sessions", "reconnects"]),
        sum(&["sessions", "connect_failures"])
    );
    let handshakes = |i: usize| {
        reports
            .iter()
            .filter_map(|r| r.pointer("/sessions/handshakes")?.get(i)?.as_u64())
            .sum::<u64>()
    };
    println!(
        "TLS handshakes {} of which {} resumed",
        handshakes(0),
        handshakes(1)
    );
    for r in &reports {
        if let Some(storms) = r["storms"].as_array() {
            for s in storms {
                println!(
                    "storm at {} s (shard {}): {} sessions, back in {} ms",
                    s["at_s"], r["shard"], s["sessions_before"], s["settled_ms"]
                );
            }
        }
    }
    print_hotlist(&reports);
    print_fraud(&reports);
    let sessions = sum(&["gateway_rss", "sessions"]);
    let with_sessions = max(&["gateway_rss", "sessions_kib"]);
    if gateways > 1 {
        // Each simulator process measured its own gateway.
        let mut total_kib = 0u64;
        for r in &reports {
            let (b, w, s) = (
                num(r, &["gateway_rss", "before_kib"]),
                num(r, &["gateway_rss", "sessions_kib"]),
                num(r, &["gateway_rss", "sessions"]),
            );
            total_kib += w.saturating_sub(b);
            println!(
                "gateway of shard {}: RSS {b} KiB before · {w} KiB with {s} sessions · {} bytes per session",
                r["shard"],
                w.saturating_sub(b) * 1_024 / s.max(1)
            );
        }
        println!(
            "all gateways: {sessions} sessions, {} bytes of RSS per session",
            total_kib * 1_024 / sessions.max(1)
        );
    } else if let (Some(before), true) = (rss_before, sessions > 0) {
        println!(
            "gateway RSS {before} KiB before · {with_sessions} KiB with {sessions} sessions · {} bytes per session",
            with_sessions.saturating_sub(before) * 1_024 / sessions
        );
    }
    if stored > 0 {
        let raw1 = raw_insert_rate(&gateway.url, 1, RAW_SECONDS).await?;
        let raw4 = raw_insert_rate(&gateway.url, 4, RAW_SECONDS).await?;
        let best = sum(&["peak_stored_per_s"]);
        println!(
            "raw {RAW_ROWS_PER_INSERT}-row INSERT rows/s (same PostgreSQL, this run): {raw1} from 1 connection, {raw4} from 4"
        );
        println!(
            "ratio gateway best second / raw: {}.{:02} (vs 1 connection), {}.{:02} (vs 4)",
            best / raw1.max(1),
            best % raw1.max(1) * 100 / raw1.max(1),
            best / raw4.max(1),
            best % raw4.max(1) * 100 / raw4.max(1)
        );
    }
    println!("result {}", if pass { "PASS" } else { "FAIL" });
    let GatewayProcess { dir, schema, .. } = gateway;
    if o.keep {
        let kept = dir.keep();
        println!("kept {} and schema {schema}", kept.display());
    } else {
        pg(&o.database_url)
            .await?
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await?;
    }
    Ok(pass)
}
