//! Strongroom's encrypted session recorder.
//!
//! The broker feeds a live session's encoded video packets into a [`RecordingWriter`].
//! The writer groups them into segments of a few seconds, each starting at a keyframe,
//! frames them in Strongroom's own record format, encrypts each segment with AES-256-GCM
//! under the recording's own data key (recording id and segment index bound in as
//! associated data) and stores it durably. Each stored segment's SHA-256 is returned to
//! the caller for its audit trail.
//!
//! Data keys are wrapped by the key-encryption key of the retention period in which the
//! recording expires ([`KeyStore`]); [`sweep_retention`] deletes expired recordings and
//! destroys a period's key once the period has ended, which makes any copy of its
//! recordings unreadable. Held recordings are wrapped under the hold key first.
//!
//! [`RecordingReader`] authenticates and replays a recording and seeks by time;
//! [`verify_recording`] compares the stored segments with the audit trail's hashes;
//! [`recover_recording`] and [`seal_recovered`] finish a recording whose writer
//! crashed. [`send_recording`] streams a verified recording's packets to a separate
//! muxing process, which with the `export` feature writes them into WebM (`mux_webm`).
//!
//! Everything here blocks on file I/O; async callers run it on blocking threads.

mod crypto;
mod error;
#[cfg(feature = "export")]
mod export;
mod format;
mod keys;
mod metadata;
mod mux;
mod parts;
mod reader;
mod retention;
mod rotation;
#[cfg(feature = "s3")]
mod s3;
mod storage;
mod types;
mod verify;
mod writer;

pub use error::{KeyError, RecorderError, SegmentFault, StorageError};
#[cfg(feature = "export")]
pub use export::mux_webm;
pub use format::{SEAL_NAME, SealManifest, SegmentStored};
pub use keys::{KekId, KeyStore, LocalKeyStore, SecretKey, WrappedKey, current_hold_key};
pub use mux::{
    ExportError, ExportSummary, MAX_PACKET_BYTES, MuxReader, MuxWriter, send_recording,
};
pub use metadata::{METADATA_NAME, PeriodLength, RecordingMetadata, RetentionPeriod};
pub use reader::{RecordingReader, Records, SegmentEntry};
pub use rotation::{RotationReport, rotate_keys};
pub use retention::{RetentionReport, ended_periods, place_hold, sweep_retention};
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Storage};
pub use storage::{LocalDirStorage, ObjectInfo, Storage};
pub use types::{Marker, Packet, Record, StreamConfig};
pub use verify::{
    AssembledSegment, RecoveryReport, SegmentProblem, Tamper, VerifyReport, recover_recording,
    seal_recovered, verify_recording,
};
pub use writer::{NewRecording, RecorderConfig, RecordingWriter, Sealed};

/// Checks before a session starts that recordings can be written: the storage accepts a
/// durable write and has room for a whole recording's byte budget, and the key store can
/// create keys. The broker refuses to launch a session when this fails.
pub fn check_writable(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    config: &RecorderConfig,
) -> Result<(), RecorderError> {
    config.validate()?;
    storage.check_writable(config.recording_byte_budget)?;
    keys::current_hold_key(keys)?;
    Ok(())
}

// The broker moves writers and readers onto blocking threads.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<RecordingWriter>();
    assert_send::<RecordingReader>();
};
