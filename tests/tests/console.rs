//! The operations console's API over HTTP, on both stores, with users made by the CLI:
//! for each mutating route one caller its roles allow and one they do not (403, written to
//! the audit log); four eyes (the proposer refused, a pending duplicate refused, another
//! user approving); a sealed clearing day whose files carry the seal; bad input named;
//! CSRF for cookie sessions; the residents' queries; `promtool check metrics`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wenxiao_protocol::*;
use wenxiao_tests::device::book_purchase;
use wenxiao_tests::env::{POS, TestEnv};
use wenxiao_tests::http::{self, Answer};

const APP: &str = "app-t0ken-for-tests";
const PASSWORD: &str = "a long enough password";

fn cli(config: &std::path::Path, args: &[&str]) -> String {
    wenxiao_tests::cli::run(
        env!("CARGO_BIN_EXE_gateway-under-test"),
        config,
        &[("PW", PASSWORD)],
        args,
    )
}

/// The users of the test, with the roles the CLI gives them.
const USERS: &[(&str, &str)] = &[
    ("vera", "viewer"),
    ("otto", "operator"),
    ("ada", "auditor"),
    ("abe", "auditor"),
    ("rita", "risk"),
    ("rick", "risk"),
    ("root", "admin"),
];

struct Console {
    addr: SocketAddr,
    tokens: HashMap<&'static str, String>,
}

impl Console {
    fn auth(&self, user: &str) -> Vec<String> {
        if user == "app" {
            return vec![format!("Authorization: Bearer {APP}")];
        }
        vec![format!("Authorization: Bearer {}", self.tokens[user])]
    }

    async fn get(&self, user: &str, path: &str) -> Answer {
        http::request(self.addr, "GET", path, &self.auth(user), "").await
    }

    async fn post(&self, user: &str, path: &str, body: Value) -> Answer {
        let mut h = self.auth(user);
        h.push("Content-Type: application/json".to_owned());
        http::request(self.addr, "POST", path, &h, &body.to_string()).await
    }

    /// `allowed` succeeds (its answer is returned) and `forbidden` is refused 403.
    async fn both(&self, allowed: &str, forbidden: &str, path: &str, body: Value) -> Answer {
        let no = self.post(forbidden, path, body.clone()).await;
        assert_eq!(no.status, 403, "{forbidden} POST {path}: {}", no.body);
        assert_eq!(no.json()["reason"], "FORBIDDEN", "{}", no.body);
        let yes = self.post(allowed, path, body).await;
        assert!(
            yes.status != 401 && yes.status != 403,
            "{allowed} POST {path}: {} {}",
            yes.status,
            yes.body
        );
        yes
    }
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < until, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn console_api(mut env: TestEnv) {
    env.config.admin.app_token = APP.to_owned();
    env.config.registry.reload_interval_ms = 200;
    let config = env.write_config_file(0);
    let mut tokens = HashMap::new();
    for (name, roles) in USERS {
        let out = cli(
            &config,
            &[
                "users",
                "add",
                name,
                "--roles",
                roles,
                "--password-env",
                "PW",
            ],
        );
        assert!(out.contains("added"), "{out}");
        tokens.insert(
            *name,
            cli(&config, &["users", "token", name]).trim().to_owned(),
        );
    }
    // Bad input at the CLI: a short password, an unknown role, a taken name.
    for args in [
        &[
            "users",
            "add",
            "x",
            "--roles",
            "viewer",
            "--password-env",
            "NOPE",
        ][..],
        &[
            "users",
            "add",
            "y",
            "--roles",
            "root",
            "--password-env",
            "PW",
        ][..],
        &[
            "users",
            "add",
            "vera",
            "--roles",
            "viewer",
            "--password-env",
            "PW",
        ][..],
    ] {
        let out = wenxiao_tests::cli::output(
            env!("CARGO_BIN_EXE_gateway-under-test"),
            &config,
            &[("PW", PASSWORD)],
            args,
        );
        assert!(!out.status.success(), "{args:?} was accepted");
    }

    let gw = env.start();
    let c = Console {
        addr: gw.console_addr.unwrap(),
        tokens,
    };
    let mut d = env.session(&gw, POS).await;
    for seq in 1..=3u64 {
        d.send(book_purchase(POS, seq, 7_000 + seq, 1, 8_800)).await;
        assert_eq!(d.ack().await.subsidy_fen, Fen(880));
    }
    drop(d);

    // Unauthenticated: 401; a wrong token: 401; the OpenAPI document is public.
    assert_eq!(
        http::request(c.addr, "GET", "/v1/dashboard", &[], "")
            .await
            .status,
        401
    );
    let wrong = ["Authorization: Bearer nope".to_owned()];
    assert_eq!(
        http::request(c.addr, "GET", "/v1/dashboard", &wrong, "")
            .await
            .status,
        401
    );
    let doc = http::request(c.addr, "GET", "/v1/openapi.json", &[], "").await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.json()["paths"]["/v1/commands/clearing/{id}/approve"]["post"]["x-permission"],
        "clearing.decide"
    );

