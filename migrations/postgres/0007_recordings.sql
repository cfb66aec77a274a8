-- Catalogue of session recordings. The video itself lives in the recording store;
-- this table lets auditors find a recording and lets retention and recovery act on it.
-- Times are Unix milliseconds; flags are 0 or 1.
--
-- state: recording -> sealed | failed -> deleted. A row left in `recording` by a
-- crashed broker is sealed by the next start of the same instance.
CREATE TABLE recordings (
    id             TEXT    PRIMARY KEY,
    session_id     TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    site           TEXT    NOT NULL,
    instance_id    TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    ended_at_ms    BIGINT,
    segment_count  BIGINT NOT NULL,
    bytes          BIGINT NOT NULL,
    legal_hold     BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    seal_sha256    TEXT,
    detail         TEXT,
    deleted_at_ms  BIGINT
);

CREATE INDEX recordings_user_started ON recordings (user_id, started_at_ms);
CREATE INDEX recordings_site_started ON recordings (site, started_at_ms);
CREATE INDEX recordings_instance_state ON recordings (instance_id, state);
CREATE INDEX recordings_expires ON recordings (state, expires_at_ms);
