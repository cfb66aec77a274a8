-- Site catalogue, per-person grants and quotas, and banking sessions.
-- Times are Unix milliseconds; lists are JSON arrays stored as text; flags are 0 or 1.

CREATE TABLE sites (
    name                     TEXT    PRIMARY KEY,
    display_name             TEXT    NOT NULL,
    start_url                TEXT    NOT NULL,
    allowed_hosts            TEXT    NOT NULL,
    allowed_private_ranges   TEXT    NOT NULL,
    allowed_ports            TEXT    NOT NULL,
    memory_bytes             BIGINT NOT NULL,
    nano_cpus                BIGINT NOT NULL,
    pids                     BIGINT NOT NULL,
    shm_bytes                BIGINT NOT NULL,
    max_sessions             BIGINT,
    recording_retention_days BIGINT NOT NULL,
    enabled                  BIGINT NOT NULL,
    created_at_ms            BIGINT NOT NULL,
    updated_at_ms            BIGINT NOT NULL
);

CREATE TABLE site_grants (
    user_id       TEXT    NOT NULL,
    site          TEXT    NOT NULL REFERENCES sites (name) ON DELETE CASCADE,
    granted_by    TEXT    NOT NULL,
    granted_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, site)
);

CREATE TABLE session_quotas (
    user_id       TEXT    PRIMARY KEY,
    max_sessions  BIGINT NOT NULL,
    updated_by    TEXT    NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- state: reserved -> starting -> running -> ending -> ended. Every state but `ended`
-- holds a quota slot.
CREATE TABLE sessions (
    id                  TEXT    PRIMARY KEY,
    user_id             TEXT    NOT NULL,
    site                TEXT    NOT NULL,
    instance_id         TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    client_addr         TEXT,
    created_at_ms       BIGINT NOT NULL,
    started_at_ms       BIGINT,
    last_input_at_ms    BIGINT NOT NULL,
    idle_warned_at_ms   BIGINT,
    ended_at_ms         BIGINT,
    end_reason          TEXT,
    end_detail          TEXT,
    ended_by            TEXT,
    container_id        TEXT,
    container_name      TEXT,
    network_name        TEXT,
    subnet              TEXT,
    gateway             TEXT,
    workspace_address   TEXT
);

CREATE INDEX sessions_user_state ON sessions (user_id, state);
CREATE INDEX sessions_site_state ON sessions (site, state);
CREATE INDEX sessions_instance_state ON sessions (instance_id, state);
