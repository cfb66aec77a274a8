//! The launcher's configuration: the raw serde form with defaults, and its validation.
//!
//! Every value that shapes a workspace container (image, seccomp profile, resource
//! maximums, tmpfs sizes) comes from here, never from a request.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::protocol::SiteLimits;

/// Configuration of one launcher process. Deserialises from the `[launcher]` table of
/// the `strongroom` configuration file; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// Path of the Unix socket the broker connects to.
    pub socket_path: PathBuf,
    /// Group that owns the socket (mode 0660), normally the group the broker runs as.
    /// `None` keeps the launcher process's own group.
    pub socket_group: Option<String>,
    /// Path of the Docker engine's Unix socket.
    pub docker_socket: PathBuf,
    /// Docker Engine API version sent as the `/vX.Y` path prefix of every request.
    pub docker_api_version: String,
    /// Timeout of each Docker API request, in seconds.
    pub docker_timeout_secs: u64,
    /// Persistent id of the broker instance whose objects this launcher owns. Every
    /// container and network carries it as a label, and reconciliation touches only
    /// objects that carry it.
    pub instance_id: String,
    /// Reference of the workspace image, such as `strongroom/workspace:TAG`. It is never
    /// pulled. `strongroom image build` tags its images by content, so a reference set
    /// here is one of those tags, or a name given to a built image with `docker tag`.
    /// Unset, the broker uses the newest image `strongroom image build` made.
    pub image: String,
    /// Path of the seccomp profile (JSON) applied to every workspace container.
    pub seccomp_profile: PathBuf,
    /// Range that per-session subnets are allocated from, in CIDR notation without
    /// host bits, such as `172.21.0.0/16`.
    #[serde(deserialize_with = "deserialize_ipv4_range")]
    pub subnet_range: Ipv4Net,
    /// Prefix length of each session's subnet: 28 or 29.
    pub subnet_prefix_len: u8,
    /// Start of every session bridge's host interface name, which the host firewall
    /// matches: 1 to 7 lowercase letters, digits or `-`. The rest of the name is taken
    /// from the session id.
    pub bridge_prefix: String,
    /// Maximum number of concurrent sessions on this host.
    pub max_sessions: usize,
    /// Upper bounds for the per-site limits a launch request may carry.
    pub max_limits: SiteLimits,
    /// Size of the tmpfs mounted at `/tmp`, in bytes.
    pub tmp_size_bytes: u64,
    /// Size of the tmpfs mounted at `/home/strongroom`, in bytes.
    pub home_size_bytes: u64,
    /// Size of the tmpfs mounted at `/downloads` in workspaces whose site delivers
    /// downloads, in bytes. A request's `max_file_bytes` may not exceed it.
    pub downloads_size_bytes: u64,
    /// Grace period between SIGTERM and SIGKILL when a workspace is stopped, in seconds.
    pub stop_timeout_secs: u32,
    /// Interval of the sweeper that retries failed removals and looks for dead
    /// workspaces, in seconds.
    pub sweep_interval_secs: u64,
    /// Maximum size of one request frame on the launcher socket, in bytes.
    pub max_frame_bytes: u32,
    /// Time a connected client has to send a complete request frame, in seconds.
    pub request_read_timeout_secs: u64,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from("/run/strongroom/launcher.sock"),
            socket_group: None,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            docker_api_version: "1.41".to_owned(),
            docker_timeout_secs: 60,
            instance_id: String::new(),
            image: "strongroom/workspace:latest".to_owned(),
            seccomp_profile: PathBuf::from("/etc/strongroom/seccomp/workspace.json"),
            subnet_range: "172.21.0.0/16".parse().expect("valid default subnet range"),
            subnet_prefix_len: 28,
            bridge_prefix: "srs-".to_owned(),
            max_sessions: 8,
            max_limits: SiteLimits {
                memory_bytes: 4 << 30,
                nano_cpus: 2_000_000_000,
                pids: 1024,
                shm_bytes: 2 << 30,
            },
            tmp_size_bytes: 256 << 20,
            home_size_bytes: 512 << 20,
            downloads_size_bytes: 256 << 20,
            stop_timeout_secs: 5,
            sweep_interval_secs: 30,
            max_frame_bytes: 64 * 1024,
            request_read_timeout_secs: 10,
        }
    }
}

/// An invalid configuration value, with the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid launcher configuration: {key}: {problem}")]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: String,
}

impl LauncherConfig {
    /// Checks every value and returns all problems found, not only the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut problems = Vec::new();
        let mut reject = |key, problem: String| problems.push(ConfigError { key, problem });

