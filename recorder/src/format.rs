//! Strongroom's on-disk formats.
//!
//! A segment file is a 74-byte header followed by AES-256-GCM ciphertext. The whole
//! header is the associated data, so the recording id, segment index and timestamps in
//! it are authenticated together with the content:
//!
//! ```text
//! offset size  field
//!      0    8  magic "STRGSEG1"
//!      8    2  format version (big-endian), 1
//!     10   16  recording id (UUID bytes)
//!     26    8  segment index
//!     34    8  pts of the first packet (a keyframe), microseconds
//!     42    8  highest pts in the segment, microseconds
//!     50    4  record count
//!     54   12  AES-GCM nonce
//!     66    8  ciphertext length including the 16-byte tag
//!     74    -  ciphertext
//! ```
//!
//! The plaintext is a framing version (u16), a flags byte (bit 0: a placeholder gap is in
//! progress at the segment's start), then records of `kind u8, flags u8, pts_us u64,
//! length u32, payload`. Kinds: 1 stream config (`width u32, height u32, codec name`),
//! 2 video packet (flag bit 0: keyframe), 3 placeholder started, 4 placeholder ended.
//! All integers are big-endian. Unknown kinds and versions are errors.
//!
//! While a segment is open, the writer stores checkpoint parts of it: part K of segment
//! N holds the records added since part K-1, so that a crash loses at most one
//! checkpoint interval. A part file is a 78-byte header followed by AES-256-GCM
//! ciphertext under the same data key, with the whole header as associated data:
//!
//! ```text
//! offset size  field
//!      0    8  magic "STRGPRT1"
//!      8    2  format version (big-endian), 1
//!     10   16  recording id (UUID bytes)
//!     26    8  segment index
//!     34    4  part number, from 0
//!     38    8  pts of the segment's first packet, microseconds
//!     46    8  highest pts in the segment up to the end of this part, microseconds
//!     54    4  record count of this part
//!     58   12  AES-GCM nonce
//!     70    8  ciphertext length including the 16-byte tag
//!     78    -  ciphertext
//! ```
//!
//! The plaintext uses the segment framing; its flags byte repeats the segment's. The
//! magic differs from the segment magic, so a part never authenticates as a segment nor
//! a segment as a part, and the recording id, segment index and part number in the
//! associated data keep a part from being moved to another place.

use aes_gcm::Aes256Gcm;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::error::SegmentFault;
use crate::types::{Marker, Packet, Record, StreamConfig};

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"STRGSEG1";
pub(crate) const SEGMENT_VERSION: u16 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 74;
pub(crate) const FRAMING_VERSION: u16 = 1;
pub(crate) const FRAMING_HEADER_LEN: usize = 3;
pub(crate) const RECORD_HEADER_LEN: usize = 14;

const KIND_CONFIG: u8 = 1;
const KIND_PACKET: u8 = 2;
const KIND_PLACEHOLDER_STARTED: u8 = 3;
const KIND_PLACEHOLDER_ENDED: u8 = 4;
const FLAG_KEYFRAME: u8 = 1;
const FLAG_PLACEHOLDER_ACTIVE: u8 = 1;

/// Bytes a segment file adds around its plaintext.
pub(crate) const SEGMENT_OVERHEAD: usize = SEGMENT_HEADER_LEN + TAG_LEN;

/// Object name of segment `index`.
pub(crate) fn segment_name(index: u64) -> String {
    format!("seg-{index:08}.srs")
}

/// Parses a segment object name back into its index.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".srs")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) const PART_MAGIC: [u8; 8] = *b"STRGPRT1";
pub(crate) const PART_VERSION: u16 = 1;
pub(crate) const PART_HEADER_LEN: usize = 78;

/// Object name of checkpoint part `part` of segment `index`.
pub(crate) fn part_name(index: u64, part: u32) -> String {
    format!("part-{index:08}-{part:06}.srp")
}

/// Parses a part object name back into its segment index and part number.
pub(crate) fn parse_part_name(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".srp")?;
    let (index, part) = rest.split_once('-')?;
    let digits = |s: &str, min: usize| s.len() >= min && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index, 8) || !digits(part, 6) {
        return None;
    }
    Some((index.parse().ok()?, part.parse().ok()?))
}

