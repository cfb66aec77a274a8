//! The agent inside the workspace image, hardened as the launcher runs it: read-only
//! root, tmpfs /tmp and home, uid 1000, no capabilities, `no-new-privileges`, the
//! workspace seccomp profile, Chromium's own sandbox on (no `--no-sandbox`).
//!
//! Needs the workspace image, named by `STRONGROOM_TEST_WORKSPACE_IMAGE` (which
//! `scripts/test.sh` sets to the image it built) or else the newest
//! `strongroom/workspace` image on the engine. The test mounts the freshly built agent
//! binary over the image's copy.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use protocol::{AgentControl, AgentMessage, BrokerMessage, SessionSecret};

const WAIT: Duration = Duration::from_secs(60);

/// A container removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn start_container(image: &str, policy: &str, dir: &std::path::Path) -> Container {
    let policy_path = dir.join("policy.json");
    std::fs::write(&policy_path, policy).unwrap();
    let seccomp = concat!(env!("CARGO_MANIFEST_DIR"), "/../seccomp/workspace.json");
    let hash = SessionSecret::new(SECRET.to_owned()).sha256_hex();
    let id = docker(&[
        "run",
        "-d",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=256m",
        "--tmpfs",
        "/home/strongroom:rw,nosuid,nodev,size=64m,uid=1000,gid=1000",
        "-e",
        "HOME=/home/strongroom",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        &format!("seccomp={seccomp}"),
        "--shm-size",
        "256m",
        "--ulimit",
        "core=0",
        "--user",
        "1000",
        "-v",
        &format!(
            "{}:/usr/local/bin/strongroom-agent:ro",
            env!("CARGO_BIN_EXE_strongroom-agent")
        ),
        "-v",
        &format!(
            "{}:/etc/chromium/policies/managed/strongroom.json:ro",
            policy_path.display()
        ),
        "-p",
        "127.0.0.1::7000",
        "-e",
        &format!("STRONGROOM_AGENT_SECRET_SHA256={hash}"),
        "-e",
        "STRONGROOM_START_URL=data:text/html,<body style='background:rgb(20,200,40)'></body>",
        "--label",
        "strongroom.test=agent-container",
        image,
        "--width",
        "640",
        "--height",
        "480",
    ]);
    Container(id)
}

async fn wait_ready(container: &Container) -> std::net::SocketAddr {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let logs = Command::new("docker")
            .args(["logs", &container.0])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&logs.stdout).contains("LISTENING ") {
            let port = docker(&["port", &container.0, "7000/tcp"]);
            return port.lines().next().unwrap().parse().unwrap();
        }
        let state = docker(&["inspect", "-f", "{{.State.Running}}", &container.0]);
        assert!(
            state == "true" && tokio::time::Instant::now() < deadline,
            "agent not ready; logs:\n{}",
            String::from_utf8_lossy(&logs.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn image() -> String {
    if let Ok(image) = std::env::var("STRONGROOM_TEST_WORKSPACE_IMAGE")
        && !image.is_empty()
    {
        return image;
    }
    let newest = docker(&[
        "images",
        "strongroom/workspace",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    newest
        .lines()
        .next()
        .expect("no strongroom/workspace image: run `strongroom image build`")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_streams_in_hardened_container() {
    let dir = TempDir::new("container-stream");
    let policy = r#"{"DeveloperToolsAvailability": 1, "URLBlocklist": ["devtools://*", "chrome-devtools://*", "view-source:*"]}"#;
    let container = start_container(&image(), policy, &dir.0);
    let address = wait_ready(&container).await;

    let mut broker = BrokerClient::connect(address).await;
    broker
        .send(&BrokerMessage::Auth {
            secret: SessionSecret::new(SECRET.to_owned()),
        })
        .await;
    assert_eq!(
        broker.next(WAIT).await,
        Some(AgentMessage::Control(AgentControl::StreamConfig {
            codec: "vp8".into(),
            width: 640,
            height: 480
        }))
    );
    // Every packet is decoded in order until the frame shows the start page's colour in
    // the middle of the screen, which Chromium paints once the page has loaded.
    let mut decoder = Decoder::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let frame = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no frame showed the start page within {WAIT:?}"
        );
        let AgentMessage::Video(packet) = broker.next(WAIT).await.expect("connection closed")
        else {
            continue;
        };
        let Some(frame) = decoder.decode(&packet.data) else {
            continue;
        };
        let [r, g, b] = pixel(&frame, 320, 240);
        if r.abs_diff(20) < 24 && g.abs_diff(200) < 24 && b.abs_diff(40) < 24 {
            break frame;
        }
    };
    assert_eq!((frame.0, frame.1), (640, 480));

    broker.send(&BrokerMessage::End).await;
    let status = docker(&["wait", &container.0]);
    assert_eq!(status, "0", "agent exit status after End");
    let logs = Command::new("docker")
        .args(["logs", &container.0])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&logs.stderr).contains("--no-sandbox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devtools_policy_2_blocks_cdp_in_container() {
    let dir = TempDir::new("container-policy2");
    let container = start_container(&image(), r#"{"DeveloperToolsAvailability": 2}"#, &dir.0);
    let status = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking({
            let id = container.0.clone();
            move || docker(&["wait", &id])
        }),
    )
    .await
    .expect("agent did not exit")
    .unwrap();
    let logs = Command::new("docker")
        .args(["logs", &container.0])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert_eq!(status, "2", "agent exit status; logs:\n{stderr}");
    assert!(
        stderr.contains("DeveloperToolsAvailability must not be 2"),
        "{stderr}"
    );
}
