//! A PostgreSQL server of the test's own, made from the installed binaries (initdb,
//! pg_ctl, pg_basebackup), for the tests that stop, kill, promote or reconfigure it: the
//! shared server on 5432 is never touched. As root, the binaries run as the `postgres`
//! user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the server may take to start or be promoted.
const READY_WAIT_MS: u64 = 30_000;

/// One server: its data directory, port and binaries.
#[derive(Debug)]
pub struct PgCluster {
    /// Holds the data and socket directories; removed on drop.
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
}

/// The installed PostgreSQL binaries' directory, if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Ports the servers are given: below the kernel's ephemeral range (a port inside it may
/// be held by a client socket in TIME_WAIT, which bind refuses), one apart per server.
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A port for a new server that nothing listens on now.
fn server_port() -> u16 {
    let base = 21_000 + u16::try_from(std::process::id() % 200).unwrap_or(0) * 20;
    loop {
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = base + n % 1_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Runs a PostgreSQL binary (as `postgres` when root); panics with its output on failure.
fn run(bin: &Path, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn new_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("wenxiao-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        dir
    }

    /// A new server on a free port with `conf` appended to its configuration, started.
    pub fn init(conf: &str) -> Self {
        let bin = bin_dir().expect("PostgreSQL's binaries (initdb) are not installed");
        let dir = Self::new_dir();
        let c = Self {
            port: server_port(),
            dir,
            bin,
        };
        let data = c.data();
        run(
            &c.bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-instructions",
            ],
        );
        c.append_conf(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 100\nfsync = on\n{conf}\n",
            c.port,
            c.dir.path().display()
        ));
        c.append_hba("host replication all 127.0.0.1/32 trust\n");
        c.start();
        c
    }

    /// A streaming standby of `primary` (pg_basebackup -R) with `conf` appended, started.
    pub fn standby_of(primary: &Self, conf: &str) -> Self {
        let dir = Self::new_dir();
        let c = Self {
            port: server_port(),
            dir,
            bin: primary.bin.clone(),
        };
        let data = c.data();
        run(
            &c.bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-d",
                &format!("application_name=standby{}", c.port),
            ],
        );
        c.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'\n{conf}\n",
            c.port,
            c.dir.path().display()
        ));
        c.start();
        c
    }

    fn append_conf(&self, text: &str) {
        self.append("postgresql.conf", text);
    }

    fn append_hba(&self, text: &str) {
        self.append("pg_hba.conf", text);
    }

    /// Puts `text` first in `pg_hba.conf` (the first line that matches decides).
    pub fn prepend_hba(&self, text: &str) {
        let path = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{old}")).unwrap();
    }

    fn append(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join(file))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Writes a file into the data directory (owned by the server's user).
    pub fn put_file(&self, name: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&path)
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    /// Appends to its configuration and restarts it.
    pub fn reconfigure(&self, conf: &str) {
        self.append_conf(conf);
        self.stop("fast");
        self.start();
    }

    /// Starts it and waits until it accepts connections.
    pub fn start(&self) {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops it in `mode` (`immediate`: as a crash, with no checkpoint).
    pub fn stop(&self, mode: &str) {
        let data = self.data();
        run(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
    }

    /// Promotes a standby and waits until it takes writes.
    pub async fn promote(&self) {
        let data = self.data();
        run(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-w", "promote"],
        );
        let until = Instant::now() + Duration::from_millis(READY_WAIT_MS);
        loop {
            if let Ok((c, conn)) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                if let Ok(r) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
                    && !r.get::<_, bool>(0)
                {
                    return;
                }
            }
            assert!(Instant::now() < until, "the standby was not promoted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL for its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists() {
            let mut cmd = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"));
                c
            } else {
                Command::new(self.bin.join("pg_ctl"))
            };
            let _ = cmd
                .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
                .output();
        }
    }
}
