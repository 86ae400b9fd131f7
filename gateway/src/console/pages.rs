//! The console's pages: HTML rendered on the server (maud), readable without JavaScript.
//! Each page shows what its JSON endpoint returns; its forms post to the same endpoints
//! (with the session's CSRF token) and come back to the page.

// `serde_json::Value["key"]` answers Null for a missing key or a non-object: it does not
// panic, which is what this lint guards against.
#![allow(clippy::indexing_slicing)]

use super::auth;
use super::fields::{path_date, query};
use super::handlers::{self as h, LIST_ROWS_MAX};
use super::{ConsoleState, SESSION_COOKIE, caller};
use crate::httpapi::ApiError;
use crate::store::console::StatRow;
use crate::store::console::{CommandStatus, ConsoleStore};
use crate::store::risk::RiskStore;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::{Value, json};

const STYLE: &str = "body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:0;color:#222}\
nav{background:#1d3557;padding:.5em 1em}nav a{color:#fff;margin-right:1em;text-decoration:none}\
main{padding:1em 2em}table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f1f1f1}\
td.n{text-align:right;font-variant-numeric:tabular-nums}form.inline{display:inline}\
.card{display:inline-block;border:1px solid #ccc;padding:.5em 1em;margin:0 1em 1em 0;min-width:12em}\
.big{font-size:1.6em}.warn{color:#a00}input,select{margin:.1em .3em}";

/// Fen as yuan with two decimals, for reading (the figures stay integer fen).
fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let f = fen.unsigned_abs();
    format!("{sign}{}.{:02}", f / 100, f % 100)
}

