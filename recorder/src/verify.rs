//! Checking a recording against the hashes in the audit trail, and recovering a
//! recording whose writer crashed.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto;
use crate::error::{RecorderError, SegmentFault, StorageError};
use crate::format::{self, SEAL_NAME, SealManifest, SegmentStored};
use crate::keys::KeyStore;
use crate::metadata;
use crate::storage::Storage;
use crate::writer::Sealed;

/// Kind of damage found at one segment index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// No segment file at this index.
    Removed,
    /// The file is a segment of this recording at this index, but its content differs
    /// (flipped bits or rewritten ciphertext).
    Modified,
    /// The file is shorter than its header declares, or too short for a header.
    Truncated { expected: u64, actual: u64 },
    /// The file contains this recording's segment `holds_index` instead.
    Reordered { holds_index: u64 },
    /// The file is a segment of another recording.
    Swapped { from_recording: Uuid },
    /// The file is not a Strongroom segment at all.
    NotASegment,
    /// A segment file beyond the expected count.
    Unexpected,
}

/// One problem found by [`verify_recording`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentProblem {
    /// Index (file position) of the segment.
    pub index: u64,
    /// Kind of damage.
    pub kind: Tamper,
}

/// Result of [`verify_recording`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The recording.
    pub recording: Uuid,
    /// Number of hashes that were expected.
    pub expected_segments: u64,
    /// Number of segment files found.
    pub found_segments: u64,
    /// Whether a seal object exists. Its authenticity is checked by the reader.
    pub sealed: bool,
    /// Problems in index order; empty when the recording is intact.
    pub problems: Vec<SegmentProblem>,
}

