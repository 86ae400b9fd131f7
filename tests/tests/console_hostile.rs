//! The console API against hostile and careless callers, on both stores: two approvers of
//! one command at once, an approval racing a rejection, an approval cut between its action
//! and its record (a trigger in the store fails the record), a login flood past
//! `logins_concurrent_max`, a body past `BODY_BYTES_MAX`, a token-only user trying a
//! password, and an early close the configuration does not allow.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use wenxiao_gateway::config::StoreKind;
use wenxiao_gateway::store::Store;
use wenxiao_tests::env::TestEnv;
use wenxiao_tests::http::{self, Answer};

const PASSWORD: &str = "a long enough password";

struct Console {
    addr: SocketAddr,
    tokens: HashMap<&'static str, String>,
}

impl Console {
    async fn post(&self, user: &str, path: &str, body: Value) -> Answer {
        let h = [
            format!("Authorization: Bearer {}", self.tokens[user]),
            "Content-Type: application/json".to_owned(),
        ];
        http::request(self.addr, "POST", path, &h, &body.to_string()).await
    }

    async fn status_of(&self, user: &str, id: i64) -> String {
        let h = [format!("Authorization: Bearer {}", self.tokens[user])];
        let a = http::request(self.addr, "GET", &format!("/v1/commands/{id}"), &h, "").await;
        a.json()["status"].as_str().unwrap().to_owned()
    }

    async fn propose_listing(&self, card: u64) -> i64 {
        let p = self
            .post(
                "rita",
                "/v1/blacklist",
                json!({"card_no": card, "listed": true, "reason": "reported stolen"}),
            )
            .await;
        assert_eq!(p.status, 200, "{}", p.body);
        p.json()["command_id"].as_i64().unwrap()
    }
}

/// Makes a table's record step fail: the store refuses any UPDATE that sets a command's
/// outcome (the decision), but not its claim.
async fn cut_decisions(env: &TestEnv, on: bool) {
    match env.config.store.kind {
        StoreKind::Postgres => {
            let c = wenxiao_tests::pg_client(&env.config.store.postgres_url).await;
            let sql = if on {
                "CREATE FUNCTION cut_decision() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'cut before the record'; END $$; \
                 CREATE TRIGGER cut BEFORE UPDATE OF outcome ON console_commands \
                 FOR EACH ROW EXECUTE FUNCTION cut_decision();"
            } else {
                "DROP TRIGGER cut ON console_commands; DROP FUNCTION cut_decision();"
            };
            c.batch_execute(sql).await.unwrap();
        }
        StoreKind::Sqlite => {
            let c = rusqlite::Connection::open(env.config.sqlite_path()).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let sql = if on {
                "CREATE TRIGGER cut BEFORE UPDATE OF outcome ON console_commands \
                 BEGIN SELECT RAISE(ABORT, 'cut before the record'); END;"
            } else {
                "DROP TRIGGER cut;"
            };
            c.execute_batch(sql).unwrap();
        }
    }
}

