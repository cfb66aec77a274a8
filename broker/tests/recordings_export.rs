//! Evidence export of a real VP8 recording, each test on SQLite and on PostgreSQL. The
//! WebM file plays with the right duration per ffprobe, the signed manifest verifies
//! offline against the pinned public key, and any change to the video, the manifest or
//! the key is caught.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::audit::{Action, Actor, AuditLog, EventBuilder};
use broker::both_backends;
use broker::clock::SystemClock;
use broker::recordings::{self, evidence};
use broker::testing::TestDatabase;
use bytes::Bytes;
use chrono::Utc;
use recorder::{NewRecording, Packet, RecorderConfig, RecordingWriter, StreamConfig};
use uuid::Uuid;

const SECONDS: u32 = 6;

fn config(dir: &Path) -> broker::config::Config {
    config_with_mux(dir, Path::new(env!("CARGO_BIN_EXE_strongroom")))
}

fn config_with_mux(dir: &Path, mux_program: &Path) -> broker::config::Config {
    config_with_mux_timeout(dir, mux_program, None)
}

fn config_with_mux_timeout(
    dir: &Path,
    mux_program: &Path,
    timeout_seconds: Option<u64>,
) -> broker::config::Config {
    let mut env = vec![
        ("STRONGROOM_DATA_DIR".to_owned(), dir.display().to_string()),
        (
            "STRONGROOM_SESSIONS__EXPORT_MUX_PROGRAM".to_owned(),
            mux_program.display().to_string(),
        ),
    ];
    if let Some(seconds) = timeout_seconds {
        env.push((
            "STRONGROOM_SESSIONS__EXPORT_MUX_TIMEOUT_SECONDS".to_owned(),
            seconds.to_string(),
        ));
    }
    broker::config::load(None, env).expect("test configuration is valid")
}

/// Encodes ffmpeg's test pattern to VP8 at ten frames a second, a keyframe each second,
/// and returns `(pts_us, keyframe, data)` per frame from the IVF file.
fn synthetic_vp8(dir: &Path) -> Vec<(u64, bool, Vec<u8>)> {
    synthetic_vp8_sized(dir, "synthetic", "160x120")
}

/// Encodes the test pattern as [`synthetic_vp8`] does, at picture size `size`
/// (`WIDTHxHEIGHT`), into `dir/NAME.ivf`.
fn synthetic_vp8_sized(dir: &Path, name: &str, size: &str) -> Vec<(u64, bool, Vec<u8>)> {
    let path = dir.join(format!("{name}.ivf"));
    let output = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=duration={SECONDS}:size={size}:rate=10"))
        .args([
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "10",
            "-f",
            "ivf",
        ])
        .arg(&path)
        .output()
        .expect("ffmpeg runs (Debian package ffmpeg)");
    assert!(
        output.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = std::fs::read(&path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    let (rate, scale) = (u64::from(u32_at(16)), u64::from(u32_at(20)));
    let mut frames = Vec::new();
    let mut at = usize::from(u16::from_le_bytes([file[6], file[7]]));
    while at + 12 <= file.len() {
        let size = u32_at(at) as usize;
        let pts = u64::from_le_bytes(file[at + 4..at + 12].try_into().unwrap());
        let data = file[at + 12..at + 12 + size].to_vec();
        // In VP8, bit 0 of the first byte is 0 for a keyframe.
        frames.push((pts * scale * 1_000_000 / rate, data[0] & 1 == 0, data));
        at += 12 + size;
    }
    frames
}

/// Records the synthetic stream and audits its segment hashes. With `crash`, the writer
/// is dropped without sealing, as when the broker is killed, so the open segment is left
/// as checkpoint parts for recovery.
async fn record(config: &broker::config::Config, audit: &AuditLog, crash: bool) -> Uuid {
    let (storage, keys) = recordings::stores(config).unwrap();
    let frames = synthetic_vp8(&config.data_dir);
    let id = Uuid::new_v4();
    let now = Utc::now();
    let segments = tokio::task::spawn_blocking(move || {
        let recorder_config = RecorderConfig {
            target_segment_duration: Duration::from_secs(2),
            ..RecorderConfig::default()
        };
        let new = NewRecording {
            id,
            created_at: now,
            expires_at: now + chrono::Duration::days(90),
            stream: Some(StreamConfig {
                codec: "vp8".into(),
                width: 160,
                height: 120,
            }),
        };
        let mut writer =
            RecordingWriter::create(storage, keys.as_ref(), recorder_config, new).unwrap();
        let mut segments = Vec::new();
        for (pts_us, keyframe, data) in frames {
            let packet = Packet {
                pts_us,
                keyframe,
                data: Bytes::from(data),
            };
            segments.extend(writer.push_packet(packet).unwrap());
        }
        if !crash {
            segments.extend(writer.seal().unwrap().final_segment);
        }
        segments
    })
    .await
    .unwrap();
    for segment in &segments {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .target(format!("recording:{id}"))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .build();
        audit.append(event).await.unwrap();
    }
    id
}

fn ffprobe_duration(path: &Path) -> f64 {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=noprint_wrappers=1:nokey=1",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no duration from ffprobe: {output:?}"))
}

