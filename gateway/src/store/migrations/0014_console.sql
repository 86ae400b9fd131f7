-- Migration 14: the operations console. Local users (argon2 password hashes, a bearer
-- token's SHA-256 for machine clients, roles), browser sessions (the cookie's SHA-256 and
-- its CSRF token), commands proposed by one user and decided by another (four eyes), the
-- seal of each approved clearing day, the budget caps a command set, and merchant
-- applications on their way to signing.
CREATE TABLE console_users (
    username      TEXT    PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    roles         TEXT    NOT NULL,   -- comma-separated role names
    token_sha256  TEXT    UNIQUE,     -- hex; NULL: no bearer token issued
    active        BOOLEAN NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

CREATE TABLE console_sessions (
    session_sha256 TEXT   PRIMARY KEY,   -- hex SHA-256 of the cookie's value
    username       TEXT   NOT NULL,
    csrf_token     TEXT   NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);

CREATE TABLE console_commands (
    command_id      BIGINT   PRIMARY KEY,
    kind            TEXT     NOT NULL,   -- clearing, award, blacklist, merchant, budget, case
    target          TEXT     NOT NULL,   -- what it acts on: the day, the award, the card…
    args            TEXT     NOT NULL,   -- JSON
    status          SMALLINT NOT NULL,   -- 1 pending, 2 approved, 3 rejected, 4 failed
    proposed_by     TEXT     NOT NULL,
    proposed_at_ms  BIGINT   NOT NULL,
    proposal_reason TEXT     NOT NULL,
    decided_by      TEXT,
    decided_at_ms   BIGINT,
    decision_reason TEXT,
    outcome         TEXT
);
-- A second pending (or approving) command for the same thing is refused.
CREATE UNIQUE INDEX console_commands_one_pending ON console_commands (kind, target) WHERE status IN (1, 5);
CREATE INDEX console_commands_status ON console_commands (status, command_id);

CREATE TABLE clearing_seals (
    business_date INTEGER PRIMARY KEY,
    seal_sha256   TEXT    NOT NULL,   -- over the day's fixed figures (clearing::seal_hash)
    sealed_by     TEXT    NOT NULL,
    sealed_at_ms  BIGINT  NOT NULL
);

-- Budget caps set by an approved command; they override the policy file's.
CREATE TABLE budget_overrides (
    name      TEXT   PRIMARY KEY,   -- monthly, programme
    cap_fen   BIGINT NOT NULL,
    set_by    TEXT   NOT NULL,
    set_at_ms BIGINT NOT NULL
);

CREATE TABLE merchant_applications (
    application_id   BIGINT   PRIMARY KEY,
    name             TEXT     NOT NULL,
    category         SMALLINT NOT NULL,
    district         SMALLINT NOT NULL,
    facts            TEXT     NOT NULL,   -- JSON: the category's eligibility facts
    status           SMALLINT NOT NULL,   -- 1 applied, 2 recommended, 3 signed, 4 refused
    applied_by       TEXT     NOT NULL,
    applied_at_ms    BIGINT   NOT NULL,
    recommended_by   TEXT,
    merchant_id      BIGINT               -- once signed
);
