//! Sign-in through an OpenID Connect provider (authorization code flow with PKCE,
//! `state` and `nonce`), MFA enforcement from the ID token, role mapping from the
//! `groups` claim, RP-initiated logout and back-channel logout.
//!
//! The `openidconnect` crate checks the ID token's signature, `iss`, `aud`, `exp` and
//! `nonce`. The verifier's clock is moved back by `auth.oidc.clock_leeway_seconds`,
//! which gives `exp` that much leeway. The broker adds checks on `iat`, `amr` and
//! `auth_time`. The crate does not handle back-channel logout tokens, so
//! [`verify_logout_token`] validates them here against the provider's JWKS.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IssuerUrl, JsonWebKey, JsonWebKeyId, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse,
    TokenResponse,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::Mutex;

use super::extract::cookie_value;
use super::portal::{self, EndReason};
use super::web::safe_next;
use super::{AuthService, Role, pages, users};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::config::auth::{GroupMapping, OidcConfig};
use crate::error::ApiError;
use crate::http::ClientAddr;

/// How long a started sign-in may take at the provider.
const LOGIN_REQUEST_TTL_MS: i64 = 10 * 60 * 1000;
/// How long discovered metadata and keys are reused before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Timeout of every request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Cookie binding a started sign-in to the browser that started it. `SameSite=Lax`,
/// because the provider's redirect back is a cross-site navigation.
const STATE_COOKIE: &str = "strongroom_oidc_state";
/// The `events` member that marks a back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Oldest `iat` accepted in a logout token.
const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(300);

/// Claims the broker reads beyond the standard ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

impl AdditionalClaims for BrokerClaims {}

/// Discovery fields beyond the standard ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogoutMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for LogoutMetadata {}

type Metadata = ProviderMetadata<
    LogoutMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type BrokerTokenResponse = StandardTokenResponse<
    IdTokenFields<
        BrokerClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type BrokerClient = openidconnect::Client<
    BrokerClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    BrokerTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The configured provider, with its metadata fetched on first use.
pub struct OidcProvider {
    config: OidcConfig,
    redirect_url: RedirectUrl,
    http: reqwest::Client,
    metadata: Mutex<Option<(Instant, Arc<Metadata>)>>,
}

impl OidcProvider {
    pub fn new(config: &OidcConfig, portal_origin: &str) -> anyhow::Result<OidcProvider> {
        let redirect = config
            .redirect_url
            .clone()
            .unwrap_or_else(|| format!("{portal_origin}/auth/oidc/callback"));
        let redirect_url = RedirectUrl::new(redirect.clone())
            .with_context(|| format!("auth.oidc.redirect_url: invalid URL {redirect:?}"))?;
        // Redirects are not followed: a provider endpoint that redirects is a
        // misconfiguration, and following it could carry the client secret elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("cannot build the HTTP client for the OIDC provider")?;
        Ok(OidcProvider {
            config: config.clone(),
            redirect_url,
            http,
            metadata: Mutex::new(None),
        })
    }

    /// The provider's metadata and keys, fetched when missing, older than
    /// [`METADATA_TTL`], or when `refresh` is set (after an unknown key id).
    async fn metadata(&self, refresh: bool) -> anyhow::Result<Arc<Metadata>> {
        let mut cached = self.metadata.lock().await;
        if let Some((fetched, metadata)) = cached.as_ref()
            && !refresh
            && fetched.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .with_context(|| format!("auth.oidc.issuer: invalid URL {:?}", self.config.issuer))?;
        let metadata = Metadata::discover_async(issuer, &self.http)
            .await
            .with_context(|| {
                format!(
                    "cannot fetch the OIDC discovery document and keys of {}",
                    self.config.issuer
                )
            })?;
        let metadata = Arc::new(metadata);
        *cached = Some((Instant::now(), metadata.clone()));
        tracing::info!(issuer = %self.config.issuer, keys = metadata.jwks().keys().len(), "Fetched the OIDC provider metadata");
        Ok(metadata)
    }