both_backends!(export_verifies_offline, export_verifies_offline_body);
async fn export_verifies_offline_body(database: TestDatabase) {
    let config = config(database.dir.path());
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let id = record(&config, &audit, false).await;

    let dir = database.dir.path().join("export");
    let manifest = evidence::export(&config, &audit, id, &dir).await.unwrap();
    assert_eq!(manifest.recording_id, id);
    assert_eq!(manifest.segment_sha256.len(), SECONDS as usize / 2);
    let exported = audit
        .list(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.exported")
        .count();
    assert_eq!(exported, 1);

    // The evidence shows a banking session: only the exporting account may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "export directory");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }

    // ffprobe reads a duration within a frame of the recording's length.
    let duration = ffprobe_duration(&dir.join(evidence::VIDEO_FILE));
    assert!(
        (duration - f64::from(SECONDS)).abs() <= 0.15,
        "ffprobe duration {duration} s"
    );

    let key_file = database.dir.path().join("export.pub");
    evidence::write_public_key(&config, &key_file).unwrap();
    let public_key = evidence::read_public_key(&key_file).unwrap();
    assert_eq!(evidence::verify(&dir, &public_key).unwrap(), manifest);

    // The command verifies on a machine with neither configuration nor database, and
    // writes nothing where it runs.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("STRONGROOM_")) {
        command.env_remove(name);
    }
    let verified = command
        .args(["recording", "verify-export"])
        .arg(&dir)
        .arg("--public-key")
        .arg(&key_file)
        .env("STRONGROOM_SERVER__LISTEN", "not an address")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{verified:?}");
    assert!(stdout.contains("signature valid"), "{stdout}");
    let left = std::fs::read_dir(elsewhere.path()).unwrap().count();
    assert_eq!(left, 0, "verify-export wrote into its working directory");

    // An export into a directory that is not empty is rejected.
    let error = evidence::export(&config, &audit, id, &dir)
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("not empty"), "{error:#}");

    // A key other than the pinned one is rejected.
    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("other.pub");
    evidence::write_public_key(&self::config(other.path()), &other_key).unwrap();
    let error =
        evidence::verify(&dir, &evidence::read_public_key(&other_key).unwrap()).unwrap_err();
    assert!(format!("{error:#}").contains("signature"), "{error:#}");

    // A changed manifest is rejected.
    let manifest_path = dir.join(evidence::MANIFEST_FILE);
    let original = std::fs::read(&manifest_path).unwrap();
    let edited = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"duration_ms\": ", "\"duration_ms\": 1");
    assert_ne!(edited.as_bytes(), original.as_slice());
    std::fs::write(&manifest_path, edited).unwrap();
    let error = evidence::verify(&dir, &public_key).unwrap_err();
    assert!(format!("{error:#}").contains("signature"), "{error:#}");
    std::fs::write(&manifest_path, original).unwrap();

    // A flipped byte in the video is rejected.
    let video = dir.join(evidence::VIDEO_FILE);
    let mut bytes = std::fs::read(&video).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&video, bytes).unwrap();
    let error = evidence::verify(&dir, &public_key).unwrap_err();
    assert!(
        format!("{error:#}").contains("does not match the signed manifest"),
        "{error:#}"
    );
}

both_backends!(damaged_recording_verify_is_audited, damaged_verify_body);
async fn damaged_verify_body(database: TestDatabase) {
    let config = config(database.dir.path());
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let id = record(&config, &audit, false).await;
    let segment = config
        .sessions
        .recordings_dir
        .join(id.to_string())
        .join("seg-00000001.srs");
    let mut bytes = std::fs::read(&segment).expect("segment 1 exists");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    let report = broker::recordings::verify(&config, &audit, id).await.unwrap();

    assert!(!report.is_intact());
    let target = format!("recording:{id}");
    let events: Vec<_> = audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.verification.failed")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].target.as_deref(), Some(target.as_str()));
    assert!(events[0].details.contains("segment 1"), "{}", events[0].details);
}

