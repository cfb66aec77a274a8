//! End-to-end tests of the agent with real Xvfb, Chromium and libvpx.
//!
//! Chromium runs with `--no-sandbox` because these tests run as root outside a container.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use protocol::{
    AgentControl, AgentMessage, AllowedOrigins, AutoLogin, BrokerMessage, CredentialField,
    Credentials, LoginStep, SessionSecret, StepOutcome,
};

const WAIT: Duration = Duration::from_secs(30);

fn solid_page(colour: &str) -> String {
    format!("<!doctype html><html><body style=\"margin:0;background:{colour}\"></body></html>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_decodable_vp8_of_the_page() {
    let server = HttpServer::start(HashMap::from([("/", solid_page("rgb(20, 200, 40)"))])).await;
    let agent = Agent::start(&server.url("/"), 640, 480).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;

    let first = broker.next(WAIT).await.expect("stream config");
    assert_eq!(
        first,
        AgentMessage::Control(AgentControl::StreamConfig {
            codec: "vp8".into(),
            width: 640,
            height: 480
        })
    );

    let mut decoder = Decoder::new();
    let mut saw_keyframe = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no decoded frame showed the page colour"
        );
        let Some(AgentMessage::Video(packet)) = broker.next(WAIT).await else {
            continue;
        };
        if !saw_keyframe {
            assert!(packet.keyframe, "the first video packet must be a keyframe");
            saw_keyframe = true;
        }
        let frame = decoder.decode(&packet.data).expect("the packet decodes");
        assert_eq!((frame.0, frame.1), (640, 480));
        let [r, g, b] = pixel(&frame, 320, 240);
        if (r as i32 - 20).abs() < 30 && (g as i32 - 200).abs() < 30 && (b as i32 - 40).abs() < 30 {
            assert!(packet.pts_us > 0);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_rejected() {
    let server = HttpServer::start(HashMap::from([("/", solid_page("white"))])).await;
    let agent = Agent::start(&server.url("/"), 320, 240).await;

    let mut wrong = BrokerClient::connect(agent.address).await;
    wrong
        .send(&BrokerMessage::Auth {
            secret: SessionSecret::new("x".repeat(SessionSecret::MIN_LEN + 8)),
        })
        .await;
    assert_eq!(
        wrong.next(WAIT).await,
        None,
        "a wrong secret must close the connection without any frame"
    );

    let mut not_auth = BrokerClient::connect(agent.address).await;
    not_auth.send(&BrokerMessage::RequestKeyframe).await;
    assert_eq!(
        not_auth.next(WAIT).await,
        None,
        "a first message other than auth must close the connection"
    );

    let mut garbage = BrokerClient::connect(agent.address).await;
    garbage.send_raw(vec![0x02, b'{', 0xff]).await;
    assert_eq!(
        garbage.next(WAIT).await,
        None,
        "garbage must close the connection"
    );

    let mut right = BrokerClient::connect_authenticated(agent.address).await;
    assert!(matches!(
        right.next(WAIT).await,
        Some(AgentMessage::Control(AgentControl::StreamConfig { .. }))
    ));

    // A newer authenticated connection replaces the older one.
    let mut newer = BrokerClient::connect_authenticated(agent.address).await;
    assert!(matches!(
        newer.next(WAIT).await,
        Some(AgentMessage::Control(AgentControl::StreamConfig { .. }))
    ));
    while right.next(WAIT).await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_screen_sends_only_keyframes() {
    let server = HttpServer::start(HashMap::from([("/", solid_page("rgb(90, 90, 200)"))])).await;
    let agent = Agent::start_with_args(
        &["--keyframe-interval-secs", "1"],
        &server.url("/"),
        320,
        240,
    )
    .await;
    server.wait_for(WAIT, |r| r.path == "/").await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;

    // Wait for the page colour, so the screen no longer changes.
    let mut decoder = Decoder::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never appeared"
        );
        if let Some(AgentMessage::Video(packet)) = broker.next(WAIT).await
            && let Some(frame) = decoder.decode(&packet.data)
            && pixel(&frame, 160, 120)[2] > 150
        {
            break;
        }
    }

    // At 10 frames per second for 3.5 s, an unchanged screen yields only the periodic
    // keyframes (one per second).
    let window = Duration::from_millis(3500);
    let started = tokio::time::Instant::now();
    let (mut keyframes, mut deltas) = (0, 0);
    while let Ok(message) =
        tokio::time::timeout(window.saturating_sub(started.elapsed()), broker.next(WAIT)).await
    {
        match message {
            Some(AgentMessage::Video(packet)) if packet.keyframe => keyframes += 1,
            Some(AgentMessage::Video(_)) => deltas += 1,
            Some(_) => {}
            None => panic!("connection closed"),
        }
    }
    assert!(
        (2..=5).contains(&keyframes),
        "periodic keyframes: {keyframes}"
    );
    assert!(deltas <= 2, "an idle screen produced {deltas} delta frames");

    // A keyframe request produces a keyframe before the timer's next one.
    broker.send(&BrokerMessage::RequestKeyframe).await;
    let requested_at = tokio::time::Instant::now();
    let packet = loop {
        if let Some(AgentMessage::Video(packet)) = broker.next(WAIT).await {
            break packet;
        }
    };
    assert!(packet.keyframe);
    assert!(
        requested_at.elapsed() < Duration::from_millis(900),
        "the keyframe came from the timer"
    );
}

const INPUT_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<input id="t" autocomplete="off" style="position:absolute;left:10px;top:10px;width:500px;height:40px;font-size:24px">
<script>
const t = document.getElementById('t');
t.addEventListener('input', () => fetch('/report?v=' + encodeURIComponent(t.value)));
</script></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_input_reaches_text_field() {
    let server = HttpServer::start(HashMap::from([("/", INPUT_PAGE.to_owned())])).await;
    let agent = Agent::start(&server.url("/"), 640, 480).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;
    server.wait_for(WAIT, |r| r.path == "/").await;

    // Click into the field and type a probe character until the page reports it: the
    // window may not be mapped or focused yet when the page has loaded.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the field never received the probe character"
        );
        broker
            .send(&BrokerMessage::MouseMove { x: 100, y: 30 })
            .await;
        for pressed in [true, false] {
            broker
                .send(&BrokerMessage::MouseButton {
                    button: protocol::MouseButton::Left,
                    pressed,
                    x: 100,
                    y: 30,
                })
                .await;
        }
        for event in key_events("q") {
            broker.send(&event).await;
        }
        let probe = tokio::time::timeout(
            Duration::from_secs(2),
            server.wait_for(WAIT, |r| {
                query_param(&r.path, "v").is_some_and(|v| v.ends_with('q'))
            }),
        )
        .await;
        if probe.is_ok() {
            break;
        }
    }
    // Select all and delete the probe characters.
    broker.send(&key("ControlLeft", "Control", true)).await;
    broker.send(&key("KeyA", "a", true)).await;
    broker.send(&key("KeyA", "a", false)).await;
    broker.send(&key("ControlLeft", "Control", false)).await;
    broker.send(&key("Delete", "Delete", true)).await;
    broker.send(&key("Delete", "Delete", false)).await;
    server
        .wait_for(WAIT, |r| query_param(&r.path, "v").as_deref() == Some(""))
        .await;

    let text = "Zaé€ß x!";
    for event in key_events(text) {
        broker.send(&event).await;
    }
    broker.send(&key("Backspace", "Backspace", true)).await;
    broker.send(&key("Backspace", "Backspace", false)).await;
    for event in key_events("?") {
        broker.send(&event).await;
    }

    let expected = "Zaé€ß x?";
    server
        .wait_for(WAIT, |r| {
            query_param(&r.path, "v").as_deref() == Some(expected)
        })
        .await;
}

