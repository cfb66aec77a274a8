//! The recordings catalogue and the sealing of interrupted recordings, each test on
//! SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use broker::audit::{Action, Actor, AuditLog, EventBuilder};
use broker::both_backends;
use broker::clock::SystemClock;
use broker::recordings::{self, catalogue};
use broker::testing::TestDatabase;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use recorder::{
    KeyStore, LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig,
    RecordingReader, RecordingWriter, Storage, StreamConfig,
};
use uuid::Uuid;

fn entry(user: &str, site: &str, instance: &str, started_ms: i64) -> catalogue::NewEntry {
    catalogue::NewEntry {
        id: Uuid::new_v4(),
        session_id: Uuid::new_v4(),
        user_id: user.to_owned(),
        site: site.to_owned(),
        instance_id: instance.to_owned(),
        started_at: Utc.timestamp_millis_opt(started_ms).unwrap(),
        expires_at: Utc.timestamp_millis_opt(started_ms + 86_400_000).unwrap(),
    }
}

both_backends!(catalogue_lists_by_filter, catalogue_lists_by_filter_body);
async fn catalogue_lists_by_filter_body(database: TestDatabase) {
    let db = &database.db;
    let alice_demo = entry("alice", "demo-bank", "i1", 1_000_000);
    let alice_other = entry("alice", "other-bank", "i1", 2_000_000);
    let bob_demo = entry("bob", "demo-bank", "i1", 3_000_000);
    for new in [&alice_demo, &alice_other, &bob_demo] {
        catalogue::insert(db, new).await.unwrap();
    }

    let stored = catalogue::get(db, alice_demo.id).await.unwrap().unwrap();
    assert_eq!(stored.state, catalogue::RecordingState::Recording);
    assert_eq!(stored.user_id, "alice");
    assert_eq!(stored.site, "demo-bank");
    assert_eq!(stored.started_at, alice_demo.started_at);
    assert_eq!(stored.expires_at, alice_demo.expires_at);
    assert_eq!(stored.segment_count, 0);
    assert!(!stored.legal_hold);

    let ids = |entries: Vec<catalogue::CatalogueEntry>| -> Vec<Uuid> {
        entries.into_iter().map(|entry| entry.id).collect()
    };
    let all = catalogue::list(db, &catalogue::Filter::default())
        .await
        .unwrap();
    assert_eq!(ids(all), [bob_demo.id, alice_other.id, alice_demo.id]);

    let by_person = catalogue::Filter {
        user_id: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(catalogue::list(db, &by_person).await.unwrap()),
        [alice_other.id, alice_demo.id]
    );

    let by_site_and_person = catalogue::Filter {
        user_id: Some("alice".into()),
        site: Some("demo-bank".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(catalogue::list(db, &by_site_and_person).await.unwrap()),
        [alice_demo.id]
    );

    let by_time = catalogue::Filter {
        started_from: Some(Utc.timestamp_millis_opt(2_000_000).unwrap()),
        started_before: Some(Utc.timestamp_millis_opt(3_000_000).unwrap()),
        ..Default::default()
    };
    assert_eq!(
        ids(catalogue::list(db, &by_time).await.unwrap()),
        [alice_other.id]
    );

    catalogue::add_segment(db, bob_demo.id, 0, 700)
        .await
        .unwrap();
    catalogue::add_segment(db, bob_demo.id, 1, 300)
        .await
        .unwrap();
    let counted = catalogue::get(db, bob_demo.id).await.unwrap().unwrap();
    assert_eq!(counted.segment_count, 2);
    assert_eq!(counted.bytes, 1_000);

    let ended_at = Utc.timestamp_millis_opt(3_500_000).unwrap();
    let sealed = catalogue::SealedEntry {
        ended_at,
        segment_count: 3,
        bytes: 1_200,
        seal_sha256: [7; 32],
        detail: None,
    };
    catalogue::mark_sealed(db, bob_demo.id, &sealed)
        .await
        .unwrap();
    let stored = catalogue::get(db, bob_demo.id).await.unwrap().unwrap();
    assert_eq!(stored.state, catalogue::RecordingState::Sealed);
    assert_eq!(stored.ended_at, Some(ended_at));
    assert_eq!(stored.segment_count, 3);
    assert_eq!(stored.bytes, 1_200);
    assert_eq!(stored.seal_sha256, Some(hex::encode([7; 32])));

    // Sealed recordings and those of other instances are not recovered here.
    let unsealed = catalogue::unsealed(db, "i1").await.unwrap();
    assert_eq!(unsealed, [alice_demo.id, alice_other.id]);
    assert!(catalogue::unsealed(db, "i2").await.unwrap().is_empty());
}

/// Writes a recording with a keyframe every second for `seconds` seconds and drops the
/// writer without sealing, as a crash would. Returns the segments it stored.
fn write_interrupted(
    storage: Arc<dyn Storage>,
    keys: &dyn KeyStore,
    id: Uuid,
    seconds: u64,
) -> Vec<recorder::SegmentStored> {
    let config = RecorderConfig {
        target_segment_duration: Duration::from_secs(1),
        ..RecorderConfig::default()
    };
    let now = Utc::now();
    let mut writer = RecordingWriter::create(
        storage,
        keys,
        config,
        NewRecording {
            id,
            created_at: now,
            expires_at: now + chrono::Duration::days(30),
            stream: Some(StreamConfig {
                codec: "vp8".into(),
                width: 64,
                height: 48,
            }),
        },
    )
    .unwrap();
    let mut stored = Vec::new();
    // Ten frames a second, with their own timestamps.
    for frame in 0..seconds * 10 {
        let packet = Packet {
            pts_us: frame * 100_000,
            keyframe: frame % 10 == 0,
            data: Bytes::from(vec![frame as u8; 200]),
        };
        if let Some(segment) = writer.push_packet(packet).unwrap() {
            stored.push(segment);
        }
    }
    drop(writer);
    stored
}

both_backends!(
    interrupted_recording_is_sealed,
    interrupted_recording_is_sealed_body
);
async fn interrupted_recording_is_sealed_body(database: TestDatabase) {
    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());

    let new = entry("alice", "demo-bank", "i1", Utc::now().timestamp_millis());
    catalogue::insert(db, &new).await.unwrap();
    let stored = write_interrupted(storage.clone(), keys.as_ref(), new.id, 4);
    assert_eq!(stored.len(), 3, "segments stored before the crash");

    // The crash came after segment 1 was stored and before its hash entered the chain,
    // and left a partial file of the segment being written.
    let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
        .target(format!("recording:{}", new.id))
        .detail("index", stored[0].index)
        .detail("sha256", hex::encode(stored[0].sha256))
        .build();
    audit.append(event).await.unwrap();
    let dir = database
        .dir
        .path()
        .join("recordings")
        .join(new.id.to_string());
    std::fs::write(dir.join(".tmp-seg-00000003.srs.0000"), b"partial").unwrap();

    let results =
        catalogue::seal_interrupted(&audit, storage.clone(), keys.clone(), &[new.id]).await;
    assert_eq!(
        results,
        [(new.id, catalogue::Recovered::Sealed { segment_count: 3 })]
    );
    assert!(!dir.join(".tmp-seg-00000003.srs.0000").exists());

    let row = catalogue::get(db, new.id).await.unwrap().unwrap();
    assert_eq!(row.state, catalogue::RecordingState::Sealed);
    assert_eq!(row.segment_count, 3);
    assert_eq!(row.bytes, stored.iter().map(|s| s.bytes).sum::<u64>());
    assert!(row.ended_at.is_some());
    assert!(row.seal_sha256.is_some());

    // The chain now names every sealed segment, and the files match it.
    let hashes = recordings::segment_hashes(&audit, new.id).await.unwrap();
    let expected: Vec<[u8; 32]> = stored.iter().map(|s| s.sha256).collect();
    assert_eq!(hashes, expected);
    let report = recorder::verify_recording(storage.as_ref(), new.id, &hashes).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.sealed);

    // The sealed recording plays from its first to its last stored packet.
    let reader = RecordingReader::open(storage.clone(), keys.as_ref(), new.id).unwrap();
    assert!(reader.is_sealed());
    let mut last_pts = None;
    for record in reader.records() {
        if let recorder::Record::Packet(packet) = record.unwrap() {
            last_pts = Some(packet.pts_us);
        }
    }
    assert_eq!(last_pts, Some(stored[2].end_pts_us));

    assert!(catalogue::unsealed(db, "i1").await.unwrap().is_empty());
    let sealed_events: Vec<_> = audit
        .list(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.sealed")
        .collect();
    assert_eq!(sealed_events.len(), 1);
    assert_eq!(sealed_events[0].actor, "system:reconciler");
}

