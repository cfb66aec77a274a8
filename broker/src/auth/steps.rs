//! Steps between correct credentials and a portal session for a local account:
//! enrolling a TOTP secret when the account has none, and choosing a new password
//! when the current one has expired or was set by an administrator.
//!
//! A pending sign-in is a row in `sign_in_steps`, found through a short-lived cookie
//! whose SHA-256 is the row's key. It grants nothing but these two pages.

use std::net::IpAddr;

use anyhow::Context;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sqlx::Row;
use zeroize::Zeroizing;

use super::csrf::origin_allowed;
use super::extract::cookie_value;
use super::portal::token_hash;
use super::totp::TotpSecret;
use super::users::UserRecord;
use super::{AuthService, pages, password, policy, throttle, users};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::error::ApiError;
use crate::http::ClientAddr;

/// Cookie naming the pending sign-in. Scoped to `/auth`, where the step pages are.
const STEP_COOKIE: &str = "strongroom_sign_in";
/// How long a pending sign-in lasts.
const STEP_TTL_MS: i64 = 10 * 60 * 1000;

pub(crate) const ENROL_PATH: &str = "/auth/enrol-totp";
pub(crate) const CHANGE_PASSWORD_PATH: &str = "/auth/change-password";

/// The step a local account must take before it gets a portal session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    EnrolTotp,
    ChangePassword,
    Done,
}

/// A pending sign-in, read from `sign_in_steps`.
struct Pending {
    token_hash: String,
    user: UserRecord,
    pending_totp: Option<Vec<u8>>,
    next: String,
}

impl AuthService {
    fn step_for(&self, user: &UserRecord) -> Step {
        let expired = policy::is_expired(
            user.password_changed_at_ms,
            self.0.config.password_max_age_days,
            self.now_ms(),
        );
        if user.totp_secret.is_none() {
            Step::EnrolTotp
        } else if user.password_change_required || expired {
            Step::ChangePassword
        } else {
            Step::Done
        }
    }

