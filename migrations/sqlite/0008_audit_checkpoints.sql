-- Signed checkpoints left by audit pruning. A checkpoint names the last pruned event
-- (its sequence number and hash), so that `strongroom audit verify` starts the chain
-- there, and a digest of the older events that pruning kept because retained or
-- held recordings refer to them. The Ed25519 signature covers every other column.
CREATE TABLE audit_checkpoints (
    id               INTEGER PRIMARY KEY,
    created_at_ms    INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL,
    last_hash        TEXT    NOT NULL,
    pruned_before_ms INTEGER NOT NULL,
    pruned_count     INTEGER NOT NULL,
    kept_count       INTEGER NOT NULL,
    kept_digest      TEXT    NOT NULL,
    public_key       TEXT    NOT NULL,
    signature        TEXT    NOT NULL
);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

-- Events may now be deleted, but only those at or before the newest checkpoint.
DROP TRIGGER audit_events_no_delete;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.seq > (SELECT COALESCE(MAX(last_seq), 0) FROM audit_checkpoints)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only; only events covered by a checkpoint may be pruned');
END;
