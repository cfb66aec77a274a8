//! A fake Infisical server on loopback that follows the documented API: Universal Auth
//! login, the v4 single-secret route with its query parameters, the KMS key routes
//! under `/api/v1/kms/keys` (create, get by name, list, encrypt, decrypt, delete), and
//! error bodies of the form `{reqId, statusCode, message, error}`.
//!
//! Switches let a test expire every issued token, respond to the next requests with 429
//! or with a server error (Infisical's own 500 body, or a reverse proxy's plain-text
//! 502 to 504), hide secret values, make the KMS routes fail with 503, and count logins, secret reads
//! and KMS calls. KMS keys encrypt with real AES-256-GCM under key material that never
//! leaves the fake.

// Each test binary uses a different part of the fake.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
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
    /// Requests that still get a server error, and its status.
    failing_requests: u32,
    failure_status: u16,
    server_errors: u32,
    logins: u32,
    failed_logins: u32,
    secret_reads: u32,
    rate_limited: u32,
    last_query: HashMap<String, String>,
    /// KMS keys by id.
    kms_keys: HashMap<String, FakeKmsKey>,
    /// Names of the KMS keys deleted, in order.
    deleted_kms_keys: Vec<String>,
    kms_unavailable: bool,
    kms_encrypts: u32,
    kms_decrypts: u32,
}

struct FakeKmsKey {
    name: String,
    project_id: String,
    material: [u8; 32],
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
            .route("/api/v1/kms/keys", post(create_kms_key).get(list_kms_keys))
            .route("/api/v1/kms/keys/key-name/{key_name}", get(kms_key_by_name))
            .route(
                "/api/v1/kms/keys/{key_id}",
                axum::routing::delete(delete_kms_key),
            )
            .route("/api/v1/kms/keys/{key_id}/encrypt", post(kms_encrypt))
            .route("/api/v1/kms/keys/{key_id}/decrypt", post(kms_decrypt))
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

    /// Responds to the next `count` requests (any route) with `status`, a 5xx: 500
    /// carries Infisical's JSON error body, any other status the plain text that a
    /// reverse proxy in front of Infisical sends.
    pub fn fail_next(&self, count: u32, status: u16) {
        let mut state = self.state();
        state.failing_requests = count;
        state.failure_status = status;
    }

