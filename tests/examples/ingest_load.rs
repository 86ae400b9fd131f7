//! The gateway ingest benchmark (not a test). It prepares a data directory (development
//! PKI, a registry of N POS terminals, a fresh PostgreSQL schema), runs the gateway binary
//! as a separate process, drives it with N mTLS devices from this process, and prints the
//! figures beside the same PostgreSQL's raw insert rate measured in the same run.
//! `load/ingest.sh` builds and runs it; see `load/RESULTS.md` for results.
//!
//! Modes:
//! - `closed`: each device sends a window of TXNs and waits for their acks (saturation).
//! - `open`: devices send at a fixed total rate whatever the acks do (no coordinated
//!   omission: latency is measured from each TXN's intended send time).
//! - `idle`: N sessions open and idle; gateway RSS per session.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::float_arithmetic
)]

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wenxiao_gateway::pki::DevCa;
use wenxiao_protocol::*;
use wenxiao_simulator::bench::GatewayProcess;
use wenxiao_tests::device::{TestDevice, book_purchase};

/// First device id of the generated registry.
const DEVICE_BASE: u64 = 400_000_000_000;
/// Handshakes the driver runs at once while connecting many devices.
const CONNECTS_IN_FLIGHT_MAX: usize = 200;

#[derive(Parser)]
struct Args {
    /// The gateway binary to run.
    #[arg(long)]
    gateway_bin: PathBuf,
    /// Store writers of the gateway.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Windows of pipelined TXNs per device, each window waiting for its acks.
    Closed {
        #[arg(long, default_value_t = 200)]
        devices: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        window: u64,
    },
    /// A fixed offered rate (TXN/s, all devices together).
    Open {
        #[arg(long, default_value_t = 1_000)]
        devices: u64,
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Idle sessions: gateway memory per session.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        devices: u64,
    },
}

struct Rig {
    gateway: GatewayProcess,
    ca: DevCa,
    url: String,
    addr: SocketAddr,
    admin_port: u16,
}

impl Rig {
    async fn start(bin: &Path, devices: u64, writers: usize) -> Rig {
        let gateway = GatewayProcess::start(
            bin,
            &wenxiao_tests::database_url(),
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.toml"),
            writers + 4,
            &format!("[session]\nheartbeat_s = 600\n[ingest]\nwriters = {writers}\n"),
            |dir| {
                let mut reg = String::from("device_id,kind,merchant_id,operator,active\n");
                for i in 0..devices {
                    reg.push_str(&format!("{},POS,1001,,1\n", DEVICE_BASE + i));
                }
                std::fs::write(dir.join("devices.csv"), reg)?;
                std::fs::write(
                    dir.join("merchants.csv"),
                    "merchant_id,name,category,district,active\n1001,Bench bookstore,BOOKSTORE,ERQI,1\n",
                )?;
                Ok(())
            },
        )
        .await
        .unwrap();
        let ca = DevCa::load(&gateway.dir.path().join("pki")).unwrap();
        Rig {
            ca,
            url: gateway.url.clone(),
            addr: gateway.addr,
            admin_port: gateway.admin_port,
            gateway,
        }
    }

