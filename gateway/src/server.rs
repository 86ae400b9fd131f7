//! Running a gateway: the store runtime and its writers, the actix system with one
//! arbiter per worker, the TLS acceptor, the admin server, and the one way to shut down.
//!
//! Shutdown (SIGTERM, or [`GatewayHandle::shutdown`]): stop accepting, send DRAIN to every
//! session, give them `drain_timeout_ms` to collect their acks and leave, close the rest
//! with SHUTTING_DOWN, then let the store writers commit and answer what is still queued
//! (bounded by `store_wait_ms`), and return.

use crate::config::{Config, StoreKind};
use crate::ingest;
use crate::metrics as m;
use crate::registry::Registry;
use crate::session::{ForceClose, Session, Shared, StartDrain};
use crate::store::{AnyStore, PgStore, SqliteStore, Store};
use crate::tls;
use actix::Arbiter;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

/// Store-runtime threads: writers and store reads are I/O-bound; two keep a slow query
/// from stalling commits.
const STORE_RUNTIME_THREADS: usize = 2;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop cannot spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// How often shutdown checks whether every session has left.
const DRAIN_POLL_MS: u64 = 20;

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    /// The device listener's address (useful with port 0).
    pub device_addr: SocketAddr,
    /// The admin server's address, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The console's address, if enabled.
    pub console_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl GatewayHandle {
    /// Drains and stops the gateway; returns once every committed TXN has been answered
    /// or the bounds ran out.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join()
    }

    /// Waits for the gateway to stop by itself (it does not, unless it fails).
    pub fn join(mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("gateway thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the configured store (nothing is connected or migrated yet).
pub fn open_store(config: &Config) -> anyhow::Result<AnyStore> {
    Ok(match config.store.kind {
        StoreKind::Sqlite => {
            let path = config.sqlite_path();
            SqliteStore::open(&path)
                .with_context(|| format!("open {}", path.display()))?
                .into()
        }
        StoreKind::Postgres => PgStore::connect_with(
            &config.store.postgres_url,
            config.store.postgres_pool_size_max,
            config.store.postgres_pool_wait_ms,
            &crate::store::PgLimits::of(&config.store),
        )?
        .into(),
    })
}

/// The store runtime: owns store connections and the writers.
pub fn store_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(STORE_RUNTIME_THREADS)
        .thread_name("wx-store")
        .enable_all()
        .build()?)
}

/// Starts a gateway on its own threads; returns once it listens.
pub fn spawn(config: Config) -> anyhow::Result<GatewayHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("wx-gateway".to_owned())
        .spawn(move || run(config, ready_tx, stop_rx))?;
    match ready_rx.recv() {
        Ok((device_addr, admin_addr, console_addr)) => Ok(GatewayHandle {
            device_addr,
            admin_addr,
            console_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Err(_) => {
            let result = thread
                .join()
                .map_err(|_| anyhow::anyhow!("gateway thread panicked"))?;
            Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("gateway stopped at start")))
        }
    }
}

type Ready = std::sync::mpsc::Sender<(SocketAddr, Option<SocketAddr>, Option<SocketAddr>)>;

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "read {} (run `wenxiao-gateway pki init {}` for a development PKI)",
            path.display(),
            path.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    })
}

/// Loads the registry from the store; on an empty store, imports the configured files.
pub async fn load_or_import_registry(
    store: &AnyStore,
    config: &Config,
) -> anyhow::Result<Registry> {
    let registry = store.load_registry().await?;
    if !registry.is_empty() {
        return Ok(registry);
    }
    let r = &config.registry;
    if !r.merchants_path.exists() || !r.devices_path.exists() {
        tracing::warn!("registry is empty and no registry files are configured");
        return Ok(registry);
    }
    let files = Registry::from_csv(&r.merchants_path, &r.devices_path)?;
    store.import_registry(&files).await?;
    tracing::info!(
        merchants = files.merchants().len(),
        devices = files.devices().len(),
        "empty store: imported the configured registry"
    );
    Ok(store.load_registry().await?)
}

