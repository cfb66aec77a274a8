//! Conversion of the raw mirror into the validated [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawConfig, take};
use super::{
    Config, ConfigProblem, DatabaseConfig, DatabaseTarget, ListenAddress, LogConfig, LogFormat,
    SecretRef, ServerConfig, ShutdownConfig, TlsMode,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_MAX_CONNECTIONS: u32 = 10;
const DEFAULT_CONNECT_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_GRACE_SECONDS: u64 = 25;

/// Validates the raw mirror, appending every problem found. Returns `None` when a
/// problem made some part impossible to build.
pub fn validate(raw: RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<Config> {
    let data_dir = take(&raw.data_dir, "data_dir", "a directory path", problems)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if let Err(message) = check_data_dir(&data_dir) {
        problem(problems, "data_dir", message);
    }

    let server = validate_server(&raw, problems);
    let database = validate_database(&raw, &data_dir, problems);
    let log = validate_log(&raw, problems);
    let shutdown = validate_shutdown(&raw, problems);
    let auth = super::auth::validate_auth(&raw.auth, problems);
    let sessions = super::sessions::validate_sessions(&raw.sessions, &data_dir, problems);
    let sessions_socket = sessions
        .as_ref()
        .map(|sessions| sessions.launcher_socket.as_path());
    let launcher = super::launcher::validate_launcher(
        raw.launcher.as_ref(),
        &data_dir,
        sessions_socket,
        problems,
    );
    let secrets = super::secrets::validate_secrets(&raw.secrets, problems);
    if let (Some(sessions), Some(secrets)) = (&sessions, &secrets) {
        check_recording_keys_connection(sessions, secrets, problems);
    }
    let sites = super::sites::validate_sites(&raw.sites, problems);
    let egress = super::egress::validate_egress(&raw.egress, problems);
    let audit = super::audit::validate_audit(&raw.audit, problems);

    Some(Config {
        data_dir,
        server: server?,
        database: database?,
        log: log?,
        shutdown: shutdown?,
        auth: auth?,
        sessions: sessions?,
        launcher: launcher?,
        secrets: secrets?,
        sites: sites?,
        egress: egress?,
        audit: audit?,
    })
}

fn problem(problems: &mut Vec<ConfigProblem>, key: &str, message: impl Into<String>) {
    problems.push(ConfigProblem {
        key: key.to_owned(),
        message: message.into(),
    });
}

fn validate_server(raw: &RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<ServerConfig> {
    let server = &raw.server;
    let listen_text = take(
        &server.listen,
        "server.listen",
        "a socket address such as \"127.0.0.1:8080\"",
        problems,
    )
    .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = match ListenAddress::parse(&listen_text) {
        Ok(listen) => Some(listen),
        Err(message) => {
            problem(problems, "server.listen", message);
            None
        }
    };

    let public_url = take(
        &server.public_url,
        "server.public_url",
        "a URL string",
        problems,
    )
    .and_then(|text| parse_public_url(&text, problems));

    let mut trusted_proxies = Vec::new();
    let proxies = take(
        &server.trusted_proxies,
        "server.trusted_proxies",
        "an array of addresses or CIDR ranges",
        problems,
    );
    for entry in proxies.unwrap_or_default() {
        match parse_net(&entry) {
            Some(net) => trusted_proxies.push(net),
            None => problem(
                problems,
                "server.trusted_proxies",
                format!(
                    "invalid address or range {entry:?}; write \"10.0.0.5\" or \"10.0.0.0/24\""
                ),
            ),
        }
    }

    let cert = take(&server.tls_cert, "server.tls_cert", "a file path", problems);
    let key = take(&server.tls_key, "server.tls_key", "a file path", problems);
    let tls = match (cert, key, &listen) {
        (Some(cert), Some(key), _) => Some(TlsMode::Files { cert, key }),
        (Some(_), None, _) => {
            problem(
                problems,
                "server.tls_key",
                "missing; server.tls_cert is set, so set the private key file too",
            );
            None
        }
        (None, Some(_), _) => {
            problem(
                problems,
                "server.tls_cert",
                "missing; server.tls_key is set, so set the certificate file too",
            );
            None
        }
        (None, None, Some(listen)) if listen.is_loopback() => Some(TlsMode::PlainLoopback),
        (None, None, _) => Some(TlsMode::Generated),
    };
    if let (Some(url), Some(tls), Some(listen)) = (&public_url, &tls, &listen) {
        check_public_url_scheme(url, tls, listen, problems);
    }

    Some(ServerConfig {
        listen: listen?,
        public_url,
        trusted_proxies,
        tls: tls?,
    })
}

/// Parses `server.public_url`: an `http` or `https` URL with a host and without
/// credentials. Only its origin is used.
fn parse_public_url(text: &str, problems: &mut Vec<ConfigProblem>) -> Option<url::Url> {
    const EXAMPLE: &str =
        "write the address people open, such as \"https://strongroom.bank.example\"";
    let message = match url::Url::parse(text) {
        Err(error) => format!("invalid URL {text:?} ({error}); {EXAMPLE}"),
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            // The value is not echoed: it may contain a password.
            format!("the URL contains credentials, which a portal address never needs; {EXAMPLE}")
        }
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            return Some(url);
        }
        Ok(url) => format!(
            "unsupported scheme {:?} in {text:?}; {EXAMPLE}",
            url.scheme()
        ),
    };
    problem(problems, "server.public_url", message);
    None
}

/// Rejects an `http://` public URL when the listener serves HTTPS: browsers would
/// reach no portal there. The reverse, an `https://` URL with a plain loopback
/// listener, is a TLS-terminating reverse proxy on the same host and is accepted.
fn check_public_url_scheme(
    url: &url::Url,
    tls: &TlsMode,
    listen: &ListenAddress,
    problems: &mut Vec<ConfigProblem>,
) {
    let reason = match tls {
        TlsMode::PlainLoopback => return,
        _ if url.scheme() != "http" => return,
        TlsMode::Files { .. } => "server.tls_cert and server.tls_key are set".to_owned(),
        TlsMode::Generated => format!(
            "server.listen {:?} is not a loopback address, so it gets a generated certificate",
            listen.text
        ),
    };
    let mut https = url.clone();
    let fix = match https.set_scheme("https") {
        Ok(()) => format!("write {:?}", https.as_str()),
        Err(()) => "write an https:// URL".to_owned(),
    };
    problem(
        problems,
        "server.public_url",
        format!(
            "{:?} uses http://, but the portal serves HTTPS because {reason}; {fix}, or listen on loopback behind a reverse proxy that serves the http:// address",
            url.as_str()
        ),
    );
}

/// File systems of the kernel: a data directory there would write keys and databases
/// into kernel interfaces or device nodes.
const KERNEL_DIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Rejects a data directory under `/proc`, `/sys` or `/dev`, also when a relative
/// path, `..` or a symbolic link leads there.
fn check_data_dir(data_dir: &Path) -> Result<(), String> {
    let resolved = resolve_existing_prefix(data_dir);
    let Some(kernel_dir) = KERNEL_DIRS
        .iter()
        .find(|kernel_dir| resolved.starts_with(kernel_dir))
    else {
        return Ok(());
    };
    let via = match resolved.as_path() == data_dir {
        true => String::new(),
        false => format!(" (it resolves to {})", resolved.display()),
    };
    Err(format!(
        "{:?} is under {kernel_dir}{via}, a kernel file system that cannot hold Strongroom's data; choose a directory on a disk, such as \"/var/lib/strongroom\"",
        data_dir.display().to_string()
    ))
}

/// Makes `path` absolute and resolves the symbolic links and `..` of its longest
/// existing ancestor. The part that does not exist yet is appended as written.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(mut resolved) = existing.canonicalize() {
            resolved.extend(missing.iter().rev());
            return resolved;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn validate_database(
    raw: &RawConfig,
    data_dir: &std::path::Path,
    problems: &mut Vec<ConfigProblem>,
) -> Option<DatabaseConfig> {
    let database = &raw.database;
    let url = take(
        &database.url,
        "database.url",
        "a database URL string",
        problems,
    );
    let password_text = take(
        &database.password,
        "database.password",
        "a secret reference string",
        problems,
    );
    let password = match password_text.as_deref().map(SecretRef::parse) {
        None => None,
        Some(Ok(reference)) => Some(reference),
        Some(Err(error)) => {
            problem(problems, "database.password", error.to_string());
            None
        }
    };

    let target = match url {
        None => Some(DatabaseTarget::Sqlite {
            path: data_dir.join("strongroom.db"),
        }),
        Some(url) => parse_database_url(&url, password, problems),
    };

    let max_connections = take(
        &database.max_connections,
        "database.max_connections",
        "a positive integer",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        problem(problems, "database.max_connections", "must be at least 1");
    }
    let timeout = take(
        &database.connect_timeout_seconds,
        "database.connect_timeout_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECONDS);
    if timeout == 0 {
        problem(
            problems,
            "database.connect_timeout_seconds",
            "must be at least 1",
        );
    }

    Some(DatabaseConfig {
        target: target?,
        max_connections: max_connections.max(1),
        connect_timeout: Duration::from_secs(timeout.max(1)),
    })
}

fn parse_database_url(
    url: &str,
    password: Option<SecretRef>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<DatabaseTarget> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            problem(
                problems,
                "database.url",
                "the SQLite URL has no path; write \"sqlite:///var/lib/strongroom/strongroom.db\"",
            );
            return None;
        }
        if password.is_some() {
            problem(
                problems,
                "database.password",
                "SQLite takes no password; remove this key",
            );
        }
        return Some(DatabaseTarget::Sqlite {
            path: PathBuf::from(path),
        });
    }

    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if url_has_password(url) {
            // The value is not echoed: it contains a password.
            problem(
                problems,
                "database.url",
                "the URL contains a password; remove it from the URL and set database.password to a reference such as \"env:PGPASSWORD\" or \"file:/run/secrets/db\"",
            );
            return None;
        }
        return Some(DatabaseTarget::Postgres {
            url: url.to_owned(),
            password,
        });
    }

    let scheme = url.split(':').next().unwrap_or_default();
    problem(
        problems,
        "database.url",
        format!(
            "unsupported database scheme {scheme:?}; use \"postgres://user@host/db\" or \"sqlite://PATH\", or remove the key for the embedded SQLite database"
        ),
    );
    None
}

