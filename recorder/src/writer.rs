//! Writing a recording: packets in, encrypted segments out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto;
use crate::error::RecorderError;
use crate::format::{
    self, FRAMING_HEADER_LEN, PartHeader, RecordBuffer, SEAL_NAME, SEGMENT_OVERHEAD, SealManifest,
    SegmentHeader, SegmentStored,
};
use crate::keys::{KeyStore, SecretKey};
use crate::metadata::{self, METADATA_VERSION, PeriodLength, RecordingMetadata};
use crate::parts::PartThread;
use crate::storage::Storage;
use crate::types::{Marker, Packet, Record, StreamConfig};

/// Limits and segment sizes of recordings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// A segment is cut at the first keyframe once it spans at least this long.
    pub target_segment_duration: Duration,
    /// A segment is cut at the first keyframe once its plaintext reaches this many bytes,
    /// even before `target_segment_duration`.
    pub target_segment_bytes: usize,
    /// Hard limit of a stored segment file. A segment that would grow past it because no
    /// keyframe arrived fails the write with [`RecorderError::SegmentTooLarge`].
    pub max_segment_bytes: usize,
    /// Largest packet accepted, in bytes.
    pub max_packet_bytes: usize,
    /// Most bytes of segment files one recording may store.
    pub recording_byte_budget: u64,
    /// Length of the retention periods whose keys wrap the data keys.
    pub period_length: PeriodLength,
    /// While a segment is open, the records added since the last checkpoint are stored
    /// as a checkpoint part once the stream has advanced this long, so a crash loses at
    /// most about this much of the recording. Zero stores nothing before the cut, so a
    /// crash loses the whole open segment.
    pub checkpoint_interval: Duration,
}

/// Shortest checkpoint interval, which bounds a recording to ten part writes a second.
const MIN_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            target_segment_duration: Duration::from_secs(4),
            target_segment_bytes: 8 << 20,
            max_segment_bytes: 64 << 20,
            max_packet_bytes: 16 << 20,
            recording_byte_budget: 8 << 30,
            period_length: PeriodLength::Month,
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

impl RecorderConfig {
    /// Checks that the values fit together.
    pub fn validate(&self) -> Result<(), RecorderError> {
        let invalid = |reason: String| Err(RecorderError::InvalidConfig(reason));
        if self.target_segment_duration.is_zero() {
            return invalid("target_segment_duration must be greater than zero".into());
        }
        if self.target_segment_bytes == 0 || self.target_segment_bytes > self.max_segment_bytes {
            return invalid(format!(
                "target_segment_bytes ({}) must be between 1 and max_segment_bytes ({})",
                self.target_segment_bytes, self.max_segment_bytes
            ));
        }
        // The GCM message limit is about 64 GiB; segments stay far below it.
        if self.max_segment_bytes > (1 << 32) {
            return invalid(format!(
                "max_segment_bytes ({}) must be at most 4 GiB",
                self.max_segment_bytes
            ));
        }
        let room = self
            .max_segment_bytes
            .saturating_sub(SEGMENT_OVERHEAD + FRAMING_HEADER_LEN + 512);
        if self.max_packet_bytes == 0 || self.max_packet_bytes > room {
            return invalid(format!(
                "max_packet_bytes ({}) must be between 1 and {room} so one packet fits a segment of \
                 max_segment_bytes ({})",
                self.max_packet_bytes, self.max_segment_bytes
            ));
        }
        if !self.checkpoint_interval.is_zero() && self.checkpoint_interval < MIN_CHECKPOINT_INTERVAL
        {
            return invalid(format!(
                "checkpoint_interval ({:?}) must be zero (no checkpoints) or at least {:?}",
                self.checkpoint_interval, MIN_CHECKPOINT_INTERVAL
            ));
        }
        if self.recording_byte_budget == 0 {
            return invalid("recording_byte_budget must be greater than zero".into());
        }
        Ok(())
    }
}

/// Identity and lifetime of a recording to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecording {
    /// Recording id; a restarted session gets a new one.
    pub id: Uuid,
    /// When the recording starts.
    pub created_at: DateTime<Utc>,
    /// First instant at which the recording is no longer retained.
    pub expires_at: DateTime<Utc>,
    /// Stream configuration, if already known. It can also arrive later through
    /// [`RecordingWriter::push_config`].
    pub stream: Option<StreamConfig>,
}

/// Result of sealing a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The last segment, stored by the seal itself, for the audit trail.
    pub final_segment: Option<SegmentStored>,
    /// The authenticated segment list written to the seal.
    pub manifest: SealManifest,
    /// SHA-256 of the seal object.
    pub seal_sha256: [u8; 32],
}

