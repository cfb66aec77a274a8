//! Error types. Callers branch on [`RecorderError`]: every write-path variant means the
//! recording is not being written and the session must freeze.

use std::path::PathBuf;

use uuid::Uuid;

use crate::keys::KekId;

/// Failure of the storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file system operation failed. `source` is the operating system's error (for example `ENOSPC` when the
    /// disk is full or `EACCES` when the directory is not writable).
    #[error("storage operation {operation} failed on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The named object does not exist.
    #[error("object {name} of recording {recording} not found")]
    NotFound { recording: Uuid, name: String },
    /// The recording already exists, so a new one with the same id was not created.
    #[error("recording {0} already exists in storage")]
    AlreadyExists(Uuid),
    /// Free space is below what the pre-flight check requires.
    #[error(
        "not enough free space in {path}: {available} bytes available, {required} required; \
         free space or lower the recording byte budget"
    )]
    InsufficientSpace {
        path: PathBuf,
        available: u64,
        required: u64,
    },
    /// An object name contains characters the backend does not accept.
    #[error("invalid object name {0:?}: use letters, digits, '-' and '.' only")]
    InvalidName(String),
    /// A request to an object store failed. `source` names the store's error, for example
    /// an unreachable endpoint, refused credentials or a missing bucket.
    #[error("object storage operation {operation} failed on {location}: {source}")]
    Remote {
        operation: &'static str,
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// Reports whether the error is a full disk or an exhausted quota.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
                    || code == rustix::io::Errno::DQUOT.raw_os_error()
            ),
            StorageError::InsufficientSpace { .. } => true,
            _ => false,
        }
    }
}

/// Failure of a key store or of a key operation.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key-encryption key does not exist: it was destroyed or never created.
    #[error("key-encryption key {0} not found; it was destroyed or never created")]
    NotFound(KekId),
    /// A key id does not follow the naming rule.
    #[error("invalid key id {0:?}: use 1 to 64 characters from a-z, 0-9 and '-'")]
    InvalidId(String),
    /// Reading or writing a key file failed.
    #[error("key store operation {operation} failed on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key directory or a key file can be read by other users.
    #[error("{path} has mode {mode:o}, which lets other users read keys; run `chmod {fix} {path}`")]
    InsecurePermissions {
        path: PathBuf,
        mode: u32,
        fix: &'static str,
    },
    /// A key file does not contain a key.
    #[error("key file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// Unwrapping a data key failed: wrong key, or the wrapped key or recording metadata
    /// was altered.
    #[error("data key unwrap under key-encryption key {0} failed: wrong key or altered metadata")]
    UnwrapFailed(KekId),
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// A request to the key management service that holds the key failed. The message
    /// names the service, the operation and what to check.
    #[error("key management service request to {operation} key {key} failed: {message}")]
    Service {
        operation: &'static str,
        key: String,
        message: String,
    },
    /// A wrapped data key was made by another kind of key store than the one configured.
    #[error(
        "data key wrapped under key-encryption key {kek_id} was made by {wrapped_by}, but the configured key store is {configured}; configure the key store that made it"
    )]
    WrongStore {
        kek_id: KekId,
        wrapped_by: String,
        configured: &'static str,
    },
}

