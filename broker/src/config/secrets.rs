//! The `[secrets]` section: where bank credentials for auto-login come from.
//!
//! `source = "local"` (the default) keeps them encrypted in the broker's database under
//! a key file in the data directory. `source = "infisical"` reads them from an Infisical
//! project through a machine identity with Universal Auth; `[secrets.infisical]` names
//! the server, the identity and the project.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{Lenient, take};
use super::{ConfigProblem, SecretRef};

const DEFAULT_SECRET_PATH_PREFIX: &str = "/strongroom";
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_RATE_LIMIT_RETRIES: u32 = 3;
const DEFAULT_MAX_RETRY_WAIT_SECONDS: u64 = 30;
const DEFAULT_TOKEN_RENEW_MARGIN_SECONDS: u64 = 60;

/// Raw mirror of `[secrets]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSecrets {
    /// `secrets.source`: `"local"` (encrypted in the database, the default) or
    /// `"infisical"`.
    pub source: Option<Lenient<String>>,
    /// `[secrets.infisical]`: required when `source = "infisical"`.
    pub infisical: Option<RawInfisical>,
}

/// Raw mirror of `[secrets.infisical]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawInfisical {
    /// `secrets.infisical.url`: base URL of the Infisical server, such as
    /// `https://infisical.bank.example`. Plain `http` is accepted only for a loopback
    /// address.
    pub url: Option<Lenient<String>>,
    /// `secrets.infisical.client_id`: Universal Auth client id of the machine identity.
    pub client_id: Option<Lenient<String>>,
    /// `secrets.infisical.client_secret`: a secret reference (`env:NAME` or
    /// `file:PATH`) to the identity's client secret.
    pub client_secret: Option<Lenient<String>>,
    /// `secrets.infisical.project_id`: id of the project holding the credentials.
    pub project_id: Option<Lenient<String>>,
    /// `secrets.infisical.environment`: environment slug, such as `prod`.
    pub environment: Option<Lenient<String>>,
    /// `secrets.infisical.secret_path_prefix`: folder under which each site has its own
    /// folder. Default `/strongroom`.
    pub secret_path_prefix: Option<Lenient<String>>,
    /// `secrets.infisical.ca_cert`: PEM file of an extra certificate authority to
    /// trust, for a server behind a private CA. The public web PKI stays trusted.
    pub ca_cert: Option<Lenient<PathBuf>>,
    /// `secrets.infisical.timeout_seconds`: limit on each request. Default 10.
    pub timeout_seconds: Option<Lenient<u64>>,
    /// `secrets.infisical.rate_limit_retries`: how often a request that gets a 429 or a
    /// 5xx response is retried before giving up. Default 3.
    pub rate_limit_retries: Option<Lenient<u32>>,
    /// `secrets.infisical.max_retry_wait_seconds`: cap on the wait before a retry after
    /// 429 or a 5xx, whatever wait the server requests. Default 30.
    pub max_retry_wait_seconds: Option<Lenient<u64>>,
}

/// Validated `[secrets]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretsConfig {
    /// Credentials encrypted in the database under `DATA_DIR/credentials.key`.
    Local,
    Infisical(Box<InfisicalConfig>),
}

/// Validated `[secrets.infisical]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfisicalConfig {
    /// Base URL without a trailing slash.
    pub url: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub project_id: String,
    pub environment: String,
    /// Folder path starting with `/` and without a trailing slash (`""` is the root).
    pub secret_path_prefix: String,
    pub ca_cert: Option<PathBuf>,
    pub timeout: Duration,
    pub rate_limit_retries: u32,
    pub max_retry_wait: Duration,
    /// An access token is renewed this long before it expires.
    pub token_renew_margin: Duration,
}

