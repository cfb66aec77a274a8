-- Auto-login settings and session policies of each site, the use and failure state
-- of each bank credential, and site changes waiting for a second admin.
-- Times are Unix milliseconds; settings are JSON objects stored as text.

ALTER TABLE sites ADD COLUMN login_settings TEXT NOT NULL DEFAULT '{"recipe":null,"logout_recipe":null,"credential_origins":[],"credential_source":"shared","exclusive_use":true,"max_failed_logins":3}';
ALTER TABLE sites ADD COLUMN session_policy TEXT NOT NULL DEFAULT '{"downloads":"blocked","clipboard":"blocked","extra_ca_certs":[]}';

-- One row per credential that was used or failed. user_id is '' for a site's shared
-- credential. in_use_session is the live session holding an exclusive credential;
-- a holder whose session has ended no longer counts. locked_at_ms is set once
-- failed_logins reached the site's max_failed_logins, and cleared by an admin.
CREATE TABLE credential_state (
    site            TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    failed_logins   INTEGER NOT NULL,
    locked_at_ms    INTEGER,
    in_use_session  TEXT,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (site, user_id)
);

-- A site definition submitted by one admin, applied only once another admin approved
-- it. status: pending -> approved | rejected. changed_fields is a JSON list of the
-- controlled fields that differ from the stored site.
CREATE TABLE site_changes (
    id              TEXT    PRIMARY KEY,
    site            TEXT    NOT NULL,
    definition      TEXT    NOT NULL,
    changed_fields  TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    decided_by      TEXT,
    decided_at_ms   INTEGER
);

CREATE INDEX site_changes_status ON site_changes (status, site);