    fn client(&self, metadata: &Metadata) -> anyhow::Result<BrokerClient> {
        let secret = self.config.client_secret.resolve().with_context(|| {
            format!(
                "auth.oidc.client_secret: cannot read {}",
                self.config.client_secret
            )
        })?;
        let client = BrokerClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(secret.expose_secret().to_owned())),
        )
        .set_redirect_uri(self.redirect_url.clone());
        Ok(client)
    }

    /// Where to send the browser after logout: the provider's end-session endpoint
    /// when it has one.
    pub async fn end_session_url(&self, portal_origin: &str) -> Option<String> {
        let metadata = match self.metadata(false).await {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Cannot read the OIDC metadata for logout; ending the portal session only"
                );
                return None;
            }
        };
        let endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_deref()?;
        let mut url = url::Url::parse(endpoint).ok()?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.config.client_id)
            .append_pair(
                "post_logout_redirect_uri",
                &format!("{portal_origin}/auth/login"),
            );
        Some(url.to_string())
    }
}

fn sso_unavailable() -> Response {
    pages::message(
        StatusCode::NOT_FOUND,
        "Single sign-on unavailable",
        "Single sign-on is not configured on this portal.",
    )
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// Starts a sign-in: stores state, nonce and PKCE verifier, then redirects to the provider.
pub(crate) async fn login(
    State(auth): State<AuthService>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let Some(provider) = auth.0.oidc.as_ref() else {
        return Ok(sso_unavailable());
    };
    let metadata = match provider.metadata(false).await {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "OIDC provider unreachable");
            return Ok(pages::message(
                StatusCode::BAD_GATEWAY,
                "Single sign-on unavailable",
                "The identity provider cannot be reached. Try again later or tell an administrator.",
            ));
        }
    };
    let client = provider.client(&metadata)?;

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge)
        .add_extra_param(
            "max_age",
            provider.config.max_auth_age.as_secs().to_string(),
        );
    for scope in provider
        .config
        .scopes
        .iter()
        .filter(|scope| *scope != "openid")
    {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, state, nonce) = request.url();

    let now = auth.now_ms();
    let next = safe_next(query.next.as_deref());
    sqlx::query("DELETE FROM oidc_login_requests WHERE created_at_ms < $1")
        .bind(now - LOGIN_REQUEST_TTL_MS)
        .execute(auth.0.db.pool())
        .await
        .map_err(anyhow::Error::from)?;
    sqlx::query("INSERT INTO oidc_login_requests (state_hash, nonce, pkce_verifier, next_path, created_at_ms) VALUES ($1, $2, $3, $4, $5)")
        .bind(sha256_hex(state.secret()))
        .bind(nonce.secret())
        .bind(verifier.secret())
        .bind(&next)
        .bind(now)
        .execute(auth.0.db.pool())
        .await
        .map_err(anyhow::Error::from)?;

    let secure = if auth.0.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{STATE_COOKIE}={}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=600{secure}",
        state.secret()
    );
    let mut response = Redirect::to(url.as_str()).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?,
    );
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// A sign-in refused at the callback: the audit reason and the page text.
struct Refusal {
    reason: &'static str,
    text: &'static str,
    status: StatusCode,
}

const MFA_TEXT: &str = "Your sign-in at the identity provider did not use a second factor. Sign in again with your second factor (for example an authenticator app or security key).";
const STALE_TEXT: &str = "Your sign-in at the identity provider is too old. Sign in again so that the provider asks for your credentials and second factor.";
const NO_GROUP_TEXT: &str = "Your account at the identity provider is not in any group that grants access to Strongroom. Ask an administrator to add you to the right group.";
const INVALID_TEXT: &str = "The identity provider's answer could not be verified. Start the sign-in again; if this repeats, tell an administrator.";

fn refuse(reason: &'static str, text: &'static str) -> Refusal {
    Refusal {
        reason,
        text,
        status: StatusCode::FORBIDDEN,
    }
}