impl InfisicalConfig {
    /// Builds a configuration with the defaults for everything but the connection values.
    pub fn new(
        url: &str,
        client_id: &str,
        client_secret: SecretRef,
        project_id: &str,
        environment: &str,
    ) -> InfisicalConfig {
        InfisicalConfig {
            url: url.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret,
            project_id: project_id.to_owned(),
            environment: environment.to_owned(),
            secret_path_prefix: DEFAULT_SECRET_PATH_PREFIX.to_owned(),
            ca_cert: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECONDS),
            rate_limit_retries: DEFAULT_RATE_LIMIT_RETRIES,
            max_retry_wait: Duration::from_secs(DEFAULT_MAX_RETRY_WAIT_SECONDS),
            token_renew_margin: Duration::from_secs(DEFAULT_TOKEN_RENEW_MARGIN_SECONDS),
        }
    }
}

fn problem(problems: &mut Vec<ConfigProblem>, key: &str, message: impl Into<String>) {
    problems.push(ConfigProblem {
        key: key.to_owned(),
        message: message.into(),
    });
}

/// Validates `[secrets]`, appending every problem found.
pub fn validate_secrets(
    raw: &RawSecrets,
    problems: &mut Vec<ConfigProblem>,
) -> Option<SecretsConfig> {
    let source = take(
        &raw.source,
        "secrets.source",
        "one of \"local\", \"infisical\"",
        problems,
    );
    match source.as_deref() {
        None | Some("local") => {
            if raw.infisical.is_some() {
                problem(
                    problems,
                    "secrets.infisical",
                    "is set but secrets.source is \"local\"; set secrets.source = \"infisical\" or remove [secrets.infisical]",
                );
                return None;
            }
            Some(SecretsConfig::Local)
        }
        Some("infisical") => match &raw.infisical {
            Some(infisical) => validate_infisical(infisical, problems)
                .map(|config| SecretsConfig::Infisical(Box::new(config))),
            None => {
                problem(
                    problems,
                    "secrets.infisical",
                    "missing; secrets.source is \"infisical\", so add [secrets.infisical] with url, client_id, client_secret, project_id and environment",
                );
                None
            }
        },
        Some(other) => {
            problem(
                problems,
                "secrets.source",
                format!("unknown source {other:?}; use \"local\" or \"infisical\""),
            );
            None
        }
    }
}

