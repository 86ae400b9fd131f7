//! Every route of the console: method, path, its one permission, its summary, and its
//! handler. [`configure`] registers each behind the guard of its permission, and
//! [`openapi`] writes the OpenAPI document from the same table.

use super::auth::Permission;
use super::{commands, guard, handlers as h, pages as p};
use actix_web::body::BoxBody;
use actix_web::dev::ServiceRequest;
use actix_web::middleware::{Next, from_fn};
use actix_web::web;
use serde_json::{Value, json};

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path, `{name}` for a segment.
    pub path: &'static str,
    /// The one permission it needs.
    pub permission: Permission,
    /// What it does.
    pub summary: &'static str,
}

macro_rules! routes {
    ($($method:ident $path:literal $perm:ident $summary:literal => $handler:expr;)*) => {
        /// The routes, in the order they are matched.
        pub const ROUTES: &[RouteSpec] = &[$(RouteSpec {
            method: method_name(stringify!($method)),
            path: $path,
            permission: Permission::$perm,
            summary: $summary,
        }),*];

        /// Registers every route behind its guard.
        pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
            let mut specs = ROUTES.iter();
            $(
                if let Some(spec) = specs.next() {
                    cfg.service(
                        web::resource(spec.path)
                            .guard(actix_web::guard::$method())
                            .route(web::route().to($handler))
                            .wrap(from_fn(move |req: ServiceRequest, next: Next<BoxBody>| {
                                guard(spec, req, next)
                            })),
                    );
                }
            )*
        }
    };
}

