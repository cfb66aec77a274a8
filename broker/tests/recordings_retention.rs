//! Retention with a fake clock, each test on SQLite and on PostgreSQL: exactly the
//! expired, unheld recordings go, the rest stay playable, and a period's key is
//! destroyed once no kept recording needs it.

use std::sync::Arc;
use std::time::Duration;

use broker::audit::{Action, Actor, AuditLog, EventBuilder};
use broker::both_backends;
use broker::clock::{Clock, ManualClock};
use broker::recordings::catalogue::{self, RecordingState};
use broker::recordings::retention::Retention;
use broker::testing::TestDatabase;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use recorder::{
    KeyStore, LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig,
    RecordingReader, RecordingWriter, Storage, StreamConfig,
};
use uuid::Uuid;

fn at(year: i32, month: u32, day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap()
}

struct Fixture {
    retention: Retention,
    clock: Arc<ManualClock>,
    storage: Arc<dyn Storage>,
    keys: Arc<dyn KeyStore>,
    audit: AuditLog,
}

fn fixture(database: &TestDatabase) -> Fixture {
    let clock = Arc::new(ManualClock::new(at(2030, 1, 1, 0)));
    let audit = AuditLog::new(database.db.clone(), clock.clone());
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());
    let retention = Retention {
        audit: audit.clone(),
        storage: storage.clone(),
        keys: keys.clone(),
        clock: clock.clone(),
    };
    Fixture {
        retention,
        clock,
        storage,
        keys,
        audit,
    }
}

/// Records three seconds of packets with their own timestamps, seals the recording, and
/// adds its catalogue row and segment hashes.
async fn record(fixture: &Fixture, site: &str, expires_at: DateTime<Utc>) -> Uuid {
    let id = Uuid::new_v4();
    let created_at = fixture.clock.now();
    catalogue::insert(
        fixture.audit.database(),
        &catalogue::NewEntry {
            id,
            session_id: Uuid::new_v4(),
            user_id: "alice".into(),
            site: site.into(),
            instance_id: "retention-test".into(),
            started_at: created_at,
            expires_at,
        },
    )
    .await
    .unwrap();

    let config = RecorderConfig {
        target_segment_duration: Duration::from_secs(1),
        ..RecorderConfig::default()
    };
    let new = NewRecording {
        id,
        created_at,
        expires_at,
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 64,
            height: 48,
        }),
    };
    let mut writer =
        RecordingWriter::create(fixture.storage.clone(), fixture.keys.as_ref(), config, new)
            .unwrap();
    let mut segments = Vec::new();
    for frame in 0..30u64 {
        let packet = Packet {
            pts_us: frame * 100_000,
            keyframe: frame % 10 == 0,
            data: Bytes::from(vec![frame as u8; 100]),
        };
        segments.extend(writer.push_packet(packet).unwrap());
    }
    let sealed = writer.seal().unwrap();
    segments.extend(sealed.final_segment.clone());
    for segment in &segments {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .target(format!("recording:{id}"))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .build();
        fixture.audit.append(event).await.unwrap();
    }
    catalogue::mark_sealed(
        fixture.audit.database(),
        id,
        &catalogue::SealedEntry {
            ended_at: created_at,
            segment_count: sealed.manifest.segment_count,
            bytes: writer.stored_bytes(),
            seal_sha256: sealed.seal_sha256,
            detail: None,
        },
    )
    .await
    .unwrap();
    id
}

/// Decrypts every packet of a recording; fails when its key or a segment is gone.
fn play(fixture: &Fixture, id: Uuid) -> Result<usize, recorder::RecorderError> {
    let reader = RecordingReader::open(fixture.storage.clone(), fixture.keys.as_ref(), id)?;
    let mut packets = 0;
    for record in reader.records() {
        if let recorder::Record::Packet(_) = record? {
            packets += 1;
        }
    }
    Ok(packets)
}

async fn state(fixture: &Fixture, id: Uuid) -> RecordingState {
    catalogue::get(fixture.audit.database(), id)
        .await
        .unwrap()
        .unwrap()
        .state
}

