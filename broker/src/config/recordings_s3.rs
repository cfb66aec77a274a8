//! The `[sessions.recordings_s3]` section: S3-compatible object storage for recordings
//! in place of the local recordings directory. Credentials are secret references.

use serde::Deserialize;

use super::raw::{Lenient, take};
use super::{ConfigProblem, SecretRef};

const SECTION: &str = "sessions.recordings_s3";

/// Raw mirror of `[sessions.recordings_s3]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRecordingsS3 {
    /// `endpoint`: URL of the S3 API, for example `https://s3.eu-central-1.amazonaws.com`.
    pub endpoint: Option<Lenient<String>>,
    /// `region`: region that requests are signed for. Default `us-east-1`.
    pub region: Option<Lenient<String>>,
    /// `bucket`: an existing bucket.
    pub bucket: Option<Lenient<String>>,
    /// `prefix`: key prefix of the recordings. Default empty (the bucket root).
    pub prefix: Option<Lenient<String>>,
    /// `access_key_id`: secret reference (`env:NAME` or `file:PATH`) to the access key id.
    pub access_key_id: Option<Lenient<String>>,
    /// `secret_access_key`: secret reference to the secret access key.
    pub secret_access_key: Option<Lenient<String>>,
    /// `operation_timeout_seconds`: maximum time of one storage operation, retries
    /// included, from 1 to 300. A segment write that takes longer fails, and the live
    /// session freezes. Default 10.
    pub operation_timeout_seconds: Option<Lenient<u64>>,
    /// `max_retries`: retries of a failed request within the operation timeout, from 0
    /// to 10. Default 3.
    pub max_retries: Option<Lenient<u64>>,
}

/// Validated `[sessions.recordings_s3]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingsS3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    pub operation_timeout: std::time::Duration,
    pub max_retries: usize,
}

impl RecordingsS3Config {
    /// Resolves the credentials and returns the recorder's connection settings. A plain
    /// `http://` endpoint is accepted only on loopback.
    pub fn resolve(&self) -> anyhow::Result<recorder::S3Config> {
        use anyhow::Context;
        use secrecy::ExposeSecret;

        let access_key_id = self
            .access_key_id
            .resolve()
            .with_context(|| format!("cannot read {SECTION}.access_key_id"))?;
        let secret_access_key = self
            .secret_access_key
            .resolve()
            .with_context(|| format!("cannot read {SECTION}.secret_access_key"))?;
        Ok(recorder::S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            access_key_id: access_key_id.expose_secret().to_owned(),
            secret_access_key: secret_access_key.expose_secret().to_owned(),
            allow_http: is_loopback_http(&self.endpoint),
            operation_timeout: self.operation_timeout,
            max_retries: self.max_retries,
        })
    }
}

fn is_loopback_http(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    url.scheme() == "http" && loopback
}

/// Checks that `endpoint` is an `https://` URL with a host and no credentials, or an
/// `http://` URL on loopback. The message names the value unless it contains credentials.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    const EXAMPLE: &str = "such as \"https://s3.eu-central-1.amazonaws.com\"";
    let url = url::Url::parse(endpoint).map_err(|error| {
        format!("invalid URL {endpoint:?} ({error}); write the S3 API's URL, {EXAMPLE}")
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "the URL contains credentials; remove them and set {SECTION}.access_key_id and secret_access_key instead"
        ));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback_http(endpoint) => Ok(()),
        "http" => Err(format!(
            "{endpoint:?} is not an `https://` URL; plain `http://` is accepted only on loopback"
        )),
        _ => Err(format!("{endpoint:?} is not an `https://` URL {EXAMPLE}")),
    }
}

