//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process is up)
//! and `/readyz` (the store answers and the gateway is not draining).

use crate::session::Shared;
use crate::store::Store;
use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

struct AdminState {
    shared: Arc<Shared>,
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
