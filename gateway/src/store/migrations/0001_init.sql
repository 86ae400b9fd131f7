-- Wenxiao clearing store, migration 1: registry and transaction ingest. (PostgreSQL
-- dialect; the embedded store runs it through store::sqlite_schema.)
-- u64 identifiers (device ids, card numbers, seqs) are stored bit-for-bit in BIGINT.

CREATE TABLE merchants (
    merchant_id BIGINT PRIMARY KEY,
    name        TEXT     NOT NULL,
    category    SMALLINT NOT NULL,  -- 1 bookstore, 2 cinema, 3 performance venue, 4 organizer, 5 public venue
    district    SMALLINT NOT NULL,  -- 1..10, see registry::District
    active      BOOLEAN  NOT NULL
);

CREATE TABLE devices (
    device_id   BIGINT PRIMARY KEY,
    kind        SMALLINT NOT NULL,  -- protocol DeviceKind code
    merchant_id BIGINT REFERENCES merchants (merchant_id),  -- NULL for OTA endpoints
    operator    SMALLINT,           -- OTA endpoints: 1 China Mobile, 2 China Telecom
    active      BOOLEAN  NOT NULL
);

-- Every answered transaction: STORED (status 1) or REJECTED (status 3) — rejected ones are
-- evidence and answer a re-send the same way.
CREATE TABLE txns (
    device_id      BIGINT   NOT NULL,
    seq            BIGINT   NOT NULL,
    kind           SMALLINT NOT NULL,
    card_no        BIGINT   NOT NULL,
    card_counter   BIGINT   NOT NULL,
    counter_kind   SMALLINT NOT NULL,  -- 1 offline (PURCHASE, SIGN_IN), 2 online (TOP_UP, REFUND)
    amount_fen     BIGINT   NOT NULL,
    list_price_fen BIGINT   NOT NULL,
    item           SMALLINT NOT NULL,
    points_hold_id BIGINT   NOT NULL,
    points_used    BIGINT   NOT NULL,
    refund_of_seq  BIGINT   NOT NULL,
    occurred_at_ms BIGINT   NOT NULL,
    tac            INTEGER  NOT NULL,
    merchant_id    BIGINT,
    status         SMALLINT NOT NULL,
    reason         SMALLINT NOT NULL,
    subsidy_fen    BIGINT   NOT NULL,
    points_awarded BIGINT   NOT NULL,
    received_at_ms BIGINT   NOT NULL,
    business_date  INTEGER  NOT NULL,
    PRIMARY KEY (device_id, seq)
);

-- CARD_COUNTER_REPLAY: one stored transaction per card and counter value.
CREATE UNIQUE INDEX txns_card_counter ON txns (card_no, counter_kind, card_counter) WHERE status = 1;
CREATE INDEX txns_business_date ON txns (business_date);

-- SEQ_CONFLICT evidence: the exact payload of each distinct conflicting TXN.
CREATE TABLE txn_conflicts (
    device_id      BIGINT NOT NULL,
    seq            BIGINT NOT NULL,
    payload        BYTEA  NOT NULL,
    received_at_ms BIGINT NOT NULL,
    UNIQUE (device_id, seq, payload)
);

-- A lower bound of each device's stored_seq, so HELLO scans only what came after it.
CREATE TABLE device_seq_checkpoints (
    device_id  BIGINT PRIMARY KEY,
    stored_seq BIGINT NOT NULL
);
