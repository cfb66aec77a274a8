//! Cost of checkpoint parts: the writer with the default 1 s checkpoint interval against
//! the same writer with checkpoints off, in the same run.
//!
//! The stream: 30 packets a second, a 40 KiB keyframe every 3 s and 8 KiB packets
//! between (about 2 Mbit/s, the agent's default target), into 4 s segments on local
//! storage, then sealed.
//!
//! - Throughput: both push ten minutes of the stream as fast as they can, three times
//!   each, alternating; the median total time of each is reported.
//! - Stalls: both push 30 s of the stream in real time, one packet every 1/30 s, as the
//!   stream task does; the longest single `push_packet` call is how long viewers wait
//!   for the recorder at worst (today a segment cut).
//!
//! Run with `cargo bench -p recorder --bench checkpoint_cost`;
//! `STRONGROOM_BENCH_SECONDS` sets the throughput stream's length (default 600) and
//! `STRONGROOM_BENCH_PACED_SECONDS` the real-time one's (default 30).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig, RecordingWriter,
    StreamConfig,
};
use uuid::Uuid;

const FPS: u64 = 30;
const GOP: u64 = 3 * FPS;
const KEYFRAME_BYTES: usize = 40 << 10;
const PACKET_BYTES: usize = 8 << 10;
const RUNS: usize = 3;

struct Run {
    total: Duration,
    longest_push: Duration,
    parts_seen: usize,
}

fn packets(seconds: u64) -> Vec<Packet> {
    (0..seconds * FPS)
        .map(|i| {
            let keyframe = i % GOP == 0;
            let len = if keyframe {
                KEYFRAME_BYTES
            } else {
                PACKET_BYTES
            };
            let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect();
            Packet {
                pts_us: i * 1_000_000 / FPS,
                keyframe,
                data: Bytes::from(data),
            }
        })
        .collect()
}

fn run(
    root: &std::path::Path,
    packets: &[Packet],
    checkpoint_interval: Duration,
    paced: bool,
) -> Run {
    let storage = Arc::new(LocalDirStorage::open(root.join("recordings")).unwrap());
    let keys = LocalKeyStore::open(root.join("keys")).unwrap();
    let config = RecorderConfig {
        checkpoint_interval,
        ..RecorderConfig::default()
    };
    let created_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let new = NewRecording {
        id: Uuid::new_v4(),
        created_at,
        expires_at: created_at + chrono::Duration::days(30),
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 1280,
            height: 720,
        }),
    };
    let mut writer = RecordingWriter::create(storage.clone(), &keys, config, new).unwrap();
    let id = writer.id();
    let dir = storage.recording_dir(id);

    let mut longest_push = Duration::ZERO;
    let mut parts_seen = 0;
    let start = Instant::now();
    for (i, packet) in packets.iter().enumerate() {
        if paced {
            let due = start + Duration::from_micros(packet.pts_us);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let push = Instant::now();
        writer.push_packet(packet.clone()).unwrap();
        longest_push = longest_push.max(push.elapsed());
        // Once a minute of stream, 3.5 s into a segment, count the parts on disk
        // (outside the timed push).
        if i as u64 % (60 * FPS) == 3 * FPS + FPS / 2 {
            parts_seen += std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("part-")
                })
                .count();
        }
    }
    writer.seal().unwrap();
    Run {
        total: start.elapsed(),
        longest_push,
        parts_seen,
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let seconds: u64 = std::env::var("STRONGROOM_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let packets = packets(seconds);
    let bytes: usize = packets.iter().map(|p| p.data.len()).sum();
    println!(
        "stream: {seconds} s, {} packets, {:.1} MiB",
        packets.len(),
        bytes as f64 / (1 << 20) as f64
    );

    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        without.push(run(dir.path(), &packets, Duration::ZERO, false));
        let dir = tempfile::tempdir().unwrap();
        with.push(run(dir.path(), &packets, Duration::from_secs(1), false));
    }
    assert!(without.iter().all(|r| r.parts_seen == 0));
    assert!(with.iter().all(|r| r.parts_seen > 0));

    let report = |name: &str, runs: &[Run]| {
        let total = median(runs.iter().map(|r| r.total).collect());
        let longest = median(runs.iter().map(|r| r.longest_push).collect());
        println!(
            "{name}: total {:.3} s ({:.1} x real time), longest push {:.2} ms",
            total.as_secs_f64(),
            seconds as f64 / total.as_secs_f64(),
            longest.as_secs_f64() * 1000.0
        );
        (total, longest)
    };
    let (total_without, _) = report("checkpoints off", &without);
    let (total_with, _) = report("checkpoint every 1 s", &with);
    println!(
        "time ratio (with / without checkpoints): {:.2}",
        total_with.as_secs_f64() / total_without.as_secs_f64()
    );

    let paced_seconds: u64 = std::env::var("STRONGROOM_BENCH_PACED_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let paced = self::packets(paced_seconds);
    let dir = tempfile::tempdir().unwrap();
    let without = run(dir.path(), &paced, Duration::ZERO, true);
    let dir = tempfile::tempdir().unwrap();
    let with = run(dir.path(), &paced, Duration::from_secs(1), true);
    println!(
        "real time, {paced_seconds} s: longest push {:.2} ms off, {:.2} ms with checkpoints; ratio {:.2}",
        without.longest_push.as_secs_f64() * 1000.0,
        with.longest_push.as_secs_f64() * 1000.0,
        with.longest_push.as_secs_f64() / without.longest_push.as_secs_f64()
    );
}
