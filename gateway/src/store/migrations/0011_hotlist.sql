-- Migration 11: the hot list's versions. Every change of the card blacklist (one add or
-- remove, or one bulk import) is a new version; `hotlist_changes` keeps the cards each
-- version added or removed, for the deltas terminals download, until the version falls
-- out of `hotlist.delta_versions_kept` (then `changes_kept` turns false and terminals
-- behind it get the full list). Version 0 is the empty list.
CREATE TABLE hotlist_versions (
    version       BIGINT  PRIMARY KEY,
    created_at_ms BIGINT  NOT NULL,
    added         BIGINT  NOT NULL,
    removed       BIGINT  NOT NULL,
    source        TEXT    NOT NULL,
    changes_kept  BOOLEAN NOT NULL
);

CREATE TABLE hotlist_changes (
    version BIGINT  NOT NULL,
    card_no BIGINT  NOT NULL,
    listed  BOOLEAN NOT NULL,  -- true: added to the list; false: taken off
    PRIMARY KEY (version, card_no)
);

-- Each terminal's acknowledged hot-list version (HOTLIST_ACK).
CREATE TABLE device_hotlist (
    device_id   BIGINT PRIMARY KEY,
    version     BIGINT NOT NULL,
    acked_at_ms BIGINT NOT NULL
);

-- Cards blacklisted before versions existed make version 1 (when there are any).
INSERT INTO hotlist_versions (version, created_at_ms, added, removed, source, changes_kept)
SELECT 1, MAX(added_at_ms), COUNT(*), 0, 'migration', TRUE FROM card_blacklist
HAVING COUNT(*) > 0;
INSERT INTO hotlist_changes (version, card_no, listed)
SELECT 1, card_no, TRUE FROM card_blacklist;
