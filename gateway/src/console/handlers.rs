//! The JSON endpoints. The pages ([`super::pages`]) render what these return.

use super::auth::{Role, parse_roles};
use super::commands::respond;
use super::fields::{Fields, TEXT_BYTES_MAX, path_date, path_int, query};
use super::{ConsoleState, caller};
use crate::httpapi::{ApiError, answer, bad_field};
use crate::registry::{Category, District};
use crate::store::console::{ConsoleStore, StatRow};
use crate::store::risk::{CaseAction, CaseStatus, CaseStep, RiskStore};
use crate::store::{AwardInput, Store, StoreAudit};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use wenxiao_protocol::BusinessDate;

/// Most rows a list returns.
pub(crate) const LIST_ROWS_MAX: i64 = 1_000;

pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "status": "REJECTED", "reason": "NOT_FOUND",
        "message": format!("no route {} {}", req.method(), req.path()),
    }))
}

pub(crate) async fn openapi_document() -> HttpResponse {
    HttpResponse::Ok().json(super::routes::openapi())
}

pub(crate) async fn me(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let c = caller(&req)?;
    Ok(HttpResponse::Ok().json(json!({
        "username": c.username,
        "roles": c.roles,
        "csrf_token": c.csrf,
    })))
}

fn today() -> Result<BusinessDate, ApiError> {
    crate::clock::business_date(crate::clock::now_ms())
        .ok_or_else(|| answer(StatusCode::SERVICE_UNAVAILABLE, "CLOCK", json!({})))
}

/// The dashboard's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Dashboard {
    pub(crate) business_date: u32,
    pub(crate) read_at_ms: i64,
    /// (hour 0–23, stored txns, subsidy fen)
    pub(crate) hours: Vec<(i64, i64, i64)>,
    pub(crate) month_key: i32,
    pub(crate) month_cap_fen: i64,
    pub(crate) month_granted_fen: i64,
    pub(crate) month_left_fen: i64,
    pub(crate) programme_cap_fen: i64,
    pub(crate) programme_granted_fen: i64,
    pub(crate) programme_left_fen: i64,
    /// (device kind, sessions)
    pub(crate) sessions: Vec<(String, u64)>,
    /// (state, count, fen)
    pub(crate) credits: Vec<(String, i64, i64)>,
    pub(crate) open_alerts: i64,
    pub(crate) open_cases: i64,
}

/// The caps in force: the policy's, or an approved override's.
pub(crate) async fn caps(state: &ConsoleState) -> Result<(i64, i64), ApiError> {
    let store = state.store();
    let overrides = state
        .on_store(async move { store.budget_overrides().await })
        .await?;
    let pick = |name: &str, default: i64| {
        overrides
            .iter()
            .find(|(n, _)| n == name)
            .map_or(default, |(_, v)| *v)
    };
    Ok((
        pick("monthly", state.shared.policy.monthly_cap().get()),
        pick("programme", state.shared.policy.programme_total().get()),
    ))
}

/// The dashboard's figures, held for `console.dashboard_refresh_ms` and refreshed behind
/// the readers (see [`super::cache::Fresh`]).
pub(crate) async fn dashboard_figures(
    state: &web::Data<ConsoleState>,
) -> Result<Arc<Dashboard>, ApiError> {
    let refresh = i64::try_from(state.shared.config.console.dashboard_refresh_ms).unwrap_or(0);
    let s = web::Data::clone(state);
    Arc::clone(&state.dashboard)
        .get(refresh, move || async move { read_dashboard(&s).await })
        .await
}

async fn read_dashboard(state: &ConsoleState) -> Result<Dashboard, ApiError> {
    let now = crate::clock::now_ms();
    let date = today()?;
    let day_start = crate::clock::day_end_ms(date) - 86_400_000;
    let store = state.store();
    let f = state
        .on_store(async move { store.dashboard(Some((date, day_start))).await })
        .await?;
    let (month_cap, programme_cap) = caps(state).await?;
    let month_key = i32::try_from(date.get() / 100).unwrap_or(0);
    let granted = |key: i32| {
        f.budgets
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, g)| *g)
    };
    let (mg, pg) = (
        granted(month_key),
        granted(crate::store::PROGRAMME_BUDGET_KEY),
    );
    let mut sessions: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    if let Ok(r) = state.shared.registry.read() {
        for s in state.shared.sessions.iter() {
            let kind = r
                .device(*s.key())
                .map_or("unknown".to_owned(), |d| d.kind.name().to_owned());
            *sessions.entry(kind).or_default() += 1;
        }
    }
    Ok(Dashboard {
        business_date: date.get(),
        read_at_ms: now,
        hours: f.hours,
        month_key,
        month_cap_fen: month_cap,
        month_granted_fen: mg,
        month_left_fen: (month_cap - mg).max(0),
        programme_cap_fen: programme_cap,
        programme_granted_fen: pg,
        programme_left_fen: (programme_cap - pg).max(0),
        sessions: sessions.into_iter().collect(),
        credits: f.credits,
        open_alerts: f.open_alerts,
        open_cases: f.open_cases,
    })
}

