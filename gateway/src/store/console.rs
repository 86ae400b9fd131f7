//! The operations console's rows in the store: users, browser sessions, four-eyes
//! commands, clearing seals, budget overrides, merchant applications, and the read-only
//! views behind the console's pages and the residents' queries.

use super::StoreError;
use serde::Serialize;
use std::future::Future;
use wenxiao_protocol::{BusinessDate, CardNo};

/// A console user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    /// The login name.
    pub username: String,
    /// The argon2 PHC string (never serialised out).
    #[serde(skip)]
    pub password_hash: String,
    /// Role names, as stored.
    pub roles: Vec<String>,
    /// Whether a bearer token is issued.
    pub has_token: bool,
    /// Whether the user may log in.
    pub active: bool,
}

/// A command's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandStatus {
    /// Proposed, waiting for a second user.
    Pending,
    /// Approved by a second user, and carried out.
    Approved,
    /// Rejected by a second user.
    Rejected,
    /// Approved, but what it asked could not be done (the outcome says why).
    Failed,
    /// Claimed by an approver, whose action is under way: no one can reject it now, and
    /// an approver may carry it out again (an approval cut before its record).
    Approving,
}

impl CommandStatus {
    pub(crate) const fn code(self) -> i16 {
        match self {
            Self::Pending => 1,
            Self::Approved => 2,
            Self::Rejected => 3,
            Self::Failed => 4,
            Self::Approving => 5,
        }
    }

    pub(crate) fn from_code(code: i16) -> Result<Self, StoreError> {
        Ok(match code {
            1 => Self::Pending,
            2 => Self::Approved,
            3 => Self::Rejected,
            4 => Self::Failed,
            5 => Self::Approving,
            c => return Err(StoreError::Corrupt(format!("command status {c}"))),
        })
    }

    /// The status from its name (`PENDING`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "PENDING" => Some(Self::Pending),
            "APPROVED" => Some(Self::Approved),
            "REJECTED" => Some(Self::Rejected),
            "FAILED" => Some(Self::Failed),
            "APPROVING" => Some(Self::Approving),
            _ => None,
        }
    }
}

/// A proposed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Its kind (`clearing`, `award`, `blacklist`, `merchant`, `budget`, `case`).
    pub kind: &'static str,
    /// What it acts on; one pending command per (kind, target).
    pub target: String,
    /// Its arguments.
    pub args: serde_json::Value,
    /// Who proposes it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub now_ms: i64,
}

/// A command as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRow {
    /// Its id.
    pub command_id: i64,
    /// Its kind.
    pub kind: String,
    /// What it acts on.
    pub target: String,
    /// Its arguments.
    pub args: serde_json::Value,
    /// Its state.
    pub status: CommandStatus,
    /// Who proposed it.
    pub proposed_by: String,
    /// When.
    pub proposed_at_ms: i64,
    /// Why.
    pub proposal_reason: String,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at_ms: Option<i64>,
    /// Why.
    pub decision_reason: Option<String>,
    /// What carrying it out did.
    pub outcome: Option<String>,
}

/// What [`ConsoleStore::propose`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposed {
    /// Recorded, pending, with this id.
    Created(i64),
    /// Refused: this pending command already proposes it.
    DuplicatePending(i64),
}

/// A second user's decision on a pending command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The command.
    pub command_id: i64,
    /// Who decides (never the proposer: the store refuses it too).
    pub by: String,
    /// Approved, rejected or failed.
    pub status: CommandStatus,
    /// Why.
    pub reason: String,
    /// What carrying it out did (approved or failed).
    pub outcome: Option<String>,
    /// When.
    pub now_ms: i64,
    /// A clearing day's seal, recorded with the approval of its clearing command.
    pub seal: Option<(BusinessDate, String)>,
}

/// What [`ConsoleStore::decide`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// Recorded.
    Done,
    /// No such command.
    Unknown,
    /// It is not pending any more.
    NotPending,
    /// The decider proposed it.
    OwnProposal,
}

/// A merchant application on its way to signing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplicationRow {
    /// Its id.
    pub application_id: i64,
    /// The merchant's name.
    pub name: String,
    /// Category code.
    pub category: i16,
    /// District code.
    pub district: i16,
    /// The category's eligibility facts.
    pub facts: serde_json::Value,
    /// 1 applied, 2 recommended by the district, 3 signed, 4 refused.
    pub status: i16,
    /// Who entered it.
    pub applied_by: String,
    /// When.
    pub applied_at_ms: i64,
    /// The district's recommender.
    pub recommended_by: Option<String>,
    /// The merchant id once signed.
    pub merchant_id: Option<i64>,
}

/// A new merchant application.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApplication {
    /// The merchant's name.
    pub name: String,
    /// Category code.
    pub category: i16,
    /// District code.
    pub district: i16,
    /// The category's eligibility facts.
    pub facts: serde_json::Value,
    /// Who enters it.
    pub by: String,
    /// When.
    pub now_ms: i64,
}