const fn method_name(ident: &'static str) -> &'static str {
    match ident.as_bytes() {
        b"Get" => "GET",
        _ => "POST",
    }
}

routes! {
    Get "/v1/openapi.json" Public "This document." => h::openapi_document;
    Get "/console/login" Public "The login page." => p::login_page;
    Post "/console/login" Public "Log in with a password: a session cookie." => p::login;
    Post "/console/logout" Session "End the session." => p::logout;
    Get "/v1/me" Session "The caller: name, roles, and the session's CSRF token." => h::me;

    Get "/v1/dashboard" DashboardRead "Today by hour, budget, sessions, credits, alerts and cases." => h::dashboard;
    Get "/console" DashboardRead "The dashboard page." => p::dashboard;

    Get "/v1/merchants" MerchantsRead "Merchants and applications." => h::merchants;
    Post "/v1/merchants/applications" MerchantsApply "Enter an application with the category's eligibility facts." => h::apply;
    Post "/v1/merchants/applications/{id}/recommendation" MerchantsRecommend "The district recommends an application." => h::recommend;
    Post "/v1/merchants/applications/{id}/signing" MerchantsPropose "Propose signing a recommended application (four eyes)." => commands::propose_signing;
    Post "/v1/merchants/{id}/suspension" MerchantsPropose "Propose suspending a merchant, with its reason (four eyes)." => commands::propose_suspension;
    Post "/v1/merchants/{id}/reinstatement" MerchantsPropose "Propose reinstating a suspended merchant (four eyes)." => commands::propose_reinstatement;
    Get "/console/merchants" MerchantsRead "The merchants page." => p::merchants;

    Get "/v1/devices" DevicesRead "Devices: registry, online state, hot-list version." => h::devices;
    Post "/v1/devices" DevicesWrite "Register a device (or change its kind and merchant)." => h::register_device;
    Post "/v1/devices/{id}/disable" DevicesWrite "Disable a device: its session is closed." => h::disable_device;
    Post "/v1/devices/{id}/enable" DevicesWrite "Enable a device again." => h::enable_device;
    Get "/console/devices" DevicesRead "The devices page." => p::devices;

    Get "/v1/clearing/days" ClearingRead "Cleared days with their totals and seals." => h::clearing_days;
    Get "/v1/clearing/days/{date}" ClearingRead "A day's figures, control totals, seal and files." => h::clearing_day;
    Post "/v1/clearing/days/{date}/run" ClearingRun "Clear a day that has ended (no money moves until approval)." => h::run_clearing;
    Post "/v1/clearing/days/{date}/approval" ClearingPropose "Propose a day's approval: its credits are released when another auditor approves." => commands::propose_clearing;
    Get "/v1/clearing/days/{date}/files/{name}" ClearingRead "Download a settlement file." => h::settlement_file;
    Get "/console/clearing" ClearingRead "The clearing page." => p::clearing;
    Get "/console/clearing/{date}" ClearingRead "One day's page." => p::clearing_day;

    Get "/v1/awards" AwardsRead "Organizer awards." => h::awards;
    Post "/v1/awards" AwardsEnter "Enter an award with its evidence." => h::enter_award;
    Post "/v1/awards/{id}/approval" AwardsPropose "Propose an award's approval (four eyes)." => commands::propose_award;
    Get "/console/awards" AwardsRead "The awards page." => p::awards;

    Get "/v1/budget" DashboardRead "Budget caps (policy and overrides) and what each budget granted." => h::budget;
    Post "/v1/budget" BudgetPropose "Propose a budget cap change (four eyes)." => commands::propose_budget;

    Post "/v1/blacklist" BlacklistPropose "Propose listing or unlisting a card (four eyes)." => commands::propose_blacklist;

    Get "/v1/cases" CasesRead "Fraud cases, newest first." => h::cases;
    Get "/v1/cases/{id}" CasesRead "A case with its alerts, reports and trail." => h::case;
    Post "/v1/cases/{id}/assign" CasesStep "Take a case for review." => h::assign_case;
    Post "/v1/cases/{id}/dismiss" CasesStep "Dismiss a case (eligibility unchanged)." => h::dismiss_case;
    Post "/v1/cases/{id}/confirm" CasesPropose "Propose confirming a case: the card is listed or the merchant suspended (four eyes)." => commands::propose_case_confirm;
    Post "/v1/cases/{id}/lift" CasesPropose "Propose lifting a confirmed case (four eyes)." => commands::propose_case_lift;
    Get "/console/cases" CasesRead "The cases page." => p::cases;

    Get "/v1/commands" CommandsRead "Commands, newest first (status=PENDING…)." => h::commands;
    Get "/v1/commands/{id}" CommandsRead "One command." => h::command;
    Post "/v1/commands/clearing/{id}/approve" ClearingDecide "Approve a day's approval proposed by another user." => commands::approve;
    Post "/v1/commands/clearing/{id}/reject" ClearingDecide "Reject it." => commands::reject;
    Post "/v1/commands/award/{id}/approve" AwardsDecide "Approve an award proposed by another user." => commands::approve;
    Post "/v1/commands/award/{id}/reject" AwardsDecide "Reject it." => commands::reject;
    Post "/v1/commands/merchant/{id}/approve" MerchantsDecide "Approve a signing, suspension or reinstatement." => commands::approve;
    Post "/v1/commands/merchant/{id}/reject" MerchantsDecide "Reject it." => commands::reject;
    Post "/v1/commands/budget/{id}/approve" BudgetDecide "Approve a budget change." => commands::approve;
    Post "/v1/commands/budget/{id}/reject" BudgetDecide "Reject it." => commands::reject;
    Post "/v1/commands/blacklist/{id}/approve" BlacklistDecide "Approve a blacklist change." => commands::approve;
    Post "/v1/commands/blacklist/{id}/reject" BlacklistDecide "Reject it." => commands::reject;
    Post "/v1/commands/case/{id}/approve" CasesDecide "Approve confirming or lifting a case." => commands::approve;
    Post "/v1/commands/case/{id}/reject" CasesDecide "Reject it." => commands::reject;
    Get "/console/commands" CommandsRead "The commands page: what waits for a second pair of eyes." => p::commands;

    Get "/v1/statistics" StatisticsRead "Cleared days' figures by district and category (from, to)." => h::statistics;
    Get "/v1/statistics.csv" StatisticsRead "The same, as CSV." => h::statistics_csv;
    Get "/v1/statistics.xlsx" StatisticsRead "The same, as an XLSX workbook." => h::statistics_xlsx;
    Get "/v1/statistics/merchant-days" StatisticsRead "Purchases per merchant and business day (from, to; at most 62 days), as the spike rule reads them." => h::merchant_days;
    Get "/v1/statistics.svg" StatisticsRead "Subsidy by district and category, as an SVG chart." => h::statistics_svg;
    Get "/console/statistics" StatisticsRead "The statistics page." => p::statistics;

    Get "/v1/audit/log" AuditRead "The audit log, newest first (before=seq)." => h::audit_log;
    Get "/v1/audit/verify" AuditRead "Recompute the audit log's hash chain." => h::audit_verify;
    Get "/v1/audit/figures" AuditFigures "Whole-store figures for an invariant check." => h::audit_figures;
    Get "/console/audit" AuditRead "The audit log page." => p::audit;

    Get "/v1/users" UsersRead "Users and their roles." => h::users;
    Post "/v1/users/{name}/roles" UsersWrite "Set a user's roles." => h::set_roles;
    Get "/console/users" UsersRead "The users page." => p::users;

    Get "/v1/cards/{card}/credits" CardsRead "A card's subsidy: pending, released and loaded, by day (the residents' app)." => h::card_credits;
    Get "/v1/cards/{card}/points" CardsRead "A card's points: balance and history (the residents' app)." => h::card_points;
}

/// The command family a decision route is for (`/v1/commands/{family}/{id}/…`).
pub(crate) fn family_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/commands/")?.split('/').next()
}