both_backends!(
    interrupted_recording_exports_after_recovery,
    interrupted_recording_exports_after_recovery_body
);
async fn interrupted_recording_exports_after_recovery_body(database: TestDatabase) {
    let config = config(database.dir.path());
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let id = record(&config, &audit, true).await;
    broker::recordings::catalogue::insert(
        &database.db,
        &broker::recordings::catalogue::NewEntry {
            id,
            session_id: Uuid::new_v4(),
            user_id: "alice".into(),
            site: "demo-bank".into(),
            instance_id: "export-test".into(),
            started_at: Utc::now(),
            expires_at: Utc::now() + chrono::Duration::days(90),
        },
    )
    .await
    .unwrap();

    let (storage, keys) = recordings::stores(&config).unwrap();
    let results =
        broker::recordings::catalogue::seal_interrupted(&audit, storage, keys, &[id]).await;
    assert_eq!(
        results,
        [(
            id,
            broker::recordings::catalogue::Recovered::Sealed { segment_count: 3 }
        )]
    );

    // The two segments stored before the crash and the third rebuilt from its parts,
    // which end before the frame at 5.9 s of the 6 s stream, export and verify.
    let dir = database.dir.path().join("export");
    let manifest = evidence::export(&config, &audit, id, &dir).await.unwrap();
    assert_eq!(manifest.segment_sha256.len(), 3);
    let duration = ffprobe_duration(&dir.join(evidence::VIDEO_FILE));
    assert!(
        (duration - 5.9).abs() <= 0.15,
        "ffprobe duration {duration} s"
    );
    let key_file = database.dir.path().join("export.pub");
    evidence::write_public_key(&config, &key_file).unwrap();
    let public_key = evidence::read_public_key(&key_file).unwrap();
    evidence::verify(&dir, &public_key).unwrap();
}

both_backends!(
    recording_without_video_fails_export_by_name,
    recording_without_video_fails_export_by_name_body
);
async fn recording_without_video_fails_export_by_name_body(database: TestDatabase) {
    use broker::recordings::catalogue;

    let config = config(database.dir.path());
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let (storage, keys) = recordings::stores(&config).unwrap();
    let id = Uuid::new_v4();
    let now = Utc::now();
    catalogue::insert(
        &database.db,
        &catalogue::NewEntry {
            id,
            session_id: Uuid::new_v4(),
            user_id: "alice".into(),
            site: "demo-bank".into(),
            instance_id: "export-test".into(),
            started_at: now,
            expires_at: now + chrono::Duration::days(90),
        },
    )
    .await
    .unwrap();
    // Killed before the first keyframe: the recording holds its metadata only.
    let new = NewRecording {
        id,
        created_at: now,
        expires_at: now + chrono::Duration::days(90),
        stream: None,
    };
    drop(
        RecordingWriter::create(
            storage.clone(),
            keys.as_ref(),
            RecorderConfig::default(),
            new,
        )
        .unwrap(),
    );
    let results = catalogue::seal_interrupted(&audit, storage, keys, &[id]).await;
    assert_eq!(
        results,
        [(id, catalogue::Recovered::Sealed { segment_count: 0 })]
    );

    let dir = database.dir.path().join("export");
    let error = evidence::export(&config, &audit, id, &dir)
        .await
        .expect_err("a recording without video has nothing to export");
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("Recording {id} holds no video"))
            && message.contains("the broker stopped before the first keyframe"),
        "{message}"
    );
    assert!(!dir.exists(), "a failed export leaves no directory");
}