pub(crate) async fn dashboard(state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(&*dashboard_figures(&state).await?))
}

/// A merchant as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MerchantView {
    pub(crate) merchant_id: i64,
    pub(crate) name: String,
    pub(crate) category: &'static str,
    pub(crate) district: &'static str,
    pub(crate) active: bool,
}

pub(crate) fn merchant_views(state: &ConsoleState) -> Vec<MerchantView> {
    let Ok(r) = state.shared.registry.read() else {
        return Vec::new();
    };
    let mut v: Vec<MerchantView> = r
        .merchants()
        .iter()
        .map(|m| MerchantView {
            merchant_id: m.merchant_id.0,
            name: m.name.clone(),
            category: m.category.label(),
            district: m.district.label(),
            active: m.active,
        })
        .collect();
    v.sort_by_key(|m| m.merchant_id);
    v
}

pub(crate) async fn merchants(state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let store = state.store();
    let apps = state
        .on_store(async move { store.applications(LIST_ROWS_MAX).await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "merchants": merchant_views(&state),
        "applications": apps,
    })))
}

/// The eligibility facts each category's application must carry (the seed's onboarding
/// conditions): (field, what it is, minimum).
pub(crate) fn facts_of(category: Category) -> &'static [(&'static str, &'static str, i64)] {
    match category {
        Category::Bookstore => &[
            ("licence_no", "business licence number", 0),
            ("years_without_violations", "years without violations", 2),
            ("annual_book_sales_fen", "annual book sales, fen", 1),
        ],
        Category::Cinema => &[
            ("licence_no", "film screening licence number", 0),
            ("years_without_violations", "years without violations", 2),
            ("annual_box_office_fen", "annual box office, fen", 1),
        ],
        Category::PerformanceVenue | Category::Organizer => &[
            ("licence_no", "performance licence number", 0),
            ("years_without_violations", "years without violations", 2),
            ("shows_per_year", "shows per year", 1),
        ],
        Category::PublicVenue | Category::ServiceOutlet => {
            &[("licence_no", "registration number", 0)]
        }
    }
}

fn coded<T: Copy>(f: &Fields, field: &str, all: &[T], code: fn(T) -> i16) -> Result<T, ApiError> {
    let v = f.int(field, 1, 100)?;
    all.iter()
        .copied()
        .find(|t| i64::from(code(*t)) == v)
        .ok_or_else(|| bad_field(field, "unknown code"))
}

/// `POST /v1/merchants/applications` `{name, category, district, …facts}`
pub(crate) async fn apply(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&req)?.username;
    let f = Fields::parse(
        &req,
        &body,
        &[
            "name",
            "category",
            "district",
            "licence_no",
            "years_without_violations",
            "annual_book_sales_fen",
            "annual_box_office_fen",
            "shows_per_year",
        ],
    )?;
    let name = f.text("name", 200)?;
    let category = coded(&f, "category", Category::ALL, Category::code)?;
    let district = coded(&f, "district", District::ALL, District::code)?;
    let mut facts = serde_json::Map::new();
    for (field, what, min) in facts_of(category) {
        if *field == "licence_no" {
            facts.insert((*field).to_owned(), json!(f.text(field, 64)?));
        } else {
            let v = f.int(field, 0, i64::MAX).map_err(|_| {
                bad_field(
                    field,
                    &format!("{what}: a whole number is required for this category"),
                )
            })?;
            if v < *min {
                return Err(bad_field(
                    field,
                    &format!("{what}: at least {min} to be eligible"),
                ));
            }
            facts.insert((*field).to_owned(), json!(v));
        }
    }
    let form = f.form;
    for k in f.into_map().keys() {
        if !["name", "category", "district"].contains(&k.as_str()) && !facts.contains_key(k) {
            return Err(bad_field(k, "not a fact of this category"));
        }
    }
    let store = state.store();
    let a = crate::store::console::NewApplication {
        name,
        category: category.code(),
        district: district.code(),
        facts: Value::Object(facts),
        by,
        now_ms: crate::clock::now_ms(),
    };
    let id = state
        .on_store(async move { store.add_application(a).await })
        .await?;
    Ok(respond(
        &req,
        form,
        json!({ "application_id": id, "status": "APPLIED" }),
    ))
}

