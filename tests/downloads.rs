//! Downloads in real workspaces, through the portal, the launcher, the Docker engine and
//! the workspace image. The person clicks a download link in the workspace's Chromium
//! with mouse input over the viewer socket.
//!
//! Where the site's `policy.downloads` is `deliver`, the file appears in the person's
//! portal list and downloads byte-identical, with `download.delivered` and
//! `download.fetched` in the audit trail, and a file above
//! `sessions.download_max_file_bytes` is refused with a `download.refused` event that
//! names the cap. Where the policy is `blocked`, the workspace has no download tmpfs,
//! its Chromium policy blocks downloads, and nothing arrives.
//!
//! The page comes from an HTTPS server that the test starts on 127.0.0.1 with a
//! generated CA, reached through the egress proxy by `egress.hosts`. The workspace
//! image is `STRONGROOM_TEST_WORKSPACE_IMAGE` when set, otherwise the launcher's
//! default; it must contain an agent built from this tree.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use broker::auth::Role;
use futures::SinkExt;
use reqwest::cookie::CookieStore;
use sha2::{Digest, Sha256};
use strongroom_tests::pages::TlsSite;
use strongroom_tests::stack::{Person, Stack, wait_for};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

const HOST: &str = "downloads.test";
/// Session subnets of this test, apart from the other tests' ranges.
const SUBNET_RANGE: &str = "172.28.0.0/16";
/// The cap of delivered files in this test.
const MAX_FILE_BYTES: usize = 1 << 20;
/// Size of the files that are delivered: more than one protocol chunk.
const SMALL_FILE_BYTES: usize = 300 * 1024 + 17;
/// Name of the first delivered file in its response's Content-Disposition. Names
/// outside ASCII are the ones Chromium saved as `download` under the "C" locale.
const DISPOSITION_NAME: &str = "Kontoauszug März.bin";
/// Name of the second delivered file in its link's `download` attribute; its response
/// names no file.
const ATTRIBUTE_NAME: &str = "Zahlungsübersicht Mai.bin";
/// Screen rows of the three links on the 720-pixel-high screen.
const SMALL_LINK_Y: u32 = 120;
const NAMED_LINK_Y: u32 = 360;
const BIG_LINK_Y: u32 = 600;
/// Size of the file above the cap.
const BIG_FILE_BYTES: usize = 2 * MAX_FILE_BYTES;
/// Time for a workspace to start and load the page on a busy two-core machine.
const LOAD_TIMEOUT: Duration = Duration::from_secs(240);
/// Time for a clicked download to reach the broker.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// Three links that fill the page, each a third of its height: the small file named by
/// its Content-Disposition, the one named by the `download` attribute, and the big
/// one. The page reports that it loaded.
const DOWNLOAD_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Statements</title></head>
<body style="margin:0">
<a id="small" href="/small.bin" style="position:fixed;left:0;top:0;width:100%;height:33%;background:#cfc;display:block">small</a>
<a id="named" href="/named.bin" download="Zahlungsübersicht Mai.bin" style="position:fixed;left:0;top:34%;width:100%;height:32%;background:#ccf;display:block">named</a>
<a id="big" href="/big.bin" download style="position:fixed;left:0;top:67%;width:100%;height:33%;background:#fcc;display:block">big</a>
<script>fetch('/loaded');</script>
</body></html>"#;