both_backends!(
    unrecoverable_recording_is_marked_failed,
    unrecoverable_recording_is_marked_failed_body
);
async fn unrecoverable_recording_is_marked_failed_body(database: TestDatabase) {
    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());

    // A row whose stored metadata is not JSON.
    let new = entry("alice", "demo-bank", "i1", Utc::now().timestamp_millis());
    catalogue::insert(db, &new).await.unwrap();
    storage.create_recording(new.id).unwrap();
    storage
        .put(new.id, recorder::METADATA_NAME, b"{ not json")
        .unwrap();

    let results = catalogue::seal_interrupted(&audit, storage, keys, &[new.id]).await;
    assert!(
        matches!(&results[..], [(id, catalogue::Recovered::Failed(reason))] if *id == new.id && reason.contains(&new.id.to_string())),
        "{results:?}"
    );
    let row = catalogue::get(db, new.id).await.unwrap().unwrap();
    assert_eq!(row.state, catalogue::RecordingState::Failed);
    assert!(row.detail.is_some());
    let failed = audit
        .list(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.failed")
        .count();
    assert_eq!(failed, 1);
}

both_backends!(
    missing_key_fails_readiness,
    missing_key_fails_readiness_body
);
async fn missing_key_fails_readiness_body(database: TestDatabase) {
    use broker::http::health::ReadinessCheck;
    use broker::recordings::keys_check::{self, RecordingKeysCheck};

    let db = &database.db;
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());
    let new = entry("alice", "demo-bank", "i1", Utc::now().timestamp_millis());
    catalogue::insert(db, &new).await.unwrap();
    write_interrupted(storage.clone(), keys.as_ref(), new.id, 2);
    // A row whose files never reached the store needs no key.
    catalogue::insert(db, &entry("bob", "demo-bank", "i1", 1_000))
        .await
        .unwrap();

    let check = RecordingKeysCheck {
        db: db.clone(),
        storage: storage.clone(),
        keys: keys.clone(),
        fix: "restore the key files".to_owned(),
    };
    assert_eq!(check.name(), "recording_keys");
    assert_eq!(check.check().await, Ok(()));

    // Losing the period key, with no hold key wrapping, leaves the recording unreadable.
    for id in keys.list().unwrap() {
        if id.as_str().starts_with("period-") {
            keys.destroy(&id).unwrap();
        }
    }
    let missing = keys_check::missing_keys(db, storage.clone(), keys.clone())
        .await
        .unwrap();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].recording, new.id);
    let reason = check.check().await.unwrap_err();
    assert!(reason.contains(&new.id.to_string()), "{reason}");
    assert!(reason.contains("restore"), "{reason}");
}

