#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A gateway under test: a temporary data directory with a development PKI, a small
//! registry, and a configuration with short timeouts.

use crate::device::TestDevice;
use std::path::PathBuf;
use wenxiao_gateway::config::{Config, StoreKind};
use wenxiao_gateway::pki::{DevCa, PemPair};
use wenxiao_gateway::server::{self, GatewayHandle};
use wenxiao_protocol::DeviceId;

/// A bookstore POS terminal of the test registry.
pub const POS: DeviceId = DeviceId(310_100_000_001);
/// A second POS terminal at the same bookstore.
pub const POS2: DeviceId = DeviceId(310_100_000_002);
/// More POS terminals at the bookstore, for concurrency tests.
pub const MORE_POS: [DeviceId; 4] = [
    DeviceId(310_100_000_011),
    DeviceId(310_100_000_012),
    DeviceId(310_100_000_013),
    DeviceId(310_100_000_014),
];
/// A cinema POS terminal.
pub const CINEMA_POS: DeviceId = DeviceId(310_100_000_003);
/// A top-up kiosk.
pub const KIOSK: DeviceId = DeviceId(310_200_000_001);
/// A public venue's sign-in reader.
pub const READER: DeviceId = DeviceId(310_400_000_001);
/// A disabled POS terminal.
pub const DISABLED_POS: DeviceId = DeviceId(310_100_000_009);
/// A device id not in the registry.
pub const UNKNOWN: DeviceId = DeviceId(999);

const MERCHANTS: &str = "merchant_id,name,category,district,active\n\
1001,Test bookstore,BOOKSTORE,ERQI,1\n\
1002,Test cinema,CINEMA,JINSHUI,1\n\
1003,Test outlet,SERVICE_OUTLET,ZHONGYUAN,1\n\
1004,Test library,PUBLIC_VENUE,HUIJI,1\n";

const DEVICES: &str = "device_id,kind,merchant_id,operator,active\n\
310100000001,POS,1001,,1\n\
310100000002,POS,1001,,1\n\
310100000003,POS,1002,,1\n\
310100000009,POS,1001,,0\n\
310100000011,POS,1001,,1\n\
310100000012,POS,1001,,1\n\
310100000013,POS,1001,,1\n\
310100000014,POS,1001,,1\n\
310200000001,KIOSK,1003,,1\n\
310300000001,OTA_ENDPOINT,,CHINA_MOBILE,1\n\
310400000001,SIGNIN_READER,1004,,1\n";