fn required(
    leaf: &Option<Lenient<String>>,
    key: &str,
    example: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<String> {
    match take(leaf, key, "a string", problems) {
        Some(value) if !value.trim().is_empty() => Some(value.trim().to_owned()),
        Some(_) => {
            problem(
                problems,
                key,
                format!("is empty; set it, for example {example}"),
            );
            None
        }
        None if leaf.is_none() => {
            problem(
                problems,
                key,
                format!("missing; set it, for example {example}"),
            );
            None
        }
        None => None,
    }
}

fn validate_infisical(
    raw: &RawInfisical,
    problems: &mut Vec<ConfigProblem>,
) -> Option<InfisicalConfig> {
    let url = required(
        &raw.url,
        "secrets.infisical.url",
        "\"https://infisical.bank.example\"",
        problems,
    )
    .and_then(|url| validate_url(&url, problems));
    let client_id = required(
        &raw.client_id,
        "secrets.infisical.client_id",
        "the machine identity's client id",
        problems,
    );
    let client_secret = required(
        &raw.client_secret,
        "secrets.infisical.client_secret",
        "\"env:INFISICAL_CLIENT_SECRET\"",
        problems,
    )
    .and_then(|text| match SecretRef::parse(&text) {
        Ok(reference) => Some(reference),
        Err(error) => {
            problem(
                problems,
                "secrets.infisical.client_secret",
                error.to_string(),
            );
            None
        }
    });
    let project_id = required(
        &raw.project_id,
        "secrets.infisical.project_id",
        "the project id shown in the project settings",
        problems,
    );
    let environment = required(
        &raw.environment,
        "secrets.infisical.environment",
        "\"prod\"",
        problems,
    );

    let prefix = take(
        &raw.secret_path_prefix,
        "secrets.infisical.secret_path_prefix",
        "a folder path string",
        problems,
    )
    .unwrap_or_else(|| DEFAULT_SECRET_PATH_PREFIX.to_owned());
    let secret_path_prefix = validate_path_prefix(&prefix, problems);

    let ca_cert = take(
        &raw.ca_cert,
        "secrets.infisical.ca_cert",
        "a PEM file path",
        problems,
    );
    if let Some(path) = &ca_cert {
        match std::fs::read(path) {
            Ok(bytes)
                if bytes
                    .windows(27)
                    .any(|window| window == b"-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => problem(
                problems,
                "secrets.infisical.ca_cert",
                format!(
                    "{} contains no PEM certificate; give the CA certificate in PEM form",
                    path.display()
                ),
            ),
            Err(error) => problem(
                problems,
                "secrets.infisical.ca_cert",
                format!(
                    "cannot read {}: {error}; check the path and its permissions",
                    path.display()
                ),
            ),
        }
    }

    let timeout = take(
        &raw.timeout_seconds,
        "secrets.infisical.timeout_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=300).contains(&timeout) {
        problem(
            problems,
            "secrets.infisical.timeout_seconds",
            format!("{timeout} is out of range; use 1 to 300 seconds"),
        );
    }
    let rate_limit_retries = take(
        &raw.rate_limit_retries,
        "secrets.infisical.rate_limit_retries",
        "a whole number",
        problems,
    )
    .unwrap_or(DEFAULT_RATE_LIMIT_RETRIES);
    if rate_limit_retries > 10 {
        problem(
            problems,
            "secrets.infisical.rate_limit_retries",
            format!("{rate_limit_retries} is out of range; use 0 to 10"),
        );
    }
    let max_retry_wait = take(
        &raw.max_retry_wait_seconds,
        "secrets.infisical.max_retry_wait_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_RETRY_WAIT_SECONDS);
    if !(1..=120).contains(&max_retry_wait) {
        problem(
            problems,
            "secrets.infisical.max_retry_wait_seconds",
            format!("{max_retry_wait} is out of range; use 1 to 120 seconds"),
        );
    }

    let mut config = InfisicalConfig::new(
        &url?,
        &client_id?,
        client_secret?,
        &project_id?,
        &environment?,
    );
    config.secret_path_prefix = secret_path_prefix?;
    config.ca_cert = ca_cert;
    config.timeout = Duration::from_secs(timeout.clamp(1, 300));
    config.rate_limit_retries = rate_limit_retries.min(10);
    config.max_retry_wait = Duration::from_secs(max_retry_wait.clamp(1, 120));
    Some(config)
}

fn validate_url(text: &str, problems: &mut Vec<ConfigProblem>) -> Option<String> {
    const KEY: &str = "secrets.infisical.url";
    let parsed = match url::Url::parse(text) {
        Ok(parsed) => parsed,
        Err(error) => {
            problem(
                problems,
                KEY,
                format!(
                    "invalid URL {text:?} ({error}); write the server's base URL, such as \"https://infisical.bank.example\""
                ),
            );
            return None;
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // The value is not echoed: it may contain a password.
        problem(
            problems,
            KEY,
            "the URL contains credentials; remove them and set secrets.infisical.client_secret instead",
        );
        return None;
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        problem(
            problems,
            KEY,
            format!("{text:?} has a query or fragment; give only the base URL"),
        );
        return None;
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            problem(
                problems,
                KEY,
                format!(
                    "{text:?} uses plain http; use https (plain http is accepted only for a loopback address)"
                ),
            );
            return None;
        }
        other => {
            problem(
                problems,
                KEY,
                format!("unsupported scheme {other:?} in {text:?}; use https"),
            );
            return None;
        }
    }
    Some(text.trim_end_matches('/').to_owned())
}

/// Folder names in the prefix: letters, digits, `-` and `_`.
fn validate_path_prefix(prefix: &str, problems: &mut Vec<ConfigProblem>) -> Option<String> {
    const KEY: &str = "secrets.infisical.secret_path_prefix";
    if !prefix.starts_with('/') {
        problem(
            problems,
            KEY,
            format!("{prefix:?} must start with '/', as in \"/strongroom\""),
        );
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    let valid = trimmed.split('/').skip(1).all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    });
    if !valid {
        problem(
            problems,
            KEY,
            format!(
                "{prefix:?} is not a folder path; use folder names of letters, digits, '-' and '_' separated by '/'"
            ),
        );
        return None;
    }
    Some(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<SecretsConfig>, Vec<ConfigProblem>) {
        let raw: RawSecrets = toml::from_str(text).expect("valid TOML");
        let mut problems = Vec::new();
        let config = validate_secrets(&raw, &mut problems);
        (config, problems)
    }

    fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
        problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect()
    }

    #[test]
    fn default_source_is_local() {
        let (config, problems) = parse("");

        assert_eq!(config, Some(SecretsConfig::Local));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn complete_infisical_section_is_accepted() {
        let (config, problems) = parse(
            r#"
            source = "infisical"
            [infisical]
            url = "https://infisical.bank.example/"
            client_id = "id-1"
            client_secret = "env:INFISICAL_CLIENT_SECRET"
            project_id = "p-1"
            environment = "prod"
            secret_path_prefix = "/banks/strongroom/"
            "#,
        );

        assert!(problems.is_empty(), "{problems:?}");
        let Some(SecretsConfig::Infisical(infisical)) = config else {
            panic!("expected Infisical: {config:?}")
        };
        assert_eq!(infisical.url, "https://infisical.bank.example");
        assert_eq!(infisical.secret_path_prefix, "/banks/strongroom");
        assert_eq!(
            infisical.client_secret,
            SecretRef::Env("INFISICAL_CLIENT_SECRET".to_owned())
        );
    }

    #[test]
    fn every_infisical_problem_is_named() {
        let (config, problems) = parse(
            r#"
            source = "infisical"
            [infisical]
            url = "http://infisical.bank.example"
            client_secret = "s3cr3t-inline"
            environment = ""
            secret_path_prefix = "strongroom"
            ca_cert = "/nonexistent/ca.pem"
            timeout_seconds = 0
            "#,
        );

        assert_eq!(config, None);
        let keys = keys(&problems);
        for key in [
            "secrets.infisical.url",
            "secrets.infisical.client_id",
            "secrets.infisical.client_secret",
            "secrets.infisical.project_id",
            "secrets.infisical.environment",
            "secrets.infisical.secret_path_prefix",
            "secrets.infisical.ca_cert",
            "secrets.infisical.timeout_seconds",
        ] {
            assert!(keys.contains(&key), "no problem for {key}: {problems:?}");
        }
        assert!(
            !format!("{problems:?}").contains("s3cr3t-inline"),
            "inline secret echoed: {problems:?}"
        );
    }

    #[test]
    fn plain_http_is_accepted_on_loopback_only() {
        let mut problems = Vec::new();

        assert_eq!(
            validate_url("http://127.0.0.1:8200", &mut problems).as_deref(),
            Some("http://127.0.0.1:8200")
        );
        assert!(problems.is_empty());
        assert_eq!(validate_url("http://10.0.0.5:8200", &mut problems), None);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn contradictions_are_reported() {
        let (_, problems) = parse("source = \"infisical\"");
        assert_eq!(keys(&problems), vec!["secrets.infisical"]);

        let (_, problems) = parse("[infisical]\nurl = \"https://x.example\"");
        assert_eq!(keys(&problems), vec!["secrets.infisical"]);

        let (_, problems) = parse("source = \"vault\"");
        assert_eq!(keys(&problems), vec!["secrets.source"]);
    }
}