fn run(config: Config, ready: Ready, stop: oneshot::Receiver<()>) -> anyhow::Result<()> {
    if config.keys.uses_development_keys() && !config.keys.allow_development_keys {
        anyhow::bail!(
            "the development master keys are configured (keys.purchase_master_key_hex, \
             keys.load_master_key_hex): a gateway holding them would accept forged TACs and \
             MAC1s; configure the production keys, or set keys.allow_development_keys = true \
             for development"
        );
    }
    let store_rt = store_runtime()?;
    let store = {
        let _enter = store_rt.enter();
        open_store(&config)?
    };
    store_rt
        .block_on(store.migrate())
        .context("migrate the store")?;
    let registry = store_rt.block_on(load_or_import_registry(&store, &config))?;
    let keys = config.master_keys()?;
    let policy = crate::policy::Policy::load(&config.policy_path).context("load the policy")?;
    let crl = match &config.tls.device_crl_path {
        Some(path) => {
            tls::read_crl(&std::fs::read(path).with_context(|| format!("read {}", path.display()))?)
                .with_context(|| format!("read {}", path.display()))?
        }
        None => tls::Crl::default(),
    };
    let tls_config = tls::server_config(
        &read(&config.tls.device_ca_cert_path)?,
        &read(&config.tls.server_cert_path)?,
        &read(&config.tls.server_key_path)?,
        &crl,
    )?;
    let rules = crate::risk::config::RiskConfig::load(&config.risk.rules_path)
        .map_err(anyhow::Error::msg)
        .context("load the fraud rules")?;
    let (risk_feed, risk_queue) = crate::risk::worker::RiskFeed::new(config.risk.queue_txns_max);
    let caps = Arc::new(ingest::BudgetCaps::of(&policy));
    let health = Arc::new(ingest::WriterHealth::default());
    let (ingest_tx, writers) = {
        let _enter = store_rt.enter();
        ingest::start(
            store.clone(),
            &config.ingest,
            &policy,
            Arc::clone(&caps),
            Arc::clone(&health),
            Some(Arc::clone(&risk_feed)),
        )
    };
    store_rt.spawn(run_rules(rules, store.clone(), risk_feed, risk_queue));
    let (head, cards) = store_rt
        .block_on(store.hotlist_full())
        .context("read the hot list")?;
    let kept_from = head
        .version
        .saturating_sub(config.hotlist.delta_versions_kept)
        .max(head.delta_floor);
    let kept = store_rt
        .block_on(store.hotlist_changes(kept_from, head.version))
        .context("read the hot list's kept changes")?
        .unwrap_or_default();
    let shared = Arc::new(Shared::new(
        config.clone(),
        policy,
        registry,
        keys,
        store.clone(),
        store_rt.handle().clone(),
        ingest_tx,
        health,
        crate::hotlist::HotlistView::full_with_changes(head, cards, kept),
    ));
    let prometheus = m::install();

    let system = actix_rt::System::new();
    let result = system.block_on(serve(
        Arc::clone(&shared),
        caps,
        tls_config,
        prometheus,
        ready,
        stop,
    ));

    // Every session has stopped and dropped its queue sender; drop ours too (serve may
    // have returned early with an error): the writers commit what is left and exit.
    if let Ok(mut q) = shared.ingest.write() {
        q.take();
    }
    drop(shared);
    let writer_bound = Duration::from_millis(config.ingest.store_wait_ms + 5_000);
    store_rt.block_on(async {
        let all = futures_util::future::join_all(writers);
        if tokio::time::timeout(writer_bound, all).await.is_err() {
            tracing::error!("store writers did not finish within their bound");
        }
    });
    store_rt.shutdown_timeout(Duration::from_secs(5));
    tracing::info!("gateway stopped");
    result
}

