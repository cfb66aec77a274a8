//! The Infisical credential source against a fake Infisical server on loopback.

mod infisical_fake;

use std::sync::Arc;
use std::time::Duration;

use broker::clock::ManualClock;
use broker::config::SecretRef;
use broker::config::secrets::InfisicalConfig;
use broker::secrets::{
    CredentialError, CredentialField, CredentialRef, CredentialSource, InfisicalError,
    InfisicalSource,
};
use infisical_fake::{CLIENT_ID, ENVIRONMENT, FakeInfisical, PROJECT_ID};

const CLIENT_SECRET: &str = "fake-client-secret-0123";
const SEED: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

struct Setup {
    fake: FakeInfisical,
    config: InfisicalConfig,
    _secret_dir: tempfile::TempDir,
}

/// Fills a fake with the demo-bank shared credential and a client configured for it, with
/// short retry waits.
async fn setup_with(fake: FakeInfisical, client_secret: &str) -> Setup {
    fake.set_secret("/strongroom/demo-bank", "USERNAME", "alice");
    fake.set_secret("/strongroom/demo-bank", "PASSWORD", "<p&ss>'\"$");
    fake.set_secret("/strongroom/demo-bank", "TOTP_SEED", SEED);

    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{client_secret}\n")).unwrap();
    let mut config = InfisicalConfig::new(
        &fake.url,
        CLIENT_ID,
        SecretRef::File(secret_file),
        PROJECT_ID,
        ENVIRONMENT,
    );
    config.max_retry_wait = Duration::from_millis(20);
    config.timeout = Duration::from_secs(5);
    Setup {
        fake,
        config,
        _secret_dir: secret_dir,
    }
}

async fn setup() -> Setup {
    setup_with(FakeInfisical::start(CLIENT_SECRET).await, CLIENT_SECRET).await
}

fn shared() -> CredentialRef {
    CredentialRef::shared("demo-bank").unwrap()
}

#[tokio::test]
async fn fetch_reads_the_site_folder() {
    let setup = setup().await;
    let source = InfisicalSource::new(&setup.config).unwrap();

    let credentials = source.fetch(&shared()).await.unwrap();

    assert_eq!(credentials.username.expose(), "alice");
    assert_eq!(credentials.password.expose(), "<p&ss>'\"$");
    assert_eq!(credentials.to_protocol(59).totp.unwrap().expose(), "287082");
    let query = setup.fake.last_query();
    assert_eq!(query.get("projectId").map(String::as_str), Some(PROJECT_ID));
    assert_eq!(
        query.get("environment").map(String::as_str),
        Some(ENVIRONMENT)
    );
    assert_eq!(
        query.get("secretPath").map(String::as_str),
        Some("/strongroom/demo-bank")
    );
    assert_eq!(
        query.get("viewSecretValue").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        query.get("expandSecretReferences").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        query.get("include_imports").map(String::as_str),
        Some("false")
    );
    assert_eq!(setup.fake.logins(), 1);
}

#[tokio::test]
async fn token_is_reused_across_fetches() {
    let setup = setup().await;
    let source = InfisicalSource::new(&setup.config).unwrap();

    source.fetch(&shared()).await.unwrap();
    source.fetch(&shared()).await.unwrap();

    assert_eq!(setup.fake.logins(), 1);
    assert_eq!(setup.fake.secret_reads(), 6);
}

#[tokio::test]
async fn personal_credential_has_its_own_folder_and_no_seed() {
    let setup = setup().await;
    setup
        .fake
        .set_secret("/strongroom/demo-bank/users/u-42", "USERNAME", "bob");
    setup
        .fake
        .set_secret("/strongroom/demo-bank/users/u-42", "PASSWORD", "pässwörd€");
    let source = InfisicalSource::new(&setup.config).unwrap();

    let credentials = source
        .fetch(&CredentialRef::personal("demo-bank", "u-42").unwrap())
        .await
        .unwrap();

    assert_eq!(credentials.username.expose(), "bob");
    assert_eq!(credentials.password.expose(), "pässwörd€");
    assert!(credentials.totp_seed.is_none());
}

#[tokio::test]
async fn expired_token_causes_one_login_and_retry() {
    let setup = setup().await;
    let source = InfisicalSource::new(&setup.config).unwrap();
    source.fetch(&shared()).await.unwrap();

    setup.fake.expire_tokens();
    let credentials = source.fetch(&shared()).await.unwrap();

    assert_eq!(credentials.username.expose(), "alice");
    assert_eq!(setup.fake.logins(), 2);
}