/// Completes a sign-in: checks the browser binding, redeems the code, verifies the ID
/// token, enforces MFA, maps roles and starts the portal session.
pub(crate) async fn callback(
    State(auth): State<AuthService>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let Some(provider) = auth.0.oidc.as_ref() else {
        return Ok(sso_unavailable());
    };
    let outcome = complete_sign_in(&auth, provider, &headers, &query).await;

    let clear_state = HeaderValue::from_static(
        "strongroom_oidc_state=; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=0",
    );
    let mut response = match outcome {
        Ok(SignIn::Refused {
            refusal,
            user_id,
            target,
        }) => {
            let actor = user_id.map(Actor::Person).unwrap_or(Actor::Anonymous);
            auth.audit_refusal(actor, target, client, "oidc", refusal.reason)
                .await?;
            pages::message(refusal.status, "Sign-in refused", refusal.text)
        }
        Ok(SignIn::Accepted { user, sid }) => {
            let cookie = auth
                .start_session(
                    &headers,
                    &user.id,
                    &user.roles,
                    "oidc",
                    sid.as_deref(),
                    client,
                )
                .await?;
            let mut response = pages::continue_to(&user.next);
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        Err(error) => return Err(ApiError::internal(error)),
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_state);
    Ok(response)
}

struct AcceptedUser {
    id: String,
    roles: BTreeSet<Role>,
    next: String,
}

enum SignIn {
    Accepted {
        user: AcceptedUser,
        sid: Option<String>,
    },
    Refused {
        refusal: Refusal,
        user_id: Option<String>,
        target: Option<String>,
    },
}

fn refused(refusal: Refusal) -> SignIn {
    SignIn::Refused {
        refusal,
        user_id: None,
        target: None,
    }
}

async fn complete_sign_in(
    auth: &AuthService,
    provider: &OidcProvider,
    headers: &HeaderMap,
    query: &CallbackQuery,
) -> anyhow::Result<SignIn> {
    if let Some(error) = &query.error {
        tracing::info!(error = %error, "The OIDC provider returned an error to the callback");
        return Ok(refused(refuse(
            "provider_error",
            "The identity provider did not complete the sign-in. Start again from the portal.",
        )));
    }
    let (Some(code), Some(state)) = (&query.code, &query.state) else {
        return Ok(refused(Refusal {
            reason: "malformed_callback",
            text: INVALID_TEXT,
            status: StatusCode::BAD_REQUEST,
        }));
    };

    // The state must match the cookie of the browser that started the sign-in, so
    // that an attacker cannot complete their own sign-in in a victim's browser.
    let bound = cookie_value(headers, STATE_COOKIE)
        .is_some_and(|cookie| sha256_hex(cookie) == sha256_hex(state));
    let row = sqlx::query("DELETE FROM oidc_login_requests WHERE state_hash = $1 RETURNING nonce, pkce_verifier, next_path, created_at_ms")
        .bind(sha256_hex(state))
        .fetch_optional(auth.0.db.pool())
        .await
        .context("cannot read the pending OIDC sign-in")?;
    let Some(row) = row else {
        return Ok(refused(Refusal {
            reason: "unknown_state",
            text: "This sign-in link has expired or was already used. Start the sign-in again.",
            status: StatusCode::BAD_REQUEST,
        }));
    };
    let created: i64 = row.try_get("created_at_ms")?;
    if !bound || auth.now_ms() - created > LOGIN_REQUEST_TTL_MS {
        return Ok(refused(Refusal {
            reason: "state_mismatch",
            text: "This sign-in was started in another browser or has expired. Start the sign-in again.",
            status: StatusCode::BAD_REQUEST,
        }));
    }
    let nonce = Nonce::new(row.try_get("nonce")?);
    let verifier = PkceCodeVerifier::new(row.try_get("pkce_verifier")?);
    let next: String = row.try_get("next_path")?;

    let metadata = provider.metadata(false).await?;
    let client = provider.client(&metadata)?;
    let token_response = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .context("the OIDC provider has no token endpoint")?
        .set_pkce_verifier(verifier)
        .request_async(&provider.http)
        .await;
    let token_response = match token_response {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(error = %error, "The OIDC token request failed");
            return Ok(refused(refuse("token_request_failed", INVALID_TEXT)));
        }
    };
    let Some(id_token) = token_response.id_token() else {
        return Ok(refused(refuse("no_id_token", INVALID_TEXT)));
    };

    let leeway =
        chrono::Duration::from_std(provider.config.clock_leeway).expect("leeway is at most 300 s");
    let now = auth.0.clock.now();
    let verifier = client
        .id_token_verifier()
        .set_time_fn(move || now - leeway)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > now + leeway {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        });
    let claims = match id_token.claims(&verifier, &nonce) {
        Ok(claims) => claims,
        Err(error) => {
            tracing::warn!(error = %error, "ID token rejected");
            return Ok(refused(refuse("invalid_id_token", INVALID_TEXT)));
        }
    };

    let issuer = claims.issuer().as_str().to_owned();
    let subject = claims.subject().as_str().to_owned();
    let target = Some(format!("oidc:{subject}"));
    let existing = users::find_oidc(&auth.0.db, &issuer, &subject).await?;
    let known_id = existing.as_ref().map(|user| user.id.clone());

    let amr: Vec<String> = claims
        .auth_method_refs()
        .map(|methods| {
            methods
                .iter()
                .map(|method| method.as_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let mfa = amr
        .iter()
        .any(|method| provider.config.mfa_methods.contains(method));
    let mut event = EventBuilder::new(
        known_id
            .clone()
            .map(Actor::Person)
            .unwrap_or(Actor::Anonymous),
        Action::MfaChallenge,
    )
    .outcome(if mfa {
        Outcome::Success
    } else {
        Outcome::Failure
    })
    .detail("factor", "oidc_amr")
    .detail("amr", amr.clone());
    if let Some(target) = &target {
        event = event.target(target.clone());
    }
    auth.0.audit.append(event.build()).await?;
    if !mfa {
        return Ok(SignIn::Refused {
            refusal: refuse("mfa_missing", MFA_TEXT),
            user_id: known_id,
            target,
        });
    }

    if let Some(refusal) = check_auth_time(
        claims.auth_time(),
        now,
        provider.config.max_auth_age,
        provider.config.clock_leeway,
    ) {
        return Ok(SignIn::Refused {
            refusal,
            user_id: known_id,
            target,
        });
    }

    let extra = claims.additional_claims();
    let roles = map_roles(
        extra.groups.as_deref().unwrap_or_default(),
        &provider.config.groups,
    );
    let display_name = claims
        .preferred_username()
        .map(|name| name.as_str().to_owned())
        .or_else(|| {
            claims
                .name()
                .and_then(|names| names.get(None))
                .map(|name| name.as_str().to_owned())
        })
        .or_else(|| claims.email().map(|email| email.as_str().to_owned()))
        .unwrap_or_else(|| subject.clone());
    // Roles are recomputed at every sign-in, including down to none, so that a person
    // removed from every group loses access in sessions that are still open too.
    let user = users::upsert_oidc(
        &auth.0.db,
        &issuer,
        &subject,
        &display_name,
        &roles,
        auth.now_ms(),
    )
    .await?;
    if roles.is_empty() {
        auth.end_portal_sessions_for(&user.id, EndReason::NoRole, Actor::System("auth"))
            .await?;
        return Ok(SignIn::Refused {
            refusal: refuse("no_mapped_group", NO_GROUP_TEXT),
            user_id: Some(user.id),
            target,
        });
    }
    if existing.as_ref().is_some_and(|old| old.roles != roles) {
        let old: Vec<&str> = existing
            .as_ref()
            .map(|old| old.roles.iter().map(|role| role.as_str()).collect())
            .unwrap_or_default();
        let new: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        auth.0
            .audit
            .append(
                EventBuilder::new(Actor::System("auth"), Action::RoleChanged)
                    .target(format!("user:{}", user.id))
                    .detail("from", old)
                    .detail("to", new)
                    .detail("source", "oidc_groups")
                    .build(),
            )
            .await?;
    }

    Ok(SignIn::Accepted {
        user: AcceptedUser {
            id: user.id,
            roles,
            next,
        },
        sid: extra.sid.clone(),
    })
}

fn check_auth_time(
    auth_time: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    max_age: Duration,
    leeway: Duration,
) -> Option<Refusal> {
    let Some(auth_time) = auth_time else {
        return Some(refuse("auth_time_missing", STALE_TEXT));
    };
    let age = now.signed_duration_since(auth_time);
    let limit = chrono::Duration::from_std(max_age + leeway).unwrap_or(chrono::Duration::MAX);
    let future = chrono::Duration::from_std(leeway).unwrap_or(chrono::Duration::zero());
    if age > limit || age < -future {
        return Some(refuse("auth_time_stale", STALE_TEXT));
    }
    None
}

/// Roles granted by the provider's groups through the configured mapping.
pub fn map_roles(groups: &[String], mapping: &GroupMapping) -> BTreeSet<Role> {
    let mut roles = BTreeSet::new();
    for (role, names) in [
        (Role::Admin, &mapping.admin),
        (Role::Auditor, &mapping.auditor),
        (Role::User, &mapping.user),
    ] {
        if groups.iter().any(|group| names.contains(group)) {
            roles.insert(role);
        }
    }
    roles
}

#[derive(Deserialize)]
pub(crate) struct LogoutForm {
    logout_token: Option<String>,
}

/// `POST /auth/oidc/backchannel-logout`: the provider ends a person's sessions.
/// Returns 200 when the token is valid (even if no session was open), 400 otherwise,
/// as OpenID Connect Back-Channel Logout 1.0 section 2.8 specifies.
pub(crate) async fn backchannel_logout(
    State(auth): State<AuthService>,
    Form(form): Form<LogoutForm>,
) -> Result<Response, ApiError> {
    let Some(provider) = auth.0.oidc.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "single sign-on is not configured",
        ));
    };
    let Some(token) = form.logout_token else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing logout_token",
        ));
    };

    let claims = match verify_logout_token(provider, &token, auth.0.clock.now()).await {
        Ok(claims) => claims,
        Err(LogoutTokenError::Invalid(reason)) => {
            tracing::warn!(reason, "Back-channel logout token rejected");
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid logout_token",
            ));
        }
        Err(LogoutTokenError::Other(error)) => return Err(ApiError::internal(error)),
    };

    // A token is accepted once: its jti is remembered until it expires.
    let now = auth.now_ms();
    sqlx::query("DELETE FROM oidc_logout_tokens WHERE expires_at_ms < $1")
        .bind(now)
        .execute(auth.0.db.pool())
        .await
        .map_err(anyhow::Error::from)?;
    let inserted =
        sqlx::query("INSERT INTO oidc_logout_tokens (jti, expires_at_ms) VALUES ($1, $2)")
            .bind(format!("{}|{}", claims.iss, claims.jti))
            .bind(
                claims
                    .exp
                    .unwrap_or(claims.iat + LOGOUT_TOKEN_MAX_AGE.as_secs() as i64)
                    .max(claims.iat + LOGOUT_TOKEN_MAX_AGE.as_secs() as i64)
                    * 1000
                    + provider.config.clock_leeway.as_millis() as i64,
            )
            .execute(auth.0.db.pool())
            .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            tracing::warn!(jti = %claims.jti, "Replayed back-channel logout token rejected");
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "logout_token already used",
            ));
        }
        Err(error) => return Err(ApiError::internal(error.into())),
    }

    let ended = match &claims.sub {
        Some(sub) => match users::find_oidc(&auth.0.db, &claims.iss, sub).await? {
            Some(user) => {
                portal::end_for_user(
                    &auth.0.db,
                    &user.id,
                    claims.sid.as_deref(),
                    EndReason::BackChannelLogout,
                    now,
                )
                .await?
            }
            None => Vec::new(),
        },
        None => end_by_sid(&auth, claims.sid.as_deref().unwrap_or_default(), now).await?,
    };
    for event in &ended {
        auth.0
            .audit
            .append(
                EventBuilder::new(Actor::System("oidc"), Action::SignOut)
                    .target(format!("user:{}", event.user_id))
                    .detail("portal_session_id", event.session_id.clone())
                    .detail("method", "backchannel_logout")
                    .build(),
            )
            .await?;
    }
    tracing::info!(sessions = ended.len(), "Back-channel logout processed");
    auth.announce_ended(ended, Actor::System("oidc")).await?;

    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn end_by_sid(
    auth: &AuthService,
    sid: &str,
    now: i64,
) -> anyhow::Result<Vec<portal::PortalSessionEnded>> {
    let rows = sqlx::query(
        "SELECT DISTINCT user_id FROM portal_sessions WHERE oidc_sid = $1 AND ended_at_ms IS NULL",
    )
    .bind(sid)
    .fetch_all(auth.0.db.pool())
    .await?;
    let mut ended = Vec::new();
    for row in rows {
        let user_id: String = row.try_get("user_id")?;
        ended.extend(
            portal::end_for_user(
                &auth.0.db,
                &user_id,
                Some(sid),
                EndReason::BackChannelLogout,
                now,
            )
            .await?,
        );
    }
    Ok(ended)
}