    fn step_cookie(&self, value: &str, max_age_seconds: i64) -> HeaderValue {
        let secure = if self.0.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{STEP_COOKIE}={value}; Path=/auth; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{secure}"
        );
        HeaderValue::from_str(&cookie).expect("cookie value is ASCII")
    }

    /// Continues a local sign-in whose credentials passed: starts the portal session,
    /// or opens a pending sign-in and sends the browser to the step it needs.
    pub(crate) async fn continue_local_sign_in(
        &self,
        headers: &HeaderMap,
        user: &UserRecord,
        next: &str,
        client: IpAddr,
    ) -> anyhow::Result<Response> {
        let step = self.step_for(user);
        if step == Step::Done {
            let cookie = self
                .start_session(headers, &user.id, &user.roles, "local", None, client)
                .await?;
            let mut response = Redirect::to(next).into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            return Ok(response);
        }

        let token = super::portal::SessionToken::generate();
        let now = self.now_ms();
        sqlx::query("DELETE FROM sign_in_steps WHERE expires_at_ms < $1")
            .bind(now)
            .execute(self.0.db.pool())
            .await
            .context("cannot remove expired sign-in steps")?;
        sqlx::query("INSERT INTO sign_in_steps (token_hash, user_id, next_path, client_addr, expires_at_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash(token.as_str()))
            .bind(&user.id)
            .bind(next)
            .bind(client.to_string())
            .bind(now + STEP_TTL_MS)
            .execute(self.0.db.pool())
            .await
            .context("cannot store the pending sign-in")?;
        tracing::info!(user.id = %user.id, step = ?step, "Sign-in continues with a required step");

        let mut response = Redirect::to(step_path(step)).into_response();
        response.headers_mut().insert(
            header::SET_COOKIE,
            self.step_cookie(token.as_str(), STEP_TTL_MS / 1000),
        );
        Ok(response)
    }

    async fn pending(&self, headers: &HeaderMap) -> anyhow::Result<Option<Pending>> {
        let Some(token) = cookie_value(headers, STEP_COOKIE) else {
            return Ok(None);
        };
        let hash = token_hash(token);
        let row = sqlx::query("SELECT user_id, pending_totp, next_path, expires_at_ms FROM sign_in_steps WHERE token_hash = $1")
            .bind(&hash)
            .fetch_optional(self.0.db.pool())
            .await
            .context("cannot read the pending sign-in")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let expires: i64 = row.try_get("expires_at_ms")?;
        if expires <= self.now_ms() {
            self.forget_pending(&hash).await?;
            return Ok(None);
        }
        let user_id: String = row.try_get("user_id")?;
        let Some(user) = users::find_by_id(&self.0.db, &user_id).await? else {
            return Ok(None);
        };
        Ok(Some(Pending {
            token_hash: hash,
            user,
            pending_totp: row.try_get("pending_totp")?,
            next: row.try_get("next_path")?,
        }))
    }

    async fn forget_pending(&self, hash: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM sign_in_steps WHERE token_hash = $1")
            .bind(hash)
            .execute(self.0.db.pool())
            .await
            .context("cannot remove the pending sign-in")?;
        Ok(())
    }

    /// Moves a pending sign-in on after a step: to the next step, or to the portal
    /// session.
    async fn advance(
        &self,
        headers: &HeaderMap,
        pending: &Pending,
        client: IpAddr,
    ) -> anyhow::Result<Response> {
        let user = users::find_by_id(&self.0.db, &pending.user.id)
            .await?
            .context("the person of a pending sign-in no longer exists")?;
        let step = self.step_for(&user);
        if step != Step::Done {
            return Ok(Redirect::to(step_path(step)).into_response());
        }
        self.forget_pending(&pending.token_hash).await?;
        if user.roles.is_empty() {
            // An admin removed the last role while the person was on a step page.
            self.audit_refusal(
                Actor::Person(user.id.clone()),
                None,
                client,
                "local",
                "no_role",
            )
            .await?;
            return Ok(pages::message(
                StatusCode::FORBIDDEN,
                "No access",
                pages::NO_ROLE_TEXT,
            ));
        }
        let cookie = self
            .start_session(headers, &user.id, &user.roles, "local", None, client)
            .await?;
        let mut response = Redirect::to(&pending.next).into_response();
        let headers = response.headers_mut();
        headers.insert(header::SET_COOKIE, cookie);
        headers.append(header::SET_COOKIE, self.step_cookie("", 0));
        Ok(response)
    }

    /// Counts a failed step for the account and records a lockout when this failure
    /// caused one. Returns true when the account is now locked.
    pub(crate) async fn count_account_failure(
        &self,
        username: &str,
        user_id: Option<&str>,
        client: IpAddr,
    ) -> anyhow::Result<bool> {
        let limits = &self.0.config;
        let now = self.now_ms();
        let locked = throttle::record_failure(
            &self.0.db,
            &throttle::account_scope(username),
            limits.max_failures_per_account,
            limits.lockout,
            now,
        )
        .await?;
        if locked {
            self.audit_lockout(username, user_id, client, "account")
                .await?;
        }
        Ok(locked)
    }

    /// Records that a sign-in scope was locked.
    pub(crate) async fn audit_lockout(
        &self,
        username: &str,
        user_id: Option<&str>,
        client: IpAddr,
        scope: &'static str,
    ) -> anyhow::Result<()> {
        let actor = user_id
            .map(|id| Actor::Person(id.to_owned()))
            .unwrap_or(Actor::Anonymous);
        let mut event = EventBuilder::new(actor, Action::AccountLocked)
            .outcome(Outcome::Denied)
            .client(Some(client))
            .detail("scope", scope)
            .detail("lockout_seconds", self.0.config.lockout.as_secs());
        if !username.is_empty() {
            event = event.target(format!(
                "username:{}",
                username.chars().take(64).collect::<String>()
            ));
        }
        self.0.audit.append(event.build()).await?;
        tracing::warn!(scope, client = %client, "Sign-in locked after repeated failures");
        Ok(())
    }
}

fn step_path(step: Step) -> &'static str {
    match step {
        Step::EnrolTotp => ENROL_PATH,
        Step::ChangePassword => CHANGE_PASSWORD_PATH,
        Step::Done => "/",
    }
}

fn no_pending_sign_in() -> Response {
    Redirect::to("/auth/login").into_response()
}

