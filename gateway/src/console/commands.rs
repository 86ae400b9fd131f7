//! Four eyes: whatever moves money or changes eligibility is a command. One user proposes
//! it (with a reason); a second pending command for the same thing is refused (409).
//! Another user approves or rejects it (with a reason); the proposer never can (409).
//! Approval carries it out, then records the decision and its audit row in one
//! transaction.
//!
//! Each action is idempotent — approving a day, an award, a list change, a merchant's
//! flag, a budget override twice changes nothing the second time — so an approval cut
//! between carrying out and recording leaves the command pending, and approving it again
//! finishes it without doing anything twice.

// `serde_json::Value["key"]` answers Null for a missing key or a non-object: it does not
// panic, which is what this lint guards against.
#![allow(clippy::indexing_slicing)]

use super::fields::{Fields, TEXT_BYTES_MAX, path_date, path_int};
use super::{ConsoleState, caller};
use crate::httpapi::{ApiError, answer, bad_field};
use crate::store::console::{
    CommandRow, CommandStatus, ConsoleStore, Decided, Decision, NewCommand, Proposed,
};
use crate::store::risk::{CaseAction, CaseStep, RiskStore};
use crate::store::{AwardApproval, IngestCtx, Store};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

/// The answer to a write: JSON for the API, a redirect back for a form.
pub(crate) fn respond(req: &HttpRequest, form: bool, body: Value) -> HttpResponse {
    if form {
        let back = req
            .headers()
            .get("referer")
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.find("/console").map(|i| r[i..].to_owned()))
            .filter(|p| !p.starts_with("/console/login"))
            .unwrap_or_else(|| "/console/commands".to_owned());
        HttpResponse::SeeOther()
            .insert_header(("location", back))
            .finish()
    } else {
        HttpResponse::Ok().json(body)
    }
}

async fn propose(
    state: &ConsoleState,
    req: &HttpRequest,
    form: bool,
    kind: &'static str,
    target: String,
    args: Value,
    reason: String,
) -> Result<HttpResponse, ApiError> {
    let by = caller(req)?.username;
    let store = state.store();
    let command = NewCommand {
        kind,
        target: target.clone(),
        args,
        by,
        reason,
        now_ms: crate::clock::now_ms(),
    };
    match state
        .on_store(async move { store.propose(command).await })
        .await?
    {
        Proposed::Created(id) => {
            // A day's page shows its open command at once.
            state.days.clear();
            Ok(respond(
                req,
                form,
                json!({ "status": "PENDING", "command_id": id, "kind": kind, "target": target }),
            ))
        }
        Proposed::DuplicatePending(id) => Err(answer(
            StatusCode::CONFLICT,
            "DUPLICATE_PENDING",
            json!({ "command_id": id, "message": format!("command {id} already proposes this and is pending") }),
        )),
    }
}

fn reason(f: &Fields) -> Result<String, ApiError> {
    f.text("reason", TEXT_BYTES_MAX)
}

/// `POST /v1/clearing/days/{date}/approval` `{reason}`
pub(crate) async fn propose_clearing(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let date = path_date(&req)?;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let store = state.store();
    let cleared = state
        .on_store(async move { store.clearing_report(date).await })
        .await?;
    match cleared {
        None => Err(answer(
            StatusCode::CONFLICT,
            "NOT_CLEARED",
            json!({ "message": format!("{date} is not cleared: run it first") }),
        )),
        Some(r) if r.summary.approved => Err(answer(
            StatusCode::CONFLICT,
            "ALREADY_APPROVED",
            json!({ "message": format!("{date} is approved already") }),
        )),
        Some(_) => {
            propose(
                &state,
                &req,
                f.form,
                "clearing",
                format!("day {date}"),
                json!({ "date": date.get() }),
                reason,
            )
            .await
        }
    }
}

