//! Replay of a recording in a real headless Chromium: an auditor finds the recording in
//! the list, plays it, seeks, and sees which segment failed verification after one
//! was tampered with. The same browser checks that addresses a person may not open
//! show the portal's error page.
//!
//! The recording is a synthetic VP8 stream with its own timestamps (ffmpeg's `testsrc`
//! encoded by libvpx), written through the recorder exactly as the stream hub writes a
//! live session, so a long recording takes seconds, not its length in wall-clock time.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::audit::{Action, Actor, EventBuilder};
use broker::auth::Role;
use broker::auth::secret_key::TotpKey;
use broker::auth::totp::TotpSecret;
use broker::auth::users;
use broker::clock::ManualClock;
use broker::recordings::catalogue;
use broker::server::{self, RunningBroker};
use bytes::Bytes;
use chrono::Utc;
use recorder::{NewRecording, Packet, RecorderConfig, RecordingWriter, StreamConfig};
use strongroom_tests::browser::Browser;
use strongroom_tests::player::{seek_script, seek_to, wait_player};
use uuid::Uuid;

const PASSWORD: &str = "a long test passphrase";
/// Length of the synthetic recording: ten minutes.
const SECONDS: u32 = 600;

async fn start_broker(dir: &Path) -> RunningBroker {
    let env = [
        ("STRONGROOM_DATA_DIR", dir.display().to_string()),
        ("STRONGROOM_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        // No launcher runs: replay needs none.
        ("STRONGROOM_LAUNCHER__MODE", "external".to_owned()),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    let config = broker::config::load(None, env).expect("test configuration is valid");
    server::start(config).await.expect("broker starts")
}

async fn add_user(
    broker: &RunningBroker,
    dir: &Path,
    username: &str,
    role: Role,
) -> (String, TotpSecret) {
    let key = TotpKey::load_or_create(dir).unwrap();
    let id = Uuid::new_v4().to_string();
    let secret = TotpSecret::generate();
    let sealed = key.seal(&id, secret.as_bytes()).unwrap();
    let hash = broker::auth::password::hash(PASSWORD).unwrap();
    let roles = BTreeSet::from([role]);
    let user = users::NewLocalUser {
        id: &id,
        username,
        display_name: username,
        password_hash: &hash,
        sealed_totp: Some(&sealed),
        roles: &roles,
    };
    users::create_local(&broker.state.db, user, Utc::now().timestamp_millis())
        .await
        .unwrap();
    (id, secret)
}

/// A VP8 frame from an IVF file.
struct Frame {
    pts_us: u64,
    keyframe: bool,
    data: Vec<u8>,
}

/// Encodes `seconds` of ffmpeg's test pattern (a running clock on colour bars) at ten
/// frames a second with a keyframe every second, and returns the frames.
fn synthetic_vp8(dir: &Path, seconds: u32) -> (u32, u32, Vec<Frame>) {
    synthetic_vp8_sized(dir, "synthetic", "160x120", seconds)
}

/// Encodes the test pattern as [`synthetic_vp8`] does, at picture size `size`
/// (`WIDTHxHEIGHT`), into `dir/NAME.ivf`.
fn synthetic_vp8_sized(dir: &Path, name: &str, size: &str, seconds: u32) -> (u32, u32, Vec<Frame>) {
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
        .arg(format!("testsrc=duration={seconds}:size={size}:rate=10"))
        .args([
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "10",
            "-b:v",
            "100k",
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
    assert_eq!(&file[..4], b"DKIF", "not an IVF file");
    let u16_at = |at: usize| u16::from_le_bytes([file[at], file[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
    let header_len = usize::from(u16_at(6));
    let (width, height) = (u32::from(u16_at(12)), u32::from(u16_at(14)));
    let (rate, scale) = (u64::from(u32_at(16)), u64::from(u32_at(20)));

    let mut frames = Vec::new();
    let mut at = header_len;
    while at + 12 <= file.len() {
        let size = u32_at(at) as usize;
        let pts = u64::from_le_bytes(file[at + 4..at + 12].try_into().unwrap());
        let data = file[at + 12..at + 12 + size].to_vec();
        // In VP8, bit 0 of the first byte is 0 for a keyframe.
        let keyframe = data[0] & 1 == 0;
        frames.push(Frame {
            pts_us: pts * scale * 1_000_000 / rate,
            keyframe,
            data,
        });
        at += 12 + size;
    }
    (width, height, frames)
}

/// Writes a recording from `frames` into the broker's recording store the way the stream
/// hub does: a catalogue row, each segment's hash in the audit trail, then the seal.
async fn record(
    broker: &RunningBroker,
    user_id: &str,
    width: u32,
    height: u32,
    frames: Vec<Frame>,
) -> Uuid {
    let config = StreamConfig {
        codec: "vp8".into(),
        width,
        height,
    };
    record_parts(broker, user_id, vec![(config, frames)]).await
}

/// Writes a recording as [`record`] does from parts that each start with a stream
/// configuration, as a resize of the workspace display sends one before the keyframe
/// of the new size.
async fn record_parts(
    broker: &RunningBroker,
    user_id: &str,
    parts: Vec<(StreamConfig, Vec<Frame>)>,
) -> Uuid {
    let id = Uuid::new_v4();
    let session_id = Uuid::new_v4();
    let settings = broker.state.portal.hub.recording_settings().clone();
    let started_at = Utc::now();
    let expires_at = started_at + chrono::Duration::days(90);
    catalogue::insert(
        &broker.state.db,
        &catalogue::NewEntry {
            id,
            session_id,
            user_id: user_id.to_owned(),
            site: "demo-bank".to_owned(),
            instance_id: "replay-test".to_owned(),
            started_at,
            expires_at,
        },
    )
    .await
    .unwrap();

    let (segments, sealed, bytes) = tokio::task::spawn_blocking(move || {
        let config = RecorderConfig {
            target_segment_duration: Duration::from_secs(4),
            ..RecorderConfig::default()
        };
        let new = NewRecording {
            id,
            created_at: started_at,
            expires_at,
            stream: Some(parts[0].0.clone()),
        };
        let mut writer = RecordingWriter::create(
            settings.storage.clone(),
            settings.keys.as_ref(),
            config,
            new,
        )
        .unwrap();
        let mut segments = Vec::new();
        for (number, (stream, frames)) in parts.into_iter().enumerate() {
            if number > 0 {
                writer.push_config(stream).unwrap();
            }
            for frame in frames {
                let packet = Packet {
                    pts_us: frame.pts_us,
                    keyframe: frame.keyframe,
                    data: Bytes::from(frame.data),
                };
                segments.extend(writer.push_packet(packet).unwrap());
            }
        }
        let sealed = writer.seal().unwrap();
        segments.extend(sealed.final_segment.clone());
        (segments, sealed, writer.stored_bytes())
    })
    .await
    .unwrap();

    for segment in &segments {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .session(session_id)
            .target(format!("recording:{id}"))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .build();
        broker.state.audit.append(event).await.unwrap();
    }
    catalogue::mark_sealed(
        &broker.state.db,
        id,
        &catalogue::SealedEntry {
            ended_at: started_at + chrono::Duration::seconds(i64::from(SECONDS)),
            segment_count: sealed.manifest.segment_count,
            bytes,
            seal_sha256: sealed.seal_sha256,
            detail: None,
        },
    )
    .await
    .unwrap();
    id
}

async fn sign_in(browser: &Browser, base: &str, username: &str, totp: &TotpSecret) {
    browser.open(&format!("{base}/")).await;
    browser.type_into("input[name=username]", username).await;
    browser.type_into("input[name=password]", PASSWORD).await;
    browser
        .type_into(
            "input[name=code]",
            &totp.code_at(Utc::now().timestamp() as u64),
        )
        .await;
    browser.click("button[type=submit]").await;
    // The portal's home page has the sign-out form once the sign-in is through.
    browser.element("form[action='/auth/logout']").await;
}

async fn replay_events(broker: &RunningBroker, recording: Uuid) -> usize {
    let target = format!("recording:{recording}");
    broker
        .state
        .audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| {
            event.action == "recording.replayed" && event.target.as_deref() == Some(&target)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_plays_seeks_and_sees_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let base = broker.base_url();
    let (auditor_id, totp) = add_user(&broker, dir.path(), "audrey", Role::Auditor).await;
    let (alice_id, _) = add_user(&broker, dir.path(), "alice", Role::User).await;
    let _ = auditor_id;

    let (width, height, frames) = synthetic_vp8(dir.path(), SECONDS);
    assert_eq!(frames.len(), (SECONDS * 10) as usize);
    let recording = record(&broker, &alice_id, width, height, frames).await;

    let browser = Browser::start().await;
    sign_in(&browser, &base, "audrey", &totp).await;

    // The list shows the recording; the link is looked up with a deadline because the
    // page may still be loading.
    browser
        .open(&format!("{base}/recordings?person={alice_id}"))
        .await;
    browser
        .click(&format!("a.recording-link[data-recording='{recording}']"))
        .await;

    let ready = wait_player(&browser, "r.ready || r.error").await;
    assert_eq!(ready["error"], "", "player failed: {ready}");
    assert_eq!(ready["position"], 0, "{ready}");
    assert!(
        ready["lit"].as_u64().unwrap() > 0,
        "first frame not drawn: {ready}"
    );
    assert_eq!(ready["width"], width);
    assert_eq!(ready["height"], height);
    assert_eq!(replay_events(&broker, recording).await, 1);

    // A seek shows the frame of that time: the last frame at or before it, within a
    // second.
    for target in [450.0, 27.35, 3.0, 599.85] {
        let probe = seek_to(&browser, target, Duration::from_secs(1)).await;
        let target_us = (target * 1e6) as i64;
        let position = probe["position"].as_i64().unwrap();
        assert!(
            position <= target_us && target_us - position < 1_000_000,
            "seek to {target} s shows the frame at {position} us"
        );
    }

    // Playing goes on from a seek to 7:30.
    browser.script(&seek_script(450.0)).await;
    wait_player(
        &browser,
        "r.position !== null && r.position <= 450000000 && r.position > 449000000",
    )
    .await;
    browser.click("#play").await;
    let played = wait_player(&browser, "r.error || r.position >= 451500000").await;
    assert_eq!(played["error"], "", "playback failed: {played}");
    browser.click("#play").await;

    // Seeks in quick succession, and Play pressed while a seek runs, leave neither a
    // "Seeking to" status nor an error behind.
    browser
        .script(
            "const s = document.getElementById('seek');
for (const v of ['100', '200', '300']) { s.value = v; s.dispatchEvent(new Event('change')); }
return true;",
        )
        .await;
    let settled = wait_player(
        &browser,
        "r.error || (r.status.indexOf('Seeking') < 0 && r.position !== null && r.position <= 300000000 && r.position > 299000000)",
    )
    .await;
    assert_eq!(settled["error"], "", "quick seeks failed: {settled}");
    browser
        .script(&format!(
            "{} document.getElementById('play').click(); return true;",
            seek_script(60.0).trim_end_matches("return true;")
        ))
        .await;
    let playing = wait_player(
        &browser,
        "r.error || (r.status.indexOf('Seeking') < 0 && r.position !== null && r.position > 300500000)",
    )
    .await;
    assert_eq!(playing["error"], "", "play during a seek failed: {playing}");
    browser.click("#play").await;

    // A flipped byte in segment 3 (seconds 12 to 16) is reported with its index and its
    // frames are never drawn.
    let segment = dir
        .path()
        .join("recordings")
        .join(recording.to_string())
        .join("seg-00000003.srs");
    let mut bytes = std::fs::read(&segment).expect("segment file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    browser
        .open(&format!("{base}/recordings/{recording}"))
        .await;
    wait_player(&browser, "r.ready || r.error").await;
    browser.script(&seek_script(13.0)).await;
    let refused = wait_player(&browser, "r.error").await;
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("segment 3 failed verification"), "{error}");
    let position = refused["position"].as_i64().unwrap();
    assert!(
        !(12_000_000..16_000_000).contains(&position),
        "a frame of the tampered segment was drawn at {position} us"
    );
    assert_eq!(replay_events(&broker, recording).await, 2);
    let target = format!("recording:{recording}");
    let detected = broker
        .state
        .audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| {
            event.action == "recording.verification.failed"
                && event.target.as_deref() == Some(&target)
        })
        .collect::<Vec<_>>();
    assert!(!detected.is_empty(), "the failed verification was not audited");
    assert!(
        detected[0].details.contains("segment 3"),
        "{}",
        detected[0].details
    );

    // After retention deleted it, the player says so instead of playing.
    let settings = broker.state.portal.hub.recording_settings().clone();
    let retention = broker::recordings::retention::Retention {
        audit: broker.state.audit.clone(),
        storage: settings.storage.clone(),
        keys: settings.keys.clone(),
        clock: Arc::new(ManualClock::new(Utc::now() + chrono::Duration::days(400))),
    };
    let report = retention.sweep(false).await.unwrap();
    assert_eq!(report.deleted.len(), 1);
    browser
        .open(&format!("{base}/recordings/{recording}"))
        .await;
    browser.element("#error").await;
    let message = browser
        .script("return document.getElementById('error').textContent;")
        .await;
    assert!(
        message.as_str().unwrap().contains("deleted by retention"),
        "{message}"
    );

    browser.quit().await;
    broker.shutdown().await;
}

/// Appends an audit event of `session_id` and returns when it occurred, in Unix
/// milliseconds.
async fn audit_session_event(
    broker: &RunningBroker,
    session_id: Uuid,
    builder: EventBuilder,
) -> i64 {
    let stored = broker
        .state
        .audit
        .append(builder.session(session_id).build())
        .await
        .unwrap();
    stored.occurred_at_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_shows_session_events_on_seek_bar() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let base = broker.base_url();
    let (_, totp) = add_user(&broker, dir.path(), "audrey", Role::Auditor).await;
    let (alice_id, _) = add_user(&broker, dir.path(), "alice", Role::User).await;

    let (width, height, frames) = synthetic_vp8(dir.path(), 60);
    let recording = record(&broker, &alice_id, width, height, frames).await;
    let entry = catalogue::get(&broker.state.db, recording)
        .await
        .unwrap()
        .unwrap();
    let session = entry.session_id;
    let start_ms = entry.started_at.timestamp_millis();

    let system = |name| Actor::System(name);
    let mut expected = Vec::new();
    let at = audit_session_event(
        &broker,
        session,
        EventBuilder::new(system("launcher"), Action::SessionLaunched),
    )
    .await;
    expected.push(("launch", at));
    let at = audit_session_event(
        &broker,
        session,
        EventBuilder::new(system("agent"), Action::AutoLoginFinished)
            .outcome(broker::audit::Outcome::Failure),
    )
    .await;
    expected.push(("auto-login", at));
    let at = audit_session_event(
        &broker,
        session,
        EventBuilder::new(system("egress"), Action::SiteAccessed).target("bank.test:443"),
    )
    .await;
    expected.push(("navigation", at));
    // A second connection to the same host is not a new navigation.
    audit_session_event(
        &broker,
        session,
        EventBuilder::new(system("egress"), Action::SiteAccessed).target("bank.test:443"),
    )
    .await;
    let at = audit_session_event(
        &broker,
        session,
        EventBuilder::new(system("reaper"), Action::SessionIdleWarned),
    )
    .await;
    expected.push(("idle-warning", at));
    let at = audit_session_event(
        &broker,
        session,
        EventBuilder::new(system("reaper"), Action::SessionEnded),
    )
    .await;
    expected.push(("end", at));
    // Events of another session are not shown.
    audit_session_event(
        &broker,
        Uuid::new_v4(),
        EventBuilder::new(system("reaper"), Action::SessionEnded),
    )
    .await;

    let browser = Browser::start().await;
    sign_in(&browser, &base, "audrey", &totp).await;
    browser
        .open(&format!("{base}/recordings/{recording}"))
        .await;
    let ready = wait_player(&browser, "r.ready || r.error").await;
    assert_eq!(ready["error"], "", "player failed: {ready}");

    let shown = browser
        .script(
            "return Array.from(document.querySelectorAll('#markers .marker'))
               .map((m) => [m.dataset.kind, Number(m.dataset.offsetUs), m.title]);",
        )
        .await;
    let shown = shown.as_array().expect("marker list");
    let kinds: Vec<&str> = shown.iter().map(|m| m[0].as_str().unwrap()).collect();
    let expected_kinds: Vec<&str> = expected.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, expected_kinds, "markers shown: {shown:?}");
    for (marker, (kind, at_ms)) in shown.iter().zip(&expected) {
        let offset_us = (at_ms - start_ms).max(0) * 1000;
        assert_eq!(
            marker[1].as_i64().unwrap(),
            offset_us,
            "position of the {kind} marker"
        );
    }
    assert!(
        shown[1][2]
            .as_str()
            .unwrap()
            .starts_with("Auto-login failed"),
        "{shown:?}"
    );
    assert!(
        shown[2][2]
            .as_str()
            .unwrap()
            .starts_with("Opened bank.test"),
        "{shown:?}"
    );

    browser.quit().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follows_a_resize() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let base = broker.base_url();
    let (_, totp) = add_user(&broker, dir.path(), "audrey", Role::Auditor).await;
    let (alice_id, _) = add_user(&broker, dir.path(), "alice", Role::User).await;

    // Ten seconds at 160x120, then the display is resized and ten seconds at 320x240
    // follow, with timestamps that go on from the first part.
    let (small_width, small_height, small) =
        synthetic_vp8_sized(dir.path(), "small", "160x120", 10);
    let (large_width, large_height, mut large) =
        synthetic_vp8_sized(dir.path(), "large", "320x240", 10);
    assert!(large[0].keyframe);
    for frame in &mut large {
        frame.pts_us += 10_000_000;
    }
    let stream = |width, height| StreamConfig {
        codec: "vp8".into(),
        width,
        height,
    };
    let recording = record_parts(
        &broker,
        &alice_id,
        vec![
            (stream(small_width, small_height), small),
            (stream(large_width, large_height), large),
        ],
    )
    .await;

    let browser = Browser::start().await;
    sign_in(&browser, &base, "audrey", &totp).await;
    browser
        .open(&format!("{base}/recordings/{recording}"))
        .await;
    let ready = wait_player(&browser, "r.ready || r.error").await;
    assert_eq!(ready["error"], "", "player failed: {ready}");
    assert_eq!(ready["width"], small_width);
    assert_eq!(ready["height"], small_height);

    // A seek after the resize shows a frame of the new size on a canvas of that size,
    // and a seek back before it returns to the old size.
    let after = seek_to(&browser, 15.0, Duration::from_secs(1)).await;
    assert_eq!(after["width"], large_width, "{after}");
    assert_eq!(after["height"], large_height, "{after}");
    assert!(after["lit"].as_u64().unwrap() > 0, "{after}");
    let before = seek_to(&browser, 5.0, Duration::from_secs(1)).await;
    assert_eq!(before["width"], small_width, "{before}");
    assert!(before["lit"].as_u64().unwrap() > 0, "{before}");

    // Playing across the resize goes on at the new size without a decoding error.
    browser.script(&seek_script(8.0)).await;
    wait_player(
        &browser,
        "r.position !== null && r.position <= 8000000 && r.position > 7000000",
    )
    .await;
    browser.click("#play").await;
    let played = wait_player(&browser, "r.error || r.position >= 12000000").await;
    assert_eq!(played["error"], "", "playback failed: {played}");
    assert_eq!(played["width"], large_width, "{played}");
    assert_eq!(played["height"], large_height, "{played}");
    browser.click("#play").await;
}

/// Opens, as a person, another person's session, a recording and a file that are not
/// theirs, an address that is not an id, and an admin page. Each shows the portal's
/// error page, while an API client asking for JSON keeps the JSON error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_pages_show_error_page_in_browser() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let base = broker.base_url();
    let (alice, _) = add_user(&broker, dir.path(), "alice", Role::User).await;
    let (_, bob_totp) = add_user(&broker, dir.path(), "bob", Role::User).await;
    let alice_session = Uuid::new_v4();
    strongroom_tests::reserve_session_row(&broker.state.db, alice_session, &alice).await;

    let browser = Browser::start().await;
    sign_in(&browser, &base, "bob", &bob_totp).await;
    let addresses = [
        format!("/sessions/{alice_session}"),
        format!("/recordings/{}", Uuid::new_v4()),
        format!("/files/{}", Uuid::new_v4()),
        "/sessions/not-an-id".to_owned(),
        "/admin".to_owned(),
    ];
    for address in &addresses {
        // WebDriver returns once the page has loaded.
        browser.open(&format!("{base}{address}")).await;
        let page = browser
            .script("return document.documentElement.outerHTML")
            .await;
        let page = page.as_str().unwrap_or_default().to_owned();
        assert!(!page.contains("{\"error\""), "{address} shows JSON: {page}");
        // The error page of a handler's error, or the sign-in pages' refusal of a role.
        assert!(
            page.contains("<main>")
                && (page.contains("id=\"error\"") || page.contains("id=\"message\"")),
            "{address} is not a portal error page: {page}"
        );
    }

    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/sessions/{alice_session}"))
        .header("cookie", browser.cookie_header().await)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    browser.quit().await;
    broker.shutdown().await;
}
