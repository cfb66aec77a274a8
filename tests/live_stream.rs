//! The thin path from a real agent (Xvfb, Chromium, VP8 encoder) through the broker's
//! stream hub into viewers and an encrypted recording, with its segment hashes in the
//! audit chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::audit::{self, AuditLog, StoredEvent};
use broker::clock::SystemClock;
use broker::stream::{
    RecordingSettings, SessionHooks, StreamHub, StreamSettings, StreamStart, ViewerEvent,
};
use broker::tasks::TaskRegistry;
use broker::testing::{TestBackend, TestDatabase};
use chrono::Utc;
use protocol::SessionSecret;
use recorder::{
    KeyStore, LocalDirStorage, LocalKeyStore, Record, RecorderConfig, RecordingReader, Storage,
};
use strongroom_tests::agent::HostAgent;
use strongroom_tests::pages::PageServer;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

#[derive(Default)]
struct RecordedHooks {
    ended: Mutex<Vec<(Uuid, String)>>,
}

impl SessionHooks for RecordedHooks {
    fn end_session(&self, session_id: Uuid, reason: String) {
        self.ended.lock().unwrap().push((session_id, reason));
    }

    fn person_input(&self, _session_id: Uuid) {}
}

struct Fixture {
    database: TestDatabase,
    audit: AuditLog,
    storage: Arc<dyn Storage>,
    keys: Arc<dyn KeyStore>,
    hub: StreamHub,
    hooks: Arc<RecordedHooks>,
    tasks: TaskRegistry,
    _pages: PageServer,
    agent: HostAgent,
    secret: SessionSecret,
}

async fn fixture(config: RecorderConfig) -> Fixture {
    let database = TestDatabase::new(TestBackend::Sqlite).await;
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let storage: Arc<dyn Storage> =
        Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap());
    let keys: Arc<dyn KeyStore> =
        Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap());

    let page = "<html><body style='margin:0;background:#1e90ff'><h1 style='color:white'>Statement</h1></body></html>";
    let pages = PageServer::start(HashMap::from([("/", page.to_owned())])).await;
    let secret = SessionSecret::new(hex::encode(rand_bytes()));
    let agent = HostAgent::start(&secret.sha256_hex(), &pages.url("/")).await;

    let tasks = TaskRegistry::new();
    let recording = RecordingSettings {
        storage: storage.clone(),
        keys: keys.clone(),
        config,
    };
    let hub = StreamHub::new(
        StreamSettings::default(),
        recording,
        audit.clone(),
        tasks.clone(),
    );
    let hooks = Arc::new(RecordedHooks::default());
    hub.set_hooks(hooks.clone());

    Fixture {
        database,
        audit,
        storage,
        keys,
        hub,
        hooks,
        tasks,
        _pages: pages,
        agent,
        secret,
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (index, byte) in Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(Uuid::new_v4().as_bytes())
        .enumerate()
    {
        bytes[index] = *byte;
    }
    bytes
}

/// Reserves a session row, as the portal does before a launch, and starts its stream.
async fn start(fixture: &Fixture) -> (Uuid, Uuid, Arc<broker::stream::LiveStream>) {
    let session_id = Uuid::new_v4();
    let recording_id = Uuid::new_v4();
    strongroom_tests::reserve_session_row(&fixture.database.db, session_id, "alice").await;
    let stream = fixture
        .hub
        .start(StreamStart {
            session_id,
            owner: "alice".into(),
            agent_addr: fixture.agent.address,
            secret: fixture.secret.clone(),
            recording_id,
            recording_expires_at: Utc::now() + chrono::Duration::days(30),
            clipboard: Default::default(),
        })
        .await
        .expect("stream starts");
    (session_id, recording_id, stream)
}

async fn events_of(audit: &AuditLog, action: &str) -> Vec<StoredEvent> {
    audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == action)
        .collect()
}

