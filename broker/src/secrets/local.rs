//! The embedded credential store: bank credentials encrypted in the broker's database.
//!
//! The key is 32 random bytes in `DATA_DIR/credentials.key`, mode 0600, created on
//! first use. Each field is sealed separately with AES-256-GCM under a fresh 96-bit
//! nonce. The associated data names the site, the user (empty for a shared credential)
//! and the field, so a value copied to another row or another column fails to open
//! instead of being typed into the wrong bank.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use futures::future::BoxFuture;
use protocol::SecretString;
use sqlx::Row;
use zeroize::Zeroizing;

use super::{BankCredentials, CredentialError, CredentialField, CredentialRef, CredentialSource};
use crate::clock::Clock;
use crate::db::Database;

/// File name of the key under the data directory.
pub const KEY_FILE_NAME: &str = "credentials.key";

use crate::keyfile::KEY_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Version byte in front of every sealed value.
const FORMAT_VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"strongroom bank credential v1";

/// The credential encryption key. Zeroized on drop; `Debug` shows only the file.
pub struct CredentialKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialKey")
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl CredentialKey {
    /// Reads the key file under `data_dir`, creating it when it does not exist. A key
    /// file that other users can read, or of the wrong size, is rejected.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<CredentialKey> {
        let path = data_dir.join(KEY_FILE_NAME);
        let key = crate::keyfile::load_or_create(
            &path,
            "credential",
            crate::keyfile::KeyKind::Encryption,
        )?;
        Ok(CredentialKey { key, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encrypts one field of one credential.
    pub fn seal(
        &self,
        reference: &CredentialRef,
        field: CredentialField,
        value: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(reference, field);
        let ciphertext = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("credential encryption failed"))?;

        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(FORMAT_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts one field. Fails on another key, reference or field, or any altered byte.
    pub fn open(
        &self,
        reference: &CredentialRef,
        field: CredentialField,
        sealed: &[u8],
    ) -> Result<SecretString, CredentialError> {
        let failure = || CredentialError::Decrypt {
            reference: reference.to_string(),
            field,
            key_file: self.path.display().to_string(),
        };
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT_VERSION {
            return Err(failure());
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
            .try_into()
            .expect("length checked above");
        let aad = associated_data(reference, field);
        let plaintext = Zeroizing::new(
            self.cipher()
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &sealed[1 + NONCE_LEN..],
                        aad: &aad,
                    },
                )
                .map_err(|_| failure())?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| failure())?;
        Ok(SecretString::new(text.to_owned()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key).into())
    }
}

/// `PREFIX \0 site \0 user_id \0 field`. Neither part may contain a NUL byte, which
/// [`CredentialRef`] enforces, so the encoding is unambiguous.
fn associated_data(reference: &CredentialRef, field: CredentialField) -> Vec<u8> {
    let user_id = reference.user_id().unwrap_or_default();
    [
        AAD_PREFIX,
        b"\0",
        reference.site().as_bytes(),
        b"\0",
        user_id.as_bytes(),
        b"\0",
        field.as_str().as_bytes(),
    ]
    .concat()
}

/// Entry of `credential list`: names and dates, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEntry {
    pub reference: CredentialRef,
    pub has_totp_seed: bool,
    pub updated_by: String,
    pub updated_at_ms: i64,
}

/// Bank credentials in the `credentials` table.
#[derive(Clone)]
pub struct LocalStore {
    db: Database,
    key: Arc<CredentialKey>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    pub fn new(db: Database, key: Arc<CredentialKey>, clock: Arc<dyn Clock>) -> LocalStore {
        LocalStore { db, key, clock }
    }

    /// Stores or replaces a credential. The values were checked when `credentials` was
    /// built; they are stored exactly as given.
    pub async fn save(
        &self,
        reference: &CredentialRef,
        credentials: &BankCredentials,
        updated_by: &str,
    ) -> Result<(), CredentialError> {
        let seal = |field, value: &SecretString| {
            self.key
                .seal(reference, field, value.expose().as_bytes())
                .map_err(CredentialError::Storage)
        };
        let username = seal(CredentialField::Username, &credentials.username)?;
        let password = seal(CredentialField::Password, &credentials.password)?;
        let totp_seed = match &credentials.totp_seed {
            Some(seed) => Some(seal(CredentialField::TotpSeed, seed.as_text())?),
            None => None,
        };
        let now_ms = self.clock.now().timestamp_millis();

        sqlx::query(
            "INSERT INTO credentials (site, user_id, username, password, totp_seed, updated_by, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (site, user_id) DO UPDATE SET username = excluded.username, password = excluded.password, \
             totp_seed = excluded.totp_seed, updated_by = excluded.updated_by, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(reference.site())
        .bind(reference.user_id().unwrap_or_default())
        .bind(username)
        .bind(password)
        .bind(totp_seed)
        .bind(updated_by)
        .bind(now_ms)
        .execute(self.db.pool())
        .await
        .map_err(|error| CredentialError::Storage(anyhow::Error::new(error).context(format!("cannot store {reference}"))))?;
        Ok(())
    }

    /// Removes a credential; returns whether one existed.
    pub async fn delete(&self, reference: &CredentialRef) -> Result<bool, CredentialError> {
        let result = sqlx::query("DELETE FROM credentials WHERE site = $1 AND user_id = $2")
            .bind(reference.site())
            .bind(reference.user_id().unwrap_or_default())
            .execute(self.db.pool())
            .await
            .map_err(|error| {
                CredentialError::Storage(
                    anyhow::Error::new(error).context(format!("cannot delete {reference}")),
                )
            })?;
        Ok(result.rows_affected() > 0)
    }

    /// Lists every stored credential by site, then user; shared credentials come first.
    pub async fn list(&self) -> Result<Vec<CredentialEntry>, CredentialError> {
        let rows = sqlx::query(
            "SELECT site, user_id, CAST(CASE WHEN totp_seed IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_totp_seed, updated_by, updated_at_ms \
             FROM credentials ORDER BY site, user_id",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(|error| CredentialError::Storage(anyhow::Error::new(error).context("cannot list credentials")))?;

        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let decode = |error: sqlx::Error| {
                CredentialError::Storage(
                    anyhow::Error::new(error).context("cannot decode a credential row"),
                )
            };
            let site: String = row.try_get("site").map_err(decode)?;
            let user_id: String = row.try_get("user_id").map_err(decode)?;
            let reference = if user_id.is_empty() {
                CredentialRef::Shared { site }
            } else {
                CredentialRef::Personal { site, user_id }
            };
            entries.push(CredentialEntry {
                reference,
                has_totp_seed: row.try_get::<i64, _>("has_totp_seed").map_err(decode)? != 0,
                updated_by: row.try_get("updated_by").map_err(decode)?,
                updated_at_ms: row.try_get("updated_at_ms").map_err(decode)?,
            });
        }
        Ok(entries)
    }

    async fn read(&self, reference: &CredentialRef) -> Result<BankCredentials, CredentialError> {
        let row = sqlx::query("SELECT username, password, totp_seed FROM credentials WHERE site = $1 AND user_id = $2")
            .bind(reference.site())
            .bind(reference.user_id().unwrap_or_default())
            .fetch_optional(self.db.pool())
            .await
            .map_err(|error| CredentialError::Storage(anyhow::Error::new(error).context(format!("cannot read {reference}"))))?;
        let Some(row) = row else {
            return Err(CredentialError::NotFound {
                reference: reference.to_string(),
                detail: "nothing is stored in the local credential table; store it with `strongroom secrets set`".to_owned(),
            });
        };

        let decode = |error: sqlx::Error| {
            CredentialError::Storage(
                anyhow::Error::new(error).context("cannot decode a credential row"),
            )
        };
        let username: Vec<u8> = row.try_get("username").map_err(decode)?;
        let password: Vec<u8> = row.try_get("password").map_err(decode)?;
        let totp_seed: Option<Vec<u8>> = row.try_get("totp_seed").map_err(decode)?;

        let username = self
            .key
            .open(reference, CredentialField::Username, &username)?;
        let password = self
            .key
            .open(reference, CredentialField::Password, &password)?;
        let totp_seed = match totp_seed {
            Some(sealed) => Some(
                self.key
                    .open(reference, CredentialField::TotpSeed, &sealed)?,
            ),
            None => None,
        };
        // Stored values were checked on the way in; checking again catches a value that
        // a newer, stricter check rejects.
        BankCredentials::new(reference, username, password, totp_seed)
    }
}

impl CredentialSource for LocalStore {
    fn name(&self) -> &'static str {
        "local"
    }

    fn fetch<'a>(
        &'a self,
        reference: &'a CredentialRef,
    ) -> BoxFuture<'a, Result<BankCredentials, CredentialError>> {
        Box::pin(self.read(reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_value_opens_only_for_its_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = CredentialKey::load_or_create(dir.path()).unwrap();
        let shared = CredentialRef::shared("demo-bank").unwrap();
        let personal = CredentialRef::personal("demo-bank", "alice").unwrap();
        let other_site = CredentialRef::shared("other-bank").unwrap();

        let sealed = key
            .seal(&shared, CredentialField::Password, b"Mk-value")
            .unwrap();

        assert_eq!(
            key.open(&shared, CredentialField::Password, &sealed)
                .unwrap()
                .expose(),
            "Mk-value"
        );
        assert!(
            key.open(&shared, CredentialField::Username, &sealed)
                .is_err()
        );
        assert!(
            key.open(&personal, CredentialField::Password, &sealed)
                .is_err()
        );
        assert!(
            key.open(&other_site, CredentialField::Password, &sealed)
                .is_err()
        );
    }

    #[test]
    fn key_file_is_private_reused_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let first = CredentialKey::load_or_create(dir.path()).unwrap();
        let reference = CredentialRef::shared("demo-bank").unwrap();
        let sealed = first
            .seal(&reference, CredentialField::Username, b"alice")
            .unwrap();

        let second = CredentialKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();

        assert_eq!(mode & 0o777, 0o600);
        assert!(
            second
                .open(&reference, CredentialField::Username, &sealed)
                .is_ok()
        );
        assert!(!format!("{second:?}").contains(&hex::encode(second.key.as_slice())));
    }

    #[test]
    fn readable_or_truncated_key_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        CredentialKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE_NAME);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = CredentialKey::load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error:#}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let error = CredentialKey::load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("5 bytes"), "{error:#}");
    }
}
