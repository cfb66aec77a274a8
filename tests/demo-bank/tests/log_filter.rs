//! The demo bank refuses to start with a `DEMO_BANK_LOG` that is not a log filter.

use std::process::Command;

#[test]
fn invalid_demo_bank_log_stops_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_strongroom-demo-bank"))
        .env("DEMO_BANK_LOG", "strongroom_demo_bank=loud")
        .output()
        .expect("run the demo bank");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid DEMO_BANK_LOG=\"strongroom_demo_bank=loud\""),
        "{stderr}"
    );
}