/// One row of the audit log, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// Its place in the chain.
    pub seq: i64,
    /// When.
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub subject: String,
    /// The details, JSON text.
    pub detail: String,
    /// Its hash.
    pub hash: String,
}

/// A cleared day's line in the clearing list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayRow {
    /// The day.
    pub business_date: u32,
    /// Approved (its credits released).
    pub approved: bool,
    /// Stored transactions.
    pub txn_count: i64,
    /// Subsidy, fen.
    pub subsidy_fen: i64,
    /// Credits.
    pub credit_count: i64,
    /// Their amount, fen.
    pub credit_fen: i64,
    /// Its seal, once approved through the console.
    pub seal_sha256: Option<String>,
}

/// An organizer award in the awards list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AwardListRow {
    /// Its id.
    pub award_id: i64,
    /// The organizer.
    pub merchant_id: i64,
    /// The show's date.
    pub show_date: u32,
    /// 1 national-level troupe, 2 national-award work.
    pub kind: i16,
    /// The amount, fen.
    pub amount_fen: i64,
    /// The evidence.
    pub evidence: String,
    /// Approved (paid from the budget).
    pub approved: bool,
}

/// A device's line in the devices list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// Its id.
    pub device_id: u64,
    /// Device kind code.
    pub kind: i16,
    /// Its merchant.
    pub merchant_id: Option<i64>,
    /// Whether it may connect.
    pub active: bool,
    /// Its acknowledged hot-list version.
    pub hotlist_version: Option<i64>,
}

/// A card's credits on one day, for the residents' app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardDay {
    /// The day the purchases were made.
    pub business_date: u32,
    /// Subsidy of stored purchases not yet cleared, fen.
    pub pending_fen: i64,
    /// Released, waiting to be loaded, fen.
    pub released_fen: i64,
    /// Loaded onto the card, fen.
    pub loaded_fen: i64,
    /// Cleared but not yet approved, or parked, fen.
    pub held_fen: i64,
}

/// One points event of a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointsEvent {
    /// The day.
    pub day: u32,
    /// `SIGN_IN`, `REVIEW`, `SHARE`, or `REDEEMED`.
    pub kind: &'static str,
    /// Points, negative when redeemed.
    pub points: i64,
    /// Where.
    pub merchant_id: Option<i64>,
}

/// A cleared day's totals, as its page shows them, read as aggregates (not the whole
/// report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayTotals {
    /// The run's summary.
    pub summary: crate::store::ClearingSummary,
    /// Its credits: count and amount, from the credits themselves.
    pub credits: (i64, i64),
    /// Those loaded onto cards so far: count and amount.
    pub loaded: (i64, i64),
    /// Merchants settled.
    pub merchants: i64,
    /// Their subsidy, sales and refunds.
    pub merchant_subsidy_fen: i64,
    /// Sales.
    pub merchant_sales_fen: i64,
    /// Refunds.
    pub merchant_refunds_fen: i64,
    /// The statistics' subsidy.
    pub statistics_subsidy_fen: i64,
}

/// Today's figures by hour, and the other dashboard counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DashboardFigures {
    /// Per hour of the day (Asia/Shanghai): (hour, stored txns, subsidy fen).
    pub hours: Vec<(i64, i64, i64)>,
    /// Credits by state: (state, count, fen).
    pub credits: Vec<(String, i64, i64)>,
    /// Open alerts (in cases not closed).
    pub open_alerts: i64,
    /// Open or assigned cases.
    pub open_cases: i64,
    /// Budgets: (key, granted fen).
    pub budgets: Vec<(i32, i64)>,
}

/// One statistics row over a range of days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatRow {
    /// District code.
    pub district: i16,
    /// Category code.
    pub category: i16,
    /// Transactions.
    pub txn_count: i64,
    /// Sales, fen.
    pub sales_fen: i64,
    /// Subsidy, fen.
    pub subsidy_fen: i64,
}

