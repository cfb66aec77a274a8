//! 256-bit keys kept in files under the data directory (the embedded default's TOTP
//! and credential keys): created once with mode 0600, and refused when other users
//! can read them or their size is wrong.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;

/// Reads the key at `path`, creating it when the file does not exist. `purpose` names
/// the key in messages, such as "TOTP".
pub fn load_or_create(path: &Path, purpose: &str) -> anyhow::Result<Zeroizing<[u8; KEY_LEN]>> {
    match create(path) {
        Ok(key) => {
            tracing::info!(path = %path.display(), key.purpose = purpose, "Created an encryption key file");
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
