//! The risk team's JSON API on the admin server (`/v1/cases`, bearer `admin.risk_token`)
//! and the residents' reporting channel (`POST /v1/reports`, bearer `admin.app_token`).
//!
//! Request bodies are read field by field, so a bad one is answered 400 naming the field;
//! nothing is written unless every field is good.

use crate::admin::AdminState;
use crate::httpapi::{ApiError, answer, bad_field, object, positive, store_failed, text};
use crate::store::StoreError;
use crate::store::risk::{
    CaseAction, CaseStatus, CaseStep, NewReport, ReportOutcome, RiskStore, Subject,
};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

/// Longest reporter reference, in bytes.
pub const REPORTER_BYTES_MAX: usize = 128;
/// Longest report text, in bytes.
pub const REPORT_TEXT_BYTES_MAX: usize = 4_000;
/// Longest name or reason in a case step, in bytes.
pub const STEP_TEXT_BYTES_MAX: usize = 1_024;
/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 16_384;
/// Most cases one list returns.
pub const CASES_LIST_MAX: i64 = 1_000;

/// Adds the endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(BODY_BYTES_MAX))
        .route("/v1/cases", web::get().to(list_cases))
        .route("/v1/cases/{id}", web::get().to(get_case))
        .route("/v1/cases/{id}/{action}", web::post().to(step_case))
        .route("/v1/reports", web::post().to(report));
}

/// Runs a store call on the store runtime.
async fn on_store<T, F>(state: &AdminState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
{
    crate::httpapi::on_store(&state.shared.store_rt, work).await
}

/// The request's bearer token matches `token`; an empty `token` means the endpoints are
/// off (404).
fn authorize(request: &HttpRequest, token: &str) -> Result<(), ApiError> {
    if token.is_empty() {
        return Err(answer(StatusCode::NOT_FOUND, "DISABLED", Value::Null));
    }
    if crate::admin::bearer_is(request, token) {
        Ok(())
    } else {
        Err(answer(StatusCode::UNAUTHORIZED, "BAD_TOKEN", Value::Null))
    }
}

/// `GET /v1/cases?status=OPEN&limit=50`
async fn list_cases(
    state: web::Data<AdminState>,
    request: HttpRequest,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, &state.shared.config.admin.risk_token)?;
    if let Some(k) = query
        .keys()
        .find(|k| !["status", "limit"].contains(&k.as_str()))
    {
        return Err(bad_field(k, "unknown parameter"));
    }
    let status = query
        .get("status")
        .map(|s| CaseStatus::from_name(s).ok_or_else(|| bad_field("status", "no such status")))
        .transpose()?;
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=CASES_LIST_MAX).contains(l))
            .ok_or_else(|| bad_field("limit", "1..=1000 expected"))?,
    };
    let store = state.shared.store.clone();
    let cases = on_store(&state, async move { store.list_cases(status, limit).await }).await?;
    Ok(HttpResponse::Ok().json(json!({ "cases": cases })))
}

/// `GET /v1/cases/{id}`
async fn get_case(
    state: web::Data<AdminState>,
    request: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, &state.shared.config.admin.risk_token)?;
    let id = path.into_inner();
    let store = state.shared.store.clone();
    match on_store(&state, async move { store.case(id).await }).await? {
        Some(c) => Ok(HttpResponse::Ok().json(c)),
        None => Err(answer(StatusCode::NOT_FOUND, "UNKNOWN_CASE", Value::Null)),
    }
}