/// The console's operations on the store.
pub trait ConsoleStore: Send + Sync + 'static {
    /// Adds a user; false if the name is taken.
    fn add_user(
        &self,
        username: String,
        password_hash: String,
        roles: Vec<String>,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A user by name.
    fn user(
        &self,
        username: String,
    ) -> impl Future<Output = Result<Option<UserRow>, StoreError>> + Send;

    /// The user holding the bearer token with this SHA-256.
    fn user_by_token(
        &self,
        token_sha256: String,
    ) -> impl Future<Output = Result<Option<UserRow>, StoreError>> + Send;

    /// Every user.
    fn list_users(&self) -> impl Future<Output = Result<Vec<UserRow>, StoreError>> + Send;

    /// Sets a user's roles (`by` is recorded in the audit log); false if no such user.
    fn set_roles(
        &self,
        username: String,
        roles: Vec<String>,
        by: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Issues (replaces) a user's bearer token, given its SHA-256; false if no such user.
    fn set_token(
        &self,
        username: String,
        token_sha256: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Starts a browser session.
    fn create_session(
        &self,
        session_sha256: String,
        username: String,
        csrf_token: String,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A live session's user and CSRF token.
    fn session(
        &self,
        session_sha256: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<(UserRow, String)>, StoreError>> + Send;

    /// Ends a session (and every expired one).
    fn end_session(
        &self,
        session_sha256: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a proposal, with its audit row, unless one for the same (kind, target) is
    /// pending.
    fn propose(
        &self,
        command: NewCommand,
    ) -> impl Future<Output = Result<Proposed, StoreError>> + Send;

    /// One command.
    fn command(
        &self,
        command_id: i64,
    ) -> impl Future<Output = Result<Option<CommandRow>, StoreError>> + Send;

    /// A cleared day's totals; `None` when it is not cleared.
    fn day_totals(
        &self,
        date: BusinessDate,
    ) -> impl Future<Output = Result<Option<DayTotals>, StoreError>> + Send;

    /// Commands, newest first, optionally of one status.
    fn list_commands(
        &self,
        status: Option<CommandStatus>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<CommandRow>, StoreError>> + Send;

    /// Claims a pending command for its approval by `by` (it becomes
    /// [`CommandStatus::Approving`], and can no longer be rejected), before the action is
    /// carried out; a command already approving may be claimed again. Refused for the
    /// proposer.
    fn claim(
        &self,
        command_id: i64,
        by: String,
    ) -> impl Future<Output = Result<Decided, StoreError>> + Send;

    /// Records a decision, with its audit row (and a clearing day's seal), in one
    /// transaction: a rejection of a pending command, or the outcome of a claimed (or
    /// pending) one; refused for the proposer.
    fn decide(
        &self,
        decision: Decision,
    ) -> impl Future<Output = Result<Decided, StoreError>> + Send;

    /// Appends a row to the audit log on its own (a refused attempt, a login).
    fn append_audit(
        &self,
        actor: String,
        action: String,
        subject: String,
        detail: serde_json::Value,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The audit log, newest first, rows before `before_seq` (all when `None`).
    fn audit_page(
        &self,
        before_seq: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditRow>, StoreError>> + Send;

    /// A day's seal.
    fn seal(
        &self,
        date: BusinessDate,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Records a day's seal unless it has one (the first stands).
    fn record_seal(
        &self,
        date: BusinessDate,
        seal_sha256: String,
        by: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Organizer awards, newest first.
    fn awards(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AwardListRow>, StoreError>> + Send;

    /// One award.
    fn award(
        &self,
        award_id: i64,
    ) -> impl Future<Output = Result<Option<AwardListRow>, StoreError>> + Send;

    /// Cleared days, newest first.
    fn clearing_days(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DayRow>, StoreError>> + Send;

    /// Sets a merchant's `active` flag; false if no such merchant.
    fn set_merchant_active(
        &self,
        merchant_id: i64,
        active: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Registers a device, or sets its `active` flag; false if its merchant is unknown.
    fn put_device(
        &self,
        device_id: u64,
        kind: i16,
        merchant_id: Option<i64>,
        active: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets a device's `active` flag; false if no such device.
    fn set_device_active(
        &self,
        device_id: u64,
        active: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Devices, by id, after `after`, at most `limit`.
    fn devices(
        &self,
        after: u64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DeviceRow>, StoreError>> + Send;

    /// Records a budget override (`monthly` or `programme`).
    fn set_budget_override(
        &self,
        name: &'static str,
        cap_fen: i64,
        by: String,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The budget overrides: (name, cap fen).
    fn budget_overrides(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// Enters a merchant application; returns its id.
    fn add_application(
        &self,
        application: NewApplication,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Applications, newest first.
    fn applications(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ApplicationRow>, StoreError>> + Send;

    /// One application.
    fn application(
        &self,
        application_id: i64,
    ) -> impl Future<Output = Result<Option<ApplicationRow>, StoreError>> + Send;

    /// The district's recommendation: applied → recommended; false if it was not applied.
    fn recommend_application(
        &self,
        application_id: i64,
        by: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Signs a recommended application: the merchant is created active (id the next
    /// free one) and returned; `None` if it was not recommended. Signing twice gives the
    /// same merchant.
    fn sign_application(
        &self,
        application_id: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// A card's credits by day, newest first.
    fn card_credits(
        &self,
        card_no: CardNo,
        days_max: i64,
    ) -> impl Future<Output = Result<Vec<CardDay>, StoreError>> + Send;

    /// A card's points events, newest first.
    fn card_points(
        &self,
        card_no: CardNo,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PointsEvent>, StoreError>> + Send;

    /// The dashboard's figures: with `today` (the business day and the millisecond its
    /// hours start at), its stored transactions by hour too.
    fn dashboard(
        &self,
        today: Option<(BusinessDate, i64)>,
    ) -> impl Future<Output = Result<DashboardFigures, StoreError>> + Send;

    /// Cleared days' statistics by district and category, days `from..=to`.
    fn statistics(
        &self,
        from: BusinessDate,
        to: BusinessDate,
    ) -> impl Future<Output = Result<Vec<StatRow>, StoreError>> + Send;
}
