//! Helpers shared by the recorder's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, TimeZone, Utc};
use recorder::{
    LocalDirStorage, LocalKeyStore, NewRecording, Packet, PeriodLength, RecorderConfig,
    RecordingWriter, SegmentStored, StreamConfig,
};
use uuid::Uuid;

/// A storage root and a key directory in a fresh temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub storage: Arc<LocalDirStorage>,
    pub keys: LocalKeyStore,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let storage =
            Arc::new(LocalDirStorage::open(dir.path().join("recordings")).expect("storage"));
        let keys = LocalKeyStore::open(dir.path().join("keys")).expect("key store");
        Fixture { dir, storage, keys }
    }

    pub fn recording_dir(&self, id: Uuid) -> PathBuf {
        self.storage.recording_dir(id)
    }

    pub fn writer(&self, config: RecorderConfig, expires_at: DateTime<Utc>) -> RecordingWriter {
        RecordingWriter::create(
            self.storage.clone(),
            &self.keys,
            config,
            new_recording(expires_at),
        )
        .expect("writer")
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 9, 0, 0).unwrap()
}

pub fn new_recording(expires_at: DateTime<Utc>) -> NewRecording {
    NewRecording {
        id: Uuid::new_v4(),
        created_at: t0(),
        expires_at,
        stream: Some(vp8_config()),
    }
}

pub fn vp8_config() -> StreamConfig {
    StreamConfig {
        codec: "vp8".into(),
        width: 1280,
        height: 720,
    }
}

pub fn default_expiry() -> DateTime<Utc> {
    t0() + Duration::days(90)
}

/// Small segments so that short synthetic streams span many of them.
pub fn test_config() -> RecorderConfig {
    RecorderConfig {
        target_segment_duration: std::time::Duration::from_secs(2),
        target_segment_bytes: 1 << 20,
        max_segment_bytes: 8 << 20,
        max_packet_bytes: 1 << 20,
        recording_byte_budget: 1 << 30,
        period_length: PeriodLength::Day,
    }
}

/// Generates a synthetic stream on its own clock: `fps` packets per second, a keyframe every
/// `gop` packets, content derived from the packet number so every packet differs.
pub fn synthetic_packets(seconds: u64, fps: u64, gop: u64) -> impl Iterator<Item = Packet> {
    (0..seconds * fps).map(move |i| {
        let keyframe = i % gop == 0;
        let len = if keyframe { 1500 } else { 120 };
        let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect();
        Packet {
            pts_us: i * 1_000_000 / fps,
            keyframe,
            data: Bytes::from(data),
        }
    })
}

/// Writes all packets and returns the segments stored along the way, including the
/// one stored by `seal`.
pub fn write_all(
    writer: &mut RecordingWriter,
    packets: impl IntoIterator<Item = Packet>,
) -> Vec<SegmentStored> {
    let mut stored = Vec::new();
    for packet in packets {
        if let Some(segment) = writer.push_packet(packet).expect("push packet") {
            stored.push(segment);
        }
    }
    stored
}

pub fn hashes(segments: &[SegmentStored]) -> Vec<[u8; 32]> {
    segments.iter().map(|s| s.sha256).collect()
}

pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("seg-{index:08}.srs"))
}

/// A tmpfs mounted for one test and unmounted on drop, to produce real ENOSPC and EROFS
/// errors. Needs root, as CI runs.
pub struct TmpfsMount {
    pub dir: tempfile::TempDir,
}

impl TmpfsMount {
    pub fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed; these tests need root"
        );
        TmpfsMount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remounting read-only failed");
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