    /// Returns how many server errors the switch above has sent.
    pub fn server_errors(&self) -> u32 {
        self.state().server_errors
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

    /// Names of the KMS keys that exist, sorted.
    pub fn kms_key_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state()
            .kms_keys
            .values()
            .map(|key| key.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Names of the KMS keys deleted through the API, in order.
    pub fn deleted_kms_keys(&self) -> Vec<String> {
        self.state().deleted_kms_keys.clone()
    }

    /// Deletes a KMS key behind the client's back, as an operator could.
    pub fn remove_kms_key(&self, name: &str) {
        self.state().kms_keys.retain(|_, key| key.name != name);
    }

    /// Makes every KMS route respond with 503 while `unavailable` is true.
    pub fn set_kms_unavailable(&self, unavailable: bool) {
        self.state().kms_unavailable = unavailable;
    }

    pub fn kms_encrypts(&self) -> u32 {
        self.state().kms_encrypts
    }

    pub fn kms_decrypts(&self) -> u32 {
        self.state().kms_decrypts
    }

    /// Stops the server; later requests fail to connect.
    pub fn stop(&self) {
        self.handle.shutdown();
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

/// Returns a 429 response when the rate-limit switch is on, or a server error when that
/// switch is on, counting it.
fn rate_limit(state: &mut FakeState) -> Option<Response> {
    if state.failing_requests > 0 {
        state.failing_requests -= 1;
        state.server_errors += 1;
        let status =
            StatusCode::from_u16(state.failure_status).expect("the test sets a valid status");
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return Some(error_response(
                status,
                "InternalServerError",
                "Something went wrong",
            ));
        }
        let reason = status.canonical_reason().unwrap_or("Server Error");
        return Some((status, format!("{} {reason}\n", status.as_u16())).into_response());
    }
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

    if let Some(response) = reject_token(&state, &headers) {
        return response;
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

/// Returns the error response for a missing, expired or unknown access token.
fn reject_token(state: &FakeState, headers: &HeaderMap) -> Option<Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        return Some(error_response(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Missing authorization header",
        ));
    };
    match state.tokens.get(token) {
        Some(false) => None,
        Some(true) => Some(error_response(
            StatusCode::FORBIDDEN,
            "TokenError",
            "Your token has expired. Please re-authenticate.",
        )),
        None => Some(error_response(
            StatusCode::FORBIDDEN,
            "TokenError",
            "Invalid token",
        )),
    }
}

/// Applies the switches shared by every KMS route: 429, 503 and the token check.
fn kms_gate(state: &mut FakeState, headers: &HeaderMap) -> Option<Response> {
    if let Some(response) = rate_limit(state) {
        return Some(response);
    }
    if state.kms_unavailable {
        return Some(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "KMS is unavailable",
        ));
    }
    reject_token(state, headers)
}

fn kms_key_json(id: &str, key: &FakeKmsKey) -> Value {
    json!({
        "id": id,
        "orgId": "fake-org",
        "name": key.name,
        "description": "",
        "isDisabled": false,
        "projectId": key.project_id,
        "keyUsage": "encrypt-decrypt",
        "encryptionAlgorithm": "aes-256-gcm",
        "version": 1,
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00.000Z",
    })
}

/// Infisical's slug rule for key names: lowercase letters, digits and `-`, 1 to 32.
fn valid_key_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn key_not_found(key_id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NotFoundError",
        &format!("Key with ID {key_id} not found"),
    )
}

async fn create_kms_key(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    if let Some(response) = kms_gate(&mut state, &headers) {
        return response;
    }
    let Some(Json(body)) = body else {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "[{\"message\":\"Expected object\"}]",
        );
    };
    let (Some(project_id), Some(name)) = (body["projectId"].as_str(), body["name"].as_str()) else {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "[{\"path\":[\"name\"],\"message\":\"Required\"}]",
        );
    };
    if !valid_key_name(name) {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "[{\"path\":[\"name\"],\"message\":\"Name must be a valid slug\"}]",
        );
    }
    let algorithm = body["encryptionAlgorithm"]
        .as_str()
        .unwrap_or("aes-256-gcm");
    let usage = body["keyUsage"].as_str().unwrap_or("encrypt-decrypt");
    if algorithm != "aes-256-gcm" || usage != "encrypt-decrypt" {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "This fake supports only aes-256-gcm encrypt-decrypt keys",
        );
    }
    if project_id != PROJECT_ID {
        return error_response(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("Project with ID '{project_id}' not found"),
        );
    }
    if state
        .kms_keys
        .values()
        .any(|key| key.project_id == project_id && key.name == name)
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            &format!("Key with name \"{name}\" already exists"),
        );
    }
    let mut material = [0u8; 32];
    rand::fill(&mut material);
    let id = Uuid::new_v4().to_string();
    let key = FakeKmsKey {
        name: name.to_owned(),
        project_id: project_id.to_owned(),
        material,
    };
    let response = Json(json!({ "key": kms_key_json(&id, &key) })).into_response();
    state.kms_keys.insert(id, key);
    response
}

async fn kms_key_by_name(
    State(state): State<Shared>,
    Path(key_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    if let Some(response) = kms_gate(&mut state, &headers) {
        return response;
    }
    let Some(project_id) = query.get("projectId") else {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "Project ID is required",
        );
    };
    match state
        .kms_keys
        .iter()
        .find(|(_, key)| &key.project_id == project_id && key.name == key_name)
    {
        Some((id, key)) => Json(json!({ "key": kms_key_json(id, key) })).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("Key with name \"{key_name}\" not found"),
        ),
    }
}

