-- Local account password policy and TOTP enrolment at first sign-in.

-- When the current password was set; it expires auth.password_max_age_days later.
ALTER TABLE users ADD COLUMN password_changed_at_ms INTEGER;
-- 1 when the person must choose a new password at the next sign-in (a generated or
-- reset password); the password's age forces a change too.
ALTER TABLE users ADD COLUMN password_change_required INTEGER NOT NULL DEFAULT 0;

UPDATE users SET password_changed_at_ms = updated_at_ms WHERE password_hash IS NOT NULL;

-- Argon2id hashes of each local account's passwords, newest included, so that a new
-- password can be checked against the last auth.password_history ones.
CREATE TABLE password_history (
    user_id       TEXT   NOT NULL REFERENCES users (id),
    password_hash TEXT   NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE INDEX password_history_user ON password_history (user_id, created_at_ms);

INSERT INTO password_history (user_id, password_hash, created_at_ms)
    SELECT id, password_hash, updated_at_ms FROM users WHERE password_hash IS NOT NULL;

-- A sign-in that passed the password (and the TOTP code when one is enrolled) but
-- must enrol a second factor or change the password before it gets a portal session.
-- Keyed by the SHA-256 of the cookie value.
CREATE TABLE sign_in_steps (
    token_hash      TEXT   PRIMARY KEY,
    user_id         TEXT   NOT NULL REFERENCES users (id),
    -- Sealed TOTP secret shown on the enrolment page and not yet confirmed.
    pending_totp    BLOB,
    next_path       TEXT   NOT NULL,
    client_addr     TEXT,
    expires_at_ms   INTEGER NOT NULL
);
