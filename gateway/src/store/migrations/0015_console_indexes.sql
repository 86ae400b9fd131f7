-- A day's credits by state, read index-only: its page's control totals and loaded
-- figures, its report and its settlement files, without scanning every day's credits.
CREATE INDEX credits_day ON credits (business_date, status, amount_fen);
