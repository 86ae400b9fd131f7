//! Alerts, cases, reports and the rules' reads, over any backend.

use super::super::backend::{Backend, Row, Sql, Tx, TxMode, params};
use super::super::risk::{
    AlertRecord, CaseAction, CaseDetail, CaseEvent, CaseStatus, CaseStep, CaseStepDone,
    CaseSummary, FactRow, NewAlert, NewReport, PurchaseRef, ReportOutcome, ReportRecord, RiskStore,
    Subject,
};
use super::super::{HotlistChange, StoreError, db_u64, from_db_u64};
use super::{Ledger, hotlist};
use crate::registry::MerchantId;
use wenxiao_protocol::{BusinessDate, CardNo, DeviceId, Fen, TxnKind};

/// Every risk write takes this first (after the hot list's lock, for a case step): one
/// lock order, so that case openers, alert recorders and case steps queue rather than
/// deadlock on PostgreSQL. Risk writes are few.
const LOCK_CASES: Sql = Sql::pg_only("LOCK TABLE risk_cases IN EXCLUSIVE MODE");

/// Which table an id is for.
#[derive(Debug, Clone, Copy)]
enum Ids {
    Cases,
    Alerts,
    Reports,
}

/// Ids from the table's maximum, under a lock of the table (risk rows are few: alerts
/// and cases come by the dozen a day, not by the thousand a second).
async fn next_id<T: Tx>(tx: &mut T, ids: Ids) -> Result<i64, StoreError> {
    let (lock, max) = match ids {
        Ids::Cases => (
            Sql::pg_only("LOCK TABLE risk_cases IN EXCLUSIVE MODE"),
            Sql::both("SELECT CAST(COALESCE(MAX(case_id), 0) + 1 AS BIGINT) FROM risk_cases"),
        ),
        Ids::Alerts => (
            Sql::pg_only("LOCK TABLE risk_alerts IN EXCLUSIVE MODE"),
            Sql::both("SELECT CAST(COALESCE(MAX(alert_id), 0) + 1 AS BIGINT) FROM risk_alerts"),
        ),
        Ids::Reports => (
            Sql::pg_only("LOCK TABLE risk_reports IN EXCLUSIVE MODE"),
            Sql::both("SELECT CAST(COALESCE(MAX(report_id), 0) + 1 AS BIGINT) FROM risk_reports"),
        ),
    };
    tx.execute(&lock, &[]).await?;
    tx.query_one(&max, &[]).await?.int(0)
}

/// The subject's open (or assigned) case, else a new open one; its band raised to
/// `band`.
async fn case_for<T: Tx>(
    tx: &mut T,
    subject: Subject,
    band: i16,
    at_ms: i64,
    opened_by: &str,
) -> Result<i64, StoreError> {
    let (kind, id) = subject.to_db();
    if let Some(r) = tx
        .query_opt(
            &Sql::both(
                "SELECT case_id FROM risk_cases \
                 WHERE subject_kind = $1 AND subject = $2 AND status IN (1, 2) FOR UPDATE",
            ),
            params![kind, id],
        )
        .await?
    {
        let case_id = r.int(0)?;
        tx.execute(
            &Sql::both("UPDATE risk_cases SET band = $2 WHERE case_id = $1 AND band < $2"),
            params![case_id, band],
        )
        .await?;
        return Ok(case_id);
    }
    let case_id = next_id(tx, Ids::Cases).await?;
    tx.execute(
        &Sql::both(
            "INSERT INTO risk_cases (case_id, subject_kind, subject, status, band, opened_at_ms) \
             VALUES ($1, $2, $3, 1, $4, $5)",
        ),
        params![case_id, kind, id, band, at_ms],
    )
    .await?;
    event(
        tx,
        case_id,
        at_ms,
        opened_by,
        "opened",
        &format!("{subject}"),
        serde_json::Value::Null,
    )
    .await?;
    Ok(case_id)
}

