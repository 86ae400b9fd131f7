//! A gateway as its own process (`env!("CARGO_BIN_EXE_gateway-under-test")`, which only an
//! integration test can name), for the tests that kill it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a gateway process may take to listen.
const START_WAIT_MS: u64 = 30_000;

/// Starts `bin --config config serve` with the environment `envs`, its standard error
/// appended to `gateway.log` beside the configuration, and returns once it listens.
pub fn start(bin: &str, config: &Path, envs: &[(&str, &str)]) -> Child {
    let log = config.with_file_name("gateway.log");
    let mut child = Command::new(bin)
        .envs(envs.iter().copied())
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        ))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_millis(START_WAIT_MS);
    loop {
        assert!(Instant::now() < deadline, "gateway did not start");
        match lines.next() {
            Some(Ok(l)) if l.starts_with("listening for devices") => break,
            Some(_) => {}
            None => panic!(
                "gateway exited at start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped when this is dropped (a helper the test started).
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