fn layout(title: &str, who: Option<&super::Caller>, body: Markup) -> HttpResponse {
    let page = html! {
        (DOCTYPE)
        html lang="zh-CN" {
            head {
                meta charset="utf-8";
                title { (title) " · 文旅消费补贴 Wenxiao" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/console" { "Dashboard" }
                    a href="/console/merchants" { "Merchants" }
                    a href="/console/devices" { "Devices" }
                    a href="/console/clearing" { "Clearing" }
                    a href="/console/awards" { "Awards" }
                    a href="/console/commands" { "Commands" }
                    a href="/console/cases" { "Cases" }
                    a href="/console/statistics" { "Statistics" }
                    a href="/console/audit" { "Audit log" }
                    a href="/console/users" { "Users" }
                    @if let Some(c) = who {
                        span style="color:#fff;float:right" {
                            (c.username) " (" (c.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")) ") "
                            form.inline method="post" action="/console/logout" {
                                (csrf(c))
                                button id="logout" { "Log out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page.into_string())
}

fn csrf(c: &super::Caller) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.csrf.clone().unwrap_or_default()); }
}

/// A one-button form posting `fields` (plus a reason box when `reason`) to `action`.
fn action_form(c: &super::Caller, action: &str, label: &str, id: &str, reason: bool) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(c))
            @if reason { input name="reason" placeholder="reason" required; }
            button id=(id) { (label) }
        }
    }
}

pub(crate) async fn login_page(req: HttpRequest) -> HttpResponse {
    let next = query(&req, "next").unwrap_or_else(|| "/console".to_owned());
    let body = html! {
        form method="post" action="/console/login" {
            input type="hidden" name="next" value=(next);
            p { label { "User " input id="username" name="username" autocomplete="username" required; } }
            p { label { "Password " input id="password" name="password" type="password" autocomplete="current-password" required; } }
            button id="login" { "Log in" }
        }
    };
    layout("Log in", None, body)
}

fn login_failed(status: StatusCode, message: &str) -> HttpResponse {
    let mut r = layout(
        "Log in",
        None,
        html! {
            p.warn id="error" { (message) }
            p { a href="/console/login" { "Try again" } }
        },
    );
    *r.status_mut() = status;
    r
}

/// `POST /console/login` (form `username`, `password`, `next`).
pub(crate) async fn login(
    state: web::Data<ConsoleState>,
    body: web::Form<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    let (Some(username), Some(password)) = (body.get("username"), body.get("password")) else {
        return login_failed(
            StatusCode::BAD_REQUEST,
            "username and password are required",
        );
    };
    let wait = std::time::Duration::from_millis(state.shared.config.console.login_wait_ms);
    let Ok(Ok(_permit)) = tokio::time::timeout(wait, state.logins.acquire()).await else {
        return login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            "too many logins at once: try again",
        );
    };
    let store = state.store();
    let name = username.clone();
    let user = match state.on_store(async move { store.user(name).await }).await {
        Ok(u) => u,
        Err(_) => return login_failed(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    };
    // A check runs for an unknown name and a token-only user too, so timing does not tell
    // them apart.
    let with_password = |u: &&crate::store::console::UserRow| u.password_hash != auth::NO_PASSWORD;
    let hash = user
        .as_ref()
        .filter(with_password)
        .map_or_else(dummy_hash, |u| u.password_hash.clone());
    let pw = password.clone();
    let ok = state
        .shared
        .store_rt
        .spawn_blocking(move || auth::verify_password(&pw, &hash))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|u| ok && u.active && with_password(&u)) else {
        tracing::warn!(user = %username, "console login refused");
        return login_failed(StatusCode::UNAUTHORIZED, "wrong user name or password");
    };
    let (secret, csrf) = (auth::new_secret(), auth::new_secret());
    let now = crate::clock::now_ms();
    let ttl = i64::try_from(state.shared.config.console.session_ttl_ms).unwrap_or(3_600_000);
    let store = state.store();
    let (sha, name) = (auth::secret_sha256(&secret), user.username.clone());
    let created = state
        .on_store(async move {
            store
                .create_session(sha, name.clone(), csrf, now, now + ttl)
                .await?;
            store
                .append_audit(
                    name,
                    "login".to_owned(),
                    "console".to_owned(),
                    json!({}),
                    now,
                )
                .await
        })
        .await;
    if created.is_err() {
        return login_failed(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
    }
    let next = body
        .get("next")
        .filter(|n| n.starts_with("/console") && !n.starts_with("/console/login"))
        .cloned()
        .unwrap_or_else(|| "/console".to_owned());
    let cookie = actix_web::cookie::Cookie::build(SESSION_COOKIE, secret)
        .path("/")
        .http_only(true)
        .secure(state.tls)
        .same_site(actix_web::cookie::SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::milliseconds(ttl))
        .finish();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header(("location", next))
        .finish()
}

fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("not a real password at all").unwrap_or_default())
        .clone()
}

/// `POST /console/logout`
pub(crate) async fn logout(state: web::Data<ConsoleState>, req: HttpRequest) -> HttpResponse {
    if let Some(c) = req.cookie(SESSION_COOKIE) {
        let store = state.store();
        let sha = auth::secret_sha256(c.value());
        let now = crate::clock::now_ms();
        let _ = state
            .on_store(async move { store.end_session(sha, now).await })
            .await;
    }
    let mut gone = actix_web::cookie::Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header(("location", "/console/login"))
        .finish()
}

fn hour_chart(hours: &[(i64, i64, i64)]) -> Markup {
    let max = hours.iter().map(|h| h.2).max().unwrap_or(0).max(1);
    let (w, hgt) = (24 * 20 + 40, 160);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(w) height=(hgt + 30) role="img" aria-label="subsidy by hour" {
            @for (hour, _, fen) in hours {
                @let bar = fen.saturating_mul(hgt) / max;
                rect x=(30 + hour * 20) y=(hgt - bar) width="16" height=(bar) fill="#457b9d" {
                    title { (format!("{hour}:00 · {} yuan", yuan(*fen))) }
                }
            }
            @for hour in (0..24).step_by(3) {
                text x=(30 + hour * 20) y=(hgt + 15) font-size="11" { (hour) }
            }
        }
    }
}

