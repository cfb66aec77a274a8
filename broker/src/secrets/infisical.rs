//! Bank credentials read from Infisical through a machine identity with Universal Auth.
//!
//! Each site has a folder under `secrets.infisical.secret_path_prefix`: the shared
//! credential lives in `PREFIX/SITE` and a person's own credential in
//! `PREFIX/SITE/users/USER_ID`. Each folder contains the secrets `USERNAME`, `PASSWORD`
//! and, when the bank asks for a one-time code, `TOTP_SEED` (base32 or an
//! `otpauth://` URI). A missing `USERNAME` or `PASSWORD` is a not-found error naming
//! the secret; a missing `TOTP_SEED` means the login has no second factor.
//!
//! The client logs in with `POST /api/v1/auth/universal-auth/login`, keeps the access
//! token until `renew margin` before its `expiresIn`, and reads single secrets through
//! `GET /api/v4/secrets/{name}`. An expired or revoked token (401, or 403 with
//! `TokenError`) causes one fresh login and one retry. A 429 is retried a bounded number
//! of times after the wait the server requests, capped; a 5xx response is retried the
//! same number of times with exponential backoff. Redirects are not followed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use protocol::SecretString;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{BankCredentials, CredentialError, CredentialRef, CredentialSource};
use crate::clock::{Clock, SystemClock};
use crate::config::SecretRef;
use crate::config::secrets::InfisicalConfig;

const LOGIN_PATH: &str = "/api/v1/auth/universal-auth/login";
const SECRET_PATH: &str = "/api/v4/secrets/";
const USERNAME_SECRET: &str = "USERNAME";
const PASSWORD_SECRET: &str = "PASSWORD";
const TOTP_SEED_SECRET: &str = "TOTP_SEED";
/// Maximum length, in characters, of a server message kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;
/// Wait before retrying a 429 that names no wait.
const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);
/// Wait before the first retry after a 5xx response; each further retry doubles it.
const SERVER_ERROR_FIRST_WAIT: Duration = Duration::from_millis(250);

/// A secret's folder and name in the configured project and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretLocation {
    pub path: String,
    pub name: String,
}

impl fmt::Display for SecretLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret {} in folder {}", self.name, self.path)
    }
}

/// The fields of Infisical's error body `{reqId, statusCode, message, error}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    /// Error class, such as `TokenError` or `PermissionDenied`.
    pub error: Option<String>,
    pub message: Option<String>,
    pub req_id: Option<String>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(error) = &self.error {
            write!(f, " {error}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(req_id) = &self.req_id {
            write!(f, " (request id {req_id})")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    req_id: Option<String>,
    message: Option<serde_json::Value>,
    error: Option<String>,
}

impl ApiFailure {
    fn parse(status: StatusCode, body: &[u8]) -> ApiFailure {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let (error, message, req_id) = match parsed {
            Some(body) => {
                let message = body.message.map(|message| match message {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                });
                (body.error, message, body.req_id)
            }
            None => (None, None, None),
        };
        ApiFailure {
            status: status.as_u16(),
            error,
            message: message.map(|text| truncate(&text)),
            req_id,
        }
    }

    fn is_token_error(&self) -> bool {
        self.status == 401 || (self.status == 403 && self.error.as_deref() == Some("TokenError"))
    }

    fn is_server_error(&self) -> bool {
        (500..600).contains(&self.status)
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    short.push('…');
    short
}

/// Error from a request to Infisical. Messages name the secret and folder, never a value.
#[derive(Debug, thiserror::Error)]
pub enum InfisicalError {
    #[error(
        "cannot read the Infisical client secret from {reference}: {error}; check secrets.infisical.client_secret"
    )]
    ClientSecret { reference: String, error: String },
    #[error("cannot build the Infisical HTTP client: {0}")]
    Client(String),
    #[error(
        "Infisical rejected the Universal Auth login of client id {client_id} ({failure}); check secrets.infisical.client_id and the client secret it references"
    )]
    Login {
        client_id: String,
        failure: Box<ApiFailure>,
    },
    #[error("Infisical request for {location} failed ({failure}){hint}")]
    Api {
        location: SecretLocation,
        failure: Box<ApiFailure>,
        hint: &'static str,
    },
    #[error(
        "Infisical returned {location} with its value hidden; allow the machine identity to read secret values in environment {environment}"
    )]
    Hidden {
        location: SecretLocation,
        environment: String,
    },
    #[error(
        "Infisical still rate-limited the request for {what} after {attempts} attempts ({message}); lower the request rate or raise the identity's rate limit"
    )]
    RateLimited {
        what: String,
        attempts: u32,
        message: String,
    },
    #[error(
        "cannot reach Infisical at {url} for {what}: {error}; check secrets.infisical.url and the network path"
    )]
    Transport {
        url: String,
        what: String,
        error: String,
    },
    #[error("unexpected response from Infisical for {what}: {error}")]
    Decode { what: String, error: String },
}