/// Reason a stored segment cannot be used, reported by the reader, recovery and
/// verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentFault {
    /// The file does not start with the segment magic: not an encrypted Strongroom segment.
    #[error("not a Strongroom segment (bad magic)")]
    NotASegment,
    /// The file uses a format version this build does not read.
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    /// The segment belongs to another recording.
    #[error("segment belongs to recording {0}")]
    WrongRecording(Uuid),
    /// The segment carries another index than its position.
    #[error("segment carries index {0}")]
    WrongIndex(u64),
    /// The file is shorter than its header declares.
    #[error("segment truncated: {actual} bytes, header declares {expected}")]
    Truncated { expected: u64, actual: u64 },
    /// The file is longer than its header declares.
    #[error("segment has {extra} bytes after its declared end")]
    TrailingData { extra: u64 },
    /// Decryption failed: the ciphertext, header or key does not match.
    #[error("authentication failed (altered segment or wrong key)")]
    AuthenticationFailed,
    /// The SHA-256 of the file differs from the expected one.
    #[error("SHA-256 differs from the expected hash")]
    HashMismatch,
    /// The decrypted records are malformed.
    #[error("malformed records: {0}")]
    Framing(String),
    /// The segment file is missing.
    #[error("segment missing")]
    Missing,
    /// The file does not start with the part magic: not a checkpoint part.
    #[error("not a Strongroom checkpoint part (bad magic)")]
    NotAPart,
    /// The checkpoint part carries another part number than its name.
    #[error("part carries part number {0}")]
    WrongPart(u32),
    /// The checkpoint part follows a rejected or missing part of its segment, so its
    /// records cannot be joined to the segment.
    #[error("follows a rejected part")]
    AfterRejectedPart,
    /// The checkpoint part belongs to a segment that is neither stored nor the one that
    /// was open when the writer stopped.
    #[error("part of segment {index}, but the open segment was {open}")]
    NotOpenSegment { index: u64, open: u64 },
}

/// Error of the recorder's public API.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The key store failed or a key is missing.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storing the next data would exceed the recording's byte budget.
    #[error(
        "recording {recording} would exceed its byte budget of {budget} bytes \
         ({required} bytes needed); the session must stop or get a larger budget"
    )]
    BudgetExceeded {
        recording: Uuid,
        budget: u64,
        required: u64,
    },
    /// A segment would exceed the maximum size because no keyframe arrived to cut it.
    #[error(
        "segment {index} of recording {recording} would exceed {limit} bytes without a keyframe; \
         the encoder must send keyframes more often"
    )]
    SegmentTooLarge {
        recording: Uuid,
        index: u64,
        limit: usize,
    },
    /// A single packet or marker is larger than allowed.
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    PacketTooLarge { size: usize, limit: usize },
    /// A packet's timestamp is before the previous packet's.
    #[error("packet pts {pts_us} us is before the previous packet pts {previous_us} us")]
    PtsWentBackwards { pts_us: u64, previous_us: u64 },
    /// The writer failed earlier and accepts nothing more except `seal`.
    #[error(
        "recording writer for {0} stopped after an earlier error; seal it and start a new recording"
    )]
    WriterFailed(Uuid),
    /// The recording was sealed and accepts nothing more.
    #[error("recording {0} is already sealed")]
    AlreadySealed(Uuid),
    /// A configuration value is invalid.
    #[error("invalid recorder configuration: {0}")]
    InvalidConfig(String),
    /// The recording does not exist.
    #[error("recording {0} not found")]
    NotFound(Uuid),
    /// The recording's metadata file is missing or malformed.
    #[error("recording {recording} metadata is invalid: {reason}")]
    InvalidMetadata { recording: Uuid, reason: String },
    /// A segment is damaged, foreign, missing or out of place.
    #[error("segment {index} of recording {recording} is invalid: {fault}")]
    InvalidSegment {
        recording: Uuid,
        index: u64,
        fault: SegmentFault,
    },
    /// The seal file is damaged or does not match the segments.
    #[error("seal of recording {recording} is invalid: {reason}")]
    InvalidSeal { recording: Uuid, reason: String },
    /// Sealing a recovered recording was requested with segments that are not intact.
    #[error("recording {recording} cannot be sealed with {requested} segments: {reason}")]
    CannotSeal {
        recording: Uuid,
        requested: u64,
        reason: String,
    },
    /// The stream configuration is unusable.
    #[error("invalid stream configuration: {0}")]
    InvalidStreamConfig(String),
}

impl RecorderError {
    pub(crate) fn segment(recording: Uuid, index: u64, fault: SegmentFault) -> Self {
        RecorderError::InvalidSegment {
            recording,
            index,
            fault,
        }
    }
}
