//! Seek time on a one-hour recording against reading one segment from the start, in the
//! same run. A seek opens the recording (metadata, key unwrap, seal with the segment
//! index), finds the segment by binary search and decrypts it, so it should cost about
//! one open plus one segment wherever the target is.
//!
//! Run with `cargo bench -p recorder --bench seek`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, Record, RecorderConfig, RecordingReader,
    RecordingWriter, StreamConfig,
};
use uuid::Uuid;

/// One hour at ten frames a second with a keyframe every second: 36,000 packets of
/// 1 KiB, 4-second segments (900 of them).
const SECONDS: u64 = 3600;
const FPS: u64 = 10;
const PACKET_BYTES: usize = 1024;
const SEEKS: u64 = 50;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalDirStorage::open(dir.path().join("recordings")).unwrap());
    let keys = LocalKeyStore::open(dir.path().join("keys")).unwrap();
    let created_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let id = Uuid::new_v4();
    let new = NewRecording {
        id,
        created_at,
        expires_at: created_at + chrono::Duration::days(30),
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 1280,
            height: 720,
        }),
    };
    let mut writer =
        RecordingWriter::create(storage.clone(), &keys, RecorderConfig::default(), new).unwrap();
    let payload = Bytes::from(vec![0x5a; PACKET_BYTES]);
    for frame in 0..SECONDS * FPS {
        let packet = Packet {
            pts_us: frame * 1_000_000 / FPS,
            keyframe: frame % FPS == 0,
            data: payload.clone(),
        };
        writer.push_packet(packet).unwrap();
    }
    let sealed = writer.seal().unwrap();

    // Baseline: open and read the first segment.
    let first_segment = |_: ()| {
        let start = Instant::now();
        let reader = RecordingReader::open(storage.clone(), &keys, id).unwrap();
        let records = reader.read_segment(0).unwrap();
        assert!(!records.is_empty());
        start.elapsed()
    };
    first_segment(());
    let baseline: Duration = (0..SEEKS).map(|_| first_segment(())).sum::<Duration>() / SEEKS as u32;

    // Seeks spread over the hour, each to the first packet at or after the target.
    let mut total = Duration::ZERO;
    let mut worst = Duration::ZERO;
    for i in 0..SEEKS {
        let offset = Duration::from_millis((i * 7919 * 1000) % (SECONDS * 1000));
        let start = Instant::now();
        let reader = RecordingReader::open(storage.clone(), &keys, id).unwrap();
        let packet = reader
            .seek(offset)
            .unwrap()
            .find_map(|record| match record.unwrap() {
                Record::Packet(packet) => Some(packet),
                _ => None,
            })
            .unwrap();
        let elapsed = start.elapsed();
        assert!(packet.pts_us <= offset.as_micros() as u64 + 1_000_000);
        total += elapsed;
        worst = worst.max(elapsed);
    }
    let mean = total / SEEKS as u32;

    println!(
        "recording:           {SECONDS} s, {} segments, {} packets of {PACKET_BYTES} bytes",
        sealed.manifest.segment_count,
        SECONDS * FPS
    );
    println!("open + first segment: {baseline:?} (mean of {SEEKS})");
    println!("open + seek:          {mean:?} mean, {worst:?} worst of {SEEKS}");
    println!(
        "ratio (seek / first segment): {:.2}",
        mean.as_secs_f64() / baseline.as_secs_f64()
    );
}
