//! Configuration: one TOML file plus `STRONGROOM_*` environment overrides.
//!
//! Loading has two stages. The file and the overrides are merged into one TOML tree and
//! read into [`raw::RawConfig`], a lenient mirror in which every leaf keeps its value even
//! when it has the wrong type. [`validate`] then turns the mirror into the typed
//! [`Config`], collecting every problem (unknown keys with their full path, wrong types,
//! contradictions, inline secrets) so that one run reports all of them.
//!
//! Environment overrides use a double underscore between path segments:
//! `STRONGROOM_SERVER__LISTEN=0.0.0.0:8443` sets `server.listen`. A value that parses
//! as a TOML value (a number, a boolean, a quoted string, an array) is taken as such;
//! anything else is taken as a plain string.

pub mod auth;
pub mod egress;
pub mod launcher;
mod listen;
pub mod raw;
pub mod recordings_s3;
mod secret;
pub mod secrets;
pub mod sessions;
pub mod sites;
pub mod audit;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use listen::ListenAddress;
pub use secret::{SecretRef, SecretRefError};
pub use sessions::SessionsConfig;
pub use validate::validate;

/// Environment variable that names the configuration file when `--config` is absent.
pub const CONFIG_ENV: &str = "STRONGROOM_CONFIG";

/// Prefix of the environment variables that override single keys.
pub const ENV_PREFIX: &str = "STRONGROOM_";

/// Environment variable that overrides `log.level`; an empty value counts as unset.
pub const LOG_ENV: &str = "STRONGROOM_LOG";

/// Environment variables with the prefix that are not key overrides.
const NON_KEY_ENV: &[&str] = &[CONFIG_ENV, LOG_ENV];

/// Prefix of variables that configure the test suite, not the broker.
const TEST_ENV_PREFIX: &str = "STRONGROOM_TEST_";

/// Validated configuration, built once at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding everything the embedded defaults write: the SQLite database,
    /// the instance id, generated TLS material, recordings and keys.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub auth: auth::AuthConfig,
    pub sessions: SessionsConfig,
    pub launcher: launcher::LauncherSettings,
    pub secrets: secrets::SecretsConfig,
    pub sites: sites::SitesConfig,
    pub egress: egress::EgressConfig,
    pub audit: audit::AuditConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: ListenAddress,
    /// Externally visible base URL; its origin is the only one the live view accepts.
    pub public_url: Option<url::Url>,
    /// Peers whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub tls: TlsMode,
}

/// How the portal listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP; only allowed on a loopback address.
    PlainLoopback,
    /// HTTPS with certificate and key files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// HTTPS with a local CA and certificate generated under the data directory.
    Generated,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub target: DatabaseTarget,
    pub max_connections: u32,
    /// How long a start-up connection attempt may take before the broker gives up.
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        url: String,
        password: Option<SecretRef>,
    },
}

impl DatabaseTarget {
    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseTarget::Sqlite { .. } => "sqlite",
            DatabaseTarget::Postgres { .. } => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive such as `info` or `broker=debug`:
    /// `STRONGROOM_LOG` when set, otherwise `log.level`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long background tasks get to finish after the first signal.
    pub grace: Duration,
}

/// One problem found while loading the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, such as `server.listen`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one load, in the order found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(
            f,
            "invalid configuration ({}): {count} {noun}",
            self.source_name
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(source_name: &str, key: &str, message: String) -> Self {
        ConfigError {
            source_name: source_name.to_owned(),
            problems: vec![ConfigProblem {
                key: key.to_owned(),
                message,
            }],
        }
    }
}

/// Loads the configuration from an optional file and the given environment.
///
/// `env` is passed in rather than read here so that tests control it completely.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let file_name = match path {
        Some(path) => path.display().to_string(),
        None => "built-in defaults".to_owned(),
    };

    let mut tree = match path {
        Some(path) => read_file(path, &file_name)?,
        None => toml::Table::new(),
    };

    let env: Vec<(String, String)> = env.into_iter().collect();
    let log_override = env
        .iter()
        .find(|(name, value)| name == LOG_ENV && !value.is_empty())
        .map(|(_, value)| value.clone());
    let mut problems = Vec::new();
    let overrides = apply_env_overrides(&mut tree, env, &mut problems);
    let source_name = if overrides.is_empty() {
        file_name.clone()
    } else {
        format!("{file_name} with {ENV_PREFIX}* environment variables")
    };

    let raw = raw::RawConfig::from_table(tree, &mut problems);
    let mut config = validate(raw, &mut problems);
    if let Some(level) = log_override {
        match validate::check_log_level(&level) {
            Ok(()) => {
                if let Some(config) = &mut config {
                    config.log.level = level;
                }
            }
            Err(message) => problems.push(ConfigProblem {
                key: LOG_ENV.to_owned(),
                message: format!("{message}; for example {LOG_ENV}=debug"),
            }),
        }
    }
    if let Some(config) = &mut config
        && !config.launcher.image_from_build
    {
        let source = match overrides.iter().find(|origin| origin.covers("launcher.image")) {
            Some(origin) => format!("the environment variable {}", origin.name),
            None => format!("the configuration file {file_name}"),
        };
        config.launcher.image_source = Some(source);
    }
    for problem in &mut problems {
        if let Some(origin) = overrides.iter().find(|origin| origin.covers(&problem.key)) {
            problem.message = format!("{}; {}", problem.message, origin.describe());
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError {
            source_name,
            problems,
        }),
    }
}