/// A segment as it was stored, returned to the caller for its audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStored {
    /// Position of the segment in the recording, from 0.
    pub index: u64,
    /// SHA-256 of the stored segment file (header and ciphertext).
    #[serde(with = "hex::serde")]
    pub sha256: [u8; 32],
    /// pts of the segment's first packet, a keyframe, in microseconds.
    pub start_pts_us: u64,
    /// Highest pts in the segment in microseconds.
    pub end_pts_us: u64,
    /// Size of the stored file in bytes.
    pub bytes: u64,
}

/// The authenticated, unencrypted header of a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub recording: Uuid,
    pub index: u64,
    pub start_pts_us: u64,
    pub end_pts_us: u64,
    pub record_count: u32,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext_len: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&SEGMENT_VERSION.to_be_bytes());
        out[10..26].copy_from_slice(self.recording.as_bytes());
        out[26..34].copy_from_slice(&self.index.to_be_bytes());
        out[34..42].copy_from_slice(&self.start_pts_us.to_be_bytes());
        out[42..50].copy_from_slice(&self.end_pts_us.to_be_bytes());
        out[50..54].copy_from_slice(&self.record_count.to_be_bytes());
        out[54..66].copy_from_slice(&self.nonce);
        out[66..74].copy_from_slice(&self.ciphertext_len.to_be_bytes());
        out
    }

    /// Parses the header at the start of `bytes`. Anything that is not a Strongroom
    /// segment is an error, never passed through.
    pub fn parse(bytes: &[u8]) -> Result<Self, SegmentFault> {
        if bytes.len() < SEGMENT_MAGIC.len() || bytes[0..8] != SEGMENT_MAGIC {
            return Err(SegmentFault::NotASegment);
        }
        if bytes.len() < SEGMENT_HEADER_LEN {
            return Err(SegmentFault::Truncated {
                expected: SEGMENT_HEADER_LEN as u64,
                actual: bytes.len() as u64,
            });
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != SEGMENT_VERSION {
            return Err(SegmentFault::UnsupportedVersion(version));
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(SegmentHeader {
            recording: Uuid::from_bytes(bytes[10..26].try_into().expect("16 bytes")),
            index: u64_at(26),
            start_pts_us: u64_at(34),
            end_pts_us: u64_at(42),
            record_count: u32::from_be_bytes(bytes[50..54].try_into().expect("4 bytes")),
            nonce: bytes[54..66].try_into().expect("12 bytes"),
            ciphertext_len: u64_at(66),
        })
    }

    /// Total file length that this header declares.
    pub fn file_len(&self) -> u64 {
        SEGMENT_HEADER_LEN as u64 + self.ciphertext_len
    }
}

/// Encrypts a segment's plaintext and returns the complete file.
pub(crate) fn seal_segment(
    cipher: &Aes256Gcm,
    mut header: SegmentHeader,
    plaintext: &[u8],
) -> Vec<u8> {
    header.ciphertext_len = (plaintext.len() + TAG_LEN) as u64;
    encrypt_after(cipher, &header.nonce, &header.encode(), plaintext)
}

/// Encrypts `plaintext` with `header` as associated data and returns the header
/// followed by the ciphertext.
fn encrypt_after(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    header: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let ciphertext = crypto::seal(cipher, nonce, header, plaintext);
    let mut file = Vec::with_capacity(header.len() + ciphertext.len());
    file.extend_from_slice(header);
    file.extend_from_slice(&ciphertext);
    file
}

/// The authenticated, unencrypted header of a checkpoint part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartHeader {
    pub recording: Uuid,
    pub index: u64,
    pub part: u32,
    pub start_pts_us: u64,
    pub end_pts_us: u64,
    pub record_count: u32,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext_len: u64,
}

impl PartHeader {
    pub fn encode(&self) -> [u8; PART_HEADER_LEN] {
        let mut out = [0u8; PART_HEADER_LEN];
        out[0..8].copy_from_slice(&PART_MAGIC);
        out[8..10].copy_from_slice(&PART_VERSION.to_be_bytes());
        out[10..26].copy_from_slice(self.recording.as_bytes());
        out[26..34].copy_from_slice(&self.index.to_be_bytes());
        out[34..38].copy_from_slice(&self.part.to_be_bytes());
        out[38..46].copy_from_slice(&self.start_pts_us.to_be_bytes());
        out[46..54].copy_from_slice(&self.end_pts_us.to_be_bytes());
        out[54..58].copy_from_slice(&self.record_count.to_be_bytes());
        out[58..70].copy_from_slice(&self.nonce);
        out[70..78].copy_from_slice(&self.ciphertext_len.to_be_bytes());
        out
    }

