//! The person-facing portal: the sites a person may open, their sessions, and the live
//! view. Pages are server-rendered; the only script is the viewer's.

mod pages;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::FutureExt;
use serde::Deserialize;
use uuid::Uuid;

use crate::audit::{Action, Actor, EventBuilder};
use crate::auth::{AuthService, CurrentSession, Principal};
use crate::error::ApiError;
use crate::http::{AppState, ClientAddr};
use crate::sessions::{LaunchError, SessionService};
use crate::stream::viewer::{self, TicketGrant, Tickets, ViewerMode};
use crate::stream::{StreamHub, StreamStart};

/// Services the portal uses besides the shared application state.
#[derive(Clone)]
pub struct Portal {
    pub sessions: SessionService,
    pub hub: StreamHub,
    pub tickets: Tickets,
    pub egress: crate::lifecycle::EgressListeners,
    /// Days a recording is kept when the site sets no retention.
    pub default_retention_days: i64,
    pub auto_login: crate::secrets::autologin::AutoLoginService,
    /// The store of files delivered from workspaces.
    pub downloads: Option<crate::downloads::Downloads>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/sessions", post(launch))
        .route("/sessions/{id}", get(viewer_page))
        .route("/sessions/{id}/end", post(end))
        .route("/sessions/{id}/live", get(live))
        .route("/sessions/{id}/ticket", post(new_ticket))
        .route("/assets/viewer.js", get(viewer_script))
}

async fn home(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
) -> Result<Response, ApiError> {
    home_page(&state, &principal, None).await
}

/// Renders the portal's home page, with `error` above the sites after a refused launch.
async fn home_page(
    state: &AppState,
    principal: &Principal,
    error: Option<&str>,
) -> Result<Response, ApiError> {
    let sites = launchable_sites(state, principal).await?;
    let sessions = state.portal.sessions.list_for(principal).await?;
    Ok(pages::home(
        principal,
        &pages::Home {
            sites: &sites,
            sessions: &sessions,
            end_texts: &state.portal.sessions.end_texts(),
            error,
        },
    ))
}

/// Lists the sites that `principal` may launch: enabled and granted to them, the rule
/// that [`SessionService::launch`] applies, so that no page names a site outside the
/// person's grants.
async fn launchable_sites(
    state: &AppState,
    principal: &Principal,
) -> Result<Vec<crate::sites::Site>, ApiError> {
    if !principal.can_launch() {
        return Ok(Vec::new());
    }
    let granted = crate::sites::grants_for(&state.db, &principal.user_id).await?;
    let sites = crate::sites::list(&state.db).await?;
    Ok(sites
        .into_iter()
        .filter(|site| site.enabled && granted.contains(&site.name))
        .collect())
}

#[derive(Deserialize)]
struct LaunchForm {
    site: String,
}

async fn launch(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    ClientAddr(client): ClientAddr,
    Form(form): Form<LaunchForm>,
) -> Result<Response, ApiError> {
    let portal = &state.portal;
    let launched = match portal
        .sessions
        .launch(&principal, &form.site, Some(client))
        .await
    {
        Ok(launched) => launched,
        Err(error) => return launch_refused(&state, &principal, error).await,
    };

    let session_id = launched.session.id;
    if let Err(error) = portal
        .egress
        .open(session_id, SocketAddr::V4(launched.proxy_address))
    {
        let reason = crate::sessions::EndReason::LaunchFailed {
            detail: format!("{error:#}"),
        };
        portal
            .sessions
            .end(session_id, reason, Actor::System("egress"))
            .await
            .ok();
        return Err(ApiError::internal(error));
    }
    let site = crate::sites::get(&state.db, &launched.session.site).await?;
    let retention_days = site
        .as_ref()
        .map(|site| i64::from(site.recording_retention_days))
        .unwrap_or(portal.default_retention_days);
    let start = StreamStart {
        session_id,
        owner: principal.user_id.clone(),
        agent_addr: SocketAddr::V4(SocketAddrV4::new(
            launched.workspace_address,
            portal.hub.settings().agent_port,
        )),
        secret: launched.agent_secret.session_secret(),
        recording_id: Uuid::new_v4(),
        recording_expires_at: chrono::Utc::now() + chrono::Duration::days(retention_days),
        clipboard: site
            .as_ref()
            .map(|site| site.policy.clipboard)
            .unwrap_or_default(),
    };
    let stream = match portal.hub.start(start).await {
        Ok(stream) => stream,
        Err(error) => {
            let reason = crate::sessions::EndReason::RecorderFailed {
                detail: format!("{error:#}"),
            };
            portal
                .sessions
                .end(session_id, reason, Actor::System("recorder"))
                .await
                .ok();
            return Err(ApiError::internal(error));
        }
    };
    if let Some(site) = site {
        portal.auto_login.spawn(
            stream,
            portal.sessions.clone(),
            principal.user_id.clone(),
            site,
        );
    }
    Ok(Redirect::to(&format!("/sessions/{session_id}")).into_response())
}

