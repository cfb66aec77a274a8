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
        checkpoint_interval: std::time::Duration::from_secs(1),
    }
}

/// Names of the checkpoint parts a recording holds in the store, sorted.
pub fn part_names(storage: &dyn recorder::Storage, id: Uuid) -> Vec<String> {
    storage
        .list(id)
        .expect("list recording")
        .into_iter()
        .map(|object| object.name)
        .filter(|name| name.starts_with("part-"))
        .collect()
}

/// Waits until the part thread has stored object `name`, at most ten seconds.
pub fn wait_for_object(storage: &dyn recorder::Storage, id: Uuid, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !storage
        .list(id)
        .expect("list")
        .iter()
        .any(|o| o.name == name)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} was not stored within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Name of checkpoint part `part` of segment `index`.
pub fn part_name(index: u64, part: u32) -> String {
    format!("part-{index:08}-{part:06}.srp")
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

/// Segments of 4 s with a checkpoint every second, the broker's defaults.
pub fn checkpoint_config() -> RecorderConfig {
    RecorderConfig {
        target_segment_duration: std::time::Duration::from_secs(4),
        ..test_config()
    }
}

/// A synthetic stream at 30 packets a second with a keyframe every 3 s, as the agent
/// sends by default, up to but excluding pts `until_us`.
pub fn agent_like_packets(until_us: u64) -> Vec<Packet> {
    synthetic_packets(until_us.div_ceil(1_000_000), 30, 90)
        .take_while(|p| p.pts_us < until_us)
        .collect()
}

/// Writes `packets` into a new recording with [`checkpoint_config`] and drops the writer
/// without sealing, which leaves the store as a killed process would. Returns the
/// recording id and the segments stored whole.
pub fn write_and_crash(
    storage: std::sync::Arc<dyn recorder::Storage>,
    keys: &LocalKeyStore,
    packets: &[Packet],
) -> (Uuid, Vec<SegmentStored>) {
    let mut writer = RecordingWriter::create(
        storage,
        keys,
        checkpoint_config(),
        new_recording(default_expiry()),
    )
    .expect("writer");
    let stored = write_all(&mut writer, packets.iter().cloned());
    let id = writer.id();
    drop(writer);
    (id, stored)
}

/// Seals a crashed recording with every segment recovery finds intact, then checks that
/// it holds exactly `expected`: replayed, after a seek into the rebuilt last segment, and
/// exported, and that its segments match the hashes an audit trail would hold (`stored`
/// plus the rebuilt segment). Returns the recovery report.
pub fn seal_and_check_recovered(
    storage: std::sync::Arc<dyn recorder::Storage>,
    keys: &LocalKeyStore,
    id: Uuid,
    stored: &[SegmentStored],
    expected: &[Packet],
) -> recorder::RecoveryReport {
    use recorder::{Record, RecordingReader};

    let report = recorder::recover_recording(storage.as_ref(), keys, id).expect("recover");
    let mut chain = stored.to_vec();
    chain.extend(report.assembled.iter().map(|a| a.segment.clone()));
    assert_eq!(report.intact, chain);
    assert_eq!(report.contiguous, chain.len() as u64);
    assert!(part_names(storage.as_ref(), id).is_empty());
    let sealed = recorder::seal_recovered(storage.as_ref(), keys, id, report.contiguous)
        .expect("seal recovered");
    assert_eq!(sealed.manifest.segments, chain);

    let mut reader = RecordingReader::open(storage.clone(), keys, id).expect("open");
    assert!(reader.is_sealed());
    let packets = |records: Vec<Record>| -> Vec<Packet> {
        records
            .into_iter()
            .filter_map(|r| match r {
                Record::Packet(p) => Some(p),
                _ => None,
            })
            .collect()
    };
    let all = reader
        .records()
        .collect::<Result<Vec<_>, _>>()
        .expect("replay");
    assert_eq!(packets(all), expected);

    let last = chain.last().expect("a segment");
    let first_pts = expected[0].pts_us;
    let target = std::time::Duration::from_micros(last.end_pts_us - first_pts);
    let seeked = reader
        .seek(target)
        .expect("seek")
        .collect::<Result<Vec<_>, _>>();
    let seeked = packets(seeked.expect("records after seek"));
    assert!(seeked[0].keyframe && seeked[0].pts_us >= last.start_pts_us);
    assert_eq!(seeked.last(), expected.last());

    assert!(
        recorder::verify_recording(storage.as_ref(), id, &hashes(&chain))
            .expect("verify")
            .is_intact()
    );
    reader.require_hashes(hashes(&chain)).expect("hashes match");
    let mut stream = Vec::new();
    let summary = recorder::send_recording(&reader, || Ok(&mut stream)).expect("export");
    assert_eq!(summary.packets, expected.len() as u64);
    report
}
