//! The byte stream between the process that decrypts a recording for export and the
//! unprivileged process that muxes it into a WebM file.
//!
//! The decrypting side authenticates every segment, then sends only the stream
//! configuration and the encoded packets, so the muxing process never receives a key, a
//! segment file or a hash. All integers are big-endian:
//!
//! ```text
//! "SRMUX1"                                        magic, once
//! 'C' codec_len:u8 codec width:u32 height:u32     stream configuration, once
//! 'P' pts_us:u64 keyframe:u8 len:u32 data         one per packet, at least one
//! 'E'                                             end; input that stops before it is truncated
//! ```

use std::io::{self, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use crate::error::RecorderError;
use crate::reader::RecordingReader;
use crate::types::{Packet, Record, StreamConfig};

const MAGIC: &[u8; 6] = b"SRMUX1";
const TAG_CONFIG: u8 = b'C';
const TAG_PACKET: u8 = b'P';
const TAG_END: u8 = b'E';
/// Largest packet accepted from the input. A 4K VP8 keyframe stays far below this, so a
/// larger length means corrupt input rather than video.
pub const MAX_PACKET_BYTES: u32 = 64 * 1024 * 1024;
/// Largest picture side accepted, in pixels (VP8 allows at most 16383).
const MAX_DIMENSION: u32 = 16_384;
/// Longest duration given to the last packet, which has no successor to tell its real
/// length: one frame at 30 frames per second. The gap before it is no guide, because
/// the agent re-sends an unchanged screen only every few seconds.
pub(crate) const LAST_PACKET_FALLBACK_US: u64 = 33_333;

/// Failure of an export, on the decrypting or on the muxing side.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or authenticating the recording failed; nothing was muxed.
    #[error(transparent)]
    Recording(#[from] RecorderError),
    /// The recording's codec cannot go into WebM.
    #[error("codec {0:?} cannot be exported to WebM; only vp8 and vp9 can")]
    UnsupportedCodec(String),
    /// The recording has no stream configuration or no packets.
    #[error("recording {0} has no video to export")]
    Empty(Uuid),
    /// Sending packets to the muxing process failed, usually because it exited.
    #[error("sending packets to the mux process failed: {0}")]
    Send(#[source] io::Error),
    /// The muxing process received input that is not a complete, valid packet stream.
    #[error("invalid mux input: {0}")]
    Input(#[source] io::Error),
    /// FFmpeg failed.
    #[cfg(feature = "export")]
    #[error("FFmpeg failed to {step}: {source}")]
    Ffmpeg {
        step: &'static str,
        #[source]
        source: ffmpeg_next::Error,
    },
    /// Writing the output file failed.
    #[error("writing the WebM output failed: {0}")]
    Output(#[source] io::Error),
}

/// Packets and duration of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Packets written.
    pub packets: u64,
    /// Duration of the video, the last packet's duration included.
    pub duration: Duration,
}

/// Tracks the packets of a stream to compute its duration the same way on both sides:
/// each packet lasts until the next one, and the last one as long as the one before it.
#[derive(Debug, Default)]
pub(crate) struct DurationTracker {
    origin_us: Option<u64>,
    last_pts_us: u64,
    last_gap_us: Option<u64>,
    packets: u64,
}

impl DurationTracker {
    pub(crate) fn push(&mut self, pts_us: u64) {
        if self.origin_us.is_none() {
            self.origin_us = Some(pts_us);
        } else {
            self.last_gap_us = Some(pts_us.saturating_sub(self.last_pts_us).max(1));
        }
        self.last_pts_us = pts_us;
        self.packets += 1;
    }

    /// Duration given to the last packet pushed so far.
    pub(crate) fn last_duration_us(&self) -> u64 {
        self.last_gap_us
            .unwrap_or(LAST_PACKET_FALLBACK_US)
            .min(LAST_PACKET_FALLBACK_US)
    }

    pub(crate) fn summary(&self) -> ExportSummary {
        let origin = self.origin_us.unwrap_or(self.last_pts_us);
        let end_us = self.last_pts_us - origin + self.last_duration_us();
        ExportSummary {
            packets: self.packets,
            duration: Duration::from_micros(end_us),
        }
    }
}

/// Maps a recording's codec name to the codecs WebM carries, rejecting the rest.
pub(crate) fn check_codec(codec: &str) -> Result<(), ExportError> {
    match codec.to_ascii_lowercase().as_str() {
        "vp8" | "vp9" => Ok(()),
        _ => Err(ExportError::UnsupportedCodec(codec.to_owned())),
    }
}

/// Sends an opened recording's stream configuration and packets to a muxing process.
/// `connect` is called only once the recording is known to contain exportable video,
/// so no process is started for an empty recording or an unsupported codec. Every
/// segment is authenticated (and checked against the hashes given to
/// [`RecordingReader::require_hashes`]) before its packets are sent; a failure stops
/// the stream before the end frame, so the muxing process reads truncated input.
pub fn send_recording<W: Write>(
    reader: &RecordingReader,
    connect: impl FnOnce() -> Result<W, ExportError>,
) -> Result<ExportSummary, ExportError> {
    let recording = reader.metadata().recording_id;
    let mut records = reader.records();

    // The stream configuration comes before the first packet in every segment.
    let mut config: Option<StreamConfig> = None;
    let mut first_packet = None;
    for record in records.by_ref() {
        match record? {
            Record::Config(c) => config = Some(c),
            Record::Packet(p) => {
                first_packet = Some(p);
                break;
            }
            Record::Marker(_) => {}
        }
    }
    let (Some(config), Some(first_packet)) = (config, first_packet) else {
        return Err(ExportError::Empty(recording));
    };
    check_codec(&config.codec)?;

    let mut output = MuxWriter::start(connect()?, &config).map_err(ExportError::Send)?;
    let mut durations = DurationTracker::default();
    durations.push(first_packet.pts_us);
    output.packet(&first_packet).map_err(ExportError::Send)?;
    for record in records {
        if let Record::Packet(packet) = record? {
            durations.push(packet.pts_us);
            output.packet(&packet).map_err(ExportError::Send)?;
        }
    }
    output.finish().map_err(ExportError::Send)?;
    Ok(durations.summary())
}

/// Writes the mux stream.
pub struct MuxWriter<W: Write> {
    inner: io::BufWriter<W>,
}

impl<W: Write> MuxWriter<W> {
    /// Writes the magic and the stream configuration.
    pub fn start(inner: W, config: &StreamConfig) -> io::Result<Self> {
        let codec = config.codec.as_bytes();
        let codec_len = u8::try_from(codec.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("codec name {:?} is longer than 255 bytes", config.codec),
            )
        })?;
        let mut inner = io::BufWriter::new(inner);
        inner.write_all(MAGIC)?;
        inner.write_all(&[TAG_CONFIG, codec_len])?;
        inner.write_all(codec)?;
        inner.write_all(&config.width.to_be_bytes())?;
        inner.write_all(&config.height.to_be_bytes())?;
        Ok(MuxWriter { inner })
    }

    /// Writes one packet.
    pub fn packet(&mut self, packet: &Packet) -> io::Result<()> {
        let len = u32::try_from(packet.data.len())
            .ok()
            .filter(|len| *len <= MAX_PACKET_BYTES)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "packet of {} bytes exceeds the maximum of {MAX_PACKET_BYTES}",
                        packet.data.len()
                    ),
                )
            })?;
        self.inner.write_all(&[TAG_PACKET])?;
        self.inner.write_all(&packet.pts_us.to_be_bytes())?;
        self.inner.write_all(&[u8::from(packet.keyframe)])?;
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(&packet.data)
    }

    /// Writes the end frame, flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&[TAG_END])?;
        self.inner.into_inner().map_err(|error| error.into_error())
    }
}

