//! The broker's persistent instance id, kept in the data directory.
//!
//! Every container and network the broker causes to exist is labelled with this id,
//! so that after a crash the broker reconciles its own objects and no one else's.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use uuid::Uuid;

const FILE_NAME: &str = "instance-id";

/// Reads the instance id, creating it on first start. The file is written to a
/// temporary name and renamed, so a crash never leaves a half-written id.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Uuid> {
    let path = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim()).with_context(|| {
            format!("{} does not contain a UUID; restore it from a backup, or delete it only if this broker owns no containers", path.display())
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn create(path: &Path) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    writeln!(file, "{id}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot rename {} into place", temporary.display()))?;
    Ok(id)
}

/// Takes the data directory's exclusive lock, held until the returned file is dropped.
/// Fails at once when another broker holds it.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("broker.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the data directory {} is in use by another running broker; stop it, or give this one its own data_dir",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Creates the data directory if needed and proves it is writable.
pub fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}; create it or set data_dir to a writable path",
            data_dir.display()
        )
    })?;
    let probe = data_dir.join(".write-probe");
    std::fs::write(&probe, b"probe")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| {
            format!("the data directory {} is not writable; fix its permissions or set data_dir to a writable path", data_dir.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_survives_restart() {
        let dir = tempfile::tempdir().unwrap();

        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();

        assert_eq!(first, second);
    }

    #[test]
    fn corrupt_instance_id_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "garbage").unwrap();

        let error = load_or_create(dir.path()).unwrap_err();

        assert!(error.to_string().contains("does not contain a UUID"));
    }

    #[test]
    fn second_data_dir_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();

        let first = lock_data_dir(dir.path()).unwrap();
        let second = lock_data_dir(dir.path());

        assert!(
            second
                .unwrap_err()
                .to_string()
                .contains("in use by another running broker")
        );
        drop(first);
        assert!(lock_data_dir(dir.path()).is_ok());
    }
}