const LOGIN_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"></head><body>
<form method="post" action="/login" accept-charset="utf-8">
<input id="user" name="user" autocomplete="off">
<input id="pass" name="pass" type="password" autocomplete="off">
<input id="otp" name="otp" inputmode="numeric" autocomplete="off">
<button id="go" type="submit">Sign in</button>
</form>
<script>
for (const el of document.querySelectorAll('input'))
  el.addEventListener('input', () => fetch('/report?' + el.id + '=' + encodeURIComponent(el.value)));
</script></body></html>"#;

const HOME_PAGE: &str = r#"<!doctype html><html><body><h1 id="welcome">Welcome</h1><a id="logout" href="/">Log out</a></body></html>"#;

fn login(id: u64, origin: &str, password: &str, from_home: bool) -> AutoLogin {
    let mut steps = Vec::new();
    if from_home {
        steps.push(LoginStep::Click {
            selector: "#logout".into(),
            timeout_ms: 10_000,
        });
    }
    steps.extend([
        LoginStep::WaitForSelector {
            selector: "#user".into(),
            timeout_ms: 10_000,
        },
        LoginStep::Fill {
            selector: "#user".into(),
            field: CredentialField::Username,
            timeout_ms: 5_000,
        },
        LoginStep::Fill {
            selector: "#pass".into(),
            field: CredentialField::Password,
            timeout_ms: 5_000,
        },
        LoginStep::Fill {
            selector: "#otp".into(),
            field: CredentialField::Totp,
            timeout_ms: 5_000,
        },
        LoginStep::Click {
            selector: "#go".into(),
            timeout_ms: 5_000,
        },
        LoginStep::WaitForSuccess {
            url_prefix: None,
            selector: Some("#welcome".into()),
            timeout_ms: 10_000,
        },
    ]);
    AutoLogin {
        login_id: id,
        steps,
        credentials: Credentials {
            username: "alice@example".into(),
            password: password.into(),
            totp: Some("042917".into()),
        },
        allowed_origins: AllowedOrigins {
            username: vec![origin.into()],
            password: vec![origin.into()],
            totp: vec![origin.into()],
        },
    }
}

