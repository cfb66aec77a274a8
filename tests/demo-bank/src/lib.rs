//! A small bank website for demos and end-to-end tests of Strongroom.
//!
//! The bank serves HTTPS on one port: a login form (username and password), a TOTP
//! step, an account page with a long statement, a PDF of that statement, and a note
//! form whose text is recorded. A second, plain-HTTP port serves `/received`, which
//! reports every login attempt, TOTP attempt and note the bank received, and `/ca.pem`,
//! the certificate authority of a generated TLS certificate. `/received` requires the
//! bearer token given at start, because it reveals what the bank was sent.

pub mod pages;
pub mod statement;
pub mod tls;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

const SESSION_COOKIE: &str = "demo_bank_session";

/// The one account of the bank. The files match what `strongroom credential set`
/// reads: `username`, `password` and `totp-seed` (base32), each with one trailing
/// newline removed.
pub struct Account {
    pub username: String,
    pub password: String,
    pub totp: TOTP,
    pub holder: String,
}

impl Account {
    /// Builds an account; the TOTP seed is base32 (RFC 4648, SHA-1, six digits, 30 s).
    pub fn new(
        username: &str,
        password: &str,
        totp_seed: &str,
        holder: &str,
    ) -> anyhow::Result<Self> {
        let normalized: String = totp_seed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-' && *c != '=')
            .collect::<String>()
            .to_ascii_uppercase();
        let seed = Secret::Encoded(normalized)
            .to_bytes()
            .map_err(|error| anyhow::anyhow!("the TOTP seed is not valid base32: {error:?}"))?;
        let totp = TOTP::new(
            Algorithm::SHA1,
            6,
            1,
            30,
            seed,
            Some("Demo Bank".to_owned()),
            username.to_owned(),
        )
        .map_err(|error| anyhow::anyhow!("the TOTP seed is unusable: {error}"))?;
        if username.is_empty() || password.is_empty() {
            bail!("the username and the password must not be empty");
        }
        Ok(Self {
            username: username.to_owned(),
            password: password.to_owned(),
            totp,
            holder: holder.to_owned(),
        })
    }

    /// Reads `username`, `password` and `totp-seed` from `dir`.
    pub fn from_dir(dir: &Path, holder: &str) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<String> {
            let path = dir.join(name);
            let mut text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the account file {}", path.display()))?;
            if text.ends_with('\n') {
                text.pop();
            }
            Ok(text)
        };
        Self::new(
            &read("username")?,
            &read("password")?,
            &read("totp-seed")?,
            holder,
        )
    }

    /// Returns the current TOTP code, for tests that sign in directly.
    pub fn current_code(&self) -> String {
        self.totp
            .generate_current()
            .expect("the system clock is after 1970")
    }
}

/// A login form submission as the bank received it. The password appears only as its
/// SHA-256, so that a test can compare it byte for byte without the report holding it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginAttempt {
    pub username: String,
    pub password_sha256: String,
    pub accepted: bool,
}

/// What the bank received, reported by `/received`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Received {
    pub logins: Vec<LoginAttempt>,
    /// Whether each submitted TOTP code was accepted, in order.
    pub totp: Vec<bool>,
    /// Text submitted with the account page's note form, in order.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    PasswordAccepted,
    SignedIn,
}

struct Bank {
    account: Account,
    received_token: String,
    ca_pem: Option<String>,
    sessions: Mutex<HashMap<String, Stage>>,
    received: Mutex<Received>,
}

/// Shared state of both routers.
#[derive(Clone)]
pub struct BankState(Arc<Bank>);

impl BankState {
    /// `received_token` guards `/received`; `ca_pem` is served at `/ca.pem` when given.
    pub fn new(
        account: Account,
        received_token: String,
        ca_pem: Option<String>,
    ) -> anyhow::Result<Self> {
        if received_token.len() < 16 {
            bail!("the /received token must be at least 16 characters long");
        }
        Ok(Self(Arc::new(Bank {
            account,
            received_token,
            ca_pem,
            sessions: Mutex::new(HashMap::new()),
            received: Mutex::new(Received::default()),
        })))
    }

    /// Returns a copy of everything received so far.
    pub fn received(&self) -> Received {
        self.0.received.lock().unwrap().clone()
    }

    fn stage(&self, headers: &HeaderMap) -> Option<Stage> {
        let token = session_cookie(headers)?;
        self.0.sessions.lock().unwrap().get(&token).copied()
    }
}

/// Builds the bank's website, which `main` serves over HTTPS.
pub fn bank_router(state: BankState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/login") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/login", get(login_form).post(login))
        .route("/totp", get(totp_form).post(totp))
        .route("/account", get(account))
        .route("/statement.pdf", get(statement_pdf))
        .route("/note", post(note))
        .route("/logout", get(logout))
        .with_state(state)
}

