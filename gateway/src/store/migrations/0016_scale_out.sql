-- Which node serves each device, with a fencing epoch that only grows: the ingest
-- transaction and the credit steps refuse a session whose epoch is not the lease's.
CREATE TABLE device_leases (
    device_id      BIGINT PRIMARY KEY,
    node_id        TEXT   NOT NULL,
    epoch          BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL
);
-- Events for the other nodes, written in the transaction that causes them; NOTIFY carries
-- the id only, and a listener that was away reads what it missed.
CREATE TABLE outbox (
    event_id BIGSERIAL PRIMARY KEY,
    kind     TEXT   NOT NULL,
    body     TEXT   NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX outbox_at ON outbox (at_ms);