impl InfisicalError {
    pub fn kind(&self) -> &'static str {
        match self {
            InfisicalError::ClientSecret { .. } => "infisical_client_secret",
            InfisicalError::Client(_) => "infisical_client",
            InfisicalError::Login { .. } => "infisical_login",
            InfisicalError::Api { .. } => "infisical_api",
            InfisicalError::Hidden { .. } => "infisical_value_hidden",
            InfisicalError::RateLimited { .. } => "infisical_rate_limited",
            InfisicalError::Transport { .. } => "infisical_unreachable",
            InfisicalError::Decode { .. } => "infisical_bad_response",
        }
    }
}

/// Returns how long to wait before retrying a 429, never more than `cap`.
///
/// The `Retry-After` header in seconds wins. Without it, the wait is the N of
/// Infisical's message "Please try again in N seconds", or else one second.
pub fn rate_limit_wait(
    message: Option<&str>,
    retry_after: Option<&str>,
    cap: Duration,
) -> Duration {
    let from_header = retry_after.and_then(|value| value.trim().parse::<u64>().ok());
    let from_message = message.and_then(|message| {
        let lower = message.to_ascii_lowercase();
        let rest = &lower[lower.find("try again in ")? + "try again in ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    });
    let wait = from_header
        .or(from_message)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_RETRY_WAIT);
    wait.min(cap)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginResponse {
    access_token: SecretString,
    expires_in: i64,
}

#[derive(Deserialize)]
struct SecretResponse {
    secret: SecretBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretBody {
    secret_key: String,
    #[serde(default)]
    secret_value: SecretString,
    #[serde(default)]
    secret_value_hidden: bool,
}

struct AccessToken {
    value: SecretString,
    renew_at: Option<DateTime<Utc>>,
}

/// The outcome of one HTTP exchange, before retries are decided.
enum Reply {
    Ok(Vec<u8>),
    Failed(ApiFailure, Option<String>),
}

/// An authenticated connection to Infisical, shared by the credential source and the
/// recording key store. It logs in with Universal Auth, caches and renews the access
/// token, logs in once more after a rejected token and retries a bounded number of
/// times after 429, with the configured timeouts and extra certificate authority.
pub struct InfisicalClient {
    http: reqwest::Client,
    config: InfisicalConfig,
    clock: Arc<dyn Clock>,
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl fmt::Debug for InfisicalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfisicalClient")
            .field("url", &self.config.url)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

/// Infisical client implementing [`CredentialSource`].
pub struct InfisicalSource {
    client: InfisicalClient,
}

impl fmt::Debug for InfisicalSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfisicalSource")
            .field("url", &self.client.config.url)
            .field("client_id", &self.client.config.client_id)
            .field("project_id", &self.client.config.project_id)
            .field("environment", &self.client.config.environment)
            .finish_non_exhaustive()
    }
}

impl InfisicalSource {
    pub fn new(config: &InfisicalConfig) -> Result<InfisicalSource, InfisicalError> {
        InfisicalSource::with_clock(config, Arc::new(SystemClock))
    }

    /// Builds the client with a given clock for token expiry.
    pub fn with_clock(
        config: &InfisicalConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<InfisicalSource, InfisicalError> {
        Ok(InfisicalSource {
            client: InfisicalClient::with_clock(config, clock)?,
        })
    }

    /// Returns the folder and names of the three secrets of a credential.
    pub fn locations(&self, reference: &CredentialRef) -> [SecretLocation; 3] {
        let folder = match reference {
            CredentialRef::Shared { site } => {
                format!("{}/{site}", self.client.config.secret_path_prefix)
            }
            CredentialRef::Personal { site, user_id } => {
                format!(
                    "{}/{site}/users/{user_id}",
                    self.client.config.secret_path_prefix
                )
            }
        };
        [USERNAME_SECRET, PASSWORD_SECRET, TOTP_SEED_SECRET].map(|name| SecretLocation {
            path: folder.clone(),
            name: name.to_owned(),
        })
    }

    async fn read_credentials(
        &self,
        reference: &CredentialRef,
    ) -> Result<BankCredentials, CredentialError> {
        let [username_at, password_at, seed_at] = self.locations(reference);
        let not_found = |location: &SecretLocation, detail: String| CredentialError::NotFound {
            reference: reference.to_string(),
            detail: format!(
                "Infisical has no {location} in environment {} ({detail})",
                self.client.config.environment
            ),
        };

        let username = match self.read_secret(&username_at).await? {
            Ok(value) => value,
            Err(detail) => return Err(not_found(&username_at, detail)),
        };
        let password = match self.read_secret(&password_at).await? {
            Ok(value) => value,
            Err(detail) => return Err(not_found(&password_at, detail)),
        };
        let totp_seed = self.read_secret(&seed_at).await?.ok();

        BankCredentials::new(reference, username, password, totp_seed)
    }

    /// Reads one secret. The inner `Err` is the server's explanation of a 404.
    #[tracing::instrument(skip_all, fields(infisical.secret = %location.name, infisical.path = %location.path))]
    async fn read_secret(
        &self,
        location: &SecretLocation,
    ) -> Result<Result<SecretString, String>, InfisicalError> {
        let what = location.to_string();
        let url = format!("{}{SECRET_PATH}{}", self.client.config.url, location.name);
        let query = [
            ("projectId", self.client.config.project_id.as_str()),
            ("environment", self.client.config.environment.as_str()),
            ("secretPath", location.path.as_str()),
            ("viewSecretValue", "true"),
            ("expandSecretReferences", "false"),
            ("include_imports", "false"),
        ];

        let reply = self
            .client
            .send(&url, &what, |http, token| {
                http.get(&url).query(&query).bearer_auth(token)
            })
            .await?;
        let failure = match reply {
            Ok(body) => {
                let response: SecretResponse =
                    serde_json::from_slice(&body).map_err(|error| InfisicalError::Decode {
                        what: what.clone(),
                        error: error.to_string(),
                    })?;
                if response.secret.secret_key != location.name {
                    return Err(InfisicalError::Decode {
                        what,
                        error: format!(
                            "the response carries secret {}",
                            response.secret.secret_key
                        ),
                    });
                }
                if response.secret.secret_value_hidden {
                    return Err(InfisicalError::Hidden {
                        location: location.clone(),
                        environment: self.client.config.environment.clone(),
                    });
                }
                return Ok(Ok(response.secret.secret_value));
            }
            Err(failure) => failure,
        };
        if failure.status == 404 {
            return Ok(Err(failure.to_string()));
        }
        let hint = match failure.status {
            300..=399 => {
                "; redirects are not followed, so set secrets.infisical.url to the final address"
            }
            400 => "; check secrets.infisical.project_id and environment",
            401 | 403 => {
                "; check the machine identity's access to this project, environment and folder"
            }
            _ => "",
        };
        Err(InfisicalError::Api {
            location: location.clone(),
            failure: Box::new(failure),
            hint,
        })
    }
}

impl InfisicalClient {
    pub fn new(config: &InfisicalConfig) -> Result<InfisicalClient, InfisicalError> {
        InfisicalClient::with_clock(config, Arc::new(SystemClock))
    }

    /// Builds the client with a given clock for token expiry.
    pub fn with_clock(
        config: &InfisicalConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<InfisicalClient, InfisicalError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("strongroom/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|error| {
                InfisicalError::Client(format!(
                    "cannot read secrets.infisical.ca_cert {}: {error}",
                    path.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                InfisicalError::Client(format!(
                    "secrets.infisical.ca_cert {} is not a PEM certificate: {error}",
                    path.display()
                ))
            })?;
            if certificates.is_empty() {
                return Err(InfisicalError::Client(format!(
                    "secrets.infisical.ca_cert {} contains no certificate",
                    path.display()
                )));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|error| InfisicalError::Client(error.to_string()))?;
        Ok(InfisicalClient {
            http,
            config: config.clone(),
            clock,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// Returns the validated `[secrets.infisical]` section the client was built from.
    pub fn config(&self) -> &InfisicalConfig {
        &self.config
    }

    /// Sends an authenticated request built by `build` from the HTTP client and an
    /// access token. A rejected token causes one fresh login and one retry, and a 429
    /// is retried after the wait the server requests, a bounded number of times. Returns
    /// the body of a 2xx response, or the server's failure for the caller to interpret.
    pub async fn send(
        &self,
        url: &str,
        what: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Result<Vec<u8>, ApiFailure>, InfisicalError> {
        let mut logged_in_again = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let token = self.access_token().await?;
            let request = build(&self.http, token.expose());
            drop(token);

            match self.exchange(request, url, what).await? {
                Reply::Ok(body) => return Ok(Ok(body)),
                Reply::Failed(failure, _) if failure.is_token_error() && !logged_in_again => {
                    tracing::info!(
                        status = failure.status,
                        error.class = failure.error.as_deref(),
                        "Infisical rejected the access token; logging in again"
                    );
                    logged_in_again = true;
                    *self.token.lock().await = None;
                }
                Reply::Failed(failure, retry_after) if failure.status == 429 => {
                    self.wait_after_rate_limit(what, attempts, &failure, retry_after.as_deref())
                        .await?;
                }
                Reply::Failed(failure, retry_after)
                    if failure.is_server_error()
                        && self
                            .wait_after_server_error(what, attempts, &failure, retry_after.as_deref())
                            .await => {}
                Reply::Failed(failure, _) => return Ok(Err(failure)),
            }
        }
    }

    /// Sleeps before the next attempt, or fails once the attempts are used up.
    async fn wait_after_rate_limit(
        &self,
        what: &str,
        attempts: u32,
        failure: &ApiFailure,
        retry_after: Option<&str>,
    ) -> Result<(), InfisicalError> {
        let message = failure
            .message
            .clone()
            .unwrap_or_else(|| "no message".to_owned());
        if attempts > self.config.rate_limit_retries {
            return Err(InfisicalError::RateLimited {
                what: what.to_owned(),
                attempts,
                message,
            });
        }
        let wait = rate_limit_wait(
            failure.message.as_deref(),
            retry_after,
            self.config.max_retry_wait,
        );
        tracing::warn!(
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            request_id = failure.req_id.as_deref(),
            "Infisical rate-limited a request; retrying"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sleeps before retrying a request that got a 5xx response and returns true, or
    /// returns false once the attempts are used up, so that the caller reports the
    /// server's own error. The wait doubles with each attempt from a quarter second, up
    /// to the configured cap; a `Retry-After` in seconds replaces it, also capped.
    async fn wait_after_server_error(
        &self,
        what: &str,
        attempts: u32,
        failure: &ApiFailure,
        retry_after: Option<&str>,
    ) -> bool {
        if attempts > self.config.rate_limit_retries {
            return false;
        }
        let cap = self.config.max_retry_wait;
        let wait = retry_after
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or_else(|| SERVER_ERROR_FIRST_WAIT.saturating_mul(1 << (attempts - 1).min(16)))
            .min(cap);
        tracing::warn!(
            attempt = attempts,
            status = failure.status,
            wait_ms = wait.as_millis() as u64,
            request_id = failure.req_id.as_deref(),
            request = what,
            "Infisical answered with a server error; retrying"
        );
        tokio::time::sleep(wait).await;
        true
    }

    /// Returns a valid access token, logging in when there is none or it is due for
    /// renewal. The lock is held during login so that concurrent fetches log in once.
    async fn access_token(&self) -> Result<SecretString, InfisicalError> {
        let mut slot = self.token.lock().await;
        let now = self.clock.now();
        if let Some(token) = slot.as_ref() {
            if token.renew_at.is_none_or(|renew_at| now < renew_at) {
                return Ok(token.value.clone());
            }
            tracing::info!("Renewing the Infisical access token before it expires");
        }
        let token = self.login().await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    #[tracing::instrument(skip_all, fields(infisical.client_id = %self.config.client_id))]
    async fn login(&self) -> Result<AccessToken, InfisicalError> {
        let client_secret = resolve(&self.config.client_secret)?;
        let url = format!("{}{LOGIN_PATH}", self.config.url);
        let what = "the Universal Auth login".to_owned();

        let mut attempts = 0;
        loop {
            attempts += 1;
            let body = serde_json::json!({
                "clientId": self.config.client_id,
                "clientSecret": client_secret.expose_secret(),
            });
            // NOTE: reqwest serialises the body into its own buffer, which is freed
            // without being cleared.
            let request = self.http.post(&url).json(&body);
            drop(body);

            match self.exchange(request, &url, &what).await? {
                Reply::Ok(body) => {
                    let response: LoginResponse =
                        serde_json::from_slice(&body).map_err(|error| InfisicalError::Decode {
                            what: what.clone(),
                            error: error.to_string(),
                        })?;
                    let renew_at = self.renew_at(response.expires_in);
                    tracing::info!(expires_in_s = response.expires_in, "Logged in to Infisical");
                    return Ok(AccessToken {
                        value: response.access_token,
                        renew_at,
                    });
                }
                Reply::Failed(failure, retry_after) if failure.status == 429 => {
                    self.wait_after_rate_limit(&what, attempts, &failure, retry_after.as_deref())
                        .await?;
                }
                Reply::Failed(failure, retry_after)
                    if failure.is_server_error()
                        && self
                            .wait_after_server_error(&what, attempts, &failure, retry_after.as_deref())
                            .await => {}
                Reply::Failed(failure, _) => {
                    return Err(InfisicalError::Login {
                        client_id: self.config.client_id.clone(),
                        failure: Box::new(failure),
                    });
                }
            }
        }
    }

    /// Computes the renewal time: `expires_in` seconds from now, less the configured margin but
    /// at most half the lifetime. A token without a lifetime is kept until rejected.
    fn renew_at(&self, expires_in: i64) -> Option<DateTime<Utc>> {
        if expires_in <= 0 {
            return None;
        }
        let lifetime = chrono::Duration::seconds(expires_in);
        let margin = chrono::Duration::from_std(self.config.token_renew_margin)
            .unwrap_or_default()
            .min(lifetime / 2);
        Some(self.clock.now() + lifetime - margin)
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        what: &str,
    ) -> Result<Reply, InfisicalError> {
        let transport = |error: reqwest::Error| InfisicalError::Transport {
            url: url.to_owned(),
            what: what.to_owned(),
            error: error_chain(&error),
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // NOTE: the response body of a secret read sits in reqwest's buffers and in this
        // vector, neither of which is zeroized.
        let body = response.bytes().await.map_err(transport)?.to_vec();
        if status.is_success() {
            Ok(Reply::Ok(body))
        } else {
            Ok(Reply::Failed(ApiFailure::parse(status, &body), retry_after))
        }
    }
}

fn resolve(reference: &SecretRef) -> Result<secrecy::SecretString, InfisicalError> {
    reference
        .resolve()
        .map_err(|error| InfisicalError::ClientSecret {
            reference: reference.to_string(),
            error: error.to_string(),
        })
}

/// Formats the error and its sources on one line, because reqwest's top-level message
/// alone hides the cause, such as a certificate that is not trusted.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl CredentialSource for InfisicalSource {
    fn name(&self) -> &'static str {
        "infisical"
    }

    fn fetch<'a>(
        &'a self,
        reference: &'a CredentialRef,
    ) -> BoxFuture<'a, Result<BankCredentials, CredentialError>> {
        Box::pin(self.read_credentials(reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_wait_prefers_header_then_message_and_is_capped() {
        let cap = Duration::from_secs(30);
        let message = Some("Rate limit exceeded. Please try again in 7 seconds");

        assert_eq!(
            rate_limit_wait(message, Some("3"), cap),
            Duration::from_secs(3)
        );
        assert_eq!(rate_limit_wait(message, None, cap), Duration::from_secs(7));
        assert_eq!(rate_limit_wait(None, None, cap), DEFAULT_RETRY_WAIT);
        assert_eq!(
            rate_limit_wait(Some("Please try again in 600 seconds"), None, cap),
            cap
        );
    }

    #[test]
    fn error_body_fields_are_named() {
        let body = br#"{"reqId":"req-1","statusCode":403,"message":"Your token has expired. Please re-authenticate.","error":"TokenError"}"#;

        let failure = ApiFailure::parse(StatusCode::FORBIDDEN, body);

        assert!(failure.is_token_error());
        assert_eq!(
            failure.to_string(),
            "HTTP 403 TokenError: Your token has expired. Please re-authenticate. (request id req-1)"
        );
        assert_eq!(
            ApiFailure::parse(StatusCode::BAD_GATEWAY, b"<html>").to_string(),
            "HTTP 502"
        );
    }
}
