//! The gateway's configuration: one TOML file (`config/gateway.toml` documents every key).
//!
//! Every bound and timeout is here, with its unit in its name. Unknown keys are errors (a
//! typo must not silently fall back to a default), and every value is range-checked with
//! an error that names the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use wenxiao_protocol::limits::{FRAME_PAYLOAD_BYTES_MAX, FRAME_PAYLOAD_BYTES_MIN_CONFIGURABLE};
use wenxiao_protocol::mac::{MasterKey, MasterKeys};

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type…).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value outside its allowed range.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key, e.g. `session.max_in_flight`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded store, the development PKI and run files live.
    pub data_dir: PathBuf,
    /// The subsidy, points and budget policy file.
    pub policy_path: PathBuf,
    /// The device listener.
    pub server: ServerConfig,
    /// TLS material.
    pub tls: TlsConfig,
    /// Per-session protocol parameters.
    pub session: SessionConfig,
    /// The ingest queue and store writers.
    pub ingest: IngestConfig,
    /// Which store, and how to reach it.
    pub store: StoreConfig,
    /// Bounds on transaction fields.
    pub txn: TxnConfig,
    /// The master keys of the contract's Keys section.
    pub keys: KeysConfig,
    /// Metrics and health endpoints.
    pub admin: AdminConfig,
    /// Registry files for `registry import` (and for a first start on an empty store).
    pub registry: RegistryConfig,
    /// The daily clearing.
    pub clearing: ClearingConfig,
    /// Credit loading.
    pub credits: CreditsConfig,
    /// The hot list pushed to terminals.
    pub hotlist: HotlistConfig,
    /// The fraud rules' file.
    pub risk: RiskFileConfig,
    /// The operations console and its API.
    pub console: ConsoleConfig,
}

/// `[console]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console and its API.
    pub enabled: bool,
    /// Where.
    pub listen_addr: SocketAddr,
    /// TLS certificate chain (PEM); with `tls_key_path`, the listener speaks HTTPS.
    pub tls_cert_path: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key_path: Option<PathBuf>,
    /// HTTP worker threads.
    pub workers: usize,
    /// Open connections at most.
    pub connections_max: usize,
    /// A request's headers must arrive within this.
    pub request_timeout_ms: u64,
    /// A browser session lasts this long after login.
    pub session_ttl_ms: u64,
    /// Password checks running at once; a login waits `login_wait_ms` at most for one.
    pub logins_concurrent_max: usize,
    /// How long a login waits for a password check, then is refused 429.
    pub login_wait_ms: u64,
    /// The dashboard's figures are read from the store at most this often.
    pub dashboard_refresh_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls_cert_path: None,
            tls_key_path: None,
            workers: 1,
            connections_max: 256,
            request_timeout_ms: 5_000,
            session_ttl_ms: 8 * 3_600_000,
            logins_concurrent_max: 2,
            login_wait_ms: 2_000,
            dashboard_refresh_ms: 5_000,
        }
    }
}

/// `[hotlist]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotlistConfig {
    /// Versions whose changes are kept, so a terminal up to this many versions behind
    /// gets a delta; one further behind gets the full list.
    pub delta_versions_kept: u32,
    /// Card numbers per HOTLIST_UPDATE chunk (at most the contract's 8,190 that fit one
    /// 65,536-byte frame; smaller suits terminals with small receive buffers).
    pub chunk_cards_max: usize,
    /// How often a node looks for a new version. The embedded store has no notifications;
    /// on PostgreSQL a NOTIFY wakes the node at once and this is the safety net.
    pub poll_interval_ms: u64,
    /// A new version is announced to the node's sessions spread over this long, in
    /// slices every 10 ms, so that 19,000 updates and their acks do not crowd out the
    /// TXN acks of the same moment (0: all at once).
    pub push_spread_ms: u64,
    /// Acknowledgements waiting to be recorded, all sessions together; past it one is
    /// counted in `wenxiao_hotlist_acks_unrecorded_total` and not recorded (the device's
    /// next HELLO still tells its version).
    pub ack_queue_devices: usize,
}

