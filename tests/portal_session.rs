//! A banking session through the real portal, launcher, Docker engine and workspace
//! image: sign in, launch, watch the live view over the viewer WebSocket, end it, and
//! find the recording sealed with its segment hashes in an intact audit chain.
//!
//! Needs the workspace image (`strongroom image build`), which `scripts/test.sh` builds
//! before the tests run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use broker::audit;
use broker::auth::Role;
use broker::auth::users;
use futures::{SinkExt, StreamExt};
use reqwest::cookie::CookieStore;
use strongroom_tests::browser::Browser;
use strongroom_tests::stack::{Person, Stack, StackBuilder, UNREACHABLE_DEMO_SITE, wait_for};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

/// Session subnets of this test, apart from the launcher's and the session tests'.
const SUBNET_RANGE: &str = "172.30.0.0/16";

/// This file's stack; the workspace image check applies only when `launcher.image` is
/// not overridden.
fn stack() -> StackBuilder {
    Stack::builder(SUBNET_RANGE).image_check_only_when_built()
}

/// Imports the unreachable demo site, then creates alice, grants her the site and signs
/// her in.
async fn sign_in(stack: &Stack) -> Person {
    stack
        .import_sites("sites.toml", UNREACHABLE_DEMO_SITE)
        .await;
    stack.person("alice", &[Role::User], &["demo"]).await
}

/// Imports the unreachable demo site with a login recipe whose first step waits
/// `wait_secs` for `#user`, which never appears; `more_steps` follow it.
async fn import_demo_login(stack: &Stack, wait_secs: u32, more_steps: &str) {
    let site = format!(
        r##"{UNREACHABLE_DEMO_SITE}
[site.login]
credential_origins = ["https://bank.invalid"]

[[site.login.steps]]
action = "wait_for"
selector = "#user"
timeout_secs = {wait_secs}
{more_steps}"##
    );
    stack.import_sites("login-site.toml", &site).await;
}