/// Reads `/proc/PID/status` field `name`, such as `Uid`.
fn proc_status(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn mux_child_holds_no_keys_or_privileges() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let frames = synthetic_vp8(dir.path());
    let settings = recordings::mux::MuxSettings::from_config(&config).unwrap();
    let output_path = dir.path().join("direct.webm");
    let output = std::fs::File::create(&output_path).unwrap();

    let mut child = recordings::mux::MuxChild::spawn(&settings, output).unwrap();
    let pid = child.id();

    // Everything below is read once the child waits in read(2) on stdin, its start-up
    // finished: /proc/PID/syscall then starts with the read system call's number and
    // descriptor 0.
    #[cfg(target_arch = "x86_64")]
    const READ_ON_STDIN: &str = "0 0x0 ";
    #[cfg(target_arch = "aarch64")]
    const READ_ON_STDIN: &str = "63 0x0 ";
    let reading_stdin = || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|syscall| syscall.starts_with(READ_ON_STDIN))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !reading_stdin() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reading_stdin(), "the mux child never waited on its stdin");

    let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environment.is_empty(),
        "environment: {}",
        String::from_utf8_lossy(&environment)
    );
    let arguments = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let arguments: Vec<&[u8]> = arguments
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(
        arguments,
        [
            env!("CARGO_BIN_EXE_strongroom").as_bytes(),
            b"recording",
            b"mux"
        ]
    );
    let mut descriptors: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    descriptors.sort();
    assert_eq!(descriptors, [0, 1, 2]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        output_path
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    if nix::unistd::geteuid().is_root() {
        assert_eq!(proc_status(pid, "Uid"), "65534 65534 65534 65534");
        assert_eq!(proc_status(pid, "Gid"), "65534 65534 65534 65534");
        assert_eq!(proc_status(pid, "Groups"), "");
        assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    }

    // The same child muxes the stream into a file that ffprobe reads.
    let stream_config = StreamConfig {
        codec: "vp8".into(),
        width: 160,
        height: 120,
    };
    let mut stream = recorder::MuxWriter::start(child.take_stdin(), &stream_config).unwrap();
    for (pts_us, keyframe, data) in frames {
        let packet = Packet {
            pts_us,
            keyframe,
            data: Bytes::from(data),
        };
        stream.packet(&packet).unwrap();
    }
    drop(stream.finish().unwrap());
    child.wait().unwrap();
    let duration = ffprobe_duration(&output_path);
    assert!(
        (duration - f64::from(SECONDS)).abs() <= 0.15,
        "ffprobe duration {duration} s"
    );
}