impl Default for HotlistConfig {
    fn default() -> Self {
        Self {
            delta_versions_kept: 1_000,
            chunk_cards_max: wenxiao_protocol::limits::HOTLIST_CARDS_PER_FRAME_MAX,
            poll_interval_ms: 1_000,
            push_spread_ms: 2_000,
            ack_queue_devices: 65_536,
        }
    }
}

/// `[risk]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskFileConfig {
    /// The fraud rules and their thresholds (see `config/risk.toml`).
    pub rules_path: PathBuf,
    /// Stored transactions waiting for the rules, all sessions together. When it is full
    /// the rules catch up from the store (counted in
    /// `wenxiao_risk_queue_overflows_total`); acks never wait for the rules.
    pub queue_txns_max: usize,
    /// Reports one reporter may file per Shanghai day (`POST /v1/reports`); more are
    /// answered 429.
    pub reports_per_reporter_per_day_max: u32,
}

impl Default for RiskFileConfig {
    fn default() -> Self {
        Self {
            rules_path: PathBuf::from("config/risk.toml"),
            queue_txns_max: 65_536,
            reports_per_reporter_per_day_max: 5,
        }
    }
}

/// `[credits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreditsConfig {
    /// A credit offered or pushed to a device that never started loading it (no
    /// LOAD_INIT) may be offered elsewhere after this long. Safe: without LOAD_AUTH the
    /// card cannot apply the load.
    pub binding_timeout_ms: i64,
    /// SIM-card applet numbers of China Mobile run from this card number…
    pub china_mobile_cards_from: u64,
    /// …to this one (inclusive): their credits go to that operator's OTA endpoint.
    pub china_mobile_cards_to: u64,
    /// SIM-card applet numbers of China Telecom, from…
    pub china_telecom_cards_from: u64,
    /// …to (inclusive).
    pub china_telecom_cards_to: u64,
    /// The embedded store has no notifications: a gateway on it looks for newly released
    /// credits this often. (PostgreSQL notifies at once.)
    pub release_poll_interval_ms: u64,
    /// Most pushes an OTA endpoint has without a result (never more than
    /// `session.max_in_flight`, which the contract allows). A push waits behind the others
    /// of its window: a smaller window is a shorter push → loaded time but fewer loads per
    /// second, and real over-the-air loads that take seconds each need a wide one.
    pub push_window: u16,
}

impl Default for CreditsConfig {
    fn default() -> Self {
        Self {
            binding_timeout_ms: 300_000,
            china_mobile_cards_from: 8_601_000_000_000_000,
            china_mobile_cards_to: 8_601_999_999_999_999,
            china_telecom_cards_from: 8_603_000_000_000_000,
            china_telecom_cards_to: 8_603_999_999_999_999,
            release_poll_interval_ms: 1_000,
            push_window: 64,
        }
    }
}

impl CreditsConfig {
    /// The card numbers whose credits an operator's OTA endpoint loads.
    pub fn card_range(&self, operator: crate::registry::Operator) -> (u64, u64) {
        match operator {
            crate::registry::Operator::ChinaMobile => {
                (self.china_mobile_cards_from, self.china_mobile_cards_to)
            }
            crate::registry::Operator::ChinaTelecom => {
                (self.china_telecom_cards_from, self.china_telecom_cards_to)
            }
        }
    }
}