fn required(
    leaf: &Option<Lenient<String>>,
    key: &str,
    expected: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<String> {
    let full = format!("{SECTION}.{key}");
    match take(leaf, &full, expected, problems) {
        Some(value) if !value.trim().is_empty() => Some(value),
        _ => {
            if leaf.is_none() || matches!(leaf, Some(Lenient::Valid(_))) {
                problems.push(ConfigProblem {
                    key: full,
                    message: format!("missing; set it to {expected}"),
                });
            }
            None
        }
    }
}

fn secret(
    leaf: &Option<Lenient<String>>,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<SecretRef> {
    let text = required(leaf, key, "a secret reference such as `env:NAME`", problems)?;
    match SecretRef::parse(&text) {
        Ok(reference) => Some(reference),
        Err(error) => {
            problems.push(ConfigProblem {
                key: format!("{SECTION}.{key}"),
                message: error.to_string(),
            });
            None
        }
    }
}

/// Validates the section. Returns `None` when a problem was recorded.
pub fn validate_recordings_s3(
    raw: &RawRecordingsS3,
    problems: &mut Vec<ConfigProblem>,
) -> Option<RecordingsS3Config> {
    let before = problems.len();
    let endpoint = required(&raw.endpoint, "endpoint", "an `https://` URL", problems);
    if let Some(endpoint) = &endpoint
        && let Err(message) = check_endpoint(endpoint)
    {
        problems.push(ConfigProblem {
            key: format!("{SECTION}.endpoint"),
            message,
        });
    }
    let region = take(
        &raw.region,
        &format!("{SECTION}.region"),
        "a region name",
        problems,
    )
    .unwrap_or_else(|| "us-east-1".to_owned());
    let bucket = required(&raw.bucket, "bucket", "a bucket name", problems);
    let prefix = take(
        &raw.prefix,
        &format!("{SECTION}.prefix"),
        "a key prefix",
        problems,
    )
    .unwrap_or_default()
    .trim_matches('/')
    .to_owned();
    let access_key_id = secret(&raw.access_key_id, "access_key_id", problems);
    let secret_access_key = secret(&raw.secret_access_key, "secret_access_key", problems);
    let default_timeout = recorder::S3Config::DEFAULT_OPERATION_TIMEOUT.as_secs();
    let operation_timeout_seconds = bounded(
        &raw.operation_timeout_seconds,
        "operation_timeout_seconds",
        (1, 300, "seconds"),
        default_timeout,
        problems,
    );
    let max_retries = bounded(
        &raw.max_retries,
        "max_retries",
        (0, 10, "retries"),
        recorder::S3Config::DEFAULT_MAX_RETRIES as u64,
        problems,
    );

    if problems.len() > before {
        return None;
    }
    Some(RecordingsS3Config {
        endpoint: endpoint?,
        region,
        bucket: bucket?,
        prefix,
        access_key_id: access_key_id?,
        secret_access_key: secret_access_key?,
        operation_timeout: std::time::Duration::from_secs(operation_timeout_seconds),
        max_retries: max_retries as usize,
    })
}

/// Reads a whole number in `min..=max`, recording a problem naming the key if it is
/// out of range.
fn bounded(
    leaf: &Option<Lenient<u64>>,
    key: &str,
    (min, max, unit): (u64, u64, &str),
    default: u64,
    problems: &mut Vec<ConfigProblem>,
) -> u64 {
    let full = format!("{SECTION}.{key}");
    let value = take(leaf, &full, "a whole number", problems).unwrap_or(default);
    if !(min..=max).contains(&value) {
        problems.push(ConfigProblem {
            key: full,
            message: format!("{value} is out of range; use {min} to {max} {unit}"),
        });
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> (Option<RecordingsS3Config>, Vec<ConfigProblem>) {
        let raw: RawRecordingsS3 = toml::from_str(text).expect("valid TOML");
        let mut problems = Vec::new();
        let config = validate_recordings_s3(&raw, &mut problems);
        (config, problems)
    }

    #[test]
    fn s3_section_accepts_references() {
        let (config, problems) = validate(
            "endpoint = \"https://s3.example.test\"\nbucket = \"rec\"\nprefix = \"/site-a/\"\n\
             access_key_id = \"env:S3_KEY\"\nsecret_access_key = \"file:/run/s3-secret\"\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(config.prefix, "site-a");
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.access_key_id, SecretRef::Env("S3_KEY".into()));
        assert_eq!(config.operation_timeout, std::time::Duration::from_secs(10));
        assert_eq!(config.max_retries, 3);
    }

    #[test]
    fn s3_section_bounds_timeout_and_retries() {
        let base = "endpoint = \"https://s3.example.test\"\nbucket = \"rec\"\n\
                    access_key_id = \"env:S3_KEY\"\nsecret_access_key = \"env:S3_SECRET\"\n";
        let (config, problems) =
            validate(&format!("{base}operation_timeout_seconds = 3\nmax_retries = 0\n"));
        assert!(problems.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(config.operation_timeout, std::time::Duration::from_secs(3));
        assert_eq!(config.max_retries, 0);

        let (config, problems) =
            validate(&format!("{base}operation_timeout_seconds = 0\nmax_retries = 11\n"));
        assert!(config.is_none());
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sessions.recordings_s3.operation_timeout_seconds",
                "sessions.recordings_s3.max_retries"
            ]
        );
    }

    #[test]
    fn s3_section_rejects_inline_secret_and_plain_http() {
        let (config, problems) = validate(
            "endpoint = \"http://s3.example.test\"\nbucket = \"rec\"\n\
             access_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"env:S3_SECRET\"\n",
        );
        assert!(config.is_none());
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "sessions.recordings_s3.endpoint",
                "sessions.recordings_s3.access_key_id"
            ]
        );
        assert!(
            !problems[1].message.contains("AKIAEXAMPLE"),
            "the message does not repeat the inline value"
        );
    }

    #[test]
    fn s3_section_allows_http_on_loopback_only() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost/"));
        assert!(!is_loopback_http("http://10.0.0.5:9000"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
        assert!(!is_loopback_http("http://127.0.0.1.example.test/"));
    }

    #[test]
    fn s3_endpoint_must_be_a_url() {
        let base = "bucket = \"rec\"\naccess_key_id = \"env:S3_KEY\"\n\
                    secret_access_key = \"env:S3_SECRET\"\n";
        for (endpoint, expected) in [
            ("https://", "invalid URL \"https://\""),
            (
                "https://s3 example.test",
                "invalid URL \"https://s3 example.test\"",
            ),
            ("s3.example.test", "invalid URL \"s3.example.test\""),
            (
                "ftp://s3.example.test",
                "\"ftp://s3.example.test\" is not an `https://` URL",
            ),
            (
                "https://key:hunter2@s3.example.test",
                "contains credentials",
            ),
        ] {
            let (config, problems) = validate(&format!("endpoint = {endpoint:?}\n{base}"));
            assert!(config.is_none(), "{endpoint}");
            assert_eq!(problems.len(), 1, "{endpoint}: {problems:?}");
            assert_eq!(problems[0].key, "sessions.recordings_s3.endpoint");
            assert!(
                problems[0].message.contains(expected),
                "{endpoint}: {problems:?}"
            );
            assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
        }
    }
}
