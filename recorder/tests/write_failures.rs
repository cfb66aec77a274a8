//! Fail-closed writes: real read-only and full file systems (tmpfs, needs root) and
//! byte budgets.

mod common;

use std::sync::Arc;

use common::*;
use recorder::{
    LocalDirStorage, LocalKeyStore, RecorderConfig, RecorderError, RecordingReader,
    RecordingWriter, StorageError, check_writable,
};

#[test]
fn byte_budget_stops_the_writer() {
    let fx = Fixture::new();
    let mut config = test_config();
    config.recording_byte_budget = 40_000;
    let mut writer = fx.writer(config, default_expiry());
    let id = writer.id();

    let mut accepted = Vec::new();
    let mut error = None;
    for packet in synthetic_packets(60, 30, 30) {
        match writer.push_packet(packet.clone()) {
            Ok(_) => accepted.push(packet),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("the budget must run out");
    assert!(
        matches!(error, RecorderError::BudgetExceeded { budget: 40_000, required, .. } if required > 40_000),
        "{error}"
    );
    assert!(matches!(
        writer.push_packet(accepted[0].clone()),
        Err(RecorderError::WriterFailed(_))
    ));

    // Everything accepted before the error is kept and within budget.
    let sealed = writer.seal().unwrap();
    let total: u64 = sealed.manifest.segments.iter().map(|s| s.bytes).sum();
    assert!(total <= 40_000, "stored {total} bytes");
    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    let packets = reader
        .records()
        .filter_map(|r| match r.unwrap() {
            recorder::Record::Packet(p) => Some(p),
            _ => None,
        })
        .count();
    assert_eq!(packets, accepted.len());
}

#[test]
fn read_only_storage_fails_preflight_and_writes() {
    let mount = TmpfsMount::new("4m");
    let storage = Arc::new(LocalDirStorage::open(mount.path().join("recordings")).unwrap());
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(keys_dir.path().join("keys")).unwrap();
    let mut config = test_config();
    config.recording_byte_budget = 1 << 20;
    check_writable(storage.as_ref(), &keys, &config).unwrap();

    let mut writer = RecordingWriter::create(
        storage.clone(),
        &keys,
        config.clone(),
        new_recording(default_expiry()),
    )
    .unwrap();
    let mut packets = synthetic_packets(10, 30, 30);
    for packet in packets.by_ref().take(30) {
        writer.push_packet(packet).unwrap();
    }
    mount.remount_read_only();

    let error = check_writable(storage.as_ref(), &keys, &config).unwrap_err();
    assert!(
        matches!(error, RecorderError::Storage(StorageError::Io { .. })),
        "{error}"
    );

    // The next write fails with the file system's error: the checkpoint part at 1 s,
    // reported at the next packet after the part thread met it, or the segment cut at
    // 2 s.
    let error = packets
        .find_map(|p| writer.push_packet(p).err())
        .expect("write must fail");
    let RecorderError::Storage(StorageError::Io { source, .. }) = &error else {
        panic!("expected an I/O error, got {error}");
    };
    assert_eq!(source.raw_os_error(), Some(30), "EROFS: {source}");
    assert!(matches!(writer.seal(), Err(RecorderError::Storage(_))));
}

#[test]
fn failed_part_write_fails_the_writer() {
    let mount = TmpfsMount::new("4m");
    let storage = Arc::new(LocalDirStorage::open(mount.path().join("recordings")).unwrap());
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(keys_dir.path().join("keys")).unwrap();
    // No segment is cut in this stream, so only a checkpoint part can fail.
    let config = RecorderConfig {
        target_segment_duration: std::time::Duration::from_secs(3600),
        ..checkpoint_config()
    };
    let mut writer =
        RecordingWriter::create(storage, &keys, config, new_recording(default_expiry())).unwrap();
    let mut packets = synthetic_packets(30, 30, 30);
    for packet in packets.by_ref().take(15) {
        writer.push_packet(packet).unwrap();
    }
    mount.remount_read_only();

    let error = packets
        .by_ref()
        .find_map(|p| writer.push_packet(p).err())
        .expect("the part write must fail the writer");
    let RecorderError::Storage(StorageError::Io { source, .. }) = &error else {
        panic!("expected an I/O error, got {error}");
    };
    assert_eq!(source.raw_os_error(), Some(30), "EROFS: {source}");
    let next = packets.next().unwrap();
    assert!(matches!(
        writer.push_packet(next),
        Err(RecorderError::WriterFailed(_))
    ));
}

#[test]
fn full_disk_fails_with_disk_full_error() {
    let mount = TmpfsMount::new("256k");
    let storage = Arc::new(LocalDirStorage::open(mount.path().join("recordings")).unwrap());
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = LocalKeyStore::open(keys_dir.path().join("keys")).unwrap();
    let mut config = test_config();

    // The pre-flight check wants room for a whole byte budget.
    config.recording_byte_budget = 1 << 30;
    let error = check_writable(storage.as_ref(), &keys, &config).unwrap_err();
    assert!(
        matches!(error, RecorderError::Storage(StorageError::InsufficientSpace { required, .. }) if required == 1 << 30),
        "{error}"
    );

    let mut writer =
        RecordingWriter::create(storage, &keys, config, new_recording(default_expiry())).unwrap();
    let mut error = None;
    for packet in synthetic_packets(600, 30, 30) {
        if let Err(e) = writer.push_packet(packet) {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the disk must fill up");
    let RecorderError::Storage(storage_error) = &error else {
        panic!("expected a storage error, got {error}");
    };
    assert!(storage_error.is_disk_full(), "{storage_error}");
    // No partial temporary file is left behind once the part thread has stopped.
    let dir = mount
        .path()
        .join("recordings")
        .join(writer.id().to_string());
    drop(writer);
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn missing_period_key_fails_recording_start() {
    let fx = Fixture::new();
    // A key store whose directory disappeared cannot create the period key.
    std::fs::remove_dir_all(fx.keys.dir()).unwrap();
    let error = RecordingWriter::create(
        fx.storage.clone(),
        &fx.keys,
        test_config(),
        new_recording(default_expiry()),
    )
    .unwrap_err();
    assert!(matches!(error, RecorderError::Key(_)), "{error}");
}

#[test]
fn invalid_config_names_the_value() {
    let config = RecorderConfig {
        target_segment_bytes: 10 << 20,
        max_segment_bytes: 1 << 20,
        ..RecorderConfig::default()
    };
    let error = config.validate().unwrap_err();
    assert!(
        error.to_string().contains("target_segment_bytes"),
        "{error}"
    );

    let fx = Fixture::new();
    let mut new = new_recording(default_expiry());
    new.expires_at = new.created_at;
    let error =
        RecordingWriter::create(fx.storage.clone(), &fx.keys, test_config(), new).unwrap_err();
    assert!(error.to_string().contains("expires_at"), "{error}");
}