/// Deterministic file content of `len` bytes that is not all one value.
fn file_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|index| (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// The HTTPS server of the download page on 127.0.0.1, stopped on drop. It records the
/// path of every request.
struct DownloadSite {
    tls: TlsSite,
    requests: Arc<Mutex<Vec<String>>>,
    small: Vec<u8>,
    named: Vec<u8>,
}

impl DownloadSite {
    async fn start() -> DownloadSite {
        let small = file_bytes(SMALL_FILE_BYTES, 0x5a);
        let named = file_bytes(SMALL_FILE_BYTES, 0x3c);
        let big = file_bytes(BIG_FILE_BYTES, 0xa5);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let disposition =
            "attachment; filename=\"statement.bin\"; filename*=UTF-8''Kontoauszug%20M%C3%A4rz.bin"
                .to_owned();
        let attachment = move |bytes: Vec<u8>, disposition: String| {
            move || {
                let bytes = bytes.clone();
                let disposition = disposition.clone();
                async move {
                    (
                        [
                            ("content-type", "application/octet-stream".to_owned()),
                            ("content-disposition", disposition),
                        ],
                        bytes,
                    )
                }
            }
        };
        let router = axum::Router::new()
            .route("/page", get(|| async { Html(DOWNLOAD_PAGE) }))
            .route("/loaded", get(|| async { "" }))
            .route("/small.bin", get(attachment(small.clone(), disposition)))
            .route(
                "/named.bin",
                get(attachment(named.clone(), "attachment".to_owned())),
            )
            .route(
                "/big.bin",
                get(attachment(
                    big,
                    "attachment; filename=\"big.bin\"".to_owned(),
                )),
            )
            .layer(axum::middleware::from_fn_with_state(
                requests.clone(),
                record_request,
            ));

        DownloadSite {
            tls: TlsSite::start(HOST, router).await,
            requests,
            small,
            named,
        }
    }

    fn requested(&self, path: &str) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|seen| seen == path)
    }
}

async fn record_request(
    axum::extract::State(requests): axum::extract::State<Arc<Mutex<Vec<String>>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    requests
        .lock()
        .unwrap()
        .push(request.uri().path().to_owned());
    next.run(request).await
}

/// Starts the broker stack: `downloads.test` resolves to the page server on 127.0.0.1,
/// and delivered files are capped at [`MAX_FILE_BYTES`].
async fn start_stack() -> Stack {
    Stack::builder(SUBNET_RANGE)
        .workspace_image_from_env()
        .env(
            "STRONGROOM_EGRESS__HOSTS",
            format!("{{ \"{HOST}\" = [\"127.0.0.1\"] }}"),
        )
        .env(
            "STRONGROOM_SESSIONS__DOWNLOAD_MAX_FILE_BYTES",
            MAX_FILE_BYTES.to_string(),
        )
        .start()
        .await
}

/// Runs `docker` with `args` and returns its standard output, or panics with its error.
async fn docker(args: &[&str]) -> String {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The tmpfs mounts of a session's workspace container, as `docker inspect` shows them.
async fn tmpfs_of(session_id: Uuid) -> serde_json::Value {
    let label = format!("label=strongroom.session={session_id}");
    let name = docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]).await;
    let tmpfs = docker(&["inspect", "--format", "{{json .HostConfig.Tmpfs}}", &name]).await;
    serde_json::from_str(&tmpfs).unwrap()
}

/// Imports the site `name` with the download policy `downloads` and grants it to
/// `person`.
async fn add_site(
    stack: &Stack,
    site: &DownloadSite,
    person: &Person,
    name: &str,
    downloads: &str,
) {
    let sites = site.tls.site_toml(
        stack.data_dir(),
        name,
        &format!("Downloads {name}"),
        "/page",
        &format!("downloads = \"{downloads}\"\n"),
    );
    stack.import_sites(&format!("{name}.toml"), &sites).await;
    stack.grant(&person.user_id, name).await;
}

type ViewerSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the person's viewer socket of a session.
async fn open_viewer(stack: &Stack, person: &Person, session_id: Uuid) -> ViewerSocket {
    let page = person
        .client
        .get(format!("{}/sessions/{session_id}", stack.base))
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
    let mut request = socket_url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", stack.base.parse().unwrap());
    let cookies = person.jar.cookies(&stack.base.parse().unwrap()).unwrap();
    request.headers_mut().insert("cookie", cookies);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("viewer socket opens");
    socket
}

/// Clicks the left mouse button at screen pixel (`x`, `y`) through the viewer socket.
async fn click(viewer: &mut ViewerSocket, x: u32, y: u32) {
    for message in [
        serde_json::json!({"type": "mouse_move", "x": x, "y": y}),
        serde_json::json!({"type": "mouse_button", "button": "left", "pressed": true, "x": x, "y": y}),
        serde_json::json!({"type": "mouse_button", "button": "left", "pressed": false, "x": x, "y": y}),
    ] {
        viewer
            .send(Message::text(message.to_string()))
            .await
            .expect("viewer input sent");
    }
}

