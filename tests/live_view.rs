//! The live view against a real broker, launcher, Docker engine and workspace agent.
//! The idle timer counts only real input, a dropped viewer reconnects to the same
//! session with a fresh ticket, and an admin watches read-only while the person sees
//! a banner.
//!
//! Needs the workspace image (`strongroom image build`).

use std::time::Duration;

use broker::auth::Role;
use futures::{SinkExt, StreamExt};
use strongroom_tests::browser::Browser;
use strongroom_tests::stack::{Person, Stack, UNREACHABLE_DEMO_SITE, sign_in_browser_at, wait_for};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Session subnets of this test file, apart from those of the other test files.
const SUBNET_RANGE: &str = "172.25.0.0/16";

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts a stack with these configuration overrides and the unreachable demo site.
async fn start_stack(overrides: &[(&str, &str)]) -> Stack {
    let stack = Stack::builder(SUBNET_RANGE).envs(overrides).start().await;
    stack
        .import_sites("sites.toml", UNREACHABLE_DEMO_SITE)
        .await;
    stack
}

/// Creates an account with this role, grants it the demo site and signs it in.
async fn sign_in(stack: &Stack, username: &str, role: Role) -> Person {
    stack.person(username, &[role], &["demo"]).await
}

/// The live view through a person's portal client.
trait LiveView {
    async fn launch_demo(&self) -> Uuid;
    async fn ticket(&self, session_id: Uuid, origin: &str) -> reqwest::Response;
    async fn view(&self, session_id: Uuid) -> Socket;
}

impl LiveView for Person {
    async fn launch_demo(&self) -> Uuid {
        self.launch("demo").await.0
    }

    /// Asks the portal for a fresh viewer ticket, as the viewer script does when its
    /// socket drops.
    async fn ticket(&self, session_id: Uuid, origin: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/sessions/{session_id}/ticket", self.base))
            .header("origin", origin)
            .send()
            .await
            .unwrap()
    }

    /// Opens the viewer socket of a session with a fresh ticket.
    async fn view(&self, session_id: Uuid) -> Socket {
        let answer = self.ticket(session_id, &self.base).await;
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        let answer: serde_json::Value = answer.json().await.unwrap();
        let url = format!(
            "{}{}",
            self.base.replacen("http", "ws", 1),
            answer["socket"].as_str().unwrap()
        );
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", self.base.parse().unwrap());
        use reqwest::cookie::CookieStore;
        let cookies = self.jar.cookies(&self.base.parse().unwrap()).unwrap();
        request.headers_mut().insert("cookie", cookies);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("viewer socket opens");
        socket
    }
}

/// Reads status messages until one of this type arrives. Reading also sends the pongs
/// for the broker's pings.
async fn status_of_type(socket: &mut Socket, kind: &str, timeout: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} status within {timeout:?}"))
            .expect("viewer socket open")
            .expect("viewer socket healthy");
        if let Message::Text(text) = message {
            let status: serde_json::Value = serde_json::from_str(&text).unwrap();
            if status["type"] == kind {
                return status;
            }
        }
    }
}

/// Reads until a VP8 keyframe arrives.
async fn keyframe(socket: &mut Socket) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("no keyframe from the workspace")
            .expect("viewer socket open")
            .expect("viewer socket healthy");
        match message {
            Message::Binary(frame) if frame.len() > 10 && frame[0] == 0x01 && frame[1] & 1 == 1 => {
                return;
            }
            Message::Text(text) => assert!(!text.contains("\"ended\""), "ended early: {text}"),
            _ => {}
        }
    }
}

async fn last_input_ms(db: &broker::db::Database, session_id: Uuid) -> i64 {
    broker::sessions::store::get(db, session_id)
        .await
        .unwrap()
        .expect("session row")
        .last_input_at_ms
}

