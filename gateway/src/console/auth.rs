//! Who may do what: roles, the permissions each grants, password hashing (argon2), and
//! the secrets of sessions and tokens (random, stored only as their SHA-256).

use serde::Serialize;

/// A console role. A user holds one or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the pages.
    Viewer,
    /// The card company's operators: merchants and devices.
    Operator,
    /// The bureau's audit group: clearing, awards, budget, merchant signing.
    Auditor,
    /// The risk team: cases and the blacklist.
    RiskAnalyst,
    /// Users and roles.
    Administrator,
    /// The residents' app backend: the card queries.
    App,
}

impl Role {
    /// Every role.
    pub const ALL: &'static [Role] = &[
        Role::Viewer,
        Role::Operator,
        Role::Auditor,
        Role::RiskAnalyst,
        Role::Administrator,
        Role::App,
    ];

    /// Its name as stored and typed (`viewer`, `operator`, `auditor`, `risk`, `admin`,
    /// `app`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::RiskAnalyst => "risk",
            Self::Administrator => "admin",
            Self::App => "app",
        }
    }

    /// The role with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// Whether the role grants `p`.
    pub const fn grants(self, p: Permission) -> bool {
        use Permission as P;
        let staff = !matches!(self, Self::App);
        match p {
            P::Public => true,
            P::Session => staff,
            P::DashboardRead
            | P::MerchantsRead
            | P::DevicesRead
            | P::ClearingRead
            | P::AwardsRead
            | P::StatisticsRead
            | P::CommandsRead => staff,
            P::AuditRead => matches!(
                self,
                Self::Auditor | Self::RiskAnalyst | Self::Administrator
            ),
            P::AuditFigures => matches!(self, Self::Auditor),
            P::CasesRead => matches!(self, Self::RiskAnalyst | Self::Auditor),
            P::CasesStep
            | P::CasesPropose
            | P::CasesDecide
            | P::BlacklistPropose
            | P::BlacklistDecide => matches!(self, Self::RiskAnalyst),
            P::MerchantsApply | P::MerchantsRecommend | P::MerchantsPropose | P::DevicesWrite => {
                matches!(self, Self::Operator)
            }
            P::ClearingRun => matches!(self, Self::Operator | Self::Auditor),
            P::ClearingPropose
            | P::ClearingDecide
            | P::AwardsPropose
            | P::AwardsDecide
            | P::MerchantsDecide
            | P::BudgetPropose
            | P::BudgetDecide => matches!(self, Self::Auditor),
            P::AwardsEnter => matches!(self, Self::Operator),
            P::UsersRead | P::UsersWrite => matches!(self, Self::Administrator),
            P::CardsRead => matches!(self, Self::App),
        }
    }
}

/// What one route needs. Each route (path and method) names exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Anyone, signed in or not (the login page, the OpenAPI document).
    Public,
    /// Any signed-in staff member (log out, who am I).
    Session,
    /// The dashboard.
    DashboardRead,
    /// Merchants and applications.
    MerchantsRead,
    /// Enter a merchant application.
    MerchantsApply,
    /// The district's recommendation of an application.
    MerchantsRecommend,
    /// Propose signing, suspension or reinstatement of a merchant.
    MerchantsPropose,
    /// Approve or reject those.
    MerchantsDecide,
    /// Devices.
    DevicesRead,
    /// Register or disable a device.
    DevicesWrite,
    /// Clearing days and settlement files.
    ClearingRead,
    /// Run a day's clearing (no money moves until approval).
    ClearingRun,
    /// Propose a day's approval.
    ClearingPropose,
    /// Approve or reject it.
    ClearingDecide,
    /// Organizer awards.
    AwardsRead,
    /// Enter an award with its evidence.
    AwardsEnter,
    /// Propose an award's approval.
    AwardsPropose,
    /// Approve or reject it.
    AwardsDecide,
    /// Propose a budget change.
    BudgetPropose,
    /// Approve or reject it.
    BudgetDecide,
    /// Propose a blacklist change.
    BlacklistPropose,
    /// Approve or reject it.
    BlacklistDecide,
    /// Fraud cases.
    CasesRead,
    /// Assign or dismiss a case (eligibility unchanged).
    CasesStep,
    /// Propose confirming or lifting a case (it lists or unlists, suspends or reinstates).
    CasesPropose,
    /// Approve or reject that.
    CasesDecide,
    /// Statistics and their exports.
    StatisticsRead,
    /// Commands and their states.
    CommandsRead,
    /// The audit log.
    AuditRead,
    /// The whole-store figures of an end-of-run invariant check.
    AuditFigures,
    /// Users.
    UsersRead,
    /// Change users' roles.
    UsersWrite,
    /// The residents' card queries.
    CardsRead,
}

