-- People, portal sessions, sign-in throttling and OpenID Connect state.
-- Times are Unix milliseconds; roles are a comma-separated list of role names.
CREATE TABLE users (
    id               TEXT    PRIMARY KEY,
    -- Sign-in name of a local account; NULL for people who sign in through OIDC.
    username         TEXT    UNIQUE,
    display_name     TEXT    NOT NULL,
    source           TEXT    NOT NULL CHECK (source IN ('local', 'oidc')),
    oidc_issuer      TEXT,
    oidc_subject     TEXT,
    password_hash    TEXT,
    -- AES-256-GCM sealed TOTP secret; the key is a file in the data directory.
    totp_secret      BLOB,
    -- Last accepted TOTP time step; a code for this step or an earlier one is refused.
    totp_last_step   INTEGER,
    roles            TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
);

CREATE UNIQUE INDEX users_oidc_identity ON users (oidc_issuer, oidc_subject);

CREATE TABLE portal_sessions (
    id                 TEXT    PRIMARY KEY,
    -- SHA-256 of the cookie value, hex; the value itself is never stored.
    token_hash         TEXT    NOT NULL UNIQUE,
    user_id            TEXT    NOT NULL REFERENCES users (id),
    -- Roles at sign-in, for the record; requests use the roles in `users`.
    roles              TEXT    NOT NULL,
    method             TEXT    NOT NULL,
    oidc_sid           TEXT,
    client_addr        TEXT,
    created_at_ms      INTEGER NOT NULL,
    last_seen_ms       INTEGER NOT NULL,
    expires_at_ms      INTEGER NOT NULL,
    idle_expires_at_ms INTEGER NOT NULL,
    -- Set when the session ends for any reason; NULL while it is usable.
    ended_at_ms        INTEGER,
    end_reason         TEXT
);

CREATE INDEX portal_sessions_user ON portal_sessions (user_id, ended_at_ms);
CREATE INDEX portal_sessions_sid ON portal_sessions (oidc_sid);
CREATE INDEX portal_sessions_open ON portal_sessions (ended_at_ms, idle_expires_at_ms);

-- Failed sign-in counters, one row per username or client address.
CREATE TABLE sign_in_throttle (
    scope             TEXT    PRIMARY KEY,
    failures          INTEGER NOT NULL,
    window_started_ms INTEGER NOT NULL,
    locked_until_ms   INTEGER NOT NULL
);

-- Pending OIDC authorization requests, keyed by the SHA-256 of `state`.
CREATE TABLE oidc_login_requests (
    state_hash    TEXT    PRIMARY KEY,
    nonce         TEXT    NOT NULL,
    pkce_verifier TEXT    NOT NULL,
    next_path     TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- `jti` values of accepted back-channel logout tokens, kept until the token expires.
CREATE TABLE oidc_logout_tokens (
    jti           TEXT    PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
);
