//! `wenxiao-sim bench` end to end, small: two gateway processes on one PostgreSQL, driven
//! by two simulator processes; the bench joins the shards' whole ack-latency histograms
//! (their quantiles printed for all shards) and writes the HDR plot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_bench_joins_its_shards_and_plots_their_ack_latency() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("small.toml");
    std::fs::write(
        &scenario,
        "description = \"small bench\"\nseed = 7\n\
         [city]\nevents_per_day = 3000\n\
         [clock]\nfrom_hour = 9\nto_hour = 21\nreal_seconds = 6\n\
         [run]\nconnect_s = 3\nhold_s = 1\nsettle_timeout_s = 60\ndevices = 40\n\
         processes = 2\ngateways = 2\n",
    )
    .unwrap();
    let plot = dir.path().join("plots/ack.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_sim-under-test"))
        .current_dir(&repo)
        .env("DATABASE_URL", wenxiao_tests::database_url())
        .args(["bench", "--scenario"])
        .arg(&scenario)
        .arg("--gateway-bin")
        .arg(env!("CARGO_BIN_EXE_gateway-under-test"))
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("result PASS"), "{stdout}");
    // The joined histogram holds every answer of both shards: one ack for each planned
    // TXN (nothing is re-sent without faults).
    let planned: u64 = stdout
        .lines()
        .find(|l| l.starts_with("stored ") && l.contains(" planned"))
        .and_then(|l| l.split(" of ").nth(1))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let joined = stdout
        .lines()
        .find(|l| l.starts_with("ack latency (all shards)"))
        .unwrap();
    let n: u64 = joined
        .rsplit("n = ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert!(planned > 0);
    assert_eq!(n, planned, "{joined}");
    assert!(stdout.contains(&format!("ack latency plot: {}", plot.display())));
    // One line for all shards, one for each.
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches(r#"class="series""#).count(), 3, "{svg}");
    assert!(svg.contains(&format!("all shards (n = {n},")));
    assert!(svg.contains("shard 0/2") && svg.contains("shard 1/2"));
}
