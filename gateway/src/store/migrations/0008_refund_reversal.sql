-- A refund's reversal of its purchase's subsidy, decided at ingest with the purchase's row
-- locked: cumulatively over the purchase's refunds, so together they never reverse more
-- than its subsidy (clearing sums it as recorded, as it does the subsidies).
ALTER TABLE txns ADD COLUMN reversal_fen BIGINT NOT NULL DEFAULT 0;

-- Refunds recorded before: the reversal clearing computed for each on its own.
UPDATE txns SET reversal_fen = COALESCE((
    SELECT (o.subsidy_fen * (CASE WHEN txns.amount_fen < o.amount_fen
                                  THEN txns.amount_fen ELSE o.amount_fen END) * 2 + o.amount_fen)
           / (2 * o.amount_fen)
    FROM txns o
    WHERE o.device_id = txns.device_id AND o.seq = txns.refund_of_seq
      AND o.status = 1 AND o.kind = 1 AND o.amount_fen > 0), 0)
WHERE kind = 4 AND status = 1;