/// `POST /v1/merchants/applications/{id}/recommendation`
pub(crate) async fn recommend(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&req)?.username;
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let f = Fields::parse(&req, &body, &[])?;
    let store = state.store();
    if !state
        .on_store(async move { store.recommend_application(id, by).await })
        .await?
    {
        return Err(answer(
            StatusCode::CONFLICT,
            "NOT_APPLIED",
            json!({ "message": format!("application {id} is not waiting for a recommendation") }),
        ));
    }
    Ok(respond(
        &req,
        f.form,
        json!({ "application_id": id, "status": "RECOMMENDED" }),
    ))
}

pub(crate) async fn devices(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(device_views(&state, &req).await?))
}

pub(crate) async fn device_views(
    state: &ConsoleState,
    req: &HttpRequest,
) -> Result<Value, ApiError> {
    let after = query(req, "after")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let store = state.store();
    let rows = state
        .on_store(async move { store.devices(after, LIST_ROWS_MAX).await })
        .await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|d| {
            let id = wenxiao_protocol::DeviceId(d.device_id);
            let online = state.shared.sessions.contains_key(&id)
                || state.shared.ota_sessions.contains_key(&id);
            let kind = u8::try_from(d.kind)
                .ok()
                .and_then(wenxiao_protocol::DeviceKind::from_code)
                .map_or("unknown", |k| k.name());
            json!({ "device_id": d.device_id, "kind": kind, "merchant_id": d.merchant_id,
                    "active": d.active, "online": online, "hotlist_version": d.hotlist_version })
        })
        .collect();
    Ok(
        json!({ "devices": rows, "hotlist_version": state.shared.hotlist.read().map(|h| h.version()).unwrap_or(0) }),
    )
}

/// `POST /v1/devices` `{device_id, kind, merchant_id}`
pub(crate) async fn register_device(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::parse(&req, &body, &["device_id", "kind", "merchant_id"])?;
    let id = f.int("device_id", 1, i64::MAX)?;
    let kind = f.choice("kind", &["POS", "KIOSK", "SIGNIN_READER"])?;
    let code = match kind {
        "POS" => wenxiao_protocol::DeviceKind::Pos,
        "KIOSK" => wenxiao_protocol::DeviceKind::Kiosk,
        _ => wenxiao_protocol::DeviceKind::SigninReader,
    }
    .code();
    let merchant = f.int("merchant_id", 1, i64::MAX)?;
    let store = state.store();
    let ok = state
        .on_store(async move {
            store
                .put_device(
                    u64::try_from(id).unwrap_or(0),
                    i16::from(code),
                    Some(merchant),
                    true,
                )
                .await
        })
        .await?;
    if !ok {
        return Err(bad_field("merchant_id", "no such merchant"));
    }
    state.shared.registry_wake.notify_one();
    Ok(respond(
        &req,
        f.form,
        json!({ "device_id": id, "active": true }),
    ))
}

async fn set_device(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
    active: bool,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = f.opt_text("reason", TEXT_BYTES_MAX)?;
    let by = caller(&req)?.username;
    let store = state.store();
    let device = u64::try_from(id).unwrap_or(0);
    let detail = json!({ "reason": reason });
    let ok = state
        .on_store(async move {
            let ok = store.set_device_active(device, active).await?;
            if ok {
                let action = if active {
                    "device.enable"
                } else {
                    "device.disable"
                };
                store
                    .append_audit(
                        by,
                        action.to_owned(),
                        format!("device {device}"),
                        detail,
                        crate::clock::now_ms(),
                    )
                    .await?;
            }
            Ok(ok)
        })
        .await?;
    if !ok {
        return Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_DEVICE",
            json!({ "device_id": id }),
        ));
    }
    if !active {
        // This node at once; the others at their registry reload (NOTIFY or poll).
        let id = wenxiao_protocol::DeviceId(device);
        if let Some(s) = state.shared.sessions.get(&id) {
            s.value().1.do_send(crate::session::Disabled);
        }
        if let Some(s) = state.shared.ota_sessions.get(&id) {
            s.value().do_send(crate::session::Disabled);
        }
    }
    state.shared.registry_wake.notify_one();
    Ok(respond(
        &req,
        f.form,
        json!({ "device_id": id, "active": active }),
    ))
}

pub(crate) async fn disable_device(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    set_device(state, req, body, false).await
}

pub(crate) async fn enable_device(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    set_device(state, req, body, true).await
}

pub(crate) async fn clearing_days(
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ApiError> {
    let store = state.store();
    let days = state
        .on_store(async move { store.clearing_days(LIST_ROWS_MAX).await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "days": days })))
}

/// The settlement files' names.
pub(crate) const FILES: &[&str] = &[
    "card_credits.csv",
    "merchant_settlement.csv",
    "bureau_settlement.csv",
    "organizer_awards.csv",
    "statistics.csv",
];

