//! Who is asking: sign-in, portal sessions, roles and what each role may do.
//!
//! Local accounts sign in with a password and a mandatory TOTP code; people from an
//! OpenID Connect provider sign in there with a second factor, proven by the ID
//! token's `amr` claim. Either way the broker then issues an opaque portal-session
//! cookie. Every request through that cookie re-reads the person's roles, so a role
//! removed by an admin takes effect at the next request.
//!
//! The session lifecycle hears about every ended portal session through
//! [`AuthService::subscribe`], and ends them itself through
//! [`AuthService::end_portal_sessions_for`].

pub mod cli;
mod csrf;
mod extract;
mod local;
mod oidc;
pub(crate) mod pages;
pub mod password;
pub mod policy;
pub mod portal;
mod principal;
pub mod secret_key;
mod steps;
pub mod throttle;
pub mod totp;
pub mod users;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::auth::AuthConfig;
use crate::db::Database;
use crate::http::AppState;

pub use csrf::{origin_allowed, require_same_origin};
pub(crate) use extract::wants_html;
pub use extract::{
    AuthRejection, CurrentSession, CurrentUser, RequireAdmin, RequireAuditor, RequireUser,
};
pub use portal::{EndReason, PortalSessionEnded};
pub use principal::{Principal, Role};
pub use web::{routes, unlock_local_account};

/// Capacity of the portal-session-ended channel. A subscriber that falls further
/// behind receives `RecvError::Lagged` and should re-check its sessions.
const ENDED_CHANNEL_CAPACITY: usize = 1024;

/// How often expired portal sessions are ended by [`AuthService::run_reaper`].
pub const REAPER_INTERVAL: Duration = Duration::from_secs(30);

/// Cookie name over HTTPS. The `__Host-` prefix makes browsers refuse it unless it is
/// `Secure`, has `Path=/` and no `Domain`.
const SECURE_COOKIE_NAME: &str = "__Host-strongroom_session";
/// Cookie name on the plain-HTTP loopback listener, where `Secure` cannot be set.
const PLAIN_COOKIE_NAME: &str = "strongroom_session";

/// Sign-in and portal-session service, shared by every handler.
#[derive(Clone)]
pub struct AuthService(Arc<Inner>);

struct Inner {
    db: Database,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
    config: AuthConfig,
    /// Origins accepted for state-changing requests; the first is the canonical one.
    origins: Vec<String>,
    secure_cookies: bool,
    totp_key: Option<secret_key::TotpKey>,
    oidc: Option<oidc::OidcProvider>,
    ended: broadcast::Sender<PortalSessionEnded>,
}

impl FromRef<AppState> for AuthService {
    fn from_ref(state: &AppState) -> AuthService {
        state.auth.clone()
    }
}

impl AuthService {
    /// Builds the service. `https` tells whether the listener serves TLS; the portal
    /// origin is `server.public_url` when set, otherwise the listeners' own addresses.
    pub fn new(
        config: &Config,
        db: Database,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
        https: bool,
        local_addrs: &[SocketAddr],
    ) -> anyhow::Result<AuthService> {
        let origins = portal_origins(config.server.public_url.as_ref(), https, local_addrs);
        let secure_cookies = origins[0].starts_with("https://");
        let totp_key = match config.auth.local {
            true => Some(secret_key::TotpKey::load_or_create(&config.data_dir)?),
            false => None,
        };
        let oidc = match &config.auth.oidc {
            Some(oidc_config) => Some(oidc::OidcProvider::new(oidc_config, &origins[0])?),
            None => None,
        };
        let (ended, _) = broadcast::channel(ENDED_CHANNEL_CAPACITY);
        Ok(AuthService(Arc::new(Inner {
            db,
            audit,
            clock,
            config: config.auth.clone(),
            origins,
            secure_cookies,
            totp_key,
            oidc,
            ended,
        })))
    }

    /// Receives every portal session that ends, for whatever reason.
    pub fn subscribe(&self) -> broadcast::Receiver<PortalSessionEnded> {
        self.0.ended.subscribe()
    }

    /// The portal origin, such as `https://strongroom.bank.example`.
    /// Every origin the portal is reached at; the first is the canonical one.
    pub fn origins(&self) -> &[String] {
        &self.0.origins
    }

    pub fn origin(&self) -> &str {
        &self.0.origins[0]
    }

