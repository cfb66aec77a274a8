//! WebM export: remuxes a recording's VP8 or VP9 packets into a standard WebM file with
//! FFmpeg, without re-encoding. Runs in its own process (`strongroom recording export`)
//! so that no C library parses recording data inside the broker.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use uuid::Uuid;

use crate::error::RecorderError;
use crate::keys::KeyStore;
use crate::reader::RecordingReader;
use crate::storage::Storage;
use crate::types::{Packet, Record, StreamConfig};

/// Failure of [`export_webm`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or authenticating the recording failed; nothing was written.
    #[error(transparent)]
    Recording(#[from] RecorderError),
    /// The recording's codec cannot go into WebM.
    #[error("codec {0:?} cannot be exported to WebM; only vp8 and vp9 can")]
    UnsupportedCodec(String),
    /// The recording has no stream configuration or no packets.
    #[error("recording {0} has no video to export")]
    Empty(Uuid),
    /// FFmpeg failed.
    #[error("FFmpeg failed to {step}: {source}")]
    Ffmpeg {
        step: &'static str,
        #[source]
        source: ffmpeg::Error,
    },
    /// Writing the output file failed.
    #[error("writing export {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Summary of a finished [`export_webm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The output file.
    pub path: PathBuf,
    /// Packets written.
    pub packets: u64,
    /// Duration of the video, the last packet's duration included.
    pub duration: Duration,
}

const MICROSECONDS: (i32, i32) = (1, 1_000_000);
/// Longest duration given to the last packet, which has no successor to tell its real
/// length. The gap before it is no guide: the agent re-sends an unchanged screen only
/// every few seconds, so that gap can be seconds long.
const LAST_PACKET_FALLBACK_US: u64 = 33_333;

/// Exports a recording to a WebM file at `output`. With `expected_hashes` (from the audit
/// trail) every segment must match its hash. The file is written under a temporary name
/// and renamed when complete, so a failed export leaves no partial file at `output`.
///
/// NOTE: placeholder gap markers are not carried into the WebM file; the video itself
/// shows the placeholder during a gap.
pub fn export_webm(
    storage: Arc<dyn Storage>,
    keys: &dyn KeyStore,
    recording: Uuid,
    expected_hashes: Option<Vec<[u8; 32]>>,
    output: &Path,
) -> Result<ExportSummary, ExportError> {
    let mut reader = RecordingReader::open(storage, keys, recording)?;
    if let Some(hashes) = expected_hashes {
        reader.require_hashes(hashes)?;
    }
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
    let codec = match config.codec.to_ascii_lowercase().as_str() {
        "vp8" => ffmpeg::codec::Id::VP8,
        "vp9" => ffmpeg::codec::Id::VP9,
        _ => return Err(ExportError::UnsupportedCodec(config.codec)),
    };

    let tmp = temporary_path(output);
    let result = write_webm(
        &tmp,
        codec,
        &config,
        first_packet,
        &mut records.filter_map(|r| match r {
            Ok(Record::Packet(p)) => Some(Ok(p)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }),
    );
    match result {
        Ok((packets, duration)) => {
            fs::rename(&tmp, output).map_err(|source| ExportError::Io {
                path: output.to_owned(),
                source,
            })?;
            tracing::info!(recording.id = %recording, path = %output.display(), packets, "Exported recording to WebM");
            Ok(ExportSummary {
                path: output.to_owned(),
                packets,
                duration,
            })
        }
        Err(error) => {
            let _ = fs::remove_file(&tmp);
            Err(error)
        }
    }
}

fn temporary_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.partial"))
}

fn ffmpeg_error(step: &'static str) -> impl Fn(ffmpeg::Error) -> ExportError {
    move |source| ExportError::Ffmpeg { step, source }
}

fn write_webm(
    path: &Path,
    codec: ffmpeg::codec::Id,
    config: &StreamConfig,
    first: Packet,
    rest: &mut dyn Iterator<Item = Result<Packet, RecorderError>>,
) -> Result<(u64, Duration), ExportError> {
    ffmpeg::init().map_err(ffmpeg_error("initialise"))?;
    let mut octx =
        ffmpeg::format::output_as(path, "webm").map_err(ffmpeg_error("create the WebM output"))?;

    // An unopened codec context carries the stream parameters; the decoder's descriptor
    // is enough, so no encoder library is needed for a remux.
    let decoder = ffmpeg::decoder::find(codec).ok_or(ExportError::Ffmpeg {
        step: "find the codec",
        source: ffmpeg::Error::DecoderNotFound,
    })?;
    let mut parameters = ffmpeg::codec::Context::new_with_codec(decoder)
        .encoder()
        .video()
        .map_err(ffmpeg_error("set up stream parameters"))?;
    parameters.set_width(config.width);
    parameters.set_height(config.height);
    parameters.set_format(ffmpeg::format::Pixel::YUV420P);
    parameters.set_time_base(MICROSECONDS);
    let mut stream = octx
        .add_stream_with(&parameters)
        .map_err(ffmpeg_error("add the video stream"))?;
    stream.set_time_base(MICROSECONDS);
    octx.write_header()
        .map_err(ffmpeg_error("write the WebM header"))?;
    let stream_time_base = octx.stream(0).expect("stream 0 was added").time_base();

    let origin = first.pts_us;
    let mut current = first;
    let mut last_duration_us = LAST_PACKET_FALLBACK_US;
    let mut packets = 0u64;
    loop {
        let next = rest.next().transpose()?;
        let duration_us = match &next {
            Some(next) => next.pts_us.saturating_sub(current.pts_us).max(1),
            None => last_duration_us.min(LAST_PACKET_FALLBACK_US),
        };
        let end_us = current.pts_us - origin + duration_us;

        let mut packet = ffmpeg::Packet::copy(&current.data);
        let pts = i64::try_from(current.pts_us - origin).unwrap_or(i64::MAX);
        packet.set_pts(Some(pts));
        packet.set_dts(Some(pts));
        packet.set_duration(i64::try_from(duration_us).unwrap_or(i64::MAX));
        if current.keyframe {
            packet.set_flags(ffmpeg::packet::Flags::KEY);
        }
        packet.set_stream(0);
        packet.rescale_ts(MICROSECONDS, stream_time_base);
        packet
            .write_interleaved(&mut octx)
            .map_err(ffmpeg_error("write a packet"))?;
        packets += 1;
        last_duration_us = duration_us;

        match next {
            Some(next) => current = next,
            None => {
                octx.write_trailer()
                    .map_err(ffmpeg_error("write the WebM trailer"))?;
                drop(octx);
                fs::File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(|source| ExportError::Io {
                        path: path.to_owned(),
                        source,
                    })?;
                return Ok((packets, Duration::from_micros(end_us)));
            }
        }
    }
}