both_backends!(
    mux_crash_fails_export_without_output,
    mux_crash_fails_export_without_output_body
);
async fn mux_crash_fails_export_without_output_body(database: TestDatabase) {
    use std::os::unix::fs::PermissionsExt;

    // A mux program that reads part of the stream and then dies of SIGSEGV. Its
    // directory is world-readable, so the child can run it after dropping to nobody.
    let programs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(programs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let crash = programs.path().join("crashing-mux");
    std::fs::write(&crash, "#!/bin/sh\nhead -c 100 >/dev/null\nkill -SEGV $$\n").unwrap();
    std::fs::set_permissions(&crash, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = config_with_mux(database.dir.path(), &crash);
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let id = record(&config, &audit, false).await;

    let dir = database.dir.path().join("export");
    let error = evidence::export(&config, &audit, id, &dir)
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("mux process"), "{message}");
    assert!(message.contains("killed by signal 11"), "{message}");

    // The export created the directory, so it removed it again.
    assert!(!dir.exists(), "the failed export left {}", dir.display());
    assert_eq!(export_failures(&audit, id).await.len(), 1);
    let exported = audit
        .list(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.exported")
        .count();
    assert_eq!(exported, 0);
}

/// Returns the `reason` of each `recording.export.failed` event of recording `id`.
async fn export_failures(audit: &AuditLog, id: Uuid) -> Vec<String> {
    audit
        .list_for_target(&format!("recording:{id}"), Action::RecordingExportFailed)
        .await
        .unwrap()
        .into_iter()
        .map(|event| {
            let details: serde_json::Value = serde_json::from_str(&event.details).unwrap();
            details["reason"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// Lists the processes of process group `group` that are not zombies.
fn live_group_members(group: i32) -> Vec<String> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap() {
        let entry = entry.unwrap();
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, pgrp, ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == group.to_string() && fields[0] != "Z" {
            members.push(stat.trim().to_owned());
        }
    }
    members
}

both_backends!(
    hung_mux_times_out_without_output,
    hung_mux_times_out_without_output_body
);
async fn hung_mux_times_out_without_output_body(database: TestDatabase) {
    use std::os::unix::fs::PermissionsExt;

    // A mux program that records its process id, starts a grandchild and never reads
    // or exits. The directory is writable by everyone, because the child may run as
    // nobody.
    let programs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(programs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pid_file = programs.path().join("mux.pid");
    let hung = programs.path().join("hung-mux");
    std::fs::write(
        &hung,
        format!(
            "#!/bin/sh\necho $$ > {}\nsleep 3600 &\nsleep 3600\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hung, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = config_with_mux_timeout(database.dir.path(), &hung, Some(2));
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let id = record(&config, &audit, false).await;

    let dir = database.dir.path().join("export");
    let started = std::time::Instant::now();
    let error = evidence::export(&config, &audit, id, &dir)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    let message = format!("{error:#}");
    assert!(message.contains("did not finish within 2 s"), "{message}");
    assert!(
        message.contains("sessions.export_mux_timeout_seconds"),
        "{message}"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert!(!dir.exists(), "the failed export left {}", dir.display());
    let reasons = export_failures(&audit, id).await;
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].contains("did not finish"), "{reasons:?}");

    let group: i32 = std::fs::read_to_string(&pid_file)
        .expect("the hung program wrote its process id")
        .trim()
        .parse()
        .unwrap();
    let left = live_group_members(group);
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// Records the synthetic stream at 160x120, then a resize to 320x240 and the stream at
/// that size with timestamps that go on from the first part, and audits the segment
/// hashes.
async fn record_resized(config: &broker::config::Config, audit: &AuditLog) -> Uuid {
    let (storage, keys) = recordings::stores(config).unwrap();
    let small = synthetic_vp8_sized(&config.data_dir, "small", "160x120");
    let large = synthetic_vp8_sized(&config.data_dir, "large", "320x240");
    let offset_us = u64::from(SECONDS) * 1_000_000;
    let id = Uuid::new_v4();
    let now = Utc::now();
    let stream = |width, height| StreamConfig {
        codec: "vp8".into(),
        width,
        height,
    };
    let segments = tokio::task::spawn_blocking(move || {
        let recorder_config = RecorderConfig {
            target_segment_duration: Duration::from_secs(2),
            ..RecorderConfig::default()
        };
        let new = NewRecording {
            id,
            created_at: now,
            expires_at: now + chrono::Duration::days(90),
            stream: Some(stream(160, 120)),
        };
        let mut writer =
            RecordingWriter::create(storage, keys.as_ref(), recorder_config, new).unwrap();
        let mut segments = Vec::new();
        for (pts_us, keyframe, data) in small {
            let packet = Packet {
                pts_us,
                keyframe,
                data: Bytes::from(data),
            };
            segments.extend(writer.push_packet(packet).unwrap());
        }
        writer.push_config(stream(320, 240)).unwrap();
        for (pts_us, keyframe, data) in large {
            let packet = Packet {
                pts_us: pts_us + offset_us,
                keyframe,
                data: Bytes::from(data),
            };
            segments.extend(writer.push_packet(packet).unwrap());
        }
        segments.extend(writer.seal().unwrap().final_segment);
        segments
    })
    .await
    .unwrap();
    for segment in &segments {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .target(format!("recording:{id}"))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .build();
        audit.append(event).await.unwrap();
    }
    id
}

/// Returns `WIDTHxHEIGHT` of every frame that ffprobe decodes from `path`.
fn ffprobe_frame_sizes(path: &Path) -> Vec<String> {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=width,height",
            "-of",
            "csv=p=0:s=x",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "ffprobe reported decoding errors: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

both_backends!(resized_recording_exports, resized_recording_exports_body);
async fn resized_recording_exports_body(database: TestDatabase) {
    let config = config(database.dir.path());
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let id = record_resized(&config, &audit).await;

    let dir = database.dir.path().join("export");
    let manifest = evidence::export(&config, &audit, id, &dir).await.unwrap();

    let video = dir.join(evidence::VIDEO_FILE);
    let duration = ffprobe_duration(&video);
    assert!(
        (duration - f64::from(2 * SECONDS)).abs() <= 0.15,
        "ffprobe duration {duration} s"
    );
    assert!(
        manifest.duration_ms.abs_diff(u64::from(2 * SECONDS) * 1000) <= 150,
        "manifest duration {} ms",
        manifest.duration_ms
    );
    let sizes = ffprobe_frame_sizes(&video);
    let frames = (SECONDS * 10) as usize;
    assert_eq!(sizes.len(), 2 * frames, "every frame decodes");
    assert!(
        sizes[..frames].iter().all(|size| size == "160x120"),
        "{sizes:?}"
    );
    assert!(
        sizes[frames..].iter().all(|size| size == "320x240"),
        "{sizes:?}"
    );
}