async fn serve(
    shared: Arc<Shared>,
    caps: Arc<ingest::BudgetCaps>,
    tls_config: Arc<rustls::ServerConfig>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ready: Ready,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let cfg = shared.config.clone();
    let listener = tokio::net::TcpListener::bind(cfg.server.listen_addr)
        .await
        .with_context(|| format!("listen on {}", cfg.server.listen_addr))?;
    let device_addr = listener.local_addr()?;
    let admin = match cfg.admin.enabled {
        true => Some(crate::admin::start(
            cfg.admin.listen_addr,
            Arc::clone(&shared),
            prometheus,
        )?),
        false => None,
    };
    let console = match cfg.console.enabled {
        true => Some(crate::console::start(
            cfg.console.listen_addr,
            Arc::clone(&shared),
        )?),
        false => None,
    };
    let workers = match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
    let connections = Arc::new(Semaphore::new(cfg.server.connections_max));
    let handshakes = Arc::new(Semaphore::new(cfg.server.handshakes_in_progress_max));
    // New handshakes take the acceptor of the latest CRL.
    let acceptor = Arc::new(std::sync::RwLock::new(tls_config));
    if let Some(path) = cfg.tls.device_crl_path.clone() {
        actix_rt::spawn(reload_crl(Arc::clone(&shared), Arc::clone(&acceptor), path));
    }
    let handshake_timeout = Duration::from_millis(cfg.server.tls_handshake_timeout_ms);
    spawn_gauges(Arc::clone(&shared), Arc::clone(&caps));
    spawn_registry_reload(Arc::clone(&shared), caps);
    spawn_release_watch(Arc::clone(&shared));
    shared
        .store_rt
        .spawn(crate::session::follow_hotlist(Arc::clone(&shared)));
    tracing::info!(
        %device_addr,
        admin = ?admin.as_ref().map(|a| a.0),
        console = ?console.as_ref().map(|a| a.0),
        workers,
        "gateway listening"
    );
    let _ = ready.send((
        device_addr,
        admin.as_ref().map(|a| a.0),
        console.as_ref().map(|a| a.0),
    ));

    let mut next = 0usize;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => "connections_max")
                .increment(1);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Some(arbiter) = arbiters.get(next % arbiters.len()) else {
            continue;
        };
        next = next.wrapping_add(1);
        let Ok(current) = acceptor.read().map(|a| Arc::clone(&a)) else {
            continue;
        };
        let (acceptor, shared, handshakes) =
            (current, Arc::clone(&shared), Arc::clone(&handshakes));
        arbiter.spawn(async move {
            let Ok(slot) = handshakes.acquire_owned().await else {
                return;
            };
            let accepted = crate::tls_conn::accept(tcp, acceptor);
            match tokio::time::timeout(handshake_timeout, accepted).await {
                Ok(Ok(stream)) => {
                    drop(slot);
                    let id =
                        tls::device_id_of(stream.peer_certificate()).map_err(|e| e.to_string());
                    let serial = stream.peer_certificate().and_then(tls::serial_of);
                    Session::start(stream, (id, serial), shared, permit);
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => "tls").increment(1);
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => "tls_timeout")
                        .increment(1);
                }
            }
        });
    }

    drop(listener);
    drain(&shared).await;
    if let Ok(mut q) = shared.ingest.write() {
        q.take();
    }
    for a in &arbiters {
        a.stop();
    }
    for a in arbiters {
        let _ = a.join();
    }
    if let Some((_, server)) = admin {
        server.stop(true).await;
    }
    if let Some((_, server)) = console {
        server.stop(true).await;
    }
    Ok(())
}

async fn drain(shared: &Shared) {
    shared.draining.store(true, Ordering::SeqCst);
    let cfg = &shared.config.session;
    tracing::info!(
        sessions = shared.sessions.len(),
        spread_ms = cfg.drain_spread_ms,
        "draining"
    );
    // Lame duck: each session is told at a random moment of the spread, so the devices
    // reconnect to the other nodes a few at a time.
    let mut told: Vec<(u64, actix::Addr<Session>)> = shared
        .sessions
        .iter()
        .map(|s| {
            let at = if cfg.drain_spread_ms == 0 {
                0
            } else {
                rand::random::<u64>() % cfg.drain_spread_ms
            };
            (at, s.value().1.clone())
        })
        .collect();
    told.sort_unstable_by_key(|(at, _)| *at);
    let started = Instant::now();
    for (at, addr) in told {
        let due = started + Duration::from_millis(at);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        addr.do_send(StartDrain);
    }
    let wait_until = |deadline: Instant| async move {
        while !shared.sessions.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
    };
    wait_until(Instant::now() + Duration::from_millis(cfg.drain_timeout_ms)).await;
    for s in shared.sessions.iter() {
        s.value().1.do_send(ForceClose);
    }
    wait_until(Instant::now() + Duration::from_millis(cfg.close_linger_ms + 100)).await;
}

/// Rebuilds the fraud rules' state from the store, then evaluates what the writers offer
/// until they are gone. A store that cannot be read at start is tried again.
async fn run_rules(
    config: crate::risk::config::RiskConfig,
    store: crate::store::AnyStore,
    feed: Arc<crate::risk::worker::RiskFeed>,
    queue: tokio::sync::mpsc::Receiver<crate::risk::worker::Fed>,
) {
    let rules = loop {
        let today = crate::clock::business_date(crate::clock::now_ms());
        let Some(today) = today else {
            tracing::error!("gateway clock out of range: fraud rules not started");
            return;
        };
        match crate::risk::worker::Rules::rebuild(config.clone(), store.clone(), today).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "fraud rules: rebuild failed, trying again");
                tokio::time::sleep(Duration::from_millis(LISTEN_RETRY_MS)).await;
            }
        }
    };
    rules.run(feed, queue).await;
}