async fn deletion_events(fixture: &Fixture) -> Vec<(String, serde_json::Value)> {
    fixture
        .audit
        .list(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.deleted")
        .map(|event| {
            (
                event.target.unwrap_or_default(),
                serde_json::from_str(&event.details).unwrap(),
            )
        })
        .collect()
}

fn key_ids(fixture: &Fixture) -> Vec<String> {
    fixture
        .keys
        .list()
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

both_backends!(
    sweep_removes_expired_unheld_recordings,
    sweep_removes_expired_unheld_recordings_body
);
async fn sweep_removes_expired_unheld_recordings_body(database: TestDatabase) {
    let fixture = fixture(&database);
    // Two recordings of the January 2030 period, one of them held, and one kept longer.
    let expiring = record(&fixture, "demo-bank", at(2030, 1, 31, 0)).await;
    let held = record(&fixture, "demo-bank", at(2030, 1, 31, 0)).await;
    let kept = record(&fixture, "long-bank", at(2031, 2, 5, 0)).await;
    fixture
        .retention
        .set_hold(held, true, Actor::System("test"))
        .await
        .unwrap();
    assert!(
        catalogue::get(&database.db, held)
            .await
            .unwrap()
            .unwrap()
            .legal_hold
    );

    // Before the deadline nothing goes.
    fixture.clock.advance(chrono::Duration::days(29));
    let report = fixture.retention.sweep(false).await.unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");

    // A dry run after the deadline lists the expired, unheld recording and changes
    // nothing.
    fixture
        .clock
        .advance(chrono::Duration::days(1) + chrono::Duration::hours(12));
    let report = fixture.retention.sweep(true).await.unwrap();
    let listed: Vec<Uuid> = report.deleted.iter().map(|e| e.id).collect();
    assert_eq!(listed, [expiring]);
    assert_eq!(report.held, [held]);
    assert_eq!(play(&fixture, expiring).unwrap(), 30);
    assert_eq!(state(&fixture, expiring).await, RecordingState::Sealed);
    assert!(deletion_events(&fixture).await.is_empty());

    // The sweep deletes exactly that recording and audits the rule.
    let report = fixture.retention.sweep(false).await.unwrap();
    let deleted: Vec<Uuid> = report.deleted.iter().map(|e| e.id).collect();
    assert_eq!(deleted, [expiring]);
    assert!(!fixture.storage.exists(expiring).unwrap());
    assert_eq!(state(&fixture, expiring).await, RecordingState::Deleted);
    assert!(play(&fixture, expiring).is_err());
    let events = deletion_events(&fixture).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, format!("recording:{expiring}"));
    let rule = events[0].1["rule"].as_str().unwrap();
    assert!(rule.contains("demo-bank"), "{rule}");
    assert_eq!(play(&fixture, held).unwrap(), 30);
    assert_eq!(play(&fixture, kept).unwrap(), 30);
    // The January period has not ended, so its key stays.
    assert!(key_ids(&fixture).contains(&"period-2030-01".to_owned()));

    // Once January has ended, its key is destroyed: only the held recording, wrapped
    // under the hold key, still used it.
    fixture.clock.advance(chrono::Duration::days(2));
    let report = fixture.retention.sweep(false).await.unwrap();
    assert!(report.deleted.is_empty());
    assert_eq!(report.destroyed_keys, ["period-2030-01"]);
    assert!(!key_ids(&fixture).contains(&"period-2030-01".to_owned()));
    assert_eq!(play(&fixture, held).unwrap(), 30);
    assert_eq!(play(&fixture, kept).unwrap(), 30);
    let events = deletion_events(&fixture).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "key:period-2030-01");

    // Released from hold, the expired recording goes at the next sweep.
    fixture
        .retention
        .set_hold(held, false, Actor::System("test"))
        .await
        .unwrap();
    let report = fixture.retention.sweep(false).await.unwrap();
    let deleted: Vec<Uuid> = report.deleted.iter().map(|e| e.id).collect();
    assert_eq!(deleted, [held]);
    assert!(!fixture.storage.exists(held).unwrap());
    assert_eq!(state(&fixture, kept).await, RecordingState::Sealed);
    assert_eq!(play(&fixture, kept).unwrap(), 30);

    let holds = fixture
        .audit
        .list(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.hold.changed")
        .count();
    assert_eq!(holds, 2);

    // A deleted recording cannot be put on hold.
    let error = fixture
        .retention
        .set_hold(expiring, true, Actor::System("test"))
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("deleted by retention"),
        "{error:#}"
    );
}

both_backends!(
    key_rotation_keeps_recordings_playable,
    key_rotation_keeps_recordings_playable_body
);
async fn key_rotation_keeps_recordings_playable_body(database: TestDatabase) {
    let fixture = fixture(&database);
    let before = record(&fixture, "demo-bank", at(2030, 1, 31, 0)).await;
    let old_key_file = std::fs::read(database.dir.path().join("keys/period-2030-01.kek")).unwrap();

    let report = recorder::rotate_keys(
        fixture.storage.as_ref(),
        fixture.keys.as_ref(),
        fixture.clock.now(),
    )
    .unwrap();
    assert_eq!(report.rewrapped, [before]);
    assert_eq!(report.destroyed_keys.len(), 1);
    assert_eq!(report.destroyed_keys[0].as_str(), "period-2030-01");
    let new_key = report.new_keys[0].to_string();
    assert!(new_key.starts_with("period-2030-01-r"), "{new_key}");
    assert_eq!(key_ids(&fixture), std::slice::from_ref(&new_key));

    // The video files are untouched, and the old recording plays under the new key.
    assert_eq!(play(&fixture, before).unwrap(), 30);
    let metadata = recorder::RecordingMetadata::read(fixture.storage.as_ref(), before).unwrap();
    assert_eq!(metadata.period_kek.as_str(), new_key);
    assert!(
        !metadata
            .wrapped_keys
            .iter()
            .any(|wrapped| wrapped.kek_id.as_str() == "period-2030-01")
    );

    // A recording made after the rotation gets a fresh key of the same period and plays.
    let after = record(&fixture, "demo-bank", at(2030, 1, 31, 0)).await;
    assert_eq!(play(&fixture, after).unwrap(), 30);
    assert_eq!(play(&fixture, before).unwrap(), 30);
    let fresh = std::fs::read(database.dir.path().join("keys/period-2030-01.kek")).unwrap();
    assert_ne!(fresh, old_key_file);

    // Retention treats both keys as keys of the January period.
    fixture.clock.advance(chrono::Duration::days(40));
    let report = fixture.retention.sweep(false).await.unwrap();
    let mut deleted: Vec<Uuid> = report.deleted.iter().map(|e| e.id).collect();
    deleted.sort();
    let mut expected = vec![before, after];
    expected.sort();
    assert_eq!(deleted, expected);
    let mut destroyed = report.destroyed_keys.clone();
    destroyed.sort();
    let mut expected_keys = vec!["period-2030-01".to_owned(), new_key];
    expected_keys.sort();
    assert_eq!(destroyed, expected_keys);
    assert!(key_ids(&fixture).is_empty());
}

