-- Business days closed to new rows: a clearing run first closes its day (briefly locking
-- this table against the ingest transactions in flight), then clears it in a snapshot
-- that therefore holds every row of the day. A row that commits later with a closed day
-- is stored with the next open day.
CREATE TABLE closed_days (
    business_date INTEGER PRIMARY KEY,
    closed_at_ms  BIGINT  NOT NULL
);

INSERT INTO closed_days (business_date, closed_at_ms)
    SELECT business_date, cleared_at_ms FROM clearing_runs;
