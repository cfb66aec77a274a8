//! The key that encrypts TOTP secrets at rest.
//!
//! The key is 32 random bytes in `DATA_DIR/auth-totp.key`, mode 0600, created on first
//! use. Each secret is sealed with AES-256-GCM under a fresh 96-bit nonce, with the
//! user id as associated data, so a secret copied to another user's row fails to open.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::bail;
use zeroize::Zeroizing;

/// File name of the key under the data directory.
pub const KEY_FILE_NAME: &str = "auth-totp.key";

use crate::keyfile::KEY_LEN;
const NONCE_LEN: usize = 12;
/// Version byte in front of every sealed secret.
const FORMAT_VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"strongroom totp secret v1 user:";

/// The TOTP encryption key. Zeroized on drop; `Debug` shows only the file.
pub struct TotpKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
}

impl fmt::Debug for TotpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpKey")
            .field("path", &self.path)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl TotpKey {
    /// Reads the key file under `data_dir`, creating it when it does not exist.
    ///
    /// A key file that other users can read is rejected rather than used.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<TotpKey> {
        let path = data_dir.join(KEY_FILE_NAME);
        let key =
            crate::keyfile::load_or_create(&path, "TOTP", crate::keyfile::KeyKind::Encryption)?;
        Ok(TotpKey { key, path })
    }

    /// Encrypts a TOTP secret for one user.
    pub fn seal(&self, user_id: &str, secret: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(user_id);
        let ciphertext = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("TOTP secret encryption failed"))?;

        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(FORMAT_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts a sealed TOTP secret. Fails on any other key, user or altered byte.
    pub fn open(&self, user_id: &str, sealed: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != FORMAT_VERSION {
            bail!("the stored TOTP secret of user {user_id} has an unknown format");
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
            .try_into()
            .expect("length checked above");
        let aad = associated_data(user_id);
        let plaintext = self
            .cipher()
            .decrypt(&Nonce::from(nonce), Payload { msg: &sealed[1 + NONCE_LEN..], aad: &aad })
            .map_err(|_| anyhow::anyhow!("cannot decrypt the TOTP secret of user {user_id}; was {} replaced or the row edited?", self.path.display()))?;
        Ok(Zeroizing::new(plaintext))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key).into())
    }
}

fn associated_data(user_id: &str) -> Vec<u8> {
    [AAD_PREFIX, user_id.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_secret_opens_only_for_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let key = TotpKey::load_or_create(dir.path()).unwrap();

        let sealed = key.seal("alice", b"0123456789abcdefghij").unwrap();

        assert_eq!(
            key.open("alice", &sealed).unwrap().as_slice(),
            b"0123456789abcdefghij"
        );
        assert!(key.open("bob", &sealed).is_err());
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = TotpKey::load_or_create(dir.path()).unwrap();
        let sealed = first.seal("alice", b"secret-bytes-0123456").unwrap();

        let second = TotpKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();

        assert_eq!(mode & 0o777, 0o600);
        assert!(second.open("alice", &sealed).is_ok());
        assert!(!format!("{second:?}").contains(&hex::encode(second.key.as_slice())));
    }

    #[test]
    fn readable_key_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        TotpKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let error = TotpKey::load_or_create(dir.path()).unwrap_err();

        assert!(error.to_string().contains("chmod 600"), "{error:#}");
    }
}