fn cross_origin() -> Response {
    pages::message(
        StatusCode::FORBIDDEN,
        "Request rejected",
        "The form was not sent from this portal. Open the portal's address and sign in there.",
    )
}

/// Returns the pending sign-in's TOTP secret, creating and storing one on first use.
async fn pending_secret(auth: &AuthService, pending: &Pending) -> anyhow::Result<TotpSecret> {
    let key = auth
        .0
        .totp_key
        .as_ref()
        .context("local accounts are disabled")?;
    if let Some(sealed) = &pending.pending_totp {
        return Ok(TotpSecret::from_bytes(key.open(&pending.user.id, sealed)?));
    }
    let secret = TotpSecret::generate();
    let sealed = key.seal(&pending.user.id, secret.as_bytes())?;
    sqlx::query("UPDATE sign_in_steps SET pending_totp = $1 WHERE token_hash = $2")
        .bind(sealed)
        .bind(&pending.token_hash)
        .execute(auth.0.db.pool())
        .await
        .context("cannot store the pending TOTP secret")?;
    Ok(secret)
}

fn enrol_view(
    status: StatusCode,
    pending: &Pending,
    secret: &TotpSecret,
    error: Option<&str>,
) -> anyhow::Result<Response> {
    let account = pending
        .user
        .username
        .clone()
        .unwrap_or_else(|| pending.user.display_name.clone());
    let uri = secret.otpauth_uri(&account);
    let code = qrcode::QrCode::new(uri.as_bytes()).context("cannot encode the QR code")?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    Ok(pages::enrol_totp(status, &svg, &secret.base32(), error))
}

pub(crate) async fn enrol_page(
    State(auth): State<AuthService>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(pending) = auth.pending(&headers).await? else {
        return Ok(no_pending_sign_in());
    };
    if auth.step_for(&pending.user) != Step::EnrolTotp {
        return Ok(Redirect::to(step_path(auth.step_for(&pending.user))).into_response());
    }
    let secret = pending_secret(&auth, &pending).await?;
    Ok(enrol_view(StatusCode::OK, &pending, &secret, None)?)
}

#[derive(Deserialize)]
pub(crate) struct EnrolForm {
    #[serde(default)]
    code: String,
}

/// Confirms the enrolment with a code from the new secret. The code's time step is
/// recorded as used, so that it cannot also sign in.
pub(crate) async fn enrol_submit(
    State(auth): State<AuthService>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<EnrolForm>,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &auth.0.origins) {
        return Ok(cross_origin());
    }
    let Some(pending) = auth.pending(&headers).await? else {
        return Ok(no_pending_sign_in());
    };
    if auth.step_for(&pending.user) != Step::EnrolTotp {
        return Ok(auth.advance(&headers, &pending, client).await?);
    }
    let username = pending.user.username.clone().unwrap_or_default();
    let now = auth.now_ms();
    if let Some(remaining) =
        throttle::locked_for(&auth.0.db, &[&throttle::account_scope(&username)], now).await?
    {
        auth.forget_pending(&pending.token_hash).await?;
        return Ok(pages::message(
            StatusCode::TOO_MANY_REQUESTS,
            "Sign-in locked",
            &super::local::lockout_text(remaining),
        ));
    }

    let secret = pending_secret(&auth, &pending).await?;
    let step = secret.matching_step(&form.code, (now / 1000).max(0) as u64);
    let mut event = EventBuilder::new(Actor::Person(pending.user.id.clone()), Action::MfaChallenge)
        .client(Some(client))
        .detail("factor", "totp")
        .detail("stage", "enrolment");
    let Some(step) = step else {
        event = event
            .outcome(Outcome::Failure)
            .detail("reason", "wrong_code");
        auth.0.audit.append(event.build()).await?;
        if auth
            .count_account_failure(&username, Some(&pending.user.id), client)
            .await?
        {
            auth.forget_pending(&pending.token_hash).await?;
            return Ok(pages::message(
                StatusCode::TOO_MANY_REQUESTS,
                "Sign-in locked",
                &super::local::lockout_text(auth.0.config.lockout),
            ));
        }
        return Ok(enrol_view(
            StatusCode::UNAUTHORIZED,
            &pending,
            &secret,
            Some(
                "The code does not match. Check the time on your device and enter the current code.",
            ),
        )?);
    };
    auth.0
        .audit
        .append(event.outcome(Outcome::Success).build())
        .await?;

    let key = auth
        .0
        .totp_key
        .as_ref()
        .context("local accounts are disabled")?;
    let sealed = key.seal(&pending.user.id, secret.as_bytes())?;
    users::set_totp(&auth.0.db, &pending.user.id, &sealed, now).await?;
    users::consume_totp_step(&auth.0.db, &pending.user.id, step).await?;
    auth.0
        .audit
        .append(
            EventBuilder::new(Actor::Person(pending.user.id.clone()), Action::MfaEnrolled)
                .client(Some(client))
                .detail("factor", "totp")
                .build(),
        )
        .await?;
    tracing::info!(user.id = %pending.user.id, "TOTP secret enrolled");
    Ok(auth.advance(&headers, &pending, client).await?)
}