/// `POST /v1/awards/{id}/approval` `{reason}`
pub(crate) async fn propose_award(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let store = state.store();
    let award = state.on_store(async move { store.award(id).await }).await?;
    match award {
        None => Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_AWARD",
            json!({ "award_id": id }),
        )),
        Some(a) if a.approved => Err(answer(
            StatusCode::CONFLICT,
            "ALREADY_APPROVED",
            json!({ "award_id": id }),
        )),
        Some(_) => {
            propose(
                &state,
                &req,
                f.form,
                "award",
                format!("award {id}"),
                json!({ "award_id": id }),
                reason,
            )
            .await
        }
    }
}

/// `POST /v1/blacklist` `{card_no, listed, reason}`
pub(crate) async fn propose_blacklist(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::parse(&req, &body, &["card_no", "listed", "reason"])?;
    let card = f.int("card_no", 1, i64::MAX)?;
    let listed = f.bool("listed")?;
    let reason = reason(&f)?;
    propose(
        &state,
        &req,
        f.form,
        "blacklist",
        format!("card {card}"),
        json!({ "card_no": card, "listed": listed }),
        reason,
    )
    .await
}

/// `POST /v1/merchants/applications/{id}/signing` `{reason}`
pub(crate) async fn propose_signing(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let store = state.store();
    let app = state
        .on_store(async move { store.application(id).await })
        .await?
        .ok_or_else(|| {
            answer(
                StatusCode::NOT_FOUND,
                "UNKNOWN_APPLICATION",
                json!({ "application_id": id }),
            )
        })?;
    if app.status != 2 {
        return Err(answer(
            StatusCode::CONFLICT,
            "NOT_RECOMMENDED",
            json!({ "message": "the district has not recommended this application" }),
        ));
    }
    propose(
        &state,
        &req,
        f.form,
        "merchant",
        format!("application {id}"),
        json!({ "action": "sign", "application_id": id }),
        reason,
    )
    .await
}

async fn propose_merchant_flag(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
    active: bool,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let known = state
        .shared
        .registry
        .read()
        .map(|r| {
            r.merchant(crate::registry::MerchantId(id))
                .map(|m| m.active)
        })
        .ok()
        .flatten();
    match known {
        None => Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_MERCHANT",
            json!({ "merchant_id": id }),
        )),
        Some(a) if a == active => Err(answer(
            StatusCode::CONFLICT,
            if active {
                "NOT_SUSPENDED"
            } else {
                "ALREADY_SUSPENDED"
            },
            json!({ "merchant_id": id }),
        )),
        Some(_) => {
            let action = if active { "reinstate" } else { "suspend" };
            propose(
                &state,
                &req,
                f.form,
                "merchant",
                format!("merchant {id}"),
                json!({ "action": action, "merchant_id": id }),
                reason,
            )
            .await
        }
    }
}

/// `POST /v1/merchants/{id}/suspension` `{reason}`
pub(crate) async fn propose_suspension(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    propose_merchant_flag(state, req, body, false).await
}

/// `POST /v1/merchants/{id}/reinstatement` `{reason}`
pub(crate) async fn propose_reinstatement(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    propose_merchant_flag(state, req, body, true).await
}

/// Largest budget cap a command may set, fen (10 billion yuan).
const BUDGET_CAP_FEN_MAX: i64 = 1_000_000_000_000;

/// `POST /v1/budget` `{budget: "monthly"|"programme", cap_fen, reason}`
pub(crate) async fn propose_budget(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let f = Fields::parse(&req, &body, &["budget", "cap_fen", "reason"])?;
    let budget = f.choice("budget", &["monthly", "programme"])?;
    let cap = f.int("cap_fen", 0, BUDGET_CAP_FEN_MAX)?;
    let reason = reason(&f)?;
    propose(
        &state,
        &req,
        f.form,
        "budget",
        format!("budget {budget}"),
        json!({ "budget": budget, "cap_fen": cap }),
        reason,
    )
    .await
}

async fn propose_case(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
    action: &'static str,
) -> Result<HttpResponse, ApiError> {
    let id = path_int(&req, "id", 1, i64::MAX)?;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let store = state.store();
    if state
        .on_store(async move { store.case(id).await })
        .await?
        .is_none()
    {
        return Err(answer(
            StatusCode::NOT_FOUND,
            "UNKNOWN_CASE",
            json!({ "case_id": id }),
        ));
    }
    propose(
        &state,
        &req,
        f.form,
        "case",
        format!("case {id}"),
        json!({ "action": action, "case_id": id }),
        reason,
    )
    .await
}