async fn list_kms_keys(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    if let Some(response) = kms_gate(&mut state, &headers) {
        return response;
    }
    let Some(project_id) = query.get("projectId") else {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "Project ID is required",
        );
    };
    let offset: usize = query
        .get("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            "limit must be between 1 and 100",
        );
    }
    let mut keys: Vec<(&String, &FakeKmsKey)> = state
        .kms_keys
        .iter()
        .filter(|(_, key)| &key.project_id == project_id)
        .collect();
    keys.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let total = keys.len();
    let page: Vec<Value> = keys
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(id, key)| kms_key_json(id, key))
        .collect();
    Json(json!({ "keys": page, "totalCount": total })).into_response()
}

async fn delete_kms_key(
    State(state): State<Shared>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    if let Some(response) = kms_gate(&mut state, &headers) {
        return response;
    }
    match state.kms_keys.remove(&key_id) {
        Some(key) => {
            let body = json!({ "key": kms_key_json(&key_id, &key) });
            state.deleted_kms_keys.push(key.name);
            Json(body).into_response()
        }
        None => key_not_found(&key_id),
    }
}

/// Checks a request to a key's encrypt or decrypt route: the switches of
/// [`kms_gate`], the base64 string `field` of the body, and the key `key_id`. Returns
/// the key's cipher and the decoded field, or Infisical's error response.
fn kms_data_request(
    state: &mut FakeState,
    headers: &HeaderMap,
    key_id: &str,
    body: Option<Json<Value>>,
    field: &str,
) -> Result<(Aes256Gcm, Vec<u8>), Box<Response>> {
    if let Some(response) = kms_gate(state, headers) {
        return Err(Box::new(response));
    }
    let input = body
        .and_then(|Json(body)| body[field].as_str().map(str::to_owned))
        .and_then(|text| BASE64.decode(text).ok())
        .ok_or_else(|| {
            Box::new(error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailure",
                &format!("{field} must be base64 encoded"),
            ))
        })?;
    let key = state
        .kms_keys
        .get(key_id)
        .ok_or_else(|| Box::new(key_not_found(key_id)))?;
    Ok((Aes256Gcm::new(&key.material.into()), input))
}

/// Encrypts with AES-256-GCM under the key's material. The ciphertext is the 12-byte
/// nonce followed by the sealed bytes.
async fn kms_encrypt(
    State(state): State<Shared>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    let (cipher, plaintext) =
        match kms_data_request(&mut state, &headers, &key_id, body, "plaintext") {
            Ok(request) => request,
            Err(response) => return *response,
        };
    let mut nonce = [0u8; 12];
    rand::fill(&mut nonce);
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), plaintext.as_slice())
        .expect("small plaintext");
    state.kms_encrypts += 1;
    let ciphertext = [nonce.as_slice(), &sealed].concat();
    Json(json!({ "ciphertext": BASE64.encode(ciphertext) })).into_response()
}

async fn kms_decrypt(
    State(state): State<Shared>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let mut state = state.lock().expect("fake state lock");
    let (cipher, ciphertext) =
        match kms_data_request(&mut state, &headers, &key_id, body, "ciphertext") {
            Ok(request) => request,
            Err(response) => return *response,
        };
    let opened = ciphertext
        .split_first_chunk::<12>()
        .and_then(|(nonce, sealed)| cipher.decrypt(&Nonce::from(*nonce), sealed).ok());
    let Some(plaintext) = opened else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "Failed to decrypt data",
        );
    };
    state.kms_decrypts += 1;
    Json(json!({ "plaintext": BASE64.encode(plaintext) })).into_response()
}

async fn not_found_route() -> Response {
    error_response(StatusCode::NOT_FOUND, "NotFoundError", "Route not found")
}