pub(crate) async fn change_password_page(
    State(auth): State<AuthService>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(pending) = auth.pending(&headers).await? else {
        return Ok(no_pending_sign_in());
    };
    if auth.step_for(&pending.user) != Step::ChangePassword {
        return Ok(Redirect::to(step_path(auth.step_for(&pending.user))).into_response());
    }
    Ok(pages::change_password(
        StatusCode::OK,
        &change_reason(&auth, &pending.user),
        None,
    ))
}

fn change_reason(auth: &AuthService, user: &UserRecord) -> String {
    if user.password_change_required {
        "An administrator set your password. Choose your own before you continue.".to_owned()
    } else {
        format!(
            "Your password is older than {} days. Choose a new one before you continue.",
            auth.0.config.password_max_age_days
        )
    }
}

#[derive(Deserialize)]
pub(crate) struct ChangePasswordForm {
    #[serde(default)]
    new_password: Zeroizing<String>,
    #[serde(default)]
    confirm_password: Zeroizing<String>,
}

pub(crate) async fn change_password_submit(
    State(auth): State<AuthService>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<ChangePasswordForm>,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &auth.0.origins) {
        return Ok(cross_origin());
    }
    let Some(pending) = auth.pending(&headers).await? else {
        return Ok(no_pending_sign_in());
    };
    if auth.step_for(&pending.user) != Step::ChangePassword {
        return Ok(auth.advance(&headers, &pending, client).await?);
    }
    let reason = change_reason(&auth, &pending.user);
    let username = pending.user.username.clone().unwrap_or_default();
    let reject =
        |text: String| pages::change_password(StatusCode::BAD_REQUEST, &reason, Some(&text));

    if *form.new_password != *form.confirm_password {
        return Ok(reject(
            "The two passwords differ. Type the same new password twice.".to_owned(),
        ));
    }
    if let Err(problem) = policy::check_new_password(&form.new_password, &username) {
        return Ok(reject(format!("Password rejected: {problem}.")));
    }
    let history = auth.0.config.password_history;
    let recent = users::recent_password_hashes(&auth.0.db, &pending.user.id, history).await?;
    let candidate = form.new_password.clone();
    let reused = tokio::task::spawn_blocking(move || {
        recent
            .iter()
            .any(|stored| password::verify(&candidate, stored))
    })
    .await
    .context("password check task failed")?;
    if reused {
        return Ok(reject(format!(
            "Password rejected: it is one of your last {history} passwords. Choose one you have not used."
        )));
    }

    let new_password = form.new_password.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&new_password))
        .await
        .context("password hashing task failed")??;
    users::set_password(
        &auth.0.db,
        &pending.user.id,
        &hash,
        false,
        history,
        auth.now_ms(),
    )
    .await?;
    auth.0
        .audit
        .append(
            EventBuilder::new(
                Actor::Person(pending.user.id.clone()),
                Action::PasswordChanged,
            )
            .client(Some(client))
            .detail(
                "reason",
                if pending.user.password_change_required {
                    "required"
                } else {
                    "expired"
                },
            )
            .build(),
        )
        .await?;
    tracing::info!(user.id = %pending.user.id, "Password changed at sign-in");
    Ok(auth.advance(&headers, &pending, client).await?)
}
