//! The `/auth` routes, cookies and redirects shared by both sign-in methods.

use std::collections::BTreeSet;
use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::cookie_value;
use super::portal::{self, EndReason, NewSession, SessionToken};
use super::{
    AuthService, CurrentSession, CurrentUser, RequireAdmin, Role, local, oidc, pages, steps,
    throttle, users,
};
use crate::audit::{Action, Actor, EventBuilder};
use crate::error::ApiError;
use crate::http::AppState;

/// Every route under `/auth`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/auth/login",
            get(local::login_page).post(local::login_submit),
        )
        .route("/auth/logout", get(logout_page).post(logout))
        .route("/auth/me", get(me))
        .route("/auth/users/{user_id}/end-sessions", post(end_sessions))
        .route("/auth/users/{user_id}/unlock", post(unlock))
        .route(
            steps::ENROL_PATH,
            get(steps::enrol_page).post(steps::enrol_submit),
        )
        .route(
            steps::CHANGE_PASSWORD_PATH,
            get(steps::change_password_page).post(steps::change_password_submit),
        )
        .route("/auth/oidc/login", get(oidc::login))
        .route("/auth/oidc/callback", get(oidc::callback))
        .route(
            "/auth/oidc/backchannel-logout",
            post(oidc::backchannel_logout),
        )
}

#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    pub next: Option<String>,
}

/// Keeps `next` only when it is a path on this portal, so that sign-in cannot be
/// turned into an open redirect.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

impl AuthService {
    /// `SameSite=Lax` sends the cookie on top-level navigations from other sites, such
    /// as a link in an e-mail or the provider's redirect back. Browsers leave it off
    /// cross-site subrequests and POSTs, and state-changing requests also need the
    /// exact origin.
    fn cookie_attributes(&self) -> &'static str {
        if self.0.secure_cookies {
            "; Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Lax"
        }
    }

    pub(crate) fn session_cookie(&self, token: &SessionToken) -> HeaderValue {
        let max_age = self.0.config.session_max.as_secs();
        let value = format!(
            "{}={}{}; Max-Age={max_age}",
            self.cookie_name(),
            token.as_str(),
            self.cookie_attributes()
        );
        HeaderValue::from_str(&value).expect("cookie value is ASCII")
    }

    pub(crate) fn clear_session_cookie(&self) -> HeaderValue {
        let value = format!(
            "{}={}; Max-Age=0",
            self.cookie_name(),
            self.cookie_attributes()
        );
        HeaderValue::from_str(&value).expect("cookie value is ASCII")
    }

    pub(crate) fn local_enabled(&self) -> bool {
        self.0.config.local
    }

    pub(crate) fn sso_enabled(&self) -> bool {
        self.0.oidc.is_some()
    }

    /// Starts a portal session after a successful sign-in: ends the session the
    /// browser had before (the cookie is rotated at every sign-in), records the
    /// sign-in and returns the new cookie.
    pub(crate) async fn start_session(
        &self,
        headers: &HeaderMap,
        user_id: &str,
        roles: &BTreeSet<Role>,
        method: &'static str,
        oidc_sid: Option<&str>,
        client: IpAddr,
    ) -> anyhow::Result<HeaderValue> {
        let now = self.now_ms();
        if let Some(old) = cookie_value(headers, self.cookie_name())
            && let portal::Lookup::Active(old) =
                portal::lookup(&self.0.db, old, i64::MAX / 4, now).await?
        {
            let ended = portal::end(&self.0.db, &old.id, EndReason::Logout, now).await?;
            self.announce_ended(
                ended.into_iter().collect(),
                Actor::Person(old.user_id.clone()),
            )
            .await?;
        }

        let new = NewSession {
            user_id,
            roles,
            method,
            oidc_sid,
            client_addr: Some(client),
            idle_ms: self.0.config.session_idle.as_millis() as i64,
            max_ms: self.0.config.session_max.as_millis() as i64,
        };
        let (session_id, token) = portal::create(&self.0.db, new, now).await?;
        self.end_sessions_over_limit(user_id, now).await?;

        let role_names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        self.0
            .audit
            .append(
                EventBuilder::new(Actor::Person(user_id.to_owned()), Action::SignInSucceeded)
                    .client(Some(client))
                    .detail("method", method)
                    .detail("roles", role_names.clone())
                    .build(),
            )
            .await?;
        self.0
            .audit
            .append(
                EventBuilder::new(
                    Actor::Person(user_id.to_owned()),
                    Action::PortalSessionCreated,
                )
                .client(Some(client))
                .detail("portal_session_id", session_id.clone())
                .detail("method", method)
                .detail("roles", role_names)
                .build(),
            )
            .await?;
        tracing::info!(user.id = user_id, portal_session.id = %session_id, method, "Signed in");
        Ok(self.session_cookie(&token))
    }

    /// Ends a person's oldest open portal sessions beyond `auth.max_portal_sessions`.
    async fn end_sessions_over_limit(&self, user_id: &str, now: i64) -> anyhow::Result<()> {
        let open = portal::open_sessions(&self.0.db, user_id).await?;
        let limit = self.0.config.max_portal_sessions as usize;
        let excess = open.len().saturating_sub(limit);
        let mut ended = Vec::new();
        for session_id in &open[..excess] {
            ended.extend(portal::end(&self.0.db, session_id, EndReason::SessionLimit, now).await?);
        }
        self.announce_ended(ended, Actor::System("auth")).await
    }

    /// Records a refused sign-in. `reason` is a fixed word; `target` names the account
    /// when one was given.
    pub(crate) async fn audit_refusal(
        &self,
        actor: Actor,
        target: Option<String>,
        client: IpAddr,
        method: &'static str,
        reason: &'static str,
    ) -> anyhow::Result<()> {
        let mut event = EventBuilder::new(actor, Action::SignInFailed)
            .outcome(crate::audit::Outcome::Denied)
            .client(Some(client))
            .detail("method", method)
            .detail("reason", reason);
        if let Some(target) = target {
            event = event.target(target);
        }
        self.0.audit.append(event.build()).await?;
        tracing::info!(method, reason, client = %client, "Sign-in refused");
        Ok(())
    }
}

