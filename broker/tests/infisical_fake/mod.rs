//! A fake Infisical server on loopback that follows the documented API: Universal Auth
//! login, the v4 single-secret route with its query parameters, and error bodies of the
//! form `{reqId, statusCode, message, error}`.
//!
//! Switches let a test expire every issued token, respond to the next requests with 429,
//! hide secret values, and count logins and secret reads.

// Each test binary uses a different part of the fake.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

pub const CLIENT_ID: &str = "fake-client-id";
pub const PROJECT_ID: &str = "fake-project";
pub const ENVIRONMENT: &str = "prod";

#[derive(Default)]
struct FakeState {
    client_secret: String,
    token_ttl_seconds: i64,
    /// Issued tokens and whether each has expired.
    tokens: HashMap<String, bool>,
    /// `(environment, folder, name)` to value.
    secrets: HashMap<(String, String, String), String>,
    hide_values: bool,
    /// Requests that still get a 429 response; `u32::MAX` means all of them.
    rate_limited_requests: u32,
    rate_limit_seconds: u32,
    logins: u32,
    failed_logins: u32,
    secret_reads: u32,
    rate_limited: u32,
    last_query: HashMap<String, String>,
}

type Shared = Arc<Mutex<FakeState>>;

/// A running fake server, stopped on drop.
pub struct FakeInfisical {
    pub url: String,
    /// The CA certificate of the HTTPS listener, when it has one.
    pub ca_cert: Option<PathBuf>,
    state: Shared,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl FakeInfisical {
    /// Starts a plain-HTTP fake on 127.0.0.1.
    pub async fn start(client_secret: &str) -> FakeInfisical {
        FakeInfisical::start_with(client_secret, false).await
    }

    /// Starts an HTTPS fake on 127.0.0.1 with a certificate from a fresh local CA.
    pub async fn start_tls(client_secret: &str) -> FakeInfisical {
        FakeInfisical::start_with(client_secret, true).await
    }

    async fn start_with(client_secret: &str, tls: bool) -> FakeInfisical {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            client_secret: client_secret.to_owned(),
            token_ttl_seconds: 7200,
            rate_limit_seconds: 1,
            ..FakeState::default()
        }));
        let app = Router::new()
            .route("/api/v1/auth/universal-auth/login", post(login))
            .route("/api/v4/secrets/{secret_name}", get(read_secret))
            .fallback(not_found_route)
            .with_state(state.clone());

        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake Infisical listener");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let address: SocketAddr = listener.local_addr().expect("listener address");
        let handle = axum_server::Handle::new();
        let dir = tempfile::tempdir().expect("temporary directory");

        let (url, ca_cert, task) = if tls {
            drop(rustls::crypto::ring::default_provider().install_default());
            let generated = broker::http::tls::ensure_generated(
                dir.path(),
                &["localhost".to_owned()],
                &[address.ip()],
            )
            .expect("generate a test certificate");
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(
                &generated.cert,
                &generated.key,
            )
            .await
            .expect("load the test certificate");
            let server = axum_server::from_tcp_rustls(listener, config).handle(handle.clone());
            let task = tokio::spawn(async move {
                server
                    .serve(app.into_make_service())
                    .await
                    .expect("fake Infisical server");
            });
            (
                format!("https://localhost:{}", address.port()),
                Some(generated.ca_cert),
                task,
            )
        } else {
            let server = axum_server::from_tcp(listener).handle(handle.clone());
            let task = tokio::spawn(async move {
                server
                    .serve(app.into_make_service())
                    .await
                    .expect("fake Infisical server");
            });
            (format!("http://{address}"), None, task)
        };

        FakeInfisical {
            url,
            ca_cert,
            state,
            handle,
            task,
            _dir: dir,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake state lock")
    }

    pub fn set_secret(&self, folder: &str, name: &str, value: &str) {
        self.state().secrets.insert(
            (ENVIRONMENT.to_owned(), folder.to_owned(), name.to_owned()),
            value.to_owned(),
        );
    }

    /// Marks every token issued so far as expired.
    pub fn expire_tokens(&self) {
        for expired in self.state().tokens.values_mut() {
            *expired = true;
        }
    }

    pub fn set_token_ttl(&self, seconds: i64) {
        self.state().token_ttl_seconds = seconds;
    }

    /// Responds to the next `count` requests (logins and reads) with 429.
    pub fn rate_limit_next(&self, count: u32, wait_seconds: u32) {
        let mut state = self.state();
        state.rate_limited_requests = count;
        state.rate_limit_seconds = wait_seconds;
    }

    pub fn set_hide_values(&self, hide: bool) {
        self.state().hide_values = hide;
    }

    pub fn logins(&self) -> u32 {
        self.state().logins
    }

    pub fn failed_logins(&self) -> u32 {
        self.state().failed_logins
    }

    pub fn secret_reads(&self) -> u32 {
        self.state().secret_reads
    }

    pub fn rate_limited(&self) -> u32 {
        self.state().rate_limited
    }

    /// Query parameters of the last secret read.
    pub fn last_query(&self) -> HashMap<String, String> {
        self.state().last_query.clone()
    }
}

