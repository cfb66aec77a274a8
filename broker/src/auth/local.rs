//! Local sign-in: username, password and TOTP code, throttled per account and per
//! client address.

use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::csrf::origin_allowed;
use super::pages::{self, LoginPage};
use super::totp::TotpSecret;
use super::web::{NextQuery, safe_next};
use super::{AuthService, password, throttle, users};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::error::ApiError;
use crate::http::ClientAddr;

/// Shown for every wrong username, password or code, so that the page does not tell
/// which part was wrong or whether the account exists.
const WRONG_CREDENTIALS: &str = "The username, password or code is not correct.";

/// Shown for every failed sign-in without a code, whether the password was right or
/// not. An account that has not enrolled an authenticator signs in without one, so a
/// failure then means a wrong username or password.
const MISSING_CODE: &str = "Enter the 6-digit code from your authenticator app. If you have not set one up yet, the username or password is not correct.";

/// Shown when the code matches a time step that the account already used, whether
/// the password was right or not, so it reveals nothing beyond what someone who has
/// a recent code knows.
const REUSED_CODE: &str = "This code was already used; wait for the next one.";

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: Zeroizing<String>,
    #[serde(default)]
    code: String,
    next: Option<String>,
}

pub(crate) async fn login_page(
    State(auth): State<AuthService>,
    Query(query): Query<NextQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref());
    pages::login(
        StatusCode::OK,
        &LoginPage {
            local: auth.local_enabled(),
            sso: auth.sso_enabled(),
            next: &next,
            error: None,
            username: "",
        },
    )
}

fn refusal(
    auth: &AuthService,
    status: StatusCode,
    next: &str,
    username: &str,
    error: &str,
) -> Response {
    pages::login(
        status,
        &LoginPage {
            local: auth.local_enabled(),
            sso: auth.sso_enabled(),
            next,
            error: Some(error),
            username,
        },
    )
}

pub(crate) fn lockout_text(remaining: Duration) -> String {
    let minutes = remaining.as_secs().div_ceil(60).max(1);
    format!("Too many failed sign-in attempts. Wait {minutes} minute(s) and try again.")
}

/// Outcome of checking the submitted credentials.
enum Check {
    Passed(Box<users::UserRecord>),
    /// The audited reason, the person's id when the account exists, and the message.
    Failed(&'static str, Option<String>, &'static str),
}

