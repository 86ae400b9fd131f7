-- Migration 6: organizer awards (a fixed sum per qualifying show), entered by staff with
-- evidence, approved by the audit group, paid by the bureau; never a card credit.
CREATE TABLE organizer_awards (
    award_id       BIGINT   PRIMARY KEY,
    merchant_id    BIGINT   NOT NULL,     -- the performance organizer
    show_date      INTEGER  NOT NULL,     -- yyyymmdd: the budget month is the show's
    kind           SMALLINT NOT NULL,     -- 1 national-level troupe, 2 national-award work
    amount_fen     BIGINT   NOT NULL,
    evidence       TEXT     NOT NULL,
    status         SMALLINT NOT NULL,     -- 1 recorded, 2 approved
    recorded_at_ms BIGINT   NOT NULL,
    approved_at_ms BIGINT,
    approved_date  INTEGER               -- business day of the approval: its bureau file
);
