use std::io::Write;

use super::*;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let env = env
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()));
    load(Some(file.path()), env)
}

fn keys(error: &ConfigError) -> Vec<&str> {
    error
        .problems
        .iter()
        .map(|problem| problem.key.as_str())
        .collect()
}

#[test]
fn zero_configuration_uses_embedded_defaults() {
    let config = load(None, Vec::new()).unwrap();

    assert_eq!(config.data_dir, PathBuf::from("data"));
    assert_eq!(
        config.server.listen.addresses,
        vec!["127.0.0.1:8080".parse().unwrap()]
    );
    assert_eq!(config.server.tls, TlsMode::PlainLoopback);
    assert!(
        matches!(config.database.target, DatabaseTarget::Sqlite { ref path } if path == Path::new("data/strongroom.db"))
    );
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let text = r#"
        data_dir = 5
        colour = "blue"

        [server]
        listen = "not an address"
        lisen = "typo"
        trusted_proxies = ["10.0.0.0/8", "nonsense"]

        [database]
        max_connections = "many"

        [log]
        format = "xml"

        [shutdown]
        grace_seconds = 0
    "#;
    let error = load_text(text, &[]).unwrap_err();
    let keys = keys(&error);

    for expected in [
        "data_dir",
        "colour",
        "server.listen",
        "server.lisen",
        "server.trusted_proxies",
        "database.max_connections",
        "log.format",
        "shutdown.grace_seconds",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
}

#[test]
fn unknown_nested_key_is_named_with_full_path() {
    let error = load_text("[database]\npool = 3\n", &[]).unwrap_err();

    assert_eq!(keys(&error), vec!["database.pool"]);
    assert!(error.problems[0].message.contains("unknown key"));
}

#[test]
fn wrong_type_names_found_value() {
    let error = load_text("[shutdown]\ngrace_seconds = \"ten\"\n", &[]).unwrap_err();

    assert_eq!(keys(&error), vec!["shutdown.grace_seconds"]);
    assert!(
        error.problems[0].message.contains("the string \"ten\""),
        "{}",
        error.problems[0].message
    );
}

#[test]
fn malformed_file_reports_line() {
    let error = load_text("[server\nlisten = 1\n", &[]).unwrap_err();

    assert_eq!(keys(&error), vec!["(file)"]);
    assert!(
        error.problems[0].message.contains("line 1"),
        "{}",
        error.problems[0].message
    );
}

#[test]
fn missing_file_is_reported() {
    let error = load(Some(Path::new("/nonexistent/strongroom.toml")), Vec::new()).unwrap_err();

    assert!(error.problems[0].message.contains("cannot read"));
}

#[test]
fn env_override_sets_nested_key() {
    let config = load_text(
        "",
        &[
            ("STRONGROOM_SERVER__LISTEN", "127.0.0.2:9000"),
            ("STRONGROOM_SHUTDOWN__GRACE_SECONDS", "3"),
        ],
    )
    .unwrap();

    assert_eq!(
        config.server.listen.addresses,
        vec!["127.0.0.2:9000".parse().unwrap()]
    );
    assert_eq!(config.shutdown.grace, Duration::from_secs(3));
}

#[test]
fn env_override_wins_over_file() {
    let config = load_text(
        "[server]\nlisten = \"127.0.0.1:1000\"\n",
        &[("STRONGROOM_SERVER__LISTEN", "127.0.0.1:2000")],
    )
    .unwrap();

    assert_eq!(config.server.listen.addresses[0].port(), 2000);
}

#[test]
fn unknown_env_override_is_reported() {
    let error = load_text("", &[("STRONGROOM_SERVER__LISTN", "x")]).unwrap_err();

    assert_eq!(keys(&error), vec!["server.listn"]);
}

/// Loads with no configuration file and exactly the given variables.
fn load_env(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()));
    load(None, env)
}

#[test]
fn env_problem_names_variable_and_value() {
    let error = load_env(&[("STRONGROOM_LAUNCHER__SUBNET_RANGE", "10.0.0.0/33")]).unwrap_err();

    let message = error.to_string();
    assert_eq!(keys(&error), vec!["launcher.subnet_range"]);
    assert!(
        message.contains("STRONGROOM_LAUNCHER__SUBNET_RANGE=10.0.0.0/33"),
        "{message}"
    );
    assert!(
        message.contains("unset STRONGROOM_LAUNCHER__SUBNET_RANGE"),
        "{message}"
    );
    assert!(
        message.contains("built-in defaults with STRONGROOM_* environment variables"),
        "{message}"
    );
}

