//! Key hierarchy: a random data key (DEK) per recording, wrapped by a key-encryption key
//! (KEK) per retention period, plus a hold KEK for recordings under legal hold.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::KeyError;

/// Name of a key-encryption key: 1 to 64 characters from `a-z`, `0-9` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KekId(String);

impl KekId {
    /// Id of the hold key that keeps held recordings readable after their period's key
    /// is destroyed.
    pub const HOLD: &'static str = "hold";

    /// Validates and wraps a key id.
    pub fn new(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(KekId(id))
        } else {
            Err(KeyError::InvalidId(id))
        }
    }

    /// Returns the first hold key's id. `strongroom keys rotate` replaces it with
    /// generations `hold-r<ms>`; [`current_hold_key`] finds the one in use.
    pub fn hold() -> Self {
        KekId(Self::HOLD.to_owned())
    }

    /// Returns the hold key of generation `generation`, `hold-r<generation>`.
    pub fn hold_generation(generation: i64) -> Self {
        KekId(format!("{}-r{}", Self::HOLD, generation.max(0)))
    }

    /// Returns the generation of a hold key: 0 for `hold`, `n` for `hold-r<n>`, and
    /// `None` for any other key.
    pub fn hold_key_generation(&self) -> Option<u64> {
        if self.0 == Self::HOLD {
            return Some(0);
        }
        let digits = self.0.strip_prefix("hold-r")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Reports whether this is a hold key of any generation.
    pub fn is_hold(&self) -> bool {
        self.hold_key_generation().is_some()
    }

    /// Returns the id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for KekId {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        KekId::new(value)
    }
}

impl From<KekId> for String {
    fn from(value: KekId) -> Self {
        value.0
    }
}

/// A 256-bit AES key: a recording's data key or, inside a key store, a key-encryption
/// key. Zeroized on drop; its `Debug` output is redacted.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// Generates a key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        crypto::fill_random(key.as_mut())?;
        Ok(SecretKey(key))
    }

    /// Wraps existing key bytes, for key stores that hold keys elsewhere.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    /// Returns the raw key bytes. Only key stores and the cipher need them.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A data key encrypted under a key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The key-encryption key that wrapped it.
    pub kek_id: KekId,
    /// AES-GCM nonce, hex in JSON. All zeros in a wrap made by a key management
    /// service, which keeps its own nonce inside `ciphertext`.
    #[serde(with = "hex::serde")]
    pub nonce: [u8; 12],
    /// Encrypted data key with its tag, hex in JSON.
    #[serde(with = "hex::serde")]
    pub ciphertext: Vec<u8>,
    /// The key management service's own id of the key that made this wrap, such as an
    /// Infisical KMS key id. Absent in wraps made by [`LocalKeyStore`], so their JSON is
    /// unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_key_id: Option<String>,
}

/// Source of key-encryption keys. The wrapping happens inside the store so that an
/// implementation backed by a key management service never hands out the KEK itself.
///
/// All methods block; call them from a thread that may block.
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Creates the key if it does not exist yet. Returns whether it was created.
    fn create_if_missing(&self, id: &KekId) -> Result<bool, KeyError>;

    /// Reports whether the key exists.
    fn contains(&self, id: &KekId) -> Result<bool, KeyError>;

    /// Lists the ids of all keys in the store.
    fn list(&self) -> Result<Vec<KekId>, KeyError>;

    /// Encrypts `dek` under key `id` with `aad` bound in. Fails with
    /// [`KeyError::NotFound`] when the key does not exist.
    fn wrap(&self, id: &KekId, dek: &SecretKey, aad: &[u8]) -> Result<WrappedKey, KeyError>;

    /// Decrypts a wrapped data key. Fails with [`KeyError::NotFound`] when the key was
    /// destroyed and with [`KeyError::UnwrapFailed`] when `aad` or the ciphertext differ.
    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<SecretKey, KeyError>;

    /// Destroys the key for good. Destroying a missing key succeeds.
    fn destroy(&self, id: &KekId) -> Result<(), KeyError>;
}

/// Key store that keeps each KEK in its own file `<id>.kek` (32 raw bytes, mode 0600) in
/// a directory of mode 0700.
///
/// NOTE: destroying a key overwrites the file with zeros before unlinking it, but on
/// copy-on-write file systems, SSDs and backups the old blocks may survive. Production
/// deployments keep KEKs in a key management service instead.
pub struct LocalKeyStore {
    dir: PathBuf,
    // Serialises creation and destruction within this process.
    lock: Mutex<()>,
}

impl fmt::Debug for LocalKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const KEY_SUFFIX: &str = ".kek";

