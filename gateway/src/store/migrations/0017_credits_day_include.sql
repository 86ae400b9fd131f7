-- The day's credits summed by status for the console, index-only, as before; the amount
-- is carried in the index, not sorted on: the clearing run's credits then go in at the
-- end of their (day, status) key instead of at random places in it (3.5 M credits: 24 s
-- to insert with the amount in the key, 16 s with it included, on the benchmark machine).
-- SQLite has no INCLUDE: there the amount stays a key column (see `Lite::schema_text`).
DROP INDEX credits_day;
CREATE INDEX credits_day ON credits (business_date, status) INCLUDE (amount_fen);