/// Most clearing days whose page figures are held (beyond it the cache starts over).
const DAY_VIEWS_HELD_MAX: usize = 64;

/// A cleared day's page figures (see [`read_day_view`]), held for
/// `console.dashboard_refresh_ms` and refreshed behind the readers.
pub(crate) async fn day_view(
    state: &web::Data<ConsoleState>,
    date: BusinessDate,
) -> Result<Arc<Value>, ApiError> {
    if state.days.len() >= DAY_VIEWS_HELD_MAX && !state.days.contains_key(&date) {
        state.days.clear();
    }
    let slot = Arc::clone(
        state
            .days
            .entry(date)
            .or_insert_with(|| Arc::new(super::cache::Fresh::new()))
            .value(),
    );
    let refresh = i64::try_from(state.shared.config.console.dashboard_refresh_ms).unwrap_or(0);
    let s = web::Data::clone(state);
    slot.get(
        refresh,
        move || async move { read_day_view(&s, date).await },
    )
    .await
}

/// A day's figures, control totals, seal and open command, as aggregates in the store.
async fn read_day_view(state: &ConsoleState, date: BusinessDate) -> Result<Value, ApiError> {
    let store = state.store();
    let (totals, seal) = state
        .on_store(async move {
            let t = store.day_totals(date).await?;
            let s = store.seal(date).await?;
            Ok((t, s))
        })
        .await?;
    let Some(t) = totals else {
        return Err(answer(
            StatusCode::NOT_FOUND,
            "NOT_CLEARED",
            json!({ "message": format!("{date} is not cleared") }),
        ));
    };
    let s = &t.summary;
    let store = state.store();
    let pending = state
        .on_store(async move {
            use crate::store::console::CommandStatus as S;
            let mut open = store
                .list_commands(Some(S::Approving), LIST_ROWS_MAX)
                .await?;
            open.extend(store.list_commands(Some(S::Pending), LIST_ROWS_MAX).await?);
            Ok(open)
        })
        .await?
        .into_iter()
        .find(|c| c.kind == "clearing" && c.target == format!("day {date}"));
    Ok(json!({
        "business_date": date.get(),
        "approved": s.approved,
        "txn_count": s.txn_count,
        "subsidy_fen": s.subsidy_fen.get(),
        "credit_count": s.credit_count,
        "credit_fen": s.credit_fen.get(),
        "loaded_count": t.loaded.0,
        "loaded_fen": t.loaded.1,
        "merchants": t.merchants,
        "control_totals": {
            "card_credits_fen": t.credits.1,
            "card_credits_match_run": t.credits.1 == s.credit_fen.get()
                && t.credits.0 == s.credit_count,
            "merchant_subsidy_fen": t.merchant_subsidy_fen,
            "statistics_subsidy_fen": t.statistics_subsidy_fen,
            "statistics_match_merchants": t.statistics_subsidy_fen == t.merchant_subsidy_fen,
            "merchant_sales_fen": t.merchant_sales_fen,
            "merchant_refunds_fen": t.merchant_refunds_fen,
        },
        "seal_sha256": seal,
        "pending_command": pending,
        "files": FILES,
        "read_at_ms": crate::clock::now_ms(),
    }))
}

pub(crate) async fn clearing_day(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let date = path_date(&req)?;
    Ok(HttpResponse::Ok().json(&*day_view(&state, date).await?))
}

/// Writes a day's settlement files (sealed once approved).
pub(crate) async fn write_files(state: &ConsoleState, date: BusinessDate) -> Result<(), ApiError> {
    let store = state.store();
    let (report, seal) = state
        .on_store(async move { Ok((store.clearing_report(date).await?, store.seal(date).await?)) })
        .await?;
    let Some(report) = report else {
        return Ok(());
    };
    let dir = state
        .shared
        .config
        .data_dir
        .join(&state.shared.config.clearing.settlement_dir);
    crate::clearing::write_settlement_files(&report, &dir, seal.as_deref()).map_err(|e| {
        tracing::warn!(error = %e, "settlement files not written");
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "FILES",
            json!({ "message": e.to_string() }),
        )
    })?;
    Ok(())
}

