//! WebM muxing: writes the packets of a [`MuxReader`] stream into a WebM file with
//! FFmpeg, without re-encoding. The broker runs this in a separate unprivileged
//! process (`strongroom recording mux`) that receives only packets, so no C library
//! parses recording data in a process that has keys.

use std::io::{Read, Seek, Write};

use ffmpeg_next as ffmpeg;

use crate::mux::{DurationTracker, ExportError, ExportSummary, MuxReader, check_codec};
use crate::types::Packet;

const MICROSECONDS: (i32, i32) = (1, 1_000_000);

fn ffmpeg_error(step: &'static str) -> impl Fn(ffmpeg::Error) -> ExportError {
    move |source| ExportError::Ffmpeg { step, source }
}

/// Muxes the mux stream read from `input` into a WebM file written to `output`, which
/// must be seekable so that FFmpeg can write the duration and cues. Fails without a
/// trailer when the input is invalid or stops before its end frame, so a partial
/// output is never a complete-looking file.
pub fn mux_webm<R, W>(input: R, output: W) -> Result<ExportSummary, ExportError>
where
    R: Read,
    W: Write + Seek + Send + 'static,
{
    let mut input = MuxReader::start(input).map_err(ExportError::Input)?;
    let config = input.config().clone();
    check_codec(&config.codec)?;
    let codec = match config.codec.to_ascii_lowercase().as_str() {
        "vp8" => ffmpeg::codec::Id::VP8,
        _ => ffmpeg::codec::Id::VP9,
    };
    let Some(first) = input.next_packet().map_err(ExportError::Input)? else {
        return Err(ExportError::Input(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the stream has no packets",
        )));
    };

    ffmpeg::init().map_err(ffmpeg_error("initialise"))?;
    let stream_io = ffmpeg::format::context::StreamIo::from_write_seek(output)
        .map_err(ffmpeg_error("set up the output"))?;
    let mut octx = ffmpeg::format::output_to_stream(stream_io, None, Some("webm"))
        .map_err(ffmpeg_error("create the WebM output"))?;

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

    // Each packet lasts until the next one, so the loop writes one packet behind.
    let origin = first.pts_us;
    let mut durations = DurationTracker::default();
    durations.push(first.pts_us);
    let mut current = first;
    loop {
        let next = input.next_packet().map_err(ExportError::Input)?;
        let duration_us = match &next {
            Some(next) => next.pts_us.saturating_sub(current.pts_us).max(1),
            None => durations.last_duration_us(),
        };
        write_packet(&mut octx, &current, origin, duration_us, stream_time_base)?;
        match next {
            Some(next) => {
                durations.push(next.pts_us);
                current = next;
            }
            None => break,
        }
    }

    octx.write_trailer()
        .map_err(ffmpeg_error("write the WebM trailer"))?;
    // Dropping the context flushes the buffered bytes into `output`.
    drop(octx);
    Ok(durations.summary())
}

fn write_packet(
    octx: &mut ffmpeg::format::context::Output,
    current: &Packet,
    origin: u64,
    duration_us: u64,
    stream_time_base: ffmpeg::Rational,
) -> Result<(), ExportError> {
    let mut packet = ffmpeg::Packet::copy(&current.data);
    let pts = i64::try_from(current.pts_us.saturating_sub(origin)).unwrap_or(i64::MAX);
    packet.set_pts(Some(pts));
    packet.set_dts(Some(pts));
    packet.set_duration(i64::try_from(duration_us).unwrap_or(i64::MAX));
    if current.keyframe {
        packet.set_flags(ffmpeg::packet::Flags::KEY);
    }
    packet.set_stream(0);
    packet.rescale_ts(MICROSECONDS, stream_time_base);
    packet
        .write_interleaved(octx)
        .map_err(ffmpeg_error("write a packet"))
}