#[test]
fn env_problem_inside_set_table_is_named() {
    let error = load_text(
        "",
        &[(
            "STRONGROOM_EGRESS",
            "{ hosts = { \"a.test\" = [\"not-an-ip\"] } }",
        )],
    )
    .unwrap_err();

    let message = error.to_string();
    assert!(
        message.contains("set by the environment variable STRONGROOM_EGRESS="),
        "{message}"
    );
}

#[test]
fn env_secret_problem_hides_value() {
    let error = load_env(&[("STRONGROOM_DATABASE__PASSWORD", "hunter2-marker")]).unwrap_err();

    let message = error.to_string();
    assert!(message.contains("database.password: "), "{message}");
    assert!(
        message.contains("STRONGROOM_DATABASE__PASSWORD (value not shown)"),
        "{message}"
    );
    assert!(!message.contains("hunter2-marker"), "{message}");
}

#[test]
fn env_table_with_secret_hides_value() {
    let error =
        load_env(&[("STRONGROOM_DATABASE", "{ password = \"hunter2-marker\" }")]).unwrap_err();

    let message = error.to_string();
    assert!(
        message.contains("STRONGROOM_DATABASE (value not shown)"),
        "{message}"
    );
    assert!(!message.contains("hunter2-marker"), "{message}");
}

#[test]
fn env_url_problem_hides_password() {
    let error = load_env(&[(
        "STRONGROOM_DATABASE__URL",
        "postgres://app:hunter2-marker@db/strongroom",
    )])
    .unwrap_err();

    let message = error.to_string();
    assert!(
        message.contains("STRONGROOM_DATABASE__URL=postgres://app:***@db/strongroom"),
        "{message}"
    );
    assert!(!message.contains("hunter2-marker"), "{message}");
}

#[test]
fn file_problem_names_no_variable() {
    let error = load_text("[launcher]\nsubnet_range = \"10.0.0.0/33\"\n", &[]).unwrap_err();

    let message = error.to_string();
    assert!(!message.contains("environment variable"), "{message}");
}

#[test]
fn config_env_variable_is_not_a_key() {
    let config = load_text(
        "",
        &[
            ("STRONGROOM_CONFIG", "/somewhere"),
            ("STRONGROOM_LOG", "debug"),
            ("STRONGROOM_TEST_POSTGRES_URL", "postgres://x"),
        ],
    );

    assert!(config.is_ok());
}

#[test]
fn inline_database_password_is_rejected_without_echo() {
    let error = load_text(
        "[database]\nurl = \"postgres://app:hunter2@db/strongroom\"\n",
        &[],
    )
    .unwrap_err();

    assert_eq!(keys(&error), vec!["database.url"]);
    assert!(!error.to_string().contains("hunter2"));
}

#[test]
fn inline_secret_value_is_rejected_without_echo() {
    let error = load_text(
        "[database]\nurl = \"postgres://app@db/strongroom\"\npassword = \"hunter2\"\n",
        &[],
    )
    .unwrap_err();

    assert_eq!(keys(&error), vec!["database.password"]);
    assert!(!error.to_string().contains("hunter2"));
}

#[test]
fn secret_reference_is_accepted() {
    let config = load_text(
        "[database]\nurl = \"postgres://app@db/strongroom\"\npassword = \"env:PGPASSWORD\"\n",
        &[],
    )
    .unwrap();

    match config.database.target {
        DatabaseTarget::Postgres { password, .. } => {
            assert_eq!(password, Some(SecretRef::Env("PGPASSWORD".into())))
        }
        other => panic!("unexpected target {other:?}"),
    }
}

#[test]
fn non_loopback_listener_without_certificates_generates_tls() {
    let config = load_text("[server]\nlisten = \"0.0.0.0:8443\"\n", &[]).unwrap();

    assert_eq!(config.server.tls, TlsMode::Generated);
}