    /// Means of the gateway's own histograms: rows per batch, commit time, and receipt →
    /// ack time inside the gateway.
    async fn print_gateway_means(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        for (label, metric, scale) in [
            ("rows per batch", "wenxiao_ingest_batch_rows", 1.0),
            ("commit ms", "wenxiao_store_commit_seconds", 1_000.0),
            (
                "receipt to ack ms (in gateway)",
                "wenxiao_txn_ack_seconds",
                1_000.0,
            ),
        ] {
            let (sum, count) = (
                value(&format!("{metric}_sum")),
                value(&format!("{metric}_count")),
            );
            if count > 0.0 {
                println!(
                    "gateway mean {label}: {:.2} (n = {count})",
                    sum / count * scale
                );
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        wenxiao_simulator::run::rss_kib(self.gateway.pid()).unwrap()
    }

    async fn connect(&self, ids: impl Iterator<Item = u64>) -> Vec<TestDevice> {
        let ca_pem = self.ca.pem().cert_pem.clone();
        let sem = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
        let mut tasks = Vec::new();
        for i in ids {
            let id = DeviceId(DEVICE_BASE + i);
            let cert = self.ca.issue_device(id).unwrap();
            let (ca_pem, sem, addr) = (ca_pem.clone(), Arc::clone(&sem), self.addr);
            tasks.push(tokio::spawn(async move {
                let _slot = sem.acquire().await.unwrap();
                let mut d = TestDevice::connect(addr, &ca_pem, Some(&cert), id)
                    .await
                    .unwrap();
                d.hello_as(DeviceKind::Pos).await;
                d
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    fn stop(mut self) {
        self.gateway.stop();
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn print_latency(label: &str, h: &Histogram<u64>) {
    println!(
        "{label} µs: p50 {} p99 {} p999 {} max {} (n = {})",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    );
}

/// Raw limit: the same rows into a copy of `txns` (same indexes), 100-row multi-row
/// INSERT per commit, from `connections` connections for `seconds` (the simulator's
/// bench measures it the same way).
async fn raw_insert_rate(url: &str, connections: usize, seconds: u64) -> f64 {
    wenxiao_simulator::bench::raw_insert_rate(url, connections, seconds)
        .await
        .unwrap() as f64
}

async fn closed(rig: &Rig, devices: u64, seconds: u64, window: u64) -> f64 {
    let ds = rig.connect(0..devices).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = ds
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            tokio::spawn(async move {
                let mut h = histogram();
                let mut seq = 1u64;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    for _ in 0..window {
                        d.send(book_purchase(
                            d.id,
                            seq,
                            (i as u64) * 100_000_000 + seq,
                            1,
                            100,
                        ))
                        .await;
                        seq += 1;
                    }
                    for _ in 0..window {
                        assert_eq!(d.ack().await.status, TxnStatus::Stored);
                        h.record(sent.elapsed().as_micros() as u64).unwrap();
                    }
                }
                h
            })
        })
        .collect();
    let mut h = histogram();
    for t in tasks {
        h.add(t.await.unwrap()).unwrap();
    }
    let rate = h.len() as f64 / started.elapsed().as_secs_f64();
    println!("closed loop: {devices} devices × window {window}, {seconds} s");
    println!("gateway stored txn/s: {rate:.0}");
    print_latency("ack latency (from window start)", &h);
    rate
}

/// Warm-up excluded from the open-loop histogram.
const WARMUP_MS: u64 = 2_000;

async fn open(rig: &Rig, devices: u64, rate: u64, seconds: u64) -> f64 {
    let ds = rig.connect(0..devices).await;
    let interval = Duration::from_nanos(1_000_000_000 * devices / rate);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(500);
    let end = t0 + Duration::from_secs(seconds);
    let measure_from = t0 + Duration::from_millis(WARMUP_MS);
    let tasks: Vec<_> = ds
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let id = d.id;
            let (mut sink, mut stream) = d.framed.split();
            let intended: Arc<Mutex<HashMap<u64, tokio::time::Instant>>> = Arc::default();
            let sent_at = Arc::clone(&intended);
            // Spread the devices' phases over one interval.
            let phase = interval.mul_f64(i as f64 / devices as f64);
            let writer = tokio::spawn(async move {
                let mut seq = 1u64;
                let mut next = t0 + phase;
                while next < end {
                    tokio::time::sleep_until(next).await;
                    sent_at.lock().unwrap().insert(seq, next);
                    let t = book_purchase(id, seq, (i as u64) * 100_000_000 + seq, 1, 100);
                    sink.send(Message::Txn(t)).await.unwrap();
                    seq += 1;
                    next += interval;
                }
                seq - 1
            });
            tokio::spawn(async move {
                let mut h = histogram();
                let mut acked = 0u64;
                loop {
                    let frame = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
                    let Ok(Some(Ok(Message::TxnAck(a)))) = frame else {
                        break;
                    };
                    assert_eq!(a.status, TxnStatus::Stored);
                    acked += 1;
                    let now = tokio::time::Instant::now();
                    let at = intended.lock().unwrap().remove(&a.seq.get());
                    if let Some(at) = at.filter(|at| *at >= measure_from) {
                        h.record(now.duration_since(at).as_micros().max(1) as u64)
                            .unwrap();
                    }
                    if writer.is_finished() && intended.lock().unwrap().is_empty() {
                        break;
                    }
                }
                let sent = writer.await.unwrap();
                (sent, acked, h)
            })
        })
        .collect();
    let mut h = histogram();
    let (mut sent, mut acked) = (0, 0);
    for t in tasks {
        let (s, a, hh) = t.await.unwrap();
        sent += s;
        acked += a;
        h.add(hh).unwrap();
    }
    let achieved = acked as f64 / seconds as f64;
    println!("open loop: {devices} devices, offered {rate} txn/s for {seconds} s");
    println!("sent {sent}, acked STORED {acked} ({achieved:.0} txn/s)");
    print_latency("ack latency (from intended send, after warm-up)", &h);
    achieved
}

async fn idle(rig: &Rig, devices: u64) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rig.rss_kib();
    let started = Instant::now();
    let ds = rig.connect(0..devices).await;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rig.rss_kib();
    println!("idle: {devices} sessions connected (mTLS + HELLO/WELCOME) in {connect_s:.1} s");
    println!(
        "gateway RSS {before} KiB before, {after} KiB with the sessions: {:.2} KiB per session",
        (after.saturating_sub(before)) as f64 / devices as f64
    );
    drop(ds);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let devices = match args.mode {
        Mode::Closed { devices, .. } | Mode::Open { devices, .. } | Mode::Idle { devices } => {
            devices
        }
    };
    let rig = Rig::start(&args.gateway_bin, devices, args.writers).await;
    let gateway_rate = match args.mode {
        Mode::Closed {
            devices,
            seconds,
            window,
        } => Some(closed(&rig, devices, seconds, window).await),
        Mode::Open {
            devices,
            rate,
            seconds,
        } => Some(open(&rig, devices, rate, seconds).await),
        Mode::Idle { devices } => {
            idle(&rig, devices).await;
            None
        }
    };
    rig.print_gateway_means().await;
    if let Some(rate) = gateway_rate {
        let raw1 = raw_insert_rate(&rig.url, 1, 10).await;
        let raw4 = raw_insert_rate(&rig.url, 4, 10).await;
        println!("raw 100-row INSERT rows/s: {raw1:.0} (1 connection), {raw4:.0} (4 connections)");
        println!(
            "ratio gateway / raw: {:.2} (vs 1 connection), {:.2} (vs 4)",
            rate / raw1,
            rate / raw4
        );
    }
    rig.stop();
}