/// `POST /v1/cases/{id}/confirm` `{reason}`
pub(crate) async fn propose_case_confirm(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    propose_case(state, req, body, "confirm").await
}

/// `POST /v1/cases/{id}/lift` `{reason}`
pub(crate) async fn propose_case_lift(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    propose_case(state, req, body, "lift").await
}

/// What carrying a command out did.
struct Executed {
    ok: bool,
    outcome: String,
    seal: Option<(wenxiao_protocol::BusinessDate, String)>,
    files_of: Option<wenxiao_protocol::BusinessDate>,
}

fn arg_i64(c: &CommandRow, name: &str) -> Result<i64, ApiError> {
    c.args[name].as_i64().ok_or_else(|| {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "BAD_COMMAND",
            json!({ "arg": name }),
        )
    })
}

/// Carries out an approved command (idempotent: see the module's documentation).
async fn execute(
    state: &ConsoleState,
    c: &CommandRow,
    approver: &str,
) -> Result<Executed, ApiError> {
    let store = state.store();
    let now = crate::clock::now_ms();
    let done = |ok: bool, outcome: String| Executed {
        ok,
        outcome,
        seal: None,
        files_of: None,
    };
    match c.kind.as_str() {
        "clearing" => {
            let date = u32::try_from(arg_i64(c, "date")?)
                .ok()
                .and_then(|d| wenxiao_protocol::BusinessDate::new(d).ok())
                .ok_or_else(|| bad_field("date", "not a date"))?;
            let s = store.clone();
            if !state
                .on_store(async move { s.approve_day(date, now).await })
                .await?
            {
                return Ok(done(false, format!("{date} is not cleared")));
            }
            let s = store.clone();
            let report = state
                .on_store(async move { s.clearing_report(date).await })
                .await?
                .ok_or_else(|| answer(StatusCode::CONFLICT, "NOT_CLEARED", json!({})))?;
            let seal = crate::clearing::seal_hash(&report);
            Ok(Executed {
                ok: true,
                outcome: format!(
                    "{date} approved: {} credits, {} fen released; seal {seal}",
                    report.summary.credit_count,
                    report.summary.credit_fen.get()
                ),
                seal: Some((date, seal)),
                files_of: Some(date),
            })
        }
        "award" => {
            let id = arg_i64(c, "award_id")?;
            let ctx = IngestCtx::new(&state.shared.policy, 0);
            let today = crate::clock::business_date(now)
                .ok_or_else(|| answer(StatusCode::SERVICE_UNAVAILABLE, "CLOCK", json!({})))?;
            let r = state
                .on_store(async move { store.approve_award(id, ctx, today, now).await })
                .await?;
            Ok(match r {
                AwardApproval::Approved | AwardApproval::AlreadyApproved => done(
                    true,
                    format!("award {id} approved and paid from the budget"),
                ),
                AwardApproval::Unknown => done(false, format!("no award {id}")),
                AwardApproval::BudgetExhausted => done(
                    false,
                    format!("the budget cannot pay award {id} whole; it stays recorded"),
                ),
            })
        }
        "blacklist" => {
            let card = arg_i64(c, "card_no")?;
            let listed = c.args["listed"].as_bool().unwrap_or(false);
            let card_no = wenxiao_protocol::CardNo(u64::try_from(card).unwrap_or(0));
            let change = crate::store::HotlistChange {
                add: if listed {
                    vec![(card_no, c.proposal_reason.clone())]
                } else {
                    Vec::new()
                },
                remove: if listed { Vec::new() } else { vec![card_no] },
                source: format!(
                    "command {} ({} and {approver})",
                    c.command_id, c.proposed_by
                ),
                now_ms: now,
                keep_versions: state.shared.config.hotlist.delta_versions_kept,
            };
            let r = state
                .on_store(async move { store.change_hotlist(change).await })
                .await?;
            state.shared.hotlist_wake.notify_one();
            Ok(done(
                true,
                match r.version {
                    Some(v) => format!(
                        "card {card} {}; hot-list version {v}",
                        if listed {
                            "listed"
                        } else {
                            "taken off the list"
                        }
                    ),
                    None => format!("card {card} was already so; nothing changed"),
                },
            ))
        }
        "merchant" => {
            let r = match c.args["action"].as_str() {
                Some("sign") => {
                    let id = arg_i64(c, "application_id")?;
                    match state
                        .on_store(async move { store.sign_application(id).await })
                        .await?
                    {
                        Some(m) => done(true, format!("application {id} signed: merchant {m}")),
                        None => done(false, format!("application {id} is not recommended")),
                    }
                }
                Some(action) => {
                    let id = arg_i64(c, "merchant_id")?;
                    let active = action == "reinstate";
                    if state
                        .on_store(async move { store.set_merchant_active(id, active).await })
                        .await?
                    {
                        done(
                            true,
                            format!(
                                "merchant {id} {}",
                                if active { "reinstated" } else { "suspended" }
                            ),
                        )
                    } else {
                        done(false, format!("no merchant {id}"))
                    }
                }
                None => done(false, "no action".to_owned()),
            };
            state.shared.registry_wake.notify_one();
            Ok(r)
        }
        "budget" => {
            let name = if c.args["budget"].as_str() == Some("programme") {
                "programme"
            } else {
                "monthly"
            };
            let cap = arg_i64(c, "cap_fen")?;
            let by = approver.to_owned();
            state
                .on_store(async move { store.set_budget_override(name, cap, by, now).await })
                .await?;
            state.shared.registry_wake.notify_one();
            Ok(done(true, format!("{name} budget cap set to {cap} fen")))
        }
        "case" => {
            let id = arg_i64(c, "case_id")?;
            let action = match c.args["action"].as_str() {
                Some("confirm") => CaseAction::Confirm,
                _ => CaseAction::Lift,
            };
            let step = CaseStep {
                case_id: id,
                action,
                actor: format!("{} and {approver}", c.proposed_by),
                reason: c.proposal_reason.clone(),
                now_ms: now,
                keep_versions: state.shared.config.hotlist.delta_versions_kept,
            };
            match crate::httpapi::on_store(&state.shared.store_rt, async move {
                store.step_case(step).await
            })
            .await
            {
                Ok(d) => {
                    if d.hotlist_version.is_some() {
                        state.shared.hotlist_wake.notify_one();
                    }
                    if d.registry_changed {
                        state.shared.registry_wake.notify_one();
                    }
                    Ok(done(true, format!("case {id} stepped")))
                }
                Err(e) if e.status() == StatusCode::CONFLICT => {
                    Ok(done(false, format!("case {id}: {e}")))
                }
                Err(e) => Err(e),
            }
        }
        other => Ok(done(false, format!("unknown kind {other}"))),
    }
}

