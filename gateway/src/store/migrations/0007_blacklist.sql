-- Migration 7: the card blacklist (policy, "Fraud and risk"): cards found arbitraging lose
-- subsidy eligibility. Their purchases are still stored, with subsidy 0 and reason
-- CARD_BLACKLISTED.
CREATE TABLE card_blacklist (
    card_no     BIGINT PRIMARY KEY,
    reason      TEXT   NOT NULL,
    added_at_ms BIGINT NOT NULL
);
