//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver): log in; propose a day's approval as one auditor and see the
//! same auditor refused; approve it as another; download a settlement file and check its
//! control total and seal; see the dashboard's budget match the store.
//!
//! With `WENXIAO_SCREENSHOTS=DIR` it also saves the pages as PNG files in DIR (how the
//! pictures in `docs/` are made).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wenxiao_gateway::store::StoreAudit;
use wenxiao_protocol::*;
use wenxiao_tests::device::book_purchase;
use wenxiao_tests::env::{POS, TestEnv};
use wenxiao_tests::http;

const PASSWORD: &str = "a long enough password";

/// How long the test waits for a page to show what it expects.
const PAGE_WAIT: Duration = Duration::from_secs(15);

fn cli(config: &std::path::Path, args: &[&str]) -> String {
    wenxiao_tests::cli::run(
        env!("CARGO_BIN_EXE_gateway-under-test"),
        config,
        &[("PW", PASSWORD)],
        args,
    )
}

use wenxiao_tests::process::{KillOnDrop as Driver, free_port};

/// chromedriver and a headless Chromium session; `None` (the test says why) where neither
/// is installed, outside CI.
async fn browser() -> Option<(Driver, Client)> {
    // The WebDriver client's TLS stack needs a process-wide provider (it is not used:
    // chromedriver speaks plain HTTP on loopback).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let child = match Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => Driver(c),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "browser test not run: chromedriver ({e}); install chromium and chromium-driver"
            );
            return None;
        }
        Err(e) => panic!("chromedriver: {e}"),
    };
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                std::mem::forget(profile);
                return Some((child, c));
            }
            Err(e) => {
                assert!(Instant::now() < until, "no WebDriver session: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn login(b: &Client, base: &str, user: &str) {
    b.goto(&format!("{base}/console/login")).await.unwrap();
    b.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    b.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let who = format!("{user} (auditor)");
    wait_until(b, "logged in", |src| src.contains(&who)).await;
}

/// Polls the page's source (a click's navigation may still be under way when `click`
/// returns) until `done` holds, for at most `PAGE_WAIT`; the test fails with the page.
async fn wait_until(b: &Client, what: &str, done: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + PAGE_WAIT;
    loop {
        let src = b.source().await.unwrap();
        if done(&src) {
            return src;
        }
        assert!(Instant::now() < until, "not {what}: {src}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the element `css`, once the page shows it.
async fn text_of(b: &Client, css: &str) -> String {
    b.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn submit_with_reason(b: &Client, button: &str, reason: &str) {
    let form = b
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::XPath(&format!("//button[@id='{button}']/..")))
        .await
        .unwrap_or_else(|e| panic!("no #{button}: {e}"));
    form.find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys(reason)
        .await
        .unwrap();
    b.find(Locator::Css(&format!("#{button}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn screenshot(b: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("WENXIAO_SCREENSHOTS") {
        let png = b.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_approves_a_day_another_proposed_in_chromium() {
    let Some((_driver, b)) = browser().await else {
        return;
    };
    let env = TestEnv::sqlite();
    let config = env.write_config_file(0);
    for user in ["ada", "abe"] {
        cli(
            &config,
            &[
                "users",
                "add",
                user,
                "--roles",
                "auditor",
                "--password-env",
                "PW",
            ],
        );
    }
    let token = cli(&config, &["users", "token", "ada"]).trim().to_owned();
    let gw = env.start();
    let base = format!("http://{}", gw.console_addr.unwrap());
    let mut d = env.session(&gw, POS).await;
    for seq in 1..=3u64 {
        d.send(book_purchase(POS, seq, 9_000 + seq, 1, 8_800)).await;
        assert_eq!(d.ack().await.subsidy_fen, Fen(880));
    }
    drop(d);
    let today = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    let date = today.get();

    // 1. Log in; the dashboard's budget is what the store granted.
    login(&b, &base, "ada").await;
    b.goto(&format!("{base}/console")).await.unwrap();
    let shown: i64 = b
        .find(Locator::Css("#month-granted"))
        .await
        .unwrap()
        .attr("data-fen")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let month = i32::try_from(date / 100).unwrap();
    let granted = store.budget_granted(month).await.unwrap();
    assert_eq!(shown, granted.get());
    assert_eq!(shown, 3 * 880);
    screenshot(&b, "console-dashboard.png").await;

    // The day ends; it is cleared through the API.
    let later = wenxiao_gateway::clock::day_end_ms(today)
        + i64::try_from(env.config.clearing.grace_ms).unwrap()
        - wenxiao_gateway::clock::now_ms()
        + 1_000;
    wenxiao_gateway::clock::set_offset_ms(later);
    let run = http::request(
        gw.console_addr.unwrap(),
        "POST",
        &format!("/v1/clearing/days/{date}/run"),
        &[format!("Authorization: Bearer {token}")],
        "",
    )
    .await;
    assert_eq!(run.status, 200, "{}", run.body);

    // 2. Propose the approval as ada; ada's own approval is refused. (The clock moved
    // past the session's lifetime: ada logs in again.)
    b.delete_all_cookies().await.unwrap();
    login(&b, &base, "ada").await;
    b.goto(&format!("{base}/console/clearing")).await.unwrap();
    match b.find(Locator::Css(&format!("#day-{date}"))).await {
        Ok(link) => link.click().await.unwrap(),
        Err(e) => panic!("no link to {date} ({e}): {}", b.source().await.unwrap()),
    }
    submit_with_reason(&b, "propose", "figures and control totals checked").await;
    let pending = text_of(&b, "#pending").await;
    assert!(pending.contains("ada"), "{pending}");
    submit_with_reason(&b, "approve", "my own").await;
    wait_until(&b, "refused as the proposer", |src| {
        src.contains("OWN_PROPOSAL")
    })
    .await;

    // 3. Approve it as abe.
    b.delete_all_cookies().await.unwrap();
    login(&b, &base, "abe").await;
    b.goto(&format!("{base}/console/clearing/{date}"))
        .await
        .unwrap();
    submit_with_reason(&b, "approve", "agreed").await;
    wait_until(&b, "approved", |src| src.contains("id=\"state\">approved<")).await;
    assert_eq!(text_of(&b, "#state").await, "approved");
    let seal = text_of(&b, "#seal").await;
    assert_eq!(seal.len(), 64, "{seal}");
    screenshot(&b, "console-clearing-day.png").await;

    // 4. Download a settlement file: its control total and its seal.
    let href = b
        .find(Locator::Css("#file-card_credits"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let text = b
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             fetch(arguments[0]).then(r => r.text()).then(done);",
            vec![serde_json::Value::String(href)],
        )
        .await
        .unwrap();
    let text = text.as_str().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[lines.len() - 2], "TOTAL,3,2640", "{text}");
    assert_eq!(lines[lines.len() - 1], format!("SEAL,{seal}"), "{text}");

    // 5. The dashboard still matches the store, now with the credits released.
    b.goto(&format!("{base}/console")).await.unwrap();
    let shown = b
        .find(Locator::Css("#month-granted"))
        .await
        .unwrap()
        .attr("data-fen")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        shown,
        store.budget_granted(month).await.unwrap().get().to_string()
    );
    b.close().await.unwrap();
    wenxiao_gateway::clock::set_offset_ms(0);
    gw.shutdown().unwrap();
}
