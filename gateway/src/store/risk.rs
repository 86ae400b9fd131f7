//! What the store keeps for the risk team: alerts of the fraud rules, the cases they
//! group into, residents' reports, each case's audit trail, and the reads the rule engine
//! rebuilds its state from.

use super::StoreError;
use crate::registry::MerchantId;
use serde::Serialize;
use std::future::Future;
use wenxiao_protocol::{BusinessDate, CardNo, DeviceId, Fen};

pub use crate::risk::engine::Subject;

impl Subject {
    /// The stored (kind, id) pair.
    pub(crate) fn to_db(self) -> (i16, i64) {
        match self {
            Subject::Card(c) => (1, super::db_u64(c.get())),
            Subject::Merchant(m) => (2, m.0),
        }
    }

    pub(crate) fn from_db(kind: i16, id: i64) -> Result<Self, StoreError> {
        match kind {
            1 => Ok(Subject::Card(CardNo(super::from_db_u64(id)))),
            2 => Ok(Subject::Merchant(MerchantId(id))),
            k => Err(StoreError::Corrupt(format!("subject kind {k}"))),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Card(c) => write!(f, "card {}", c.get()),
            Subject::Merchant(m) => write!(f, "merchant {}", m.0),
        }
    }
}

/// A case's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaseStatus {
    /// New: alerts or reports wait for an analyst.
    Open = 1,
    /// An analyst took it.
    Assigned = 2,
    /// Fraud confirmed: the card is blacklisted or the merchant suspended.
    Confirmed = 3,
    /// No fraud.
    Dismissed = 4,
    /// Confirmed, then undone: the card is off the list or the merchant active again.
    Lifted = 5,
}

impl CaseStatus {
    pub(crate) fn from_code(code: i16) -> Result<Self, StoreError> {
        Ok(match code {
            1 => Self::Open,
            2 => Self::Assigned,
            3 => Self::Confirmed,
            4 => Self::Dismissed,
            5 => Self::Lifted,
            c => return Err(StoreError::Corrupt(format!("case status {c}"))),
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Assigned => "ASSIGNED",
            Self::Confirmed => "CONFIRMED",
            Self::Dismissed => "DISMISSED",
            Self::Lifted => "LIFTED",
        }
    }

    /// The status by name (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Open,
            Self::Assigned,
            Self::Confirmed,
            Self::Dismissed,
            Self::Lifted,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// One rule's hit, to record as an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// The rule's name.
    pub rule: &'static str,
    /// What it is about.
    pub subject: Subject,
    /// The Shanghai day of the transaction that made it fire.
    pub business_date: BusinessDate,
    /// 1 low, 2 medium, 3 high.
    pub band: i16,
    /// The rule's figures (name, value).
    pub figures: Vec<(&'static str, i64)>,
    /// The transactions that are its evidence.
    pub evidence: Vec<(DeviceId, u64)>,
    /// When.
    pub at_ms: i64,
}

/// A recorded alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRecord {
    /// Its id.
    pub alert_id: i64,
    /// The rule.
    pub rule: String,
    /// The day.
    pub business_date: u32,
    /// 1 low, 2 medium, 3 high.
    pub band: i16,
    /// The figures, a JSON object.
    pub figures: serde_json::Value,
    /// `[device_id, seq]` pairs.
    pub evidence: serde_json::Value,
    /// When.
    pub at_ms: i64,
}

/// A case in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseSummary {
    /// Its id.
    pub case_id: i64,
    /// What it is about.
    pub subject: Subject,
    /// Its state.
    pub status: CaseStatus,
    /// The highest band of its alerts (0: reports only).
    pub band: i16,
    /// When it opened.
    pub opened_at_ms: i64,
    /// Who has it.
    pub assignee: Option<String>,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at_ms: Option<i64>,
    /// The decision's reason.
    pub decision: Option<String>,
    /// Alerts in it.
    pub alerts: i64,
    /// Reports in it.
    pub reports: i64,
}

/// One step of a case's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseEvent {
    /// When.
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// `opened`, `assigned`, `confirmed`, `dismissed`, `lifted`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// What it rested on (JSON).
    pub evidence: serde_json::Value,
}

/// A resident's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRecord {
    /// Its id.
    pub report_id: i64,
    /// Who reported (the app's user reference).
    pub reporter: String,
    /// The text.
    pub text: String,
    /// When.
    pub at_ms: i64,
}

/// A case with everything in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseDetail {
    /// The case.
    #[serde(flatten)]
    pub case: CaseSummary,
    /// Its alerts, oldest first.
    pub alert_list: Vec<AlertRecord>,
    /// Its reports, oldest first.
    pub report_list: Vec<ReportRecord>,
    /// Its audit trail.
    pub events: Vec<CaseEvent>,
}