async fn event<T: Tx>(
    tx: &mut T,
    case_id: i64,
    at_ms: i64,
    actor: &str,
    action: &str,
    reason: &str,
    evidence: serde_json::Value,
) -> Result<(), StoreError> {
    tx.execute(
        &Sql::both(
            "INSERT INTO risk_case_events (case_id, seq, at_ms, actor, action, reason, evidence) \
             SELECT $1, CAST(COALESCE(MAX(seq), 0) + 1 AS BIGINT), $2, $3, $4, $5, $6 \
             FROM risk_case_events WHERE case_id = $1",
        ),
        params![case_id, at_ms, actor, action, reason, evidence.to_string()],
    )
    .await?;
    Ok(())
}

/// The columns [`case_row`] reads, of `risk_cases c`.
macro_rules! case_columns {
    () => {
        "c.case_id, c.subject_kind, c.subject, c.status, c.band, c.opened_at_ms, c.assignee, \
         c.decided_by, c.decided_at_ms, c.decision, \
         CAST((SELECT COUNT(*) FROM risk_alerts a WHERE a.case_id = c.case_id) AS BIGINT), \
         CAST((SELECT COUNT(*) FROM risk_reports r WHERE r.case_id = c.case_id) AS BIGINT)"
    };
}

fn case_row(r: &Row) -> Result<CaseSummary, StoreError> {
    Ok(CaseSummary {
        case_id: r.int(0)?,
        subject: Subject::from_db(r.get(1)?, r.int(2)?)?,
        status: CaseStatus::from_code(r.get(3)?)?,
        band: r.get(4)?,
        opened_at_ms: r.int(5)?,
        assignee: r.opt_text(6)?,
        decided_by: r.opt_text(7)?,
        decided_at_ms: r.opt_int(8)?,
        decision: r.opt_text(9)?,
        alerts: r.int(10)?,
        reports: r.int(11)?,
    })
}

fn json(r: &Row, i: usize) -> Result<serde_json::Value, StoreError> {
    let text = r.text(i)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("JSON column: {e}")))
}

async fn case_in<T: Tx>(tx: &mut T, case_id: i64) -> Result<Option<CaseSummary>, StoreError> {
    const CASE: Sql = Sql::both(concat!(
        "SELECT ",
        case_columns!(),
        " FROM risk_cases c WHERE c.case_id = $1"
    ));
    tx.query(&CASE, params![case_id])
        .await?
        .first()
        .map(case_row)
        .transpose()
}

fn fact_row(r: &Row) -> Result<FactRow, StoreError> {
    let kind: u8 = r.get(3)?;
    let date: u32 = r.get(10)?;
    let fact = crate::risk::engine::Fact {
        device_id: DeviceId(from_db_u64(r.int(0)?)),
        seq: from_db_u64(r.int(1)?),
        merchant_id: r.opt_int(2)?.map(MerchantId),
        kind: TxnKind::from_code(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("txn kind {kind}")))?,
        card_no: CardNo(from_db_u64(r.int(4)?)),
        card_counter: r.get(5)?,
        amount_fen: Fen(r.int(6)?),
        subsidy_fen: Fen(r.int(7)?),
        occurred_at_ms: r.int(8)?,
        received_at_ms: r.int(9)?,
        business_date: BusinessDate::new(date)
            .map_err(|_| StoreError::Corrupt(format!("business date {date}")))?,
        refund_of: None,
    };
    Ok(FactRow {
        fact,
        refund_of_seq: from_db_u64(r.int(11)?),
        rejected: r.int(12)? == 3,
    })
}