/// `[clearing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClearingConfig {
    /// Approve each day as soon as it is cleared (simulator and demos only: production
    /// credits wait for the audit group's `clearing approve`).
    pub auto_approve: bool,
    /// Settlement files go to `settlement_dir/yyyymmdd/`; relative to `data_dir`.
    pub settlement_dir: PathBuf,
    /// A day is cleared no sooner than this long after its 24:00 in Asia/Shanghai, so the
    /// batches in flight at midnight commit into it (one committing later still goes to the
    /// next day: nothing is lost, it is only credited a day later).
    pub grace_ms: u64,
    /// Load tests only: the console's clearing run may close a day before it has ended
    /// (`"early": true`), as of its 24:00 plus `grace_ms`. A row committing later for it is
    /// filed with the next open day, as after any close. Off in production.
    pub early_close_allowed: bool,
}

impl Default for ClearingConfig {
    fn default() -> Self {
        Self {
            auto_approve: false,
            settlement_dir: PathBuf::from("settlement"),
            grace_ms: 300_000,
            early_close_allowed: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            policy_path: PathBuf::from("config/policy.toml"),
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            session: SessionConfig::default(),
            ingest: IngestConfig::default(),
            store: StoreConfig::default(),
            txn: TxnConfig::default(),
            keys: KeysConfig::default(),
            admin: AdminConfig::default(),
            console: ConsoleConfig::default(),
            registry: RegistryConfig::default(),
            clearing: ClearingConfig::default(),
            credits: CreditsConfig::default(),
            hotlist: HotlistConfig::default(),
            risk: RiskFileConfig::default(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the device TLS listener.
    pub listen_addr: SocketAddr,
    /// Most device connections open at once (handshaking or in session). The process may
    /// hold 20,000 files on these machines; the rest is headroom for the store and admin.
    pub connections_max: usize,
    /// A TLS handshake must finish this soon after accept.
    pub tls_handshake_timeout_ms: u64,
    /// Event-loop threads for sessions; 0 = one per core.
    pub workers: usize,
    /// Most TLS handshakes in progress at once: under a reconnect storm, handshakes beyond
    /// this wait in the kernel's accept backlog instead of starving live sessions of CPU.
    pub handshakes_in_progress_max: usize,
    /// This node's name in the device leases; empty: host name, process id and a random
    /// suffix, new at each start.
    pub node_id: String,
    /// How often a node reads the outbox even without a notification (and the embedded
    /// store's only way), in ms.
    pub events_poll_interval_ms: u64,
    /// How long a missing event id is waited for (a transaction that took it may still
    /// be committing), in ms.
    pub events_gap_grace_ms: u64,
    /// Events older than this are deleted, in ms.
    pub events_retention_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7443)),
            connections_max: 19_000,
            tls_handshake_timeout_ms: 10_000,
            workers: 0,
            handshakes_in_progress_max: 256,
            node_id: String::new(),
            events_poll_interval_ms: 1_000,
            events_gap_grace_ms: 10_000,
            events_retention_ms: 3_600_000,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The device CA certificate (PEM): client certificates must chain to it.
    pub device_ca_cert_path: PathBuf,
    /// The gateway's certificate chain (PEM).
    pub server_cert_path: PathBuf,
    /// The gateway's private key (PEM).
    pub server_key_path: PathBuf,
    /// The device CA's revocation list (PEM or DER): a revoked certificate's handshake is
    /// refused, and its open session closed when the list is reloaded.
    pub device_crl_path: Option<PathBuf>,
    /// How often the CRL file is looked at for a change, in ms.
    pub crl_reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            device_ca_cert_path: PathBuf::from("data/pki/ca.pem"),
            server_cert_path: PathBuf::from("data/pki/server.pem"),
            server_key_path: PathBuf::from("data/pki/server.key"),
            device_crl_path: None,
            crl_reload_interval_ms: 10_000,
        }
    }
}