/// Builds the test side, `/received` (bearer token) and `/ca.pem`, served over plain HTTP.
pub fn received_router(state: BankState) -> Router {
    Router::new()
        .route("/received", get(received))
        .route("/ca.pem", get(ca_pem))
        .with_state(state)
}

async fn login_form() -> Html<String> {
    Html(pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(State(state): State<BankState>, Form(form): Form<LoginForm>) -> Response {
    let account = &state.0.account;
    let username_ok: bool = form
        .username
        .as_bytes()
        .ct_eq(account.username.as_bytes())
        .into();
    let password_ok: bool = form
        .password
        .as_bytes()
        .ct_eq(account.password.as_bytes())
        .into();
    let accepted = username_ok && password_ok;
    state.0.received.lock().unwrap().logins.push(LoginAttempt {
        username: form.username.clone(),
        password_sha256: hex::encode(Sha256::digest(form.password.as_bytes())),
        accepted,
    });
    tracing::info!(username = %form.username, accepted, "Login form submitted");

    if !accepted {
        let page = pages::login(Some("The username or password is wrong."));
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    state
        .0
        .sessions
        .lock()
        .unwrap()
        .insert(token.clone(), Stage::PasswordAccepted);
    with_cookie(Redirect::to("/totp").into_response(), &token)
}

async fn totp_form(State(state): State<BankState>, headers: HeaderMap) -> Response {
    match state.stage(&headers) {
        Some(Stage::PasswordAccepted) => Html(pages::totp(None)).into_response(),
        Some(Stage::SignedIn) => Redirect::to("/account").into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

#[derive(Deserialize)]
struct TotpForm {
    code: String,
}

async fn totp(
    State(state): State<BankState>,
    headers: HeaderMap,
    Form(form): Form<TotpForm>,
) -> Response {
    let Some(token) = session_cookie(&headers) else {
        return Redirect::to("/login").into_response();
    };
    if state.stage(&headers) != Some(Stage::PasswordAccepted) {
        return Redirect::to("/login").into_response();
    }
    let accepted = state
        .0
        .account
        .totp
        .check_current(form.code.trim())
        .unwrap_or(false);
    state.0.received.lock().unwrap().totp.push(accepted);
    tracing::info!(accepted, "Verification code submitted");

    if !accepted {
        let page = pages::totp(Some("The code is wrong or expired."));
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    state
        .0
        .sessions
        .lock()
        .unwrap()
        .insert(token, Stage::SignedIn);
    Redirect::to("/account").into_response()
}

async fn account(State(state): State<BankState>, headers: HeaderMap) -> Response {
    if state.stage(&headers) != Some(Stage::SignedIn) {
        return Redirect::to("/login").into_response();
    }
    Html(pages::account(&state.0.account.holder)).into_response()
}

async fn statement_pdf(State(state): State<BankState>, headers: HeaderMap) -> Response {
    if state.stage(&headers) != Some(Stage::SignedIn) {
        return Redirect::to("/login").into_response();
    }
    let document = statement::pdf(&state.0.account.holder);
    (
        [
            (header::CONTENT_TYPE, "application/pdf"),
            (
                header::CONTENT_DISPOSITION,
                "inline; filename=\"statement.pdf\"",
            ),
        ],
        document,
    )
        .into_response()
}

#[derive(Deserialize)]
struct NoteForm {
    note: String,
}

async fn note(
    State(state): State<BankState>,
    headers: HeaderMap,
    Form(form): Form<NoteForm>,
) -> Response {
    if state.stage(&headers) != Some(Stage::SignedIn) {
        return Redirect::to("/login").into_response();
    }
    state
        .0
        .received
        .lock()
        .unwrap()
        .notes
        .push(form.note.clone());
    Html(pages::note_saved(&form.note)).into_response()
}

async fn logout(State(state): State<BankState>, headers: HeaderMap) -> Response {
    if let Some(token) = session_cookie(&headers) {
        state.0.sessions.lock().unwrap().remove(&token);
    }
    Redirect::to("/login").into_response()
}

async fn received(State(state): State<BankState>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let authorized: bool = presented
        .as_bytes()
        .ct_eq(state.0.received_token.as_bytes())
        .into();
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response();
    }
    Json(state.received()).into_response()
}

async fn ca_pem(State(state): State<BankState>) -> Response {
    match &state.0.ca_pem {
        Some(pem) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "the bank was started with its own certificate files; it has no generated CA\n",
        )
            .into_response(),
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn with_cookie(mut response: Response, token: &str) -> Response {
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Lax");
    let value = HeaderValue::from_str(&cookie).expect("a hex token is a valid header value");
    response.headers_mut().append(header::SET_COOKIE, value);
    response
}
