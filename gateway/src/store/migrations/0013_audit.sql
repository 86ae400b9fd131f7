-- Migration 13: the audit log, append-only and hash-chained (see gateway/src/audit.rs):
-- each row's hash covers the previous row's and its own fields, so a row changed,
-- removed or reordered shows in `wenxiao-gateway audit verify`. Rows are written in the
-- transaction of the action they record.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    detail    TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);
