//! Recording key-encryption keys in Infisical KMS, against the fake Infisical server:
//! record and replay, rotation through `strongroom keys rotate`, retention destroying
//! a period's key, the readiness check, and an unavailable or rate-limiting KMS. Tests
//! that touch the database run on SQLite and on PostgreSQL.

mod infisical_fake;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::audit::{Action, AuditLog};
use broker::both_backends;
use broker::clock::ManualClock;
use broker::config::Config;
use broker::recordings::catalogue;
use broker::recordings::retention::Retention;
use broker::testing::TestDatabase;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use infisical_fake::{CLIENT_ID, ENVIRONMENT, FakeInfisical, PROJECT_ID};
use recorder::{
    KeyError, KeyStore, LocalDirStorage, LocalKeyStore, NewRecording, Packet, RecorderConfig,
    RecorderError, RecordingMetadata, RecordingReader, RecordingWriter, Storage, StreamConfig,
};
use uuid::Uuid;

const CLIENT_SECRET: &str = "fake-client-secret-kms";
const FRAMES: u64 = 30;

/// Loads a configuration whose recording keys live in the fake's KMS project.
fn kms_config(fake: &FakeInfisical, dir: &Path) -> Config {
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
    let env = [
        ("STRONGROOM_DATA_DIR", format!("\"{}\"", dir.display())),
        ("STRONGROOM_SECRETS__SOURCE", "\"infisical\"".to_owned()),
        (
            "STRONGROOM_SECRETS__INFISICAL__URL",
            format!("\"{}\"", fake.url),
        ),
        (
            "STRONGROOM_SECRETS__INFISICAL__CLIENT_ID",
            format!("\"{CLIENT_ID}\""),
        ),
        (
            "STRONGROOM_SECRETS__INFISICAL__CLIENT_SECRET",
            format!("\"file:{}\"", secret_file.display()),
        ),
        (
            "STRONGROOM_SECRETS__INFISICAL__PROJECT_ID",
            "\"other-project\"".to_owned(),
        ),
        (
            "STRONGROOM_SECRETS__INFISICAL__ENVIRONMENT",
            format!("\"{ENVIRONMENT}\""),
        ),
        (
            "STRONGROOM_SECRETS__INFISICAL__TIMEOUT_SECONDS",
            "5".to_owned(),
        ),
        (
            "STRONGROOM_SECRETS__INFISICAL__MAX_RETRY_WAIT_SECONDS",
            "1".to_owned(),
        ),
        (
            "STRONGROOM_SESSIONS__RECORDING_KEYS",
            "\"infisical\"".to_owned(),
        ),
        (
            "STRONGROOM_SESSIONS__RECORDING_KEYS_PROJECT_ID",
            format!("\"{PROJECT_ID}\""),
        ),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    broker::config::load(None, env).expect("test configuration is valid")
}

struct Setup {
    fake: FakeInfisical,
    config: Config,
    storage: Arc<dyn Storage>,
    keys: Arc<dyn KeyStore>,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let fake = FakeInfisical::start(CLIENT_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kms_config(&fake, dir.path());
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(dir.path().join("recordings")).unwrap());
    let keys = broker::recordings::open_key_store(&config).unwrap();
    Setup {
        fake,
        config,
        storage,
        keys,
        dir,
    }
}

/// Records three seconds of ten packets a second, with their own timestamps, and seals
/// the recording.
fn record(
    storage: &Arc<dyn Storage>,
    keys: &dyn KeyStore,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(Uuid, Vec<recorder::SegmentStored>), RecorderError> {
    let id = Uuid::new_v4();
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
    let mut writer = RecordingWriter::create(storage.clone(), keys, config, new)?;
    let mut segments = Vec::new();
    for frame in 0..FRAMES {
        let packet = Packet {
            pts_us: frame * 100_000,
            keyframe: frame % 10 == 0,
            data: Bytes::from(vec![frame as u8; 100]),
        };
        segments.extend(writer.push_packet(packet)?);
    }
    let sealed = writer.seal()?;
    segments.extend(sealed.final_segment);
    Ok((id, segments))
}

/// Replays a recording and returns its packets' payload bytes.
fn replay(
    storage: &Arc<dyn Storage>,
    keys: &dyn KeyStore,
    id: Uuid,
) -> Result<Vec<Vec<u8>>, RecorderError> {
    let reader = RecordingReader::open(storage.clone(), keys, id)?;
    let mut packets = Vec::new();
    for record in reader.records() {
        if let recorder::Record::Packet(packet) = record? {
            packets.push(packet.data.to_vec());
        }
    }
    Ok(packets)
}

fn expected_packets() -> Vec<Vec<u8>> {
    (0..FRAMES).map(|frame| vec![frame as u8; 100]).collect()
}

async fn insert_entry(
    db: &broker::db::Database,
    id: Uuid,
    created: DateTime<Utc>,
    expires: DateTime<Utc>,
) {
    catalogue::insert(
        db,
        &catalogue::NewEntry {
            id,
            session_id: Uuid::new_v4(),
            user_id: "alice".into(),
            site: "demo-bank".into(),
            instance_id: "kms-test".into(),
            started_at: created,
            expires_at: expires,
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_wrapped_recording_replays() {
    let setup = setup().await;
    let now = Utc::now();

    let (id, _) = record(
        &setup.storage,
        setup.keys.as_ref(),
        now,
        now + chrono::Duration::days(30),
    )
    .unwrap();
    let packets = replay(&setup.storage, setup.keys.as_ref(), id).unwrap();

    assert_eq!(packets, expected_packets());
    let metadata = RecordingMetadata::read(setup.storage.as_ref(), id).unwrap();
    let names = setup.fake.kms_key_names();
    assert!(
        names.contains(&metadata.period_kek.to_string()),
        "{names:?}"
    );
    for wrapped in &metadata.wrapped_keys {
        assert!(
            wrapped
                .service_key_id
                .as_deref()
                .is_some_and(|id| Uuid::parse_str(id).is_ok()),
            "every wrap names its Infisical key id: {wrapped:?}"
        );
        assert_eq!(wrapped.nonce, [0; 12]);
    }
    assert!(setup.fake.kms_encrypts() >= 1);
    assert!(setup.fake.kms_decrypts() >= 1);
    // Infisical's key material never reaches the broker: the store contains no local key file.
    assert!(!setup.dir.path().join("recording-keys").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_wrap_is_bound_to_its_recording() {
    let setup = setup().await;
    let now = Utc::now();
    let expires = now + chrono::Duration::days(30);
    let (first, _) = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap();
    let (second, _) = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap();

    // Swapping the wrapped data keys of two recordings makes both unreadable.
    let mut one = RecordingMetadata::read(setup.storage.as_ref(), first).unwrap();
    let two = RecordingMetadata::read(setup.storage.as_ref(), second).unwrap();
    one.wrapped_keys = two.wrapped_keys.clone();
    setup
        .storage
        .put(first, "recording.json", &serde_json::to_vec(&one).unwrap())
        .unwrap();

    let error = replay(&setup.storage, setup.keys.as_ref(), first).unwrap_err();
    assert!(
        matches!(error, RecorderError::Key(KeyError::UnwrapFailed(_))),
        "{error:?}"
    );
    assert_eq!(
        replay(&setup.storage, setup.keys.as_ref(), second).unwrap(),
        expected_packets()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_wrap_is_rejected_by_kms_store() {
    let setup = setup().await;
    let local = LocalKeyStore::open(setup.dir.path().join("local-keys")).unwrap();
    let now = Utc::now();
    let (id, _) = record(
        &setup.storage,
        &local,
        now,
        now + chrono::Duration::days(30),
    )
    .unwrap();

    let error = replay(&setup.storage, setup.keys.as_ref(), id).unwrap_err();

    let message = error.to_string();
    assert!(
        matches!(error, RecorderError::Key(KeyError::WrongStore { .. })),
        "{error:?}"
    );
    assert!(message.contains("local key directory"), "{message}");
    assert!(message.contains("Infisical KMS"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_and_rate_limit_are_retried() {
    let setup = setup().await;
    let now = Utc::now();
    let (id, _) = record(
        &setup.storage,
        setup.keys.as_ref(),
        now,
        now + chrono::Duration::days(30),
    )
    .unwrap();
    let logins = setup.fake.logins();

    setup.fake.expire_tokens();
    assert_eq!(
        replay(&setup.storage, setup.keys.as_ref(), id).unwrap(),
        expected_packets()
    );
    assert_eq!(setup.fake.logins(), logins + 1);

    setup.fake.rate_limit_next(2, 1);
    assert_eq!(
        replay(&setup.storage, setup.keys.as_ref(), id).unwrap(),
        expected_packets()
    );
    assert_eq!(setup.fake.rate_limited(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_kms_fails_with_a_named_error() {
    let setup = setup().await;
    let now = Utc::now();
    let expires = now + chrono::Duration::days(30);
    let (id, _) = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap();

    setup.fake.set_kms_unavailable(true);
    let error = replay(&setup.storage, setup.keys.as_ref(), id).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, RecorderError::Key(KeyError::Service { .. })),
        "{error:?}"
    );
    assert!(message.contains("HTTP 503 ServiceUnavailable"), "{message}");
    assert!(message.contains("period-"), "{message}");
    let error = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap_err();
    assert!(
        matches!(error, RecorderError::Key(KeyError::Service { .. })),
        "{error:?}"
    );

    // Endless 429s give up after the configured retries.
    setup.fake.set_kms_unavailable(false);
    setup.fake.rate_limit_next(u32::MAX, 1);
    let error = replay(&setup.storage, setup.keys.as_ref(), id).unwrap_err();
    assert!(error.to_string().contains("rate-limited"), "{error}");

    // A stopped server is a transport error that names the setting to check.
    setup.fake.rate_limit_next(0, 1);
    setup.fake.stop();
    let error = replay(&setup.storage, setup.keys.as_ref(), id).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("cannot reach Infisical"), "{message}");
    assert!(message.contains("secrets.infisical.url"), "{message}");
}

both_backends!(kms_rotation_rewraps, kms_rotation_rewraps_body);
async fn kms_rotation_rewraps_body(database: TestDatabase) {
    let setup = setup().await;
    let now = Utc::now();
    let expires = now + chrono::Duration::days(30);
    let (plain, _) = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap();
    let (held, _) = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap();
    assert!(recorder::place_hold(setup.storage.as_ref(), setup.keys.as_ref(), held).unwrap());
    let before = setup.fake.kms_key_names();
    assert_eq!(before.len(), 2, "a period key and the hold key: {before:?}");

    let code = broker::recordings::rotate_keys_command(&setup.config, &database.db).await;

    assert_eq!(code, 0);
    let after = setup.fake.kms_key_names();
    assert_eq!(after.len(), 2, "{after:?}");
    for old in &before {
        assert!(!after.contains(old), "old key {old} is gone: {after:?}");
        assert!(setup.fake.deleted_kms_keys().contains(old));
    }
    for id in [plain, held] {
        let metadata = RecordingMetadata::read(setup.storage.as_ref(), id).unwrap();
        for wrapped in &metadata.wrapped_keys {
            assert!(after.contains(&wrapped.kek_id.to_string()), "{wrapped:?}");
        }
        assert_eq!(
            replay(&setup.storage, setup.keys.as_ref(), id).unwrap(),
            expected_packets()
        );
    }
    let audit = AuditLog::new(database.db.clone(), Arc::new(broker::clock::SystemClock));
    let events = audit
        .list_for_target("recording-keys", Action::KeyRotated)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

both_backends!(kms_retention_destroys_key, kms_retention_destroys_key_body);
async fn kms_retention_destroys_key_body(database: TestDatabase) {
    let setup = setup().await;
    let start = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let audit = AuditLog::new(database.db.clone(), clock.clone());
    let retention = Retention {
        audit: audit.clone(),
        storage: setup.storage.clone(),
        keys: setup.keys.clone(),
        clock: clock.clone(),
    };
    let expires = start + chrono::Duration::days(30);
    let (id, segments) = record(&setup.storage, setup.keys.as_ref(), start, expires).unwrap();
    insert_entry(&database.db, id, start, expires).await;
    for segment in &segments {
        let event = broker::audit::EventBuilder::new(
            broker::audit::Actor::System("recorder"),
            Action::RecordingSegmentStored,
        )
        .target(format!("recording:{id}"))
        .detail("index", segment.index)
        .detail("sha256", hex::encode(segment.sha256))
        .build();
        audit.append(event).await.unwrap();
    }
    let period_key = RecordingMetadata::read(setup.storage.as_ref(), id)
        .unwrap()
        .period_kek
        .to_string();

    // While the recording is kept, its period's key stays.
    clock.advance(chrono::Duration::days(10));
    let report = retention.sweep(false).await.unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(setup.fake.kms_key_names().contains(&period_key));

    // Once the recording has expired and the period has ended, the key is deleted in
    // Infisical.
    clock.advance(chrono::Duration::days(60));
    let report = retention.sweep(false).await.unwrap();
    let deleted: Vec<Uuid> = report.deleted.iter().map(|entry| entry.id).collect();
    assert_eq!(deleted, [id]);
    assert_eq!(report.destroyed_keys, std::slice::from_ref(&period_key));
    assert!(!setup.fake.kms_key_names().contains(&period_key));
    assert_eq!(setup.fake.deleted_kms_keys(), [period_key]);
}

both_backends!(
    missing_kms_key_fails_readiness,
    missing_kms_key_fails_readiness_body
);
async fn missing_kms_key_fails_readiness_body(database: TestDatabase) {
    let setup = setup().await;
    let now = Utc::now();
    let expires = now + chrono::Duration::days(30);
    let (id, _) = record(&setup.storage, setup.keys.as_ref(), now, expires).unwrap();
    insert_entry(&database.db, id, now, expires).await;

    let checks = broker::recordings::check_keys_at_start(&setup.config, &database.db, Vec::new())
        .await
        .unwrap();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].check().await, Ok(()));

    // An operator deletes the period key in Infisical: start-up and /readyz fail and
    // name the recording, the key and the project.
    let period_key = RecordingMetadata::read(setup.storage.as_ref(), id)
        .unwrap()
        .period_kek
        .to_string();
    setup.fake.remove_kms_key(&period_key);

    let reason = checks[0].check().await.unwrap_err();
    assert!(reason.contains(&id.to_string()), "{reason}");
    assert!(reason.contains(&period_key), "{reason}");
    assert!(reason.contains(PROJECT_ID), "{reason}");
    let Err(error) =
        broker::recordings::check_keys_at_start(&setup.config, &database.db, Vec::new()).await
    else {
        panic!("start-up passed with a missing key");
    };
    assert!(error.to_string().contains(&id.to_string()), "{error}");

    // An unreachable KMS fails the check too, rather than passing it.
    setup.fake.set_kms_unavailable(true);
    let reason = checks[0].check().await.unwrap_err();
    assert!(reason.contains("HTTP 503"), "{reason}");
}

#[test]
fn infisical_keys_need_the_infisical_connection() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "STRONGROOM_DATA_DIR",
            format!("\"{}\"", dir.path().display()),
        ),
        (
            "STRONGROOM_SESSIONS__RECORDING_KEYS",
            "\"infisical\"".to_owned(),
        ),
        (
            "STRONGROOM_SESSIONS__RECORDING_KEYS_PROJECT_ID",
            "\"kms\"".to_owned(),
        ),
    ]
    .map(|(name, value)| (name.to_owned(), value));

    let error = broker::config::load(None, env).unwrap_err();

    let problem = error
        .problems
        .iter()
        .find(|problem| problem.key == "sessions.recording_keys")
        .unwrap_or_else(|| panic!("no problem names sessions.recording_keys: {error}"));
    assert!(problem.message.contains("secrets.source"), "{error}");
}