    pub fn database(&self) -> &Database {
        &self.0.db
    }

    /// Whether the portal is reached over HTTPS, so that cookies are `Secure`.
    pub fn https(&self) -> bool {
        self.0.secure_cookies
    }

    pub fn cookie_name(&self) -> &'static str {
        if self.0.secure_cookies {
            SECURE_COOKIE_NAME
        } else {
            PLAIN_COOKIE_NAME
        }
    }

    fn now_ms(&self) -> i64 {
        self.0.clock.now().timestamp_millis()
    }

    /// Ends every open portal session of a person, records each in the audit trail
    /// and tells subscribers. Returns how many sessions ended.
    pub async fn end_portal_sessions_for(
        &self,
        user_id: &str,
        reason: EndReason,
        actor: Actor,
    ) -> anyhow::Result<usize> {
        let ended = portal::end_for_user(&self.0.db, user_id, None, reason, self.now_ms()).await?;
        let count = ended.len();
        self.announce_ended(ended, actor).await?;
        Ok(count)
    }

    /// Audits and broadcasts sessions that have ended.
    async fn announce_ended(
        &self,
        ended: Vec<PortalSessionEnded>,
        actor: Actor,
    ) -> anyhow::Result<()> {
        for event in ended {
            self.0
                .audit
                .append(
                    EventBuilder::new(actor.clone(), Action::PortalSessionEnded)
                        .target(format!("user:{}", event.user_id))
                        .detail("portal_session_id", event.session_id.clone())
                        .detail("reason", event.reason.as_str())
                        .build(),
                )
                .await?;
            tracing::info!(user.id = %event.user_id, portal_session.id = %event.session_id, reason = event.reason.as_str(), "Portal session ended");
            // No receiver is not an error: the lifecycle may not be running.
            let _ = self.0.ended.send(event);
        }
        Ok(())
    }

    /// Ends expired sessions once.
    pub async fn end_expired_sessions(&self) -> anyhow::Result<usize> {
        let ended = portal::end_expired(&self.0.db, self.now_ms()).await?;
        let count = ended.len();
        self.announce_ended(ended, Actor::System("auth")).await?;
        Ok(count)
    }

    /// Ends expired portal sessions every [`REAPER_INTERVAL`] until `stop` is cancelled,
    /// so that their banking sessions end even when the browser never comes back.
    pub async fn run_reaper(self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(REAPER_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(error) = self.end_expired_sessions().await {
                tracing::error!(
                    error = format!("{error:#}"),
                    "Cannot end expired portal sessions"
                );
            }
        }
    }
}

/// Origins the portal answers on: the public URL's, or each listener's address (plus
/// `localhost` for a loopback listener).
fn portal_origins(
    public_url: Option<&url::Url>,
    https: bool,
    local_addrs: &[SocketAddr],
) -> Vec<String> {
    if let Some(public_url) = public_url {
        return vec![public_url.origin().ascii_serialization()];
    }
    let scheme = if https { "https" } else { "http" };
    let mut origins: Vec<String> = local_addrs
        .iter()
        .map(|local_addr| format!("{scheme}://{local_addr}"))
        .collect();
    let loopback_ports = local_addrs
        .iter()
        .filter(|local_addr| local_addr.ip().is_loopback())
        .map(|local_addr| local_addr.port());
    for port in loopback_ports {
        let origin = format!("{scheme}://localhost:{port}");
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    origins
}

#[cfg(test)]
mod tests {
    use super::portal_origins;

    #[test]
    fn origins_follow_public_url_or_listener() {
        let listener = ["127.0.0.1:8080".parse().unwrap()];
        let public_url = url::Url::parse("https://sr.bank.example/portal").unwrap();

        assert_eq!(
            portal_origins(Some(&public_url), true, &listener),
            ["https://sr.bank.example"]
        );
        assert_eq!(
            portal_origins(None, false, &listener),
            ["http://127.0.0.1:8080", "http://localhost:8080"]
        );
    }

    #[test]
    fn origins_cover_every_listener() {
        let listeners = [
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8080".parse().unwrap(),
        ];

        assert_eq!(
            portal_origins(None, false, &listeners),
            [
                "http://127.0.0.1:8080",
                "http://[::1]:8080",
                "http://localhost:8080"
            ]
        );
    }
}
