//! Defect 12: a gateway never starts by accident with the development master keys, nor
//! on defaults because its configuration file was not found, and keys never print.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use wenxiao_gateway::config::{DEV_LOAD_MASTER_KEY_HEX, DEV_PURCHASE_MASTER_KEY_HEX};
use wenxiao_gateway::server;
use wenxiao_tests::env::TestEnv;

#[test]
fn the_development_keys_are_refused_unless_the_config_allows_them() {
    let env = TestEnv::sqlite();
    let mut config = env.config.clone();
    config.keys.allow_development_keys = false;
    let Err(err) = server::spawn(config.clone()) else {
        panic!("started with the development keys");
    };
    let text = format!("{err:#}");
    assert!(text.contains("development master keys"), "{text}");
    assert!(text.contains("keys.allow_development_keys"), "{text}");
    // Other keys start.
    config.keys.purchase_master_key_hex = "11".repeat(32);
    config.keys.load_master_key_hex = "22".repeat(32);
    server::spawn(config).unwrap().shutdown().unwrap();
}

#[test]
fn keys_are_redacted_in_debug() {
    let config = TestEnv::sqlite().config;
    let shown = format!("{config:?}");
    for key in [DEV_PURCHASE_MASTER_KEY_HEX, DEV_LOAD_MASTER_KEY_HEX] {
        assert!(!shown.contains(key), "a master key printed");
        assert!(!shown.contains(&key[..16]), "part of a master key printed");
    }
}

#[test]
fn no_configuration_file_is_an_error_that_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-under-test"))
        .current_dir(dir.path())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config/gateway.toml"), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("--config"), "{stderr}");
}