/// `POST /v1/clearing/days/{date}/run`
pub(crate) async fn run_clearing(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let date = path_date(&req)?;
    let f = Fields::parse(&req, &body, &["early"])?;
    let early = f.opt_bool("early")?.unwrap_or(false);
    let grace = i64::try_from(state.shared.config.clearing.grace_ms).unwrap_or(i64::MAX);
    let opens_at = crate::clock::day_end_ms(date).saturating_add(grace);
    let now = crate::clock::now_ms();
    let mut as_of = now;
    if now < opens_at {
        if !early {
            return Err(answer(
                StatusCode::CONFLICT,
                "DAY_NOT_ENDED",
                json!({ "message": format!("{date} has not ended (plus clearing.grace_ms) in Asia/Shanghai") }),
            ));
        }
        if !state.shared.config.clearing.early_close_allowed {
            return Err(answer(
                StatusCode::CONFLICT,
                "EARLY_CLOSE_OFF",
                json!({ "message": "clearing.early_close_allowed is false: a day is cleared only once it has ended" }),
            ));
        }
        // Closed as of its nominal close; later rows go to the next open day.
        as_of = opens_at;
    }
    let store = state.store();
    let fpp = state.shared.policy.points.fen_per_point;
    let s = state
        .on_store(async move { store.clear_day(date, fpp, as_of).await })
        .await?;
    write_files(&state, date).await?;
    state.days.remove(&date);
    let by = caller(&req)?.username;
    let store = state.store();
    let detail =
        json!({ "txn_count": s.txn_count, "credit_fen": s.credit_fen.get(), "early": early });
    state
        .on_store(async move {
            store
                .append_audit(
                    by,
                    "clearing.run".to_owned(),
                    format!("day {date}"),
                    detail,
                    now,
                )
                .await
        })
        .await?;
    Ok(respond(
        &req,
        f.form,
        json!({ "business_date": date.get(), "txn_count": s.txn_count,
                "subsidy_fen": s.subsidy_fen.get(), "credit_count": s.credit_count,
                "credit_fen": s.credit_fen.get(), "approved": s.approved }),
    ))
}

/// `GET /v1/clearing/days/{date}/files/{name}`
pub(crate) async fn settlement_file(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let date = path_date(&req)?;
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(name) = FILES.iter().find(|f| **f == name) else {
        return Err(bad_field("name", &format!("one of {}", FILES.join(", "))));
    };
    // Written from the store each time, so the loaded figures are current.
    write_files(&state, date).await?;
    let path = state
        .shared
        .config
        .data_dir
        .join(&state.shared.config.clearing.settlement_dir)
        .join(date.get().to_string())
        .join(name);
    let text = std::fs::read(&path).map_err(|_| {
        answer(
            StatusCode::NOT_FOUND,
            "NOT_CLEARED",
            json!({ "message": format!("{date} is not cleared") }),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{}-{name}\"", date.get()),
        ))
        .body(text))
}

pub(crate) async fn awards(state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let store = state.store();
    let a = state
        .on_store(async move { store.awards(LIST_ROWS_MAX).await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "awards": a })))
}

/// `POST /v1/awards` `{organizer, show_date, kind: NATIONAL_TROUPE|NATIONAL_AWARD_WORK, evidence}`
pub(crate) async fn enter_award(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::parse(&req, &body, &["organizer", "show_date", "kind", "evidence"])?;
    let organizer = f.int("organizer", 1, i64::MAX)?;
    let show_date = u32::try_from(f.int("show_date", 20_000_101, 29_991_231)?)
        .ok()
        .and_then(|d| BusinessDate::new(d).ok())
        .ok_or_else(|| bad_field("show_date", "a calendar date yyyymmdd is expected"))?;
    let kind = f.choice("kind", &["NATIONAL_TROUPE", "NATIONAL_AWARD_WORK"])?;
    let evidence = f.text("evidence", TEXT_BYTES_MAX)?;
    let is_organizer = state
        .shared
        .registry
        .read()
        .map(|r| {
            r.merchant(crate::registry::MerchantId(organizer))
                .is_some_and(|m| m.category == Category::Organizer)
        })
        .unwrap_or(false);
    if !is_organizer {
        return Err(bad_field(
            "organizer",
            "not a performance organizer's merchant id",
        ));
    }
    let award = &state.shared.policy.organizer_award;
    let (code, amount) = if kind == "NATIONAL_TROUPE" {
        (1, award.national_troupe_show_fen)
    } else {
        (2, award.national_award_work_show_fen)
    };
    let input = AwardInput {
        merchant_id: crate::registry::MerchantId(organizer),
        show_date,
        kind: code,
        amount_fen: wenxiao_protocol::Fen(amount),
        evidence,
        now_ms: crate::clock::now_ms(),
    };
    let store = state.store();
    let id = state
        .on_store(async move { store.record_award(input).await })
        .await?;
    Ok(respond(
        &req,
        f.form,
        json!({ "award_id": id, "amount_fen": amount, "status": "RECORDED" }),
    ))
}