pub(crate) async fn dashboard(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let d = h::dashboard_figures(&state).await?;
    let (txns, subsidy) = d.hours.iter().fold((0, 0), |a, h| (a.0 + h.1, a.1 + h.2));
    let body = html! {
        p { "Business day " (d.business_date) " · figures read " (crate::clock::format_ms(d.read_at_ms)) }
        div.card { "Transactions today" div.big id="txns-today" { (txns) } }
        div.card { "Subsidy today" div.big { (yuan(subsidy)) " yuan" } }
        div.card { "Month " (d.month_key) " budget left"
            div.big id="month-left" data-fen=(d.month_left_fen) { (yuan(d.month_left_fen)) " yuan" }
            "used " span id="month-granted" data-fen=(d.month_granted_fen) { (yuan(d.month_granted_fen)) } " of " (yuan(d.month_cap_fen)) }
        div.card { "Programme budget left"
            div.big id="programme-left" data-fen=(d.programme_left_fen) { (yuan(d.programme_left_fen)) " yuan" }
            "used " span id="programme-granted" data-fen=(d.programme_granted_fen) { (yuan(d.programme_granted_fen)) } " of " (yuan(d.programme_cap_fen)) }
        div.card { "Open cases" div.big { (d.open_cases) } "alerts " (d.open_alerts) }
        h2 { "Subsidy by hour" }
        (hour_chart(&d.hours))
        table {
            tr { th { "hour" } th { "transactions" } th { "subsidy, yuan" } }
            @for (hour, n, fen) in &d.hours { tr { td { (hour) ":00" } td.n { (n) } td.n { (yuan(*fen)) } } }
        }
        h2 { "Sessions by device kind" }
        table {
            tr { th { "kind" } th { "sessions" } }
            @for (k, n) in &d.sessions { tr { td { (k) } td.n { (n) } } }
        }
        h2 { "Credits" }
        table {
            tr { th { "state" } th { "credits" } th { "yuan" } }
            @for (s, n, fen) in &d.credits { tr { td { (s) } td.n { (n) } td.n { (yuan(*fen)) } } }
        }
    };
    Ok(layout("Dashboard", Some(&c), body))
}

pub(crate) async fn merchants(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let store = state.store();
    let apps = state
        .on_store(async move { store.applications(LIST_ROWS_MAX).await })
        .await?;
    let ms = h::merchant_views(&state);
    let body = html! {
        h2 { "Applications" }
        table {
            tr { th { "id" } th { "name" } th { "category" } th { "district" } th { "facts" } th { "status" } th { "" } }
            @for a in &apps {
                tr {
                    td { (a.application_id) } td { (a.name) }
                    td { (h::category_label(a.category)) } td { (h::district_label(a.district)) }
                    td { code { (a.facts.to_string()) } }
                    td { (match a.status { 1 => "applied", 2 => "recommended by the district", 3 => "signed", _ => "refused" }) }
                    td {
                        @if a.status == 1 { (action_form(&c, &format!("/v1/merchants/applications/{}/recommendation", a.application_id), "Recommend (district)", &format!("recommend-{}", a.application_id), false)) }
                        @if a.status == 2 { (action_form(&c, &format!("/v1/merchants/applications/{}/signing", a.application_id), "Propose signing", &format!("sign-{}", a.application_id), true)) }
                    }
                }
            }
        }
        h3 { "New application" }
        form method="post" action="/v1/merchants/applications" {
            (csrf(&c))
            input name="name" placeholder="name" required;
            select name="category" { @for k in crate::registry::Category::ALL { option value=(k.code()) { (k.label()) } } }
            select name="district" { @for d in crate::registry::District::ALL { option value=(d.code()) { (d.label()) } } }
            input name="licence_no" placeholder="licence no.";
            input name="years_without_violations" placeholder="years without violations";
            input name="annual_book_sales_fen" placeholder="annual book sales, fen (bookstores)";
            input name="annual_box_office_fen" placeholder="annual box office, fen (cinemas)";
            input name="shows_per_year" placeholder="shows per year (venues, organizers)";
            button { "Apply" }
        }
        h2 { "Merchants" }
        table {
            tr { th { "id" } th { "name" } th { "category" } th { "district" } th { "state" } th { "" } }
            @for m in &ms {
                tr {
                    td { (m.merchant_id) } td { (m.name) } td { (m.category) } td { (m.district) }
                    td { @if m.active { "active" } @else { span.warn { "suspended" } } }
                    td {
                        @if m.active { (action_form(&c, &format!("/v1/merchants/{}/suspension", m.merchant_id), "Propose suspension", &format!("suspend-{}", m.merchant_id), true)) }
                        @else { (action_form(&c, &format!("/v1/merchants/{}/reinstatement", m.merchant_id), "Propose reinstatement", &format!("reinstate-{}", m.merchant_id), true)) }
                    }
                }
            }
        }
    };
    Ok(layout("Merchants", Some(&c), body))
}

