//! The operations console: a JSON API (`/v1/…`, its OpenAPI document at
//! `/v1/openapi.json`) and server-rendered pages on it (`/console/…`, readable without
//! JavaScript), on a listener of their own (`[console]`), with TLS by config.
//!
//! Every route is one line of [`routes::ROUTES`]: its method, path, the one permission it
//! needs, and its summary. The same table registers the handlers, guards them, and
//! writes the OpenAPI document, so a route cannot exist without its permission. Browsers
//! sign in with a password and carry a session cookie; every request a cookie
//! authenticates that is not a read carries the session's CSRF token (form field `csrf`
//! or header `X-CSRF-Token`). Machine clients present a bearer token. A refused attempt
//! is answered 403, counted, logged and written to the audit log.
//!
//! Whatever moves money or changes eligibility is a command ([`commands`]): proposed by
//! one user, carried out only when another approves it.

pub mod auth;
mod cache;
pub mod commands;
mod fields;
mod handlers;
mod pages;
pub mod routes;

use crate::httpapi::{ApiError, answer};
use crate::session::Shared;
use crate::store::console::{ConsoleStore, UserRow};
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpServer, web};
use auth::{Permission, Role};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "wenxiao_session";
/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 65_536;

/// What the console's handlers share.
pub(crate) struct ConsoleState {
    /// The gateway's shared state.
    pub(crate) shared: Arc<Shared>,
    /// Concurrent password checks (argon2 is slow on purpose): more wait no longer than
    /// the login wait, then are refused 429.
    pub(crate) logins: tokio::sync::Semaphore,
    /// Whether the listener speaks TLS (the cookie is then `Secure`).
    pub(crate) tls: bool,
    /// The dashboard's figures, read from the store at most every
    /// `console.dashboard_refresh_ms`.
    pub(crate) dashboard: Arc<cache::Fresh<handlers::Dashboard>>,
    /// Cleared days' page figures, likewise (at most `DAY_VIEWS_HELD_MAX` days).
    pub(crate) days:
        dashmap::DashMap<wenxiao_protocol::BusinessDate, Arc<cache::Fresh<serde_json::Value>>>,
}

impl ConsoleState {
    pub(crate) fn store(&self) -> crate::store::AnyStore {
        self.shared.store.clone()
    }

    /// Runs a store call on the store runtime.
    pub(crate) async fn on_store<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
    {
        crate::httpapi::on_store(&self.shared.store_rt, work).await
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A browser's session cookie.
    Cookie,
    /// A bearer token.
    Bearer,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Its user name (`app` for the app backend's configured token).
    pub(crate) username: String,
    /// Its roles.
    pub(crate) roles: Vec<Role>,
    /// The session's CSRF token (cookie sessions).
    pub(crate) csrf: Option<String>,
    /// How it signed in.
    pub(crate) via: Via,
}

impl Caller {
    pub(crate) fn may(&self, p: Permission) -> bool {
        self.roles.iter().any(|r| r.grants(p))
    }
}

fn roles_of(user: &UserRow) -> Vec<Role> {
    user.roles
        .iter()
        .filter_map(|r| Role::from_name(r))
        .collect()
}

fn cookie_value(req: &ServiceRequest) -> Option<String> {
    req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned())
}

fn bearer(req: &ServiceRequest) -> Option<String> {
    crate::admin::bearer(req.headers()).map(str::to_owned)
}

/// Who sent the request, if anyone did.
async fn authenticate(
    state: &ConsoleState,
    req: &ServiceRequest,
) -> Result<Option<Caller>, ApiError> {
    let now = crate::clock::now_ms();
    if let Some(token) = bearer(req) {
        let app = &state.shared.config.admin.app_token;
        if !app.is_empty() && crate::admin::constant_time_eq(token.as_bytes(), app.as_bytes()) {
            return Ok(Some(Caller {
                username: "app".to_owned(),
                roles: vec![Role::App],
                csrf: None,
                via: Via::Bearer,
            }));
        }
        let store = state.store();
        let hash = auth::secret_sha256(&token);
        let user = state
            .on_store(async move { store.user_by_token(hash).await })
            .await?;
        return Ok(user.filter(|u| u.active).map(|u| Caller {
            roles: roles_of(&u),
            username: u.username,
            csrf: None,
            via: Via::Bearer,
        }));
    }
    if let Some(cookie) = cookie_value(req) {
        let store = state.store();
        let hash = auth::secret_sha256(&cookie);
        let found = state
            .on_store(async move { store.session(hash, now).await })
            .await?;
        return Ok(found.filter(|(u, _)| u.active).map(|(u, csrf)| Caller {
            roles: roles_of(&u),
            username: u.username,
            csrf: Some(csrf),
            via: Via::Cookie,
        }));
    }
    Ok(None)
}

/// The CSRF token a cookie-authenticated write carries: the header, else the form
/// field (the body is read, bounded, and put back for the handler).
async fn presented_csrf(req: &mut ServiceRequest) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_owned());
    }
    let is_form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return None;
    }
    let body = req.extract::<web::Bytes>().await.ok()?;
    let token = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v);
    req.set_payload(actix_web::dev::Payload::from(body));
    token
}