async fn hostile(mut env: TestEnv) {
    env.config.console.logins_concurrent_max = 1;
    env.config.console.login_wait_ms = 1;
    let config = env.write_config_file(0);
    let bin = env!("CARGO_BIN_EXE_gateway-under-test");
    let mut tokens = HashMap::new();
    for (name, roles) in [
        ("ada", "auditor"),
        ("abe", "auditor"),
        ("rita", "risk"),
        ("rick", "risk"),
        ("ros", "risk"),
    ] {
        wenxiao_tests::cli::run(
            bin,
            &config,
            &[("PW", PASSWORD)],
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
        tokens.insert(
            name,
            wenxiao_tests::cli::run(bin, &config, &[], &["users", "token", name])
                .trim()
                .to_owned(),
        );
    }
    wenxiao_tests::cli::run(
        bin,
        &config,
        &[],
        &["users", "add", "bot", "--roles", "auditor", "--no-password"],
    );
    tokens.insert(
        "bot",
        wenxiao_tests::cli::run(bin, &config, &[], &["users", "token", "bot"])
            .trim()
            .to_owned(),
    );
    let gw = env.start();
    let c = Console {
        addr: gw.console_addr.unwrap(),
        tokens,
    };
    let store = wenxiao_gateway::server::open_store(&env.config).unwrap();
    let version = || async { store.hotlist_head().await.unwrap().version };

    // Two approvers at once: one is recorded, the other refused; the card is listed in
    // one new hot-list version.
    let v0 = version().await;
    let id = c.propose_listing(9_100_001).await;
    let path = format!("/v1/commands/blacklist/{id}/approve");
    let (a, b) = tokio::join!(
        c.post("rick", &path, json!({"reason": "agreed"})),
        c.post("ros", &path, json!({"reason": "agreed too"})),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", a.body, b.body);
    assert_eq!(c.status_of("rick", id).await, "APPROVED");
    assert_eq!(version().await, v0 + 1);

    // An approval racing a rejection: whichever claims first wins; if the approval did,
    // its action ran once and no rejection is recorded after it.
    for round in 0..6u64 {
        let before = version().await;
        let id = c.propose_listing(9_200_000 + round).await;
        let approve = format!("/v1/commands/blacklist/{id}/approve");
        let reject = format!("/v1/commands/blacklist/{id}/reject");
        let (a, r) = tokio::join!(
            c.post("rick", &approve, json!({"reason": "yes"})),
            c.post("ros", &reject, json!({"reason": "no"})),
        );
        let status = c.status_of("rick", id).await;
        match (a.status, r.status) {
            (200, 409) => {
                assert_eq!(status, "APPROVED");
                assert_eq!(version().await, before + 1);
            }
            (409, 200) => {
                assert_eq!(status, "REJECTED");
                assert_eq!(
                    version().await,
                    before,
                    "a rejected listing changed the list"
                );
            }
            other => panic!("round {round}: {other:?}: {} / {}", a.body, r.body),
        }
    }

    // Cut between the action and its record: the card is listed, the command stays
    // APPROVING and cannot be rejected; approving it again completes it, once.
    let before = version().await;
    let id = c.propose_listing(9_300_001).await;
    cut_decisions(&env, true).await;
    let cut = c
        .post(
            "rick",
            &format!("/v1/commands/blacklist/{id}/approve"),
            json!({"reason": "agreed"}),
        )
        .await;
    assert!(cut.status >= 500, "{} {}", cut.status, cut.body);
    assert_eq!(c.status_of("rick", id).await, "APPROVING");
    assert_eq!(version().await, before + 1, "the action ran before the cut");
    cut_decisions(&env, false).await;
    let rj = c
        .post(
            "ros",
            &format!("/v1/commands/blacklist/{id}/reject"),
            json!({"reason": "too late"}),
        )
        .await;
    assert_eq!(rj.status, 409, "{}", rj.body);
    assert_eq!(rj.json()["reason"], "NOT_PENDING", "{}", rj.body);
    let own = c
        .post(
            "rita",
            &format!("/v1/commands/blacklist/{id}/approve"),
            json!({"reason": "mine"}),
        )
        .await;
    assert_eq!(own.json()["reason"], "OWN_PROPOSAL", "{}", own.body);
    let again = c
        .post(
            "ros",
            &format!("/v1/commands/blacklist/{id}/approve"),
            json!({"reason": "completing"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(c.status_of("rick", id).await, "APPROVED");
    assert_eq!(version().await, before + 1, "the action ran twice");
    // No second proposal while one was approving; a new one after it is fine.
    let dup = c.propose_listing(9_300_001).await;
    assert!(dup > id);

    // A body past BODY_BYTES_MAX is refused, and nothing is written.
    let huge = "x".repeat(wenxiao_gateway::console::BODY_BYTES_MAX + 1);
    let big = c
        .post(
            "rita",
            "/v1/blacklist",
            json!({"card_no": 9_400_001u64, "listed": true, "reason": huge}),
        )
        .await;
    assert_eq!(big.status, 413, "{}", big.body);
    let after = c.propose_listing(9_400_001).await;
    assert_eq!(after, dup + 1, "the refused body left a command behind");

    // An early close is refused unless the configuration allows it; a bad flag is 400.
    let today = wenxiao_gateway::clock::business_date(wenxiao_gateway::clock::now_ms()).unwrap();
    let run = format!("/v1/clearing/days/{}/run", today.get());
    let early = c.post("ada", &run, json!({"early": true})).await;
    assert_eq!(early.status, 409, "{}", early.body);
    assert_eq!(early.json()["reason"], "EARLY_CLOSE_OFF", "{}", early.body);
    let not_ended = c.post("ada", &run, json!({})).await;
    assert_eq!(
        not_ended.json()["reason"],
        "DAY_NOT_ENDED",
        "{}",
        not_ended.body
    );
    let bad = c.post("ada", &run, json!({"early": "soon"})).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["field"], "early", "{}", bad.body);

    // The purchase history's range: at most 62 days, and not backwards.
    let get = |path: String| {
        let h = [format!("Authorization: Bearer {}", c.tokens["ada"])];
        async move { http::request(c.addr, "GET", &path, &h, "").await }
    };
    let t = today.get();
    let ok = get(format!("/v1/statistics/merchant-days?to={t}")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let from = wenxiao_gateway::clock::business_date(
        wenxiao_gateway::clock::day_end_ms(today) - 61 * 86_400_000 - 1,
    )
    .unwrap();
    let at_bound = get(format!(
        "/v1/statistics/merchant-days?from={}&to={t}",
        from.get()
    ))
    .await;
    assert_eq!(at_bound.status, 200, "61 days before: {}", at_bound.body);
    let past = wenxiao_gateway::clock::previous_day(from).unwrap();
    let too_long = get(format!(
        "/v1/statistics/merchant-days?from={}&to={t}",
        past.get()
    ))
    .await;
    assert_eq!(too_long.status, 400, "{}", too_long.body);
    assert_eq!(too_long.json()["field"], "from", "{}", too_long.body);
    let backwards = get(format!(
        "/v1/statistics/merchant-days?from={t}&to={}",
        past.get()
    ))
    .await;
    assert_eq!(backwards.status, 400, "{}", backwards.body);
    let garbage = get("/v1/statistics/merchant-days?from=2026-13-01".to_owned()).await;
    assert_eq!(garbage.json()["field"], "from", "{}", garbage.body);

    // A token-only user works with its token and never logs in with a password, not even
    // the one the unknown-user check compares against.
    let me = http::request(
        c.addr,
        "GET",
        "/v1/me",
        &[format!("Authorization: Bearer {}", c.tokens["bot"])],
        "",
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    for pw in ["", "not a real password at all", "!token-only", PASSWORD] {
        let l = login(c.addr, "bot", pw).await;
        assert_eq!(l.status, 401, "bot logged in with {pw:?}");
    }

    // A login flood: one password check at a time, the others wait 1 ms and get 429;
    // at least the first gets in, and nothing fails otherwise.
    let flood =
        futures_util::future::join_all((0..12).map(|_| login(c.addr, "ada", PASSWORD))).await;
    let ok = flood.iter().filter(|a| a.status == 303).count();
    let busy = flood.iter().filter(|a| a.status == 429).count();
    assert!(
        ok >= 1 && busy >= 1 && ok + busy == flood.len(),
        "{:?}",
        flood.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    gw.shutdown().unwrap();
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> Answer {
    let form = |v: &str| v.replace('%', "%25").replace('!', "%21").replace(' ', "+");
    let body = format!("username={}&password={}", form(user), form(password));
    http::request(
        addr,
        "POST",
        "/console/login",
        &["Content-Type: application/x-www-form-urlencoded".to_owned()],
        &body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_console_callers_on_sqlite() {
    hostile(TestEnv::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_console_callers_on_postgres() {
    hostile(TestEnv::postgres().await).await;
}
