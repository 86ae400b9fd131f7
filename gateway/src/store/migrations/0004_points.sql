-- Migration 4: points. Balances (with what is held for purchases in progress), awards
-- (one per card, day and kind: the daily limits are this primary key), and holds.
CREATE TABLE points_accounts (
    card_no  BIGINT PRIMARY KEY,
    balance  BIGINT NOT NULL,   -- points owned, held ones included
    held     BIGINT NOT NULL    -- points reserved by live holds
);

CREATE TABLE points_awards (
    card_no     BIGINT   NOT NULL,
    award_day   INTEGER  NOT NULL,   -- Asia/Shanghai yyyymmdd
    kind        SMALLINT NOT NULL,   -- 1 sign-in, 2 review, 3 share
    merchant_id BIGINT   NOT NULL,   -- the public venue
    points      BIGINT   NOT NULL,
    PRIMARY KEY (card_no, award_day, kind)
);

CREATE TABLE points_holds (
    hold_id       BIGSERIAL PRIMARY KEY,  -- SQLite: INTEGER PRIMARY KEY, the rowid
    card_no       BIGINT   NOT NULL,
    device_id     BIGINT   NOT NULL,
    points        BIGINT   NOT NULL,
    purchase_fen  BIGINT   NOT NULL,
    expires_at_ms BIGINT   NOT NULL,
    status        SMALLINT NOT NULL,  -- 1 held, 2 consumed, 3 released
    consumed_seq  BIGINT
);
CREATE INDEX points_holds_card ON points_holds (card_no, status);
