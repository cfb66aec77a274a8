//! The agent refuses to start with a `RUST_LOG` that is not a log filter.

use std::process::Command;

#[test]
fn invalid_rust_log_stops_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_strongroom-agent"))
        .env("RUST_LOG", "strongroom_agent=loud")
        .env_remove("STRONGROOM_AGENT_SECRET_SHA256")
        .env_remove("STRONGROOM_START_URL")
        .output()
        .expect("run the agent");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid RUST_LOG=\"strongroom_agent=loud\""),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "the agent did not start");
}
