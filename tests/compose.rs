//! The production compose file: `docker-compose config` (Debian's docker-compose 1.29)
//! accepts it with every profile, and each service keeps the hardening the deployment
//! guide promises.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml::Value;

const SERVICE_SUBNET: &str = "172.20.0.0/16";
const SESSION_RANGE_PREFIX: &str = "172.21.";

/// Services that run as root, with the one capability each needs.
const ROOT_SERVICES: [(&str, &str); 2] =
    [("host-setup", "NET_ADMIN"), ("traefik", "NET_BIND_SERVICE")];
/// The only service allowed to be privileged, and so exempt from the other checks.
const PRIVILEGED_SERVICE: &str = "tailscale";
/// One-shot services, which need no health check.
const ONE_SHOT_SERVICES: [&str; 1] = ["host-setup"];

fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/docker-compose.yml")
}

/// Runs `docker-compose config` with every profile and only the given variables, so
/// that neither the caller's environment nor a `compose/.env` changes the result.
fn compose_config(variables: &[(&str, &str)]) -> Output {
    let env_file = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new("docker-compose");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--env-file")
        .arg(env_file.path())
        .arg("-f")
        .arg(compose_file());
    for profile in ["authentik", "infisical", "tailscale"] {
        command.args(["--profile", profile]);
    }
    command.arg("config").envs(variables.iter().copied());
    command
        .output()
        .expect("docker-compose runs; install Debian's docker-compose package")
}

fn valid_config() -> Value {
    let output = compose_config(&[
        ("STRONGROOM_BROKER_TAG", "0123456789abcdef0123"),
        ("DOCKER_GID", "998"),
        ("STRONGROOM_HOST", "strongroom.bank.example"),
    ]);
    assert!(
        output.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::from_slice(&output.stdout).expect("docker-compose config prints YAML")
}

fn services(config: &Value) -> Vec<(String, Value)> {
    config["services"]
        .as_mapping()
        .expect("the file has services")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn mounts_docker_socket(service: &Value) -> bool {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|volume| {
            let source = volume["source"].as_str().or(volume.as_str()).unwrap_or("");
            source.contains("docker.sock")
        })
}

#[test]
fn compose_file_validates_with_every_profile() {
    let config = valid_config();
    let names: BTreeSet<String> = services(&config)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for expected in [
        "host-setup",
        "launcher",
        "broker",
        "postgres",
        "traefik",
        "authentik-server",
        "infisical",
        "tailscale",
    ] {
        assert!(
            names.contains(expected),
            "service {expected} missing: {names:?}"
        );
    }
}

#[test]
fn every_service_is_hardened() {
    let config = valid_config();
    for (name, service) in services(&config) {
        if name == PRIVILEGED_SERVICE {
            assert_eq!(service["privileged"].as_bool(), Some(true), "{name}");
            continue;
        }
        assert_ne!(
            service["privileged"].as_bool(),
            Some(true),
            "{name} is privileged"
        );
        assert_eq!(
            service["read_only"].as_bool(),
            Some(true),
            "{name} has a writable root"
        );
        assert_eq!(
            strings(&service["cap_drop"]),
            vec!["ALL"],
            "{name} keeps capabilities"
        );
        assert!(
            strings(&service["security_opt"]).contains(&"no-new-privileges:true".to_owned()),
            "{name} lacks no-new-privileges"
        );
        assert!(
            service["cpus"].as_f64().is_some(),
            "{name} has no cpus limit"
        );
        assert!(
            service["mem_limit"].as_str().is_some(),
            "{name} has no mem_limit"
        );
        assert!(
            service["pids_limit"].as_i64().is_some(),
            "{name} has no pids_limit"
        );
        if !ONE_SHOT_SERVICES.contains(&name.as_str()) {
            assert!(
                service["healthcheck"]["test"].is_sequence(),
                "{name} has no health check"
            );
        }

        let root = ROOT_SERVICES.iter().find(|(service, _)| *service == name);
        match root {
            Some((_, capability)) => {
                assert_eq!(
                    strings(&service["cap_add"]),
                    vec![*capability],
                    "{name} capabilities"
                );
            }
            None => {
                let user = service["user"].as_str().unwrap_or("");
                assert!(
                    !user.is_empty()
                        && !user.starts_with("0:")
                        && user != "0"
                        && !user.starts_with("root"),
                    "{name} runs as root (user {user:?})"
                );
                assert!(service["cap_add"].is_null(), "{name} adds capabilities");
            }
        }

        assert_eq!(
            mounts_docker_socket(&service),
            name == "launcher",
            "{name}: only the launcher may mount the Docker socket"
        );
    }
}

#[test]
fn broker_and_networks_follow_the_design() {
    let config = valid_config();
    let all = services(&config);
    let service = |wanted: &str| {
        all.iter()
            .find(|(name, _)| name == wanted)
            .unwrap()
            .1
            .clone()
    };

    assert_eq!(service("broker")["network_mode"].as_str(), Some("host"));
    assert_eq!(service("host-setup")["network_mode"].as_str(), Some("host"));
    assert_eq!(service("launcher")["network_mode"].as_str(), Some("none"));
    assert_eq!(
        service("host-setup")["restart"].as_str(),
        Some("no"),
        "host-setup is one-shot"
    );

    let subnets: Vec<String> = config["networks"]
        .as_mapping()
        .unwrap()
        .values()
        .flat_map(|network| {
            network["ipam"]["config"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|entry| entry["subnet"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(subnets, vec![SERVICE_SUBNET.to_owned()]);
    assert!(
        subnets
            .iter()
            .all(|subnet| !subnet.starts_with(SESSION_RANGE_PREFIX)),
        "the session range must stay the broker's: {subnets:?}"
    );
}

#[test]
fn missing_variable_is_named() {
    let output = compose_config(&[
        ("STRONGROOM_BROKER_TAG", "0123456789abcdef0123"),
        ("STRONGROOM_HOST", "strongroom.bank.example"),
    ]);
    assert!(!output.status.success(), "config passed without DOCKER_GID");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DOCKER_GID"), "{stderr}");
}