async fn logout_page() -> Response {
    pages::logout_form()
}

/// Ends the portal session and, for an SSO session, sends the browser to the
/// provider's end-session endpoint when it has one.
async fn logout(
    State(auth): State<AuthService>,
    current: CurrentSession,
) -> Result<Response, ApiError> {
    let now = auth.now_ms();
    let ended = portal::end(&auth.0.db, &current.session.id, EndReason::Logout, now).await?;
    auth.0
        .audit
        .append(
            EventBuilder::new(
                Actor::Person(current.principal.user_id.clone()),
                Action::SignOut,
            )
            .detail("portal_session_id", current.session.id.clone())
            .detail("method", current.session.method.clone())
            .build(),
        )
        .await?;
    auth.announce_ended(
        ended.into_iter().collect(),
        Actor::Person(current.principal.user_id.clone()),
    )
    .await?;

    let target = match (&auth.0.oidc, current.session.method.as_str()) {
        (Some(provider), "oidc") => provider
            .end_session_url(&auth.0.origins[0])
            .await
            .unwrap_or_else(|| "/auth/login".to_owned()),
        _ => "/auth/login".to_owned(),
    };
    let mut response = Redirect::to(&target).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, auth.clear_session_cookie());
    Ok(response)
}

#[derive(Serialize)]
struct MeBody {
    user_id: String,
    display_name: String,
    roles: Vec<Role>,
}

/// The signed-in person, with roles as they are now.
async fn me(CurrentUser(principal): CurrentUser) -> Response {
    let body = MeBody {
        user_id: principal.user_id,
        display_name: principal.display_name,
        roles: principal.roles.into_iter().collect(),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Serialize)]
struct EndedBody {
    ended: usize,
}

/// Admin action: ends every portal session of a person.
async fn end_sessions(
    State(auth): State<AuthService>,
    RequireAdmin(admin): RequireAdmin,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let ended = auth
        .end_portal_sessions_for(
            &user_id,
            EndReason::Revoked,
            Actor::Person(admin.user_id.clone()),
        )
        .await?;
    tracing::info!(user.id = %user_id, admin.id = %admin.user_id, ended, "Admin ended a person's portal sessions");
    Ok((StatusCode::OK, Json(EndedBody { ended })).into_response())
}

#[derive(Serialize)]
struct UnlockedBody {
    /// Whether a lock was in force.
    was_locked: bool,
}

/// Admin action: lifts the sign-in lock of a local account and clears its failure count.
async fn unlock(
    State(auth): State<AuthService>,
    RequireAdmin(admin): RequireAdmin,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(user) = users::find_by_id(&auth.0.db, &user_id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no person with this id",
        ));
    };
    let Some(username) = user.username.as_deref().filter(|_| user.source == "local") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "this person signs in through OIDC; the identity provider handles their lockout",
        ));
    };
    let was_locked = auth
        .unlock_account(username, &user.id, Actor::Person(admin.user_id.clone()))
        .await?;
    Ok((StatusCode::OK, Json(UnlockedBody { was_locked })).into_response())
}

impl AuthService {
    /// Lifts the lock of a local account and records it. Returns whether a lock was in
    /// force.
    pub async fn unlock_account(
        &self,
        username: &str,
        user_id: &str,
        actor: Actor,
    ) -> anyhow::Result<bool> {
        unlock_local_account(
            &self.0.db,
            &self.0.audit,
            username,
            user_id,
            actor,
            self.now_ms(),
        )
        .await
    }
}

/// Lifts the lock of a local account's username scope and records it in the audit
/// trail; shared by the admin route and `strongroom user unlock`.
pub async fn unlock_local_account(
    db: &crate::db::Database,
    audit: &crate::audit::AuditLog,
    username: &str,
    user_id: &str,
    actor: Actor,
    now_ms: i64,
) -> anyhow::Result<bool> {
    let was_locked = throttle::unlock(db, &throttle::account_scope(username), now_ms).await?;
    audit
        .append(
            EventBuilder::new(actor, Action::AccountUnlocked)
                .target(format!("user:{user_id}"))
                .detail("was_locked", was_locked)
                .build(),
        )
        .await?;
    tracing::info!(user.id = user_id, was_locked, "Local account unlocked");
    Ok(was_locked)
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_the_portal() {
        assert_eq!(safe_next(Some("/sessions?x=1")), "/sessions?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
