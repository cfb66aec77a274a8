-- Signed checkpoints left by audit pruning. A checkpoint names the last pruned event
-- (its sequence number and hash), so that `strongroom audit verify` starts the chain
-- there, and a digest of the older events that pruning kept because retained or
-- held recordings refer to them. The Ed25519 signature covers every other column.
CREATE TABLE audit_checkpoints (
    id               BIGINT PRIMARY KEY,
    created_at_ms    BIGINT NOT NULL,
    last_seq         BIGINT NOT NULL,
    last_hash        TEXT   NOT NULL,
    pruned_before_ms BIGINT NOT NULL,
    pruned_count     BIGINT NOT NULL,
    kept_count       BIGINT NOT NULL,
    kept_digest      TEXT   NOT NULL,
    public_key       TEXT   NOT NULL,
    signature        TEXT   NOT NULL
);

CREATE TRIGGER audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change();

CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_reject_change();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_checkpoints FROM PUBLIC;

-- Events may now be deleted, but only those at or before the newest checkpoint.
-- Updates and TRUNCATE stay rejected.
CREATE FUNCTION audit_events_reject_uncovered_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq <= (SELECT COALESCE(MAX(last_seq), 0) FROM audit_checkpoints) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only; only events covered by a checkpoint may be pruned'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER audit_events_no_update_delete ON audit_events;

CREATE TRIGGER audit_events_no_update
    BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change();

CREATE TRIGGER audit_events_no_delete
    BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_reject_uncovered_delete();
