-- Append-only, hash-chained audit trail. The triggers stop updates and deletes made
-- through SQL; anyone with write access to the file can still drop them, which the
-- hash chain then detects (`strongroom audit verify`).
CREATE TABLE audit_events (
    seq            INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    schema_version INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    target         TEXT,
    outcome        TEXT    NOT NULL,
    client_addr    TEXT,
    session_id     TEXT,
    details        TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
);

CREATE INDEX audit_events_session ON audit_events (session_id);
CREATE INDEX audit_events_action ON audit_events (action, occurred_at_ms);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