/// What an analyst does to a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseAction {
    /// Take it (or give it to someone): open or assigned cases.
    Assign {
        /// To whom.
        to: String,
    },
    /// Fraud: blacklist the card or suspend the merchant.
    Confirm,
    /// No fraud.
    Dismiss,
    /// Undo a confirmation.
    Lift,
}

impl CaseAction {
    /// The audit trail's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Assign { .. } => "assigned",
            Self::Confirm => "confirmed",
            Self::Dismiss => "dismissed",
            Self::Lift => "lifted",
        }
    }
}

/// An analyst's step on a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseStep {
    /// The case.
    pub case_id: i64,
    /// What.
    pub action: CaseAction,
    /// Who (recorded).
    pub actor: String,
    /// Why (recorded; required).
    pub reason: String,
    /// When.
    pub now_ms: i64,
    /// `hotlist.delta_versions_kept`, for a blacklisting.
    pub keep_versions: u32,
}

/// What a case step did besides the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseStepDone {
    /// A new hot-list version, when the step listed or unlisted a card.
    pub hotlist_version: Option<u32>,
    /// True when the step suspended or re-activated a merchant (the registry changed).
    pub registry_changed: bool,
}

/// A resident's report to file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    /// Who (the app's user reference).
    pub reporter: String,
    /// About what.
    pub subject: Subject,
    /// The text.
    pub text: String,
    /// When.
    pub at_ms: i64,
    /// The Shanghai day, for the per-reporter limit.
    pub business_date: BusinessDate,
    /// Reports one reporter may file per day.
    pub per_day_max: u32,
}

/// What filing a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Filed into a case.
    Filed {
        /// The report.
        report_id: i64,
        /// Its case.
        case_id: i64,
    },
    /// The reporter filed `per_day_max` today already.
    RateLimited,
}

/// An answered transaction as the rules read it back from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactRow {
    /// The transaction (its `refund_of` is left for the rules to read).
    pub fact: crate::risk::engine::Fact,
    /// REFUND: the seq of the purchase on this device.
    pub refund_of_seq: u64,
    /// A REJECTED row: not a fact, only a seq the rules have seen.
    pub rejected: bool,
}

/// A purchase a refund refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseRef {
    /// When it occurred.
    pub occurred_at_ms: i64,
    /// Its amount.
    pub amount_fen: Fen,
    /// Its subsidy.
    pub subsidy_fen: Fen,
}

/// The store's risk operations.
pub trait RiskStore: Send + Sync + 'static {
    /// Records alerts: each new one (a rule fires once per subject and day; one already
    /// recorded is skipped) joins its subject's open case, or opens one. Returns the
    /// alerts newly recorded.
    fn record_alerts(
        &self,
        alerts: Vec<NewAlert>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Cases, newest first, optionally of one status, at most `limit`.
    fn list_cases(
        &self,
        status: Option<CaseStatus>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<CaseSummary>, StoreError>> + Send;

    /// One case with its alerts, reports and trail.
    fn case(
        &self,
        case_id: i64,
    ) -> impl Future<Output = Result<Option<CaseDetail>, StoreError>> + Send;

    /// An analyst's step. Confirming a card's case lists the card (a hot-list version)
    /// and a merchant's suspends it, in the same transaction as the case and its audit
    /// row; lifting undoes that. A step the case's state does not allow is
    /// [`StoreError::Refused`], and changes nothing.
    fn step_case(
        &self,
        step: CaseStep,
    ) -> impl Future<Output = Result<CaseStepDone, StoreError>> + Send;

    /// Files a resident's report into its subject's open case (or a new one), unless the
    /// reporter reached the day's limit.
    fn file_report(
        &self,
        report: NewReport,
    ) -> impl Future<Output = Result<ReportOutcome, StoreError>> + Send;

    /// Answered transactions (STORED, and REJECTED ones flagged) of business days from
    /// `from`, in the order
    /// (received_at_ms, device_id, seq), after the key `after`, at most `limit`: what the
    /// rules rebuild and catch up from.
    fn stored_facts(
        &self,
        from: BusinessDate,
        after: Option<(i64, DeviceId, u64)>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<FactRow>, StoreError>> + Send;

    /// Stored purchases per merchant and business day, for days `from..=to`.
    fn merchant_day_purchases(
        &self,
        from: BusinessDate,
        to: BusinessDate,
    ) -> impl Future<Output = Result<Vec<(MerchantId, BusinessDate, u64)>, StoreError>> + Send;

    /// The stored purchase a refund of `device` refers to.
    fn purchase_ref(
        &self,
        device_id: DeviceId,
        seq: u64,
    ) -> impl Future<Output = Result<Option<PurchaseRef>, StoreError>> + Send;

    /// Merchants' places (micro-degrees), for those that have one.
    fn merchant_places(
        &self,
    ) -> impl Future<Output = Result<Vec<(MerchantId, i32, i32)>, StoreError>> + Send;
}
