-- Migration 12: fraud alerts, the cases they group into, residents' reports, and each
-- case's audit trail (policy, "Fraud and risk"). Subjects are a card (subject_kind 1,
-- subject = card number) or a merchant (2, subject = merchant id).

-- A case: alerts and reports about one subject, decided by an analyst. Status 1 open,
-- 2 assigned, 3 confirmed (the card blacklisted / the merchant suspended), 4 dismissed,
-- 5 lifted (confirmed, then undone). At most one open or assigned case per subject.
CREATE TABLE risk_cases (
    case_id        BIGINT   PRIMARY KEY,
    subject_kind   SMALLINT NOT NULL,
    subject        BIGINT   NOT NULL,
    status         SMALLINT NOT NULL,
    band           SMALLINT NOT NULL,  -- highest alert band: 1 low, 2 medium, 3 high (0: reports only)
    opened_at_ms   BIGINT   NOT NULL,
    assignee       TEXT,
    decided_by     TEXT,
    decided_at_ms  BIGINT,
    decision       TEXT
);
CREATE UNIQUE INDEX risk_cases_one_open ON risk_cases (subject_kind, subject) WHERE status IN (1, 2);
CREATE INDEX risk_cases_status ON risk_cases (status, case_id);

-- One rule's hit on one subject on one Shanghai day (a rule fires once per subject and
-- day, so a rebuilt rule engine finds its alerts already recorded).
CREATE TABLE risk_alerts (
    alert_id       BIGINT   PRIMARY KEY,
    rule           TEXT     NOT NULL,
    subject_kind   SMALLINT NOT NULL,
    subject        BIGINT   NOT NULL,
    business_date  INTEGER  NOT NULL,
    band           SMALLINT NOT NULL,
    figures        TEXT     NOT NULL,  -- JSON object: the rule's figures
    evidence       TEXT     NOT NULL,  -- JSON array of [device_id, seq]: the transactions
    at_ms          BIGINT   NOT NULL,
    case_id        BIGINT   NOT NULL REFERENCES risk_cases (case_id),
    UNIQUE (rule, subject_kind, subject, business_date)
);
CREATE INDEX risk_alerts_case ON risk_alerts (case_id);

-- Residents' reports (the app's POST /v1/reports).
CREATE TABLE risk_reports (
    report_id      BIGINT   PRIMARY KEY,
    reporter       TEXT     NOT NULL,
    subject_kind   SMALLINT NOT NULL,
    subject        BIGINT   NOT NULL,
    text           TEXT     NOT NULL,
    at_ms          BIGINT   NOT NULL,
    business_date  INTEGER  NOT NULL,
    case_id        BIGINT   NOT NULL REFERENCES risk_cases (case_id)
);
CREATE INDEX risk_reports_reporter ON risk_reports (reporter, business_date);

-- Every step of a case, append-only: opened, assigned, confirmed, dismissed, lifted; with
-- who, why, and (for a decision) the evidence it rested on.
CREATE TABLE risk_case_events (
    case_id   BIGINT NOT NULL REFERENCES risk_cases (case_id),
    seq       BIGINT NOT NULL,
    at_ms     BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    reason    TEXT   NOT NULL,
    evidence  TEXT   NOT NULL,  -- JSON
    PRIMARY KEY (case_id, seq)
);

-- Merchants' places, for the impossible-travel rule (micro-degrees).
ALTER TABLE merchants ADD COLUMN lat_e6 INTEGER;
ALTER TABLE merchants ADD COLUMN lon_e6 INTEGER;