async fn launch_refused(
    state: &AppState,
    principal: &Principal,
    error: LaunchError,
) -> Result<Response, ApiError> {
    if let LaunchError::Storage(error) = error {
        return Err(ApiError::internal(error));
    }
    let status = match error {
        LaunchError::NotAllowed => StatusCode::FORBIDDEN,
        // One status for both, so that a refusal does not tell whether the site exists.
        LaunchError::NotGranted { .. } | LaunchError::SiteNotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        LaunchError::QuotaReached { .. }
        | LaunchError::SiteLimitReached { .. }
        | LaunchError::HostCapacityReached { .. } => StatusCode::TOO_MANY_REQUESTS,
        LaunchError::CredentialUnavailable { .. } => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut page = home_page(state, principal, Some(&error.person_message())).await?;
    *page.status_mut() = status;
    Ok(page)
}

/// Access of a portal session to a live session.
enum ViewerAccess {
    Granted {
        record: crate::sessions::SessionRecord,
        ticket: String,
        mode: ViewerMode,
    },
    /// The session exists but its stream has ended.
    Ended(crate::sessions::SessionRecord),
}

/// Checks that this person may view the session (the owner controls it, an admin
/// watches) and issues a one-time ticket for the viewer WebSocket.
async fn viewer_access(
    state: &AppState,
    principal: &Principal,
    portal_session: &str,
    session_id: Uuid,
) -> Result<ViewerAccess, ApiError> {
    let Some(record) = state.portal.sessions.get_for(principal, session_id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such session"));
    };
    let mode = if record.user_id == principal.user_id {
        ViewerMode::Control
    } else if principal.has(crate::auth::Role::Admin) {
        ViewerMode::Watch
    } else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the owner or an admin may view a live session",
        ));
    };
    if state.portal.hub.get(session_id).is_none() {
        return Ok(ViewerAccess::Ended(record));
    }
    let ticket = state.portal.tickets.issue(TicketGrant {
        session_id,
        user_id: principal.user_id.clone(),
        portal_session: portal_session.to_owned(),
        mode,
    });
    Ok(ViewerAccess::Granted {
        record,
        ticket,
        mode,
    })
}

async fn viewer_page(
    State(state): State<AppState>,
    CurrentSession { principal, session }: CurrentSession,
    Path(session_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    match viewer_access(&state, &principal, &session.id, session_id).await? {
        ViewerAccess::Granted {
            record,
            ticket,
            mode,
        } => Ok(pages::viewer(
            &record,
            &ticket,
            mode,
            &state.portal.sessions.end_texts(),
        )),
        ViewerAccess::Ended(record) => {
            Ok(pages::ended(&record, &state.portal.sessions.end_texts()))
        }
    }
}

/// Issues a fresh one-time ticket so that the viewer script can reconnect a dropped
/// socket to the same session. Returns 410 Gone with the end reason's sentence once the
/// session ended.
async fn new_ticket(
    State(state): State<AppState>,
    CurrentSession { principal, session }: CurrentSession,
    Path(session_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    match viewer_access(&state, &principal, &session.id, session_id).await? {
        ViewerAccess::Granted { ticket, .. } => Ok((
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({
                "socket": pages::socket_path(session_id, &ticket),
            })),
        )
            .into_response()),
        ViewerAccess::Ended(record) => Ok((
            StatusCode::GONE,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({
                "ended": pages::end_reason(&record, &state.portal.sessions.end_texts()),
            })),
        )
            .into_response()),
    }
}

async fn end(
    State(state): State<AppState>,
    CurrentSession { principal, .. }: CurrentSession,
    Path(session_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    match state.portal.sessions.end_by(&principal, session_id).await {
        Ok(_) => Ok(Redirect::to("/").into_response()),
        Err(crate::sessions::EndError::NotFound(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "no such session"))
        }
        Err(crate::sessions::EndError::NotAllowed) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the session's owner or an admin may end it",
        )),
        Err(error) => Err(ApiError::internal(anyhow::Error::new(error))),
    }
}

#[derive(Deserialize)]
struct LiveQuery {
    ticket: String,
}

/// Upgrades to the viewer WebSocket after checking an exact Origin, a one-time ticket
/// issued to this session's owner (or a watching admin), and a valid portal session.
async fn live(
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let auth: AuthService = state.auth.clone();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok());
    if !origin.is_some_and(|origin| auth.origins().iter().any(|allowed| allowed == origin)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the live view only accepts connections from the portal's own origin",
        ));
    }
    let Some(grant) = state
        .portal
        .tickets
        .redeem(&query.ticket)
        .filter(|grant| grant.session_id == session_id)
    else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid or expired viewer ticket; reload the page",
        ));
    };
    let Some(stream) = state.portal.hub.get(session_id) else {
        return Err(ApiError::new(StatusCode::GONE, "the session has ended"));
    };

    if grant.mode == ViewerMode::Watch {
        let event = EventBuilder::new(Actor::Person(grant.user_id.clone()), Action::ViewerAttached)
            .session(session_id)
            .detail("mode", "watch")
            .build();
        state.audit.append(event).await?;
    }

    let authorised: viewer::Authorisation = {
        let auth = auth.clone();
        let headers = Arc::new(headers);
        let grant = grant.clone();
        Arc::new(move || {
            let auth = auth.clone();
            let headers = headers.clone();
            let grant = grant.clone();
            async move {
                match auth.authenticate(&headers).await {
                    Ok(Some(CurrentSession { principal, session })) => {
                        session.id == grant.portal_session
                            && principal.user_id == grant.user_id
                            && match grant.mode {
                                ViewerMode::Control => principal.can_launch(),
                                ViewerMode::Watch => principal.has(crate::auth::Role::Admin),
                            }
                    }
                    _ => false,
                }
            }
            .boxed()
        })
    };
    let hooks = state.portal.sessions.stream_hooks();
    let ping = state.portal.hub.settings().viewer_ping_interval;
    Ok(upgrade
        .max_message_size(viewer::MAX_VIEWER_MESSAGE)
        .on_upgrade(move |socket| {
            viewer::serve(socket, stream, grant.mode, Some(hooks), authorised, ping)
        }))
}

async fn viewer_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../assets/viewer.js"),
    )
}
