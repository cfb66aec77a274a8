//! Runs the real workspace agent on the test host, with Xvfb and Chromium.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of the `strongroom-agent` binary, built on demand.
pub fn agent_binary() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target.join("debug").join("strongroom-agent");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "strongroom-agent"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build for the agent");
        assert!(status.success(), "building strongroom-agent failed");
    }
    binary
}

/// A running agent; killed when dropped.
pub struct HostAgent {
    pub child: Child,
    pub address: SocketAddr,
    pub log_path: PathBuf,
}

impl HostAgent {
    /// Starts the agent on loopback. Outside a container and as root, Chromium's
    /// sandbox cannot start, so this test-only run passes `--no-sandbox`.
    pub async fn start(secret_sha256: &str, start_url: &str) -> HostAgent {
        let log_path = std::env::temp_dir().join(format!(
            "strongroom-host-agent-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let log = std::fs::File::create(&log_path).expect("agent log file");
        let mut child = Command::new(agent_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-sandbox",
                "--fps",
                "10",
                "--width",
                "640",
                "--height",
                "360",
            ])
            .args(["--secret-sha256", secret_sha256])
            .args(["--start-url", start_url])
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start strongroom-agent");

        let stdout = child.stdout.take().expect("agent stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .ok()
            .and_then(|line| line.ok().flatten());
        let Some(line) = line else {
            panic!(
                "agent did not become ready; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        let address = line
            .strip_prefix("LISTENING ")
            .expect("agent readiness line")
            .parse()
            .expect("agent address");
        HostAgent {
            child,
            address,
            log_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for HostAgent {
    /// Stops the agent with SIGTERM so that it removes its Chromium profile, and
    /// kills it only if it is still running after a few seconds.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log_path);
    }
}