/// Stores the demo site's shared credential: alice with `password`, without TOTP.
/// Returns the credential's reference.
async fn store_demo_credential(stack: &Stack, password: &str) -> broker::secrets::CredentialRef {
    let key = broker::secrets::CredentialKey::load_or_create(stack.dir.path()).unwrap();
    let store = broker::secrets::LocalStore::new(
        stack.db(),
        Arc::new(key),
        Arc::new(broker::clock::SystemClock),
    );
    let reference = broker::secrets::CredentialRef::shared("demo").unwrap();
    let credentials =
        broker::secrets::BankCredentials::new(&reference, "alice".into(), password.into(), None)
            .unwrap();
    store
        .save(&reference, &credentials, "system:test")
        .await
        .unwrap();
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stop_ends_live_sessions() {
    let stack = stack().start().await;
    let person = sign_in(&stack).await;
    let (session_id, _) = person.launch("demo").await;

    // `stop` asserts that no container or network of the instance is left.
    let dir = stack.stop().await;
    let database = broker::config::DatabaseConfig {
        target: broker::config::DatabaseTarget::Sqlite {
            path: dir.path().join("strongroom.db"),
        },
        max_connections: 1,
        connect_timeout: Duration::from_secs(10),
    };
    let db = broker::db::Database::connect(&database).await.unwrap();
    let record = broker::sessions::store::get(&db, session_id)
        .await
        .unwrap()
        .expect("session row");
    assert!(!record.state.is_live());
    assert_eq!(record.end_reason.as_deref(), Some("broker_stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_person_cannot_view_or_end_a_session() {
    let stack = stack().start().await;
    let owner = sign_in(&stack).await;
    let (session_id, location) = owner.launch("demo").await;
    let (_, bob_totp) = stack.add_user("bob", &[Role::User]).await;
    let (carol, carol_totp) = stack.add_user("carol", &[Role::User]).await;
    users::set_roles(
        &stack.broker().state.db,
        &carol,
        &BTreeSet::from([Role::Auditor]),
        chrono::Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    let bob = stack.sign_in("bob", &bob_totp).await.client;
    let auditor = stack.sign_in("carol", &carol_totp).await.client;
    let page = format!("{}{location}", stack.base);
    let end = format!("{}/sessions/{session_id}/end", stack.base);

    let bob_page = bob.get(&page).send().await.unwrap();
    assert_eq!(
        bob_page.status(),
        reqwest::StatusCode::NOT_FOUND,
        "another user must not learn that the session exists"
    );
    let bob_end = bob
        .post(&end)
        .header("origin", &stack.base)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_end.status(), reqwest::StatusCode::FORBIDDEN);
    let auditor_page = auditor.get(&page).send().await.unwrap();
    assert_eq!(
        auditor_page.status(),
        reqwest::StatusCode::FORBIDDEN,
        "an auditor reads records but does not watch live"
    );
    let auditor_end = auditor
        .post(&end)
        .header("origin", &stack.base)
        .send()
        .await
        .unwrap();
    assert_eq!(auditor_end.status(), reqwest::StatusCode::FORBIDDEN);

    let record = broker::sessions::store::get(&stack.broker().state.db, session_id)
        .await
        .unwrap()
        .expect("session row");
    assert!(
        record.state.is_live(),
        "refused requests must not end the session"
    );
    let owner_page = owner.client.get(&page).send().await.unwrap();
    assert_eq!(owner_page.status(), reqwest::StatusCode::OK);

    // `stop` asserts that no container or network of the instance is left.
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_terminates_live_session_with_reason() {
    let stack = stack().start().await;
    let person = sign_in(&stack).await;
    let (session_id, _) = person.launch("demo").await;
    let ada = stack.person("ada", &[Role::Admin], &[]).await;
    let (admin_id, admin) = (ada.user_id, ada.client);

    let live: serde_json::Value = admin
        .get(format!("{}/api/v1/sessions", stack.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        live.as_array()
            .unwrap()
            .iter()
            .any(|session| session["id"] == session_id.to_string()),
        "{live}"
    );

    let terminated = admin
        .post(format!(
            "{}/api/v1/sessions/{session_id}/terminate",
            stack.base
        ))
        .header("origin", &stack.base)
        .json(&serde_json::json!({"reason": "Suspicious transfer pattern"}))
        .send()
        .await
        .unwrap();
    assert_eq!(terminated.status(), reqwest::StatusCode::OK);
    let terminated: serde_json::Value = terminated.json().await.unwrap();
    assert_eq!(terminated["state"], "ended", "{terminated}");
    assert_eq!(terminated["end_reason"], "terminated_by_admin");
    assert_eq!(terminated["ended_by"], format!("user:{admin_id}"));

    let again = admin
        .post(format!(
            "{}/api/v1/sessions/{session_id}/terminate",
            stack.base
        ))
        .header("origin", &stack.base)
        .json(&serde_json::json!({"reason": "twice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::CONFLICT);

    stack
        .wait_until_cleaned("the instance's containers and networks to go")
        .await;
    let events = stack.broker().state.audit.list(0, 10_000).await.unwrap();
    let reason = events
        .iter()
        .find(|event| event.action == "admin.session.terminated")
        .expect("termination audited");
    assert_eq!(reason.actor, format!("user:{admin_id}"));
    assert_eq!(reason.session_id, Some(session_id.to_string()));
    assert!(
        reason.details.contains("Suspicious transfer pattern"),
        "{}",
        reason.details
    );
    let ended = events
        .iter()
        .find(|event| {
            event.action == "session.ended" && event.session_id == Some(session_id.to_string())
        })
        .expect("session end audited");
    assert!(
        ended.details.contains("terminated_by_admin"),
        "{}",
        ended.details
    );
    assert!(reason.seq < ended.seq);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_streams_from_container_to_viewer_and_recording() {
    let stack = stack().start().await;
    let db = stack.broker().state.db.clone();
    let person = sign_in(&stack).await;
    let (client, jar) = (&person.client, &person.jar);
    let (session_id, location) = person.launch("demo").await;

    // The viewer page carries a one-time ticket for the WebSocket.
    let page = client
        .get(format!("{}{location}", stack.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let socket_path = page
        .split("data-socket=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("viewer page has a socket path");
    let socket_url = format!(
        "{}{}",
        stack.base.replacen("http", "ws", 1),
        socket_path.replace("&amp;", "&")
    );
    let cookies = jar.cookies(&stack.base.parse().unwrap()).unwrap();

    // A foreign Origin is refused before the ticket is used.
    let mut foreign = socket_url.as_str().into_client_request().unwrap();
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    foreign.headers_mut().insert("cookie", cookies.clone());
    assert!(tokio_tungstenite::connect_async(foreign).await.is_err());

    let mut request = socket_url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", stack.base.parse().unwrap());
    request.headers_mut().insert("cookie", cookies.clone());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("viewer socket opens");

    // The stream configuration, then a VP8 keyframe from the container's agent.
    let mut config = None;
    let mut keyframe = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !keyframe {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("no keyframe from the workspace")
            .unwrap()
            .unwrap();
        match message {
            Message::Text(text) => {
                let status: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_ne!(status["type"], "ended", "session ended early: {status}");
                if status["type"] == "config" {
                    config = Some(status);
                }
            }
            Message::Binary(frame) => {
                keyframe = frame.len() > 10 && frame[0] == 0x01 && frame[1] & 1 == 1
            }
            _ => {}
        }
    }
    let config = config.expect("stream configuration came first");
    assert_eq!(config["codec"], "vp8");

    // Person input reaches the agent and counts as activity.
    socket
        .send(Message::text(r#"{"type":"mouse_move","x":10,"y":10}"#))
        .await
        .unwrap();

    // The same ticket does not open a second viewer.
    let mut reused = socket_url.as_str().into_client_request().unwrap();
    reused
        .headers_mut()
        .insert("origin", stack.base.parse().unwrap());
    reused.headers_mut().insert("cookie", cookies);
    assert!(tokio_tungstenite::connect_async(reused).await.is_err());

    // Ending the session closes the viewer with the reason and seals the recording.
    let ended = client
        .post(format!("{}/sessions/{session_id}/end", stack.base))
        .header("origin", &stack.base)
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_redirection());
    let reason = loop {
        let message = tokio::time::timeout_at(
            tokio::time::Instant::now() + Duration::from_secs(30),
            socket.next(),
        )
        .await
        .expect("viewer was not told the session ended");
        match message {
            Some(Ok(Message::Text(text))) => {
                let status: serde_json::Value = serde_json::from_str(&text).unwrap();
                if status["type"] == "ended" {
                    break status["reason"].as_str().unwrap_or_default().to_owned();
                }
            }
            Some(Ok(_)) => {}
            other => panic!("viewer socket closed without an end message: {other:?}"),
        }
    };
    assert!(!reason.is_empty());

    let audit_log = &stack.broker().state.audit;
    let sealed = wait_for(
        "the sealed recording in the audit log",
        Duration::from_secs(30),
        || async {
            let events = audit_log.list(0, 100_000).await.unwrap();
            let sealed: Vec<_> = events
                .into_iter()
                .filter(|event| {
                    event.action == "recording.sealed"
                        && event.session_id.as_deref() == Some(&session_id.to_string())
                })
                .collect();
            (!sealed.is_empty()).then_some(sealed)
        },
    )
    .await;
    assert_eq!(sealed.len(), 1);
    let events = audit_log.list(0, 100_000).await.unwrap();
    let stored = events
        .iter()
        .filter(|event| event.action == "recording.segment.stored")
        .count();
    assert!(stored >= 1, "no segment hash in the audit trail");
    for action in [
        "session.launch.succeeded",
        "session.ended",
        "recording.started",
    ] {
        assert!(
            events.iter().any(|event| event.action == action),
            "{action} missing from the audit trail"
        );
    }
    assert!(audit::verify(&db).await.unwrap().is_intact());

    // The recording verifies against the chain and exports to a WebM file with a
    // duration, as `strongroom recording verify|export` do.
    let recording: Uuid = sealed[0]
        .target
        .as_deref()
        .unwrap()
        .trim_start_matches("recording:")
        .parse()
        .unwrap();
    // The export's muxing child is the strongroom binary of this build:
    // target/<profile>/deps/portal_session-<hash> has it in target/<profile>.
    let strongroom = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("strongroom");
    let config = broker::config::load(
        None,
        [
            (
                "STRONGROOM_DATA_DIR".to_owned(),
                stack.dir.path().display().to_string(),
            ),
            (
                "STRONGROOM_SESSIONS__EXPORT_MUX_PROGRAM".to_owned(),
                strongroom.display().to_string(),
            ),
        ],
    )
    .unwrap();
    let report = broker::recordings::verify(&config, audit_log, recording)
        .await
        .unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    let output = stack.dir.path().join("evidence.webm");
    let summary = broker::recordings::export(&config, audit_log, recording, &output)
        .await
        .unwrap();
    assert!(summary.packets >= 1);
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=noprint_wrappers=1:nokey=1",
        ])
        .arg(&output)
        .output()
        .expect("ffprobe runs");
    let duration: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .expect("ffprobe prints a duration");
    assert!(duration > 0.0, "exported file has no duration");

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_reported_and_refused() {
    let tag = format!("strongroom/workspace:missing-{}", Uuid::new_v4().simple());
    let quoted = format!("\"{tag}\"");
    let stack = stack()
        .env("STRONGROOM_LAUNCHER__IMAGE", quoted.as_str())
        .start()
        .await;
    let person = sign_in(&stack).await;

    // `/readyz` names the missing image and the command that builds it.
    let ready = reqwest::get(format!("{}/readyz", stack.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    let image_check = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "workspace_image")
        .unwrap()
        .clone();
    assert_eq!(image_check["ok"], false);
    let error = image_check["error"].as_str().unwrap();
    assert!(error.contains(&tag), "{error}");
    // The advice names where the image was set and the fixes that work: building makes
    // a content-addressed tag, never this one.
    assert!(
        error.contains("set by the environment variable STRONGROOM_LAUNCHER__IMAGE"),
        "{error}"
    );
    assert!(error.contains("remove launcher.image"), "{error}");
    assert!(
        error.contains("docker tag $(docker images --filter label=org.strongroom.recipe=workspace"),
        "{error}"
    );
    assert!(error.contains(&format!(" {tag}`")), "{error}");
    assert!(!error.contains("build it with"), "{error}");

    // A launch is refused with a message for the person, and nothing is pulled or left.
    let refused = person
        .client
        .post(format!("{}/sessions", stack.base))
        .header("origin", &stack.base)
        .form(&[("site", "demo")])
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_server_error(), "{}", refused.status());
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("The workspace cannot start right now. The administrator has been told"),
        "{page}"
    );
    assert!(!page.contains(&tag), "{page}");
    assert!(!page.contains("strongroom image build"), "{page}");
    assert!(!page.contains("launcher.image"), "{page}");

    // The operator's detail goes to the audit trail.
    let events = stack.broker().state.audit.list(0, 100_000).await.unwrap();
    let failed = events
        .iter()
        .find(|event| event.action == "session.launch.failed")
        .expect("session.launch.failed in the audit trail");
    assert!(failed.details.contains(&tag), "{}", failed.details);
    assert!(
        failed.details.contains("never pulled"),
        "{}",
        failed.details
    );
    let pulled = std::process::Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(!pulled.status.success(), "{tag} appeared in the engine");

    stack.stop().await;
}

/// Reads the viewer canvas: its size, how many sampled pixels are not black, and the
/// status lines the viewer script shows.
const CANVAS_PROBE: &str = "const c = document.getElementById('screen');
if (!c) return null;
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4 * 101) { if (data[i] || data[i + 1] || data[i + 2]) lit++; }
const status = document.getElementById('status');
const ended = document.getElementById('ended');
return { width: c.width, height: c.height, lit, status: status.hidden ? '' : status.textContent, ended: ended.hidden ? '' : ended.textContent };";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_signs_in_launches_and_sees_the_workspace() {
    let stack = stack().start().await;
    let db = stack.broker().state.db.clone();
    stack
        .import_sites("sites.toml", UNREACHABLE_DEMO_SITE)
        .await;
    let (alice, totp) = stack.add_user("alice", &[Role::User]).await;
    stack.grant(&alice, "demo").await;
    let browser = Browser::start().await;

    stack.sign_in_browser(&browser, "alice", &totp).await;
    browser.click("#launch-demo").await;
    browser.element("#screen").await;

    // The viewer script decodes the workspace's VP8 stream onto the canvas.
    let probe = wait_for(
        "the workspace on the viewer canvas",
        Duration::from_secs(120),
        || async {
            let probe = browser.script(CANVAS_PROBE).await;
            if probe.is_null() {
                return None;
            }
            assert_eq!(probe["status"], "", "viewer reported a problem: {probe}");
            assert_eq!(probe["ended"], "", "session ended early: {probe}");
            (probe["lit"].as_u64().unwrap_or(0) > 0).then_some(probe)
        },
    )
    .await;
    // The stream starts at 1280x720 and then follows the viewer's area, which the
    // 1400x1000 browser window bounds.
    let (width, height) = (
        probe["width"].as_u64().unwrap(),
        probe["height"].as_u64().unwrap(),
    );
    assert!((640..=1400).contains(&width), "canvas width {width}");
    assert!((360..=1000).contains(&height), "canvas height {height}");

    browser.click("form[action$='/end'] button").await;
    let sessions = broker::sessions::store::list_for_user(&db, &alice, 10)
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    wait_for("the session to end", Duration::from_secs(30), || async {
        let record = broker::sessions::store::get(&db, sessions[0].id)
            .await
            .unwrap()
            .unwrap();
        (!record.state.is_live()).then_some(())
    })
    .await;

    browser.quit().await;
    stack.stop().await;
}

/// Sends every tracing event of this test process at debug level and above to `file`,
/// as `RUST_LOG=debug strongroom serve 2>FILE` would. The broker and the launcher run
/// in the test process, so their logs are captured.
fn capture_debug_log(file: std::fs::File) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .init();
}

/// Returns the files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|window| window == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_password_stays_out_of_container() {
    let debug_log = tempfile::NamedTempFile::new().unwrap();
    capture_debug_log(debug_log.reopen().unwrap());
    let stack = stack().start().await;
    let db = stack.broker().state.db.clone();
    let person = sign_in(&stack).await;
    let marker = format!("Mk-{}", Uuid::new_v4().simple());

    // A site with a recipe whose form never appears: bank.invalid does not resolve, so
    // the step times out after the agent received the credential.
    import_demo_login(
        &stack,
        5,
        r##"
[[site.login.steps]]
action = "type_password"
selector = "#user"
"##,
    )
    .await;
    let reference = store_demo_credential(&stack, &marker).await;

    let (session_id, location) = person.launch("demo").await;
    let audit_log = broker::audit::AuditLog::new(db.clone(), Arc::new(broker::clock::SystemClock));
    let finished = wait_for(
        "the login's audit events",
        Duration::from_secs(90),
        || async {
            let events = audit_log.list(0, 100_000).await.unwrap();
            events
                .into_iter()
                .find(|event| event.action == "credential.auto_login.finished")
        },
    )
    .await;
    assert_eq!(finished.outcome, "failure", "{}", finished.details);
    assert!(finished.details.contains("step 0"), "{}", finished.details);

    // The container's configuration and every process's environment and command line.
    let label = format!("label=strongroom.broker={}", stack.instance_id);
    let listed = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &label])
        .output()
        .unwrap();
    let container = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
    assert!(
        !container.is_empty(),
        "the session's container is not running"
    );
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(&marker));
    let processes = std::process::Command::new("docker")
        .args([
            "exec",
            &container,
            "sh",
            "-c",
            "for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do cat \"$f\"; echo; done 2>/dev/null; echo DONE",
        ])
        .output()
        .unwrap();
    let process_text = String::from_utf8_lossy(&processes.stdout);
    assert!(
        process_text.contains("DONE"),
        "docker exec failed: {}",
        String::from_utf8_lossy(&processes.stderr)
    );
    assert!(
        process_text.contains("strongroom-agent"),
        "no process was read"
    );
    assert!(
        !process_text.contains(&marker),
        "the marker is in a process environment or command line"
    );
    let container_log = std::process::Command::new("docker")
        .args(["logs", &container])
        .output()
        .unwrap();
    assert!(container_log.status.success());
    assert!(
        !String::from_utf8_lossy(&container_log.stdout).contains(&marker)
            && !String::from_utf8_lossy(&container_log.stderr).contains(&marker),
        "the marker is in the workspace container's log"
    );

    // The audit trail, the portal pages and the failure count.
    let audit_text: String = audit_log
        .list(0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|event| format!("{:?} {} {}\n", event.target, event.action, event.details))
        .collect();
    assert!(audit_text.contains("credential.retrieved"));
    assert!(
        !audit_text.contains(&marker),
        "the marker is in the audit trail"
    );
    for page in ["/", location.as_str()] {
        let body = person
            .client
            .get(format!("{}{page}", stack.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(&marker), "the marker is on {page}");
    }
    let locked = broker::secrets::usage::claim(&db, &reference, session_id, true, 1)
        .await
        .unwrap();
    assert_eq!(locked, Ok(()), "one failure must not lock the credential");

    // The broker's debug log, and every file of the data directory once the recording
    // is sealed: the database with the recording's metadata, and the recording store.
    let data_dir = stack.stop().await;
    let log = std::fs::read_to_string(debug_log.path()).unwrap();
    assert!(
        log.contains(" DEBUG ") && log.contains("Auto-login step finished"),
        "the debug log was not captured: {} bytes",
        log.len()
    );
    assert!(
        !log.contains(&marker),
        "the marker is in the broker's debug log"
    );
    let recordings = std::fs::read_dir(data_dir.path().join("recordings"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert!(recordings > 0, "no recording was stored");
    assert_eq!(
        files_containing(data_dir.path(), marker.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "the marker is in these files of the data directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_runs_logout_recipe() {
    let debug_log = tempfile::NamedTempFile::new().unwrap();
    capture_debug_log(debug_log.reopen().unwrap());
    let stack = stack().start().await;
    let db = stack.broker().state.db.clone();
    let person = sign_in(&stack).await;
    // The logout button never appears (bank.invalid does not resolve), so the agent's
    // step times out after 2 s and reports that before the workspace is removed.
    import_demo_login(
        &stack,
        2,
        r##"
[[site.login.logout_steps]]
action = "click"
selector = "#logout"
timeout_secs = 2
"##,
    )
    .await;
    store_demo_credential(&stack, "Mk-unused").await;
    let (session_id, _) = person.launch("demo").await;
    let audit_log = broker::audit::AuditLog::new(db.clone(), Arc::new(broker::clock::SystemClock));
    let finished = |events: &[broker::audit::StoredEvent]| -> Vec<usize> {
        events
            .iter()
            .enumerate()
            .filter(|(_, event)| event.action == "credential.auto_login.finished")
            .map(|(index, _)| index)
            .collect()
    };
    // The login fails after 2 s and leaves the session to the person.
    wait_for(
        "the logout's audit event",
        Duration::from_secs(90),
        || async {
            let events = audit_log.list(0, 100_000).await.unwrap();
            (!finished(&events).is_empty()).then_some(())
        },
    )
    .await;

    let started = std::time::Instant::now();
    let ended = person
        .client
        .post(format!("{}/sessions/{session_id}/end", stack.base))
        .header("origin", &stack.base)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert!(
        ended.status().is_success() || ended.status().is_redirection(),
        "{}",
        ended.status()
    );
    assert!(
        elapsed < broker::sites::logout::MAX_LOGOUT_WAIT + Duration::from_secs(30),
        "ending took {elapsed:?}"
    );
    let events = audit_log.list(0, 100_000).await.unwrap();
    let results = finished(&events);
    let log = std::fs::read_to_string(debug_log.path()).unwrap();
    let log: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("logout recipe") || line.contains("Auto-login"))
        .collect();
    assert_eq!(
        results.len(),
        2,
        "the workspace reported no logout result; log:\n{}",
        log.join("\n")
    );
    let logout = results[1];
    let end = events
        .iter()
        .position(|event| event.action == "session.ended")
        .expect("the session did not end");
    assert!(logout < end, "the logout result came after the end");
    assert_eq!(events[logout].outcome, "failure");
    assert!(
        events[logout].details.contains("step 0") && events[logout].details.contains("timed out"),
        "{}",
        events[logout].details
    );

    stack.stop().await;
}
