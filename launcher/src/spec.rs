//! Validation of launch requests and construction of the network and workspace specs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use ipnet::Ipv4Net;
use uuid::Uuid;

use crate::config::LauncherConfig;
use crate::labels;
use crate::protocol::LaunchSession;
use crate::runtime::{NetworkSpec, WorkspaceSpec};

/// Numeric user and group of the workspace processes.
pub const WORKSPACE_USER: &str = "1000:1000";
/// Home directory of the workspace user (a tmpfs).
pub const WORKSPACE_HOME: &str = "/home/strongroom";
/// Directory Chromium saves downloads into, a tmpfs mounted only where the site
/// delivers downloads.
pub const WORKSPACE_DOWNLOADS: &str = "/downloads";

const MAX_NAME_LEN: usize = 256;
const MAX_URL_LEN: usize = 2048;
const MAX_ALLOWED_HOSTS: usize = 64;
const MAX_HOST_LEN: usize = 253;

/// Name of a session's network.
pub fn network_name(session_id: Uuid) -> String {
    format!("strongroom-s-{session_id}")
}

/// Name of a session's workspace container.
pub fn container_name(session_id: Uuid) -> String {
    format!("strongroom-w-{session_id}")
}

/// A launch request that failed validation, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid launch request: {}", problems.join("; "))]
pub struct InvalidLaunch {
    pub problems: Vec<String>,
}

/// Checks every field that ends up in a label or the environment.
pub fn validate_fields(request: &LaunchSession) -> Result<(), InvalidLaunch> {
    let mut problems = Vec::new();

    for (field, value) in [("owner", &request.owner), ("site", &request.site)] {
        if value.is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
            problems.push(format!(
                "{field} must be 1 to {MAX_NAME_LEN} bytes without control characters"
            ));
        }
    }
    if !is_valid_start_url(&request.start_url) {
        problems.push(format!(
            "start_url must be an http or https URL of at most {MAX_URL_LEN} bytes without spaces"
        ));
    }
    if request.egress_proxy_port == 0 {
        problems.push("egress_proxy_port must not be 0".to_owned());
    }
    let hash = &request.agent_secret_sha256;
    if hash.len() != 64
        || !hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        problems.push(
            "agent_secret_sha256 must be 64 lowercase hex digits (a SHA-256 hash, not the secret)"
                .to_owned(),
        );
    }
    if request.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
        problems.push(format!(
            "allowed_hosts has {} entries; the maximum is {MAX_ALLOWED_HOSTS}",
            request.allowed_hosts.len()
        ));
    }
    for host in &request.allowed_hosts {
        if !is_valid_host_pattern(host) {
            problems.push(format!(
                "allowed host `{}` is not a host name or *.host name",
                host.escape_debug()
            ));
        }
    }
    if let Err(ca_problems) = crate::ca_certs::policy_entries(&request.extra_ca_certs) {
        problems.extend(ca_problems);
    }
    if let Err(problem) = request.limits.check_sane() {
        problems.push(format!("limits: {problem}"));
    }
    if let Some(downloads) = request.downloads
        && downloads.max_file_bytes == 0
    {
        problems.push("downloads.max_file_bytes must be at least 1".to_owned());
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidLaunch { problems })
    }
}

fn is_valid_start_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    url.len() <= MAX_URL_LEN
        && rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Accepts `host.example`, `*.host.example`, lowercase letters, digits and hyphens.
pub fn is_valid_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Addresses of a session network: the gateway (the host) and the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionAddresses {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub workspace: Ipv4Addr,
}

impl SessionAddresses {
    pub fn for_subnet(subnet: Ipv4Net) -> Self {
        let base = u32::from(subnet.network());
        Self {
            subnet,
            gateway: Ipv4Addr::from(base + 1),
            workspace: Ipv4Addr::from(base + 2),
        }
    }
}

/// Labels shared by a session's container and network.
pub fn session_labels(
    config: &LauncherConfig,
    request: &LaunchSession,
    created: DateTime<Utc>,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::SESSION.to_owned(), request.session_id.to_string()),
        (labels::OWNER.to_owned(), request.owner.clone()),
        (labels::SITE.to_owned(), request.site.clone()),
        (
            labels::CREATED.to_owned(),
            created.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        (labels::INSTANCE.to_owned(), config.instance_id.clone()),
    ])
}

