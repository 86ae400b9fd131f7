-- Migration 2: the subsidy budget, enforced at ingest.
-- Each budget (a month, key yyyymm; the whole programme, key 0) is split into shards so
-- that parallel store writers (and gateway nodes) do not queue on one row; a writer whose
-- shard runs short locks all shards of that budget and takes from their common remainder,
-- so the total granted never exceeds the sum of the shard caps, which is the cap.
CREATE TABLE budget_shards (
    budget_key  INTEGER NOT NULL,
    shard       INTEGER NOT NULL,
    cap_fen     BIGINT  NOT NULL,
    granted_fen BIGINT  NOT NULL,
    PRIMARY KEY (budget_key, shard)
);