/// `[session]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// HELLO must arrive this soon after the handshake (contract: 10 s).
    pub hello_timeout_ms: u64,
    /// Heartbeat period told to devices in WELCOME; silence for 3 periods closes.
    pub heartbeat_s: u16,
    /// Most TXNs unacknowledged per session (and pushes per OTA endpoint).
    pub max_in_flight: u16,
    /// Largest frame payload accepted (contract default and ceiling: 65,536).
    pub frame_payload_bytes_max: u32,
    /// Bytes of answers queued for a device that does not read: past it the session stops
    /// reading (TCP pushes back to the device), so a slow reader never makes the gateway
    /// buffer without bound.
    pub write_buffer_bytes_max: usize,
    /// A session pushed back that long (its device still not reading) is closed.
    pub slow_reader_timeout_ms: u64,
    /// Told to devices in DRAIN: reconnect after this long.
    pub drain_reconnect_after_ms: u32,
    /// After DRAIN, sessions get this long to receive their acks and close.
    pub drain_timeout_ms: u64,
    /// Lame duck: DRAIN goes to the sessions spread over this long, each at a random
    /// moment of it, so devices move to the other nodes a few at a time (0: all at once).
    pub drain_spread_ms: u64,
    /// HELLOs waiting for their lease and `stored_seq`, all sessions together. When full,
    /// a HELLO gets STORE_UNAVAILABLE and the device comes back after its backoff.
    pub hello_queue_max: usize,
    /// Most HELLOs one lease transaction carries (group commit, as for TXNs).
    pub hello_batch_max: usize,
    /// Parallel lease writers (PostgreSQL; the embedded store always uses one).
    pub hello_writers: usize,
    /// After a fatal ERROR, the session waits this long for the frame to flush.
    pub close_linger_ms: u64,
    /// Answered seqs above the contiguous watermark remembered per session, to advance
    /// `stored_seq`; beyond it the watermark simply stops advancing (safe).
    pub seq_window_max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            hello_timeout_ms: 10_000,
            heartbeat_s: 30,
            max_in_flight: 64,
            frame_payload_bytes_max: FRAME_PAYLOAD_BYTES_MAX,
            write_buffer_bytes_max: 256 * 1024,
            slow_reader_timeout_ms: 10_000,
            drain_reconnect_after_ms: 30_000,
            drain_timeout_ms: 10_000,
            drain_spread_ms: 0,
            hello_queue_max: 20_000,
            hello_batch_max: 500,
            hello_writers: 2,
            close_linger_ms: 1_000,
            seq_window_max: 4_096,
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Transactions waiting for a store writer, all sessions together. When full,
    /// sessions stop reading their sockets (backpressure).
    pub queue_txns_max: usize,
    /// Most rows one commit carries.
    pub batch_rows_max: usize,
    /// A writer that finds fewer rows than `batch_rows_max` waits at most this long for
    /// more before committing; 0 commits at once what is there (group commit still
    /// forms batches from whatever queued during the previous commit).
    pub batch_linger_us: u64,
    /// Parallel store writers (PostgreSQL; the embedded store always uses one).
    pub writers: usize,
    /// How long a batch keeps retrying a failing store before its sessions are told
    /// STORE_UNAVAILABLE.
    pub store_wait_ms: u64,
    /// Pause between retries of a failing commit.
    pub store_retry_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue_txns_max: 65_536,
            batch_rows_max: 1_000,
            batch_linger_us: 0,
            writers: 4,
            store_wait_ms: 5_000,
            store_retry_ms: 250,
        }
    }
}