impl VerifyReport {
    /// Reports whether every expected segment is present and unchanged and nothing else is.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Compares a recording's segment files with `expected`, the SHA-256 of each segment in
/// index order as entered in the audit trail. Needs no key, so it also works after the
/// key was destroyed.
pub fn verify_recording(
    storage: &dyn Storage,
    recording: Uuid,
    expected: &[[u8; 32]],
) -> Result<VerifyReport, RecorderError> {
    if !storage.exists(recording)? {
        return Err(RecorderError::NotFound(recording));
    }
    let objects = storage.list(recording)?;
    let sealed = objects.iter().any(|o| o.name == SEAL_NAME);
    let mut files: Vec<u64> = objects
        .iter()
        .filter_map(|o| format::parse_segment_name(&o.name))
        .collect();
    files.sort_unstable();

    let expected_at: HashMap<[u8; 32], u64> = expected
        .iter()
        .enumerate()
        .map(|(i, h)| (*h, i as u64))
        .collect();
    let mut problems = Vec::new();
    for index in 0..expected.len() as u64 {
        if files.binary_search(&index).is_err() {
            problems.push(SegmentProblem {
                index,
                kind: Tamper::Removed,
            });
            continue;
        }
        let file = match storage.get(recording, &format::segment_name(index)) {
            Ok(file) => file,
            Err(StorageError::NotFound { .. }) => {
                problems.push(SegmentProblem {
                    index,
                    kind: Tamper::Removed,
                });
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let hash: [u8; 32] = Sha256::digest(&file).into();
        if hash == expected[index as usize] {
            continue;
        }
        let kind = classify(recording, index, &file, expected_at.get(&hash).copied());
        problems.push(SegmentProblem { index, kind });
    }
    for &index in files.iter().filter(|&&i| i >= expected.len() as u64) {
        problems.push(SegmentProblem {
            index,
            kind: Tamper::Unexpected,
        });
    }

    if !problems.is_empty() {
        tracing::warn!(recording.id = %recording, problems = problems.len(), "Recording failed verification");
    }
    Ok(VerifyReport {
        recording,
        expected_segments: expected.len() as u64,
        found_segments: files.len() as u64,
        sealed,
        problems,
    })
}

fn classify(recording: Uuid, index: u64, file: &[u8], same_hash_at: Option<u64>) -> Tamper {
    if let Some(holds_index) = same_hash_at {
        return Tamper::Reordered { holds_index };
    }
    match format::SegmentHeader::parse(file) {
        Err(SegmentFault::NotASegment) => Tamper::NotASegment,
        Err(SegmentFault::Truncated { expected, actual }) => Tamper::Truncated { expected, actual },
        Err(_) => Tamper::Modified,
        Ok(header) if header.recording != recording => Tamper::Swapped {
            from_recording: header.recording,
        },
        Ok(header) if header.index != index => Tamper::Reordered {
            holds_index: header.index,
        },
        Ok(header) if (file.len() as u64) < header.file_len() => Tamper::Truncated {
            expected: header.file_len(),
            actual: file.len() as u64,
        },
        Ok(_) => Tamper::Modified,
    }
}

/// State of a recording after a crash, as found by [`recover_recording`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The recording.
    pub recording: Uuid,
    /// Whether it was already sealed.
    pub sealed: bool,
    /// Segments that exist and decrypt correctly, in index order.
    pub intact: Vec<SegmentStored>,
    /// Segments that exist but are unusable, or are missing before the last intact one.
    pub damaged: Vec<(u64, SegmentFault)>,
    /// Number of intact segments from index 0 without a gap: the count to seal with.
    pub contiguous: u64,
    /// Partial files from an interrupted write that were removed.
    pub removed_partial: usize,
}

/// Examines a recording whose writer stopped without sealing: removes partial files left
/// by an interrupted write, then authenticates every segment with the recording's key.
pub fn recover_recording(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    recording: Uuid,
) -> Result<RecoveryReport, RecorderError> {
    let metadata = metadata::read_metadata(storage, recording)?;
    let cipher = crypto::cipher(metadata::unwrap_dek(keys, &metadata)?.expose_secret());
    let removed_partial = storage.remove_partial(recording)?;

    let objects = storage.list(recording)?;
    let sealed = objects.iter().any(|o| o.name == SEAL_NAME);
    let mut indexes: Vec<u64> = objects
        .iter()
        .filter_map(|o| format::parse_segment_name(&o.name))
        .collect();
    indexes.sort_unstable();

    let mut intact = Vec::new();
    let mut damaged = Vec::new();
    let mut expected_next = 0u64;
    for index in indexes {
        for missing in expected_next..index {
            damaged.push((missing, SegmentFault::Missing));
        }
        expected_next = index + 1;

        let file = storage.get(recording, &format::segment_name(index))?;
        match format::open_segment(&cipher, recording, index, &file) {
            Ok(opened) => intact.push(SegmentStored {
                index,
                sha256: Sha256::digest(&file).into(),
                start_pts_us: opened.header.start_pts_us,
                end_pts_us: opened.header.end_pts_us,
                bytes: file.len() as u64,
            }),
            Err(fault) => damaged.push((index, fault)),
        }
    }
    let contiguous = intact
        .iter()
        .enumerate()
        .take_while(|(position, s)| s.index == *position as u64)
        .count() as u64;

    tracing::info!(
        recording.id = %recording,
        intact = intact.len(),
        damaged = damaged.len(),
        removed_partial,
        "Examined recording for recovery"
    );
    Ok(RecoveryReport {
        recording,
        sealed,
        intact,
        damaged,
        contiguous,
        removed_partial,
    })
}

/// Seals a recovered recording with `segment_count` segments (indexes
/// `0..segment_count`), which must all be intact. Segment files beyond the count stay in
/// place and [`verify_recording`] reports them as [`Tamper::Unexpected`].
pub fn seal_recovered(
    storage: &dyn Storage,
    keys: &dyn KeyStore,
    recording: Uuid,
    segment_count: u64,
) -> Result<Sealed, RecorderError> {
    let report = recover_recording(storage, keys, recording)?;
    if report.sealed {
        return Err(RecorderError::AlreadySealed(recording));
    }
    if segment_count > report.contiguous {
        return Err(RecorderError::CannotSeal {
            recording,
            requested: segment_count,
            reason: format!("only segments 0..{} are intact", report.contiguous),
        });
    }

    let metadata = metadata::read_metadata(storage, recording)?;
    let cipher = crypto::cipher(metadata::unwrap_dek(keys, &metadata)?.expose_secret());
    let manifest = SealManifest {
        recording_id: recording,
        segment_count,
        segments: report.intact[..segment_count as usize].to_vec(),
        dropped_before_first_keyframe: 0,
    };
    let seal = format::encode_seal(&cipher, &manifest, crypto::random_nonce()?);
    storage.put(recording, SEAL_NAME, &seal)?;
    tracing::info!(recording.id = %recording, segments = segment_count, "Sealed recovered recording");
    Ok(Sealed {
        final_segment: None,
        manifest,
        seal_sha256: Sha256::digest(&seal).into(),
    })
}