both_backends!(
    interrupted_start_is_sealed_or_removed,
    interrupted_start_is_sealed_or_removed_body
);
async fn interrupted_start_is_sealed_or_removed_body(database: TestDatabase) {
    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());
    let now = Utc::now().timestamp_millis();

    // The start inserts the catalogue row, then creates the recording's directory, then
    // stores its metadata. Each recording here stops at one of those points.
    let row_only = entry("alice", "demo-bank", "i1", now);
    catalogue::insert(db, &row_only).await.unwrap();

    let directory_only = entry("alice", "demo-bank", "i1", now + 1);
    catalogue::insert(db, &directory_only).await.unwrap();
    storage.create_recording(directory_only.id).unwrap();

    let metadata_stored = entry("alice", "demo-bank", "i1", now + 2);
    catalogue::insert(db, &metadata_stored).await.unwrap();
    let writer = RecordingWriter::create(
        storage.clone(),
        keys.as_ref(),
        RecorderConfig::default(),
        NewRecording {
            id: metadata_stored.id,
            created_at: metadata_stored.started_at,
            expires_at: metadata_stored.expires_at,
            stream: None,
        },
    )
    .unwrap();
    drop(writer);

    // Start-up recovery finds every one of them.
    let unsealed = catalogue::unsealed(db, "i1").await.unwrap();
    assert_eq!(
        unsealed,
        [row_only.id, directory_only.id, metadata_stored.id]
    );
    let results = catalogue::seal_interrupted(&audit, storage.clone(), keys, &unsealed).await;
    assert_eq!(
        results,
        [
            (row_only.id, catalogue::Recovered::Removed),
            (directory_only.id, catalogue::Recovered::Removed),
            (
                metadata_stored.id,
                catalogue::Recovered::Sealed { segment_count: 0 }
            ),
        ]
    );

    // The two without metadata are gone from the catalogue and the store.
    for id in [row_only.id, directory_only.id] {
        assert!(catalogue::get(db, id).await.unwrap().is_none());
        assert!(!storage.exists(id).unwrap());
    }
    let removed: Vec<String> = audit
        .list(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "recording.failed")
        .filter_map(|event| event.target)
        .collect();
    assert_eq!(
        removed,
        [
            format!("recording:{}", row_only.id),
            format!("recording:{}", directory_only.id)
        ]
    );

    // The one with metadata is sealed, empty, and nothing is left to recover.
    let sealed = catalogue::get(db, metadata_stored.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sealed.state, catalogue::RecordingState::Sealed);
    assert!(storage.exists(metadata_stored.id).unwrap());
    assert!(catalogue::unsealed(db, "i1").await.unwrap().is_empty());
}

