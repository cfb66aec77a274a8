//! Reading a recording back: authenticated decryption, sequential replay and seeking.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto;
use crate::error::{RecorderError, SegmentFault, StorageError};
use crate::format::{self, SEAL_NAME, SEGMENT_HEADER_LEN};
use crate::keys::KeyStore;
use crate::metadata::{self, RecordingMetadata};
use crate::storage::Storage;
use crate::types::{Marker, Record};

/// One segment in the reader's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentEntry {
    /// Position in the recording.
    pub index: u64,
    /// pts of the segment's first packet, a keyframe, in microseconds.
    pub start_pts_us: u64,
    /// Highest pts in the segment, in microseconds.
    pub end_pts_us: u64,
    /// Size of the stored file in bytes.
    pub bytes: u64,
}

/// Reads a recording. Every segment is authenticated before any of its records is
/// returned. A segment that is altered, foreign, out of place or missing is an error,
/// never played.
pub struct RecordingReader {
    storage: Arc<dyn Storage>,
    metadata: RecordingMetadata,
    cipher: Aes256Gcm,
    index: Vec<SegmentEntry>,
    sealed: bool,
    seal_hashes: Option<Vec<[u8; 32]>>,
    expected_hashes: Option<Vec<[u8; 32]>>,
}

impl fmt::Debug for RecordingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingReader")
            .field("recording", &self.metadata.recording_id)
            .field("segments", &self.index.len())
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

impl RecordingReader {
    /// Opens a recording: unwraps its data key (period key first, then hold key) and
    /// loads the segment index from the seal or, for an unsealed recording, from the
    /// segment headers. Fails with [`RecorderError::Key`] when every wrapping key is gone.
    pub fn open(
        storage: Arc<dyn Storage>,
        keys: &dyn KeyStore,
        recording: Uuid,
    ) -> Result<Self, RecorderError> {
        let metadata = metadata::read_metadata(storage.as_ref(), recording)?;
        let dek = metadata::unwrap_dek(keys, &metadata)?;
        let cipher = crypto::cipher(dek.expose_secret());

        let (index, sealed, seal_hashes) = match storage.get(recording, SEAL_NAME) {
            Ok(bytes) => {
                let manifest = format::decode_seal(&cipher, recording, &bytes)
                    .map_err(|reason| RecorderError::InvalidSeal { recording, reason })?;
                let index = manifest
                    .segments
                    .iter()
                    .map(|s| SegmentEntry {
                        index: s.index,
                        start_pts_us: s.start_pts_us,
                        end_pts_us: s.end_pts_us,
                        bytes: s.bytes,
                    })
                    .collect();
                let hashes = manifest.segments.iter().map(|s| s.sha256).collect();
                (index, true, Some(hashes))
            }
            Err(StorageError::NotFound { .. }) => (
                index_from_headers(storage.as_ref(), recording)?,
                false,
                None,
            ),
            Err(error) => return Err(error.into()),
        };

        Ok(RecordingReader {
            storage,
            metadata,
            cipher,
            index,
            sealed,
            seal_hashes,
            expected_hashes: None,
        })
    }

    /// Requires every segment to match `expected` (the hashes from the audit trail, in
    /// index order). The counts must match too.
    pub fn require_hashes(&mut self, expected: Vec<[u8; 32]>) -> Result<(), RecorderError> {
        let recording = self.metadata.recording_id;
        if expected.len() != self.index.len() {
            let index = expected.len().min(self.index.len()) as u64;
            let fault = if expected.len() > self.index.len() {
                SegmentFault::Missing
            } else {
                SegmentFault::HashMismatch
            };
            return Err(RecorderError::segment(recording, index, fault));
        }
        self.expected_hashes = Some(expected);
        Ok(())
    }

    /// Returns the recording's metadata.
    pub fn metadata(&self) -> &RecordingMetadata {
        &self.metadata
    }

    /// Reports whether the recording was sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Returns the segment index.
    pub fn segments(&self) -> &[SegmentEntry] {
        &self.index
    }

    /// pts of the first packet, if any.
    pub fn first_pts_us(&self) -> Option<u64> {
        self.index.first().map(|s| s.start_pts_us)
    }

    /// Time from the first packet to the highest pts.
    pub fn duration(&self) -> Duration {
        match (self.index.first(), self.index.last()) {
            (Some(first), Some(last)) => {
                Duration::from_micros(last.end_pts_us.saturating_sub(first.start_pts_us))
            }
            _ => Duration::ZERO,
        }
    }

    /// Reads, checks and decrypts one segment.
    pub fn read_segment(&self, index: u64) -> Result<Vec<Record>, RecorderError> {
        Ok(self.open_segment(index)?.records)
    }

    fn open_segment(&self, index: u64) -> Result<format::OpenedSegment, RecorderError> {
        let recording = self.metadata.recording_id;
        let fail = |fault| RecorderError::segment(recording, index, fault);
        let entry = self
            .index
            .get(index as usize)
            .ok_or(fail(SegmentFault::Missing))?;

        let file = match self.storage.get(recording, &format::segment_name(index)) {
            Ok(file) => file,
            Err(StorageError::NotFound { .. }) => return Err(fail(SegmentFault::Missing)),
            Err(error) => return Err(error.into()),
        };
        let hash: [u8; 32] = Sha256::digest(&file).into();
        for hashes in [&self.seal_hashes, &self.expected_hashes]
            .into_iter()
            .flatten()
        {
            if hashes.get(index as usize) != Some(&hash) {
                // Report the more specific cause when the header shows one.
                let fault = format::check_segment_header(recording, index, &file)
                    .err()
                    .unwrap_or(SegmentFault::HashMismatch);
                return Err(fail(fault));
            }
        }

        let opened = format::open_segment(&self.cipher, recording, index, &file).map_err(fail)?;
        if opened.header.start_pts_us != entry.start_pts_us
            || opened.header.end_pts_us != entry.end_pts_us
        {
            return Err(fail(SegmentFault::Framing(
                "timestamps differ from the segment index".into(),
            )));
        }
        Ok(opened)
    }