/// The OpenAPI 3.0 document of [`ROUTES`]: each operation carries its permission
/// (`x-permission`), its path parameters and its answers.
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true,
                        "schema": { "type": "string" } })
            })
            .collect();
        let mut responses = serde_json::Map::new();
        responses.insert("200".into(), json!({ "description": "Done." }));
        responses.insert(
            "400".into(),
            json!({ "description": "A field is bad: `field` names it." }),
        );
        if r.permission != Permission::Public {
            responses.insert("401".into(), json!({ "description": "Not signed in." }));
            responses.insert(
                "403".into(),
                json!({ "description": "The caller's roles do not grant `x-permission` (or the CSRF token is missing)." }),
            );
        }
        if r.method == "POST" {
            responses.insert(
                "409".into(),
                json!({ "description": "Conflicts with the current state (a pending duplicate, the proposer approving, a step the state does not allow)." }),
            );
        }
        let op = json!({
            "summary": r.summary,
            "operationId": format!("{} {}", r.method, r.path),
            "x-permission": r.permission.name(),
            "parameters": params,
            "security": if r.permission == Permission::Public {
                json!([])
            } else {
                json!([{ "bearer": [] }, { "session": [] }])
            },
            "responses": responses,
        });
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_ascii_lowercase(), op);
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Wenxiao operations console",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The supervision centre's API. Each operation needs the one permission in its x-permission; roles grant permissions (see docs/operations.md).",
        },
        "components": { "securitySchemes": {
            "bearer": { "type": "http", "scheme": "bearer" },
            "session": { "type": "apiKey", "in": "cookie", "name": super::SESSION_COOKIE },
        }},
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_and_path_is_one_route() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn the_document_lists_every_route_with_its_permission() {
        let doc = openapi();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert_eq!(op["x-permission"], r.permission.name(), "{}", r.path);
        }
    }

    #[test]
    fn decision_routes_name_their_family() {
        assert_eq!(
            family_of("/v1/commands/clearing/{id}/approve"),
            Some("clearing")
        );
        assert_eq!(family_of("/v1/cases"), None);
    }
}
