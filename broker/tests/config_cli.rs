//! Configuration checks as an operator meets them: `strongroom check-config` and the
//! start of `strongroom launcher` and of the portal.

mod terminal_support;

use std::path::Path;
use std::process::Output;

use broker::server;
use terminal_support::strongroom_command;

/// Runs `strongroom ARGS` with a configuration file in `dir` and exactly the given
/// `STRONGROOM_*` variables.
fn strongroom(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let config = dir.join("strongroom.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", dir.join("data"))).unwrap();
    let mut command = strongroom_command();
    command
        .arg("--config")
        .arg(&config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run strongroom")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `strongroom check-config` with the given `STRONGROOM_*` variables, checks that
/// it rejects the configuration with exit code 2, and returns its standard error.
fn check_config_rejects(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = strongroom(dir.path(), &["check-config"], env);
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn invalid_log_variable_is_rejected() {
    for command in ["check-config", "launcher", "migrate"] {
        let dir = tempfile::tempdir().unwrap();

        let output = strongroom(dir.path(), &[command], &[("STRONGROOM_LOG", "verbose")]);

        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("STRONGROOM_LOG: "), "{command}: {stderr}");
        assert!(stderr.contains("\"verbose\""), "{command}: {stderr}");
        assert!(
            stderr.contains("STRONGROOM_LOG=debug"),
            "{command}: {stderr}"
        );
        assert!(!dir.path().join("data").exists(), "{command} wrote data");
    }
}

#[test]
fn valid_log_variable_is_accepted() {
    let dir = tempfile::tempdir().unwrap();

    let output = strongroom(
        dir.path(),
        &["check-config"],
        &[("STRONGROOM_LOG", "broker=debug,warn")],
    );

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn invalid_subnet_range_is_named() {
    let stderr = check_config_rejects(&[("STRONGROOM_LAUNCHER__SUBNET_RANGE", "10.0.0.0/33")]);

    assert!(
        stderr.contains("launcher.subnet_range: invalid IPv4 range \"10.0.0.0/33\""),
        "{stderr}"
    );
    assert!(stderr.contains("\"172.21.0.0/16\""), "{stderr}");
}

#[test]
fn contradicting_public_url_is_rejected() {
    let stderr = check_config_rejects(&[
        ("STRONGROOM_SERVER__LISTEN", "0.0.0.0:8443"),
        (
            "STRONGROOM_SERVER__PUBLIC_URL",
            "http://sr.bank.example:8443",
        ),
    ]);

    assert!(stderr.contains("server.public_url: "), "{stderr}");
    assert!(stderr.contains("uses http://"), "{stderr}");
}

#[test]
fn data_dir_under_proc_is_rejected() {
    let stderr = check_config_rejects(&[("STRONGROOM_DATA_DIR", "/proc/strongroom")]);

    assert!(
        stderr.contains("data_dir: \"/proc/strongroom\" is under /proc"),
        "{stderr}"
    );
}

#[tokio::test]
async fn portal_listens_on_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "STRONGROOM_DATA_DIR".to_owned(),
            dir.path().display().to_string(),
        ),
        (
            "STRONGROOM_SERVER__LISTEN".to_owned(),
            "localhost:0".to_owned(),
        ),
    ];
    let config = broker::config::load(None, env).expect("localhost:0 is a valid address");

    let broker = server::start(config).await.expect("broker starts");

    assert!(
        broker.local_addr.ip().is_loopback(),
        "{}",
        broker.local_addr
    );
    assert_ne!(broker.local_addr.port(), 0);
    let health = reqwest::get(format!("{}/healthz", broker.base_url()))
        .await
        .unwrap();
    assert!(health.status().is_success(), "{}", health.status());
    broker.shutdown().await;
}
