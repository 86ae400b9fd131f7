-- The ledger clock: a counter that only grows, taken by every recorded load attempt
-- (credits.attempt_order) and read back by presentations, so that whether a presentation
-- was received after an attempt was recorded is decided by the store, never by the
-- gateways' wall clocks.
CREATE TABLE ledger_clock (
    id    INTEGER PRIMARY KEY,
    value BIGINT  NOT NULL
);
INSERT INTO ledger_clock (id, value) VALUES (1, 0);

-- Attempts recorded before: order 0, which any presentation received from now on follows.
ALTER TABLE credits ADD COLUMN attempt_order BIGINT;
UPDATE credits SET attempt_order = 0 WHERE attempt_online_seq IS NOT NULL;