both_backends!(
    segment_hashes_come_from_indexed_lookup,
    segment_hashes_come_from_indexed_lookup_body
);
async fn segment_hashes_come_from_indexed_lookup_body(database: TestDatabase) {
    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let (wanted, other) = (Uuid::new_v4(), Uuid::new_v4());
    let segment = |id: Uuid, index: u64, byte: u8| {
        EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .target(format!("recording:{id}"))
            .detail("index", index)
            .detail("sha256", hex::encode([byte; 32]))
            .build()
    };

    // Events of two recordings interleave, out of index order, with another action on
    // the same target in between.
    audit.append(segment(wanted, 1, 0xb1)).await.unwrap();
    audit.append(segment(other, 0, 0xc0)).await.unwrap();
    audit
        .append(
            EventBuilder::new(Actor::System("recorder"), Action::RecordingSealed)
                .target(format!("recording:{wanted}"))
                .detail("segment_count", 2)
                .build(),
        )
        .await
        .unwrap();
    audit.append(segment(wanted, 0, 0xb0)).await.unwrap();

    let hashes = recordings::segment_hashes(&audit, wanted).await.unwrap();
    assert_eq!(hashes, [[0xb0; 32], [0xb1; 32]]);
    let hashes = recordings::segment_hashes(&audit, other).await.unwrap();
    assert_eq!(hashes, [[0xc0; 32]]);

    // A gap in the indexes is an error naming the missing segment.
    let gapped = Uuid::new_v4();
    audit.append(segment(gapped, 1, 0xd1)).await.unwrap();
    let error = recordings::segment_hashes(&audit, gapped)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("no hash for segment 0"),
        "{error:#}"
    );

    // The lookup can use the target index. PostgreSQL prefers a sequential scan of a
    // table this small, so the plan is read with sequential scans turned off.
    let mut connection = db.pool().acquire().await.unwrap();
    const LOOKUP: &str = "SELECT seq FROM audit_events \
                 WHERE target = 'recording:x' AND action = 'recording.segment.stored' ORDER BY seq";
    let plan: Vec<String> = match db.backend_name() {
        "sqlite" => sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {LOOKUP}")))
            .fetch_all(&mut *connection)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::try_get::<String, _>(row, 3).unwrap())
            .collect(),
        _ => {
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut *connection)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {LOOKUP}")))
                .fetch_all(&mut *connection)
                .await
                .unwrap()
                .iter()
                .map(|row| sqlx::Row::try_get::<String, _>(row, 0).unwrap())
                .collect()
        }
    };
    assert!(
        plan.iter().any(|line| line.contains("audit_events_target")),
        "{plan:?}"
    );
}