async fn load(state: &ConsoleState, req: &HttpRequest) -> Result<CommandRow, ApiError> {
    let id = path_int(req, "id", 1, i64::MAX)?;
    let family =
        super::routes::family_of(req.match_pattern().as_deref().unwrap_or("")).map(str::to_owned);
    let store = state.store();
    let c = state
        .on_store(async move { store.command(id).await })
        .await?
        .filter(|c| family.as_deref() == Some(c.kind.as_str()))
        .ok_or_else(|| {
            answer(
                StatusCode::NOT_FOUND,
                "UNKNOWN_COMMAND",
                json!({ "command_id": id }),
            )
        })?;
    Ok(c)
}

/// Which decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Approve: a pending command, or one an approver claimed.
    Approve,
    /// Reject: a pending command only.
    Reject,
}

fn refuse_decision(c: &CommandRow, by: &str, verdict: Verdict) -> Result<(), ApiError> {
    let open = c.status == CommandStatus::Pending
        || verdict == Verdict::Approve && c.status == CommandStatus::Approving;
    if !open {
        return Err(answer(
            StatusCode::CONFLICT,
            "NOT_PENDING",
            json!({ "command_id": c.command_id, "message": format!("command {} is {:?}", c.command_id, c.status) }),
        ));
    }
    if c.proposed_by == by {
        return Err(answer(
            StatusCode::CONFLICT,
            "OWN_PROPOSAL",
            json!({ "command_id": c.command_id, "message": "the proposer cannot decide their own command: another user must" }),
        ));
    }
    Ok(())
}

