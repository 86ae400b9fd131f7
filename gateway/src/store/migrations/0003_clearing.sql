-- Migration 3: daily clearing. One row per cleared business day; the credits, merchant
-- settlements and statistics it produced; what cards owe after refunds exceeded credits.
CREATE TABLE clearing_runs (
    business_date  INTEGER PRIMARY KEY,
    status         SMALLINT NOT NULL,       -- 1 cleared, 2 approved
    cleared_at_ms  BIGINT   NOT NULL,
    approved_at_ms BIGINT,
    txn_count      BIGINT   NOT NULL,       -- stored transactions of the day
    subsidy_fen    BIGINT   NOT NULL,       -- purchase subsidies minus refund reversals
    credit_count   BIGINT   NOT NULL,
    credit_fen     BIGINT   NOT NULL
);

-- credit_id = business_date × 10^10 + the card's rank in the day (by card number):
-- deterministic, so a clearing run reproduces the same ids.
CREATE TABLE credits (
    credit_id     BIGINT   PRIMARY KEY,
    business_date INTEGER  NOT NULL,
    card_no       BIGINT   NOT NULL,
    amount_fen    BIGINT   NOT NULL,
    status        SMALLINT NOT NULL         -- 1 cleared, 2 released, 3 loaded, 4 parked
);
CREATE INDEX credits_card ON credits (card_no, status);

CREATE TABLE merchant_settlements (
    business_date INTEGER NOT NULL,
    merchant_id   BIGINT  NOT NULL,
    txn_count     BIGINT  NOT NULL,
    sales_fen     BIGINT  NOT NULL,         -- stored purchases, card part
    refunds_fen   BIGINT  NOT NULL,         -- stored refunds
    points_fen    BIGINT  NOT NULL,         -- points redeemed, reimbursed to the merchant
    subsidy_fen   BIGINT  NOT NULL,         -- subsidies earned by its sales (paid by the bureau)
    PRIMARY KEY (business_date, merchant_id)
);

CREATE TABLE day_statistics (
    business_date INTEGER  NOT NULL,
    district      SMALLINT NOT NULL,
    category      SMALLINT NOT NULL,
    txn_count     BIGINT   NOT NULL,
    sales_fen     BIGINT   NOT NULL,
    subsidy_fen   BIGINT   NOT NULL,
    PRIMARY KEY (business_date, district, category)
);

-- Refund reversals larger than a day's credits: owed by the card, taken from later credits.
CREATE TABLE card_debts (
    card_no   BIGINT PRIMARY KEY,
    owed_fen  BIGINT NOT NULL
);