struct OpenSegment {
    records: RecordBuffer,
    start_pts_us: u64,
    end_pts_us: u64,
    /// Checkpoint parts stored for this segment.
    parts: u32,
    /// End of the records already stored in parts, as a byte offset into `records`.
    checkpointed_len: usize,
    /// Number of records already stored in parts.
    checkpointed_count: u32,
    /// pts of the packet that was last when the previous part was stored, or of the
    /// segment's first packet.
    checkpointed_pts_us: u64,
}

/// Writes one recording. Every method that can store data returns the segments it stored
/// so the caller can enter each hash in its audit trail. An `Err` means nothing was stored
/// by that call. After any error the writer accepts nothing but [`RecordingWriter::seal`].
///
/// Methods block on file I/O; call them from a thread that may block.
pub struct RecordingWriter {
    storage: Arc<dyn Storage>,
    id: Uuid,
    cipher: Aes256Gcm,
    config: RecorderConfig,
    stream: Option<StreamConfig>,
    placeholder_active: bool,
    pending_markers: Vec<Marker>,
    current: Option<OpenSegment>,
    next_index: u64,
    stored_bytes: u64,
    last_packet_pts: Option<u64>,
    dropped_before_first_keyframe: u64,
    segments: Vec<SegmentStored>,
    /// Stores checkpoint parts off the caller's thread; `None` without checkpoints.
    parts: Option<PartThread>,
    failed: bool,
    sealed: bool,
}

impl fmt::Debug for RecordingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingWriter")
            .field("id", &self.id)
            .field("next_index", &self.next_index)
            .field("stored_bytes", &self.stored_bytes)
            .field("failed", &self.failed)
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

/// Markers kept while waiting for the first keyframe. The agent sends a keyframe first,
/// so more than a handful means a broken stream.
const MAX_PENDING_MARKERS: usize = 256;

impl RecordingWriter {
    /// Starts a recording: creates its period key if needed, generates and wraps a fresh
    /// data key, and stores the metadata. The data key exists only inside the writer.
    pub fn create(
        storage: Arc<dyn Storage>,
        keys: &dyn KeyStore,
        config: RecorderConfig,
        new: NewRecording,
    ) -> Result<Self, RecorderError> {
        config.validate()?;
        if new.expires_at <= new.created_at
            || new.expires_at - new.created_at > metadata::MAX_RETENTION
        {
            return Err(RecorderError::InvalidConfig(format!(
                "expires_at ({}) must be after created_at ({}) and at most 100 years later",
                new.expires_at, new.created_at
            )));
        }
        if let Some(stream) = &new.stream {
            validate_stream(stream)?;
        }

        let period = config.period_length.period_for(new.expires_at);
        keys.create_if_missing(&period.kek_id)?;
        let dek = SecretKey::generate()?;
        let aad = metadata::dek_aad(new.id, &period.kek_id, new.expires_at);
        let wrapped = keys.wrap(&period.kek_id, &dek, &aad)?;

        let metadata = RecordingMetadata {
            format_version: METADATA_VERSION,
            recording_id: new.id,
            created_at: new.created_at,
            expires_at: new.expires_at,
            period_kek: period.kek_id.clone(),
            period_ends_at: period.ends_at,
            stream: new.stream.clone(),
            wrapped_keys: vec![wrapped],
        };
        storage.create_recording(new.id)?;
        metadata::write_metadata(storage.as_ref(), &metadata)?;
        tracing::info!(recording.id = %new.id, kek.id = %period.kek_id, expires_at = %new.expires_at, "Started recording");
        let parts = if config.checkpoint_interval.is_zero() {
            None
        } else {
            Some(PartThread::start(storage.clone(), new.id)?)
        };

        Ok(RecordingWriter {
            storage,
            id: new.id,
            cipher: crypto::cipher(dek.expose_secret()),
            config,
            stream: new.stream,
            placeholder_active: false,
            pending_markers: Vec::new(),
            current: None,
            next_index: 0,
            stored_bytes: 0,
            last_packet_pts: None,
            dropped_before_first_keyframe: 0,
            segments: Vec::new(),
            parts,
            failed: false,
            sealed: false,
        })
    }

    /// Returns the recording id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Bytes of segment files stored so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Segments stored so far.
    pub fn segments(&self) -> &[SegmentStored] {
        &self.segments
    }

    /// Packets dropped because they came before the first keyframe.
    pub fn dropped_before_first_keyframe(&self) -> u64 {
        self.dropped_before_first_keyframe
    }