pub(crate) async fn devices(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let v = h::device_views(&state, &req).await?;
    let rows = v["devices"].as_array().cloned().unwrap_or_default();
    let body = html! {
        p { "This node's hot-list version: " (v["hotlist_version"]) }
        form method="post" action="/v1/devices" {
            (csrf(&c))
            input name="device_id" placeholder="device id" required;
            select name="kind" { option { "POS" } option { "KIOSK" } option { "SIGNIN_READER" } }
            input name="merchant_id" placeholder="merchant id" required;
            button { "Register" }
        }
        table {
            tr { th { "device" } th { "kind" } th { "merchant" } th { "active" } th { "online here" } th { "hot-list version" } th { "" } }
            @for d in &rows {
                @let id = d["device_id"].as_u64().unwrap_or(0);
                tr {
                    td { (id) } td { (d["kind"].as_str().unwrap_or("")) } td { (d["merchant_id"]) }
                    td { (d["active"]) } td { (d["online"]) } td { (d["hotlist_version"]) }
                    td {
                        @if d["active"].as_bool() == Some(true) { (action_form(&c, &format!("/v1/devices/{id}/disable"), "Disable", &format!("disable-{id}"), false)) }
                        @else { (action_form(&c, &format!("/v1/devices/{id}/enable"), "Enable", &format!("enable-{id}"), false)) }
                    }
                }
            }
        }
        @if let Some(last) = rows.last() { a href=(format!("/console/devices?after={}", last["device_id"])) { "Next page" } }
    };
    Ok(layout("Devices", Some(&c), body))
}

pub(crate) async fn clearing(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    if let Some(day) = query(&req, "day") {
        let Some(day) = day
            .parse::<u32>()
            .ok()
            .filter(|d| wenxiao_protocol::BusinessDate::new(*d).is_ok())
        else {
            return Err(crate::httpapi::bad_field(
                "day",
                "a calendar date yyyymmdd is expected",
            ));
        };
        return Ok(HttpResponse::SeeOther()
            .insert_header(("location", format!("/console/clearing/{day}")))
            .finish());
    }
    let store = state.store();
    let days = state
        .on_store(async move { store.clearing_days(LIST_ROWS_MAX).await })
        .await?;
    let body = html! {
        form method="get" action="/console/clearing" {
            "Day " input id="day" name="day" placeholder="yyyymmdd" required;
            button id="open-day" { "Open" }
        }
        table {
            tr { th { "day" } th { "transactions" } th { "subsidy, yuan" } th { "credits" } th { "credited, yuan" } th { "state" } th { "seal" } }
            @for d in &days {
                tr {
                    td { a href=(format!("/console/clearing/{}", d.business_date)) id=(format!("day-{}", d.business_date)) { (d.business_date) } }
                    td.n { (d.txn_count) } td.n { (yuan(d.subsidy_fen)) } td.n { (d.credit_count) } td.n { (yuan(d.credit_fen)) }
                    td { @if d.approved { "approved" } @else { "awaiting approval" } }
                    td { code { (d.seal_sha256.as_deref().map_or("", |s| s.get(..16).unwrap_or(s))) } }
                }
            }
        }
    };
    Ok(layout("Clearing days", Some(&c), body))
}