/// Waits until an audit event with this action exists.
async fn wait_for_event(audit: &AuditLog, action: &str, timeout: Duration) -> Vec<StoredEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let events = events_of(audit, action).await;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn segment_hashes(events: &[StoredEvent]) -> Vec<[u8; 32]> {
    let mut indexed: Vec<(u64, [u8; 32])> = events
        .iter()
        .map(|event| {
            let details: serde_json::Value = serde_json::from_str(&event.details).unwrap();
            let hash: [u8; 32] = hex::decode(details["sha256"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            (details["index"].as_u64().unwrap(), hash)
        })
        .collect();
    indexed.sort();
    indexed.into_iter().map(|(_, hash)| hash).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stream_reaches_viewer_and_recording() {
    let config = RecorderConfig {
        target_segment_duration: Duration::from_secs(1),
        ..RecorderConfig::default()
    };
    let fixture = fixture(config).await;
    let (session_id, recording_id, stream) = start(&fixture).await;
    let (_, mut viewer) = stream.subscribe();

    // The viewer gets the stream configuration, then keyframes of the page.
    let mut config_seen = None;
    let mut keyframes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while keyframes < 2 {
        let event = tokio::time::timeout_at(deadline, viewer.recv()).await;
        match event {
            Ok(Ok(ViewerEvent::Config {
                codec,
                width,
                height,
            })) => config_seen = Some((codec, width, height)),
            Ok(Ok(ViewerEvent::Video { keyframe: true, .. })) => keyframes += 1,
            Ok(Ok(ViewerEvent::Ended { reason })) => panic!(
                "stream ended: {reason}; agent log:\n{}",
                fixture.agent.log()
            ),
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) | Err(_) => {
                panic!("no keyframes; agent log:\n{}", fixture.agent.log())
            }
        }
    }
    assert_eq!(config_seen, Some(("vp8".to_owned(), 640, 360)));

    fixture.hub.stop(session_id, "person ended the session");
    let sealed = wait_for_event(&fixture.audit, "recording.sealed", Duration::from_secs(20)).await;
    assert_eq!(sealed.len(), 1, "recording was not sealed");

    // Every stored segment's hash is in the audit chain, and the recording plays
    // back under exactly those hashes.
    let segments = events_of(&fixture.audit, "recording.segment.stored").await;
    assert!(!segments.is_empty());
    let hashes = segment_hashes(&segments);
    let sealed_details: serde_json::Value = serde_json::from_str(&sealed[0].details).unwrap();
    assert_eq!(
        sealed_details["segment_count"].as_u64(),
        Some(hashes.len() as u64)
    );

    let mut reader =
        RecordingReader::open(fixture.storage.clone(), fixture.keys.as_ref(), recording_id)
            .unwrap();
    reader.require_hashes(hashes.clone()).unwrap();
    let mut packets = 0;
    for record in reader.records() {
        if let Record::Packet(_) = record.unwrap() {
            packets += 1;
        }
    }
    assert!(packets >= 2, "only {packets} packets recorded");
    let report =
        recorder::verify_recording(fixture.storage.as_ref(), recording_id, &hashes).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        audit::verify(&fixture.database.db)
            .await
            .unwrap()
            .is_intact()
    );
    assert!(
        fixture.hooks.ended.lock().unwrap().is_empty(),
        "a stopped stream does not end the session again"
    );

    assert!(
        fixture
            .tasks
            .shutdown(Duration::from_secs(10))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_failure_freezes_stream_and_ends_session() {
    // A byte budget that a few seconds of video exceed: the recorder then refuses
    // writes, as it does when its store fails.
    let config = RecorderConfig {
        target_segment_duration: Duration::from_secs(1),
        recording_byte_budget: 64 * 1024,
        ..RecorderConfig::default()
    };
    let fixture = fixture(config).await;
    let (session_id, recording_id, stream) = start(&fixture).await;
    let (_, mut viewer) = stream.subscribe();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut failure = None;
    let mut ended = false;
    while !ended {
        match tokio::time::timeout_at(deadline, viewer.recv()).await {
            Ok(Ok(ViewerEvent::RecordingFailed { reason })) => failure = Some(reason),
            Ok(Ok(ViewerEvent::Video { .. })) => assert!(
                failure.is_none(),
                "a frame was shown after the recording failed"
            ),
            Ok(Ok(ViewerEvent::Ended { .. })) | Ok(Err(RecvError::Closed)) => ended = true,
            Ok(_) => {}
            Err(_) => panic!(
                "the stream did not end; agent log:\n{}",
                fixture.agent.log()
            ),
        }
    }

    let reason = failure.expect("viewers were told the recording failed");
    assert!(reason.contains("recording failed"), "{reason}");
    let ended = fixture.hooks.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, session_id);
    assert!(ended[0].1.contains("recording failed"));
    let actions: Vec<String> = fixture
        .audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.action)
        .collect();
    assert_eq!(
        events_of(&fixture.audit, "recording.failed").await.len(),
        1,
        "{actions:?}"
    );

    // What was recorded before the failure stays playable.
    wait_for_event(&fixture.audit, "recording.sealed", Duration::from_secs(10)).await;
    let hashes = segment_hashes(&events_of(&fixture.audit, "recording.segment.stored").await);
    let mut reader =
        RecordingReader::open(fixture.storage.clone(), fixture.keys.as_ref(), recording_id)
            .unwrap();
    let segment_count = hashes.len() as u64;
    reader.require_hashes(hashes).unwrap();
    assert!(reader.records().all(|record| record.is_ok()));

    // The catalogue lists it as sealed with the segments stored before the failure.
    let entry = broker::recordings::catalogue::get(&fixture.database.db, recording_id)
        .await
        .unwrap()
        .expect("catalogue row");
    assert_eq!(
        entry.state,
        broker::recordings::catalogue::RecordingState::Sealed
    );
    assert_eq!(entry.segment_count, segment_count);
    assert_eq!(entry.session_id, session_id);
    assert_eq!(entry.user_id, "alice");

    assert!(
        fixture
            .tasks
            .shutdown(Duration::from_secs(10))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_leaves_nothing_recorded() {
    use broker::recordings::catalogue;

    let database = TestDatabase::new(TestBackend::Sqlite).await;
    let audit = AuditLog::new(database.db.clone(), Arc::new(SystemClock));
    let recording = RecordingSettings {
        storage: Arc::new(LocalDirStorage::open(database.dir.path().join("recordings")).unwrap()),
        keys: Arc::new(LocalKeyStore::open(database.dir.path().join("keys")).unwrap()),
        config: RecorderConfig::default(),
    };
    let settings = StreamSettings {
        agent_connect_timeout: Duration::from_secs(1),
        ..StreamSettings::default()
    };
    let tasks = TaskRegistry::new();
    let hub = StreamHub::new(settings, recording, audit.clone(), tasks.clone());
    let hooks = Arc::new(RecordedHooks::default());
    hub.set_hooks(hooks.clone());
    // Nothing listens on a port of a listener that is closed again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let agent_addr = closed.local_addr().unwrap();
    drop(closed);

    let session_id = Uuid::new_v4();
    let recording_id = Uuid::new_v4();
    strongroom_tests::reserve_session_row(&database.db, session_id, "alice").await;
    hub.start(StreamStart {
        session_id,
        owner: "alice".into(),
        agent_addr,
        secret: SessionSecret::new(hex::encode(rand_bytes())),
        recording_id,
        recording_expires_at: Utc::now() + chrono::Duration::days(30),
        clipboard: Default::default(),
    })
    .await
    .expect("stream starts");

    // The stream seals the recording, then asks the lifecycle to end the session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while hooks.ended.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session was not ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = catalogue::get(&database.db, recording_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.segment_count, 0);
    assert_eq!(entry.detail.as_deref(), Some(catalogue::NOTHING_RECORDED));
    let ended = hooks.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(ended[0].1.contains("unreachable"), "{ended:?}");
    tasks.shutdown(Duration::from_secs(10)).await;
}