/// Writes a stream of ten frames a second with a keyframe every 3 s, as the agent sends
/// by default, through a writer with the default segments and checkpoints, up to
/// `until_us`, and drops the writer without sealing as a killed broker would.
fn write_killed_with_checkpoints(
    storage: Arc<dyn Storage>,
    keys: &dyn KeyStore,
    id: Uuid,
    until_us: u64,
) -> Vec<recorder::SegmentStored> {
    let now = Utc::now();
    let new = NewRecording {
        id,
        created_at: now,
        expires_at: now + chrono::Duration::days(30),
        stream: Some(StreamConfig {
            codec: "vp8".into(),
            width: 64,
            height: 48,
        }),
    };
    let mut writer =
        RecordingWriter::create(storage, keys, RecorderConfig::default(), new).unwrap();
    let mut stored = Vec::new();
    for frame in 0..until_us / 100_000 {
        let packet = Packet {
            pts_us: frame * 100_000,
            keyframe: frame % 30 == 0,
            data: Bytes::from(vec![frame as u8; 200]),
        };
        stored.extend(writer.push_packet(packet).unwrap());
    }
    drop(writer);
    stored
}

both_backends!(
    killed_recording_keeps_its_checkpoints,
    killed_recording_keeps_its_checkpoints_body
);
async fn killed_recording_keeps_its_checkpoints_body(database: TestDatabase) {
    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());

    // Killed 8 s in: segment 0 (0 to 6 s) is stored whole, segment 1 only as parts.
    let killed_at_us = 8_000_000;
    let new = entry("alice", "demo-bank", "i1", Utc::now().timestamp_millis());
    catalogue::insert(db, &new).await.unwrap();
    let stored =
        write_killed_with_checkpoints(storage.clone(), keys.as_ref(), new.id, killed_at_us);
    assert_eq!(stored.len(), 1);
    for segment in &stored {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .target(format!("recording:{}", new.id))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .build();
        audit.append(event).await.unwrap();
    }

    let results =
        catalogue::seal_interrupted(&audit, storage.clone(), keys.clone(), &[new.id]).await;
    assert_eq!(
        results,
        [(new.id, catalogue::Recovered::Sealed { segment_count: 2 })]
    );
    let row = catalogue::get(db, new.id).await.unwrap().unwrap();
    assert_eq!(row.segment_count, 2);

    // The rebuilt segment's hash entered the chain, and the recording verifies and plays
    // to within a checkpoint interval and a frame of the kill.
    let hashes = recordings::segment_hashes(&audit, new.id).await.unwrap();
    assert_eq!(hashes.len(), 2);
    assert_eq!(hashes[0], stored[0].sha256);
    let report = recorder::verify_recording(storage.as_ref(), new.id, &hashes).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    let mut reader = RecordingReader::open(storage.clone(), keys.as_ref(), new.id).unwrap();
    reader.require_hashes(hashes).unwrap();
    let last_pts = reader
        .records()
        .filter_map(|record| match record.unwrap() {
            recorder::Record::Packet(packet) => Some(packet.pts_us),
            _ => None,
        })
        .last()
        .unwrap();
    assert!(
        last_pts + 1_500_000 >= killed_at_us,
        "recording ends at {last_pts} us, killed at {killed_at_us} us"
    );

    let events = audit.list(0, 1_000).await.unwrap();
    let rebuilt = events
        .iter()
        .find(|event| {
            event.action == "recording.segment.stored" && event.actor == "system:reconciler"
        })
        .expect("the rebuilt segment is audited");
    let details: serde_json::Value = serde_json::from_str(&rebuilt.details).unwrap();
    assert_eq!(details["index"], 1);
    assert_eq!(details["checkpoint_parts"], 2);
}

