//! Storage backends. A recording is a set of named objects (metadata, segments, the
//! checkpoint parts of the open segment, seal) under its id: [`LocalDirStorage`] keeps
//! them in a local directory and, with the `s3` feature, `S3Storage` in an
//! S3-compatible bucket.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::StorageError;

/// An object in a recording, as listed by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object name, for example `seg-00000003.srs`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Backend that stores recordings. Every method blocks, so call them from a thread that
/// may block.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates an empty recording. Fails with [`StorageError::AlreadyExists`] if it exists.
    fn create_recording(&self, recording: Uuid) -> Result<(), StorageError>;

    /// Stores an object durably and atomically: after `Ok`, the object survives a crash,
    /// and a crash before `Ok` leaves either the old object or none, never a partial one.
    fn put(&self, recording: Uuid, name: &str, bytes: &[u8]) -> Result<(), StorageError>;

    /// Reads a whole object.
    fn get(&self, recording: Uuid, name: &str) -> Result<Vec<u8>, StorageError>;

    /// Reads at most the first `len` bytes of an object.
    fn get_prefix(&self, recording: Uuid, name: &str, len: usize) -> Result<Vec<u8>, StorageError>;

    /// Removes one object. Removing an object that does not exist succeeds. The removal
    /// need not be durable: it serves objects that recovery ignores when they remain.
    fn delete(&self, recording: Uuid, name: &str) -> Result<(), StorageError>;

    /// Lists the complete objects of a recording, sorted by name. Partial uploads and
    /// temporary files are not listed.
    fn list(&self, recording: Uuid) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Removes partial objects that a crash left behind. Returns how many were removed.
    fn remove_partial(&self, recording: Uuid) -> Result<usize, StorageError>;

    /// Lists all recordings.
    fn list_recordings(&self) -> Result<Vec<Uuid>, StorageError>;

    /// Reports whether the recording exists.
    fn exists(&self, recording: Uuid) -> Result<bool, StorageError>;

    /// Deletes a recording and all its objects.
    fn delete_recording(&self, recording: Uuid) -> Result<(), StorageError>;

    /// Checks that an object can be written, synced and removed now and that at least
    /// `min_free_bytes` are free.
    fn check_writable(&self, min_free_bytes: u64) -> Result<(), StorageError>;
}

/// Recordings as directories under a root directory: `<root>/<recording id>/<object>`.
/// Objects are written to a temporary file, fsynced, renamed into place, and the
/// directory is fsynced.
#[derive(Clone)]
pub struct LocalDirStorage {
    root: PathBuf,
}

impl fmt::Debug for LocalDirStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalDirStorage")
            .field("root", &self.root)
            .finish()
    }
}

const TMP_PREFIX: &str = ".tmp-";
const PROBE_NAME: &str = ".write-probe";

impl LocalDirStorage {
    /// Opens the root directory, creating it (mode 0700) if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        if !root.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|source| io_error("create directory", &root, source))?;
        }
        Ok(LocalDirStorage { root })
    }

    /// Root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of one recording.
    pub fn recording_dir(&self, recording: Uuid) -> PathBuf {
        self.root.join(recording.to_string())
    }

    fn object_path(&self, recording: Uuid, name: &str) -> Result<PathBuf, StorageError> {
        validate_name(name)?;
        Ok(self.recording_dir(recording).join(name))
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), StorageError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(StorageError::InvalidName(name.to_owned()))
    }
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_error("fsync directory", dir, source))
}