pub(crate) async fn login_submit(
    State(auth): State<AuthService>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &auth.0.origins) {
        return Ok(pages::message(
            StatusCode::FORBIDDEN,
            "Sign-in rejected",
            "The sign-in form was not sent from this portal. Open the portal's address and sign in there.",
        ));
    }
    let next = safe_next(form.next.as_deref());
    if !auth.local_enabled() {
        return Ok(pages::message(
            StatusCode::NOT_FOUND,
            "Sign-in unavailable",
            "Local accounts are disabled; use single sign-on.",
        ));
    }

    let username = users::normalize_username(&form.username);
    let account_scope = throttle::account_scope(&username);
    let address_scope = throttle::address_scope(client);
    let now = auth.now_ms();
    let target = (!username.is_empty())
        .then(|| format!("username:{}", username.chars().take(64).collect::<String>()));

    if let Some(remaining) =
        throttle::locked_for(&auth.0.db, &[&account_scope, &address_scope], now).await?
    {
        auth.audit_refusal(Actor::Anonymous, target, client, "local", "locked_out")
            .await?;
        return Ok(refusal(
            &auth,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            &username,
            &lockout_text(remaining),
        ));
    }

    match check_credentials(&auth, &username, &form, client).await? {
        Check::Failed(reason, user_id, message) => {
            let limits = &auth.0.config;
            let account_locked = auth
                .count_account_failure(&username, user_id.as_deref(), client)
                .await?;
            let address_locked = throttle::record_failure(
                &auth.0.db,
                &address_scope,
                limits.max_failures_per_address,
                limits.lockout,
                now,
            )
            .await?;
            if address_locked {
                auth.audit_lockout(&username, user_id.as_deref(), client, "address")
                    .await?;
            }
            let actor = user_id.map(Actor::Person).unwrap_or(Actor::Anonymous);
            auth.audit_refusal(actor, target, client, "local", reason)
                .await?;
            if account_locked || address_locked {
                return Ok(refusal(
                    &auth,
                    StatusCode::TOO_MANY_REQUESTS,
                    &next,
                    &username,
                    &lockout_text(limits.lockout),
                ));
            }
            Ok(refusal(
                &auth,
                StatusCode::UNAUTHORIZED,
                &next,
                &username,
                message,
            ))
        }
        Check::Passed(user) => {
            throttle::clear(&auth.0.db, &account_scope, now).await?;
            if user.roles.is_empty() {
                auth.audit_refusal(
                    Actor::Person(user.id.clone()),
                    target,
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
            Ok(auth
                .continue_local_sign_in(&headers, &user, &next, client)
                .await?)
        }
    }
}

/// Verifies password and TOTP code. The password is verified even for an unknown
/// username (against a fixed hash), so the response time does not reveal which
/// accounts exist. An account without a TOTP secret passes on the password alone and
/// must then enrol one before it gets a portal session.
async fn check_credentials(
    auth: &AuthService,
    username: &str,
    form: &LoginForm,
    client: std::net::IpAddr,
) -> anyhow::Result<Check> {
    let user = match username.is_empty() {
        true => None,
        false => users::find_by_username(&auth.0.db, username).await?,
    };
    let stored_hash = user.as_ref().and_then(|user| user.password_hash.clone());
    let password_ok = password::verify_blocking(form.password.clone(), stored_hash).await;
    let code_missing = form.code.trim().is_empty();
    let Some(user) = user else {
        let message = if code_missing {
            MISSING_CODE
        } else {
            WRONG_CREDENTIALS
        };
        return Ok(Check::Failed("unknown_user", None, message));
    };

    let Some(sealed) = &user.totp_secret else {
        if !password_ok {
            let message = if code_missing {
                MISSING_CODE
            } else {
                WRONG_CREDENTIALS
            };
            return Ok(Check::Failed("wrong_password", Some(user.id), message));
        }
        return Ok(Check::Passed(Box::new(user)));
    };
    let key = auth
        .0
        .totp_key
        .as_ref()
        .expect("the TOTP key is loaded when local accounts are enabled");
    let secret = TotpSecret::from_bytes(key.open(&user.id, sealed)?);
    let now_seconds = (auth.now_ms() / 1000).max(0) as u64;
    let matched_step = secret.matching_step(&form.code, now_seconds);

    if !password_ok {
        // The message depends on the code alone, so it does not tell whether the
        // password was right. The step is not consumed.
        let reused =
            matched_step.is_some_and(|step| user.totp_last_step.is_some_and(|last| step <= last));
        let message = match (code_missing, reused) {
            (true, _) => MISSING_CODE,
            (false, true) => REUSED_CODE,
            (false, false) => WRONG_CREDENTIALS,
        };
        return Ok(Check::Failed("wrong_password", Some(user.id), message));
    }

    let verdict = match matched_step {
        None => Err("wrong_code"),
        Some(step) => match users::consume_totp_step(&auth.0.db, &user.id, step).await? {
            true => Ok(()),
            false => Err("replayed_code"),
        },
    };
    let outcome = if verdict.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let mut event = EventBuilder::new(Actor::Person(user.id.clone()), Action::MfaChallenge)
        .outcome(outcome)
        .client(Some(client))
        .detail("factor", "totp");
    if let Err(reason) = verdict {
        event = event.detail("reason", reason);
    }
    auth.0.audit.append(event.build()).await?;

    Ok(match verdict {
        Ok(()) => Check::Passed(Box::new(user)),
        Err(reason) => {
            let message = match reason {
                _ if code_missing => MISSING_CODE,
                "replayed_code" => REUSED_CODE,
                _ => WRONG_CREDENTIALS,
            };
            Check::Failed(reason, Some(user.id), message)
        }
    })
}