/// `POST /v1/cases/{id}/{assign|confirm|dismiss|lift}` with `{"by": …, "reason": …}`
/// (and `"to"` for assign).
async fn step_case(
    state: web::Data<AdminState>,
    request: HttpRequest,
    path: web::Path<(i64, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, &state.shared.config.admin.risk_token)?;
    let (case_id, action) = path.into_inner();
    let map = match action.as_str() {
        "assign" => object(&body, &["by", "to", "reason"])?,
        "confirm" | "dismiss" | "lift" => object(&body, &["by", "reason"])?,
        _ => return Err(answer(StatusCode::NOT_FOUND, "UNKNOWN_ACTION", Value::Null)),
    };
    let by = text(&map, "by", STEP_TEXT_BYTES_MAX)?;
    let action = match action.as_str() {
        "assign" => CaseAction::Assign {
            to: text(&map, "to", STEP_TEXT_BYTES_MAX)?,
        },
        "confirm" => CaseAction::Confirm,
        "dismiss" => CaseAction::Dismiss,
        _ => CaseAction::Lift,
    };
    let reason = match (&action, map.get("reason")) {
        (CaseAction::Assign { .. }, None) => "taken for review".to_owned(),
        _ => text(&map, "reason", STEP_TEXT_BYTES_MAX)?,
    };
    let step = CaseStep {
        case_id,
        action,
        actor: by,
        reason,
        now_ms: crate::clock::now_ms(),
        keep_versions: state.shared.config.hotlist.delta_versions_kept,
    };
    let store = state.shared.store.clone();
    let done = on_store(&state, async move { store.step_case(step).await }).await?;
    // This node at once; the others through NOTIFY (PostgreSQL) or their poll.
    if done.hotlist_version.is_some() {
        state.shared.hotlist_wake.notify_one();
    }
    if done.registry_changed {
        state.shared.registry_wake.notify_one();
    }
    let store = state.shared.store.clone();
    let case = on_store(&state, async move { store.case(case_id).await }).await?;
    Ok(HttpResponse::Ok().json(json!({
        "hotlist_version": done.hotlist_version,
        "case": case,
    })))
}

/// `POST /v1/reports` with `{"reporter": …, "card_no": N | "merchant_id": M, "text": …}`:
/// files a resident's report into a case about the card or merchant.
async fn report(
    state: web::Data<AdminState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, &state.shared.config.admin.app_token)?;
    let map = object(&body, &["reporter", "card_no", "merchant_id", "text"])?;
    let reporter = text(&map, "reporter", REPORTER_BYTES_MAX)?;
    let subject = match (positive(&map, "card_no")?, positive(&map, "merchant_id")?) {
        (Some(card), None) => Subject::Card(wenxiao_protocol::CardNo(card)),
        (None, Some(m)) => {
            let id = i64::try_from(m).map_err(|_| bad_field("merchant_id", "out of range"))?;
            let id = crate::registry::MerchantId(id);
            let known = state
                .shared
                .registry
                .read()
                .map(|r| r.merchant(id).is_some())
                .unwrap_or(false);
            if !known {
                return Err(bad_field("merchant_id", "no such merchant"));
            }
            Subject::Merchant(id)
        }
        (Some(_), Some(_)) => {
            return Err(bad_field(
                "merchant_id",
                "a report is about a card or a merchant, not both",
            ));
        }
        (None, None) => return Err(bad_field("card_no", "required (or merchant_id)")),
    };
    let text = text(&map, "text", REPORT_TEXT_BYTES_MAX)?;
    let now = crate::clock::now_ms();
    let Some(day) = crate::clock::business_date(now) else {
        return Err(store_failed("gateway clock out of range"));
    };
    let report = NewReport {
        reporter,
        subject,
        text,
        at_ms: now,
        business_date: day,
        per_day_max: state.shared.config.risk.reports_per_reporter_per_day_max,
    };
    let store = state.shared.store.clone();
    match on_store(&state, async move { store.file_report(report).await }).await? {
        ReportOutcome::Filed { report_id, case_id } => Ok(HttpResponse::Created()
            .json(json!({ "status": "FILED", "report_id": report_id, "case_id": case_id }))),
        ReportOutcome::RateLimited => Err(answer(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            json!({ "message": "this reporter's reports for today are used up" }),
        )),
    }
}
