-- Files delivered from workspaces to their owners. The bytes live encrypted under
-- DATA_DIR/downloads, one file per row named by the id. Times are Unix milliseconds.
-- A row is removed, with its file, once expires_at_ms passes.
CREATE TABLE downloads (
    id             TEXT    PRIMARY KEY,
    session_id     TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    site           TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);

CREATE INDEX downloads_user_created ON downloads (user_id, created_at_ms);
CREATE INDEX downloads_expires ON downloads (expires_at_ms);
