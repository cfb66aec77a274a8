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
        })
    }
}

fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(host, _port)| host);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
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
        && !endpoint.starts_with("https://")
        && !is_loopback_http(endpoint)
    {
        problems.push(ConfigProblem {
            key: format!("{SECTION}.endpoint"),
            message: format!(
                "{endpoint:?} is not an `https://` URL; plain `http://` is accepted only on loopback"
            ),
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
    })
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
    }
}