#[test]
fn half_tls_configuration_is_rejected() {
    let error = load_text("[server]\ntls_cert = \"/etc/cert.pem\"\n", &[]).unwrap_err();

    assert_eq!(keys(&error), vec!["server.tls_key"]);
}

#[test]
fn unsupported_database_scheme_is_rejected() {
    let error = load_text("[database]\nurl = \"mysql://db/x\"\n", &[]).unwrap_err();

    assert!(error.problems[0].message.contains("\"mysql\""));
}

#[test]
fn section_of_wrong_kind_is_reported() {
    let error = load_text("server = 5\n", &[]).unwrap_err();

    assert!(!error.problems.is_empty());
}

#[test]
fn every_bad_launcher_key_is_named() {
    let text = "[launcher]\nmax_sessions = \"many\"\ndocker_timeout_secs = \"x\"\nbogus = 1\n";
    let error = load_text(text, &[]).unwrap_err();
    let keys = keys(&error);

    for expected in [
        "launcher.max_sessions",
        "launcher.docker_timeout_secs",
        "launcher.bogus",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
}

#[test]
fn log_level_outside_levels_is_rejected() {
    for bad in ["verbose", "warning", "broker=loud", ""] {
        let error = load_text(&format!("[log]\nlevel = {bad:?}\n"), &[]).unwrap_err();
        assert_eq!(keys(&error), vec!["log.level"], "{bad}");
        let message = &error.problems[0].message;
        assert!(
            message.contains("trace, debug, info, warn, error, off"),
            "{message}"
        );
    }
    let error = load_text("[log]\nlevel = \"verbose\"\n", &[]).unwrap_err();
    let message = &error.problems[0].message;
    assert!(message.contains("invalid level \"verbose\";"), "{message}");
    let error = load_text("[log]\nlevel = \"broker=loud,info\"\n", &[]).unwrap_err();
    let message = &error.problems[0].message;
    assert!(
        message.contains("invalid level \"loud\" in \"broker=loud,info\""),
        "{message}"
    );

    for good in [
        "info",
        "WARN",
        "broker=debug,info",
        "broker::stream=trace, warn",
    ] {
        let config = load_text(&format!("[log]\nlevel = {good:?}\n"), &[]);
        assert!(config.is_ok(), "{good}: {config:?}");
    }
}

#[test]
fn invalid_subnet_range_names_key_value_and_form() {
    let error = load_text("[launcher]\nsubnet_range = \"10.0.0.0/33\"\n", &[]).unwrap_err();

    assert_eq!(keys(&error), vec!["launcher.subnet_range"]);
    let message = &error.problems[0].message;
    assert!(message.contains("\"10.0.0.0/33\""), "{message}");
    assert!(message.contains("CIDR notation"), "{message}");
    assert!(message.contains("\"172.21.0.0/16\""), "{message}");
}

#[test]
fn localhost_listen_address_is_accepted() {
    let config = load_text("[server]\nlisten = \"localhost:8080\"\n", &[]).unwrap();

    assert_eq!(config.server.listen.to_string(), "localhost:8080");
    assert!(!config.server.listen.addresses.is_empty());
    assert!(config.server.listen.is_loopback());
    assert_eq!(config.server.tls, TlsMode::PlainLoopback);
}

#[test]
fn http_public_url_with_https_listener_is_rejected() {
    for (server, reason) in [
        (
            "listen = \"0.0.0.0:8443\"",
            "server.listen \"0.0.0.0:8443\" is not a loopback address",
        ),
        (
            "listen = \"0.0.0.0:8443\"\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"",
            "server.tls_cert and server.tls_key are set",
        ),
        (
            "listen = \"127.0.0.1:8443\"\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"",
            "server.tls_cert and server.tls_key are set",
        ),
    ] {
        let text = format!("[server]\n{server}\npublic_url = \"http://sr.bank.example:8443/\"\n");
        let error = load_text(&text, &[]).unwrap_err();

        assert_eq!(keys(&error), vec!["server.public_url"], "{server}");
        let message = &error.problems[0].message;
        assert!(
            message.contains("\"http://sr.bank.example:8443/\""),
            "{message}"
        );
        assert!(message.contains(reason), "{message}");
        assert!(
            message.contains("\"https://sr.bank.example:8443/\""),
            "{message}"
        );
    }
}

#[test]
fn public_url_matching_listener_is_accepted() {
    // Plain HTTP on loopback, opened directly.
    let config = load_text("[server]\npublic_url = \"http://127.0.0.1:8080\"\n", &[]).unwrap();
    assert_eq!(
        config.server.public_url.unwrap().as_str(),
        "http://127.0.0.1:8080/"
    );

    // A TLS-terminating reverse proxy in front of a plain loopback listener.
    let config = load_text(
        "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"https://sr.bank.example\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.server.tls, TlsMode::PlainLoopback);

    let config = load_text(
        "[server]\nlisten = \"0.0.0.0:8443\"\npublic_url = \"https://sr.bank.example:8443\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.server.tls, TlsMode::Generated);
}

#[test]
fn invalid_public_url_is_named() {
    for (bad, expected) in [
        ("https://", "invalid URL \"https://\""),
        (
            "strongroom.bank.example",
            "invalid URL \"strongroom.bank.example\"",
        ),
        ("ftp://sr.bank.example", "unsupported scheme \"ftp\""),
        (
            "https://admin:hunter2@sr.bank.example",
            "contains credentials",
        ),
    ] {
        let error = load_text(&format!("[server]\npublic_url = {bad:?}\n"), &[]).unwrap_err();

        assert_eq!(keys(&error), vec!["server.public_url"], "{bad}");
        let message = &error.problems[0].message;
        assert!(message.contains(expected), "{bad}: {message}");
        assert!(
            message.contains("https://strongroom.bank.example"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn data_dir_in_kernel_file_system_is_rejected() {
    for dir in [
        "/proc/strongroom",
        "/sys",
        "/dev/shm/strongroom",
        "/var/../proc/x",
    ] {
        let error = load_text(&format!("data_dir = {dir:?}\n"), &[]).unwrap_err();

        assert_eq!(keys(&error), vec!["data_dir"], "{dir}");
        let message = &error.problems[0].message;
        assert!(message.contains(&format!("{dir:?}")), "{message}");
        assert!(message.contains("\"/var/lib/strongroom\""), "{message}");
    }

    // A symbolic link that leads there is followed.
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("data");
    std::os::unix::fs::symlink("/proc/self", &link).unwrap();
    let error = load_text(&format!("data_dir = {:?}\n", link.join("x")), &[]).unwrap_err();
    let message = &error.problems[0].message;
    assert!(
        message.contains("is under /proc (it resolves to /proc/"),
        "{message}"
    );

    let config = load_text("data_dir = \"/var/lib/strongroom\"\n", &[]).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/strongroom"));
}

#[test]
fn log_env_variable_is_validated() {
    let error = load_text("", &[("STRONGROOM_LOG", "verbose")]).unwrap_err();

    assert_eq!(keys(&error), vec!["STRONGROOM_LOG"]);
    let message = &error.problems[0].message;
    assert!(message.contains("\"verbose\""), "{message}");
    assert!(message.contains("STRONGROOM_LOG=debug"), "{message}");

    let config = load_text(
        "[log]\nlevel = \"warn\"\n",
        &[("STRONGROOM_LOG", "broker=debug,info")],
    )
    .unwrap();
    assert_eq!(config.log.level, "broker=debug,info");

    let config = load_text("[log]\nlevel = \"warn\"\n", &[("STRONGROOM_LOG", "")]).unwrap();
    assert_eq!(config.log.level, "warn");
}

#[test]
fn launcher_image_source_is_recorded() {
    let from_env =
        load_env(&[("STRONGROOM_LAUNCHER__IMAGE", "\"strongroom/workspace:x\"")]).unwrap();
    let from_file = load_text("[launcher]\nimage = \"strongroom/workspace:x\"\n", &[]).unwrap();
    let unset = load_env(&[]).unwrap();

    assert_eq!(
        from_env.launcher.image_source.as_deref(),
        Some("the environment variable STRONGROOM_LAUNCHER__IMAGE")
    );
    let source = from_file.launcher.image_source.unwrap();
    assert!(source.starts_with("the configuration file /"), "{source}");
    assert_eq!(unset.launcher.image_source, None);
}
