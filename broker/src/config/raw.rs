//! Raw mirror of the configuration file, before validation.
//!
//! Every leaf is a [`Lenient`] value, so a wrong type in one key does not hide the
//! problems in the others. Each key is documented here, where it is declared; the
//! README's configuration reference follows this file.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::ConfigProblem;

/// A leaf value that kept its TOML form when it did not have the expected type.
#[derive(Debug, Clone)]
pub enum Lenient<T> {
    Valid(T),
    Invalid { found: String, error: String },
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        match T::deserialize(value.clone()) {
            Ok(valid) => Ok(Lenient::Valid(valid)),
            Err(error) => Ok(Lenient::Invalid {
                found: describe(&value),
                error: error.to_string(),
            }),
        }
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("the string {text:?}"),
        toml::Value::Integer(number) => format!("the integer {number}"),
        toml::Value::Float(number) => format!("the float {number}"),
        toml::Value::Boolean(flag) => format!("the boolean {flag}"),
        toml::Value::Datetime(datetime) => format!("the datetime {datetime}"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

/// Reads a leaf, recording a problem when it had the wrong type.
pub fn take<T: Clone>(
    leaf: &Option<Lenient<T>>,
    key: &str,
    expected: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    match leaf {
        None => None,
        Some(Lenient::Valid(value)) => Some(value.clone()),
        Some(Lenient::Invalid { found, error }) => {
            let detail = error.lines().next().unwrap_or_default();
            problems.push(ConfigProblem {
                key: key.to_owned(),
                message: format!("expected {expected}, found {found} ({detail})"),
            });
            None
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    /// `data_dir`: directory for the embedded defaults. Default `data` (relative to the
    /// working directory). Not under `/proc`, `/sys` or `/dev`, also through a link.
    pub data_dir: Option<Lenient<PathBuf>>,
    pub server: RawServer,
    pub database: RawDatabase,
    pub log: RawLog,
    pub shutdown: RawShutdown,
    pub sessions: super::sessions::RawSessions,
    pub auth: super::auth::RawAuth,
    /// `[launcher]`: read by `config::launcher`, which names its keys.
    pub launcher: Option<toml::Value>,
    /// `[secrets]`: where auto-login credentials come from; keys in `config::secrets`.
    pub secrets: super::secrets::RawSecrets,
    /// `[sites]`: approval of site changes; keys in `config::sites`.
    pub sites: super::sites::RawSites,
    /// `[egress]`: static host map of the egress proxy; keys in `config::egress`.
    pub egress: super::egress::RawEgress,
    /// `[audit]`: retention of audit events; keys in `config::audit`.
    pub audit: super::audit::RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawServer {
    /// `server.listen`: address of the portal, an IP address and port or `HOST:PORT`
    /// with a host name whose addresses are all loopback, such as `localhost:8080`.
    /// The name is resolved at start and each address bound. Default `127.0.0.1:8080`.
    pub listen: Option<Lenient<String>>,
    /// `server.public_url`: the URL people type, such as `https://strongroom.bank.example`.
    /// `http://` only when the listener serves plain HTTP; `https://` with a plain
    /// loopback listener means a TLS-terminating reverse proxy on the same host.
    pub public_url: Option<Lenient<String>>,
    /// `server.trusted_proxies`: addresses or CIDR ranges of reverse proxies whose
    /// `X-Forwarded-For` header is believed. Default none.
    pub trusted_proxies: Option<Lenient<Vec<String>>>,
    /// `server.tls_cert` and `server.tls_key`: PEM files. Both or neither. Without
    /// them a non-loopback listener gets a generated local CA and certificate.
    pub tls_cert: Option<Lenient<PathBuf>>,
    pub tls_key: Option<Lenient<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawDatabase {
    /// `database.url`: `postgres://user@host/db` for PostgreSQL, or `sqlite://PATH`.
    /// Default: SQLite at `DATA_DIR/strongroom.db`. The URL must not carry a password.
    pub url: Option<Lenient<String>>,
    /// `database.password`: a secret reference (`env:NAME` or `file:PATH`) to the
    /// PostgreSQL password.
    pub password: Option<Lenient<String>>,
    /// `database.max_connections`: pool size. Default 10.
    pub max_connections: Option<Lenient<u32>>,
    /// `database.connect_timeout_seconds`: start-up connection timeout. Default 10.
    pub connect_timeout_seconds: Option<Lenient<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawLog {
    /// `log.level`: a tracing filter directive. Default `info`. `STRONGROOM_LOG` wins
    /// and is checked the same way; an empty `STRONGROOM_LOG` counts as unset.
    pub level: Option<Lenient<String>>,
    /// `log.format`: `auto` (human on a terminal, JSON otherwise), `human` or `json`.
    pub format: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawShutdown {
    /// `shutdown.grace_seconds`: time background tasks get after SIGTERM or SIGINT
    /// before the broker exits anyway. Default 25.
    pub grace_seconds: Option<Lenient<u64>>,
}

impl RawConfig {
    /// Reads the merged tree, recording every unknown key with its full path.
    pub fn from_table(tree: toml::Table, problems: &mut Vec<ConfigProblem>) -> RawConfig {
        let mut unknown = Vec::new();
        let result: Result<RawConfig, _> =
            serde_ignored::deserialize(toml::Value::Table(tree), |path| {
                unknown.push(path.to_string())
            });

        for key in unknown {
            problems.push(ConfigProblem {
                key,
                message: "unknown key; check its spelling and section against the configuration reference".to_owned(),
            });
        }

        match result {
            Ok(raw) => raw,
            Err(error) => {
                problems.push(ConfigProblem {
                    key: "(structure)".to_owned(),
                    message: format!("{error}; each section must be a TOML table such as [server]"),
                });
                RawConfig::default()
            }
        }
    }
}
