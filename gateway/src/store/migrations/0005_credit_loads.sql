-- Migration 5: the credit load exchange. A released credit (status 2) is bound to the
-- device it was offered or pushed to; a LOAD_INIT that passed its checks records the
-- attempt (the card's online_seq before the load, the host time in MAC2) before LOAD_AUTH
-- is sent. While an attempt is recorded the credit is in doubt; a verified TAC or the
-- card's online_seq settles it (status 3 loaded, or the attempt cleared).
ALTER TABLE credits ADD COLUMN bound_device BIGINT;
ALTER TABLE credits ADD COLUMN bound_at_ms BIGINT;
ALTER TABLE credits ADD COLUMN attempt_online_seq INTEGER;
ALTER TABLE credits ADD COLUMN attempt_host_time_ms BIGINT;
ALTER TABLE credits ADD COLUMN settled_at_ms BIGINT;