/// `GET /v1/budget`: read now (a few rows), not from the dashboard's held figures, so an
/// approved cap change shows at once.
pub(crate) async fn budget(state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let (monthly_cap, programme_cap) = caps(&state).await?;
    let month = i32::try_from(today()?.get() / 100).unwrap_or(0);
    let store = state.store();
    let (month_granted, programme_granted) = state
        .on_store(async move {
            Ok((
                store.budget_granted(month).await?,
                store
                    .budget_granted(crate::store::PROGRAMME_BUDGET_KEY)
                    .await?,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "policy_monthly_cap_fen": state.shared.policy.monthly_cap().get(),
        "policy_programme_cap_fen": state.shared.policy.programme_total().get(),
        "monthly_cap_fen": monthly_cap,
        "programme_cap_fen": programme_cap,
        "month": month,
        "month_granted_fen": month_granted.get(),
        "programme_granted_fen": programme_granted.get(),
    })))
}

pub(crate) async fn cases(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let status = match query(&req, "status") {
        Some(s) => {
            Some(CaseStatus::from_name(&s).ok_or_else(|| bad_field("status", "no such status"))?)
        }
        None => None,
    };
    let store = state.store();
    let c = state
        .on_store(async move { store.list_cases(status, LIST_ROWS_MAX).await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "cases": c })))
}

pub(crate) async fn case(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let store = state.store();
    match state.on_store(async move { store.case(id).await }).await? {
        Some(c) => Ok(HttpResponse::Ok().json(c)),
        None => Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_CASE",
            json!({ "case_id": id }),
        )),
    }
}

async fn step(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
    assign: bool,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let by = caller(&req)?.username;
    let f = Fields::parse(&req, &body, &["reason", "to"])?;
    let action = if assign {
        CaseAction::Assign {
            to: f.opt_text("to", 128)?.unwrap_or_else(|| by.clone()),
        }
    } else {
        CaseAction::Dismiss
    };
    let reason = match f.opt_text("reason", TEXT_BYTES_MAX)? {
        Some(r) => r,
        None if assign => "taken for review".to_owned(),
        None => return Err(bad_field("reason", "required")),
    };
    let s = CaseStep {
        case_id: id,
        action,
        actor: by,
        reason,
        now_ms: crate::clock::now_ms(),
        keep_versions: state.shared.config.hotlist.delta_versions_kept,
    };
    let store = state.store();
    state
        .on_store(async move { store.step_case(s).await })
        .await?;
    Ok(respond(&req, f.form, json!({ "case_id": id })))
}

pub(crate) async fn assign_case(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    step(state, req, body, true).await
}

pub(crate) async fn dismiss_case(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    step(state, req, body, false).await
}

pub(crate) async fn commands(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let status = match query(&req, "status") {
        Some(s) => Some(
            crate::store::console::CommandStatus::from_name(&s)
                .ok_or_else(|| bad_field("status", "PENDING, APPROVED, REJECTED or FAILED"))?,
        ),
        None => None,
    };
    let store = state.store();
    let c = state
        .on_store(async move { store.list_commands(status, LIST_ROWS_MAX).await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "commands": c })))
}

pub(crate) async fn command(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let store = state.store();
    match state
        .on_store(async move { store.command(id).await })
        .await?
    {
        Some(c) => Ok(HttpResponse::Ok().json(c)),
        None => Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_COMMAND",
            json!({ "command_id": id }),
        )),
    }
}

/// The `from`/`to` range of a statistics query (default: the last 31 days).
pub(crate) fn range(req: &HttpRequest) -> Result<(BusinessDate, BusinessDate), ApiError> {
    let parse = |name: &str| -> Result<Option<BusinessDate>, ApiError> {
        query(req, name)
            .map(|s| {
                s.parse::<u32>()
                    .ok()
                    .and_then(|d| BusinessDate::new(d).ok())
                    .ok_or_else(|| bad_field(name, "a calendar date yyyymmdd is expected"))
            })
            .transpose()
    };
    let to = match parse("to")? {
        Some(d) => d,
        None => today()?,
    };
    let from = match parse("from")? {
        Some(d) => d,
        None => crate::clock::business_date(crate::clock::day_end_ms(to) - 31 * 86_400_000)
            .unwrap_or(to),
    };
    if from > to {
        return Err(bad_field("from", "after `to`"));
    }
    Ok((from, to))
}

pub(crate) async fn stat_rows(
    state: &ConsoleState,
    req: &HttpRequest,
) -> Result<(BusinessDate, BusinessDate, Vec<StatRow>), ApiError> {
    let (from, to) = range(req)?;
    let store = state.store();
    let rows = state
        .on_store(async move { store.statistics(from, to).await })
        .await?;
    Ok((from, to, rows))
}

pub(crate) fn district_label(code: i16) -> String {
    District::from_code(code).map_or_else(|| code.to_string(), |d| d.label().to_owned())
}

