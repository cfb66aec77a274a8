//! Bytes per recorded hour for two synthetic screens, encoded the way the workspace
//! agent encodes by default (VP8 through libvpx, 1280x720, 15 frames a second,
//! 2 Mbit/s target, a keyframe every 3 seconds, realtime deadline, cpu-used 8):
//!
//! - static: the top of one frame of ffmpeg's test pattern, unchanged, like a page
//!   nobody touches;
//! - scrolling: the same 1280x1440 frame scrolled by 240 pixels a second, like a person
//!   scrolling through a long page without pause.
//!
//! Each stream is encoded by the `ffmpeg` command for one minute of its own timestamps,
//! written through `RecordingWriter` with the default settings, and the stored bytes
//! (encrypted segments, metadata and seal) are scaled to an hour.
//!
//! Run with `cargo bench -p recorder --bench bytes_per_hour`. Needs `ffmpeg` with libvpx.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig, RecordingWriter, Storage,
    StreamConfig,
};
use uuid::Uuid;

const SECONDS: u64 = 60;
const FPS: u64 = 15;
/// One frame of ffmpeg's test pattern (gradients, colour bars and text), 1280x1440,
/// repeated at 15 frames a second: a page that does not change by itself.
const PAGE: &str = "testsrc=size=1280x1440:rate=15:duration=1,loop=loop=-1:size=1:start=0";

/// Encodes `source` (an ffmpeg lavfi filter graph) to VP8 in an IVF file and returns the
/// packets.
fn encode(dir: &Path, name: &str, source: &str) -> Vec<Packet> {
    let path = dir.join(format!("{name}.ivf"));
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(source)
        .args(["-t", &SECONDS.to_string()])
        .args([
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "2M",
            "-g",
        ])
        .arg((3 * FPS).to_string())
        .args(["-f", "ivf"])
        .arg(&path)
        .output()
        .expect("run ffmpeg (Debian package ffmpeg)");
    assert!(
        output.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[..4], b"DKIF", "{} is not an IVF file", path.display());
    let u16_at = |at: usize| u16::from_le_bytes([file[at], file[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    let header_len = usize::from(u16_at(6));
    let (rate, scale) = (u64::from(u32_at(16)), u64::from(u32_at(20)));

    let mut packets = Vec::new();
    let mut at = header_len;
    while at + 12 <= file.len() {
        let size = u32_at(at) as usize;
        let pts = u64::from_le_bytes(file[at + 4..at + 12].try_into().unwrap());
        let data = file[at + 12..at + 12 + size].to_vec();
        // In VP8, bit 0 of the first byte is 0 for a keyframe.
        let keyframe = data[0] & 1 == 0;
        packets.push(Packet {
            pts_us: pts * scale * 1_000_000 / rate,
            keyframe,
            data: Bytes::from(data),
        });
        at += 12 + size;
    }
    packets
}

/// Writes `packets` as one recording and returns the bytes of all its stored objects.
fn record(root: &Path, packets: Vec<Packet>) -> u64 {
    let storage = Arc::new(LocalDirStorage::open(root.join("recordings")).unwrap());
    let keys = LocalKeyStore::open(root.join("keys")).unwrap();
    let created_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let id = Uuid::new_v4();
    let new = NewRecording {
        id,
        created_at,
        expires_at: created_at + chrono::Duration::days(90),
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 1280,
            height: 720,
        }),
    };
    let mut writer =
        RecordingWriter::create(storage.clone(), &keys, RecorderConfig::default(), new).unwrap();
    for packet in packets {
        writer.push_packet(packet).unwrap();
    }
    writer.seal().unwrap();
    storage
        .list(id)
        .unwrap()
        .iter()
        .map(|object| object.size)
        .sum()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let streams = [
        ("static", format!("{PAGE},crop=1280:720:0:0")),
        (
            "scrolling",
            format!("{PAGE},crop=1280:720:0:'mod(t*240,720)'"),
        ),
    ];
    let hours = SECONDS as f64 / 3600.0;
    for (name, source) in streams {
        let packets = encode(dir.path(), name, &source);
        let video: u64 = packets.iter().map(|p| p.data.len() as u64).sum();
        let stored = record(&dir.path().join(name), packets);
        println!(
            "{name:<10} video {:>8.1} MiB/h, stored {:>8.1} MiB/h (overhead {:.2} %)",
            video as f64 / hours / f64::from(1 << 20),
            stored as f64 / hours / f64::from(1 << 20),
            (stored as f64 / video as f64 - 1.0) * 100.0
        );
    }
}