/// Which store backs the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded SQLite file under `data_dir` (the default: nothing to install).
    Sqlite,
    /// PostgreSQL: production, and what several gateway nodes share.
    Postgres,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` or `postgres`.
    pub kind: StoreKind,
    /// SQLite file; relative paths are under `data_dir`.
    pub sqlite_path: PathBuf,
    /// PostgreSQL connection URL.
    pub postgres_url: String,
    /// PostgreSQL connections in the pool (writers + reads).
    pub postgres_pool_size_max: usize,
    /// Longest wait for a pooled connection (and to open one).
    pub postgres_pool_wait_ms: u64,
    /// PostgreSQL's `statement_timeout` on every store connection: a statement running
    /// longer is cancelled by the server (the clearing run sets its own, longer bound).
    pub postgres_statement_timeout_ms: u64,
    /// PostgreSQL's `lock_timeout`: a statement waiting longer for a lock fails.
    pub postgres_lock_timeout_ms: u64,
    /// TCP keepalive idle time on store connections, so a dead server or a cut link is
    /// noticed instead of waited on.
    pub postgres_keepalive_idle_s: u64,
    /// The CA (PEM) the PostgreSQL server's certificate must chain to, when the URL asks
    /// for TLS (`sslmode=require`); the certificate must also name the URL's host.
    pub postgres_ca_cert_path: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            sqlite_path: PathBuf::from("wenxiao.db"),
            postgres_url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            postgres_pool_size_max: 8,
            postgres_pool_wait_ms: 2_000,
            postgres_statement_timeout_ms: 10_000,
            postgres_lock_timeout_ms: 5_000,
            postgres_keepalive_idle_s: 10,
            postgres_ca_cert_path: None,
        }
    }
}

/// `[txn]`: plausibility bounds; a TXN outside them is REJECTED `INVALID_FIELD`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TxnConfig {
    /// Largest purchase or refund amount (¥50,000).
    pub purchase_fen_max: i64,
    /// Largest top-up at a kiosk (¥5,000).
    pub top_up_fen_max: i64,
    /// Largest list price (cinema agreed price or performance regular price totals).
    pub list_price_fen_max: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            purchase_fen_max: 5_000_000,
            top_up_fen_max: 500_000,
            list_price_fen_max: 5_000_000,
        }
    }
}

/// `[keys]`: hex master keys. The shipped values are for development and the simulator
/// only; production keys come from the security module's export. `Debug` prints neither.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Master key for TXN TACs.
    pub purchase_master_key_hex: String,
    /// Master key for MAC1, MAC2 and load TACs.
    pub load_master_key_hex: String,
    /// Let `serve` start with the development keys (which anyone can read here, so a
    /// gateway holding them accepts forged TACs and MAC1s and issues MAC2s). Only the
    /// demo, the tests and development set it.
    pub allow_development_keys: bool,
}

impl std::fmt::Debug for KeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysConfig")
            .field("purchase_master_key_hex", &"<redacted>")
            .field("load_master_key_hex", &"<redacted>")
            .field("allow_development_keys", &self.allow_development_keys)
            .finish()
    }
}

impl KeysConfig {
    /// Whether either master key is a development key.
    pub fn uses_development_keys(&self) -> bool {
        let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b);
        same(&self.purchase_master_key_hex, DEV_PURCHASE_MASTER_KEY_HEX)
            || same(&self.load_master_key_hex, DEV_LOAD_MASTER_KEY_HEX)
    }
}

/// Development master keys, shared by the simulator's emulated cards.
pub const DEV_PURCHASE_MASTER_KEY_HEX: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Development load master key.
pub const DEV_LOAD_MASTER_KEY_HEX: &str =
    "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff";

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            purchase_master_key_hex: DEV_PURCHASE_MASTER_KEY_HEX.to_owned(),
            load_master_key_hex: DEV_LOAD_MASTER_KEY_HEX.to_owned(),
            allow_development_keys: false,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`.
    pub enabled: bool,
    /// Where.
    pub listen_addr: SocketAddr,
    /// Bearer token of the app backend for `POST /v1/points/activities` (reviews and
    /// shares) and `POST /v1/reports` (residents' reports); empty disables them.
    pub app_token: String,
    /// Bearer token of the risk team's tools for `/v1/cases`; empty disables them.
    pub risk_token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            app_token: String::new(),
            risk_token: String::new(),
        }
    }
}

/// `[registry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Merchants CSV.
    pub merchants_path: PathBuf,
    /// Devices CSV.
    pub devices_path: PathBuf,
    /// How often a running gateway re-reads the registry from the store.
    pub reload_interval_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            merchants_path: PathBuf::from("config/registry/merchants.csv"),
            devices_path: PathBuf::from("config/registry/devices.csv"),
            reload_interval_ms: 30_000,
        }
    }
}