#[tokio::test]
async fn token_is_renewed_before_expiry() {
    let setup = setup().await;
    setup.fake.set_token_ttl(600);
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let mut config = setup.config.clone();
    config.token_renew_margin = Duration::from_secs(60);
    let source = InfisicalSource::with_clock(&config, clock.clone()).unwrap();
    source.fetch(&shared()).await.unwrap();

    clock.advance(chrono::Duration::seconds(530));
    source.fetch(&shared()).await.unwrap();
    let logins_before_margin = setup.fake.logins();
    clock.advance(chrono::Duration::seconds(20));
    source.fetch(&shared()).await.unwrap();

    assert_eq!(logins_before_margin, 1);
    assert_eq!(setup.fake.logins(), 2);
}

#[tokio::test]
async fn rate_limit_is_retried_then_succeeds() {
    let setup = setup().await;
    let source = InfisicalSource::new(&setup.config).unwrap();
    source.fetch(&shared()).await.unwrap();

    setup.fake.rate_limit_next(2, 1);
    let credentials = source.fetch(&shared()).await.unwrap();

    assert_eq!(credentials.password.expose(), "<p&ss>'\"$");
    assert_eq!(setup.fake.rate_limited(), 2);
}

#[tokio::test]
async fn login_rate_limit_is_retried() {
    let setup = setup().await;
    setup.fake.rate_limit_next(1, 1);
    let source = InfisicalSource::new(&setup.config).unwrap();

    source.fetch(&shared()).await.unwrap();

    assert_eq!(setup.fake.rate_limited(), 1);
    assert_eq!(setup.fake.logins(), 1);
}