/// Tells every OTA endpoint session that credits may have been released.
fn tell_ota_sessions(shared: &Shared) {
    for s in shared.ota_sessions.iter() {
        s.value().do_send(crate::session::PushNow);
    }
}

/// Every `tls.crl_reload_interval_ms`: when the CRL file changed, it is read again; new
/// handshakes are checked against it, and the open sessions of the certificates it
/// revokes are closed. A file that cannot be read or parsed leaves the previous list in
/// force (and says so).
async fn reload_crl(
    shared: Arc<Shared>,
    acceptor: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
    path: std::path::PathBuf,
) {
    let every = Duration::from_millis(shared.config.tls.crl_reload_interval_ms);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    // Until the system stops (a draining node still closes revoked sessions).
    loop {
        tokio::time::sleep(every).await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let cfg = &shared.config.tls;
        let built = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| tls::read_crl(&b).map_err(|e| e.to_string()))
            .and_then(|crl| {
                let text =
                    |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
                let config = tls::server_config(
                    &text(&cfg.device_ca_cert_path)?,
                    &text(&cfg.server_cert_path)?,
                    &text(&cfg.server_key_path)?,
                    &crl,
                )
                .map_err(|e| e.to_string())?;
                Ok((crl, config))
            });
        match built {
            Ok((crl, config)) => {
                if let Ok(mut a) = acceptor.write() {
                    *a = config;
                }
                metrics::counter!(m::CRL_RELOADS_TOTAL, "outcome" => "loaded").increment(1);
                tracing::info!(revoked = crl.revoked.len(), path = %path.display(), "device CRL loaded");
                let revoked = Arc::new(crl.revoked);
                if let Ok(mut r) = shared.revoked.write() {
                    *r = Arc::clone(&revoked);
                }
                for s in shared.sessions.iter() {
                    s.value()
                        .1
                        .do_send(crate::session::Revoked(Arc::clone(&revoked)));
                }
            }
            Err(e) => {
                metrics::counter!(m::CRL_RELOADS_TOTAL, "outcome" => "refused").increment(1);
                tracing::error!(error = %e, path = %path.display(), "device CRL not reloaded: the previous one stays in force");
            }
        }
    }
}

/// Reads the outbox (takeovers, credit releases, hot-list versions, registry changes:
/// see `events`); the embedded store also polls `latest_release_ms`, so OTA pushes go
/// out within `credits.release_poll_interval_ms` of an approval.
fn spawn_release_watch(shared: Arc<Shared>) {
    crate::events::spawn(Arc::clone(&shared));
    if !shared.store.is_postgres() {
        shared.store_rt.clone().spawn(poll_for_releases(shared));
    }
}

/// Pause before a failed start step is tried again.
const LISTEN_RETRY_MS: u64 = 1_000;

async fn poll_for_releases(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config.credits.release_poll_interval_ms);
    let mut last = shared.store.latest_release_ms().await.unwrap_or(0);
    while !shared.draining.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        match shared.store.latest_release_ms().await {
            Ok(v) if v != last => {
                last = v;
                tell_ota_sessions(&shared);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "release poll failed"),
        }
    }
}

