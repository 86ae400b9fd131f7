//! The gateway's command line as operators run it, for the tests: `bin` is
//! `env!("CARGO_BIN_EXE_gateway-under-test")`, which only an integration test can name.

use std::path::Path;
use std::process::{Command, Output};

/// `bin --config config args…` with the environment variables `envs`: its whole output.
pub fn output(bin: &str, config: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(bin)
        .envs(envs.iter().copied())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

/// The same, which must succeed: its standard output (the test fails with the standard
/// error otherwise).
pub fn run(bin: &str, config: &Path, envs: &[(&str, &str)], args: &[&str]) -> String {
    let out = output(bin, config, envs, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
