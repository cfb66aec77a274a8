//! CPU cost of recording one live session at 30 frames per second.
//!
//! The `ffmpeg` command encodes a scrolling 1280x720 page to VP8 at 30 frames per
//! second (2 Mbit/s target, keyframe every 3 s, realtime, cpu-used 8) into an IVF file.
//! Two runs then replay that file in real time, one packet every 1/30 s:
//!
//! - baseline: read each packet from the IVF file and drop it;
//! - recording: read each packet the same way and push it through `RecordingWriter`
//!   (default settings: AES-256-GCM per segment, fsync and rename per segment), then
//!   seal.
//!
//! Each run's CPU time (this thread's, from `/proc/thread-self/schedstat`) divided by
//! its wall time is the share of one core that one session costs. The ratio of the two
//! shows what the recorder adds to reading the stream.
//!
//! Run with `cargo bench -p recorder --bench live_cpu`; `STRONGROOM_BENCH_SECONDS` sets
//! the length (default 20). Needs `ffmpeg` with libvpx.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig, RecordingWriter,
    StreamConfig,
};
use uuid::Uuid;

const FPS: u64 = 30;
/// One frame of ffmpeg's test pattern, 1280x1440, scrolled by 240 pixels a second.
const SOURCE: &str = "testsrc=size=1280x1440:rate=30:duration=1,loop=loop=-1:size=1:start=0,\
                      crop=1280:720:0:'mod(t*240,720)'";

fn encode(dir: &Path, seconds: u64) -> PathBuf {
    let path = dir.join("live.ivf");
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
        .arg(SOURCE)
        .args(["-t", &seconds.to_string()])
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
    path
}

/// Reads IVF frames one at a time, as a live source delivers them.
struct IvfReader {
    input: BufReader<File>,
    rate: u64,
    scale: u64,
}

impl IvfReader {
    fn open(path: &Path) -> Self {
        let mut input = BufReader::new(File::open(path).unwrap());
        let mut header = [0u8; 32];
        input.read_exact(&mut header).unwrap();
        assert_eq!(
            &header[..4],
            b"DKIF",
            "{} is not an IVF file",
            path.display()
        );
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        IvfReader {
            input,
            rate: u64::from(u32_at(16)),
            scale: u64::from(u32_at(20)),
        }
    }

    fn next_packet(&mut self) -> Option<Packet> {
        let mut frame_header = [0u8; 12];
        self.input.read_exact(&mut frame_header).ok()?;
        let size = u32::from_le_bytes(frame_header[..4].try_into().unwrap()) as usize;
        let pts = u64::from_le_bytes(frame_header[4..].try_into().unwrap());
        let mut data = vec![0u8; size];
        self.input.read_exact(&mut data).unwrap();
        // In VP8, bit 0 of the first byte is 0 for a keyframe.
        let keyframe = data[0] & 1 == 0;
        Some(Packet {
            pts_us: pts * self.scale * 1_000_000 / self.rate,
            keyframe,
            data: Bytes::from(data),
        })
    }
}

/// CPU time this thread has used, from the first field of `/proc/thread-self/schedstat`.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("read /proc/thread-self/schedstat (Linux with schedstats)");
    let nanos: u64 = text
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .expect("schedstat starts with the CPU time in nanoseconds");
    Duration::from_nanos(nanos)
}

struct Run {
    packets: u64,
    cpu: Duration,
    wall: Duration,
}

impl Run {
    fn core_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Replays the IVF file in real time, handing each packet to `sink` at its deadline.
fn replay(path: &Path, mut sink: impl FnMut(Packet)) -> Run {
    let mut reader = IvfReader::open(path);
    let frame = Duration::from_secs(1) / FPS as u32;
    let cpu_start = thread_cpu();
    let start = Instant::now();
    let mut packets = 0u64;
    while let Some(packet) = reader.next_packet() {
        sink(packet);
        packets += 1;
        let deadline = start + frame * packets as u32;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Run {
        packets,
        cpu: thread_cpu() - cpu_start,
        wall: start.elapsed(),
    }
}

fn main() {
    let seconds: u64 = std::env::var("STRONGROOM_BENCH_SECONDS")
        .ok()
        .map(|value| {
            value
                .parse()
                .expect("STRONGROOM_BENCH_SECONDS must be a whole number of seconds")
        })
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let stream = encode(dir.path(), seconds);

    let baseline = replay(&stream, drop);

    let storage = Arc::new(LocalDirStorage::open(dir.path().join("recordings")).unwrap());
    let keys = LocalKeyStore::open(dir.path().join("keys")).unwrap();
    let now = Utc::now();
    let new = NewRecording {
        id: Uuid::new_v4(),
        created_at: now,
        expires_at: now + chrono::Duration::days(90),
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 1280,
            height: 720,
        }),
    };
    let cpu_before_create = thread_cpu();
    let mut writer =
        RecordingWriter::create(storage, &keys, RecorderConfig::default(), new).unwrap();
    let create_cpu = thread_cpu() - cpu_before_create;
    let mut recording = replay(&stream, |packet| {
        writer.push_packet(packet).unwrap();
    });
    let cpu_before_seal = thread_cpu();
    writer.seal().unwrap();
    // Creating and sealing belong to the session too, outside the paced loop.
    recording.cpu += create_cpu + (thread_cpu() - cpu_before_seal);

    for (name, run) in [
        ("read only (baseline)", &baseline),
        ("read + record", &recording),
    ] {
        println!(
            "{name:<22} {} packets in {:.1} s wall, {:.3} s CPU: {:.2} % of one core",
            run.packets,
            run.wall.as_secs_f64(),
            run.cpu.as_secs_f64(),
            run.core_share() * 100.0
        );
    }
    println!(
        "recorder adds {:.2} % of one core per 30 fps session; CPU ratio (record / read only) {:.2}",
        (recording.core_share() - baseline.core_share()) * 100.0,
        recording.cpu.as_secs_f64() / baseline.cpu.as_secs_f64()
    );
}