/// Validated claims of a logout token.
#[derive(Debug)]
pub struct LogoutClaims {
    pub iss: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub iat: i64,
    pub exp: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    /// The token is not acceptable; the text is for the log only.
    #[error("invalid logout token: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: serde_json::Value,
    kid: Option<String>,
}

/// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0,
/// section 2.6). The signature must verify with a key of the provider's JWKS and an
/// asymmetric algorithm. The claims must have the right `iss`, `aud` and `iat`, a valid
/// `exp` when present, the logout `events` member, a `jti`, `sub` or `sid`, and no `nonce`.
pub async fn verify_logout_token(
    provider: &OidcProvider,
    token: &str,
    now: DateTime<Utc>,
) -> Result<LogoutClaims, LogoutTokenError> {
    use LogoutTokenError::Invalid;

    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        return Err(Invalid("not a compact JWS"));
    };
    let header: JwtHeader = decode_json(header_b64).ok_or(Invalid("malformed header"))?;
    let alg: CoreJwsSigningAlgorithm =
        serde_json::from_value(header.alg).map_err(|_| Invalid("unknown alg"))?;
    if matches!(
        alg,
        CoreJwsSigningAlgorithm::None
            | CoreJwsSigningAlgorithm::HmacSha256
            | CoreJwsSigningAlgorithm::HmacSha384
            | CoreJwsSigningAlgorithm::HmacSha512
    ) {
        return Err(Invalid("alg is not an asymmetric signature"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| Invalid("malformed signature"))?;
    let message = format!("{header_b64}.{payload_b64}");

    let mut verified = verify_with_keys(
        &*provider.metadata(false).await?,
        header.kid.as_deref(),
        &alg,
        message.as_bytes(),
        &signature,
    );
    if verified.is_none() {
        // The provider may have rotated its keys since they were fetched.
        verified = verify_with_keys(
            &*provider.metadata(true).await?,
            header.kid.as_deref(),
            &alg,
            message.as_bytes(),
            &signature,
        );
    }
    if verified != Some(true) {
        return Err(Invalid(
            "signature does not verify with the provider's keys",
        ));
    }

    let payload: serde_json::Value =
        decode_json(payload_b64).ok_or(Invalid("malformed payload"))?;
    check_logout_claims(&payload, &provider.config, now)
}

/// `Some(true)` when a matching key verifies the signature, `Some(false)` when
/// matching keys exist but none verifies, `None` when no key matches.
fn verify_with_keys(
    metadata: &Metadata,
    kid: Option<&str>,
    alg: &CoreJwsSigningAlgorithm,
    message: &[u8],
    signature: &[u8],
) -> Option<bool> {
    let candidates: Vec<&CoreJsonWebKey> = metadata
        .jwks()
        .keys()
        .iter()
        .filter(|key| match kid {
            Some(kid) => key.key_id() == Some(&JsonWebKeyId::new(kid.to_owned())),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(
        candidates
            .iter()
            .any(|key| key.verify_signature(alg, message, signature).is_ok()),
    )
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn check_logout_claims(
    payload: &serde_json::Value,
    config: &OidcConfig,
    now: DateTime<Utc>,
) -> Result<LogoutClaims, LogoutTokenError> {
    use LogoutTokenError::Invalid;

    let text = |name: &str| {
        payload
            .get(name)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let number = |name: &str| payload.get(name).and_then(|value| value.as_i64());
    let now_s = now.timestamp();
    let leeway = config.clock_leeway.as_secs() as i64;

    let iss = text("iss").ok_or(Invalid("missing iss"))?;
    if iss != config.issuer {
        return Err(Invalid("wrong iss"));
    }
    let audience_ok = match payload.get("aud") {
        Some(serde_json::Value::String(aud)) => *aud == config.client_id,
        Some(serde_json::Value::Array(auds)) => auds
            .iter()
            .any(|aud| aud.as_str() == Some(config.client_id.as_str())),
        _ => false,
    };
    if !audience_ok {
        return Err(Invalid("wrong aud"));
    }
    let iat = number("iat").ok_or(Invalid("missing iat"))?;
    if iat > now_s + leeway || iat < now_s - LOGOUT_TOKEN_MAX_AGE.as_secs() as i64 - leeway {
        return Err(Invalid("iat out of range"));
    }
    let exp = number("exp");
    if exp.is_some_and(|exp| exp + leeway <= now_s) {
        return Err(Invalid("expired"));
    }
    let has_event = payload
        .get("events")
        .and_then(|events| events.as_object())
        .is_some_and(|events| {
            events
                .get(BACKCHANNEL_LOGOUT_EVENT)
                .is_some_and(|event| event.is_object())
        });
    if !has_event {
        return Err(Invalid("missing backchannel-logout event"));
    }
    if payload.get("nonce").is_some() {
        return Err(Invalid("nonce present"));
    }
    let jti = text("jti")
        .filter(|jti| !jti.is_empty())
        .ok_or(Invalid("missing jti"))?;
    let sub = text("sub");
    let sid = text("sid");
    if sub.is_none() && sid.is_none() {
        return Err(Invalid("neither sub nor sid"));
    }
    Ok(LogoutClaims {
        iss,
        sub,
        sid,
        jti,
        iat,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "strongroom".into(),
            client_secret: crate::config::SecretRef::Env("X".into()),
            redirect_url: None,
            scopes: vec!["openid".into()],
            mfa_methods: vec!["mfa".into()],
            max_auth_age: Duration::from_secs(600),
            clock_leeway: Duration::from_secs(60),
            groups: GroupMapping {
                admin: vec!["ops".into()],
                auditor: vec!["audit".into()],
                user: vec!["staff".into(), "ops".into()],
            },
        }
    }

    fn logout_payload(now: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": "https://idp.example", "aud": ["strongroom"], "iat": now, "jti": "j1", "sub": "s1",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} }
        })
    }

    #[test]
    fn groups_map_to_roles() {
        let mapping = config().groups;

        assert_eq!(
            map_roles(&["ops".into()], &mapping),
            [Role::Admin, Role::User].into()
        );
        assert_eq!(
            map_roles(&["audit".into(), "other".into()], &mapping),
            [Role::Auditor].into()
        );
        assert!(map_roles(&["other".into()], &mapping).is_empty());
    }

    #[test]
    fn logout_claims_are_checked() {
        let now = Utc::now();
        let good = logout_payload(now.timestamp());
        assert!(check_logout_claims(&good, &config(), now).is_ok());

        let cases: [(&str, serde_json::Value); 7] = [
            ("events", serde_json::Value::Null),
            ("aud", serde_json::json!("other")),
            ("iss", serde_json::json!("https://evil.example")),
            ("nonce", serde_json::json!("n")),
            ("jti", serde_json::Value::Null),
            ("iat", serde_json::json!(now.timestamp() - 3600)),
            ("exp", serde_json::json!(now.timestamp() - 3600)),
        ];
        for (name, value) in cases {
            let mut payload = good.clone();
            if value.is_null() {
                payload.as_object_mut().unwrap().remove(name);
            } else {
                payload[name] = value;
            }
            assert!(
                check_logout_claims(&payload, &config(), now).is_err(),
                "{name} change accepted"
            );
        }

        let mut anonymous = good.clone();
        anonymous.as_object_mut().unwrap().remove("sub");
        assert!(check_logout_claims(&anonymous, &config(), now).is_err());
    }

    #[test]
    fn stale_or_missing_auth_time_is_refused() {
        let now = Utc::now();
        let max_age = Duration::from_secs(600);
        let leeway = Duration::from_secs(60);

        assert!(
            check_auth_time(
                Some(now - chrono::Duration::seconds(30)),
                now,
                max_age,
                leeway
            )
            .is_none()
        );
        assert!(
            check_auth_time(
                Some(now - chrono::Duration::seconds(900)),
                now,
                max_age,
                leeway
            )
            .is_some()
        );
        assert!(
            check_auth_time(
                Some(now + chrono::Duration::seconds(600)),
                now,
                max_age,
                leeway
            )
            .is_some()
        );
        assert!(check_auth_time(None, now, max_age, leeway).is_some());
    }
}