pub(crate) async fn clearing_day(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let date = path_date(&req)?;
    let v = match h::day_view(&state, date).await {
        Ok(v) => v,
        Err(e) if e.status() == StatusCode::NOT_FOUND => {
            let body = html! {
                p { (date) " is not cleared." }
                (action_form(&c, &format!("/v1/clearing/days/{}/run", date.get()), "Run clearing", "run", false))
            };
            return Ok(layout(&format!("Clearing {date}"), Some(&c), body));
        }
        Err(e) => return Err(e),
    };
    let fen = |k: &str| v[k].as_i64().unwrap_or(0);
    let ct = &v["control_totals"];
    let pending = &v["pending_command"];
    let body = html! {
        table {
            tr { th { "transactions" } td.n { (fen("txn_count")) } }
            tr { th { "subsidy, yuan" } td.n { (yuan(fen("subsidy_fen"))) } }
            tr { th { "credits" } td.n id="credit-count" { (fen("credit_count")) } }
            tr { th { "credited, yuan" } td.n id="credit-fen" data-fen=(fen("credit_fen")) { (yuan(fen("credit_fen"))) } }
            tr { th { "loaded so far" } td.n { (fen("loaded_count")) " · " (yuan(fen("loaded_fen"))) } }
            tr { th { "state" } td id="state" { @if v["approved"].as_bool() == Some(true) { "approved" } @else { "awaiting approval" } } }
            tr { th { "seal (SHA-256)" } td { code id="seal" { (v["seal_sha256"].as_str().unwrap_or("—")) } } }
        }
        h2 { "Control totals" }
        table {
            tr { th { "card credits file total, yuan" } td.n { (yuan(ct["card_credits_fen"].as_i64().unwrap_or(0))) } td { @if ct["card_credits_match_run"].as_bool() == Some(true) { "matches the run" } @else { span.warn { "DOES NOT MATCH THE RUN" } } } }
            tr { th { "merchant subsidy, yuan" } td.n { (yuan(ct["merchant_subsidy_fen"].as_i64().unwrap_or(0))) } td { @if ct["statistics_match_merchants"].as_bool() == Some(true) { "matches the statistics" } @else { span.warn { "DOES NOT MATCH THE STATISTICS" } } } }
            tr { th { "merchant sales / refunds, yuan" } td.n { (yuan(ct["merchant_sales_fen"].as_i64().unwrap_or(0))) " / " (yuan(ct["merchant_refunds_fen"].as_i64().unwrap_or(0))) } td {} }
        }
        h2 { "Approval" }
        @if v["approved"].as_bool() == Some(true) {
            p { "Approved; its credits are released." }
        } @else if pending.is_object() {
            @let id = pending["command_id"].as_i64().unwrap_or(0);
            p id="pending" { "Proposed by " b { (pending["proposed_by"].as_str().unwrap_or("")) } ": " (pending["proposal_reason"].as_str().unwrap_or("")) }
            (action_form(&c, &format!("/v1/commands/clearing/{id}/approve"), "Approve", "approve", true))
            " "
            (action_form(&c, &format!("/v1/commands/clearing/{id}/reject"), "Reject", "reject", true))
        } @else {
            (action_form(&c, &format!("/v1/clearing/days/{}/approval", date.get()), "Propose approval", "propose", true))
        }
        h2 { "Settlement files" }
        ul {
            @for f in h::FILES {
                li { a href=(format!("/v1/clearing/days/{}/files/{f}", date.get())) id=(format!("file-{}", f.trim_end_matches(".csv"))) { (f) } }
            }
        }
    };
    Ok(layout(&format!("Clearing {date}"), Some(&c), body))
}