fn is_read(req: &ServiceRequest) -> bool {
    matches!(req.method().as_str(), "GET" | "HEAD")
}

/// The guard every route runs behind: authenticate, check the route's one permission
/// (and CSRF for cookie writes), refuse with 401/403 — counted, logged, audited — or pass
/// the caller on to the handler.
async fn guard(
    spec: &'static routes::RouteSpec,
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<ConsoleState>>().cloned() else {
        return Err(answer(StatusCode::INTERNAL_SERVER_ERROR, "NO_STATE", json!({})).into());
    };
    let request_id = auth::new_secret().get(..16).unwrap_or_default().to_owned();
    if spec.permission == Permission::Public {
        return next.call(req).await;
    }
    let caller = match authenticate(&state, &req).await {
        Ok(c) => c,
        Err(e) => return Err(e.into()),
    };
    let Some(caller) = caller else {
        if spec.path.starts_with("/console") && is_read(&req) {
            let to = format!("/console/login?next={}", req.path());
            let resp = actix_web::HttpResponse::SeeOther()
                .insert_header(("location", to))
                .finish();
            return Ok(req.into_response(resp));
        }
        return Err(answer(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", json!({})).into());
    };
    if !caller.may(spec.permission) {
        refuse_logged(&state, &caller, spec, &request_id).await;
        return Err(answer(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            json!({ "permission": spec.permission.name() }),
        )
        .into());
    }
    if caller.via == Via::Cookie && !is_read(&req) {
        let presented = presented_csrf(&mut req).await;
        let ok = match (&presented, &caller.csrf) {
            (Some(p), Some(c)) => crate::admin::constant_time_eq(p.as_bytes(), c.as_bytes()),
            _ => false,
        };
        if !ok {
            tracing::warn!(user = %caller.username, route = spec.path, "CSRF token missing or wrong");
            return Err(answer(StatusCode::FORBIDDEN, "CSRF", json!({})).into());
        }
    }
    tracing::debug!(request = %request_id, user = %caller.username, route = spec.path, "console request");
    req.extensions_mut().insert(caller);
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    metrics::counter!(
        crate::metrics::CONSOLE_REQUESTS_TOTAL,
        "route" => spec.path,
        "status" => status.to_string()
    )
    .increment(1);
    res
}

async fn refuse_logged(
    state: &ConsoleState,
    caller: &Caller,
    spec: &'static routes::RouteSpec,
    request_id: &str,
) {
    metrics::counter!(crate::metrics::CONSOLE_FORBIDDEN_TOTAL, "permission" => spec.permission.name())
        .increment(1);
    tracing::warn!(
        request = %request_id,
        user = %caller.username,
        permission = spec.permission.name(),
        method = spec.method,
        route = spec.path,
        "forbidden: the caller's roles do not grant the route's permission"
    );
    let store = state.store();
    let (actor, subject) = (
        caller.username.clone(),
        format!("{} {}", spec.method, spec.path),
    );
    let detail = json!({ "permission": spec.permission.name(), "request": request_id });
    let now = crate::clock::now_ms();
    if let Err(e) = state
        .on_store(async move {
            store
                .append_audit(actor, "forbidden".to_owned(), subject, detail, now)
                .await
        })
        .await
    {
        tracing::warn!(error = %e, "forbidden attempt not written to the audit log");
    }
}

/// The caller the guard passed on.
pub(crate) fn caller(req: &actix_web::HttpRequest) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| answer(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", json!({})))
}

/// Binds and starts the console's server on the current actix system.
pub fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> anyhow::Result<(SocketAddr, actix_web::dev::ServerHandle)> {
    let cfg = shared.config.console.clone();
    let tls = match (&cfg.tls_cert_path, &cfg.tls_key_path) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("console TLS: {}: {e}", p.display()))
            };
            Some(crate::tls::https_config(&read(cert)?, &read(key)?)?)
        }
        (None, None) => None,
        _ => anyhow::bail!("console.tls_cert_path and console.tls_key_path go together"),
    };
    let state = web::Data::new(ConsoleState {
        logins: tokio::sync::Semaphore::new(cfg.logins_concurrent_max),
        tls: tls.is_some(),
        dashboard: Arc::new(cache::Fresh::new()),
        days: dashmap::DashMap::new(),
        shared,
    });
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(BODY_BYTES_MAX))
            .app_data(web::FormConfig::default().limit(BODY_BYTES_MAX))
            .configure(routes::configure)
            .default_service(web::to(handlers::not_found))
    })
    .workers(cfg.workers)
    .max_connections(cfg.connections_max)
    .client_request_timeout(std::time::Duration::from_millis(cfg.request_timeout_ms))
    .disable_signals();
    let server = match tls {
        Some(t) => server.bind_rustls_0_23(addr, t)?,
        None => server.bind(addr)?,
    };
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("console bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((bound, handle))
}