pub(crate) fn category_label(code: i16) -> String {
    Category::from_code(code).map_or_else(|| code.to_string(), |c| c.label().to_owned())
}

pub(crate) async fn statistics(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (from, to, rows) = stat_rows(&state, &req).await?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({ "district": district_label(r.district), "category": category_label(r.category),
                    "district_code": r.district, "category_code": r.category,
                    "txn_count": r.txn_count, "sales_fen": r.sales_fen, "subsidy_fen": r.subsidy_fen })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "from": from.get(), "to": to.get(), "rows": rows })))
}

/// Longest range `GET /v1/statistics/merchant-days` answers, in business days.
const MERCHANT_DAYS_SPAN_MAX: i64 = 62;

/// `GET /v1/statistics/merchant-days?from&to`: purchases per merchant and business day
/// (the history the spike rule judges), days without purchases left out.
pub(crate) async fn merchant_days(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (from, to) = range(&req)?;
    let span_days = (crate::clock::day_end_ms(to) - crate::clock::day_end_ms(from)) / 86_400_000;
    if span_days >= MERCHANT_DAYS_SPAN_MAX {
        return Err(bad_field(
            "from",
            &format!("at most {MERCHANT_DAYS_SPAN_MAX} days before `to`"),
        ));
    }
    let store = state.store();
    let rows = state
        .on_store(async move { store.merchant_day_purchases(from, to).await })
        .await?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|(m, d, n)| json!({ "merchant_id": m.0, "business_date": d.get(), "purchases": n }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "from": from.get(), "to": to.get(), "rows": rows })))
}

pub(crate) async fn statistics_csv(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (from, to, rows) = stat_rows(&state, &req).await?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CSV",
            json!({ "message": e.to_string() }),
        )
    };
    w.write_record([
        "district",
        "category",
        "txn_count",
        "sales_fen",
        "subsidy_fen",
    ])
    .map_err(fail)?;
    let mut t = [0i64; 3];
    for r in &rows {
        w.write_record([
            district_label(r.district),
            category_label(r.category),
            r.txn_count.to_string(),
            r.sales_fen.to_string(),
            r.subsidy_fen.to_string(),
        ])
        .map_err(fail)?;
        t[0] += r.txn_count;
        t[1] += r.sales_fen;
        t[2] += r.subsidy_fen;
    }
    w.write_record([
        "TOTAL".to_owned(),
        String::new(),
        t[0].to_string(),
        t[1].to_string(),
        t[2].to_string(),
    ])
    .map_err(fail)?;
    let bytes = w.into_inner().map_err(|e| {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CSV",
            json!({ "message": e.to_string() }),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "content-disposition",
            format!(
                "attachment; filename=\"statistics-{}-{}.csv\"",
                from.get(),
                to.get()
            ),
        ))
        .body(bytes))
}

pub(crate) async fn statistics_xlsx(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    use rust_xlsxwriter::Workbook;
    let (from, to, rows) = stat_rows(&state, &req).await?;
    let fail = |e: rust_xlsxwriter::XlsxError| {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "XLSX",
            json!({ "message": e.to_string() }),
        )
    };
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet.set_name("statistics").map_err(fail)?;
    for (c, h) in [
        "district",
        "category",
        "txn_count",
        "sales_fen",
        "subsidy_fen",
    ]
    .iter()
    .enumerate()
    {
        sheet
            .write_string(0, u16::try_from(c).unwrap_or(0), *h)
            .map_err(fail)?;
    }
    for (i, r) in rows.iter().enumerate() {
        let row = u32::try_from(i + 1).unwrap_or(u32::MAX);
        sheet
            .write_string(row, 0, district_label(r.district))
            .map_err(fail)?;
        sheet
            .write_string(row, 1, category_label(r.category))
            .map_err(fail)?;
        // Integers (counts and fen) as text-exact numbers: each stays far below 2^53.
        for (c, v) in [(2u16, r.txn_count), (3, r.sales_fen), (4, r.subsidy_fen)] {
            sheet.write_number(row, c, i64_cell(v)).map_err(fail)?;
        }
    }
    let bytes = book.save_to_buffer().map_err(fail)?;
    Ok(HttpResponse::Ok()
        .content_type("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
        .insert_header((
            "content-disposition",
            format!(
                "attachment; filename=\"statistics-{}-{}.xlsx\"",
                from.get(),
                to.get()
            ),
        ))
        .body(bytes))
}

/// A spreadsheet number cell from an integer count or fen amount (exact below 2^53).
#[allow(clippy::cast_precision_loss)]
fn i64_cell(v: i64) -> f64 {
    v as f64
}

