//! WebM export of real VP8 packets, checked with ffprobe. Run with `--features export`.
//! Both halves run in this process here: the decrypting side writes the mux stream into
//! memory and the muxing side reads it from there.
#![cfg(feature = "export")]

mod common;

use std::process::Command;

use bytes::Bytes;
use common::*;
use ffmpeg_next as ffmpeg;
use recorder::{
    ExportError, ExportSummary, KeyStore, MuxWriter, Packet, RecordingReader, Storage,
    StreamConfig, mux_webm, send_recording,
};
use std::sync::Arc;
use uuid::Uuid;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FPS: i32 = 30;

/// Encodes `frames` synthetic frames (a moving gradient) to VP8 with libvpx and returns
/// the packets with microsecond timestamps.
fn encode_vp8(frames: i64) -> Vec<Packet> {
    ffmpeg::init().unwrap();
    let codec = ffmpeg::encoder::find_by_name("libvpx").expect("FFmpeg built with libvpx");
    let mut encoder = ffmpeg::codec::Context::new_with_codec(codec)
        .encoder()
        .video()
        .unwrap();
    encoder.set_width(WIDTH);
    encoder.set_height(HEIGHT);
    encoder.set_format(ffmpeg::format::Pixel::YUV420P);
    encoder.set_time_base((1, FPS));
    encoder.set_gop(FPS as u32);
    encoder.set_bit_rate(400_000);
    let mut options = ffmpeg::Dictionary::new();
    options.set("deadline", "realtime");
    options.set("cpu-used", "8");
    options.set("lag-in-frames", "0");
    let mut encoder = encoder.open_as_with(codec, options).unwrap();

    let mut packets = Vec::new();
    let drain = |encoder: &mut ffmpeg::encoder::Video, packets: &mut Vec<Packet>| {
        let mut packet = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut packet).is_ok() {
            let pts = packet.pts().expect("encoder sets pts");
            packets.push(Packet {
                pts_us: (pts * 1_000_000 / i64::from(FPS)) as u64,
                keyframe: packet.is_key(),
                data: Bytes::copy_from_slice(packet.data().unwrap()),
            });
        }
    };

    let mut frame = ffmpeg::frame::Video::new(ffmpeg::format::Pixel::YUV420P, WIDTH, HEIGHT);
    for i in 0..frames {
        let stride = frame.stride(0);
        let luma = frame.data_mut(0);
        for y in 0..HEIGHT as usize {
            for x in 0..WIDTH as usize {
                luma[y * stride + x] = ((x + y + i as usize * 4) % 256) as u8;
            }
        }
        for plane in 1..3 {
            frame.data_mut(plane).fill(128);
        }
        frame.set_pts(Some(i));
        encoder.send_frame(&frame).unwrap();
        drain(&mut encoder, &mut packets);
    }
    encoder.send_eof().unwrap();
    drain(&mut encoder, &mut packets);
    packets
}

fn ffprobe_duration(path: &std::path::Path) -> f64 {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,width,height",
            "-of",
            "default=nw=1",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe (Debian package ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("codec_name=vp8"), "{text}");
    assert!(text.contains(&format!("width={WIDTH}")), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("duration="))
        .unwrap_or_else(|| panic!("no duration in {text}"))
        .parse()
        .unwrap()
}

/// Decrypts and verifies the recording into a mux stream in memory.
fn send(
    storage: Arc<dyn Storage>,
    keys: &dyn KeyStore,
    id: Uuid,
    hashes: Vec<[u8; 32]>,
) -> Result<(ExportSummary, Vec<u8>), ExportError> {
    let mut reader = RecordingReader::open(storage, keys, id)?;
    reader.require_hashes(hashes)?;
    let mut stream = Vec::new();
    let summary = send_recording(&reader, || Ok(&mut stream))?;
    Ok((summary, stream))
}

#[test]
fn export_has_real_duration() {
    let packets = encode_vp8(10 * i64::from(FPS));
    assert_eq!(packets.len(), 300);
    assert!(packets[0].keyframe);

    let fx = Fixture::new();
    let mut new = new_recording(default_expiry());
    new.stream = Some(StreamConfig {
        codec: "vp8".into(),
        width: WIDTH,
        height: HEIGHT,
    });
    let mut writer =
        recorder::RecordingWriter::create(fx.storage.clone(), &fx.keys, test_config(), new)
            .unwrap();
    let id = writer.id();
    let mut stored = write_all(&mut writer, packets);
    stored.extend(writer.seal().unwrap().final_segment);
    assert!(stored.len() >= 4, "several segments: {}", stored.len());

    let output = fx.dir.path().join("export.webm");
    let (summary, stream) = send(fx.storage.clone(), &fx.keys, id, hashes(&stored)).unwrap();
    let muxed = mux_webm(stream.as_slice(), std::fs::File::create(&output).unwrap()).unwrap();
    assert_eq!(muxed, summary);
    assert_eq!(summary.packets, 300);
    // 300 frames at 33 333 us each plus the last frame's duration: 10 s within rounding.
    let expected = std::time::Duration::from_secs(10);
    assert!(
        summary.duration.abs_diff(expected) < std::time::Duration::from_millis(1),
        "{:?}",
        summary.duration
    );

    let duration = ffprobe_duration(&output);
    assert!((duration - 10.0).abs() < 0.1, "ffprobe duration {duration}");

    // The exported file decodes without errors.
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&output)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
}

#[test]
fn export_refuses_tampered_recording() {
    let packets = encode_vp8(90);
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let id = writer.id();
    let mut stored = write_all(&mut writer, packets);
    stored.extend(writer.seal().unwrap().final_segment);
    let path = segment_path(&fx.recording_dir(id), 1);
    let mut file = std::fs::read(&path).unwrap();
    let at = file.len() - 20;
    file[at] ^= 0x04;
    std::fs::write(&path, file).unwrap();

    // The tampered segment is the second one, so the stream had started and stops
    // without its end frame.
    let mut reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    reader.require_hashes(hashes(&stored)).unwrap();
    let mut stream = Vec::new();
    let error = send_recording(&reader, || Ok(&mut stream)).unwrap_err();
    assert!(matches!(error, ExportError::Recording(_)), "{error}");
    assert!(!stream.is_empty(), "the first segment was sent");

    let output = fx.dir.path().join("tampered.webm");
    let error = mux_webm(stream.as_slice(), std::fs::File::create(&output).unwrap()).unwrap_err();
    assert!(matches!(error, ExportError::Input(_)), "{error}");
}

#[test]
fn mux_rejects_unsupported_codec() {
    let config = StreamConfig {
        codec: "h264".into(),
        width: WIDTH,
        height: HEIGHT,
    };
    let mut writer = MuxWriter::start(Vec::new(), &config).unwrap();
    writer
        .packet(&Packet {
            pts_us: 0,
            keyframe: true,
            data: Bytes::from_static(b"not video"),
        })
        .unwrap();
    let stream = writer.finish().unwrap();

    let fx = Fixture::new();
    let output = std::fs::File::create(fx.dir.path().join("h264.webm")).unwrap();
    let error = mux_webm(stream.as_slice(), output).unwrap_err();
    assert!(matches!(error, ExportError::UnsupportedCodec(_)), "{error}");
}