impl LocalKeyStore {
    /// Opens the key directory, creating it with mode 0700 if missing. Fails when the
    /// directory is readable by group or others.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let dir = dir.into();
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| io_error("create directory", &dir, source))?;
        }
        let mode = fs::metadata(&dir)
            .map_err(|source| io_error("stat", &dir, source))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: dir,
                mode: mode & 0o7777,
                fix: "700",
            });
        }
        Ok(LocalKeyStore {
            dir,
            lock: Mutex::new(()),
        })
    }

    /// Returns the directory that contains the key files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &KekId) -> PathBuf {
        self.dir.join(format!("{id}{KEY_SUFFIX}"))
    }

    fn load(&self, id: &KekId) -> Result<SecretKey, KeyError> {
        let path = self.path(id);
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::NotFound(id.clone()));
            }
            Err(source) => return Err(io_error("stat", &path, source)),
        };
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path,
                mode: mode & 0o7777,
                fix: "600",
            });
        }
        let bytes =
            Zeroizing::new(fs::read(&path).map_err(|source| io_error("read", &path, source))?);
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed {
                path: path.clone(),
                reason: format!("{} bytes, expected 32", bytes.len()),
            })?;
        Ok(SecretKey::from_bytes(key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no partial state behind (files are
        // replaced atomically), so a poisoned lock is safe to reuse.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KeyStore for LocalKeyStore {
    fn create_if_missing(&self, id: &KekId) -> Result<bool, KeyError> {
        let _guard = self.lock();
        let path = self.path(id);
        if path.exists() {
            return Ok(false);
        }

        let key = SecretKey::generate()?;
        let tmp = self.dir.join(format!(".tmp-{id}{KEY_SUFFIX}"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| io_error("create", &tmp, source))?;
        file.write_all(key.expose_secret())
            .and_then(|()| file.sync_all())
            .map_err(|source| io_error("write", &tmp, source))?;
        drop(file);

        // `link` fails if the target exists, so a key is never replaced, even by
        // another process that created it meanwhile.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => return Err(io_error("link", &path, source)),
        }
        sync_dir(&self.dir)?;
        tracing::info!(kek.id = %id, "Created key-encryption key");
        Ok(true)
    }

    fn contains(&self, id: &KekId) -> Result<bool, KeyError> {
        Ok(self.path(id).exists())
    }

    fn list(&self) -> Result<Vec<KekId>, KeyError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|source| io_error("list", &self.dir, source))?;
        let mut ids = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", &self.dir, source))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(KEY_SUFFIX)
                && let Ok(id) = KekId::new(id)
            {
                ids.insert(id);
            }
        }
        Ok(ids.into_iter().collect())
    }

    fn wrap(&self, id: &KekId, dek: &SecretKey, aad: &[u8]) -> Result<WrappedKey, KeyError> {
        let kek = self.load(id)?;
        let nonce = crypto::random_nonce()?;
        let ciphertext = crypto::seal(
            &crypto::cipher(kek.expose_secret()),
            &nonce,
            aad,
            dek.expose_secret(),
        );
        Ok(WrappedKey {
            kek_id: id.clone(),
            nonce,
            ciphertext,
            service_key_id: None,
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<SecretKey, KeyError> {
        if let Some(service_key_id) = &wrapped.service_key_id {
            return Err(KeyError::WrongStore {
                kek_id: wrapped.kek_id.clone(),
                wrapped_by: format!("a key management service (key id {service_key_id})"),
                configured: "the local key directory",
            });
        }
        let kek = self.load(&wrapped.kek_id)?;
        let plain = crypto::open(
            &crypto::cipher(kek.expose_secret()),
            &wrapped.nonce,
            aad,
            &wrapped.ciphertext,
        )
        .map(Zeroizing::new)
        .ok_or_else(|| KeyError::UnwrapFailed(wrapped.kek_id.clone()))?;
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::UnwrapFailed(wrapped.kek_id.clone()))?;
        Ok(SecretKey::from_bytes(key))
    }

    fn destroy(&self, id: &KekId) -> Result<(), KeyError> {
        let _guard = self.lock();
        let path = self.path(id);
        let mut file = match fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(io_error("open", &path, source)),
        };
        file.write_all(&[0u8; 32])
            .and_then(|()| file.sync_all())
            .map_err(|source| io_error("overwrite", &path, source))?;
        drop(file);
        fs::remove_file(&path).map_err(|source| io_error("remove", &path, source))?;
        sync_dir(&self.dir)?;
        tracing::info!(kek.id = %id, "Destroyed key-encryption key");
        Ok(())
    }
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_error("fsync directory", dir, source))
}

/// Returns the hold key that wraps the data keys of new holds: the newest generation
/// in `keys`.
/// Creates the first hold key when the store has none.
pub fn current_hold_key(keys: &dyn KeyStore) -> Result<KekId, KeyError> {
    let newest = keys
        .list()?
        .into_iter()
        .filter_map(|id| id.hold_key_generation().map(|generation| (generation, id)))
        .max();
    match newest {
        Some((_, id)) => Ok(id),
        None => {
            let hold = KekId::hold();
            keys.create_if_missing(&hold)?;
            Ok(hold)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_key_generations_parse() {
        let cases = [
            ("hold", Some(0)),
            ("hold-r1733390000000", Some(1_733_390_000_000)),
            ("hold-r", None),
            ("hold-rx1", None),
            ("period-2030-01", None),
            ("holdings", None),
        ];
        for (id, generation) in cases {
            assert_eq!(
                KekId::new(id).unwrap().hold_key_generation(),
                generation,
                "{id}"
            );
        }
        assert_eq!(KekId::hold_generation(5).as_str(), "hold-r5");
    }
}