/// Reads the mux stream: the configuration, then the packets up to the end frame.
pub struct MuxReader<R: Read> {
    inner: io::BufReader<R>,
    config: StreamConfig,
    ended: bool,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<R: Read> MuxReader<R> {
    /// Reads and checks the magic and the stream configuration.
    pub fn start(inner: R) -> io::Result<Self> {
        let mut inner = io::BufReader::new(inner);
        let mut magic = [0u8; 6];
        inner.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid(format!(
                "input starts with {magic:02x?}, not the mux stream magic {MAGIC:02x?}"
            )));
        }
        let mut head = [0u8; 2];
        inner.read_exact(&mut head)?;
        if head[0] != TAG_CONFIG {
            return Err(invalid(format!(
                "expected the stream configuration, found frame tag {:#04x}",
                head[0]
            )));
        }
        let mut codec = vec![0u8; usize::from(head[1])];
        inner.read_exact(&mut codec)?;
        let codec =
            String::from_utf8(codec).map_err(|_| invalid("codec name is not UTF-8".to_owned()))?;
        let width = read_u32(&mut inner)?;
        let height = read_u32(&mut inner)?;
        for (name, value) in [("width", width), ("height", height)] {
            if value == 0 || value > MAX_DIMENSION {
                return Err(invalid(format!(
                    "picture {name} {value} is outside 1..={MAX_DIMENSION}"
                )));
            }
        }
        Ok(MuxReader {
            inner,
            config: StreamConfig {
                codec,
                width,
                height,
            },
            ended: false,
        })
    }

    /// Returns the stream configuration sent first.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Reads the next packet; `None` after the end frame. Input that stops before the
    /// end frame is an `UnexpectedEof` error.
    pub fn next_packet(&mut self) -> io::Result<Option<Packet>> {
        if self.ended {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.inner.read_exact(&mut tag).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "input ended before the end frame; the sending process stopped",
                )
            } else {
                error
            }
        })?;
        match tag[0] {
            TAG_END => {
                self.ended = true;
                Ok(None)
            }
            TAG_PACKET => {
                let mut pts = [0u8; 8];
                self.inner.read_exact(&mut pts)?;
                let mut keyframe = [0u8; 1];
                self.inner.read_exact(&mut keyframe)?;
                let len = read_u32(&mut self.inner)?;
                if len > MAX_PACKET_BYTES {
                    return Err(invalid(format!(
                        "packet of {len} bytes exceeds the maximum of {MAX_PACKET_BYTES}"
                    )));
                }
                let mut data = vec![0u8; len as usize];
                self.inner.read_exact(&mut data)?;
                Ok(Some(Packet {
                    pts_us: u64::from_be_bytes(pts),
                    keyframe: keyframe[0] != 0,
                    data: Bytes::from(data),
                }))
            }
            other => Err(invalid(format!("unknown frame tag {other:#04x}"))),
        }
    }
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StreamConfig {
        StreamConfig {
            codec: "vp8".into(),
            width: 640,
            height: 480,
        }
    }

    fn packet(pts_us: u64, keyframe: bool, data: &'static [u8]) -> Packet {
        Packet {
            pts_us,
            keyframe,
            data: Bytes::from_static(data),
        }
    }

    fn encode(packets: &[Packet]) -> Vec<u8> {
        let mut writer = MuxWriter::start(Vec::new(), &config()).unwrap();
        for packet in packets {
            writer.packet(packet).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn stream_round_trips() {
        let packets = [packet(0, true, b"key"), packet(33_333, false, b"delta")];
        let bytes = encode(&packets);

        let mut reader = MuxReader::start(bytes.as_slice()).unwrap();
        assert_eq!(reader.config(), &config());
        assert_eq!(reader.next_packet().unwrap(), Some(packets[0].clone()));
        assert_eq!(reader.next_packet().unwrap(), Some(packets[1].clone()));
        assert_eq!(reader.next_packet().unwrap(), None);
        assert_eq!(reader.next_packet().unwrap(), None);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let bytes = encode(&[packet(0, true, b"key")]);
        let truncated = &bytes[..bytes.len() - 1];

        let mut reader = MuxReader::start(truncated).unwrap();
        assert!(reader.next_packet().unwrap().is_some());
        let error = reader.next_packet().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut bytes = encode(&[packet(0, true, b"key")]);
        bytes[0] = b'X';

        let error = MuxReader::start(bytes.as_slice()).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn oversized_packet_length_is_rejected() {
        let mut bytes = encode(&[packet(0, true, b"key")]);
        // The length field follows the magic, the configuration and tag + pts + flag.
        let at = MAGIC.len() + 2 + 3 + 8 + 1 + 8 + 1;
        bytes[at..at + 4].copy_from_slice(&(MAX_PACKET_BYTES + 1).to_be_bytes());

        let mut reader = MuxReader::start(bytes.as_slice()).unwrap();
        let error = reader.next_packet().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn duration_counts_last_packet_as_previous_gap() {
        let mut durations = DurationTracker::default();
        for pts in [1_000_000, 1_020_000, 1_040_000] {
            durations.push(pts);
        }

        let summary = durations.summary();
        assert_eq!(summary.packets, 3);
        assert_eq!(summary.duration, Duration::from_millis(60));
    }

    #[test]
    fn duration_caps_last_packet_at_one_frame() {
        let mut durations = DurationTracker::default();
        for pts in [1_000_000, 1_100_000, 4_100_000] {
            durations.push(pts);
        }

        let summary = durations.summary();
        assert_eq!(summary.duration, Duration::from_micros(3_100_000 + 33_333));
    }
}