/// Collects agent messages until `LoginFinished` for `login_id`.
async fn collect_login(broker: &mut BrokerClient, login_id: u64) -> Vec<AgentMessage> {
    let mut messages = Vec::new();
    loop {
        let message = broker
            .next(WAIT)
            .await
            .expect("connection closed during login");
        let done = matches!(&message, AgentMessage::Control(AgentControl::LoginFinished { login_id: id, .. }) if *id == login_id);
        messages.push(message);
        if done {
            return messages;
        }
    }
}

fn finished(messages: &[AgentMessage]) -> (bool, Option<String>) {
    match messages.last() {
        Some(AgentMessage::Control(AgentControl::LoginFinished {
            success, reason, ..
        })) => (*success, reason.clone()),
        other => panic!("expected LoginFinished, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_login_types_exact_bytes() {
    let server = HttpServer::start(HashMap::from([
        ("/", LOGIN_PAGE.to_owned()),
        ("/home", HOME_PAGE.to_owned()),
    ]))
    .await;
    let agent = Agent::start(&server.url("/"), 800, 600).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;
    server.wait_for(WAIT, |r| r.path == "/").await;

    let passwords = ["<p&ss>'\"$", "`$(id)`%20", "pässwörd€", "trailing space "];
    for (index, password) in passwords.iter().enumerate() {
        let login_id = index as u64 + 1;
        let posts_before = server
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count();
        broker
            .send(&BrokerMessage::AutoLogin(login(
                login_id,
                &server.origin(),
                password,
                index > 0,
            )))
            .await;
        let messages = collect_login(&mut broker, login_id).await;
        assert_eq!(
            finished(&messages),
            (true, None),
            "login {login_id} failed: {messages:?}; requests: {:?}",
            server.requests()
        );

        let posts: Vec<_> = server
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert_eq!(
            posts.len(),
            posts_before + 1,
            "exactly one form submission per login"
        );
        let form = parse_form(&posts.last().unwrap().body);
        assert_eq!(form["user"], b"alice@example".to_vec());
        assert_eq!(
            form["pass"],
            password.as_bytes().to_vec(),
            "password bytes for login {login_id}"
        );
        assert_eq!(form["otp"], b"042917".to_vec());

        assert!(
            messages.iter().any(|m| matches!(
                m,
                AgentMessage::Control(AgentControl::UrlChanged { url }) if url == &server.url("/home")
            )),
            "the navigation to /home was reported"
        );

        // The placeholder brackets the fill: it starts before the first step result, no
        // screen frame is sent while it lasts, and it ends before the login result.
        let start = messages
            .iter()
            .position(|m| matches!(m, AgentMessage::Control(AgentControl::PlaceholderStart { login_id: id }) if *id == login_id))
            .expect("placeholder start");
        let end = messages
            .iter()
            .position(|m| matches!(m, AgentMessage::Control(AgentControl::PlaceholderEnd { login_id: id }) if *id == login_id))
            .expect("placeholder end");
        let first_step = messages
            .iter()
            .position(|m| matches!(m, AgentMessage::Control(AgentControl::LoginStep { .. })))
            .expect("step results");
        assert!(
            start < first_step,
            "placeholder starts before any step runs"
        );
        assert!(
            end < messages.len() - 1,
            "placeholder ends before the login result"
        );
        assert!(
            !messages[start..end]
                .iter()
                .any(|m| matches!(m, AgentMessage::Video(_))),
            "no video while the placeholder is active"
        );
    }

    // Neither the agent nor Chromium logged a credential.
    let log = agent.log();
    assert!(
        log.contains("Auto-login step finished"),
        "the log is captured"
    );
    for secret in passwords.iter().chain(&["alice@example"]) {
        assert!(
            !log.contains(secret),
            "the log contains the credential {secret:?}"
        );
    }

    // After the placeholder, frames resume with a keyframe.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no video after the placeholder"
        );
        if let Some(AgentMessage::Video(packet)) = broker.next(WAIT).await {
            assert!(
                packet.keyframe,
                "the first frame after a placeholder is a keyframe"
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_login_rejects_bad_input() {
    let server = HttpServer::start(HashMap::from([
        ("/", LOGIN_PAGE.to_owned()),
        ("/home", HOME_PAGE.to_owned()),
    ]))
    .await;
    let agent = Agent::start(&server.url("/"), 640, 480).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;
    server.wait_for(WAIT, |r| r.path == "/").await;

    // A two-line password is rejected before anything is typed.
    broker
        .send(&BrokerMessage::AutoLogin(login(
            1,
            &server.origin(),
            "first\nsecond",
            false,
        )))
        .await;
    let messages = collect_login(&mut broker, 1).await;
    let (success, reason) = finished(&messages);
    assert!(!success);
    assert!(
        reason.as_deref().unwrap_or("").contains("line break"),
        "{reason:?}"
    );
    assert!(
        !messages
            .iter()
            .any(|m| matches!(m, AgentMessage::Control(AgentControl::LoginStep { .. })))
    );

    // A page whose origin is not allowed gets no credential.
    broker
        .send(&BrokerMessage::AutoLogin(login(
            2,
            "https://bank.example",
            "secret",
            false,
        )))
        .await;
    let messages = collect_login(&mut broker, 2).await;
    assert!(!finished(&messages).0);
    assert!(messages.iter().any(|m| matches!(
        m,
        AgentMessage::Control(AgentControl::LoginStep {
            outcome: StepOutcome::OriginRejected { .. },
            ..
        })
    )));

    // A selector that never appears times out.
    let mut missing = login(3, &server.origin(), "secret", false);
    missing.steps[0] = LoginStep::WaitForSelector {
        selector: "#nope".into(),
        timeout_ms: 500,
    };
    broker.send(&BrokerMessage::AutoLogin(missing)).await;
    let messages = collect_login(&mut broker, 3).await;
    assert!(!finished(&messages).0);
    assert!(messages.iter().any(|m| matches!(
        m,
        AgentMessage::Control(AgentControl::LoginStep {
            outcome: StepOutcome::TimedOut,
            ..
        })
    )));

    let typed: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/report") || r.method == "POST")
        .collect();
    assert!(
        typed.is_empty(),
        "nothing may be typed or submitted: {typed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_exit_reported_and_agent_fails() {
    let server = HttpServer::start(HashMap::from([("/", solid_page("white"))])).await;
    let mut agent = Agent::start(&server.url("/"), 320, 240).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;

    let chromium: Vec<u32> = child_pids(agent.pid())
        .into_iter()
        .filter(|pid| process_name(*pid).starts_with("chromium"))
        .collect();
    assert_eq!(chromium.len(), 1, "one Chromium child: {chromium:?}");
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(chromium[0] as i32, libc::SIGKILL) };

    let exited = loop {
        match broker.next(WAIT).await {
            Some(AgentMessage::Control(AgentControl::BrowserExited { signal, .. })) => {
                break signal;
            }
            Some(_) => continue,
            None => panic!("connection closed without BrowserExited"),
        }
    };
    assert_eq!(exited, Some(libc::SIGKILL));
    assert_eq!(agent.wait_exit(WAIT).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_message_stops_everything() {
    let server = HttpServer::start(HashMap::from([("/", solid_page("white"))])).await;
    let mut agent = Agent::start(&server.url("/"), 320, 240).await;
    let children = child_pids(agent.pid());
    assert!(
        children.iter().any(|pid| process_name(*pid) == "Xvfb"),
        "Xvfb child"
    );

    // Core dumps are off for the agent and every child.
    for pid in std::iter::once(agent.pid()).chain(children.iter().copied()) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|line| line.starts_with("Max core file size"))
            .unwrap();
        assert!(
            core.split_whitespace()
                .skip(4)
                .take(2)
                .all(|value| value == "0"),
            "{} has {core}",
            process_name(pid)
        );
    }

    let mut broker = BrokerClient::connect_authenticated(agent.address).await;
    broker.send(&BrokerMessage::End).await;
    assert_eq!(agent.wait_exit(WAIT).await, Some(0));
    for pid in children {
        assert!(
            !process_alive(pid),
            "child {pid} ({}) still running",
            process_name(pid)
        );
    }
}

/// A page in one colour that reports its viewport size whenever it changes.
const SIZE_PAGE: &str = r#"<!doctype html><html><body style="margin:0;background:rgb(200,60,30)">
<script>
const report = () => fetch('/size?w=' + innerWidth + '&h=' + innerHeight);
addEventListener('resize', report);
report();
</script></body></html>"#;

/// Sends a resize and returns the decoded frame of the first keyframe after the stream
/// configuration it causes, checking that the configuration has the expected size.
async fn resize_and_decode(
    broker: &mut BrokerClient,
    requested: (u32, u32),
    expected: (u32, u32),
) -> (u32, u32, Vec<u8>) {
    broker
        .send(&BrokerMessage::Resize {
            width: requested.0,
            height: requested.1,
            device_pixel_ratio: 1.0,
        })
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream configuration of {expected:?}"
        );
        if let Some(AgentMessage::Control(AgentControl::StreamConfig { width, height, .. })) =
            broker.next(WAIT).await
        {
            assert_eq!((width, height), expected, "stream size after a resize");
            break;
        }
    }
    let mut decoder = Decoder::new();
    let mut first = true;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no frame of the page at {expected:?}"
        );
        let Some(AgentMessage::Video(packet)) = broker.next(WAIT).await else {
            continue;
        };
        if first {
            assert!(packet.keyframe, "the first packet after a resize is a keyframe");
            first = false;
        }
        let frame = decoder.decode(&packet.data).expect("the packet decodes");
        assert_eq!((frame.0, frame.1), expected, "decoded frame size");
        // The page covers the whole new screen, its far corner included, once Chromium
        // has laid it out again.
        let corner = pixel(&frame, expected.0 - 4, expected.1 - 4);
        if is_page_colour(corner) && is_page_colour(pixel(&frame, 4, 4)) {
            return frame;
        }
    }
}