fn decided(d: Decided, c: &CommandRow, by: &str, verdict: Verdict) -> Result<(), ApiError> {
    match d {
        Decided::Done => Ok(()),
        Decided::Unknown => Err(answer(StatusCode::NOT_FOUND, "UNKNOWN_COMMAND", json!({}))),
        Decided::NotPending => refuse_decision(
            &CommandRow {
                status: CommandStatus::Approved,
                ..c.clone()
            },
            by,
            verdict,
        ),
        Decided::OwnProposal => refuse_decision(
            &CommandRow {
                proposed_by: by.to_owned(),
                ..c.clone()
            },
            by,
            verdict,
        ),
    }
}

/// `POST /v1/commands/{family}/{id}/approve` `{reason}`: carries it out, then records the
/// decision (failed, with the outcome, when it could not be done).
pub(crate) async fn approve(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&req)?.username;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let c = load(&state, &req).await?;
    refuse_decision(&c, &by, Verdict::Approve)?;
    // Claimed first, so that no rejection can be recorded once the action has run; a
    // command an earlier approval claimed (cut before its record) is carried out again.
    let store = state.store();
    let (id, who) = (c.command_id, by.clone());
    let claimed = state
        .on_store(async move { store.claim(id, who).await })
        .await?;
    decided(claimed, &c, &by, Verdict::Approve)?;
    let ex = match execute(&state, &c, &by).await {
        Ok(ex) => ex,
        // The store failed: whether the action ran is not known, so the command stays
        // APPROVING and approving it again completes it.
        Err(e) if e.status().is_server_error() => return Err(e),
        // Refused before anything was done (bad arguments, a state that does not allow
        // it): recorded FAILED with the reason, so the target is free again.
        Err(e) => Executed {
            ok: false,
            outcome: e.to_string(),
            seal: None,
            files_of: None,
        },
    };
    let status = if ex.ok {
        CommandStatus::Approved
    } else {
        CommandStatus::Failed
    };
    let store = state.store();
    let decision = Decision {
        command_id: c.command_id,
        by: by.clone(),
        status,
        reason,
        outcome: Some(ex.outcome.clone()),
        now_ms: crate::clock::now_ms(),
        seal: ex.seal.clone(),
    };
    let d = state
        .on_store(async move { store.decide(decision).await })
        .await?;
    decided(d, &c, &by, Verdict::Approve)?;
    // What it changed shows on this node's dashboard at once.
    state.dashboard.expire();
    state.days.clear();
    if let Some(date) = ex.files_of {
        super::handlers::write_files(&state, date).await?;
    }
    Ok(respond(
        &req,
        f.form,
        json!({ "command_id": c.command_id, "status": status, "outcome": ex.outcome,
                "seal": ex.seal.map(|s| s.1) }),
    ))
}

/// `POST /v1/commands/{family}/{id}/reject` `{reason}`
pub(crate) async fn reject(
    state: web::Data<ConsoleState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&req)?.username;
    let f = Fields::parse(&req, &body, &["reason"])?;
    let reason = reason(&f)?;
    let c = load(&state, &req).await?;
    refuse_decision(&c, &by, Verdict::Reject)?;
    let store = state.store();
    let decision = Decision {
        command_id: c.command_id,
        by: by.clone(),
        status: CommandStatus::Rejected,
        reason,
        outcome: None,
        now_ms: crate::clock::now_ms(),
        seal: None,
    };
    let d = state
        .on_store(async move { store.decide(decision).await })
        .await?;
    decided(d, &c, &by, Verdict::Reject)?;
    state.days.clear();
    Ok(respond(
        &req,
        f.form,
        json!({ "command_id": c.command_id, "status": CommandStatus::Rejected }),
    ))
}