both_backends!(
    damaged_checkpoint_part_is_named_in_the_seal_event,
    damaged_checkpoint_part_is_named_in_the_seal_event_body
);
async fn damaged_checkpoint_part_is_named_in_the_seal_event_body(database: TestDatabase) {
    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let root = database.dir.path().join("recordings");
    let storage: Arc<dyn Storage> = Arc::new(LocalDirStorage::open(&root).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());

    let new = entry("alice", "demo-bank", "i1", Utc::now().timestamp_millis());
    catalogue::insert(db, &new).await.unwrap();
    write_killed_with_checkpoints(storage.clone(), keys.as_ref(), new.id, 8_000_000);
    let part = root
        .join(new.id.to_string())
        .join("part-00000001-000001.srp");
    let mut bytes = std::fs::read(&part).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&part, bytes).unwrap();

    let results =
        catalogue::seal_interrupted(&audit, storage.clone(), keys.clone(), &[new.id]).await;
    assert_eq!(
        results,
        [(new.id, catalogue::Recovered::Sealed { segment_count: 2 })]
    );
    let sealed = audit
        .list(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .find(|event| event.action == "recording.sealed")
        .expect("recording.sealed");
    let details: serde_json::Value = serde_json::from_str(&sealed.details).unwrap();
    let damaged = details["damaged"].to_string();
    assert!(
        damaged.contains("checkpoint part part-00000001-000001.srp: authentication failed"),
        "{damaged}"
    );
    let row = catalogue::get(db, new.id).await.unwrap().unwrap();
    assert!(
        row.detail.unwrap().contains("part-00000001-000001.srp"),
        "the recordings list names the part"
    );
}

both_backends!(
    paused_stream_is_checkpointed_before_a_kill,
    paused_stream_is_checkpointed_before_a_kill_body
);
async fn paused_stream_is_checkpointed_before_a_kill_body(database: TestDatabase) {
    use broker::stream::recording::{RecordingHandle, RecordingSettings};

    let db = &database.db;
    let audit = AuditLog::new(db.clone(), Arc::new(SystemClock));
    let root = database.dir.path().join("recordings");
    let storage: Arc<dyn Storage> = Arc::new(LocalDirStorage::open(&root).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());
    let settings = RecordingSettings {
        storage: storage.clone(),
        keys: keys.clone(),
        config: RecorderConfig::default(),
    };
    let new = entry("alice", "demo-bank", "i1", Utc::now().timestamp_millis());
    catalogue::insert(db, &new).await.unwrap();
    let handle = RecordingHandle::start(&settings, new.id, new.started_at, new.expires_at).unwrap();
    handle
        .push_config(StreamConfig {
            codec: "vp8".into(),
            width: 64,
            height: 48,
        })
        .await
        .unwrap();

    // 8.5 s of stream at ten frames a second, a keyframe every 3 s: segment 0 is stored
    // at 6 s, segment 1 gets parts at 7 s and 7.9 s, then the stream pauses.
    let mut sent = Vec::new();
    for frame in 0..85u64 {
        let packet = Packet {
            pts_us: frame * 100_000,
            keyframe: frame % 30 == 0,
            data: Bytes::from(vec![frame as u8; 200]),
        };
        sent.push(packet.pts_us);
        handle.push_packet(packet).await.unwrap();
    }

    // A pause of one checkpoint interval stores the frames since the last part.
    let third = root
        .join(new.id.to_string())
        .join("part-00000001-000002.srp");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !third.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint of the paused stream within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The broker dies: the handle goes away without a seal.
    drop(handle);

    let results =
        catalogue::seal_interrupted(&audit, storage.clone(), keys.clone(), &[new.id]).await;
    assert_eq!(
        results,
        [(new.id, catalogue::Recovered::Sealed { segment_count: 2 })]
    );
    let reader = RecordingReader::open(storage.clone(), keys.as_ref(), new.id).unwrap();
    let kept: Vec<u64> = reader
        .records()
        .filter_map(|record| match record.unwrap() {
            recorder::Record::Packet(packet) => Some(packet.pts_us),
            _ => None,
        })
        .collect();
    assert_eq!(kept, sent, "every frame before the pause is kept");
}
