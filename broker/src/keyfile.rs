//! 256-bit keys kept in files under the data directory (the TOTP and credential
//! encryption keys, and the audit and export signing seeds): created once with mode
//! 0600, and refused when other users can read them or their size is wrong.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;

/// Kind of key a file contains, which the start-up message of a new file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A symmetric key that encrypts stored secrets.
    Encryption,
    /// The seed of an Ed25519 signing key.
    Signing,
}

/// Reads the key at `path`, creating it when the file does not exist. `purpose` names
/// the key in messages, such as "TOTP".
pub fn load_or_create(
    path: &Path,
    purpose: &str,
    kind: KeyKind,
) -> anyhow::Result<Zeroizing<[u8; KEY_LEN]>> {
    match create(path) {
        Ok(key) => {
            match kind {
                KeyKind::Encryption => {
                    tracing::info!(path = %path.display(), key.purpose = purpose, "Created an encryption key file")
                }
                KeyKind::Signing => {
                    tracing::info!(path = %path.display(), key.purpose = purpose, "Created a signing key file")
                }
            }
            return Ok(key);
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(error).with_context(|| {
                format!("cannot create the {purpose} key file {}; check that the data directory exists and is writable", path.display())
            });
        }
    }
    read(path, purpose)
}

fn create(path: &Path) -> std::io::Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let key = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
    file.write_all(key.as_slice())?;
    file.sync_all()?;
    Ok(key)
}

fn read(path: &Path, purpose: &str) -> anyhow::Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the {purpose} key file {}", path.display()))?;
    let mode = file
        .metadata()
        .with_context(|| format!("cannot inspect {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the {purpose} key file {} is readable by other users (mode {:o}); run `chmod 600` on it",
            path.display(),
            mode & 0o777
        );
    }

    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() != KEY_LEN {
        bail!(
            "the {purpose} key file {} contains {} bytes instead of {KEY_LEN}; restore it from backup",
            path.display(),
            bytes.len()
        );
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{KeyKind, load_or_create};

    /// Runs `create` under a subscriber that writes to a buffer, and returns the text.
    fn captured_log(create: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || WriteTo(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, create);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct WriteTo(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn new_key_message_names_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let signing = captured_log(|| {
            load_or_create(
                &dir.path().join("sign.key"),
                "audit signing",
                KeyKind::Signing,
            )
            .unwrap();
        });
        assert!(signing.contains("Created a signing key file"), "{signing}");
        assert!(!signing.contains("encryption"), "{signing}");

        let encryption = captured_log(|| {
            load_or_create(&dir.path().join("enc.key"), "TOTP", KeyKind::Encryption).unwrap();
        });
        assert!(
            encryption.contains("Created an encryption key file"),
            "{encryption}"
        );

        let again = captured_log(|| {
            load_or_create(&dir.path().join("enc.key"), "TOTP", KeyKind::Encryption).unwrap();
        });
        assert!(!again.contains("Created"), "{again}");
    }
}