/// An open viewer that sends only frame acknowledgements and reconnects, watched by an
/// admin who tries to type, still idles out after the warning; a second session that
/// gets real input stays alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timer_counts_only_real_input() {
    let mut stack = start_stack(&[
        ("STRONGROOM_SESSIONS__IDLE_TIMEOUT_MINUTES", "2"),
        ("STRONGROOM_SESSIONS__IDLE_WARNING_MINUTES", "1"),
        ("STRONGROOM_SESSIONS__REAPER_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let db = stack.db();
    let idle_person = sign_in(&stack, "alice", Role::User).await;
    let busy_person = sign_in(&stack, "bob", Role::User).await;
    let admin = sign_in(&stack, "ada", Role::Admin).await;
    let idle_session = idle_person.launch_demo().await;
    let busy_session = busy_person.launch_demo().await;

    // A ticket is not handed to a foreign origin, nor to another person.
    let foreign = idle_person
        .ticket(idle_session, "http://evil.example")
        .await;
    assert_eq!(foreign.status(), reqwest::StatusCode::FORBIDDEN);
    let other = busy_person.ticket(idle_session, &stack.base).await;
    assert_eq!(other.status(), reqwest::StatusCode::NOT_FOUND);

    let mut idle_viewer = idle_person.view(idle_session).await;
    keyframe(&mut idle_viewer).await;
    let mut busy_viewer = busy_person.view(busy_session).await;
    keyframe(&mut busy_viewer).await;
    let idle_since = last_input_ms(&db, idle_session).await;

    // The admin watches read-only: the person sees it, the admin's input is refused.
    let mut watcher = admin.view(idle_session).await;
    let watched = status_of_type(&mut idle_viewer, "watchers", Duration::from_secs(10)).await;
    assert_eq!(watched["count"], 1);
    watcher
        .send(Message::text(r#"{"type":"mouse_move","x":5,"y":5}"#))
        .await
        .unwrap();
    status_of_type(&mut watcher, "input_refused", Duration::from_secs(10)).await;
    drop(watcher);
    let unwatched = status_of_type(&mut idle_viewer, "watchers", Duration::from_secs(10)).await;
    assert_eq!(unwatched["count"], 0);
    let attached = stack
        .broker()
        .state
        .audit
        .list(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .find(|event| event.action == "session.viewer.attached")
        .expect("the admin's watching is audited");
    assert!(attached.details.contains("watch"), "{}", attached.details);

    // The idle viewer acknowledges frames (a message the broker does not accept as
    // input), drops its socket and reconnects with a fresh ticket.
    idle_viewer
        .send(Message::text(r#"{"type":"ack","pts_us":1}"#))
        .await
        .unwrap();
    idle_viewer.close(None).await.unwrap();
    drop(idle_viewer);
    let mut idle_viewer = idle_person.view(idle_session).await;
    keyframe(&mut idle_viewer).await;
    assert_eq!(
        last_input_ms(&db, idle_session).await,
        idle_since,
        "a watcher's input, an acknowledgement or a reconnect counted as input"
    );

    // The busy person moves the mouse every few seconds until the idle session ends.
    let stop_busy = CancellationToken::new();
    let busy = {
        let stop = stop_busy.clone();
        tokio::spawn(async move {
            let mut x = 0;
            loop {
                x = (x + 7) % 300;
                let input = format!(r#"{{"type":"mouse_move","x":{x},"y":20}}"#);
                if busy_viewer.send(Message::text(input)).await.is_err() {
                    panic!("the busy viewer's socket closed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.cancelled() => break,
                }
                // Reads what arrived meanwhile, so pings are answered.
                while let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_millis(10), busy_viewer.next()).await
                {
                    let message = message.expect("busy viewer socket healthy");
                    if let Message::Text(text) = message {
                        assert!(!text.contains("\"ended\""), "busy session ended: {text}");
                    }
                }
            }
            busy_viewer
        })
    };

    // The person is warned, then the session ends with reason idle, two minutes after
    // the last real input.
    let warning = status_of_type(&mut idle_viewer, "idle_warning", Duration::from_secs(150)).await;
    assert!(warning["seconds"].as_u64().unwrap() <= 60, "{warning}");
    let ended = status_of_type(&mut idle_viewer, "ended", Duration::from_secs(120)).await;
    let ended_at = chrono::Utc::now().timestamp_millis();
    assert!(
        ended_at - idle_since >= 120_000,
        "ended {} ms after the last input",
        ended_at - idle_since
    );
    assert_eq!(ended["reason"], "idle_timeout", "{ended}");
    let record = broker::sessions::store::get(&db, idle_session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.end_reason.as_deref(), Some("idle_timeout"));
    assert_eq!(record.last_input_at_ms, idle_since);
    // The end is audited once the workspace is removed, shortly after viewers learn it.
    let audit_log = stack.broker().state.audit.clone();
    let audited = wait_for(
        "the idle end in the audit log",
        Duration::from_secs(30),
        || async {
            audit_log
                .list(0, 100_000)
                .await
                .unwrap()
                .into_iter()
                .find(|event| {
                    event.action == "session.ended"
                        && event.session_id == Some(idle_session.to_string())
                })
        },
    )
    .await;
    assert!(
        audited.details.contains("idle_timeout"),
        "{}",
        audited.details
    );

    // Real input kept the other session alive.
    stop_busy.cancel();
    let busy_viewer = busy.await.expect("the busy session stayed alive");
    let busy_record = broker::sessions::store::get(&db, busy_session)
        .await
        .unwrap()
        .unwrap();
    assert!(busy_record.state.is_live(), "{busy_record:?}");
    assert!(chrono::Utc::now().timestamp_millis() - busy_record.last_input_at_ms < 30_000);
    drop(busy_viewer);

    stack.shut_down().await;
}

/// A loopback TCP relay in front of the broker whose open connections the test can
/// cut, as a flaky network or a restarting reverse proxy would.
struct CuttableRelay {
    address: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableRelay {
    async fn bind() -> (CuttableRelay, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = CuttableRelay {
            address: listener.local_addr().unwrap(),
            connections: Default::default(),
            accept: tokio::spawn(async {}),
        };
        (relay, listener)
    }

    /// Relays every accepted connection to `upstream`.
    fn start(&mut self, listener: tokio::net::TcpListener, upstream: std::net::SocketAddr) {
        let connections = self.connections.clone();
        self.accept = tokio::spawn(async move {
            while let Ok((mut downstream, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
    }

    /// Closes every connection open now; later connections pass again.
    fn cut(&self) -> usize {
        let open: Vec<_> = std::mem::take(&mut *self.connections.lock().unwrap());
        let live = open.iter().filter(|task| !task.is_finished()).count();
        for task in open {
            task.abort();
        }
        live
    }
}

impl Drop for CuttableRelay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A headless Chromium driven through chromedriver's WebDriver API.
/// Reads the viewer: how many sampled canvas pixels are not black, the reconnect
/// count, and the status and end lines the viewer script shows.
const VIEWER_PROBE: &str = "const c = document.getElementById('screen');
if (!c) return null;
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4 * 101) { if (data[i] || data[i + 1] || data[i + 2]) lit++; }
const text = (id) => { const e = document.getElementById(id); return e.hidden ? '' : e.textContent; };
return { lit, reconnects: Number(document.getElementById('viewer').dataset.reconnects), connection: text('connection'), status: text('status'), ended: text('ended'), path: location.pathname };";

/// Blanks the canvas, so that lit pixels afterwards come from newly decoded frames.
const BLANK_CANVAS: &str = "const c = document.getElementById('screen');
c.getContext('2d').clearRect(0, 0, c.width, c.height); return true;";

/// Waits until the viewer shows decoded frames, failing on an end or a problem.
async fn wait_for_picture(browser: &Browser) -> serde_json::Value {
    wait_for(
        "the viewer's first picture",
        Duration::from_secs(120),
        || async {
            let probe = browser.script(VIEWER_PROBE).await;
            if probe.is_null() {
                return None;
            }
            assert_eq!(probe["status"], "", "viewer reported a problem: {probe}");
            assert_eq!(probe["ended"], "", "session ended: {probe}");
            (probe["lit"].as_u64().unwrap_or(0) > 0 && probe["connection"] == "").then_some(probe)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_viewer_reconnects_to_same_session() {
    // The browser reaches the broker only through the relay, whose address is the
    // portal's public URL, so the viewer socket's Origin matches.
    let (mut relay, listener) = CuttableRelay::bind().await;
    let public_url = format!("\"http://{}\"", relay.address);
    let mut stack = start_stack(&[("STRONGROOM_SERVER__PUBLIC_URL", public_url.as_str())]).await;
    let upstream: std::net::SocketAddr = stack.base.trim_start_matches("http://").parse().unwrap();
    relay.start(listener, upstream);
    let db = stack.db();

    let (id, totp) = stack.add_user("alice", &[Role::User]).await;
    stack.grant(&id, "demo").await;

    let browser = Browser::start().await;
    let portal = format!("http://{}", relay.address);
    sign_in_browser_at(&browser, &portal, "alice", &totp).await;
    browser.click("#launch-demo").await;
    browser.element("#screen").await;
    let first = wait_for_picture(&browser).await;
    assert_eq!(first["reconnects"], 0);
    // The indicator shows once the recorder has taken the stream's configuration.
    let recorded = browser
        .script("return !document.getElementById('recorded').hidden;")
        .await;
    assert_eq!(recorded, true, "the viewer does not show that it records");
    let session_id: Uuid = first["path"]
        .as_str()
        .unwrap()
        .trim_start_matches("/sessions/")
        .parse()
        .unwrap();
    let input_before = last_input_ms(&db, session_id).await;

    // Two drops in a row: each time the viewer fetches a new ticket and shows frames
    // of the same session again.
    for drop_number in 1..=2u64 {
        assert!(relay.cut() > 0, "the viewer had no open connection");
        browser.script(BLANK_CANVAS).await;
        let probe = wait_for(
            "the picture after the reconnect",
            Duration::from_secs(60),
            || async {
                let probe = browser.script(VIEWER_PROBE).await;
                if probe.is_null() {
                    return None;
                }
                assert_eq!(probe["ended"], "", "session ended after a drop: {probe}");
                (probe["reconnects"].as_u64() >= Some(drop_number)).then_some(probe)
            },
        )
        .await;
        assert_eq!(probe["path"], first["path"]);
        let probe = wait_for_picture(&browser).await;
        assert!(probe["reconnects"].as_u64() >= Some(drop_number), "{probe}");
    }

    let record = broker::sessions::store::get(&db, session_id)
        .await
        .unwrap()
        .unwrap();
    assert!(record.state.is_live(), "{record:?}");
    assert_eq!(
        record.last_input_at_ms, input_before,
        "a reconnect counted as person input"
    );
    let sessions = broker::sessions::store::list_for_user(&db, &id, 10)
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1, "a reconnect launched another session");

    browser.quit().await;
    drop(relay);
    stack.shut_down().await;
}

/// Creates an account with a fresh TOTP secret, grants it the demo site and signs it
/// in through the portal's sign-in form in `browser`. Returns the account's id.
async fn sign_in_browser(stack: &Stack, browser: &Browser, username: &str) -> String {
    let (id, totp) = stack.add_user(username, &[Role::User]).await;
    stack.grant(&id, "demo").await;
    stack.sign_in_browser(browser, username, &totp).await;
    browser.element("#launch-demo").await;
    id
}

/// Reads the viewer's canvas size, the size of the last decoded frame and of the
/// stage, and how many sampled pixels are lit.
const SIZE_PROBE: &str = "const c = document.getElementById('screen');
const s = document.getElementById('stage');
if (!c || !s) return null;
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4 * 101) { if (data[i] || data[i + 1] || data[i + 2]) lit++; }
const status = document.getElementById('status');
return { canvas: c.width + 'x' + c.height, frame: document.getElementById('viewer').dataset.frameSize || '', stage: [s.clientWidth, s.clientHeight], lit, status: status.hidden ? '' : status.textContent };";

/// Starts a stack, signs `alice` in on `browser`, starts a host session showing `page`
/// with the clipboard blocked, and opens its viewer until a picture shows.
async fn viewer_on_host_page(browser: Browser, page: &str) -> (Stack, Browser, HostSession) {
    let stack = start_stack(&[]).await;
    let owner = sign_in_browser(&stack, &browser, "alice").await;
    let session = HostSession::start(
        &stack,
        &owner,
        broker::sites::ClipboardPolicy::Blocked,
        page,
    )
    .await;
    browser
        .open(&format!("{}/sessions/{}", stack.base, session.session_id))
        .await;
    browser.element("#screen").await;
    wait_for_picture(&browser).await;
    (stack, browser, session)
}

/// Returns the workspace screen size the agent makes of a stage size in CSS pixels,
/// each side clamped to the protocol's bounds and rounded down to an even number.
fn screen_size_for(stage: &serde_json::Value) -> String {
    let side = |index: usize| (stage[index].as_u64().unwrap().clamp(64, 4096) as u32) & !1;
    format!("{}x{}", side(0), side(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_resize_reaches_workspace_screen() {
    let (mut stack, browser, session) =
        viewer_on_host_page(Browser::start().await, SCROLL_PAGE).await;

    // The viewer sends its stage size when it connects; the workspace screen follows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let first = loop {
        let probe = browser.script(SIZE_PROBE).await;
        let expected = screen_size_for(&probe["stage"]);
        if probe["canvas"] == expected.as_str() && probe["frame"] == expected.as_str() {
            break probe;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the screen never took the stage's size {expected}: {probe}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // A smaller window: the stage shrinks, the viewer sends the new size, and frames of
    // that size arrive and show the page.
    for (width, height) in [(900u32, 700u32), (1300, 950)] {
        browser.set_window_size(width, height).await;
        let probe = wait_for(
            "the screen to follow the viewer's size",
            Duration::from_secs(120),
            || async {
                let probe = browser.script(SIZE_PROBE).await;
                assert_eq!(probe["status"], "", "viewer reported a problem: {probe}");
                let expected = screen_size_for(&probe["stage"]);
                (probe["stage"] != first["stage"]
                    && probe["canvas"] == expected.as_str()
                    && probe["frame"] == expected.as_str()
                    && probe["lit"].as_u64().unwrap_or(0) > 0)
                    .then_some(probe)
            },
        )
        .await;
        assert_ne!(probe["canvas"], first["canvas"], "{probe} after {first}");
    }

    stack
        .broker()
        .state
        .portal
        .hub
        .stop(session.session_id, "test finished");
    drop(session);
    browser.quit().await;
    stack.shut_down().await;
}

/// A page with a button at a fixed place in CSS pixels. It reports its viewport
/// width, height and device pixel ratio at load and on every resize, and each click
/// on the button.
const SCALE_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<button id="target" style="position:fixed;left:100px;top:100px;width:160px;height:100px" onclick="fetch('/clicked')">Target</button>
<script>
function report() { fetch(`/viewport?w=${innerWidth}&h=${innerHeight}&dpr=${devicePixelRatio}`); }
report();
addEventListener('resize', report);
</script></body></html>"#;

/// Reads the viewer's device pixel ratio, canvas and frame size, stage size, and the
/// canvas's position in the viewer's viewport.
const RATIO_PROBE: &str = "const c = document.getElementById('screen');
const s = document.getElementById('stage');
if (!c || !s) return null;
const box = c.getBoundingClientRect();
return { ratio: window.devicePixelRatio, canvas: c.width + 'x' + c.height, frame: document.getElementById('viewer').dataset.frameSize || '', stage: [s.clientWidth, s.clientHeight], left: box.left, top: box.top, width: box.width };";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_at_ratio_two_gets_sharp_screen() {
    let (mut stack, browser, session) = viewer_on_host_page(
        Browser::start_with_args(&["--force-device-scale-factor=2"]).await,
        SCALE_PAGE,
    )
    .await;

    // The stream has twice the stage's size in each direction, and the page lays out
    // at the stage's size in CSS pixels with a device pixel ratio of 2.
    let probe = wait_for(
        "a stream of twice the stage's size",
        Duration::from_secs(120),
        || async {
            let probe = browser.script(RATIO_PROBE).await;
            let stage = screen_size_for(&probe["stage"]);
            let (width, height) = stage.split_once('x').unwrap();
            let doubled = format!(
                "{}x{}",
                width.parse::<u32>().unwrap() * 2,
                height.parse::<u32>().unwrap() * 2
            );
            (probe["canvas"] == doubled.as_str() && probe["frame"] == doubled.as_str())
                .then_some(probe)
        },
    )
    .await;
    assert_eq!(probe["ratio"], 2, "the viewer runs at ratio 2: {probe}");
    let stage = screen_size_for(&probe["stage"]);
    let (stage_width, stage_height) = stage.split_once('x').unwrap();
    let expected_report = format!("/viewport?w={stage_width}&h={stage_height}&dpr=2");
    wait_for(
        "the page to lay out at the stage's CSS size",
        Duration::from_secs(60),
        || async {
            session
                .pages
                .requests()
                .contains(&expected_report)
                .then_some(())
        },
    )
    .await;

    // The canvas shows the workspace at one CSS pixel per page CSS pixel, so a click
    // 180x150 CSS pixels into the canvas lands on the button at 100..260 x 100..200. A
    // page laid out at screen pixels would have the button at 50..130 x 50..100 here.
    assert_eq!(
        probe["width"].as_f64().unwrap().round() as u64,
        stage_width.parse::<u64>().unwrap(),
        "the canvas is as wide as the page's viewport: {probe}"
    );
    let x = probe["left"].as_f64().unwrap().round() as i64 + 180;
    let y = probe["top"].as_f64().unwrap().round() as i64 + 150;
    // A click sent before the workspace window took input is lost, so it is repeated
    // until the page reports one.
    wait_for(
        "the click to reach the button",
        Duration::from_secs(60),
        || async {
            if session
                .pages
                .requests()
                .iter()
                .any(|target| target == "/clicked")
            {
                return Some(());
            }
            browser.click_at(x, y).await;
            None
        },
    )
    .await;

    stack
        .broker()
        .state
        .portal
        .hub
        .stop(session.session_id, "test finished");
    drop(session);
    browser.quit().await;
    stack.shut_down().await;
}

/// A text field that fills the page and reports its value and every copy to the page
/// server.
const CLIPBOARD_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<input id="t" autocomplete="off" style="position:fixed;left:0;top:0;width:100%;height:100%;font-size:32px;box-sizing:border-box">
<script>
const t = document.getElementById('t');
t.addEventListener('input', () => fetch('/report?v=' + encodeURIComponent(t.value)));
document.addEventListener('copy', () => fetch('/copied'));
</script></body></html>"#;

/// A session of the signed-in person whose stream comes from an agent on the test host
/// showing `page`, with `policy` as the site's clipboard policy.
struct HostSession {
    session_id: Uuid,
    pages: strongroom_tests::pages::PageServer,
    _agent: strongroom_tests::agent::HostAgent,
}

impl HostSession {
    async fn start(
        stack: &Stack,
        owner: &str,
        policy: broker::sites::ClipboardPolicy,
        page: &str,
    ) -> HostSession {
        let pages =
            strongroom_tests::pages::PageServer::start(std::collections::HashMap::from([(
                "/",
                page.to_owned(),
            )]))
            .await;
        let secret = protocol::SessionSecret::new(format!(
            "{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        ));
        let agent =
            strongroom_tests::agent::HostAgent::start(&secret.sha256_hex(), &pages.url("/")).await;
        let session_id = Uuid::new_v4();
        strongroom_tests::reserve_session_row(&stack.db(), session_id, owner).await;
        stack
            .broker()
            .state
            .portal
            .hub
            .start(broker::stream::StreamStart {
                session_id,
                owner: owner.to_owned(),
                agent_addr: agent.address,
                secret,
                recording_id: Uuid::new_v4(),
                recording_expires_at: chrono::Utc::now() + chrono::Duration::days(1),
                clipboard: policy,
            })
            .await
            .unwrap();
        HostSession {
            session_id,
            pages,
            _agent: agent,
        }
    }

    /// Returns whether the page's field reported a value for which `matches` holds.
    /// The page's reports travel on separate connections and can arrive out of order,
    /// so every report counts, not only the last one.
    fn field_reported(&self, matches: impl Fn(&str) -> bool) -> bool {
        self.pages
            .requests()
            .iter()
            .filter_map(|target| target.strip_prefix("/report?v="))
            .map(|value| {
                String::from_utf8(percent_decode(value.as_bytes())).expect("UTF-8 field value")
            })
            .any(|value| matches(&value))
    }

    fn copies(&self) -> usize {
        self.pages
            .requests()
            .iter()
            .filter(|target| *target == "/copied")
            .count()
    }
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            let hex = std::str::from_utf8(&input[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// WebDriver key codes: Control, and the null key that releases held modifiers.
const CONTROL: char = '\u{E009}';
const RELEASE_MODIFIERS: char = '\u{E000}';

/// Opens the session's viewer page and focuses the remote text field: clicks the
/// canvas and types a probe character until the page reports it, then clears the
/// field. The workspace window may not have focus yet when the page has loaded.
async fn open_and_focus_field(browser: &Browser, stack: &Stack, session: &HostSession) {
    browser
        .open(&format!("{}/sessions/{}", stack.base, session.session_id))
        .await;
    browser.element("#screen").await;
    wait_for_picture(browser).await;
    wait_for(
        "the workspace field to take focus",
        Duration::from_secs(60),
        || async {
            browser.click("#screen").await;
            browser.type_into("#screen", "q").await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < deadline {
                if session.field_reported(|value| value.ends_with('q')) {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        },
    )
    .await;
    browser
        .type_into("#screen", &format!("{CONTROL}a{RELEASE_MODIFIERS}\u{E017}"))
        .await;
    wait_for(
        "the field to report its value",
        Duration::from_secs(30),
        || async { session.field_reported(str::is_empty).then_some(()) },
    )
    .await;
}

/// Fires a paste of `text` at the viewer's canvas, as the browser does for Control+V.
async fn paste_in_viewer(browser: &Browser, text: &str) {
    let script = format!(
        "const c = document.getElementById('screen'); c.focus();
const data = new DataTransfer(); data.setData('text/plain', {});
c.dispatchEvent(new ClipboardEvent('paste', {{ clipboardData: data, bubbles: true, cancelable: true }}));
return true;",
        serde_json::to_string(text).unwrap()
    );
    browser.script(&script).await;
}

/// Opens a second viewer socket of the browser's portal session, which receives the
/// same status messages as the page.
async fn viewer_socket(stack: &Stack, browser: &Browser, session_id: Uuid) -> Socket {
    let cookie = browser.cookie_header().await;
    let client = reqwest::Client::new();
    let answer: serde_json::Value = client
        .post(format!("{}/sessions/{session_id}/ticket", stack.base))
        .header("origin", &stack.base)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "{}{}",
        stack.base.replacen("http", "ws", 1),
        answer["socket"].as_str().unwrap()
    );
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", stack.base.parse().unwrap());
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("viewer socket opens");
    socket
}

/// Reads status messages for `window` and returns those of type `kind`.
async fn statuses_within(
    socket: &mut Socket,
    kind: &str,
    window: Duration,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + window;
    let mut found = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let Message::Text(text) = message.expect("viewer socket healthy") {
            let status: serde_json::Value = serde_json::from_str(&text).unwrap();
            if status["type"] == kind {
                found.push(status);
            }
        }
    }
    found
}

const UNICODE_TEXT: &str = "pässwörd€ 日本 Ö{}";

/// Returns the session's clipboard audit events with their parsed details.
async fn clipboard_audit(
    stack: &Stack,
    session_id: Uuid,
) -> Vec<(broker::audit::StoredEvent, serde_json::Value)> {
    let events = stack.broker().state.audit.list(0, 100_000).await.unwrap();
    events
        .into_iter()
        .filter(|event| {
            event.action == "session.clipboard.transferred"
                && event.session_id.as_deref() == Some(session_id.to_string().as_str())
        })
        .map(|event| {
            let details = serde_json::from_str(&event.details).unwrap();
            (event, details)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_follows_site_policy() {
    use broker::sites::ClipboardPolicy;

    let mut stack = start_stack(&[]).await;
    let browser = Browser::start().await;
    let owner = sign_in_browser(&stack, &browser, "alice").await;

    // Both ways: the paste reaches the workspace's field byte for byte, and the
    // workspace's copy reaches the owner's viewers.
    let session = HostSession::start(&stack, &owner, ClipboardPolicy::Both, CLIPBOARD_PAGE).await;
    open_and_focus_field(&browser, &stack, &session).await;
    let mut socket = viewer_socket(&stack, &browser, session.session_id).await;
    let policy = status_of_type(&mut socket, "clipboard_policy", Duration::from_secs(30)).await;
    assert_eq!(policy["paste_in"], true, "{policy}");
    assert_eq!(policy["copy_out"], true, "{policy}");
    paste_in_viewer(&browser, UNICODE_TEXT).await;
    wait_for(
        "the pasted text in the field",
        Duration::from_secs(60),
        || async {
            session
                .field_reported(|value| value == UNICODE_TEXT)
                .then_some(())
        },
    )
    .await;
    browser
        .type_into(
            "#screen",
            &format!("{CONTROL}a{RELEASE_MODIFIERS}{CONTROL}c{RELEASE_MODIFIERS}"),
        )
        .await;
    let copied = status_of_type(&mut socket, "clipboard", Duration::from_secs(60)).await;
    assert_eq!(copied["text"], UNICODE_TEXT, "{copied}");
    let received = browser
        .wait_for_script(
            "const n = Number(document.getElementById('viewer').dataset.clipboardReceived); return n > 0 ? n : null;",
            Duration::from_secs(30),
        )
        .await;
    assert!(received.as_u64() >= Some(1), "{received}");
    // Each transfer is audited with its owner, session, site, direction and length,
    // never its text.
    let transfers = clipboard_audit(&stack, session.session_id).await;
    let directions: Vec<&str> = transfers
        .iter()
        .map(|(_, details)| details["direction"].as_str().unwrap())
        .collect();
    assert!(directions.contains(&"paste_in"), "{transfers:?}");
    assert!(directions.contains(&"copy_out"), "{transfers:?}");
    for (event, details) in &transfers {
        assert_eq!(event.actor, format!("user:{owner}"));
        assert_eq!(event.target.as_deref(), Some("site:demo-bank"));
        assert_eq!(details["bytes"], UNICODE_TEXT.len(), "{details}");
        assert!(!event.details.contains("pässwörd"), "{}", event.details);
    }
    stack.broker().state.portal.hub.stop(session.session_id, "test finished");
    drop(socket);
    drop(session);

    // Off: the viewer does not send a paste, the broker refuses one sent anyway, and a
    // copy in the workspace does not leave it.
    let session =
        HostSession::start(&stack, &owner, ClipboardPolicy::Blocked, CLIPBOARD_PAGE).await;
    open_and_focus_field(&browser, &stack, &session).await;
    let mut socket = viewer_socket(&stack, &browser, session.session_id).await;
    let policy = status_of_type(&mut socket, "clipboard_policy", Duration::from_secs(30)).await;
    assert_eq!(policy["paste_in"], false, "{policy}");
    assert_eq!(policy["copy_out"], false, "{policy}");
    paste_in_viewer(&browser, UNICODE_TEXT).await;
    let shown = browser
        .wait_for_script(
            "const s = document.getElementById('status'); return s.hidden ? null : s.textContent;",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        shown.as_str().unwrap().contains("does not allow pasting"),
        "{shown}"
    );
    let paste = serde_json::json!({ "type": "paste", "text": UNICODE_TEXT }).to_string();
    socket.send(Message::text(paste)).await.unwrap();
    let refused = status_of_type(&mut socket, "input_refused", Duration::from_secs(30)).await;
    assert!(
        refused["reason"].as_str().unwrap().contains("pasting"),
        "{refused}"
    );

    // Typed text reaches the field, which shows that input flows while pastes do not.
    browser.type_into("#screen", "ok").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !session.field_reported(|value| value == "ok") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "typed text did not reach the field: {:?}",
            session.pages.requests()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .type_into(
            "#screen",
            &format!("{CONTROL}a{RELEASE_MODIFIERS}{CONTROL}c{RELEASE_MODIFIERS}"),
        )
        .await;
    wait_for(
        "a copy in the workspace",
        Duration::from_secs(60),
        || async { (session.copies() > 0).then_some(()) },
    )
    .await;
    // The workspace copied; with the policy off the copy must not arrive. In the run
    // above a permitted copy arrived well within this window.
    let leaked = statuses_within(&mut socket, "clipboard", Duration::from_secs(5)).await;
    assert!(leaked.is_empty(), "copied text left the session: {leaked:?}");
    let transfers = clipboard_audit(&stack, session.session_id).await;
    assert!(transfers.is_empty(), "blocked transfers audited: {transfers:?}");
    assert_eq!(
        browser
            .script("return document.getElementById('viewer').dataset.clipboardReceived;")
            .await,
        "0"
    );
    stack
        .broker()
        .state
        .portal
        .hub
        .stop(session.session_id, "test finished");
    drop(socket);
    drop(session);

    browser.quit().await;
    stack.shut_down().await;
}

/// A page five screens tall that reports its scroll position.
const SCROLL_PAGE: &str = r#"<!doctype html><html><body style="margin:0;height:5000px;background:linear-gradient(#fff,#36c)">
<script>
addEventListener('scroll', () => fetch('/scroll?y=' + Math.round(scrollY)));
</script></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_wheel_scrolls_workspace_page() {
    let (mut stack, browser, session) =
        viewer_on_host_page(Browser::start().await, SCROLL_PAGE).await;
    let positions = || {
        session
            .pages
            .requests()
            .iter()
            .filter_map(|target| target.strip_prefix("/scroll?y="))
            .map(|y| y.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };

    // Wheel down until the page reports a position below the top: the first turns
    // may arrive before the workspace window has the pointer.
    let down = wait_for(
        "the page to scroll down",
        Duration::from_secs(60),
        || async {
            browser.wheel("#screen", 300).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            positions().into_iter().max().filter(|y| *y > 0)
        },
    )
    .await;

    // Wheel up: the page scrolls back to the top. Reports travel on separate
    // connections and may arrive out of order, so any report of 0 counts.
    let before_up = positions().len();
    wait_for(
        "the page to scroll back up",
        Duration::from_secs(60),
        || async {
            browser.wheel("#screen", -3 * down as i64 - 300).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            positions()[before_up..].contains(&0).then_some(())
        },
    )
    .await;

    stack
        .broker()
        .state
        .portal
        .hub
        .stop(session.session_id, "test finished");
    drop(session);
    browser.quit().await;
    stack.shut_down().await;
}

/// Reads the end line the viewer script shows, or an empty string while it is hidden.
const ENDED_PROBE: &str =
    "const e = document.getElementById('ended'); return e.hidden ? '' : e.textContent;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_words_end_reason() {
    let (mut stack, browser, session) =
        viewer_on_host_page(Browser::start().await, SCROLL_PAGE).await;
    let viewer_url = format!("{}/sessions/{}", stack.base, session.session_id);
    let mut socket = viewer_socket(&stack, &browser, session.session_id).await;

    // An admin ends the session: the socket carries the reason code, and the viewer
    // shows the sentence for it.
    let sessions = &stack.broker().state.portal.sessions;
    sessions
        .end(
            session.session_id,
            broker::sessions::EndReason::AdminTerminated,
            broker::audit::Actor::System("test"),
        )
        .await
        .unwrap();
    let ended = status_of_type(&mut socket, "ended", Duration::from_secs(30)).await;
    assert_eq!(ended["reason"], "terminated_by_admin", "{ended}");
    let shown = wait_for("the viewer's end line", Duration::from_secs(30), || async {
        let text = browser.script(ENDED_PROBE).await;
        (text != "").then_some(text)
    })
    .await;
    assert_eq!(shown, "An administrator ended the session");

    // A reload gets the portal's page for the ended session, with the same sentence.
    browser.open(&viewer_url).await;
    let reloaded = browser.script(ENDED_PROBE).await;
    assert_eq!(reloaded, "An administrator ended the session");

    drop(session);
    browser.quit().await;
    stack.shut_down().await;
}