/// Every `registry.reload_interval_ms`: the registry is read again from the store (a
/// device disabled there has its open session closed with ERROR DEVICE_DISABLED), and the
/// budget caps from the policy file (a changed cap applies from the writers' next batch).
fn spawn_registry_reload(shared: Arc<Shared>, caps: Arc<ingest::BudgetCaps>) {
    let every = Duration::from_millis(shared.config.registry.reload_interval_ms);
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shared.registry_wake.notified() => {}
            }
            let store = shared.store.clone();
            match shared
                .store_rt
                .spawn(async move { store.load_registry().await })
                .await
            {
                Ok(Ok(r)) => {
                    close_disabled_sessions(&shared, &r);
                    tell_changed_merchants(&shared, &r);
                    if let Ok(mut slot) = shared.registry.write() {
                        *slot = Arc::new(r);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "registry reload failed"),
                Err(e) => tracing::warn!(error = %e, "registry reload task failed"),
            }
            let store = shared.store.clone();
            let overrides = shared
                .store_rt
                .spawn(async move {
                    crate::store::console::ConsoleStore::budget_overrides(&store).await
                })
                .await;
            match (
                crate::policy::Policy::load(&shared.config.policy_path),
                overrides,
            ) {
                (Ok(p), Ok(Ok(o))) => {
                    // A cap an approved command set overrides the file's.
                    let pick = |name: &str, file: i64| {
                        o.iter().find(|(n, _)| n == name).map_or(file, |(_, v)| *v)
                    };
                    caps.set_fen(
                        pick("monthly", p.monthly_cap().get()),
                        pick("programme", p.programme_total().get()),
                    );
                }
                (Err(e), _) => tracing::warn!(error = %e, "policy reload failed: budget caps kept"),
                (_, Ok(Err(e))) => {
                    tracing::warn!(error = %e, "budget overrides not read: caps kept")
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "budget overrides task failed: caps kept")
                }
            }
        }
    });
}

/// How often the process gauges are sampled.
const GAUGES_INTERVAL_MS: u64 = 10_000;
/// The credit and budget gauges are sampled every this many process samples: counting
/// credits by state reads every credit (some 2 s of PostgreSQL for 9 M credits here).
const STORE_GAUGES_EVERY_SAMPLES: u64 = 6;

/// Every [`GAUGES_INTERVAL_MS`]: the process's resources; every
/// [`STORE_GAUGES_EVERY_SAMPLES`] of those, the store's credits by state and budgets
/// (granted and left).
fn spawn_gauges(shared: Arc<Shared>, caps: Arc<ingest::BudgetCaps>) {
    use crate::observe;
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(GAUGES_INTERVAL_MS));
        for sample in 0u64.. {
            tick.tick().await;
            if let Some(p) = observe::sample_process() {
                observe::record_process(&p);
            }
            if !sample.is_multiple_of(STORE_GAUGES_EVERY_SAMPLES) {
                continue;
            }
            let store = shared.store.clone();
            let figures =
                shared
                    .store_rt
                    .spawn(async move {
                        crate::store::console::ConsoleStore::dashboard(&store, None).await
                    })
                    .await;
            let Ok(Ok(f)) = figures else {
                tracing::debug!("store gauges not sampled this time");
                continue;
            };
            let states: Vec<observe::CreditState> = [
                "cleared", "released", "bound", "in_doubt", "parked", "loaded",
            ]
            .iter()
            .map(|state| {
                let (count, fen) = f
                    .credits
                    .iter()
                    .find(|c| c.0 == *state)
                    .map_or((0, 0), |c| (c.1, c.2));
                observe::CreditState { state, count, fen }
            })
            .collect();
            observe::record_credits(&states);
            let (monthly, programme) = caps.fen();
            let budgets: Vec<(String, i64, i64)> = f
                .budgets
                .iter()
                .map(|(key, granted)| {
                    if *key == crate::store::PROGRAMME_BUDGET_KEY {
                        ("programme".to_owned(), *granted, programme)
                    } else {
                        (key.to_string(), *granted, monthly)
                    }
                })
                .collect();
            observe::record_budgets(&budgets);
        }
    });
}

/// Tells each session whose merchant changed in the registry (suspended or reinstated by
/// a case, renamed, recategorised) its new entry, which its next TXN is judged by.
fn tell_changed_merchants(shared: &Shared, new: &Registry) {
    let old = shared.registry.read().map(|r| Arc::clone(&r)).ok();
    let Some(old) = old else {
        return;
    };
    for s in shared.sessions.iter() {
        let Some(merchant) = new.device(*s.key()).and_then(|d| d.merchant_id) else {
            continue;
        };
        let now = new.merchant(merchant);
        if now != old.merchant(merchant)
            && let Some(m) = now
        {
            s.value()
                .1
                .do_send(crate::session::MerchantChanged(m.clone()));
        }
    }
}

/// Tells the sessions of devices the registry no longer has active that they are disabled.
fn close_disabled_sessions(shared: &Shared, registry: &Registry) {
    for s in shared.sessions.iter() {
        if !registry.device(*s.key()).is_some_and(|d| d.active) {
            tracing::info!(device = %s.key(), "device disabled in the registry: closing its session");
            s.value().1.do_send(crate::session::Disabled);
        }
    }
}