fn read_file(path: &Path, source_name: &str) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::single(
            source_name,
            "(file)",
            format!("cannot read the configuration file: {error}; check the path given with --config or {CONFIG_ENV}"),
        )
    })?;

    text.parse::<toml::Table>().map_err(|error| {
        let message = error.message().to_owned();
        let position = error
            .span()
            .map(|span| line_column(&text, span.start))
            .map(|(line, column)| format!(" at line {line}, column {column}"))
            .unwrap_or_default();
        ConfigError::single(
            source_name,
            "(file)",
            format!("malformed TOML{position}: {message}"),
        )
    })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Words in the names of keys whose values are secret references, such as
/// `database.password` or `sessions.recordings_s3.secret_access_key`. A wrong value
/// there may be the secret itself, so messages name the variable without its value.
const SECRET_KEY_WORDS: &[&str] = &["password", "secret", "token", "access_key"];

/// One `STRONGROOM_*` variable that set a key.
struct EnvOverride {
    /// Dotted key path, such as `launcher.subnet_range`.
    key: String,
    name: String,
    value: String,
}

impl EnvOverride {
    /// Returns whether a problem on `key` concerns the value this variable set: the key
    /// itself or a key inside the table it set.
    fn covers(&self, key: &str) -> bool {
        key == self.key
            || key
                .strip_prefix(self.key.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    }

    /// Returns whether the key, or a key inside a table the variable sets, contains a
    /// secret.
    fn is_secret(&self) -> bool {
        let key = self.key.to_ascii_lowercase();
        let value = self.value.to_ascii_lowercase();
        SECRET_KEY_WORDS
            .iter()
            .any(|word| key.contains(word) || value.contains(word))
    }

    /// Names the variable, its value unless the key holds a secret reference, and the fix.
    fn describe(&self) -> String {
        let setting = if self.is_secret() {
            format!("{} (value not shown)", self.name)
        } else {
            format!("{}={}", self.name, without_url_password(&self.value))
        };
        format!(
            "set by the environment variable {setting}; correct or unset that variable (`unset {}`)",
            self.name
        )
    }
}

/// Replaces the password of a URL such as `postgres://app:pw@db/x` with `***`; other
/// text is returned unchanged.
fn without_url_password(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => text.to_owned(),
    }
}

/// Writes each `STRONGROOM_A__B=value` into the tree at `a.b`, and returns the
/// variables that set a key.
fn apply_env_overrides(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<EnvOverride> {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with(ENV_PREFIX)
                && !name.starts_with(TEST_ENV_PREFIX)
                && !NON_KEY_ENV.contains(&name.as_str())
        })
        .collect();
    overrides.sort();

    let mut applied = Vec::new();
    for (name, text) in overrides {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|segment| segment.to_ascii_lowercase())
            .collect();
        if path.iter().any(|segment| segment.is_empty()) {
            problems.push(ConfigProblem {
                key: name.clone(),
                message: "malformed override name; separate key path segments with a double underscore, as in STRONGROOM_SERVER__LISTEN".to_owned(),
            });
            continue;
        }
        let value = parse_env_value(&text);
        if let Err(message) = insert_path(tree, &path, value) {
            problems.push(ConfigProblem {
                key: format!("{} (from {name})", path.join(".")),
                message,
            });
            continue;
        }
        applied.push(EnvOverride {
            key: path.join("."),
            name,
            value: text,
        });
    }
    applied
}

fn parse_env_value(text: &str) -> toml::Value {
    let document = format!("v = {text}");
    match document.parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_owned())),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

fn insert_path(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("path has at least one segment");
    let mut table = tree;
    for segment in parents {
        let entry = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(inner) => inner,
            _ => {
                return Err(format!(
                    "`{segment}` is not a table in the file, so it cannot hold a nested key"
                ));
            }
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