    /// Adds a packet. When the packet is a keyframe that ends the current segment, that
    /// segment is encrypted and stored first, and its [`SegmentStored`] is returned.
    /// Packets before the first keyframe cannot be decoded and are dropped.
    pub fn push_packet(&mut self, packet: Packet) -> Result<Option<SegmentStored>, RecorderError> {
        self.check_open()?;
        self.check_parts()?;
        let result = self.push_packet_inner(packet);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn push_packet_inner(
        &mut self,
        packet: Packet,
    ) -> Result<Option<SegmentStored>, RecorderError> {
        if packet.data.len() > self.config.max_packet_bytes {
            return Err(RecorderError::PacketTooLarge {
                size: packet.data.len(),
                limit: self.config.max_packet_bytes,
            });
        }
        if let Some(previous_us) = self.last_packet_pts
            && packet.pts_us < previous_us
        {
            return Err(RecorderError::PtsWentBackwards {
                pts_us: packet.pts_us,
                previous_us,
            });
        }

        let pts_us = packet.pts_us;
        let keyframe = packet.keyframe;
        let record = Record::Packet(packet);

        let Some(current) = &self.current else {
            if !keyframe {
                self.dropped_before_first_keyframe += 1;
                if self.dropped_before_first_keyframe == 1 {
                    tracing::warn!(recording.id = %self.id, "Dropping packets before the first keyframe");
                }
                return Ok(None);
            }
            self.check_new_segment(0, &record)?;
            self.open_segment(record, pts_us);
            return Ok(None);
        };

        let span_us = pts_us.saturating_sub(current.start_pts_us);
        let cut = keyframe
            && (span_us >= self.config.target_segment_duration.as_micros() as u64
                || current.records.len() >= self.config.target_segment_bytes);
        if cut {
            let current_file = (current.records.len() + SEGMENT_OVERHEAD) as u64;
            self.check_new_segment(current_file, &record)?;
            let stored = self.store_current()?;
            self.open_segment(record, pts_us);
            return Ok(Some(stored));
        }

        self.check_append(&record)?;
        if self.checkpoint_due(pts_us) {
            self.store_part()?;
        }
        self.append(record, pts_us);
        Ok(None)
    }

    /// Stores the records added to the open segment since the last checkpoint as a
    /// checkpoint part, if there are any. A packet whose pts is a checkpoint interval
    /// past the last checkpoint does this by itself. A caller whose stream can pause
    /// calls this once per interval, so that markers and the last packets before a pause
    /// are stored too. Returns whether a part was stored.
    pub fn checkpoint(&mut self) -> Result<bool, RecorderError> {
        self.check_open()?;
        self.check_parts()?;
        let pending = self
            .current
            .as_ref()
            .is_some_and(|current| current.records.count() > current.checkpointed_count);
        if !pending || self.config.checkpoint_interval.is_zero() {
            return Ok(false);
        }
        self.store_part()?;
        Ok(true)
    }

    fn checkpoint_due(&self, pts_us: u64) -> bool {
        let interval_us = self.config.checkpoint_interval.as_micros() as u64;
        let current = self.current.as_ref().expect("open segment");
        interval_us > 0 && pts_us.saturating_sub(current.checkpointed_pts_us) >= interval_us
    }

    /// Encrypts the records added since the last checkpoint as the next part of the open
    /// segment and queues it for the part thread. A failed part write fails the writer
    /// at its next call, like a failed segment write. The records stay in the open
    /// segment, which a later `seal` stores whole.
    fn store_part(&mut self) -> Result<(), RecorderError> {
        let current = self.current.as_ref().expect("open segment");
        let index = self.next_index;
        let part = current.parts;
        let header = PartHeader {
            recording: self.id,
            index,
            part,
            start_pts_us: current.start_pts_us,
            end_pts_us: current.end_pts_us,
            record_count: current.records.count() - current.checkpointed_count,
            nonce: crypto::random_nonce()?,
            ciphertext_len: 0,
        };
        let plaintext = current.records.framed_from(current.checkpointed_len);
        let file = format::seal_part(&self.cipher, header, &plaintext);
        self.parts
            .as_ref()
            .expect("part thread runs while checkpoints are on")
            .put(index, part, file);

        let last_pts = self.last_packet_pts.unwrap_or(current.start_pts_us);
        let current = self.current.as_mut().expect("open segment");
        current.parts += 1;
        current.checkpointed_len = current.records.len();
        current.checkpointed_count = current.records.count();
        current.checkpointed_pts_us = last_pts;
        Ok(())
    }

    /// Fails the writer with the error of a part write that failed since the last call.
    fn check_parts(&mut self) -> Result<(), RecorderError> {
        match self.parts.as_ref().and_then(PartThread::take_failure) {
            Some(error) => {
                self.failed = true;
                Err(error.into())
            }
            None => Ok(()),
        }
    }

    /// Queues the removal of the checkpoint parts of a segment that is now stored whole.
    /// A part that stays behind is harmless: recovery ignores the parts of stored
    /// segments and removes them.
    fn remove_parts(&self, index: u64, parts: u32) {
        if let Some(thread) = &self.parts {
            thread.remove(index, parts);
        }
    }

    /// Adds a placeholder marker. Markers never cut a segment.
    pub fn push_marker(&mut self, marker: Marker) -> Result<(), RecorderError> {
        self.check_open()?;
        self.check_parts()?;
        self.placeholder_active = matches!(marker, Marker::PlaceholderStarted { .. });
        let record = Record::Marker(marker);
        let result = if self.current.is_some() {
            self.check_append(&record)
                .map(|()| self.append(record, marker.pts_us()))
        } else if self.pending_markers.len() < MAX_PENDING_MARKERS {
            self.pending_markers.push(marker);
            Ok(())
        } else {
            Err(RecorderError::InvalidStreamConfig(format!(
                "more than {MAX_PENDING_MARKERS} markers arrived before the first keyframe"
            )))
        };
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Records a new stream configuration. It applies to the packets that follow and is
    /// repeated at the start of every later segment.
    pub fn push_config(&mut self, config: StreamConfig) -> Result<(), RecorderError> {
        self.check_open()?;
        self.check_parts()?;
        validate_stream(&config)?;
        let record = Record::Config(config.clone());
        if self.current.is_some() {
            if let Err(error) = self.check_append(&record) {
                self.failed = true;
                return Err(error);
            }
            let pts = self.last_packet_pts.unwrap_or(0);
            self.append(record, pts);
        }
        self.stream = Some(config);
        Ok(())
    }

    /// Stores the open segment and writes the seal with the final segment list. Works
    /// after an earlier error too, so that what was accepted is kept.
    pub fn seal(&mut self) -> Result<Sealed, RecorderError> {
        if self.sealed {
            return Err(RecorderError::AlreadySealed(self.id));
        }
        let final_segment = match self.current {
            Some(_) => Some(self.store_current()?),
            None => None,
        };
        // Every segment is stored whole by now; wait until the part thread has removed
        // their parts.
        if let Some(thread) = &mut self.parts {
            thread.finish();
            if let Some(error) = thread.take_failure() {
                tracing::warn!(recording.id = %self.id, error = %error, "A checkpoint part write failed before the seal; the segment it belonged to is stored whole");
            }
        }

        let manifest = SealManifest {
            recording_id: self.id,
            segment_count: self.next_index,
            segments: self.segments.clone(),
            dropped_before_first_keyframe: self.dropped_before_first_keyframe,
        };
        let seal = format::encode_seal(&self.cipher, &manifest, crypto::random_nonce()?);
        self.storage.put(self.id, SEAL_NAME, &seal)?;
        self.sealed = true;
        tracing::info!(
            recording.id = %self.id,
            segments = manifest.segment_count,
            bytes = self.stored_bytes,
            "Sealed recording"
        );
        Ok(Sealed {
            final_segment,
            manifest,
            seal_sha256: Sha256::digest(&seal).into(),
        })
    }

    fn check_open(&self) -> Result<(), RecorderError> {
        if self.sealed {
            Err(RecorderError::AlreadySealed(self.id))
        } else if self.failed {
            Err(RecorderError::WriterFailed(self.id))
        } else {
            Ok(())
        }
    }

    /// Checks budget and size limits for a new segment that starts with `record`, after
    /// `pending_file` bytes of the current segment get stored.
    fn check_new_segment(&self, pending_file: u64, record: &Record) -> Result<(), RecorderError> {
        let mut plain = FRAMING_HEADER_LEN + format::record_len(record);
        if let Some(stream) = &self.stream {
            plain += format::record_len(&Record::Config(stream.clone()));
        }
        plain += self.pending_markers.len()
            * format::record_len(&Record::Marker(Marker::PlaceholderEnded { pts_us: 0 }));
        let file = plain + SEGMENT_OVERHEAD;
        if file > self.config.max_segment_bytes {
            return Err(RecorderError::SegmentTooLarge {
                recording: self.id,
                index: self.next_index + u64::from(pending_file > 0),
                limit: self.config.max_segment_bytes,
            });
        }
        self.check_budget(pending_file + file as u64)
    }

    fn check_append(&self, record: &Record) -> Result<(), RecorderError> {
        let current = self.current.as_ref().expect("open segment");
        let file = current.records.len() + format::record_len(record) + SEGMENT_OVERHEAD;
        if file > self.config.max_segment_bytes {
            return Err(RecorderError::SegmentTooLarge {
                recording: self.id,
                index: self.next_index,
                limit: self.config.max_segment_bytes,
            });
        }
        self.check_budget(file as u64)
    }

    fn check_budget(&self, unstored: u64) -> Result<(), RecorderError> {
        let required = self.stored_bytes + unstored;
        if required > self.config.recording_byte_budget {
            tracing::warn!(recording.id = %self.id, budget = self.config.recording_byte_budget, required, "Recording byte budget exceeded");
            return Err(RecorderError::BudgetExceeded {
                recording: self.id,
                budget: self.config.recording_byte_budget,
                required,
            });
        }
        Ok(())
    }

    fn open_segment(&mut self, first_packet: Record, pts_us: u64) {
        // The first segment starts before any marker; later ones carry the state over.
        let placeholder_at_start = self.next_index > 0 && self.placeholder_active;
        let mut records = RecordBuffer::new(placeholder_at_start);
        if let Some(stream) = &self.stream {
            records.push(&Record::Config(stream.clone()));
        }
        let mut end_pts_us = pts_us;
        for marker in self.pending_markers.drain(..) {
            end_pts_us = end_pts_us.max(marker.pts_us());
            records.push(&Record::Marker(marker));
        }
        records.push(&first_packet);
        self.last_packet_pts = Some(pts_us);
        self.current = Some(OpenSegment {
            records,
            start_pts_us: pts_us,
            end_pts_us,
            parts: 0,
            checkpointed_len: FRAMING_HEADER_LEN,
            checkpointed_count: 0,
            checkpointed_pts_us: pts_us,
        });
    }

    fn append(&mut self, record: Record, pts_us: u64) {
        let current = self.current.as_mut().expect("open segment");
        current.records.push(&record);
        current.end_pts_us = current.end_pts_us.max(pts_us);
        if matches!(record, Record::Packet(_)) {
            self.last_packet_pts = Some(pts_us);
        }
    }

    /// Encrypts and stores the open segment. On failure the segment stays open so that a
    /// later `seal` can try again with a fresh nonce.
    fn store_current(&mut self) -> Result<SegmentStored, RecorderError> {
        let current = self.current.as_ref().expect("open segment");
        let index = self.next_index;
        let header = SegmentHeader {
            recording: self.id,
            index,
            start_pts_us: current.start_pts_us,
            end_pts_us: current.end_pts_us,
            record_count: current.records.count(),
            nonce: crypto::random_nonce()?,
            ciphertext_len: 0,
        };
        let file = format::seal_segment(&self.cipher, header, current.records.as_bytes());

        if let Err(error) = self
            .storage
            .put(self.id, &format::segment_name(index), &file)
        {
            self.failed = true;
            tracing::error!(recording.id = %self.id, segment.index = index, error = %error, "Storing segment failed");
            return Err(error.into());
        }

        let stored = SegmentStored {
            index,
            sha256: Sha256::digest(&file).into(),
            start_pts_us: current.start_pts_us,
            end_pts_us: current.end_pts_us,
            bytes: file.len() as u64,
        };
        let parts = current.parts;
        self.current = None;
        self.next_index += 1;
        self.stored_bytes += stored.bytes;
        self.segments.push(stored.clone());
        tracing::debug!(recording.id = %self.id, segment.index = index, bytes = stored.bytes, "Stored segment");
        self.remove_parts(index, parts);
        Ok(stored)
    }
}

impl Drop for RecordingWriter {
    fn drop(&mut self) {
        if !self.sealed {
            tracing::warn!(
                recording.id = %self.id,
                segments = self.next_index,
                "Recording writer dropped without seal; the records after the open segment's last checkpoint are lost and the recording needs recovery"
            );
        }
    }
}

pub(crate) fn validate_stream(config: &StreamConfig) -> Result<(), RecorderError> {
    let codec_ok = !config.codec.is_empty()
        && config.codec.len() <= 32
        && config
            .codec
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !codec_ok {
        return Err(RecorderError::InvalidStreamConfig(format!(
            "codec name {:?} must be 1 to 32 characters from letters, digits, '.', '-' and '_'",
            config.codec
        )));
    }
    if !(1..=16384).contains(&config.width) || !(1..=16384).contains(&config.height) {
        return Err(RecorderError::InvalidStreamConfig(format!(
            "picture size {}x{} must be between 1x1 and 16384x16384",
            config.width, config.height
        )));
    }
    Ok(())
}