/// Writes `bytes` to a fresh temporary file in `dir`, fsyncs it and renames it to
/// `target`, then fsyncs `dir`. The temporary file is removed on failure.
fn write_durably(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let file_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let mut suffix = [0u8; 8];
    crate::crypto::fill_random(&mut suffix).map_err(|error| {
        io_error(
            "generate temporary name",
            dir,
            std::io::Error::other(error.to_string()),
        )
    })?;
    let tmp = dir.join(format!("{TMP_PREFIX}{file_name}.{}", hex::encode(suffix)));

    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| io_error("create", &tmp, source))?;
        file.write_all(bytes)
            .map_err(|source| io_error("write", &tmp, source))?;
        file.sync_all()
            .map_err(|source| io_error("fsync", &tmp, source))?;
        drop(file);
        fs::rename(&tmp, target).map_err(|source| io_error("rename", target, source))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Storage for LocalDirStorage {
    fn create_recording(&self, recording: Uuid) -> Result<(), StorageError> {
        let dir = self.recording_dir(recording);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StorageError::AlreadyExists(recording));
            }
            Err(source) => return Err(io_error("create directory", &dir, source)),
        }
        sync_dir(&self.root)
    }

    fn put(&self, recording: Uuid, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.object_path(recording, name)?;
        write_durably(&self.recording_dir(recording), &path, bytes)
    }

    fn get(&self, recording: Uuid, name: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.object_path(recording, name)?;
        fs::read(&path).map_err(|source| not_found_or(recording, name, "read", &path, source))
    }

    fn get_prefix(&self, recording: Uuid, name: &str, len: usize) -> Result<Vec<u8>, StorageError> {
        let path = self.object_path(recording, name)?;
        let file = fs::File::open(&path)
            .map_err(|source| not_found_or(recording, name, "open", &path, source))?;
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|source| io_error("read", &path, source))?;
        Ok(buf)
    }

    fn delete(&self, recording: Uuid, name: &str) -> Result<(), StorageError> {
        let path = self.object_path(recording, name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_error("remove", &path, source)),
        }
    }

    fn list(&self, recording: Uuid) -> Result<Vec<ObjectInfo>, StorageError> {
        let dir = self.recording_dir(recording);
        let entries = fs::read_dir(&dir).map_err(|source| io_error("list", &dir, source))?;
        let mut objects = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", &dir, source))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_name(&name).is_err() {
                continue;
            }
            let metadata = entry
                .metadata()
                .map_err(|source| io_error("stat", &entry.path(), source))?;
            if metadata.is_file() {
                objects.push(ObjectInfo {
                    name,
                    size: metadata.len(),
                });
            }
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    fn remove_partial(&self, recording: Uuid) -> Result<usize, StorageError> {
        let dir = self.recording_dir(recording);
        let entries = fs::read_dir(&dir).map_err(|source| io_error("list", &dir, source))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", &dir, source))?;
            let is_tmp = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(TMP_PREFIX));
            if is_tmp {
                fs::remove_file(entry.path())
                    .map_err(|source| io_error("remove", &entry.path(), source))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&dir)?;
        }
        Ok(removed)
    }

    fn list_recordings(&self) -> Result<Vec<Uuid>, StorageError> {
        let entries =
            fs::read_dir(&self.root).map_err(|source| io_error("list", &self.root, source))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", &self.root, source))?;
            let parsed = entry
                .file_name()
                .to_str()
                .and_then(|name| Uuid::parse_str(name).ok());
            if let Some(id) = parsed
                && entry.path().is_dir()
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn exists(&self, recording: Uuid) -> Result<bool, StorageError> {
        Ok(self.recording_dir(recording).is_dir())
    }

    fn delete_recording(&self, recording: Uuid) -> Result<(), StorageError> {
        let dir = self.recording_dir(recording);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(io_error("remove directory", &dir, source)),
        }
        sync_dir(&self.root)
    }

    fn check_writable(&self, min_free_bytes: u64) -> Result<(), StorageError> {
        // A name per check, so that concurrent checks do not remove each other's probe.
        let probe = self
            .root
            .join(format!("{PROBE_NAME}-{}", Uuid::new_v4().simple()));
        write_durably(&self.root, &probe, b"strongroom write probe\n")?;
        fs::remove_file(&probe).map_err(|source| io_error("remove", &probe, source))?;

        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|errno| io_error("statvfs", &self.root, errno.into()))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if available < min_free_bytes {
            return Err(StorageError::InsufficientSpace {
                path: self.root.clone(),
                available,
                required: min_free_bytes,
            });
        }
        Ok(())
    }
}

fn not_found_or(
    recording: Uuid,
    name: &str,
    operation: &'static str,
    path: &Path,
    source: std::io::Error,
) -> StorageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound {
            recording,
            name: name.to_owned(),
        }
    } else {
        io_error(operation, path, source)
    }
}
