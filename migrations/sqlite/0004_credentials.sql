-- Bank credentials for auto-login, when secrets.source is "local".
-- Each value is sealed with AES-256-GCM under the key in DATA_DIR/credentials.key:
-- a version byte, a 96-bit nonce, then ciphertext and tag. The associated data names
-- the site, the user and the field, so a value moved to another row or column fails
-- to decrypt. user_id is '' for the site's shared credential. Times are Unix ms.

CREATE TABLE credentials (
    site          TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    username      BLOB    NOT NULL,
    password      BLOB    NOT NULL,
    totp_seed     BLOB,
    updated_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (site, user_id)
);