        if !is_valid_instance_id(&self.instance_id) {
            reject(
                "instance_id",
                format!(
                    "`{}` is not valid: set the broker's persistent instance id \
                     (1 to 64 characters from A-Z a-z 0-9 . _ -)",
                    self.instance_id
                ),
            );
        }
        if !is_valid_api_version(&self.docker_api_version) {
            reject(
                "docker_api_version",
                format!(
                    "`{}` is not of the form MAJOR.MINOR, e.g. 1.41",
                    self.docker_api_version
                ),
            );
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            reject(
                "image",
                format!("`{}` is not a valid image tag", self.image),
            );
        }
        if !matches!(self.subnet_prefix_len, 28 | 29) {
            reject(
                "subnet_prefix_len",
                format!("{} is not supported: use 28 or 29", self.subnet_prefix_len),
            );
        } else if self.subnet_range.prefix_len() > self.subnet_prefix_len {
            reject(
                "subnet_range",
                format!(
                    "{} is smaller than one /{} session subnet",
                    self.subnet_range, self.subnet_prefix_len
                ),
            );
        }
        if !is_valid_bridge_prefix(&self.bridge_prefix) {
            reject(
                "bridge_prefix",
                format!(
                    "`{}` is not valid: use 1 to {MAX_BRIDGE_PREFIX} lowercase letters, \
                     digits or `-`, e.g. srs-",
                    self.bridge_prefix
                ),
            );
        }
        if self.max_sessions == 0 {
            reject("max_sessions", "must be at least 1".to_owned());
        }
        if let Err(problem) = self.max_limits.check_sane() {
            reject("max_limits", problem);
        }
        if self.tmp_size_bytes < 1 << 20
            || self.home_size_bytes < 1 << 20
            || self.downloads_size_bytes < 1 << 20
        {
            reject(
                "tmp_size_bytes/home_size_bytes/downloads_size_bytes",
                "each tmpfs must be at least 1 MiB".to_owned(),
            );
        }
        if self.docker_timeout_secs == 0 || self.sweep_interval_secs == 0 {
            reject(
                "docker_timeout_secs/sweep_interval_secs",
                "must be at least 1 second".to_owned(),
            );
        }
        if self.max_frame_bytes < 1024 {
            reject(
                "max_frame_bytes",
                format!("{} is below 1024", self.max_frame_bytes),
            );
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    pub fn docker_timeout(&self) -> Duration {
        Duration::from_secs(self.docker_timeout_secs)
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs)
    }

    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_secs(self.request_read_timeout_secs)
    }
}

/// Reads an IPv4 range in CIDR notation. The error names the value and the expected
/// form, because the `ipnet` error alone names neither.
fn deserialize_ipv4_range<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Ipv4Net, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_ipv4_range(&text).map_err(serde::de::Error::custom)
}

/// Parses an IPv4 range such as `172.21.0.0/16`; a range with host bits set is
/// rejected, because its meaning is ambiguous.
pub fn parse_ipv4_range(text: &str) -> Result<Ipv4Net, String> {
    const EXPECTED: &str = "write an IPv4 range in CIDR notation, such as \"172.21.0.0/16\"";
    let range: Ipv4Net = text
        .parse()
        .map_err(|_| format!("invalid IPv4 range {text:?}; {EXPECTED}"))?;
    if range != range.trunc() {
        return Err(format!(
            "{text:?} has host bits set; write the range as \"{}\"",
            range.trunc()
        ));
    }
    Ok(range)
}

/// Maximum bridge prefix length, which leaves at least 8 characters of the session id in the
/// 15-character interface name.
pub const MAX_BRIDGE_PREFIX: usize = 7;

fn is_valid_bridge_prefix(prefix: &str) -> bool {
    (1..=MAX_BRIDGE_PREFIX).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Instance ids end up in Docker label filters and object names, so they are kept to a
/// conservative character set.
pub fn is_valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_valid_api_version(version: &str) -> bool {
    match version.split_once('.') {
        Some((major, minor)) => {
            !major.is_empty()
                && !minor.is_empty()
                && major.chars().all(|c| c.is_ascii_digit())
                && minor.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> LauncherConfig {
        LauncherConfig {
            instance_id: "broker-1".to_owned(),
            ..LauncherConfig::default()
        }
    }

    #[test]
    fn default_with_instance_id_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn empty_instance_id_is_rejected() {
        let problems = LauncherConfig::default().validate().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "instance_id");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let config = LauncherConfig {
            subnet_prefix_len: 24,
            max_sessions: 0,
            docker_api_version: "latest".to_owned(),
            ..valid()
        };
        let keys: Vec<_> = config
            .validate()
            .unwrap_err()
            .iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            ["docker_api_version", "subnet_prefix_len", "max_sessions"]
        );
    }

    #[test]
    fn range_smaller_than_one_subnet_is_rejected() {
        let config = LauncherConfig {
            subnet_range: "10.9.0.0/30".parse().unwrap(),
            ..valid()
        };
        let problems = config.validate().unwrap_err();
        assert_eq!(problems[0].key, "subnet_range");
    }

    #[test]
    fn bridge_prefix_is_checked() {
        for bad in ["", "SRS-", "srs_", "longpref"] {
            let config = LauncherConfig {
                bridge_prefix: bad.to_owned(),
                ..valid()
            };
            let problems = config.validate().unwrap_err();
            assert_eq!(problems.len(), 1, "{bad:?}");
            assert_eq!(problems[0].key, "bridge_prefix", "{bad:?}");
            assert!(problems[0].problem.contains(&format!("`{bad}`")), "{bad:?}");
        }
        for good in ["srs-", "sx0a-", "abcdefg"] {
            let config = LauncherConfig {
                bridge_prefix: good.to_owned(),
                ..valid()
            };
            assert_eq!(config.validate(), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn invalid_subnet_range_names_value() {
        let example = "such as \"172.21.0.0/16\"";
        for (bad, expected) in [
            (
                "10.0.0.0/33",
                ["invalid IPv4 range \"10.0.0.0/33\"", example],
            ),
            ("foo.bar/24", ["invalid IPv4 range \"foo.bar/24\"", example]),
            ("fd00::/64", ["invalid IPv4 range \"fd00::/64\"", example]),
            (
                "10.0.0.1/16",
                ["\"10.0.0.1/16\" has host bits set", "\"10.0.0.0/16\""],
            ),
        ] {
            let json = serde_json::json!({ "subnet_range": bad });
            let message = serde_json::from_value::<LauncherConfig>(json)
                .unwrap_err()
                .to_string();
            for part in expected {
                assert!(message.contains(part), "{bad}: {message}");
            }
        }
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = serde_json::from_str::<LauncherConfig>(r#"{"privileged": true}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `privileged`"),
            "{error}"
        );
    }
}
