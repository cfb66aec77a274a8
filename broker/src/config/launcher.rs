//! `[launcher]`: the process that alone holds the Docker socket.
//!
//! The table holds `mode` plus every key of [`launcher::LauncherConfig`] (documented
//! there). In `embedded` mode, the default, `strongroom serve` starts
//! `strongroom launcher` as a child process with the same configuration file; in
//! `external` mode the launcher runs on its own (another user or container) and the
//! broker only connects to its socket.

use std::path::Path;

use launcher::LauncherConfig;
use serde::Deserialize;

use super::ConfigProblem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LauncherMode {
    Embedded,
    External,
}

#[derive(Debug, Clone)]
pub struct LauncherSettings {
    pub mode: LauncherMode,
    /// Its `instance_id` is empty until start-up fills in the broker's persistent id.
    pub config: LauncherConfig,
    /// Whether `seccomp_profile` was left at its default, in which case the profile
    /// shipped inside the binary is written to the data directory and used.
    pub builtin_seccomp: bool,
    /// Whether `image` was left at its default, in which case the launcher uses the
    /// newest image that `strongroom image build` made.
    pub image_from_build: bool,
    /// Source of `image` for messages: "the environment variable
    /// STRONGROOM_LAUNCHER__IMAGE" or "the configuration file PATH". `None` when unset.
    pub image_source: Option<String>,
}

/// The seccomp profile shipped with the workspace image recipe.
pub const BUILTIN_SECCOMP_PROFILE: &str =
    include_str!("../../../workspace-images/seccomp/workspace.json");

/// Validates `[launcher]`. `sessions_socket` is the socket the broker connects to,
/// which the launcher must listen on.
pub fn validate_launcher(
    raw: Option<&toml::Value>,
    data_dir: &Path,
    sessions_socket: Option<&Path>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<LauncherSettings> {
    let mut table = match raw {
        None => toml::Table::new(),
        Some(toml::Value::Table(table)) => table.clone(),
        Some(_) => {
            problems.push(ConfigProblem {
                key: "launcher".into(),
                message: "must be a table, written [launcher]".into(),
            });
            return None;
        }
    };

    let mode = match table.remove("mode") {
        None => LauncherMode::Embedded,
        Some(toml::Value::String(mode)) if mode == "embedded" => LauncherMode::Embedded,
        Some(toml::Value::String(mode)) if mode == "external" => LauncherMode::External,
        Some(other) => {
            problems.push(ConfigProblem {
                key: "launcher.mode".into(),
                message: format!("invalid value {other}; use \"embedded\" or \"external\""),
            });
            return None;
        }
    };

    let socket_set = table.contains_key("socket_path");
    let seccomp_set = table.contains_key("seccomp_profile");
    let image_set = table.contains_key("image");
    let mut config = match LauncherConfig::deserialize(toml::Value::Table(table.clone())) {
        Ok(config) => config,
        Err(_) => {
            // Serde stops at the first bad key; reading each key on its own names
            // every one of them.
            for (key, value) in table {
                let single = toml::Table::from_iter([(key.clone(), value)]);
                if let Err(error) = LauncherConfig::deserialize(toml::Value::Table(single)) {
                    let message = error
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    problems.push(ConfigProblem {
                        key: format!("launcher.{key}"),
                        message,
                    });
                }
            }
            return None;
        }
    };

    if let Some(sessions_socket) = sessions_socket {
        if !socket_set {
            config.socket_path = sessions_socket.to_owned();
        } else if config.socket_path != sessions_socket {
            problems.push(ConfigProblem {
                key: "launcher.socket_path".into(),
                message: format!(
                    "{} differs from sessions.launcher_socket {}; the broker would not find the launcher, so set both to the same path",
                    config.socket_path.display(),
                    sessions_socket.display()
                ),
            });
        }
    }
    if !seccomp_set {
        config.seccomp_profile = data_dir.join("workspace-seccomp.json");
    }

    // The instance id is filled in at start-up; validate everything else now.
    let mut probe = config.clone();
    probe.instance_id = "validation".into();
    if let Err(errors) = probe.validate() {
        for error in errors {
            problems.push(ConfigProblem {
                key: format!("launcher.{}", error.key),
                message: error.problem,
            });
        }
    }

    Some(LauncherSettings {
        mode,
        config,
        builtin_seccomp: !seccomp_set,
        image_from_build: !image_set,
        image_source: None,
    })
}