fn check(ok: bool, key: &'static str, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            message: message(),
        })
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    v: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    check(v >= min && v <= max, key, || {
        format!("{v} is outside {min}..={max}")
    })
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range and the keys' syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.console;
        in_range("console.workers", c.workers, 1, 64)?;
        in_range("console.connections_max", c.connections_max, 1, 100_000)?;
        in_range(
            "console.request_timeout_ms",
            c.request_timeout_ms,
            100,
            600_000,
        )?;
        in_range(
            "console.session_ttl_ms",
            c.session_ttl_ms,
            60_000,
            7 * 86_400_000,
        )?;
        in_range(
            "console.logins_concurrent_max",
            c.logins_concurrent_max,
            1,
            64,
        )?;
        in_range("console.login_wait_ms", c.login_wait_ms, 1, 60_000)?;
        in_range(
            "console.dashboard_refresh_ms",
            c.dashboard_refresh_ms,
            0,
            3_600_000,
        )?;
        check(
            c.tls_cert_path.is_some() == c.tls_key_path.is_some(),
            "console.tls_cert_path",
            || "console.tls_cert_path and console.tls_key_path go together".to_owned(),
        )?;
        let s = &self.server;
        in_range("server.connections_max", s.connections_max, 1, 1_000_000)?;
        in_range(
            "server.tls_handshake_timeout_ms",
            s.tls_handshake_timeout_ms,
            100,
            120_000,
        )?;
        in_range("server.workers", s.workers, 0, 256)?;
        in_range(
            "server.handshakes_in_progress_max",
            s.handshakes_in_progress_max,
            1,
            100_000,
        )?;
        let se = &self.session;
        in_range(
            "session.hello_timeout_ms",
            se.hello_timeout_ms,
            100,
            600_000,
        )?;
        in_range("session.heartbeat_s", se.heartbeat_s, 1, 3_600)?;
        in_range("session.max_in_flight", se.max_in_flight, 1, 4_096)?;
        in_range(
            "session.frame_payload_bytes_max",
            se.frame_payload_bytes_max,
            FRAME_PAYLOAD_BYTES_MIN_CONFIGURABLE,
            FRAME_PAYLOAD_BYTES_MAX,
        )?;
        in_range(
            "session.write_buffer_bytes_max",
            se.write_buffer_bytes_max,
            4_096,
            64 << 20,
        )?;
        in_range(
            "session.slow_reader_timeout_ms",
            se.slow_reader_timeout_ms,
            100,
            600_000,
        )?;
        in_range("session.drain_timeout_ms", se.drain_timeout_ms, 0, 600_000)?;
        in_range("session.drain_spread_ms", se.drain_spread_ms, 0, 600_000)?;
        in_range("session.hello_queue_max", se.hello_queue_max, 1, 1_000_000)?;
        in_range("session.hello_batch_max", se.hello_batch_max, 1, 5_000)?;
        in_range("session.hello_writers", se.hello_writers, 1, 16)?;
        in_range("session.close_linger_ms", se.close_linger_ms, 0, 60_000)?;
        in_range(
            "store.postgres_statement_timeout_ms",
            self.store.postgres_statement_timeout_ms,
            100,
            3_600_000,
        )?;
        in_range(
            "store.postgres_lock_timeout_ms",
            self.store.postgres_lock_timeout_ms,
            10,
            3_600_000,
        )?;
        in_range(
            "store.postgres_keepalive_idle_s",
            self.store.postgres_keepalive_idle_s,
            1,
            3_600,
        )?;
        // Up to a day: a longer grace would hold a day open into the one after next.
        in_range("clearing.grace_ms", self.clearing.grace_ms, 0, 86_400_000)?;
        in_range("session.seq_window_max", se.seq_window_max, 16, 1_000_000)?;
        let i = &self.ingest;
        in_range("ingest.queue_txns_max", i.queue_txns_max, 1, 10_000_000)?;
        in_range("ingest.batch_rows_max", i.batch_rows_max, 1, 100_000)?;
        in_range("ingest.batch_linger_us", i.batch_linger_us, 0, 1_000_000)?;
        in_range("ingest.writers", i.writers, 1, 64)?;
        in_range("ingest.store_wait_ms", i.store_wait_ms, 0, 600_000)?;
        in_range("ingest.store_retry_ms", i.store_retry_ms, 1, 60_000)?;
        in_range(
            "store.postgres_pool_size_max",
            self.store.postgres_pool_size_max,
            1,
            1_000,
        )?;
        in_range(
            "store.postgres_pool_wait_ms",
            self.store.postgres_pool_wait_ms,
            1,
            600_000,
        )?;
        check(
            self.store.kind != StoreKind::Postgres
                || self.store.postgres_pool_size_max
                    > self.ingest.writers + self.session.hello_writers,
            "store.postgres_pool_size_max",
            || {
                "must exceed ingest.writers + session.hello_writers, so session reads never \
                 wait behind writers"
                    .to_owned()
            },
        )?;
        let t = &self.txn;
        in_range("txn.purchase_fen_max", t.purchase_fen_max, 1, i64::MAX / 4)?;
        in_range("txn.top_up_fen_max", t.top_up_fen_max, 1, i64::MAX / 4)?;
        in_range(
            "txn.list_price_fen_max",
            t.list_price_fen_max,
            1,
            i64::MAX / 4,
        )?;
        self.master_keys()?;
        in_range("credits.push_window", self.credits.push_window, 1, 4_096)?;
        let h = &self.hotlist;
        in_range(
            "hotlist.delta_versions_kept",
            h.delta_versions_kept,
            1,
            1_000_000,
        )?;
        in_range(
            "hotlist.chunk_cards_max",
            h.chunk_cards_max,
            1,
            wenxiao_protocol::limits::HOTLIST_CARDS_PER_FRAME_MAX,
        )?;
        in_range(
            "hotlist.poll_interval_ms",
            h.poll_interval_ms,
            10,
            3_600_000,
        )?;
        in_range(
            "hotlist.ack_queue_devices",
            h.ack_queue_devices,
            1,
            10_000_000,
        )?;
        in_range(
            "risk.queue_txns_max",
            self.risk.queue_txns_max,
            1,
            10_000_000,
        )?;
        in_range(
            "registry.reload_interval_ms",
            self.registry.reload_interval_ms,
            100,
            86_400_000,
        )?;
        Ok(())
    }

    /// The master keys, parsed.
    pub fn master_keys(&self) -> Result<MasterKeys, ConfigError> {
        let purchase = MasterKey::from_hex(&self.keys.purchase_master_key_hex).map_err(|e| {
            ConfigError::Invalid {
                key: "keys.purchase_master_key_hex",
                message: e.to_string(),
            }
        })?;
        let load = MasterKey::from_hex(&self.keys.load_master_key_hex).map_err(|e| {
            ConfigError::Invalid {
                key: "keys.load_master_key_hex",
                message: e.to_string(),
            }
        })?;
        Ok(MasterKeys { purchase, load })
    }

    /// The SQLite file, resolved against `data_dir`.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join(&self.store.sqlite_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
        let c = Config::load(&path).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::parse("[session]\nmax_inflight = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("max_inflight"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let e = Config::parse("[session]\nmax_in_flight = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().starts_with("session.max_in_flight"), "{e}");
        let e = Config::parse(
            "[keys]\nload_master_key_hex = \"00\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("keys.load_master_key_hex"), "{e}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let e = Config::parse(
            "[server]\nconnections_max = \"many\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("connections_max"), "{e}");
    }
}
