//! Configuration checks as an operator meets them: `strongroom check-config` and the
//! start of `strongroom launcher` and of the portal.

mod terminal_support;

use std::path::Path;
use std::process::{Command, Output};

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

#[test]
fn reading_commands_create_no_database() {
    let uuid = "6f1c2a7e-3b1d-4c55-9a0e-0c8f3e1d2b4a";
    for args in [
        &["user", "list"][..],
        &["site", "list"],
        &["site", "pending"],
        &["secrets", "list"],
        &["quota", "show", "alice"],
        &["audit", "verify"],
        &["recording", "verify", uuid],
        &["keys", "rotate"],
    ] {
        let dir = tempfile::tempdir().unwrap();

        let output = strongroom(dir.path(), args, &[]);

        let stderr = stderr(&output);
        let expected = format!(
            "no database at {}",
            dir.path().join("data/strongroom.db").display()
        );
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(stderr.contains("--config FILE"), "{args:?}: {stderr}");
        assert!(stderr.contains("STRONGROOM_DATA_DIR"), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} created the data directory"
        );
    }
}

#[test]
fn user_list_outside_checkout_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let output = strongroom_command()
        .args(["user", "list"])
        .current_dir(dir.path())
        .output()
        .unwrap();

    let stderr = stderr(&output);
    let expected = format!(
        "no database at {}",
        dir.path().join("data/strongroom.db").display()
    );
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!dir.path().join("data").exists());
}

#[test]
fn setup_commands_create_database_and_say_so() {
    for args in [
        &["migrate"][..],
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--generate-password",
        ],
    ] {
        let dir = tempfile::tempdir().unwrap();

        let output = strongroom(dir.path(), args, &[]);

        let stderr = stderr(&output);
        let expected = format!(
            "created a new SQLite database at {}",
            dir.path().join("data/strongroom.db").display()
        );
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(dir.path().join("data/strongroom.db").is_file(), "{args:?}");

        let again = strongroom(dir.path(), &["user", "list"], &[]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "{args:?}: {}",
            self::stderr(&again)
        );
        assert!(!self::stderr(&again).contains("created"), "{args:?}");
    }
}

#[test]
fn check_config_prints_portal_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("listen.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[server]\nlisten = \"127.0.0.1:9091\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let from_file = strongroom_command()
        .arg("check-config")
        .env("STRONGROOM_CONFIG", &config)
        .output()
        .unwrap();
    let from_env = strongroom(
        dir.path(),
        &["check-config"],
        &[("STRONGROOM_SERVER__LISTEN", "0.0.0.0:9443")],
    );

    let stdout = String::from_utf8_lossy(&from_file.stdout);
    assert_eq!(from_file.status.code(), Some(0), "{}", stderr(&from_file));
    assert!(
        stdout.contains("\nportal: http://127.0.0.1:9091\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\ntls: plain\n"), "{stdout}");
    let stdout = String::from_utf8_lossy(&from_env.stdout);
    assert_eq!(from_env.status.code(), Some(0), "{}", stderr(&from_env));
    assert!(
        stdout.contains("\nportal: https://0.0.0.0:9443\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\ntls: generated\n"), "{stdout}");
}

/// Reads the log of a running `strongroom launcher` until `expected` appears, then
/// stops the launcher with SIGTERM and returns the log.
fn launcher_log_until(dir: &Path, env: &[(&str, &str)], expected: &str) -> String {
    let config = dir.join("strongroom.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", dir.join("data"))).unwrap();
    let mut child = strongroom_command()
        .arg("--config")
        .arg(&config)
        .arg("launcher")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start strongroom launcher");

    // The log arrives on standard error, read on a thread so that the wait is bounded.
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut log = String::new();
    while !log.contains(expected) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
    log
}

#[tokio::test]
async fn launcher_start_names_missing_image() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(
        "strongroom/workspace:missing-{}",
        uuid::Uuid::new_v4().simple()
    );
    let docker = imagebuild::connect_docker().unwrap();
    let newest = imagebuild::find_image(&docker, &imagebuild::Recipe::workspace())
        .await
        .unwrap()
        .map(|image| image.reference);

    let log = launcher_log_until(
        dir.path(),
        &[
            ("STRONGROOM_LAUNCHER__IMAGE", &tag),
            ("STRONGROOM_LOG", "info"),
            ("STRONGROOM_LOG__FORMAT", "human"),
        ],
        "does not exist in the Docker engine",
    );

    let line = log
        .lines()
        .find(|line| line.contains("does not exist in the Docker engine"))
        .unwrap_or_else(|| panic!("no missing-image error in the launcher log:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&tag), "{line}");
    assert!(
        line.contains("set by the environment variable STRONGROOM_LAUNCHER__IMAGE"),
        "{line}"
    );
    assert!(line.contains("remove launcher.image"), "{line}");
    let tag_command = match &newest {
        Some(newest) => format!("docker tag {newest} {tag}"),
        None => "docker tag $(docker images".to_owned(),
    };
    assert!(line.contains(&tag_command), "{line}");
    let inspected = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(!inspected.status.success(), "{tag} appeared in the engine");
}