    /// Parses the header at the start of `bytes`; anything else is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, SegmentFault> {
        if bytes.len() < PART_MAGIC.len() || bytes[0..8] != PART_MAGIC {
            return Err(SegmentFault::NotAPart);
        }
        if bytes.len() < PART_HEADER_LEN {
            return Err(SegmentFault::Truncated {
                expected: PART_HEADER_LEN as u64,
                actual: bytes.len() as u64,
            });
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != PART_VERSION {
            return Err(SegmentFault::UnsupportedVersion(version));
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Ok(PartHeader {
            recording: Uuid::from_bytes(bytes[10..26].try_into().expect("16 bytes")),
            index: u64_at(26),
            part: u32_at(34),
            start_pts_us: u64_at(38),
            end_pts_us: u64_at(46),
            record_count: u32_at(54),
            nonce: bytes[58..70].try_into().expect("12 bytes"),
            ciphertext_len: u64_at(70),
        })
    }
}

/// Encrypts a part's plaintext (segment framing) and returns the complete file.
pub(crate) fn seal_part(cipher: &Aes256Gcm, mut header: PartHeader, plaintext: &[u8]) -> Vec<u8> {
    header.ciphertext_len = (plaintext.len() + TAG_LEN) as u64;
    encrypt_after(cipher, &header.nonce, &header.encode(), plaintext)
}

/// A decrypted checkpoint part.
#[derive(Debug, Clone)]
pub(crate) struct OpenedPart {
    pub header: PartHeader,
    pub placeholder_active_at_start: bool,
    pub records: Vec<Record>,
}

/// Checks a part file's header against its expected recording, segment and part number,
/// then authenticates and decrypts it.
pub(crate) fn open_part(
    cipher: &Aes256Gcm,
    recording: Uuid,
    index: u64,
    part: u32,
    file: &[u8],
) -> Result<OpenedPart, SegmentFault> {
    let header = PartHeader::parse(file)?;
    if header.recording != recording {
        return Err(SegmentFault::WrongRecording(header.recording));
    }
    if header.index != index {
        return Err(SegmentFault::WrongIndex(header.index));
    }
    if header.part != part {
        return Err(SegmentFault::WrongPart(header.part));
    }
    let actual = file.len() as u64;
    let expected = PART_HEADER_LEN as u64 + header.ciphertext_len;
    if actual < expected {
        return Err(SegmentFault::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(SegmentFault::TrailingData {
            extra: actual - expected,
        });
    }
    let plaintext = crypto::open(
        cipher,
        &header.nonce,
        &file[..PART_HEADER_LEN],
        &file[PART_HEADER_LEN..],
    )
    .ok_or(SegmentFault::AuthenticationFailed)?;
    let (placeholder_active_at_start, records) = decode_records(&plaintext)?;
    if records.len() as u64 != u64::from(header.record_count) {
        return Err(SegmentFault::Framing(format!(
            "{} records, part header declares {}",
            records.len(),
            header.record_count
        )));
    }
    Ok(OpenedPart {
        header,
        placeholder_active_at_start,
        records,
    })
}

/// A decrypted segment.
#[derive(Debug, Clone)]
pub(crate) struct OpenedSegment {
    pub header: SegmentHeader,
    pub placeholder_active_at_start: bool,
    pub records: Vec<Record>,
}

/// Checks a segment file's header against the expected recording and index, then
/// authenticates and decrypts it.
pub(crate) fn open_segment(
    cipher: &Aes256Gcm,
    recording: Uuid,
    index: u64,
    file: &[u8],
) -> Result<OpenedSegment, SegmentFault> {
    let header = check_segment_header(recording, index, file)?;
    let plaintext = crypto::open(
        cipher,
        &header.nonce,
        &file[..SEGMENT_HEADER_LEN],
        &file[SEGMENT_HEADER_LEN..],
    )
    .ok_or(SegmentFault::AuthenticationFailed)?;
    let (placeholder_active_at_start, records) = decode_records(&plaintext)?;
    if records.len() as u64 != u64::from(header.record_count) {
        return Err(SegmentFault::Framing(format!(
            "{} records, header declares {}",
            records.len(),
            header.record_count
        )));
    }
    Ok(OpenedSegment {
        header,
        placeholder_active_at_start,
        records,
    })
}

/// Parses a segment header and checks it against its expected place and the file size.
pub(crate) fn check_segment_header(
    recording: Uuid,
    index: u64,
    file: &[u8],
) -> Result<SegmentHeader, SegmentFault> {
    let header = SegmentHeader::parse(file)?;
    if header.recording != recording {
        return Err(SegmentFault::WrongRecording(header.recording));
    }
    if header.index != index {
        return Err(SegmentFault::WrongIndex(header.index));
    }
    let actual = file.len() as u64;
    let expected = header.file_len();
    if actual < expected {
        return Err(SegmentFault::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(SegmentFault::TrailingData {
            extra: actual - expected,
        });
    }
    Ok(header)
}

/// Builds a segment's plaintext record by record.
#[derive(Debug)]
pub(crate) struct RecordBuffer {
    buf: Vec<u8>,
    count: u32,
}

impl RecordBuffer {
    pub fn new(placeholder_active: bool) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&FRAMING_VERSION.to_be_bytes());
        buf.push(if placeholder_active {
            FLAG_PLACEHOLDER_ACTIVE
        } else {
            0
        });
        RecordBuffer { buf, count: 0 }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The framing header followed by the records from byte `from` on, which must be a
    /// record boundary at or after the framing header: the plaintext of a part.
    pub fn framed_from(&self, from: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAMING_HEADER_LEN + self.buf.len() - from);
        out.extend_from_slice(&self.buf[..FRAMING_HEADER_LEN]);
        out.extend_from_slice(&self.buf[from..]);
        out
    }

    pub fn push(&mut self, record: &Record) {
        match record {
            Record::Config(config) => {
                let mut payload = Vec::with_capacity(8 + config.codec.len());
                payload.extend_from_slice(&config.width.to_be_bytes());
                payload.extend_from_slice(&config.height.to_be_bytes());
                payload.extend_from_slice(config.codec.as_bytes());
                self.push_raw(KIND_CONFIG, 0, 0, &payload);
            }
            Record::Packet(packet) => {
                let flags = if packet.keyframe { FLAG_KEYFRAME } else { 0 };
                self.push_raw(KIND_PACKET, flags, packet.pts_us, &packet.data);
            }
            Record::Marker(Marker::PlaceholderStarted { pts_us }) => {
                self.push_raw(KIND_PLACEHOLDER_STARTED, 0, *pts_us, &[]);
            }
            Record::Marker(Marker::PlaceholderEnded { pts_us }) => {
                self.push_raw(KIND_PLACEHOLDER_ENDED, 0, *pts_us, &[]);
            }
        }
    }

    fn push_raw(&mut self, kind: u8, flags: u8, pts_us: u64, payload: &[u8]) {
        self.buf.push(kind);
        self.buf.push(flags);
        self.buf.extend_from_slice(&pts_us.to_be_bytes());
        // INVARIANT: the writer bounds payloads far below 4 GiB.
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }
}

/// Size of a record in the framing, used to check budgets before appending.
pub(crate) fn record_len(record: &Record) -> usize {
    RECORD_HEADER_LEN
        + match record {
            Record::Config(config) => 8 + config.codec.len(),
            Record::Packet(packet) => packet.data.len(),
            Record::Marker(_) => 0,
        }
}

/// Decodes a segment's plaintext.
pub(crate) fn decode_records(plaintext: &[u8]) -> Result<(bool, Vec<Record>), SegmentFault> {
    let bad = |reason: String| SegmentFault::Framing(reason);
    if plaintext.len() < FRAMING_HEADER_LEN {
        return Err(bad("plaintext shorter than the framing header".into()));
    }
    let version = u16::from_be_bytes([plaintext[0], plaintext[1]]);
    if version != FRAMING_VERSION {
        return Err(bad(format!("unsupported framing version {version}")));
    }
    let placeholder_active = plaintext[2] & FLAG_PLACEHOLDER_ACTIVE != 0;

    let data = Bytes::copy_from_slice(&plaintext[FRAMING_HEADER_LEN..]);
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        if data.len() - at < RECORD_HEADER_LEN {
            return Err(bad(format!("record header cut short at byte {at}")));
        }
        let kind = data[at];
        let flags = data[at + 1];
        let pts_us = u64::from_be_bytes(data[at + 2..at + 10].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(data[at + 10..at + 14].try_into().expect("4 bytes")) as usize;
        let start = at + RECORD_HEADER_LEN;
        if data.len() - start < len {
            return Err(bad(format!(
                "record at byte {at} declares {len} bytes past the end"
            )));
        }
        let payload = data.slice(start..start + len);
        at = start + len;

        let record = match kind {
            KIND_CONFIG => Record::Config(decode_config(&payload).map_err(bad)?),
            KIND_PACKET => Record::Packet(Packet {
                pts_us,
                keyframe: flags & FLAG_KEYFRAME != 0,
                data: payload,
            }),
            KIND_PLACEHOLDER_STARTED => Record::Marker(Marker::PlaceholderStarted { pts_us }),
            KIND_PLACEHOLDER_ENDED => Record::Marker(Marker::PlaceholderEnded { pts_us }),
            other => return Err(bad(format!("unknown record kind {other}"))),
        };
        records.push(record);
    }
    Ok((placeholder_active, records))
}

fn decode_config(payload: &[u8]) -> Result<StreamConfig, String> {
    if payload.len() < 8 {
        return Err("stream config record shorter than 8 bytes".into());
    }
    let width = u32::from_be_bytes(payload[0..4].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes"));
    let codec = std::str::from_utf8(&payload[8..])
        .map_err(|_| "stream config codec name is not UTF-8".to_owned())?
        .to_owned();
    Ok(StreamConfig {
        codec,
        width,
        height,
    })
}

pub(crate) const SEAL_MAGIC: [u8; 8] = *b"STRGSEAL";
pub(crate) const SEAL_VERSION: u16 = 1;
/// Name of the seal object in a recording.
pub const SEAL_NAME: &str = "seal.srs";

/// Contents of a recording's seal: the final segment list. Stored as JSON followed by an
/// AES-GCM tag over it under the recording's data key, so a reader can trust the segment
/// count and index without the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealManifest {
    /// The recording.
    pub recording_id: Uuid,
    /// Number of segments, indexes `0..segment_count`.
    pub segment_count: u64,
    /// Every segment, in index order.
    pub segments: Vec<SegmentStored>,
    /// Packets dropped before the first keyframe, which no decoder could use.
    pub dropped_before_first_keyframe: u64,
}

pub(crate) fn encode_seal(
    cipher: &Aes256Gcm,
    manifest: &SealManifest,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).expect("seal manifest serialises");
    let mut out = Vec::with_capacity(14 + json.len() + NONCE_LEN + TAG_LEN);
    out.extend_from_slice(&SEAL_MAGIC);
    out.extend_from_slice(&SEAL_VERSION.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    let tag = crypto::seal(cipher, &nonce, &out, &[]);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    out
}

pub(crate) fn decode_seal(
    cipher: &Aes256Gcm,
    recording: Uuid,
    bytes: &[u8],
) -> Result<SealManifest, String> {
    if bytes.len() < 14 || bytes[0..8] != SEAL_MAGIC {
        return Err("not a Strongroom seal (bad magic)".into());
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != SEAL_VERSION {
        return Err(format!("unsupported seal version {version}"));
    }

    let json_len = u32::from_be_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
    let aad_len = 14 + json_len;
    if bytes.len() != aad_len + NONCE_LEN + TAG_LEN {
        return Err(format!(
            "seal is {} bytes, expected {}",
            bytes.len(),
            aad_len + NONCE_LEN + TAG_LEN
        ));
    }

    let nonce: [u8; NONCE_LEN] = bytes[aad_len..aad_len + NONCE_LEN]
        .try_into()
        .expect("12 bytes");
    crypto::open(
        cipher,
        &nonce,
        &bytes[..aad_len],
        &bytes[aad_len + NONCE_LEN..],
    )
    .ok_or_else(|| "seal authentication failed (altered seal or wrong key)".to_owned())?;

    let manifest: SealManifest = serde_json::from_slice(&bytes[14..aad_len])
        .map_err(|error| format!("seal manifest is malformed: {error}"))?;
    if manifest.recording_id != recording {
        return Err(format!(
            "seal belongs to recording {}",
            manifest.recording_id
        ));
    }
    let indexes_match = manifest.segments.len() as u64 == manifest.segment_count
        && manifest
            .segments
            .iter()
            .enumerate()
            .all(|(i, s)| s.index == i as u64);
    if !indexes_match {
        return Err("seal segment list does not match its segment count".into());
    }
    Ok(manifest)
}
