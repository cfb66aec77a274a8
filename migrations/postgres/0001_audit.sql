-- Append-only, hash-chained audit trail. The triggers reject UPDATE, DELETE and
-- TRUNCATE for every role, the table owner included; only a role that may alter the
-- table can disable them, and the hash chain detects what such a role changes.
CREATE TABLE audit_events (
    seq            BIGINT PRIMARY KEY,
    event_id       TEXT   NOT NULL UNIQUE,
    schema_version BIGINT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    actor          TEXT   NOT NULL,
    action         TEXT   NOT NULL,
    target         TEXT,
    outcome        TEXT   NOT NULL,
    client_addr    TEXT,
    session_id     TEXT,
    details        TEXT   NOT NULL,
    prev_hash      TEXT   NOT NULL,
    hash           TEXT   NOT NULL
);

CREATE INDEX audit_events_session ON audit_events (session_id);
CREATE INDEX audit_events_action ON audit_events (action, occurred_at_ms);

CREATE FUNCTION audit_events_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_reject_change();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC;