both_backends!(
    held_recording_plays_after_hold_key_rotation,
    held_recording_plays_after_hold_key_rotation_body
);
async fn held_recording_plays_after_hold_key_rotation_body(database: TestDatabase) {
    let fixture = fixture(&database);
    let held = record(&fixture, "demo-bank", at(2030, 1, 31, 0)).await;
    let kept = record(&fixture, "long-bank", at(2031, 2, 5, 0)).await;
    fixture
        .retention
        .set_hold(held, true, Actor::System("test"))
        .await
        .unwrap();

    // Once January has ended, only the hold key can decrypt the held recording.
    fixture.clock.advance(chrono::Duration::days(40));
    let report = fixture.retention.sweep(false).await.unwrap();
    assert_eq!(report.destroyed_keys, ["period-2030-01"]);
    assert_eq!(play(&fixture, held).unwrap(), 30);
    let old_hold_file = database.dir.path().join("keys/hold.kek");
    assert!(old_hold_file.exists());

    let report = recorder::rotate_keys(
        fixture.storage.as_ref(),
        fixture.keys.as_ref(),
        fixture.clock.now(),
    )
    .unwrap();
    let new_hold = format!("hold-r{}", fixture.clock.now().timestamp_millis());
    assert_eq!(report.hold_rewrapped, [held]);
    assert_eq!(report.rewrapped, [kept]);
    assert!(report.new_keys.iter().any(|id| id.as_str() == new_hold));
    assert!(report.destroyed_keys.iter().any(|id| id.as_str() == "hold"));
    assert!(!key_ids(&fixture).contains(&"hold".to_owned()));
    assert!(key_ids(&fixture).contains(&new_hold));
    assert!(
        !old_hold_file.exists(),
        "the old hold key file is destroyed"
    );

    // The held recording plays under the new hold key alone.
    assert_eq!(play(&fixture, held).unwrap(), 30);
    let metadata = recorder::RecordingMetadata::read(fixture.storage.as_ref(), held).unwrap();
    let wrapping: Vec<&str> = metadata
        .wrapped_keys
        .iter()
        .map(|wrapped| wrapped.kek_id.as_str())
        .collect();
    assert!(wrapping.contains(&new_hold.as_str()), "{wrapping:?}");
    assert!(!wrapping.contains(&"hold"), "{wrapping:?}");
    assert_eq!(play(&fixture, kept).unwrap(), 30);

    // A hold placed after the rotation wraps under the new hold key, not a new `hold`.
    fixture
        .retention
        .set_hold(kept, true, Actor::System("test"))
        .await
        .unwrap();
    let metadata = recorder::RecordingMetadata::read(fixture.storage.as_ref(), kept).unwrap();
    assert!(
        metadata
            .wrapped_keys
            .iter()
            .any(|wrapped| wrapped.kek_id.as_str() == new_hold)
    );
    assert!(!key_ids(&fixture).contains(&"hold".to_owned()));

    // A second rotation replaces that generation too, and both held recordings play.
    fixture.clock.advance(chrono::Duration::seconds(1));
    let report = recorder::rotate_keys(
        fixture.storage.as_ref(),
        fixture.keys.as_ref(),
        fixture.clock.now(),
    )
    .unwrap();
    let mut rewrapped = report.hold_rewrapped.clone();
    rewrapped.sort();
    let mut expected = vec![held, kept];
    expected.sort();
    assert_eq!(rewrapped, expected);
    assert!(
        report
            .destroyed_keys
            .iter()
            .any(|id| id.as_str() == new_hold)
    );
    assert_eq!(play(&fixture, held).unwrap(), 30);
    assert_eq!(play(&fixture, kept).unwrap(), 30);
}