/// Everything a test needs around one gateway.
pub struct TestEnv {
    /// The temporary data directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The development CA that signed the server's and devices' certificates.
    pub ca: DevCa,
    /// The configuration the gateway runs with.
    pub config: Config,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestEnv {
    /// A fresh environment on the embedded store.
    pub fn sqlite() -> Self {
        Self::new(StoreKind::Sqlite, String::new())
    }

    /// A fresh environment on PostgreSQL (a new schema).
    pub async fn postgres() -> Self {
        Self::new(StoreKind::Postgres, crate::fresh_pg_url().await)
    }

    /// Keeps this environment's gateways to 4 pooled connections and 2 writers each, for
    /// the tests that run several nodes on the shared server (100 connections at most).
    pub fn small_pool(mut self) -> Self {
        self.config.ingest.writers = 2;
        self.config.session.hello_writers = 1;
        self.config.store.postgres_pool_size_max = 4;
        self
    }

    /// A fresh environment on the PostgreSQL at `url` (a server of the test's own).
    pub fn postgres_at(url: String) -> Self {
        Self::new(StoreKind::Postgres, url)
    }

    fn new(kind: StoreKind, postgres_url: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        wenxiao_gateway::pki::init(&pki).unwrap();
        let ca = DevCa::load(&pki).unwrap();
        let reg = dir.path().join("registry");
        std::fs::create_dir_all(&reg).unwrap();
        std::fs::write(reg.join("merchants.csv"), MERCHANTS).unwrap();
        std::fs::write(reg.join("devices.csv"), DEVICES).unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.server.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.server.workers = 2;
        config.admin.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.console.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.tls.device_ca_cert_path = pki.join("ca.pem");
        config.tls.server_cert_path = pki.join("server.pem");
        config.tls.server_key_path = pki.join("server.key");
        config.policy_path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.toml");
        config.risk.rules_path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/risk.toml");
        config.registry.merchants_path = reg.join("merchants.csv");
        config.registry.devices_path = reg.join("devices.csv");
        config.session.drain_timeout_ms = 2_000;
        config.session.close_linger_ms = 200;
        config.store.kind = kind;
        config.store.postgres_url = postgres_url;
        config.ingest.store_wait_ms = 1_000;
        config.ingest.store_retry_ms = 100;
        config.keys.allow_development_keys = true;
        config.validate().unwrap();
        Self { dir, ca, config }
    }

    /// Starts a gateway with the current configuration.
    pub fn start(&self) -> GatewayHandle {
        server::spawn(self.config.clone()).unwrap()
    }

    /// The server CA (PEM) devices trust.
    pub fn ca_pem(&self) -> String {
        self.ca.pem().cert_pem.clone()
    }

    /// A certificate for a device id.
    pub fn device_cert(&self, id: DeviceId) -> PemPair {
        self.ca.issue_device(id).unwrap()
    }

    /// Connects as `id` with its own certificate (TLS done, nothing sent).
    pub async fn connect(&self, gw: &GatewayHandle, id: DeviceId) -> TestDevice {
        let cert = self.device_cert(id);
        TestDevice::connect(gw.device_addr, &self.ca_pem(), Some(&cert), id)
            .await
            .unwrap()
    }

    /// Connects as `id` and completes HELLO/WELCOME.
    pub async fn session(&self, gw: &GatewayHandle, id: DeviceId) -> TestDevice {
        let mut d = self.connect(gw, id).await;
        d.hello().await;
        d
    }

    /// Connects to a gateway at `addr` as `id` (TLS done, nothing sent).
    pub async fn connect_at(&self, addr: std::net::SocketAddr, id: DeviceId) -> TestDevice {
        let cert = self.device_cert(id);
        TestDevice::connect(addr, &self.ca_pem(), Some(&cert), id)
            .await
            .unwrap()
    }

    /// Connects to `addr` as `id` (TLS done, nothing sent); `None` when the connection or
    /// the handshake fails (a proxy whose node is gone).
    pub async fn connect_at_checked(
        &self,
        addr: std::net::SocketAddr,
        id: DeviceId,
    ) -> Option<TestDevice> {
        let cert = self.device_cert(id);
        TestDevice::connect(addr, &self.ca_pem(), Some(&cert), id)
            .await
            .ok()
    }

    /// Connects to a gateway at `addr` as `id` and completes HELLO/WELCOME.
    pub async fn session_at(&self, addr: std::net::SocketAddr, id: DeviceId) -> TestDevice {
        let cert = self.device_cert(id);
        let mut d = TestDevice::connect(addr, &self.ca_pem(), Some(&cert), id)
            .await
            .unwrap();
        d.hello().await;
        d
    }

    /// Writes the configuration as a TOML file for a gateway process listening on `port`.
    pub fn write_config_file(&self, port: u16) -> PathBuf {
        let text = self.config_text(port, 0);
        let path = self.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The configuration of the running gateway `gw` as its operators' tools see it (its
    /// device and console listeners), with `store_toml` replacing the `[store]` table:
    /// written to `name` in the data directory.
    pub fn write_client_config(&self, gw: &GatewayHandle, store_toml: &str, name: &str) -> PathBuf {
        let console_port = gw.console_addr.map_or(0, |a| a.port());
        let text = self.config_text(gw.device_addr.port(), console_port);
        let (before, after) = text.split_once("[store]\n").unwrap();
        let after = after.split_once("[registry]").unwrap().1;
        let path = self.path().join(name);
        std::fs::write(
            &path,
            format!("{before}[store]\n{store_toml}\n[registry]{after}"),
        )
        .unwrap();
        path
    }

    fn config_text(&self, port: u16, console_port: u16) -> String {
        let c = &self.config;
        let text = format!(
            "data_dir = {data:?}\npolicy_path = {policy:?}\n\
             [server]\nlisten_addr = \"127.0.0.1:{port}\"\nworkers = 2\n\
             [admin]\nlisten_addr = \"127.0.0.1:0\"\n\
             [console]\nlisten_addr = \"127.0.0.1:{console_port}\"\n\
             [tls]\ndevice_ca_cert_path = {ca:?}\nserver_cert_path = {cert:?}\nserver_key_path = {key:?}\n\
             [store]\nkind = {kind:?}\npostgres_url = {url:?}\npostgres_pool_size_max = {pool}\n\
             [ingest]\nwriters = {writers}\n\
             [session]\nhello_writers = {hello_writers}\n\
             [registry]\nmerchants_path = {m:?}\ndevices_path = {d:?}\n\
             [keys]\nallow_development_keys = true\n\
             [risk]\nrules_path = {rules:?}\n",
            data = c.data_dir,
            policy = c.policy_path,
            ca = c.tls.device_ca_cert_path,
            cert = c.tls.server_cert_path,
            key = c.tls.server_key_path,
            kind = match c.store.kind {
                wenxiao_gateway::config::StoreKind::Sqlite => "sqlite",
                wenxiao_gateway::config::StoreKind::Postgres => "postgres",
            },
            url = c.store.postgres_url,
            pool = c.store.postgres_pool_size_max,
            writers = c.ingest.writers,
            hello_writers = c.session.hello_writers,
            m = c.registry.merchants_path,
            d = c.registry.devices_path,
            rules = c.risk.rules_path,
        );
        text
    }

    /// The data directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}
