//! Checking a recording against the hashes in the audit trail, and recovering a
//! recording whose writer crashed.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto;
use crate::error::{RecorderError, SegmentFault, StorageError};
use crate::format::{self, RecordBuffer, SEAL_NAME, SealManifest, SegmentHeader, SegmentStored};
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
    /// The segment that was open when the writer stopped, rebuilt from its authenticated
    /// leading checkpoint parts and stored as a normal segment. It is also in `intact`.
    pub assembled: Option<AssembledSegment>,
    /// Checkpoint parts left out of the recording, by object name, in name order. They
    /// were removed from the store.
    pub rejected_parts: Vec<(String, SegmentFault)>,
}

/// A segment that recovery rebuilt from checkpoint parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledSegment {
    /// The stored segment.
    pub segment: SegmentStored,
    /// Number of parts joined, parts `0..parts`.
    pub parts: u32,
}

/// Examines a recording whose writer stopped without sealing: removes partial files left
/// by an interrupted write, rebuilds the segment that was open from its checkpoint parts,
/// then authenticates every segment with the recording's key.
///
/// The parts of the segment after the highest stored one are authenticated in part
/// order. The parts before the first bad or missing one are joined into that segment,
/// which is re-encrypted under a fresh nonce as a normal segment and stored. The bad
/// part and every later one are reported in [`RecoveryReport::rejected_parts`]. Then all parts are
/// removed. Parts of a segment that is stored whole are left from a crash between
/// storing the segment and removing its parts, and are removed without a report.
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

    let parts: Vec<(String, u64, u32)> = objects
        .iter()
        .filter_map(|o| format::parse_part_name(&o.name).map(|(i, p)| (o.name.clone(), i, p)))
        .collect();
    let open_index = indexes.last().map_or(0, |last| last + 1);
    let (assembled, rejected_parts) = if sealed {
        // The seal is written after the open segment was stored and the part thread
        // finished, so any part left belongs to a stored segment.
        (None, Vec::new())
    } else {
        assemble_open_segment(storage, &cipher, recording, open_index, &parts)?
    };
    for (name, _, _) in &parts {
        storage.delete(recording, name)?;
    }
    if assembled.is_some() {
        indexes.push(open_index);
    }

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
        assembled_parts = assembled.as_ref().map_or(0, |a| a.parts),
        rejected_parts = rejected_parts.len(),
        "Examined recording for recovery"
    );
    Ok(RecoveryReport {
        recording,
        sealed,
        intact,
        damaged,
        contiguous,
        removed_partial,
        assembled,
        rejected_parts,
    })
}

/// Joins the authenticated leading checkpoint parts of segment `open_index` into a
/// segment and stores it. Returns the stored segment, if any part was usable, and the
/// parts left out: those of other unstored segments, the first bad or missing part of
/// the open segment and every part after it.
fn assemble_open_segment(
    storage: &dyn Storage,
    cipher: &aes_gcm::Aes256Gcm,
    recording: Uuid,
    open_index: u64,
    parts: &[(String, u64, u32)],
) -> Result<(Option<AssembledSegment>, Vec<(String, SegmentFault)>), RecorderError> {
    let mut rejected = Vec::new();
    let mut open_parts: Vec<(&str, u32)> = Vec::new();
    for (name, index, part) in parts {
        if *index == open_index {
            open_parts.push((name, *part));
        } else if *index > open_index {
            let fault = SegmentFault::NotOpenSegment {
                index: *index,
                open: open_index,
            };
            rejected.push((name.clone(), fault));
        }
    }
    open_parts.sort_by_key(|(_, part)| *part);

    let mut joined = Joined::default();
    let mut broken = false;
    for (name, part) in open_parts {
        if broken {
            rejected.push((name.to_owned(), SegmentFault::AfterRejectedPart));
            continue;
        }
        if part != joined.parts {
            let missing = format::part_name(open_index, joined.parts);
            tracing::warn!(recording.id = %recording, part = missing, "A checkpoint part is missing");
            rejected.push((missing, SegmentFault::Missing));
            rejected.push((name.to_owned(), SegmentFault::AfterRejectedPart));
            broken = true;
            continue;
        }
        let file = storage.get(recording, name)?;
        let opened = format::open_part(cipher, recording, open_index, part, &file)
            .and_then(|opened| joined.push(opened));
        if let Err(fault) = opened {
            tracing::warn!(recording.id = %recording, part = name, fault = %fault, "Leaving out a checkpoint part");
            rejected.push((name.to_owned(), fault));
            broken = true;
        }
    }
    rejected.sort_by(|a, b| a.0.cmp(&b.0));

    let Some(buffer) = joined.records else {
        return Ok((None, rejected));
    };
    let header = SegmentHeader {
        recording,
        index: open_index,
        start_pts_us: joined.start_pts_us,
        end_pts_us: joined.end_pts_us,
        record_count: buffer.count(),
        nonce: crypto::random_nonce()?,
        ciphertext_len: 0,
    };
    let file = format::seal_segment(cipher, header, buffer.as_bytes());
    storage.put(recording, &format::segment_name(open_index), &file)?;
    let segment = SegmentStored {
        index: open_index,
        sha256: Sha256::digest(&file).into(),
        start_pts_us: joined.start_pts_us,
        end_pts_us: joined.end_pts_us,
        bytes: file.len() as u64,
    };
    let count = joined.parts;
    tracing::info!(recording.id = %recording, segment.index = open_index, parts = count, "Stored the open segment rebuilt from checkpoint parts");
    Ok((
        Some(AssembledSegment {
            segment,
            parts: count,
        }),
        rejected,
    ))
}

/// Records of the checkpoint parts joined so far.
#[derive(Default)]
struct Joined {
    records: Option<RecordBuffer>,
    parts: u32,
    start_pts_us: u64,
    end_pts_us: u64,
}

impl Joined {
    /// Appends the next part after checking that it continues the segment: the same
    /// start and a highest pts that does not go back.
    fn push(&mut self, opened: format::OpenedPart) -> Result<(), SegmentFault> {
        let header = &opened.header;
        if self.records.is_some()
            && (header.start_pts_us != self.start_pts_us || header.end_pts_us < self.end_pts_us)
        {
            return Err(SegmentFault::Framing(format!(
                "part spans pts {}..{} us, which does not continue the segment's {}..{} us",
                header.start_pts_us, header.end_pts_us, self.start_pts_us, self.end_pts_us
            )));
        }
        let records = self
            .records
            .get_or_insert_with(|| RecordBuffer::new(opened.placeholder_active_at_start));
        for record in &opened.records {
            records.push(record);
        }
        self.start_pts_us = header.start_pts_us;
        self.end_pts_us = header.end_pts_us;
        self.parts += 1;
        Ok(())
    }
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
