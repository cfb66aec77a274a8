//! Extractors that authenticate a request through the portal cookie and check roles.
//!
//! Every extractor here also applies the CSRF origin check to state-changing methods,
//! so a handler that takes one is protected without further work.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::csrf::{is_safe_method, origin_allowed};
use super::portal::{self, EndReason, Lookup, PortalSession};
use super::{AuthService, Principal, Role, pages, users};
use crate::audit::Actor;
use crate::error::ApiError;

/// A signed-in person with at least one role, and their portal session.
#[derive(Debug, Clone)]
pub struct CurrentSession {
    pub principal: Principal,
    pub session: PortalSession,
}

/// A signed-in person with at least one role.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Principal);

/// A signed-in admin.
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub Principal);

/// A signed-in auditor or admin: may read every recording and audit event.
#[derive(Debug, Clone)]
pub struct RequireAuditor(pub Principal);

/// A signed-in user or admin: may launch banking sessions.
#[derive(Debug, Clone)]
pub struct RequireUser(pub Principal);

/// Reason a request was rejected.
#[derive(Debug)]
pub enum AuthRejection {
    /// No valid portal session: 401, or a redirect to the login page for a browser
    /// page request (`next` is where to return after sign-in).
    NotSignedIn {
        html: bool,
        next: String,
    },
    /// Signed in, but the person has no role at all: 403.
    NoRole {
        html: bool,
    },
    /// Signed in, but without the role this route needs: 403.
    Forbidden {
        html: bool,
    },
    /// A state-changing request without the portal's exact origin: 403.
    CrossOrigin,
    Internal(anyhow::Error),
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::NotSignedIn { html: true, next } => Redirect::to(&format!(
                "/auth/login?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
            .into_response(),
            AuthRejection::NotSignedIn { html: false, .. } => {
                ApiError::new(StatusCode::UNAUTHORIZED, "not signed in").into_response()
            }
            AuthRejection::NoRole { html: true } => {
                pages::message(StatusCode::FORBIDDEN, "No access", pages::NO_ROLE_TEXT)
            }
            AuthRejection::NoRole { html: false } => ApiError::new(
                StatusCode::FORBIDDEN,
                "your account has no role; ask an administrator for access",
            )
            .into_response(),
            AuthRejection::Forbidden { html: true } => pages::message(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your role does not allow this page.",
            ),
            AuthRejection::Forbidden { html: false } => ApiError::new(
                StatusCode::FORBIDDEN,
                "your role does not allow this request",
            )
            .into_response(),
            AuthRejection::CrossOrigin => ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-origin request rejected; send it from the portal itself",
            )
            .into_response(),
            AuthRejection::Internal(error) => ApiError::internal(error).into_response(),
        }
    }
}

/// Tells whether a request asks for an HTML page, as browsers do, rather than JSON.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl AuthService {
    /// Resolves the portal cookie in `headers` to the session and the person, with the
    /// roles read from the database now. A person without roles has their session
    /// ended and gets [`AuthRejection::NoRole`].
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<CurrentSession>, AuthRejection> {
        let Some(token) = cookie_value(headers, self.cookie_name()) else {
            return Ok(None);
        };
        let html = wants_html(headers);
        let idle_ms = self.0.config.session_idle.as_millis() as i64;
        let session = match portal::lookup(&self.0.db, token, idle_ms, self.now_ms())
            .await
            .map_err(AuthRejection::Internal)?
        {
            Lookup::Active(session) => session,
            Lookup::JustEnded(ended) => {
                self.announce_ended(vec![ended], Actor::System("auth"))
                    .await
                    .map_err(AuthRejection::Internal)?;
                return Ok(None);
            }
            Lookup::Unknown => return Ok(None),
        };

        let user = users::find_by_id(&self.0.db, &session.user_id)
            .await
            .map_err(AuthRejection::Internal)?;
        let Some(user) = user else {
            return Ok(None);
        };
        if user.roles.is_empty() {
            let ended = portal::end(&self.0.db, &session.id, EndReason::NoRole, self.now_ms())
                .await
                .map_err(AuthRejection::Internal)?;
            self.announce_ended(ended.into_iter().collect(), Actor::System("auth"))
                .await
                .map_err(AuthRejection::Internal)?;
            return Err(AuthRejection::NoRole { html });
        }
        Ok(Some(CurrentSession {
            principal: user.principal(),
            session,
        }))
    }
}

impl<S> FromRequestParts<S> for CurrentSession
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = AuthService::from_ref(state);
        if !is_safe_method(&parts.method) && !origin_allowed(&parts.headers, &auth.0.origins) {
            return Err(AuthRejection::CrossOrigin);
        }
        let html = wants_html(&parts.headers) && is_safe_method(&parts.method);
        match auth.authenticate(&parts.headers).await? {
            Some(current) => Ok(current),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|path| path.as_str().to_owned())
                    .unwrap_or_else(|| "/".to_owned());
                Err(AuthRejection::NotSignedIn { html, next })
            }
        }
    }
}

impl<S> FromRequestParts<S> for CurrentUser
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        CurrentSession::from_request_parts(parts, state)
            .await
            .map(|current| CurrentUser(current.principal))
    }
}

async fn require<S>(
    parts: &mut Parts,
    state: &S,
    allowed: fn(&Principal) -> bool,
) -> Result<Principal, AuthRejection>
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    let CurrentUser(principal) = CurrentUser::from_request_parts(parts, state).await?;
    if allowed(&principal) {
        Ok(principal)
    } else {
        Err(AuthRejection::Forbidden {
            html: wants_html(&parts.headers),
        })
    }
}

impl<S> FromRequestParts<S> for RequireAdmin
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        require(parts, state, |principal| principal.has(Role::Admin))
            .await
            .map(RequireAdmin)
    }
}

impl<S> FromRequestParts<S> for RequireAuditor
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        require(parts, state, Principal::can_audit)
            .await
            .map(RequireAuditor)
    }
}

impl<S> FromRequestParts<S> for RequireUser
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        require(parts, state, Principal::can_launch)
            .await
            .map(RequireUser)
    }
}