impl<B: Backend> RiskStore for Ledger<B> {
    async fn record_alerts(&self, alerts: Vec<NewAlert>) -> Result<u64, StoreError> {
        if alerts.is_empty() {
            return Ok(0);
        }
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(&LOCK_CASES, &[]).await?;
        let mut recorded = 0;
        for a in alerts {
            let (kind, id) = a.subject.to_db();
            let date = i64::from(a.business_date.get());
            let seen = tx
                .query_opt(
                    &Sql::both(
                        "SELECT alert_id FROM risk_alerts WHERE rule = $1 AND subject_kind = $2 \
                         AND subject = $3 AND business_date = $4",
                    ),
                    params![a.rule, kind, id, date],
                )
                .await?;
            if seen.is_some() {
                continue;
            }
            let case_id = case_for(&mut tx, a.subject, a.band, a.at_ms, "rules").await?;
            let alert_id = next_id(&mut tx, Ids::Alerts).await?;
            let figures: serde_json::Map<String, serde_json::Value> = a
                .figures
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect();
            let evidence: Vec<(u64, u64)> = a.evidence.iter().map(|(d, s)| (d.get(), *s)).collect();
            tx.execute(
                &Sql::both(
                    "INSERT INTO risk_alerts (alert_id, rule, subject_kind, subject, business_date, \
                     band, figures, evidence, at_ms, case_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                ),
                params![
                    alert_id,
                    a.rule,
                    kind,
                    id,
                    date,
                    a.band,
                    serde_json::Value::Object(figures).to_string(),
                    serde_json::json!(evidence).to_string(),
                    a.at_ms,
                    case_id
                ],
            )
            .await?;
            recorded += 1;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn list_cases(
        &self,
        status: Option<CaseStatus>,
        limit: i64,
    ) -> Result<Vec<CaseSummary>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let code = status.map_or(0, |s| s as i16);
        const CASES: Sql = Sql::both(concat!(
            "SELECT ",
            case_columns!(),
            " FROM risk_cases c WHERE ($1 = 0 OR c.status = $1) ORDER BY c.case_id DESC LIMIT $2"
        ));
        let rows = tx.query(&CASES, params![code, limit]).await?;
        tx.commit().await?;
        rows.iter().map(case_row).collect()
    }

    async fn case(&self, case_id: i64) -> Result<Option<CaseDetail>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let Some(case) = case_in(&mut tx, case_id).await? else {
            return Ok(None);
        };
        let alert_list = tx
            .query(
                &Sql::both(
                    "SELECT alert_id, rule, business_date, band, figures, evidence, at_ms \
                     FROM risk_alerts WHERE case_id = $1 ORDER BY alert_id",
                ),
                params![case_id],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AlertRecord {
                    alert_id: r.int(0)?,
                    rule: r.text(1)?,
                    business_date: r.get(2)?,
                    band: r.get(3)?,
                    figures: json(r, 4)?,
                    evidence: json(r, 5)?,
                    at_ms: r.int(6)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let report_list = tx
            .query(
                &Sql::both(
                    "SELECT report_id, reporter, text, at_ms FROM risk_reports \
                     WHERE case_id = $1 ORDER BY report_id",
                ),
                params![case_id],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(ReportRecord {
                    report_id: r.int(0)?,
                    reporter: r.text(1)?,
                    text: r.text(2)?,
                    at_ms: r.int(3)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let events = tx
            .query(
                &Sql::both(
                    "SELECT at_ms, actor, action, reason, evidence FROM risk_case_events \
                     WHERE case_id = $1 ORDER BY seq",
                ),
                params![case_id],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(CaseEvent {
                    at_ms: r.int(0)?,
                    actor: r.text(1)?,
                    action: r.text(2)?,
                    reason: r.text(3)?,
                    evidence: json(r, 4)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(Some(CaseDetail {
            case,
            alert_list,
            report_list,
            events,
        }))
    }

    async fn step_case(&self, step: CaseStep) -> Result<CaseStepDone, StoreError> {
        let refuse = |m: String| Err(StoreError::Refused(m));
        if step.actor.trim().is_empty() {
            return refuse("a case step needs its actor".to_owned());
        }
        if step.reason.trim().is_empty() {
            return refuse("a case step needs its reason".to_owned());
        }
        let mut tx = self.backend.begin(TxMode::Write).await?;
        // The hot list's lock first, as every blacklist change takes it: one lock order.
        tx.execute(
            &Sql::pg_only("LOCK TABLE hotlist_versions IN EXCLUSIVE MODE"),
            &[],
        )
        .await?;
        tx.execute(&LOCK_CASES, &[]).await?;
        let locked = tx
            .query_opt(
                &Sql::both("SELECT status FROM risk_cases WHERE case_id = $1 FOR UPDATE"),
                params![step.case_id],
            )
            .await?;
        let (Some(_), Some(case)) = (locked, case_in(&mut tx, step.case_id).await?) else {
            return refuse(format!("no case {}", step.case_id));
        };
        use CaseStatus as S;
        let allowed = matches!(
            (&step.action, case.status),
            (
                CaseAction::Assign { .. } | CaseAction::Confirm | CaseAction::Dismiss,
                S::Open | S::Assigned
            ) | (CaseAction::Lift, S::Confirmed)
        );
        if !allowed {
            return refuse(format!(
                "case {} is {}: it cannot be {}",
                step.case_id,
                case.status.name(),
                step.action.name()
            ));
        }
        let mut done = CaseStepDone {
            hotlist_version: None,
            registry_changed: false,
        };
        let mut evidence = serde_json::Value::Null;
        match &step.action {
            CaseAction::Assign { to } => {
                if to.trim().is_empty() {
                    return refuse("assign to whom?".to_owned());
                }
                tx.execute(
                    &Sql::both(
                        "UPDATE risk_cases SET status = 2, assignee = $2 WHERE case_id = $1",
                    ),
                    params![step.case_id, to.trim()],
                )
                .await?;
                evidence = serde_json::json!({ "assignee": to.trim() });
            }
            CaseAction::Confirm | CaseAction::Dismiss | CaseAction::Lift => {
                let (status, listed) = match step.action {
                    CaseAction::Confirm => (S::Confirmed, Some(true)),
                    CaseAction::Lift => (S::Lifted, Some(false)),
                    _ => (S::Dismissed, None),
                };
                if let Some(on) = listed {
                    let alerts = tx
                        .query(
                            &Sql::both(
                                "SELECT alert_id, rule, evidence FROM risk_alerts \
                                 WHERE case_id = $1 ORDER BY alert_id",
                            ),
                            params![step.case_id],
                        )
                        .await?;
                    let mut list = Vec::new();
                    for r in &alerts {
                        list.push(serde_json::json!({
                            "alert_id": r.int(0)?, "rule": r.text(1)?, "txns": json(r, 2)?
                        }));
                    }
                    evidence = serde_json::json!({ "alerts": list, "reports": case.reports });
                    match case.subject {
                        Subject::Card(card) => {
                            let reason = format!("case {}: {}", step.case_id, step.reason.trim());
                            let change = HotlistChange {
                                add: if on { vec![(card, reason)] } else { Vec::new() },
                                remove: if on { Vec::new() } else { vec![card] },
                                source: format!("case {} {}", step.case_id, step.action.name()),
                                now_ms: step.now_ms,
                                keep_versions: step.keep_versions,
                            };
                            done.hotlist_version =
                                hotlist::change_in(&mut tx, change).await?.version;
                        }
                        Subject::Merchant(m) => {
                            let n = tx
                                .execute(
                                    &Sql::both(
                                        "UPDATE merchants SET active = $2 WHERE merchant_id = $1",
                                    ),
                                    params![m.0, !on],
                                )
                                .await?;
                            if n == 0 {
                                return refuse(format!("merchant {} is not registered", m.0));
                            }
                            done.registry_changed = true;
                            super::cluster::append_event(
                                &mut tx,
                                crate::store::cluster::EventKind::Registry,
                                &m.0.to_string(),
                                crate::clock::now_ms(),
                            )
                            .await?;
                        }
                    }
                }
                tx.execute(
                    &Sql::both(
                        "UPDATE risk_cases SET status = $2, decided_by = $3, decided_at_ms = $4, \
                         decision = $5 WHERE case_id = $1",
                    ),
                    params![
                        step.case_id,
                        status as i16,
                        step.actor.trim(),
                        step.now_ms,
                        step.reason.trim()
                    ],
                )
                .await?;
            }
        }
        super::audit::append_in(
            &mut tx,
            step.now_ms,
            step.actor.trim(),
            &format!("case.{}", step.action.name()),
            &format!("case {} ({})", step.case_id, case.subject),
            &serde_json::json!({
                "reason": step.reason.trim(),
                "hotlist_version": done.hotlist_version,
                "registry_changed": done.registry_changed,
            }),
        )
        .await?;
        event(
            &mut tx,
            step.case_id,
            step.now_ms,
            step.actor.trim(),
            step.action.name(),
            step.reason.trim(),
            evidence,
        )
        .await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn file_report(&self, r: NewReport) -> Result<ReportOutcome, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(&LOCK_CASES, &[]).await?;
        // Reports are numbered under the table lock, which also makes the per-reporter
        // count exact across nodes.
        let report_id = next_id(&mut tx, Ids::Reports).await?;
        let today = tx
            .query_one(
                &Sql::both(
                    "SELECT COUNT(*) FROM risk_reports WHERE reporter = $1 AND business_date = $2",
                ),
                params![r.reporter.as_str(), i64::from(r.business_date.get())],
            )
            .await?
            .int(0)?;
        if today >= i64::from(r.per_day_max) {
            return Ok(ReportOutcome::RateLimited);
        }
        let case_id = case_for(&mut tx, r.subject, 0, r.at_ms, "resident report").await?;
        let (kind, id) = r.subject.to_db();
        tx.execute(
            &Sql::both(
                "INSERT INTO risk_reports (report_id, reporter, subject_kind, subject, text, at_ms, \
                 business_date, case_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            ),
            params![
                report_id,
                r.reporter.as_str(),
                kind,
                id,
                r.text.as_str(),
                r.at_ms,
                i64::from(r.business_date.get()),
                case_id
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(ReportOutcome::Filed { report_id, case_id })
    }

    async fn stored_facts(
        &self,
        from: BusinessDate,
        after: Option<(i64, DeviceId, u64)>,
        limit: i64,
    ) -> Result<Vec<FactRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let (at, device, seq) = after.map_or((i64::MIN, i64::MIN, i64::MIN), |(a, d, s)| {
            (a, db_u64(d.get()), db_u64(s))
        });
        let rows = tx
            .query(
                &Sql::both(
                    "SELECT device_id, seq, merchant_id, kind, card_no, card_counter, amount_fen, \
                     subsidy_fen, occurred_at_ms, received_at_ms, business_date, refund_of_seq, \
                     status FROM txns WHERE status IN (1, 3) AND business_date >= $1 \
                     AND (received_at_ms > $2 OR (received_at_ms = $2 AND (device_id > $3 \
                     OR (device_id = $3 AND seq > $4)))) \
                     ORDER BY received_at_ms, device_id, seq LIMIT $5",
                ),
                params![i64::from(from.get()), at, device, seq, limit],
            )
            .await?;
        rows.iter().map(fact_row).collect()
    }

    async fn merchant_day_purchases(
        &self,
        from: BusinessDate,
        to: BusinessDate,
    ) -> Result<Vec<(MerchantId, BusinessDate, u64)>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let rows = tx
            .query(
                &Sql::both(
                    "SELECT merchant_id, business_date, COUNT(*) FROM txns \
                     WHERE status = 1 AND kind = 1 AND merchant_id IS NOT NULL \
                     AND business_date >= $1 AND business_date <= $2 \
                     GROUP BY merchant_id, business_date",
                ),
                params![i64::from(from.get()), i64::from(to.get())],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let date: u32 = r.get(1)?;
                Ok((
                    MerchantId(r.int(0)?),
                    BusinessDate::new(date)
                        .map_err(|_| StoreError::Corrupt(format!("business date {date}")))?,
                    r.get(2)?,
                ))
            })
            .collect()
    }

    async fn purchase_ref(
        &self,
        device_id: DeviceId,
        seq: u64,
    ) -> Result<Option<PurchaseRef>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both(
                "SELECT occurred_at_ms, amount_fen, subsidy_fen FROM txns \
                 WHERE device_id = $1 AND seq = $2 AND status = 1 AND kind = 1",
            ),
            params![db_u64(device_id.get()), db_u64(seq)],
        )
        .await?
        .map(|r| {
            Ok(PurchaseRef {
                occurred_at_ms: r.int(0)?,
                amount_fen: Fen(r.int(1)?),
                subsidy_fen: Fen(r.int(2)?),
            })
        })
        .transpose()
    }

    async fn merchant_places(&self) -> Result<Vec<(MerchantId, i32, i32)>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let rows = tx
            .query(
                &Sql::both(
                    "SELECT merchant_id, lat_e6, lon_e6 FROM merchants \
                     WHERE lat_e6 IS NOT NULL AND lon_e6 IS NOT NULL",
                ),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((MerchantId(r.int(0)?), r.get(1)?, r.get(2)?)))
            .collect()
    }
}