pub fn network_spec(
    config: &LauncherConfig,
    addresses: SessionAddresses,
    session_id: Uuid,
    mut labels: BTreeMap<String, String>,
) -> NetworkSpec {
    labels.insert(labels::ROLE.to_owned(), "network".to_owned());
    let name = network_name(session_id);
    NetworkSpec {
        bridge_name: bridge_name(&config.bridge_prefix, &name),
        name,
        subnet: addresses.subnet,
        gateway: addresses.gateway,
        labels,
    }
}

/// Linux limit on interface name length, without the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

/// Host interface name of a session network: `prefix` and as many of the last letters
/// and digits of the network name as fit in Linux's 15 characters.
pub fn bridge_name(prefix: &str, network_name: &str) -> String {
    let alphanumeric: Vec<char> = network_name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let room = MAX_INTERFACE_NAME.saturating_sub(prefix.len());
    let tail: String = alphanumeric[alphanumeric.len().saturating_sub(room)..]
        .iter()
        .collect();
    format!("{prefix}{tail}")
}

/// Builds the workspace spec. The environment carries only non-secret parameters.
pub fn workspace_spec(
    config: &LauncherConfig,
    seccomp_profile: Arc<str>,
    request: &LaunchSession,
    addresses: SessionAddresses,
    mut labels: BTreeMap<String, String>,
) -> WorkspaceSpec {
    labels.insert(labels::ROLE.to_owned(), "workspace".to_owned());
    let proxy = SocketAddrV4::new(addresses.gateway, request.egress_proxy_port);

    let mut env = vec![
        format!("STRONGROOM_SESSION_ID={}", request.session_id),
        format!("STRONGROOM_SITE={}", request.site),
        format!("STRONGROOM_START_URL={}", request.start_url),
        format!("STRONGROOM_PROXY=http://{proxy}"),
        format!(
            "STRONGROOM_ALLOWED_HOSTS={}",
            request.allowed_hosts.join(",")
        ),
        format!(
            "STRONGROOM_AGENT_SECRET_SHA256={}",
            request.agent_secret_sha256
        ),
        format!("HOME={WORKSPACE_HOME}"),
    ];
    // validate_fields rejects a request with a bad certificate before this runs.
    let ca_certificates =
        crate::ca_certs::policy_entries(&request.extra_ca_certs).unwrap_or_default();
    if !ca_certificates.is_empty() {
        env.push(format!(
            "STRONGROOM_CA_CERTIFICATES={}",
            ca_certificates.join(",")
        ));
    }

    let mut tmpfs = BTreeMap::from([
        ("/tmp".to_owned(), config.tmp_size_bytes),
        (WORKSPACE_HOME.to_owned(), config.home_size_bytes),
    ]);
    if let Some(downloads) = request.downloads {
        env.push(format!("STRONGROOM_DOWNLOAD_DIR={WORKSPACE_DOWNLOADS}"));
        env.push(format!(
            "STRONGROOM_DOWNLOAD_MAX_BYTES={}",
            downloads.max_file_bytes
        ));
        tmpfs.insert(WORKSPACE_DOWNLOADS.to_owned(), config.downloads_size_bytes);
    }

    WorkspaceSpec {
        name: container_name(request.session_id),
        image: config.image.clone(),
        labels,
        env,
        network: network_name(request.session_id),
        address: addresses.workspace,
        limits: request.limits,
        user: WORKSPACE_USER.to_owned(),
        seccomp_profile,
        tmpfs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SiteLimits;

    fn request() -> LaunchSession {
        LaunchSession {
            session_id: Uuid::new_v4(),
            owner: "alice".to_owned(),
            site: "bank".to_owned(),
            limits: SiteLimits::default(),
            start_url: "https://bank.example/login".to_owned(),
            egress_proxy_port: 3128,
            agent_secret_sha256: "ab".repeat(32),
            allowed_hosts: vec!["bank.example".to_owned(), "*.cdn.bank.example".to_owned()],
            extra_ca_certs: Vec::new(),
            downloads: None,
        }
    }

    #[test]
    fn valid_request_passes() {
        assert_eq!(validate_fields(&request()), Ok(()));
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = LaunchSession {
            owner: String::new(),
            start_url: "file:///etc/passwd".to_owned(),
            agent_secret_sha256: "not-a-hash".to_owned(),
            allowed_hosts: vec!["Bank.Example".to_owned(), "a b".to_owned()],
            egress_proxy_port: 0,
            ..request()
        };
        let problems = validate_fields(&bad).unwrap_err().problems;
        assert_eq!(problems.len(), 6, "{problems:?}");
    }

    #[test]
    fn extra_ca_certificates_reach_the_environment_as_base64_der() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIBXzCCAQWgAwIBAgIU\n-----END CERTIFICATE-----\n";
        let with_ca = LaunchSession {
            extra_ca_certs: vec![pem.to_owned(), pem.to_owned()],
            ..request()
        };
        assert_eq!(validate_fields(&with_ca), Ok(()));
        let addresses = SessionAddresses::for_subnet("172.21.0.32/28".parse().unwrap());
        let spec = workspace_spec(
            &LauncherConfig::default(),
            Arc::from("{}"),
            &with_ca,
            addresses,
            BTreeMap::new(),
        );
        assert!(
            spec.env.contains(
                &"STRONGROOM_CA_CERTIFICATES=MIIBXzCCAQWgAwIBAgIU,MIIBXzCCAQWgAwIBAgIU".to_owned()
            ),
            "{:?}",
            spec.env
        );

        let without_ca = workspace_spec(
            &LauncherConfig::default(),
            Arc::from("{}"),
            &request(),
            addresses,
            BTreeMap::new(),
        );
        assert!(
            !without_ca
                .env
                .iter()
                .any(|entry| entry.starts_with("STRONGROOM_CA_CERTIFICATES="))
        );

        let bad = LaunchSession {
            extra_ca_certs: vec!["not a certificate".to_owned()],
            ..request()
        };
        let problems = validate_fields(&bad).unwrap_err().problems;
        assert_eq!(problems, ["extra_ca_certs[0] contains no PEM certificate"]);
    }

    #[test]
    fn download_tmpfs_only_for_delivering_sites() {
        let addresses = SessionAddresses::for_subnet("172.21.0.32/28".parse().unwrap());
        let config = LauncherConfig::default();
        let blocked = workspace_spec(
            &config,
            Arc::from("{}"),
            &request(),
            addresses,
            BTreeMap::new(),
        );
        assert!(!blocked.tmpfs.contains_key(WORKSPACE_DOWNLOADS));
        assert!(
            !blocked
                .env
                .iter()
                .any(|entry| entry.starts_with("STRONGROOM_DOWNLOAD"))
        );

        let delivering = LaunchSession {
            downloads: Some(crate::protocol::DownloadDelivery {
                max_file_bytes: 1 << 20,
            }),
            ..request()
        };
        let spec = workspace_spec(
            &config,
            Arc::from("{}"),
            &delivering,
            addresses,
            BTreeMap::new(),
        );
        assert_eq!(
            spec.tmpfs.get(WORKSPACE_DOWNLOADS),
            Some(&config.downloads_size_bytes)
        );
        assert!(
            spec.env
                .contains(&"STRONGROOM_DOWNLOAD_DIR=/downloads".to_owned())
        );
        assert!(
            spec.env
                .contains(&"STRONGROOM_DOWNLOAD_MAX_BYTES=1048576".to_owned())
        );

        let zero = LaunchSession {
            downloads: Some(crate::protocol::DownloadDelivery { max_file_bytes: 0 }),
            ..request()
        };
        assert_eq!(
            validate_fields(&zero).unwrap_err().problems,
            ["downloads.max_file_bytes must be at least 1"]
        );
    }

    #[test]
    fn host_patterns() {
        assert!(is_valid_host_pattern("bank.example"));
        assert!(is_valid_host_pattern("*.bank.example"));
        assert!(!is_valid_host_pattern("*"));
        assert!(!is_valid_host_pattern("bank..example"));
        assert!(!is_valid_host_pattern("-bank.example"));
        assert!(!is_valid_host_pattern("bank.example,evil.example"));
    }

    #[test]
    fn addresses_are_first_two_hosts() {
        let addresses = SessionAddresses::for_subnet("172.21.0.32/28".parse().unwrap());
        assert_eq!(addresses.gateway, Ipv4Addr::new(172, 21, 0, 33));
        assert_eq!(addresses.workspace, Ipv4Addr::new(172, 21, 0, 34));
    }
}