/// Clicks at (`x`, `y`) until the page server saw a request for `path`. A click sent
/// before the page took input is lost, so it is repeated after a few seconds.
async fn click_until_requested(
    viewer: &mut ViewerSocket,
    site: &DownloadSite,
    x: u32,
    y: u32,
    path: &str,
) {
    let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
    loop {
        click(viewer, x, y).await;
        let retry = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < retry {
            if site.requested(path) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request for {path} after clicking for {LOAD_TIMEOUT:?}"
        );
    }
}

/// Audit events of a session with `action`, as stored.
async fn events_of(stack: &Stack, session_id: Uuid, action: &str) -> Vec<serde_json::Value> {
    let events = stack.broker().state.audit.list(0, 100_000).await.unwrap();
    events
        .into_iter()
        .filter(|event| {
            event.action == action && event.session_id.as_deref() == Some(&session_id.to_string())
        })
        .map(|event| {
            let mut details: serde_json::Value = serde_json::from_str(&event.details).unwrap();
            details["actor"] = event.actor.into();
            details["outcome"] = event.outcome.into();
            details["target"] = event.target.unwrap_or_default().into();
            details
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_download_reaches_only_its_owner() {
    let site = DownloadSite::start().await;
    let stack = start_stack().await;
    let alice = stack.person("alice", &[Role::User], &[]).await;
    add_site(&stack, &site, &alice, "deliver", "deliver").await;

    let (session_id, _) = alice.launch("deliver").await;
    let tmpfs = tmpfs_of(session_id).await;
    assert!(
        tmpfs["/downloads"]
            .as_str()
            .is_some_and(|options| options.contains(&format!("size={}", 256 << 20))),
        "the workspace has a size-limited download tmpfs: {tmpfs}"
    );
    let mut viewer = open_viewer(&stack, &alice, session_id).await;
    wait_for("the download page to load", LOAD_TIMEOUT, || async {
        site.requested("/loaded").then_some(())
    })
    .await;

    click_until_requested(&mut viewer, &site, 640, SMALL_LINK_Y, "/small.bin").await;
    let delivered = wait_for("the delivery audit event", DELIVERY_TIMEOUT, || async {
        events_of(&stack, session_id, "download.delivered")
            .await
            .into_iter()
            .next()
    })
    .await;
    let expected_sha256 = hex::encode(Sha256::digest(&site.small));
    let name = delivered["name"].as_str().unwrap().to_owned();
    assert_eq!(name, DISPOSITION_NAME, "{delivered}");
    assert_eq!(delivered["size"], SMALL_FILE_BYTES as u64, "{delivered}");
    assert_eq!(delivered["sha256"], expected_sha256, "{delivered}");
    assert_eq!(delivered["site"], "deliver", "{delivered}");
    assert_eq!(delivered["actor"], format!("user:{}", alice.user_id));

    // The portal lists the file and serves it byte-identical as an attachment.
    let list = alice
        .client
        .get(format!("{}/files", stack.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file_path = list
        .split("href=\"/files/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|id| format!("/files/{id}"))
        .unwrap_or_else(|| panic!("the files page lists the file: {list}"));
    assert!(list.contains(&format!(">{name}</a>")), "{list}");
    let fetched = alice
        .client
        .get(format!("{}{file_path}", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), reqwest::StatusCode::OK);
    let headers = fetched.headers().clone();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-type"], "application/octet-stream");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert_eq!(
        disposition,
        broker::downloads::portal::content_disposition(&name),
        "{disposition}"
    );
    assert!(disposition.starts_with("attachment; "), "{disposition}");
    let body = fetched.bytes().await.unwrap();
    assert!(
        body[..] == site.small[..],
        "the fetched file differs from the served one"
    );
    let fetched_events = events_of(&stack, session_id, "download.fetched").await;
    assert_eq!(fetched_events.len(), 1, "{fetched_events:?}");
    assert_eq!(fetched_events[0]["sha256"], expected_sha256);

    // The file is stored encrypted: its bytes do not appear in the data directory.
    let stored_dir = stack.dir.path().join("downloads");
    let stored: Vec<_> = std::fs::read_dir(&stored_dir)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!stored.is_empty(), "no stored file");
    for file in &stored {
        assert!(
            !file.windows(64).any(|window| window == &site.small[..64]),
            "the stored file contains plaintext"
        );
    }

    // Another person, an auditor and an admin get 404 for the file and see no list entry.
    for (name, role) in [
        ("bob", Role::User),
        ("carol", Role::Auditor),
        ("ada", Role::Admin),
    ] {
        let other = stack.person(name, &[role], &[]).await;
        let response = other
            .client
            .get(format!("{}{file_path}", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND, "{name}");
        let list = other
            .client
            .get(format!("{}/files", stack.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !list.contains("/files/"),
            "{name} sees another person's file: {list}"
        );
    }

    // The second link names its file only in its `download` attribute.
    click_until_requested(&mut viewer, &site, 640, NAMED_LINK_Y, "/named.bin").await;
    let named_sha256 = hex::encode(Sha256::digest(&site.named));
    let named = wait_for("the second delivery", DELIVERY_TIMEOUT, || async {
        events_of(&stack, session_id, "download.delivered")
            .await
            .into_iter()
            .find(|event| event["sha256"] == named_sha256)
    })
    .await;
    assert_eq!(named["name"], ATTRIBUTE_NAME, "{named}");
    assert_eq!(named["size"], SMALL_FILE_BYTES as u64, "{named}");

    // The lowest link is the file above the cap: it is refused and audited, not stored.
    click_until_requested(&mut viewer, &site, 640, BIG_LINK_Y, "/big.bin").await;
    let refused = wait_for("the refusal audit event", DELIVERY_TIMEOUT, || async {
        events_of(&stack, session_id, "download.refused")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert!(
        refused["size"].as_u64().unwrap() > MAX_FILE_BYTES as u64,
        "{refused}"
    );
    assert_eq!(refused["outcome"], "denied", "{refused}");
    assert!(
        refused["reason"].as_str().unwrap().contains(&format!(
            "larger than the maximum of {MAX_FILE_BYTES} bytes"
        )),
        "{refused}"
    );
    let delivered_sizes: Vec<u64> = events_of(&stack, session_id, "download.delivered")
        .await
        .iter()
        .map(|event| event["size"].as_u64().unwrap())
        .collect();
    assert!(
        delivered_sizes
            .iter()
            .all(|size| *size == SMALL_FILE_BYTES as u64),
        "the big file was delivered: {delivered_sizes:?}"
    );
    let rows = broker::downloads::store::list_for_user(&stack.db(), &alice.user_id)
        .await
        .unwrap();
    assert!(
        rows.iter().all(|row| row.size == SMALL_FILE_BYTES as u64),
        "{rows:?}"
    );

    drop(viewer);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_site_delivers_nothing() {
    let site = DownloadSite::start().await;
    let stack = start_stack().await;
    let alice = stack.person("alice", &[Role::User], &[]).await;
    add_site(&stack, &site, &alice, "blocked", "blocked").await;

    let (session_id, _) = alice.launch("blocked").await;
    let tmpfs = tmpfs_of(session_id).await;
    assert!(
        tmpfs.get("/downloads").is_none(),
        "a blocked site's workspace has no download tmpfs: {tmpfs}"
    );
    let mut viewer = open_viewer(&stack, &alice, session_id).await;
    wait_for("the download page to load", LOAD_TIMEOUT, || async {
        site.requested("/loaded").then_some(())
    })
    .await;
    let label = format!("label=strongroom.session={session_id}");
    let container = docker(&["ps", "--filter", &label, "--format", "{{.Names}}"]).await;
    let policy: serde_json::Value = serde_json::from_str(
        &docker(&[
            "exec",
            &container,
            "cat",
            "/tmp/strongroom-policy/session.json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(policy["DownloadRestrictions"], 3, "{policy}");

    click(&mut viewer, 640, SMALL_LINK_Y).await;
    // Nothing can be awaited for a download that never starts, so the broker is
    // watched for a fixed window as long as a delivery takes in the other test.
    let window = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < window {
        for action in ["download.delivered", "download.refused"] {
            let events = events_of(&stack, session_id, action).await;
            assert!(events.is_empty(), "{action} on a blocked site: {events:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rows = broker::downloads::store::list_for_user(&stack.db(), &alice.user_id)
        .await
        .unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    // Chromium creates its default download directory at start; it stays empty.
    let listed = docker(&["exec", &container, "ls", "-A", "/home/strongroom/Downloads"]).await;
    assert!(
        listed.is_empty(),
        "a file was saved in the workspace: {listed}"
    );

    drop(viewer);
    stack.stop().await;
}