pub(crate) async fn awards(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let store = state.store();
    let a = state
        .on_store(async move { store.awards(LIST_ROWS_MAX).await })
        .await?;
    let body = html! {
        form method="post" action="/v1/awards" {
            (csrf(&c))
            input name="organizer" placeholder="organizer's merchant id" required;
            input name="show_date" placeholder="show date yyyymmdd" required;
            select name="kind" { option value="NATIONAL_TROUPE" { "national-level troupe" } option value="NATIONAL_AWARD_WORK" { "national-award work" } }
            input name="evidence" placeholder="evidence (document references)" required;
            button { "Enter award" }
        }
        table {
            tr { th { "id" } th { "organizer" } th { "show" } th { "kind" } th { "yuan" } th { "evidence" } th { "state" } th { "" } }
            @for w in &a {
                tr {
                    td { (w.award_id) } td { (w.merchant_id) } td { (w.show_date) }
                    td { (if w.kind == 1 { "national-level troupe" } else { "national-award work" }) }
                    td.n { (yuan(w.amount_fen)) } td { (w.evidence) }
                    td { @if w.approved { "approved" } @else { "recorded" } }
                    td { @if !w.approved { (action_form(&c, &format!("/v1/awards/{}/approval", w.award_id), "Propose approval", &format!("award-{}", w.award_id), true)) } }
                }
            }
        }
    };
    Ok(layout("Organizer awards", Some(&c), body))
}

pub(crate) async fn commands(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let store = state.store();
    let list = state
        .on_store(async move { store.list_commands(None, LIST_ROWS_MAX).await })
        .await?;
    let body = html! {
        table {
            tr { th { "id" } th { "kind" } th { "target" } th { "arguments" } th { "proposed by" } th { "reason" } th { "state" } th { "decided by" } th { "outcome" } th { "" } }
            @for k in &list {
                tr id=(format!("command-{}", k.command_id)) {
                    td { (k.command_id) } td { (k.kind) } td { (k.target) } td { code { (k.args.to_string()) } }
                    td { (k.proposed_by) } td { (k.proposal_reason) }
                    td { (format!("{:?}", k.status).to_uppercase()) }
                    td { (k.decided_by.as_deref().unwrap_or("")) } td { (k.outcome.as_deref().unwrap_or("")) }
                    td {
                        @if matches!(k.status, CommandStatus::Pending | CommandStatus::Approving) {
                            (action_form(&c, &format!("/v1/commands/{}/{}/approve", k.kind, k.command_id), "Approve", &format!("approve-{}", k.command_id), true))
                        }
                        @if k.status == CommandStatus::Pending {
                            (action_form(&c, &format!("/v1/commands/{}/{}/reject", k.kind, k.command_id), "Reject", &format!("reject-{}", k.command_id), true))
                        }
                    }
                }
            }
        }
        h2 { "Propose" }
        form method="post" action="/v1/blacklist" {
            (csrf(&c))
            "Blacklist: card " input name="card_no" required;
            select name="listed" { option value="true" { "list" } option value="false" { "take off" } }
            input name="reason" placeholder="reason" required;
            button { "Propose" }
        }
        form method="post" action="/v1/budget" {
            (csrf(&c))
            "Budget: " select name="budget" { option { "monthly" } option { "programme" } }
            " cap, fen " input name="cap_fen" required;
            input name="reason" placeholder="reason" required;
            button { "Propose" }
        }
    };
    Ok(layout("Commands", Some(&c), body))
}

pub(crate) async fn cases(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let store = state.store();
    let list = state
        .on_store(async move { store.list_cases(None, LIST_ROWS_MAX).await })
        .await?;
    let v = serde_json::to_value(&list).unwrap_or(Value::Null);
    let rows = v.as_array().cloned().unwrap_or_default();
    let body = html! {
        table {
            tr { th { "case" } th { "subject" } th { "status" } th { "band" } th { "assignee" } th { "" } }
            @for k in &rows {
                @let id = k["case_id"].as_i64().unwrap_or(0);
                tr {
                    td { (id) } td { (k["subject"]) } td { (k["status"].as_str().unwrap_or("")) }
                    td { (k["band"]) } td { (k["assignee"].as_str().unwrap_or("")) }
                    td {
                        (action_form(&c, &format!("/v1/cases/{id}/assign"), "Assign to me", &format!("assign-{id}"), false))
                        (action_form(&c, &format!("/v1/cases/{id}/dismiss"), "Dismiss", &format!("dismiss-{id}"), true))
                        (action_form(&c, &format!("/v1/cases/{id}/confirm"), "Propose confirm", &format!("confirm-{id}"), true))
                        (action_form(&c, &format!("/v1/cases/{id}/lift"), "Propose lift", &format!("lift-{id}"), true))
                    }
                }
            }
        }
    };
    Ok(layout("Cases", Some(&c), body))
}