fn is_page_colour([r, g, b]: [u8; 3]) -> bool {
    (r as i32 - 200).abs() < 30 && (g as i32 - 60).abs() < 30 && (b as i32 - 30).abs() < 30
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_changes_screen_window_and_stream() {
    let server = HttpServer::start(HashMap::from([("/", SIZE_PAGE.to_owned())])).await;
    let agent = Agent::start_with_args(
        &["--max-width", "1280", "--max-height", "800"],
        &server.url("/"),
        640,
        480,
    )
    .await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;
    let first = broker.next(WAIT).await.expect("stream config");
    assert!(
        matches!(
            first,
            AgentMessage::Control(AgentControl::StreamConfig {
                width: 640,
                height: 480,
                ..
            })
        ),
        "{first:?}"
    );
    server.wait_for(WAIT, |r| r.path.starts_with("/size")).await;

    // Larger: the screen, Chromium's viewport and the stream follow.
    resize_and_decode(&mut broker, (1000, 600), (1000, 600)).await;
    server
        .wait_for(WAIT, |r| r.path == "/size?w=1000&h=600")
        .await;

    // Beyond the largest screen: each side is clamped, and odd sizes become even.
    resize_and_decode(&mut broker, (3001, 2001), (1280, 800)).await;
    server
        .wait_for(WAIT, |r| r.path == "/size?w=1280&h=800")
        .await;

    // Smaller than the start size.
    resize_and_decode(&mut broker, (321, 241), (320, 240)).await;
    server
        .wait_for(WAIT, |r| r.path == "/size?w=320&h=240")
        .await;

    // No resize failed along the way.
    assert!(
        !agent.log().contains("Resizing the screen failed"),
        "{}",
        agent.log()
    );
}

/// Clicks into the page's text field and types a probe character until the page
/// reports it, then clears the field: the window may not be mapped or focused yet when
/// the page has loaded.
async fn focus_text_field(broker: &mut BrokerClient, server: &HttpServer) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the field never received the probe character"
        );
        for pressed in [true, false] {
            broker
                .send(&BrokerMessage::MouseButton {
                    button: protocol::MouseButton::Left,
                    pressed,
                    x: 100,
                    y: 30,
                })
                .await;
        }
        for event in key_events("q") {
            broker.send(&event).await;
        }
        let probe = tokio::time::timeout(
            Duration::from_secs(2),
            server.wait_for(WAIT, |r| {
                query_param(&r.path, "v").is_some_and(|v| v.ends_with('q'))
            }),
        )
        .await;
        if probe.is_ok() {
            break;
        }
    }
    select_all(broker).await;
    broker.send(&key("Delete", "Delete", true)).await;
    broker.send(&key("Delete", "Delete", false)).await;
    server
        .wait_for(WAIT, |r| query_param(&r.path, "v").as_deref() == Some(""))
        .await;
}