impl Permission {
    /// Its name in the OpenAPI document, logs and the audit log.
    pub const fn name(self) -> &'static str {
        use Permission as P;
        match self {
            P::Public => "public",
            P::Session => "session",
            P::DashboardRead => "dashboard.read",
            P::MerchantsRead => "merchants.read",
            P::MerchantsApply => "merchants.apply",
            P::MerchantsRecommend => "merchants.recommend",
            P::MerchantsPropose => "merchants.propose",
            P::MerchantsDecide => "merchants.decide",
            P::DevicesRead => "devices.read",
            P::DevicesWrite => "devices.write",
            P::ClearingRead => "clearing.read",
            P::ClearingRun => "clearing.run",
            P::ClearingPropose => "clearing.propose",
            P::ClearingDecide => "clearing.decide",
            P::AwardsRead => "awards.read",
            P::AwardsEnter => "awards.enter",
            P::AwardsPropose => "awards.propose",
            P::AwardsDecide => "awards.decide",
            P::BudgetPropose => "budget.propose",
            P::BudgetDecide => "budget.decide",
            P::BlacklistPropose => "blacklist.propose",
            P::BlacklistDecide => "blacklist.decide",
            P::CasesRead => "cases.read",
            P::CasesStep => "cases.step",
            P::CasesPropose => "cases.propose",
            P::CasesDecide => "cases.decide",
            P::StatisticsRead => "statistics.read",
            P::CommandsRead => "commands.read",
            P::AuditRead => "audit.read",
            P::AuditFigures => "audit.figures",
            P::UsersRead => "users.read",
            P::UsersWrite => "users.write",
            P::CardsRead => "cards.read",
        }
    }
}

/// Parses a comma-separated role list; the error names the unknown role.
pub fn parse_roles(text: &str) -> Result<Vec<Role>, String> {
    let mut roles = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let r = Role::from_name(name).ok_or_else(|| {
            let known: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown role {name:?} (known: {})", known.join(", "))
        })?;
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    if roles.is_empty() {
        return Err("at least one role is needed".to_owned());
    }
    Ok(roles)
}

/// Shortest password, in characters.
pub const PASSWORD_CHARS_MIN: usize = 12;
/// Longest password, in bytes (argon2 takes any length; this bounds the work).
pub const PASSWORD_BYTES_MAX: usize = 256;

/// Hashes a password with argon2id and a random salt (a PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.chars().count() < PASSWORD_CHARS_MIN {
        return Err(format!(
            "a password needs at least {PASSWORD_CHARS_MIN} characters"
        ));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(format!("a password has at most {PASSWORD_BYTES_MAX} bytes"));
    }
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| format!("salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// The stored "hash" of a user made with `users add --no-password`: no password matches
/// it (it is not a PHC string); the user works with bearer tokens only.
pub const NO_PASSWORD: &str = "!token-only";

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    if password.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A new random secret (session cookie, CSRF token, bearer token): 32 bytes, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The SHA-256 of a secret, hex: what the store keeps instead of the secret.
pub fn secret_sha256(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_permission_but_public_and_session_is_refused_to_some_role() {
        for p in crate::console::routes::ROUTES.iter().map(|r| r.permission) {
            let granted = Role::ALL.iter().filter(|r| r.grants(p)).count();
            if !matches!(p, Permission::Public | Permission::Session) {
                assert!(granted < Role::ALL.len(), "{} is granted to all", p.name());
            }
            assert!(granted > 0, "{} is granted to none", p.name());
        }
    }

    #[test]
    fn a_password_verifies_only_against_its_own_hash() {
        let h = hash_password("correct horse battery").unwrap_or_default();
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn roles_parse_and_name_the_unknown_one() {
        assert_eq!(
            parse_roles("auditor, viewer,auditor"),
            Ok(vec![Role::Auditor, Role::Viewer])
        );
        assert!(
            parse_roles("auditor,root")
                .unwrap_err()
                .contains("\"root\"")
        );
        assert!(parse_roles(" , ").is_err());
    }
}