#[tokio::test]
async fn endless_rate_limit_gives_up_after_bounded_attempts() {
    let setup = setup().await;
    let mut config = setup.config.clone();
    config.rate_limit_retries = 2;
    let source = InfisicalSource::new(&config).unwrap();
    source.fetch(&shared()).await.unwrap();

    setup.fake.rate_limit_next(u32::MAX, 5);
    let error = source.fetch(&shared()).await.unwrap_err();

    let CredentialError::Infisical(InfisicalError::RateLimited { attempts, .. }) = &error else {
        panic!("expected a rate-limit error, got {error:?}");
    };
    assert_eq!(*attempts, 3);
    assert_eq!(setup.fake.rate_limited(), 3);
    let message = error.to_string();
    assert!(
        message.contains("secret USERNAME in folder /strongroom/demo-bank"),
        "{message}"
    );
    assert!(
        message.contains("Please try again in 5 seconds"),
        "{message}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let setup = setup().await;
    let source = InfisicalSource::new(&setup.config).unwrap();
    source.fetch(&shared()).await.unwrap();

    setup.fake.fail_next(1, 500);
    source.fetch(&shared()).await.unwrap();
    setup.fake.fail_next(2, 503);
    let credentials = source.fetch(&shared()).await.unwrap();

    assert_eq!(credentials.password.expose(), "<p&ss>'\"$");
    assert_eq!(setup.fake.server_errors(), 3);
}

#[tokio::test]
async fn login_server_error_is_retried() {
    let setup = setup().await;
    setup.fake.fail_next(1, 502);
    let source = InfisicalSource::new(&setup.config).unwrap();

    source.fetch(&shared()).await.unwrap();

    assert_eq!(setup.fake.server_errors(), 1);
    assert_eq!(setup.fake.logins(), 1);
}

#[tokio::test]
async fn endless_server_errors_give_up_with_the_server_message() {
    let setup = setup().await;
    let mut config = setup.config.clone();
    config.rate_limit_retries = 2;
    let source = InfisicalSource::new(&config).unwrap();
    source.fetch(&shared()).await.unwrap();

    setup.fake.fail_next(u32::MAX, 500);
    let error = source.fetch(&shared()).await.unwrap_err();

    assert_eq!(setup.fake.server_errors(), 3);
    let message = error.to_string();
    assert!(message.contains("Something went wrong"), "{message}");
    assert!(
        message.contains("secret USERNAME in folder /strongroom/demo-bank"),
        "{message}"
    );
}

#[tokio::test]
async fn hidden_value_is_an_error() {
    let setup = setup().await;
    setup.fake.set_hide_values(true);
    let source = InfisicalSource::new(&setup.config).unwrap();

    let error = source.fetch(&shared()).await.unwrap_err();

    assert!(
        matches!(
            error,
            CredentialError::Infisical(InfisicalError::Hidden { .. })
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("USERNAME"), "{message}");
    assert!(message.contains("read secret values"), "{message}");
}

#[tokio::test]
async fn missing_password_is_not_found_by_name() {
    let setup = setup().await;
    setup
        .fake
        .set_secret("/strongroom/other-bank", "USERNAME", "Mk-username-value");
    let source = InfisicalSource::new(&setup.config).unwrap();

    let error = source
        .fetch(&CredentialRef::shared("other-bank").unwrap())
        .await
        .unwrap_err();

    assert!(
        matches!(error, CredentialError::NotFound { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("secret PASSWORD in folder /strongroom/other-bank"),
        "{message}"
    );
    assert!(message.contains("NotFoundError"), "{message}");
    assert!(!message.contains("Mk-username-value"), "{message}");
}

#[tokio::test]
async fn wrong_client_secret_is_a_login_error() {
    let fake = FakeInfisical::start(CLIENT_SECRET).await;
    let setup = setup_with(fake, "Mk-wrong-client-secret").await;
    let source = InfisicalSource::new(&setup.config).unwrap();

    let error = source.fetch(&shared()).await.unwrap_err();

    assert!(
        matches!(
            error,
            CredentialError::Infisical(InfisicalError::Login { .. })
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(CLIENT_ID), "{message}");
    assert!(
        message.contains("HTTP 401 UnauthorizedError: Invalid credentials"),
        "{message}"
    );
    assert!(!message.contains("Mk-wrong-client-secret"), "{message}");
    assert_eq!(setup.fake.failed_logins(), 1);
}

#[tokio::test]
async fn missing_client_secret_file_is_named() {
    let setup = setup().await;
    let mut config = setup.config.clone();
    config.client_secret = SecretRef::File("/nonexistent/strongroom-client-secret".into());
    let source = InfisicalSource::new(&config).unwrap();

    let error = source.fetch(&shared()).await.unwrap_err();

    assert!(
        error
            .to_string()
            .contains("file:/nonexistent/strongroom-client-secret"),
        "{error}"
    );
    assert_eq!(setup.fake.logins() + setup.fake.failed_logins(), 0);
}

#[tokio::test]
async fn untypeable_value_is_rejected_not_altered() {
    let setup = setup().await;
    setup
        .fake
        .set_secret("/strongroom/demo-bank", "PASSWORD", "Mk-first-line\nsecond");
    let source = InfisicalSource::new(&setup.config).unwrap();

    let error = source.fetch(&shared()).await.unwrap_err();

    assert!(
        matches!(
            error,
            CredentialError::Invalid {
                field: CredentialField::Password,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("line break"), "{error}");
    assert!(!error.to_string().contains("Mk-"), "{error}");
}

#[tokio::test]
async fn wrong_project_is_reported_with_the_server_message() {
    let setup = setup().await;
    let mut config = setup.config.clone();
    config.project_id = "no-such-project".to_owned();
    let source = InfisicalSource::new(&config).unwrap();

    let error = source.fetch(&shared()).await.unwrap_err();

    assert!(
        error
            .to_string()
            .contains("Project with ID 'no-such-project' not found"),
        "{error}"
    );
}

#[tokio::test]
async fn private_ca_is_trusted_only_when_configured() {
    let fake = FakeInfisical::start_tls(CLIENT_SECRET).await;
    let ca_cert = fake.ca_cert.clone().unwrap();
    let setup = setup_with(fake, CLIENT_SECRET).await;

    let untrusted = InfisicalSource::new(&setup.config).unwrap();
    let error = untrusted.fetch(&shared()).await.unwrap_err();
    assert!(
        matches!(
            error,
            CredentialError::Infisical(InfisicalError::Transport { .. })
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .to_ascii_lowercase()
            .contains("certificate"),
        "{error}"
    );

    let mut config = setup.config.clone();
    config.ca_cert = Some(ca_cert);
    let trusted = InfisicalSource::new(&config).unwrap();
    let credentials = trusted.fetch(&shared()).await.unwrap();
    assert_eq!(credentials.username.expose(), "alice");
}

#[tokio::test]
async fn fake_rejects_a_read_without_project_or_environment() {
    let setup = setup().await;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!(
            "{}/api/v1/auth/universal-auth/login",
            setup.fake.url
        ))
        .json(&serde_json::json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap();

    let response = http
        .get(format!(
            "{}/api/v4/secrets/USERNAME?environment=prod",
            setup.fake.url
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Missing project id or environment");
    assert_eq!(body["error"], "BadRequestError");
    assert_eq!(body["statusCode"], 400);
    assert!(body["reqId"].is_string());
}