    /// Iterates over every record of the recording in order.
    pub fn records(&self) -> Records<'_> {
        Records {
            reader: self,
            next_segment: 0,
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// Iterates from the last keyframe at or before `offset` after the first packet (or
    /// from the first keyframe when `offset` is before it). The iterator starts with the
    /// stream configuration in force and, if a placeholder gap is in progress at that
    /// keyframe, a [`Marker::PlaceholderStarted`] at the keyframe's pts.
    pub fn seek(&self, offset: Duration) -> Result<Records<'_>, RecorderError> {
        let Some(first) = self.first_pts_us() else {
            return Ok(self.records());
        };
        let target = first.saturating_add(offset.as_micros().try_into().unwrap_or(u64::MAX));
        let position = self
            .index
            .partition_point(|s| s.start_pts_us <= target)
            .saturating_sub(1);
        let segment = self.open_segment(position as u64)?;

        let mut start = None;
        for (i, record) in segment.records.iter().enumerate() {
            if let Record::Packet(p) = record {
                if p.pts_us > target && start.is_some() {
                    break;
                }
                if p.keyframe {
                    start = Some(i);
                }
            }
        }
        // INVARIANT: every stored segment starts with a keyframe packet.
        let start = start.ok_or_else(|| {
            RecorderError::segment(
                self.metadata.recording_id,
                position as u64,
                SegmentFault::Framing("segment has no keyframe".into()),
            )
        })?;

        let mut config = None;
        let mut placeholder = segment.placeholder_active_at_start;
        for record in &segment.records[..start] {
            match record {
                Record::Config(c) => config = Some(c.clone()),
                Record::Marker(Marker::PlaceholderStarted { .. }) => placeholder = true,
                Record::Marker(Marker::PlaceholderEnded { .. }) => placeholder = false,
                Record::Packet(_) => {}
            }
        }

        let mut buffer = VecDeque::with_capacity(segment.records.len() - start + 2);
        if let Some(config) = config {
            buffer.push_back(Record::Config(config));
        }
        if placeholder && let Record::Packet(keyframe) = &segment.records[start] {
            buffer.push_back(Record::Marker(Marker::PlaceholderStarted {
                pts_us: keyframe.pts_us,
            }));
        }
        buffer.extend(segment.records.into_iter().skip(start));
        Ok(Records {
            reader: self,
            next_segment: position as u64 + 1,
            buffer,
            done: false,
        })
    }
}

/// Builds the index of an unsealed recording from its segment headers. The segments
/// must be contiguous from 0; a gap is an error.
fn index_from_headers(
    storage: &dyn Storage,
    recording: Uuid,
) -> Result<Vec<SegmentEntry>, RecorderError> {
    let mut found: Vec<(u64, u64)> = storage
        .list(recording)?
        .into_iter()
        .filter_map(|o| format::parse_segment_name(&o.name).map(|i| (i, o.size)))
        .collect();
    found.sort_unstable();

    let mut index = Vec::with_capacity(found.len());
    for (position, (i, size)) in found.into_iter().enumerate() {
        let position = position as u64;
        if i != position {
            return Err(RecorderError::segment(
                recording,
                position,
                SegmentFault::Missing,
            ));
        }
        let prefix = storage.get_prefix(recording, &format::segment_name(i), SEGMENT_HEADER_LEN)?;
        let header = format::SegmentHeader::parse(&prefix)
            .map_err(|f| RecorderError::segment(recording, i, f))?;
        if header.recording != recording {
            return Err(RecorderError::segment(
                recording,
                i,
                SegmentFault::WrongRecording(header.recording),
            ));
        }
        if header.index != i {
            return Err(RecorderError::segment(
                recording,
                i,
                SegmentFault::WrongIndex(header.index),
            ));
        }
        if header.file_len() != size {
            let fault = if size < header.file_len() {
                SegmentFault::Truncated {
                    expected: header.file_len(),
                    actual: size,
                }
            } else {
                SegmentFault::TrailingData {
                    extra: size - header.file_len(),
                }
            };
            return Err(RecorderError::segment(recording, i, fault));
        }
        index.push(SegmentEntry {
            index: i,
            start_pts_us: header.start_pts_us,
            end_pts_us: header.end_pts_us,
            bytes: size,
        });
    }
    Ok(index)
}

/// Iterator over records, segment by segment. After an error it yields nothing more.
pub struct Records<'a> {
    reader: &'a RecordingReader,
    next_segment: u64,
    buffer: VecDeque<Record>,
    done: bool,
}

impl fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("next_segment", &self.next_segment)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record, RecorderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.buffer.pop_front() {
                return Some(Ok(record));
            }
            if self.done || self.next_segment >= self.reader.index.len() as u64 {
                return None;
            }
            match self.reader.read_segment(self.next_segment) {
                Ok(records) => {
                    self.buffer.extend(records);
                    self.next_segment += 1;
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }
}