pub(crate) async fn statistics_svg(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (_, _, rows) = stat_rows(&state, &req).await?;
    Ok(HttpResponse::Ok()
        .content_type("image/svg+xml")
        .body(super::pages::subsidy_chart(&rows)))
}

pub(crate) async fn audit_log(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let before = match query(&req, "before") {
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| bad_field("before", "a seq is expected"))?,
        ),
        None => None,
    };
    let store = state.store();
    let rows = state
        .on_store(async move { store.audit_page(before, LIST_ROWS_MAX).await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "rows": rows })))
}

pub(crate) async fn audit_verify(state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let store = state.store();
    let v = state
        .on_store(async move { store.verify_audit().await })
        .await?;
    Ok(HttpResponse::Ok().json(match v {
        crate::audit::Verdict::Intact { rows } => json!({ "intact": true, "rows": rows }),
        crate::audit::Verdict::Broken { seq, reason } => {
            json!({ "intact": false, "seq": seq, "reason": reason })
        }
    }))
}

/// `GET /v1/audit/figures`: what an end-of-run invariant check compares with what the
/// devices were told.
pub(crate) async fn audit_figures(
    state: web::Data<ConsoleState>,
) -> Result<HttpResponse, ApiError> {
    let store = state.store();
    let f = state.on_store(async move { store.audit().await }).await?;
    let devices: Vec<Value> = f
        .devices
        .iter()
        .map(|d| {
            json!({ "device_id": d.device_id.0, "rows": d.rows, "min_seq": d.min_seq,
                    "max_seq": d.max_seq, "stored": d.stored, "subsidy_fen": d.subsidy_fen.get() })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "devices": devices,
        "released": { "count": f.released.0, "fen": f.released.1.get() },
        "loaded": { "count": f.loaded.0, "fen": f.loaded.1.get() },
        "budgets": f.budgets.iter().map(|(k, g)| json!({ "budget": k, "granted_fen": g.get() })).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn users(state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let store = state.store();
    let u = state
        .on_store(async move { store.list_users().await })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "users": u })))
}

/// `POST /v1/users/{name}/roles` `{roles: "auditor,viewer"}`
pub(crate) async fn set_roles(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&req)?.username;
    let name = req.match_info().get("name").unwrap_or_default().to_owned();
    let f = Fields::parse(&req, &body, &["roles"])?;
    let roles = parse_roles(&f.text("roles", 200)?).map_err(|m| bad_field("roles", &m))?;
    if name == by && !roles.contains(&Role::Administrator) {
        return Err(answer(
            StatusCode::CONFLICT,
            "OWN_ADMIN_ROLE",
            json!({ "message": "an administrator cannot take their own administrator role" }),
        ));
    }
    let names: Vec<String> = roles.iter().map(|r| r.name().to_owned()).collect();
    let store = state.store();
    let (n, list) = (name.clone(), names.clone());
    if !state
        .on_store(async move { store.set_roles(n, list, by, crate::clock::now_ms()).await })
        .await?
    {
        return Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_USER",
            json!({ "username": name }),
        ));
    }
    Ok(respond(
        &req,
        f.form,
        json!({ "username": name, "roles": names }),
    ))
}

fn card_of(req: &HttpRequest) -> Result<wenxiao_protocol::CardNo, ApiError> {
    let v = path_int(req, "card", 1, i64::MAX)?;
    Ok(wenxiao_protocol::CardNo(u64::try_from(v).unwrap_or(0)))
}

/// Days a card's credit query covers at most.
const CARD_DAYS_MAX: i64 = 366;
/// Points events a card's query returns at most.
const CARD_POINTS_EVENTS_MAX: i64 = 500;

pub(crate) async fn card_credits(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let card = card_of(&req)?;
    let store = state.store();
    let days = state
        .on_store(async move { store.card_credits(card, CARD_DAYS_MAX).await })
        .await?;
    let total = |f: fn(&crate::store::console::CardDay) -> i64| days.iter().map(f).sum::<i64>();
    Ok(HttpResponse::Ok().json(json!({
        "card_no": card.0,
        "pending_fen": total(|d| d.pending_fen),
        "released_fen": total(|d| d.released_fen),
        "loaded_fen": total(|d| d.loaded_fen),
        "days": days,
    })))
}

pub(crate) async fn card_points(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let card = card_of(&req)?;
    let store = state.store();
    let (balance, events) = state
        .on_store(async move {
            let b = store.points_balance(card).await?;
            let e = store.card_points(card, CARD_POINTS_EVENTS_MAX).await?;
            Ok((b, e))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "card_no": card.0,
        "balance": balance.0.get(),
        "held": balance.1.get(),
        "available": balance.0.get() - balance.1.get(),
        "history": events,
    })))
}