/// Whether `scheme://user:password@host` carries a password.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}

/// Levels that `log.level` accepts alone or after `TARGET=` in a directive.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `log.level` value: comma-separated directives, each a level or
/// `TARGET=LEVEL`. A bare word that is not a level parses as a tracing target
/// directive, which would silence everything else, so it is rejected.
pub(super) fn check_log_level(level: &str) -> Result<(), String> {
    let accepted = format!(
        "use one of {} or directives such as \"broker=debug,info\"",
        LOG_LEVELS.join(", ")
    );
    for directive in level.split(',').map(str::trim) {
        let level_part = match directive.rsplit_once('=') {
            Some((_, level_part)) => level_part,
            None => directive,
        };
        if !LOG_LEVELS.contains(&level_part.to_ascii_lowercase().as_str()) {
            let message = if level_part == level {
                format!("invalid level {level:?}; {accepted}")
            } else {
                format!("invalid level {level_part:?} in {level:?}; {accepted}")
            };
            return Err(message);
        }
    }
    if tracing_subscriber::EnvFilter::try_new(level).is_err() {
        return Err(format!("invalid filter directive {level:?}; {accepted}"));
    }
    Ok(())
}

fn validate_log(raw: &RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<LogConfig> {
    let level = take(
        &raw.log.level,
        "log.level",
        "a filter directive string such as \"info\"",
        problems,
    )
    .unwrap_or_else(|| "info".to_owned());
    if let Err(message) = check_log_level(&level) {
        problem(problems, "log.level", message);
    }

    let format_text = take(
        &raw.log.format,
        "log.format",
        "one of \"auto\", \"human\", \"json\"",
        problems,
    );
    let format = match format_text.as_deref() {
        None | Some("auto") => Some(LogFormat::Auto),
        Some("human") => Some(LogFormat::Human),
        Some("json") => Some(LogFormat::Json),
        Some(other) => {
            problem(
                problems,
                "log.format",
                format!("unknown format {other:?}; use \"auto\", \"human\" or \"json\""),
            );
            None
        }
    };

    Some(LogConfig {
        level,
        format: format?,
    })
}

fn validate_shutdown(raw: &RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<ShutdownConfig> {
    let grace = take(
        &raw.shutdown.grace_seconds,
        "shutdown.grace_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace == 0 || grace > 600 {
        problem(
            problems,
            "shutdown.grace_seconds",
            format!("{grace} is out of range; use 1 to 600 seconds"),
        );
        return None;
    }
    Some(ShutdownConfig {
        grace: Duration::from_secs(grace),
    })
}

/// Infisical recording keys use the connection and machine identity of
/// `[secrets.infisical]`, so that section must be in use.
fn check_recording_keys_connection(
    sessions: &super::SessionsConfig,
    secrets: &super::secrets::SecretsConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let infisical_keys = matches!(
        sessions.recording_keys,
        super::sessions::RecordingKeysBackend::Infisical { .. }
    );
    if infisical_keys && !matches!(secrets, super::secrets::SecretsConfig::Infisical(_)) {
        problems.push(ConfigProblem {
            key: "sessions.recording_keys".to_owned(),
            message: "\"infisical\" reaches Infisical through [secrets.infisical]; set secrets.source = \"infisical\" and fill [secrets.infisical], or use \"local\"".to_owned(),
        });
    }
}