impl Drop for FakeInfisical {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.task.abort();
    }
}

fn error_response(status: StatusCode, error: &str, message: &str) -> Response {
    let body = json!({
        "reqId": format!("req-{}", Uuid::new_v4().simple()),
        "statusCode": status.as_u16(),
        "message": message,
        "error": error,
    });
    (status, Json(body)).into_response()
}

/// Returns a 429 response when the rate-limit switch is on, counting it.
fn rate_limit(state: &mut FakeState) -> Option<Response> {
    if state.rate_limited_requests == 0 {
        return None;
    }
    if state.rate_limited_requests != u32::MAX {
        state.rate_limited_requests -= 1;
    }
    state.rate_limited += 1;
    let message = format!(
        "Rate limit exceeded. Please try again in {} seconds",
        state.rate_limit_seconds
    );
    Some(error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "RateLimitError",
        &message,
    ))
}

async fn login(State(state): State<Shared>, body: Option<Json<Value>>) -> Response {
    let mut state = state.lock().expect("fake state lock");
    if let Some(response) = rate_limit(&mut state) {
        return response;
    }
    let Some(Json(body)) = body else {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "[{\"message\":\"Expected object\"}]",
        );
    };
    let (Some(client_id), Some(client_secret)) =
        (body["clientId"].as_str(), body["clientSecret"].as_str())
    else {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "[{\"path\":[\"clientId\"],\"message\":\"Required\"}]",
        );
    };
    if client_id != CLIENT_ID || client_secret != state.client_secret {
        state.failed_logins += 1;
        return error_response(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Invalid credentials",
        );
    }

    state.logins += 1;
    let token = format!("token-{}", Uuid::new_v4().simple());
    state.tokens.insert(token.clone(), false);
    let ttl = state.token_ttl_seconds;
    Json(json!({
        "accessToken": token,
        "expiresIn": ttl,
        "accessTokenMaxTTL": ttl,
        "tokenType": "Bearer",
    }))
    .into_response()
}

async fn read_secret(
    State(state): State<Shared>,
    Path(secret_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    if let Some(response) = rate_limit(&mut state) {
        return response;
    }

    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Missing authorization header",
        );
    };
    match state.tokens.get(token) {
        Some(false) => {}
        Some(true) => {
            return error_response(
                StatusCode::FORBIDDEN,
                "TokenError",
                "Your token has expired. Please re-authenticate.",
            );
        }
        None => return error_response(StatusCode::FORBIDDEN, "TokenError", "Invalid token"),
    }

    state.secret_reads += 1;
    state.last_query = query.clone();
    let (Some(project_id), Some(environment)) = (query.get("projectId"), query.get("environment"))
    else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "Missing project id or environment",
        );
    };
    if project_id != PROJECT_ID {
        return error_response(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("Project with ID '{project_id}' not found"),
        );
    }
    let folder = query
        .get("secretPath")
        .cloned()
        .unwrap_or_else(|| "/".to_owned());
    let key = (environment.clone(), folder.clone(), secret_name.clone());
    let Some(value) = state.secrets.get(&key).cloned() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("Secret with name '{secret_name}' not found"),
        );
    };

    let hidden =
        state.hide_values || query.get("viewSecretValue").map(String::as_str) == Some("false");
    let (value, hidden) = if hidden {
        ("<hidden-by-infisical>".to_owned(), true)
    } else {
        (value, false)
    };
    Json(json!({
        "secret": {
            "id": Uuid::new_v4().to_string(),
            "_id": Uuid::new_v4().to_string(),
            "workspace": PROJECT_ID,
            "environment": environment,
            "version": 1,
            "type": "shared",
            "secretKey": secret_name,
            "secretValue": value,
            "secretComment": "",
            "secretValueHidden": hidden,
            "secretPath": folder,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "updatedAt": "2026-01-01T00:00:00.000Z",
        }
    }))
    .into_response()
}

async fn not_found_route() -> Response {
    error_response(StatusCode::NOT_FOUND, "NotFoundError", "Route not found")
}
