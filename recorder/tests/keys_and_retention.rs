//! Key hierarchy, key destruction and retention against real key files.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use chrono::Duration;
use common::*;
use recorder::{
    KekId, KeyError, KeyStore, LocalKeyStore, RecorderError, RecordingReader, RetentionPeriod,
    SecretKey, place_hold, sweep_retention,
};
use uuid::Uuid;

fn write_small(fx: &Fixture, expires_at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let mut writer = fx.writer(test_config(), expires_at);
    write_all(&mut writer, synthetic_packets(3, 10, 10));
    writer.seal().unwrap();
    writer.id()
}

fn readable(fx: &Fixture, id: Uuid) -> bool {
    match RecordingReader::open(fx.storage.clone(), &fx.keys, id) {
        Ok(reader) => reader.records().all(|r| r.is_ok()),
        Err(RecorderError::Key(KeyError::NotFound(_))) => false,
        Err(error) => panic!("unexpected error opening {id}: {error}"),
    }
}

#[test]
fn key_files_are_private_and_debug_redacted() {
    let fx = Fixture::new();
    let id = write_small(&fx, default_expiry());
    let key_dir = fx.keys.dir();
    assert_eq!(
        fs::metadata(key_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files: Vec<_> = fs::read_dir(key_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one period key: {files:?}");
    assert_eq!(
        fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(fs::metadata(&files[0]).unwrap().len(), 32);

    let key = SecretKey::generate().unwrap();
    let debug = format!("{key:?} {:?}", fx.keys);
    assert!(!debug.contains(&hex::encode(key.expose_secret())));
    assert!(debug.contains("redacted"));
    assert!(readable(&fx, id));
}

#[test]
fn key_store_rejects_readable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    fs::create_dir(&keys).unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o755)).unwrap();
    let error = LocalKeyStore::open(&keys).unwrap_err();
    assert!(
        matches!(error, KeyError::InsecurePermissions { mode: 0o755, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("chmod 700"));
}

#[test]
fn key_ids_are_validated() {
    assert!(KekId::new("period-2026-03").is_ok());
    for bad in ["", "../etc", "Period", "a/b", &"x".repeat(65)] {
        assert!(
            matches!(KekId::new(bad), Err(KeyError::InvalidId(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn destroying_period_key_makes_recordings_unreadable() {
    let fx = Fixture::new();
    let expires = default_expiry();
    let first = write_small(&fx, expires);
    let second = write_small(&fx, expires + Duration::hours(1));
    let other_period = write_small(&fx, expires + Duration::days(1));
    assert!(readable(&fx, first));
    assert!(readable(&fx, second));
    assert!(readable(&fx, other_period));

    let period = test_config().period_length.period_for(expires);
    fx.keys.destroy(&period.kek_id).unwrap();

    assert!(!readable(&fx, first));
    assert!(!readable(&fx, second));
    assert!(
        readable(&fx, other_period),
        "another period's recordings stay readable"
    );
    // The segment files are still there: only the key is gone.
    assert!(fx.recording_dir(first).join("seg-00000000.srs").exists());
    // A restored copy of the metadata and segments cannot be decrypted either.
    let error = RecordingReader::open(fx.storage.clone(), &fx.keys, first).unwrap_err();
    assert!(
        matches!(error, RecorderError::Key(KeyError::NotFound(ref id)) if *id == period.kek_id),
        "{error}"
    );
}

#[test]
fn held_recording_survives_period_key_destruction() {
    let fx = Fixture::new();
    let held = write_small(&fx, default_expiry());
    let unheld = write_small(&fx, default_expiry());
    assert!(place_hold(fx.storage.as_ref(), &fx.keys, held).unwrap());
    assert!(
        !place_hold(fx.storage.as_ref(), &fx.keys, held).unwrap(),
        "second hold is a no-op"
    );

    let period = test_config().period_length.period_for(default_expiry());
    fx.keys.destroy(&period.kek_id).unwrap();
    assert!(readable(&fx, held));
    assert!(!readable(&fx, unheld));
}

#[test]
fn altered_expiry_makes_key_unwrap_fail() {
    let fx = Fixture::new();
    let id = write_small(&fx, default_expiry());
    let path = fx.recording_dir(id).join("recording.json");
    let mut metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    metadata["expires_at"] =
        serde_json::json!((default_expiry() + Duration::days(3650)).to_rfc3339());
    fs::write(&path, serde_json::to_vec(&metadata).unwrap()).unwrap();
    let error = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap_err();
    assert!(
        matches!(error, RecorderError::Key(KeyError::UnwrapFailed(_))),
        "{error}"
    );
}

#[test]
fn retention_deletes_only_at_expiry() {
    let fx = Fixture::new();
    let expires = default_expiry() + Duration::hours(5); // inside the period, not at its end
    let id = write_small(&fx, expires);
    let later = write_small(&fx, expires + Duration::seconds(1));
    let none: &dyn Fn(Uuid) -> bool = &|_| false;
    let period =
        RetentionPeriod::from_kek_id(&test_config().period_length.period_for(expires).kek_id)
            .unwrap();

    let report = sweep_retention(
        fx.storage.as_ref(),
        &fx.keys,
        expires - Duration::seconds(1),
        none,
    )
    .unwrap();
    assert!(report.deleted.is_empty());
    assert!(readable(&fx, id));

    let report = sweep_retention(
        fx.storage.as_ref(),
        &fx.keys,
        expires - Duration::nanoseconds(1),
        none,
    )
    .unwrap();
    assert!(
        report.deleted.is_empty(),
        "one nanosecond before expiry keeps the recording"
    );

    let report = sweep_retention(fx.storage.as_ref(), &fx.keys, expires, none).unwrap();
    assert_eq!(report.deleted, vec![id]);
    assert!(report.destroyed_keys.is_empty(), "the period has not ended");
    assert!(
        readable(&fx, later),
        "a recording expiring one second later is kept"
    );
    assert!(fx.keys.contains(&period.kek_id).unwrap());

    let report = sweep_retention(
        fx.storage.as_ref(),
        &fx.keys,
        period.ends_at - Duration::nanoseconds(1),
        none,
    )
    .unwrap();
    assert_eq!(report.deleted, vec![later]);
    assert!(
        report.destroyed_keys.is_empty(),
        "the key lives until the period ends"
    );

    let report = sweep_retention(fx.storage.as_ref(), &fx.keys, period.ends_at, none).unwrap();
    assert_eq!(report.destroyed_keys, vec![period.kek_id.clone()]);
    assert!(!fx.keys.contains(&period.kek_id).unwrap());
    assert!(fx.storage.list_recordings_vec().is_empty());
}

#[test]
fn retention_rewraps_held_recording_before_destroying_key() {
    let fx = Fixture::new();
    let expires = default_expiry();
    let held = write_small(&fx, expires);
    let unheld = write_small(&fx, expires);
    let future = write_small(&fx, expires + Duration::days(30));
    let holds: HashSet<Uuid> = [held].into();
    let is_held = |id: Uuid| holds.contains(&id);
    let period = test_config().period_length.period_for(expires);

    let report = sweep_retention(fx.storage.as_ref(), &fx.keys, period.ends_at, &is_held).unwrap();
    assert_eq!(report.deleted, vec![unheld]);
    assert_eq!(report.wrapped_for_hold, vec![held]);
    assert_eq!(report.destroyed_keys, vec![period.kek_id.clone()]);
    assert!(
        readable(&fx, held),
        "held recording readable under the hold key"
    );
    assert!(readable(&fx, future), "unexpired recording untouched");
    assert!(fx.keys.contains(&KekId::hold()).unwrap());

    // Once the hold is released, the next sweep deletes it.
    let report =
        sweep_retention(fx.storage.as_ref(), &fx.keys, period.ends_at, &|_| false).unwrap();
    assert_eq!(report.deleted, vec![held]);
    assert!(
        fx.keys.contains(&KekId::hold()).unwrap(),
        "the hold key is never destroyed by a sweep"
    );
}

#[test]
fn retention_keeps_period_with_unreadable_metadata() {
    let fx = Fixture::new();
    let id = write_small(&fx, default_expiry());
    fs::write(fx.recording_dir(id).join("recording.json"), b"{ not json").unwrap();
    let period = test_config().period_length.period_for(default_expiry());
    let report =
        sweep_retention(fx.storage.as_ref(), &fx.keys, period.ends_at, &|_| false).unwrap();
    assert_eq!(report.unreadable.len(), 1);
    assert!(report.deleted.is_empty());
    assert!(report.destroyed_keys.is_empty());
    assert!(fx.recording_dir(id).exists());
}

#[test]
fn period_ids_round_trip() {
    use chrono::{TimeZone, Utc};
    let at = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
    let month = recorder::PeriodLength::Month.period_for(at);
    assert_eq!(month.kek_id.as_str(), "period-2026-12");
    assert_eq!(
        month.ends_at,
        Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
    );
    assert_eq!(RetentionPeriod::from_kek_id(&month.kek_id), Some(month));
    let day = recorder::PeriodLength::Day.period_for(at);
    assert_eq!(day.kek_id.as_str(), "period-2026-12-31");
    assert_eq!(RetentionPeriod::from_kek_id(&day.kek_id), Some(day));
    assert_eq!(RetentionPeriod::from_kek_id(&KekId::hold()), None);
}

trait ListAll {
    fn list_recordings_vec(&self) -> Vec<Uuid>;
}

impl ListAll for recorder::LocalDirStorage {
    fn list_recordings_vec(&self) -> Vec<Uuid> {
        recorder::Storage::list_recordings(self).unwrap()
    }
}