    // The dashboard's budget is what the store granted.
    let dash = c.get("vera", "/v1/dashboard").await;
    assert_eq!(dash.status, 200, "{}", dash.body);
    assert_eq!(dash.json()["month_granted_fen"], 3 * 880, "{}", dash.body);

    // Residents' queries: the app token only.
    assert_eq!(c.get("vera", "/v1/cards/7001/credits").await.status, 403);
    let credits = c.get("app", "/v1/cards/7001/credits").await;
    assert_eq!(credits.status, 200, "{}", credits.body);
    assert_eq!(credits.json()["pending_fen"], 880, "{}", credits.body);
    let points = c.get("app", "/v1/cards/7001/points").await;
    assert_eq!(points.status, 200, "{}", points.body);
    assert_eq!(c.get("app", "/v1/cards/x/points").await.status, 400);

    // Merchants: an application needs its category's facts.
    let bad = c
        .post(
            "otto",
            "/v1/merchants/applications",
            json!({"name": "Star theatre", "category": 4, "district": 2, "licence_no": "L-1"}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        bad.json()["field"],
        "years_without_violations",
        "{}",
        bad.body
    );
    let app = c
        .both(
            "otto",
            "vera",
            "/v1/merchants/applications",
            json!({"name": "Star theatre", "category": 4, "district": 2, "licence_no": "L-1",
                   "years_without_violations": 3, "shows_per_year": 40}),
        )
        .await;
    assert_eq!(app.status, 200, "{}", app.body);
    let app_id = app.json()["application_id"].as_i64().unwrap();
    // Signing needs the district's recommendation first.
    let early = c
        .post(
            "otto",
            &format!("/v1/merchants/applications/{app_id}/signing"),
            json!({"reason": "ok"}),
        )
        .await;
    assert_eq!(early.status, 409, "{}", early.body);
    let r = c
        .both(
            "otto",
            "ada",
            &format!("/v1/merchants/applications/{app_id}/recommendation"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = c
        .both(
            "otto",
            "rita",
            &format!("/v1/merchants/applications/{app_id}/signing"),
            json!({"reason": "licence checked"}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let a = c
        .both(
            "ada",
            "otto",
            &format!("/v1/commands/merchant/{cmd}/approve"),
            json!({"reason": "signed"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["status"], "APPROVED", "{}", a.body);
    let organizer = 1005;

    // Suspension: proposed by an operator, approved by an auditor; the registry follows.
    let p = c
        .both(
            "otto",
            "abe",
            "/v1/merchants/1002/suspension",
            json!({"reason": "complaints"}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let dup = c
        .post(
            "otto",
            "/v1/merchants/1002/suspension",
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    assert_eq!(dup.json()["reason"], "DUPLICATE_PENDING", "{}", dup.body);
    let a = c
        .both(
            "abe",
            "rita",
            &format!("/v1/commands/merchant/{cmd}/approve"),
            json!({"reason": "agreed"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    wait_for("merchant 1002 suspended", || async {
        c.get("vera", "/v1/merchants").await.json()["merchants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["merchant_id"] == 1002 && m["active"] == false)
    })
    .await;
    let p = c
        .both(
            "otto",
            "vera",
            "/v1/merchants/1002/reinstatement",
            json!({"reason": "resolved"}),
        )
        .await;
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let rj = c
        .both(
            "ada",
            "otto",
            &format!("/v1/commands/merchant/{cmd}/reject"),
            json!({"reason": "not yet"}),
        )
        .await;
    assert_eq!(rj.status, 200, "{}", rj.body);
    assert_eq!(
        c.get("vera", &format!("/v1/commands/{cmd}")).await.json()["status"],
        "REJECTED"
    );

    // Devices: register, disable (the session closes), enable.
    let r = c
        .both(
            "otto",
            "vera",
            "/v1/devices",
            json!({"device_id": 310100000077u64, "kind": "POS", "merchant_id": 1001}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = c
        .post(
            "otto",
            "/v1/devices",
            json!({"device_id": 5, "kind": "TOASTER", "merchant_id": 1001}),
        )
        .await;
    assert_eq!(
        (bad.status, bad.json()["field"].clone()),
        (400, json!("kind")),
        "{}",
        bad.body
    );
    let mut d = env.session(&gw, DeviceId(310100000002)).await;
    let r = c
        .both(
            "otto",
            "ada",
            "/v1/devices/310100000002/disable",
            json!({"reason": "stolen"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    match d.frame().await {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::DeviceDisabled),
        other => panic!("expected ERROR DEVICE_DISABLED, got {other:?}"),
    }
    let r = c
        .both("otto", "rita", "/v1/devices/310100000002/enable", json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // An organizer award: entered with evidence, approved with four eyes.
    let today = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    let mut award = Answer {
        status: 0,
        headers: Vec::new(),
        body: String::new(),
    };
    let until = Instant::now() + Duration::from_secs(10);
    while award.status != 200 {
        assert!(Instant::now() < until, "award not entered: {}", award.body);
        award = c
            .post(
                "otto",
                "/v1/awards",
                json!({"organizer": organizer, "show_date": today.get(),
                   "kind": "NATIONAL_TROUPE", "evidence": "ministry list 2026/3"}),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forbidden = c
        .post(
            "ada",
            "/v1/awards",
            json!({"organizer": organizer, "show_date": today.get(),
               "kind": "NATIONAL_TROUPE", "evidence": "x"}),
        )
        .await;
    assert_eq!(forbidden.status, 403);
    let award_id = award.json()["award_id"].as_i64().unwrap();
    let p = c
        .both(
            "ada",
            "otto",
            &format!("/v1/awards/{award_id}/approval"),
            json!({"reason": "evidence checked"}),
        )
        .await;
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let own = c
        .post(
            "ada",
            &format!("/v1/commands/award/{cmd}/approve"),
            json!({"reason": "me"}),
        )
        .await;
    assert_eq!(
        (own.status, own.json()["reason"].clone()),
        (409, json!("OWN_PROPOSAL")),
        "{}",
        own.body
    );
    let a = c
        .both(
            "abe",
            "rick",
            &format!("/v1/commands/award/{cmd}/approve"),
            json!({"reason": "agreed"}),
        )
        .await;
    assert_eq!(a.json()["status"], "APPROVED", "{}", a.body);
    // A decided command is not decided again.
    let again = c
        .post(
            "abe",
            &format!("/v1/commands/award/{cmd}/approve"),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    // A decision route of another family does not reach it.
    let wrong = c
        .post(
            "rita",
            &format!("/v1/commands/blacklist/{cmd}/approve"),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(wrong.status, 404, "{}", wrong.body);

    // Budget: proposed, rejected; a bad cap is named.
    let bad = c
        .post(
            "ada",
            "/v1/budget",
            json!({"budget": "monthly", "cap_fen": -1, "reason": "x"}),
        )
        .await;
    assert_eq!(
        (bad.status, bad.json()["field"].clone()),
        (400, json!("cap_fen")),
        "{}",
        bad.body
    );
    let p = c
        .both(
            "ada",
            "root",
            "/v1/budget",
            json!({"budget": "monthly", "cap_fen": 100_000_000, "reason": "top-up"}),
        )
        .await;
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let a = c
        .both(
            "abe",
            "vera",
            &format!("/v1/commands/budget/{cmd}/approve"),
            json!({"reason": "bureau letter 12"}),
        )
        .await;
    assert_eq!(a.json()["status"], "APPROVED", "{}", a.body);
    assert_eq!(
        c.get("vera", "/v1/budget").await.json()["monthly_cap_fen"],
        100_000_000
    );
    let p = c
        .post(
            "ada",
            "/v1/budget",
            json!({"budget": "programme", "cap_fen": 1, "reason": "typo"}),
        )
        .await;
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let r = c
        .both(
            "abe",
            "otto",
            &format!("/v1/commands/budget/{cmd}/reject"),
            json!({"reason": "typo"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Blacklist: a risk analyst proposes, another approves; the card is listed.
    let p = c
        .both(
            "rita",
            "ada",
            "/v1/blacklist",
            json!({"card_no": 7001, "listed": true, "reason": "stolen card"}),
        )
        .await;
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let a = c
        .both(
            "rick",
            "abe",
            &format!("/v1/commands/blacklist/{cmd}/approve"),
            json!({"reason": "confirmed"}),
        )
        .await;
    assert!(
        a.json()["outcome"].as_str().unwrap().contains("listed"),
        "{}",
        a.body
    );
    let p = c
        .post(
            "rita",
            "/v1/blacklist",
            json!({"card_no": 7002, "listed": true, "reason": "x"}),
        )
        .await;
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let r = c
        .both(
            "rick",
            "otto",
            &format!("/v1/commands/blacklist/{cmd}/reject"),
            json!({"reason": "no"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Cases: the routes pass for analysts (no such case: 404) and refuse others.
    for (path, body) in [
        ("/v1/cases/99/assign", json!({})),
        ("/v1/cases/99/dismiss", json!({"reason": "x"})),
        ("/v1/cases/99/confirm", json!({"reason": "x"})),
        ("/v1/cases/99/lift", json!({"reason": "x"})),
    ] {
        let r = c.both("rita", "otto", path, body).await;
        assert!(
            r.status == 404 || r.status == 409,
            "{path}: {} {}",
            r.status,
            r.body
        );
    }
    for verb in ["approve", "reject"] {
        let r = c
            .both(
                "rita",
                "ada",
                &format!("/v1/commands/case/999/{verb}"),
                json!({"reason": "x"}),
            )
            .await;
        assert_eq!(r.status, 404, "{}", r.body);
    }

    // Users: the administrator sets roles; nobody else can.
    let r = c
        .both(
            "root",
            "ada",
            "/v1/users/vera/roles",
            json!({"roles": "viewer,operator"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = c
        .post("root", "/v1/users/vera/roles", json!({"roles": "god"}))
        .await;
    assert_eq!(
        (bad.status, bad.json()["field"].clone()),
        (400, json!("roles"))
    );

    // Clearing: not before the day has ended; then run, propose, approve with four eyes.
    let date = today.get();
    let early = c
        .post("otto", &format!("/v1/clearing/days/{date}/run"), json!({}))
        .await;
    assert_eq!(early.status, 409, "{}", early.body);
    let later = wenxiao_gateway::clock::day_end_ms(today)
        + i64::try_from(env.config.clearing.grace_ms).unwrap()
        - wenxiao_gateway::clock::now_ms()
        + 1_000;
    wenxiao_gateway::clock::set_offset_ms(later);
    let run = c
        .both(
            "otto",
            "rita",
            &format!("/v1/clearing/days/{date}/run"),
            json!({}),
        )
        .await;
    assert_eq!(run.status, 200, "{}", run.body);
    assert_eq!(run.json()["credit_fen"], 880 * 3, "{}", run.body);
    let p = c
        .both(
            "ada",
            "otto",
            &format!("/v1/clearing/days/{date}/approval"),
            json!({"reason": "figures checked"}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let cmd = p.json()["command_id"].as_i64().unwrap();
    let dup = c
        .post(
            "abe",
            &format!("/v1/clearing/days/{date}/approval"),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(dup.json()["reason"], "DUPLICATE_PENDING", "{}", dup.body);
    let own = c
        .post(
            "ada",
            &format!("/v1/commands/clearing/{cmd}/approve"),
            json!({"reason": "me"}),
        )
        .await;
    assert_eq!(own.json()["reason"], "OWN_PROPOSAL", "{}", own.body);
    let no_reason = c
        .post(
            "abe",
            &format!("/v1/commands/clearing/{cmd}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(
        (no_reason.status, no_reason.json()["field"].clone()),
        (400, json!("reason"))
    );
    let a = c
        .both(
            "abe",
            "rita",
            &format!("/v1/commands/clearing/{cmd}/approve"),
            json!({"reason": "agreed"}),
        )
        .await;
    assert_eq!(a.json()["status"], "APPROVED", "{}", a.body);
    let seal = a.json()["seal"].as_str().unwrap().to_owned();
    assert_eq!(seal.len(), 64);
    let day = c
        .get("vera", &format!("/v1/clearing/days/{date}"))
        .await
        .json();
    assert_eq!(day["seal_sha256"], seal.as_str());
    assert_eq!(day["control_totals"]["card_credits_match_run"], true);
    let file = c
        .get(
            "vera",
            &format!("/v1/clearing/days/{date}/files/card_credits.csv"),
        )
        .await;
    assert_eq!(file.status, 200);
    let lines: Vec<&str> = file.body.lines().collect();
    assert_eq!(lines[lines.len() - 2], "TOTAL,3,2640", "{}", file.body);
    assert_eq!(
        lines[lines.len() - 1],
        format!("SEAL,{seal}"),
        "{}",
        file.body
    );
    assert_eq!(
        c.get("vera", &format!("/v1/clearing/days/{date}/files/passwd"))
            .await
            .status,
        400
    );

    // Statistics in three forms, names as users read them.
    let csv = c
        .get("vera", &format!("/v1/statistics.csv?from={date}&to={date}"))
        .await;
    assert!(
        csv.body
            .contains("二七区 / Erqi,书店 / bookstore,3,26400,2640"),
        "{}",
        csv.body
    );
    let xlsx = c
        .get(
            "vera",
            &format!("/v1/statistics.xlsx?from={date}&to={date}"),
        )
        .await;
    assert_eq!(xlsx.status, 200);
    let svg = c.get("vera", "/v1/statistics.svg").await;
    assert!(svg.body.contains("<svg"), "{}", svg.body);
    assert_eq!(c.get("app", "/v1/statistics").await.status, 403);
    assert_eq!(c.get("vera", "/v1/statistics?from=2026").await.status, 400);

    // The audit figures are for auditors.
    assert_eq!(c.get("vera", "/v1/audit/figures").await.status, 403);
    let f = c.get("ada", "/v1/audit/figures").await.json();
    assert_eq!(f["released"]["fen"], 2640, "{f}");

    // Browsers: a password login, a cookie, and CSRF on writes.
    let login = http::request(
        c.addr,
        "POST",
        "/console/login",
        &["Content-Type: application/x-www-form-urlencoded".to_owned()],
        &format!(
            "username=vera&password={}&next=/console",
            PASSWORD.replace(' ', "+")
        ),
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let me = http::request(c.addr, "GET", "/v1/me", &[format!("Cookie: {cookie}")], "").await;
    let csrf = me.json()["csrf_token"].as_str().unwrap().to_owned();
    let form =
        |token: &str| format!("device_id=310100000088&kind=POS&merchant_id=1001&csrf={token}");
    let h = vec![
        format!("Cookie: {cookie}"),
        "Content-Type: application/x-www-form-urlencoded".to_owned(),
    ];
    let no = http::request(c.addr, "POST", "/v1/devices", &h, &form("wrong")).await;
    assert_eq!(
        (no.status, no.json()["reason"].clone()),
        (403, json!("CSRF")),
        "{}",
        no.body
    );
    let yes = http::request(c.addr, "POST", "/v1/devices", &h, &form(&csrf)).await;
    assert_eq!(yes.status, 303, "{}", yes.body);
    let bad_login = http::request(
        c.addr,
        "POST",
        "/console/login",
        &["Content-Type: application/x-www-form-urlencoded".to_owned()],
        "username=vera&password=wrong+password+entirely",
    )
    .await;
    assert_eq!(bad_login.status, 401);

    // Every refusal is in the audit log, and the chain holds.
    let log = c.get("root", "/v1/audit/log").await.json();
    let refused = log["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "forbidden")
        .count();
    assert!(refused >= 30, "{refused} forbidden rows");
    let v = c.get("ada", "/v1/audit/verify").await.json();
    assert_eq!(v["intact"], true, "{v}");

    // Every metric carries HELP, as promtool checks.
    if let Some(admin) = gw.admin_addr {
        promtool_check(admin).await;
    }
    wenxiao_gateway::clock::set_offset_ms(0);
    gw.shutdown().unwrap();
}

async fn promtool_check(admin: SocketAddr) {
    let (status, text) = http::get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match promtool {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not run ({e}): install Debian's prometheus package");
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// One test runs both stores in turn: it moves the process's clock past midnight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_api_with_every_role_on_both_stores() {
    console_api(TestEnv::sqlite()).await;
    console_api(TestEnv::postgres().await).await;
}
