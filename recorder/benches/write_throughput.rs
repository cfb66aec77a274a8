//! Encrypt-and-write throughput of the recorder against two baselines measured in the
//! same run: a plain write of the same bytes (4 MiB segments with temp file, fsync,
//! rename and directory fsync, as the recorder does), and AES-256-GCM alone over the
//! same 4 MiB segments in memory. The first ratio shows what framing, encryption and
//! hashing add to the I/O; the second what the I/O and framing add to the cipher.
//! A third baseline is `openssl speed -evp aes-256-gcm` on one core, run as a child
//! process in the same run, so the recorder's throughput can be compared with an
//! optimised cipher implementation on the same machine and load.
//!
//! Run with `cargo bench -p recorder --bench write_throughput`.

use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig, RecordingWriter,
};
use uuid::Uuid;

const TOTAL_BYTES: usize = 256 << 20;
const PACKET_BYTES: usize = 64 << 10;
const SEGMENT_BYTES: usize = 4 << 20;
const PACKETS_PER_KEYFRAME: usize = 16;

fn packets() -> Vec<Packet> {
    let payload: Vec<u8> = (0..PACKET_BYTES).map(|i| (i * 7) as u8).collect();
    let payload = Bytes::from(payload);
    (0..TOTAL_BYTES / PACKET_BYTES)
        .map(|i| Packet {
            pts_us: i as u64 * 33_333,
            keyframe: i % PACKETS_PER_KEYFRAME == 0,
            data: payload.clone(),
        })
        .collect()
}

fn recorder_run(root: &std::path::Path, packets: &[Packet]) -> Duration {
    let storage = Arc::new(LocalDirStorage::open(root.join("recordings")).unwrap());
    let keys = LocalKeyStore::open(root.join("keys")).unwrap();
    let config = RecorderConfig {
        target_segment_duration: Duration::from_secs(3600),
        target_segment_bytes: SEGMENT_BYTES,
        max_segment_bytes: SEGMENT_BYTES * 4,
        max_packet_bytes: PACKET_BYTES * 2,
        recording_byte_budget: (TOTAL_BYTES * 2) as u64,
        ..RecorderConfig::default()
    };
    let created_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let new = NewRecording {
        id: Uuid::new_v4(),
        created_at,
        expires_at: created_at + chrono::Duration::days(30),
        stream: None,
    };
    let mut writer = RecordingWriter::create(storage, &keys, config, new).unwrap();
    let start = Instant::now();
    for packet in packets {
        writer.push_packet(packet.clone()).unwrap();
    }
    writer.seal().unwrap();
    start.elapsed()
}

fn plain_run(root: &std::path::Path, packets: &[Packet]) -> Duration {
    let dir = root.join("plain");
    fs::create_dir_all(&dir).unwrap();
    let start = Instant::now();
    let mut segment = Vec::with_capacity(SEGMENT_BYTES + PACKET_BYTES);
    let mut index = 0;
    let flush = |segment: &mut Vec<u8>, index: &mut usize| {
        let tmp = dir.join(format!(".tmp-{index}"));
        let mut file = fs::File::create(&tmp).unwrap();
        file.write_all(segment).unwrap();
        file.sync_all().unwrap();
        fs::rename(&tmp, dir.join(format!("seg-{index}"))).unwrap();
        fs::File::open(&dir).unwrap().sync_all().unwrap();
        segment.clear();
        *index += 1;
    };
    for packet in packets {
        if packet.keyframe && segment.len() >= SEGMENT_BYTES {
            flush(&mut segment, &mut index);
        }
        segment.extend_from_slice(&packet.data);
    }
    flush(&mut segment, &mut index);
    start.elapsed()
}

/// Encrypts the same bytes as the recorder stores, segment by segment, in memory.
fn aes_gcm_run(packets: &[Packet]) -> Duration {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};

    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    let start = Instant::now();
    let mut segment = Vec::with_capacity(SEGMENT_BYTES + PACKET_BYTES);
    let mut index = 0u64;
    let mut encrypted = 0usize;
    let mut seal = |segment: &mut Vec<u8>, index: &mut u64| {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&index.to_be_bytes());
        let out = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: segment.as_slice(),
                    aad: &index.to_be_bytes(),
                },
            )
            .unwrap();
        encrypted += out.len();
        segment.clear();
        *index += 1;
    };
    for packet in packets {
        if packet.keyframe && segment.len() >= SEGMENT_BYTES {
            seal(&mut segment, &mut index);
        }
        segment.extend_from_slice(&packet.data);
    }
    seal(&mut segment, &mut index);
    let elapsed = start.elapsed();
    assert!(encrypted >= TOTAL_BYTES);
    elapsed
}

/// Runs `openssl speed -evp aes-256-gcm` on one core over 16 KiB blocks and returns its
/// throughput in bytes per second, or `None` when openssl is missing or its output
/// cannot be parsed.
fn openssl_speed() -> Option<f64> {
    let output = std::process::Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-bytes",
            "16384",
            "-seconds",
            "3",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // The result line reads `AES-256-GCM  5368689.26k`, in thousands of bytes a second.
    let line = text
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("aes-256-gcm"))?;
    let value = line.split_whitespace().last()?.strip_suffix('k')?;
    value
        .parse::<f64>()
        .ok()
        .map(|thousands| thousands * 1000.0)
}

fn main() {
    let packets = packets();
    let dir = tempfile::tempdir().unwrap();
    let mib = TOTAL_BYTES as f64 / f64::from(1 << 20);

    // One warm-up pair, then the measured pair.
    plain_run(&dir.path().join("warm"), &packets);
    recorder_run(&dir.path().join("warm"), &packets);
    aes_gcm_run(&packets);
    let plain = plain_run(dir.path(), &packets);
    let recorded = recorder_run(dir.path(), &packets);
    let aes_only = aes_gcm_run(&packets);
    let openssl = openssl_speed();

    println!(
        "data written:        {mib:.0} MiB in {PACKET_BYTES}-byte packets, {SEGMENT_BYTES}-byte segments"
    );
    println!(
        "plain write:         {:.1} MiB/s ({:?})",
        mib / plain.as_secs_f64(),
        plain
    );
    println!(
        "encrypt and write:   {:.1} MiB/s ({:?})",
        mib / recorded.as_secs_f64(),
        recorded
    );
    println!(
        "AES-256-GCM alone:   {:.1} MiB/s ({:?})",
        mib / aes_only.as_secs_f64(),
        aes_only
    );
    println!(
        "time ratio (recorder / plain write): {:.2}",
        recorded.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "throughput ratio (recorder / AES-256-GCM alone): {:.3}",
        aes_only.as_secs_f64() / recorded.as_secs_f64()
    );
    match openssl {
        Some(bytes_per_second) => {
            let openssl_mib = bytes_per_second / f64::from(1 << 20);
            println!("openssl speed, 1 core: {openssl_mib:.1} MiB/s");
            println!(
                "throughput ratio (recorder / openssl speed -evp aes-256-gcm): {:.3}",
                mib / recorded.as_secs_f64() / openssl_mib
            );
        }
        None => {
            println!("openssl speed: not measured; install openssl to compare with its AES-256-GCM")
        }
    }
}