/// Subsidy by district and category as an SVG bar chart (one bar per line).
pub(crate) fn subsidy_chart(rows: &[StatRow]) -> String {
    let max = rows.iter().map(|r| r.subsidy_fen).max().unwrap_or(0).max(1);
    let width = 420_i64;
    let height = i64::try_from(rows.len()).unwrap_or(0) * 22 + 20;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width + 420) height=(height) role="img" aria-label="subsidy by district and category" {
            @for (i, r) in rows.iter().enumerate() {
                @let y = i64::try_from(i).unwrap_or(0) * 22 + 10;
                @let w = r.subsidy_fen.saturating_mul(width) / max;
                text x="0" y=(y + 12) font-size="12" { (h::district_label(r.district)) " · " (h::category_label(r.category)) }
                rect x="300" y=(y) width=(w.max(1)) height="16" fill="#e63946" {}
                text x=(305 + w) y=(y + 12) font-size="12" { (yuan(r.subsidy_fen)) }
            }
        }
    }
    .into_string()
}

pub(crate) async fn statistics(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let (from, to, rows) = h::stat_rows(&state, &req).await?;
    let q = format!("from={}&to={}", from.get(), to.get());
    let body = html! {
        form method="get" action="/console/statistics" {
            "From " input name="from" value=(from.get()); " to " input name="to" value=(to.get());
            button { "Show" }
        }
        p { a href=(format!("/v1/statistics.csv?{q}")) { "CSV" } " · " a href=(format!("/v1/statistics.xlsx?{q}")) { "XLSX" } " · " a href=(format!("/v1/statistics.svg?{q}")) { "SVG" } }
        (PreEscaped(subsidy_chart(&rows)))
        table {
            tr { th { "district" } th { "category" } th { "transactions" } th { "sales, yuan" } th { "subsidy, yuan" } }
            @for r in &rows {
                tr { td { (h::district_label(r.district)) } td { (h::category_label(r.category)) } td.n { (r.txn_count) } td.n { (yuan(r.sales_fen)) } td.n { (yuan(r.subsidy_fen)) } }
            }
        }
    };
    Ok(layout("Statistics", Some(&c), body))
}

pub(crate) async fn audit(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let before = query(&req, "before").and_then(|s| s.parse::<i64>().ok());
    let store = state.store();
    let rows = state
        .on_store(async move { store.audit_page(before, 200).await })
        .await?;
    let body = html! {
        p { "Each row's hash covers the previous row's; " a href="/v1/audit/verify" { "verify the chain" } "." }
        table {
            tr { th { "seq" } th { "at" } th { "who" } th { "what" } th { "on" } th { "detail" } th { "hash" } }
            @for r in &rows {
                tr { td { (r.seq) } td { (crate::clock::format_ms(r.at_ms)) } td { (r.actor) } td { (r.action) } td { (r.subject) } td { code { (r.detail) } } td { code { (r.hash.get(..12).unwrap_or("")) } } }
            }
        }
        @if let Some(last) = rows.last() { a href=(format!("/console/audit?before={}", last.seq)) { "Older" } }
    };
    Ok(layout("Audit log", Some(&c), body))
}

pub(crate) async fn users(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    let store = state.store();
    let list = state
        .on_store(async move { store.list_users().await })
        .await?;
    let body = html! {
        p { "Users are added on the server: " code { "wenxiao-gateway users add NAME --roles auditor" } "." }
        table {
            tr { th { "user" } th { "roles" } th { "token" } th { "" } }
            @for u in &list {
                tr {
                    td { (u.username) } td { (u.roles.join(", ")) } td { (if u.has_token { "issued" } else { "" }) }
                    td {
                        form.inline method="post" action=(format!("/v1/users/{}/roles", u.username)) {
                            (csrf(&c))
                            input name="roles" value=(u.roles.join(","));
                            button { "Set roles" }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Users", Some(&c), body))
}