async fn select_all(broker: &mut BrokerClient) {
    broker.send(&key("ControlLeft", "Control", true)).await;
    broker.send(&key("KeyA", "a", true)).await;
    broker.send(&key("KeyA", "a", false)).await;
    broker.send(&key("ControlLeft", "Control", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_and_copy_keep_unicode_exact() {
    let server = HttpServer::start(HashMap::from([("/", INPUT_PAGE.to_owned())])).await;
    let agent = Agent::start(&server.url("/"), 640, 480).await;
    let mut broker = BrokerClient::connect_authenticated(agent.address).await;
    server.wait_for(WAIT, |r| r.path == "/").await;
    focus_text_field(&mut broker, &server).await;

    // The paste reaches the field byte for byte.
    let pasted = "pässwörd€ 日本 Ö{}";
    broker
        .send(&BrokerMessage::Paste {
            text: pasted.into(),
        })
        .await;
    server
        .wait_for(WAIT, |r| query_param(&r.path, "v").as_deref() == Some(pasted))
        .await;

    // Chromium's copy of the edited field comes back as the clipboard's new text.
    for event in key_events("Z") {
        broker.send(&event).await;
    }
    let edited = format!("{pasted}Z");
    server
        .wait_for(WAIT, |r| {
            query_param(&r.path, "v").as_deref() == Some(edited.as_str())
        })
        .await;
    select_all(&mut broker).await;
    broker.send(&key("ControlLeft", "Control", true)).await;
    broker.send(&key("KeyC", "c", true)).await;
    broker.send(&key("KeyC", "c", false)).await;
    broker.send(&key("ControlLeft", "Control", false)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let copied = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no clipboard change arrived"
        );
        if let Some(AgentMessage::Control(AgentControl::ClipboardChanged { text })) =
            broker.next(WAIT).await
        {
            break text;
        }
    };
    assert_eq!(copied, edited);
}
