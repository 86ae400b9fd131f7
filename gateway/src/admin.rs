//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process is up)
//! and `/readyz` (the store answers, the writers' latest batch committed, and the
//! gateway is not draining); the app backend's `/v1/points/activities`; and the risk
//! endpoints of [`crate::risk::api`].

use crate::session::Shared;
use crate::store::Store;
use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the admin server's handlers share.
pub(crate) struct AdminState {
    /// The gateway's shared state.
    pub(crate) shared: Arc<Shared>,
    prometheus: Option<PrometheusHandle>,
}

async fn metrics_page(state: web::Data<AdminState>) -> HttpResponse {
    match &state.prometheus {
        Some(h) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(h.render()),
        None => HttpResponse::ServiceUnavailable().body("metrics recorder not installed\n"),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if state.shared.draining.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().body("draining\n");
    }
    if state.shared.writer_health.failing() {
        return HttpResponse::ServiceUnavailable()
            .body("ingest writers failing: the latest batch could not be committed\n");
    }
    let store = state.shared.store.clone();
    match state
        .shared
        .store_rt
        .spawn(async move { store.ping().await })
        .await
    {
        Ok(Ok(())) => HttpResponse::Ok().body("ready\n"),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(format!("store: {e}\n")),
        Err(e) => HttpResponse::ServiceUnavailable().body(format!("store task: {e}\n")),
    }
}

/// A review or share reported by the app backend.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityBody {
    card_no: u64,
    venue_id: i64,
    kind: ActivityKind,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ActivityKind {
    Review,
    Share,
}

fn rejected(status: actix_web::http::StatusCode, reason: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"status": "REJECTED", "reason": reason}))
}

/// `POST /v1/points/activities`: a review (20 points) or share (10 points) of a public
/// venue, once per card, day and kind, and only after the card signed in there that day.
async fn activity(
    state: web::Data<AdminState>,
    request: actix_web::HttpRequest,
    body: web::Json<ActivityBody>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let token = &state.shared.config.admin.app_token;
    if token.is_empty() {
        return HttpResponse::NotFound().finish();
    }
    if !bearer_is(&request, token) {
        return rejected(StatusCode::UNAUTHORIZED, "BAD_TOKEN");
    }
    let venue = crate::registry::MerchantId(body.venue_id);
    let is_venue = state
        .shared
        .registry
        .read()
        .map(|r| {
            r.merchant(venue)
                .is_some_and(|m| m.category == crate::registry::Category::PublicVenue)
        })
        .unwrap_or(false);
    if !is_venue {
        return rejected(StatusCode::NOT_FOUND, "UNKNOWN_VENUE");
    }
    let Some(day) = crate::clock::business_date(crate::clock::now_ms()) else {
        return rejected(StatusCode::SERVICE_UNAVAILABLE, "CLOCK");
    };
    let policy = &state.shared.policy.points;
    let (kind, points) = match body.kind {
        ActivityKind::Review => (2, policy.review_points),
        ActivityKind::Share => (3, policy.share_points),
    };
    let activity = crate::store::Activity {
        card_no: wenxiao_protocol::CardNo(body.card_no),
        venue,
        day,
        kind,
        points: wenxiao_protocol::Points(points),
    };
    let store = state.shared.store.clone();
    match state
        .shared
        .store_rt
        .spawn(async move { store.award_activity(activity).await })
        .await
    {
        Ok(Ok(crate::store::ActivityOutcome::Awarded(balance))) => HttpResponse::Ok().json(
            serde_json::json!({"status": "AWARDED", "points": points, "balance": balance.get()}),
        ),
        Ok(Ok(crate::store::ActivityOutcome::DailyLimit)) => {
            rejected(StatusCode::CONFLICT, "DAILY_LIMIT_REACHED")
        }
        Ok(Ok(crate::store::ActivityOutcome::NoSignIn)) => {
            rejected(StatusCode::UNPROCESSABLE_ENTITY, "NO_SIGN_IN_TODAY")
        }
        Ok(Err(e)) => rejected(StatusCode::SERVICE_UNAVAILABLE, &format!("STORE: {e}")),
        Err(e) => rejected(StatusCode::SERVICE_UNAVAILABLE, &format!("STORE: {e}")),
    }
}

/// Whether the request's `Authorization: Bearer` token is `token` (compared in constant
/// time).
pub(crate) fn bearer_is(request: &actix_web::HttpRequest, token: &str) -> bool {
    constant_time_eq(
        bearer(request.headers()).unwrap_or("").as_bytes(),
        token.as_bytes(),
    )
}

/// The bearer token of a request's `Authorization` header, if it has one.
pub(crate) fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether two secrets are equal, compared in constant time.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// Binds and starts the admin server on the current actix system.
pub fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    prometheus: Option<PrometheusHandle>,
) -> anyhow::Result<(SocketAddr, actix_web::dev::ServerHandle)> {
    let state = web::Data::new(AdminState { shared, prometheus });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(metrics_page))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/v1/points/activities", web::post().to(activity))
            .configure(crate::risk::api::configure)
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("admin server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}
