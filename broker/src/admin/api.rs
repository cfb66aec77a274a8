//! The admin JSON API under `/api/v1`. Its OpenAPI document is generated from the
//! annotations here ([`ApiDoc`]), served at `/api/v1/openapi.json` and checked into
//! `docs/openapi.json`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use uuid::Uuid;

use super::problem::{self, Problem};
use super::{recordings, site_changes};
use super::views::{
    self, CredentialsView, HealthView, PersonView, QuotaChange, RolesChange, SessionView, SiteView,
    Termination,
};
use crate::audit::{AuditQuery, Checkpoint, StoredEvent};
use crate::auth::{RequireAdmin, RequireAuditor};
use crate::http::{AppState, ClientAddr};

/// Events read per page while exporting.
const EXPORT_PAGE: i64 = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_document))
        .route("/people", get(list_people))
        .route("/people/{id}/roles", put(set_roles))
        .route("/people/{id}/quota", put(set_quota))
        .route("/sites", get(list_sites))
        .route("/site-changes", get(site_changes::list_pending))
        .route("/site-changes/{id}/approve", post(site_changes::approve))
        .route("/site-changes/{id}/reject", post(site_changes::reject))
        .route("/recordings", get(recordings::list))
        .route("/recordings/{id}/hold", post(recordings::hold))
        .route("/recordings/{id}/release", post(recordings::release))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}/terminate", post(terminate_session))
        .route("/credentials", get(list_credentials))
        .route("/config", get(get_config))
        .route("/health", get(get_health))
        .route("/audit/events", get(search_audit))
        .route("/audit/checkpoints", get(list_checkpoints))
        .route("/audit/export", get(export_audit))
        .fallback(problem::not_found)
        .layer(axum::middleware::map_response(problem::into_problem))
}

/// The portal session cookie authenticates every route. Over HTTPS its name is
/// `__Host-strongroom_session`.
struct PortalCookie;

impl utoipa::Modify for PortalCookie {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "portal_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("strongroom_session"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strongroom admin API",
        description = "People, quotas, sites, live sessions, credentials, configuration, health and the audit trail. Admins may use every route; auditors may read sessions and the audit trail. Errors are RFC 9457 problem documents. State-changing requests must carry the portal's exact Origin header.",
        version = "1"
    ),
    paths(
        openapi_document,
        list_people,
        set_roles,
        set_quota,
        list_sites,
        site_changes::list_pending,
        site_changes::approve,
        site_changes::reject,
        recordings::list,
        recordings::hold,
        recordings::release,
        list_sessions,
        terminate_session,
        list_credentials,
        get_config,
        get_health,
        search_audit,
        list_checkpoints,
        export_audit,
    ),
    components(schemas(Problem)),
    modifiers(&PortalCookie),
    security(("portal_session" = [])),
)]
pub struct ApiDoc;

/// Renders the OpenAPI document as pretty-printed JSON with a final newline, the
/// form checked into `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither admin nor auditor", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn openapi_document(RequireAuditor(_): RequireAuditor) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_json(),
    )
        .into_response()
}

/// Every person, with roles, quota and granted sites.
#[utoipa::path(
    get,
    path = "/api/v1/people",
    tag = "people",
    responses(
        (status = 200, body = Vec<PersonView>),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_people(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Result<Json<Vec<PersonView>>, Problem> {
    Ok(Json(views::people(&state).await?))
}

/// Replaces a local account's roles; audited as `admin.role.changed`.
#[utoipa::path(
    put,
    path = "/api/v1/people/{id}/roles",
    tag = "people",
    params(("id" = String, Path, description = "Person id")),
    request_body = RolesChange,
    responses(
        (status = 200, body = PersonView),
        (status = 404, description = "No such person", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Roles come from the identity provider, or the admin would remove their own admin role", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown role name", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn set_roles(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    Json(change): Json<RolesChange>,
) -> Result<Json<PersonView>, Problem> {
    Ok(Json(
        views::set_roles(&state, &admin, Some(client), &id, &change).await?,
    ))
}

/// Sets a person's session quota; audited as `admin.quota.changed`.
#[utoipa::path(
    put,
    path = "/api/v1/people/{id}/quota",
    tag = "people",
    params(("id" = String, Path, description = "Person id")),
    request_body = QuotaChange,
    responses(
        (status = 200, body = PersonView),
        (status = 404, description = "No such person", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Quota out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn set_quota(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<String>,
    Json(change): Json<QuotaChange>,
) -> Result<Json<PersonView>, Problem> {
    Ok(Json(views::set_quota(&state, &admin, &id, &change).await?))
}

/// The site catalogue.
#[utoipa::path(
    get,
    path = "/api/v1/sites",
    tag = "sites",
    responses((status = 200, body = Vec<SiteView>))
)]
async fn list_sites(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Result<Json<Vec<SiteView>>, Problem> {
    Ok(Json(views::sites(&state).await?))
}

/// Every live banking session on every broker. Auditors may read it.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    responses((status = 200, body = Vec<SessionView>))
)]
async fn list_sessions(
    State(state): State<AppState>,
    RequireAuditor(_): RequireAuditor,
) -> Result<Json<Vec<SessionView>>, Problem> {
    Ok(Json(views::live_sessions(&state).await?))
}

/// Ends a live session. The reason is audited as `admin.session.terminated`, then the
/// session ends with `terminated_by_admin`.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/terminate",
    tag = "sessions",
    params(("id" = Uuid, Path, description = "Session id")),
    request_body = Termination,
    responses(
        (status = 200, description = "The session as stored after ending", body = SessionView),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session already ended", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing or overlong reason", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn terminate_session(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    ClientAddr(client): ClientAddr,
    Path(id): Path<Uuid>,
    Json(termination): Json<Termination>,
) -> Result<Json<SessionView>, Problem> {
    Ok(Json(
        views::terminate(&state, &admin, Some(client), id, &termination).await?,
    ))
}

/// Stored bank credentials (where they apply, never a value) and current sign-in
/// lockouts.
#[utoipa::path(
    get,
    path = "/api/v1/credentials",
    tag = "credentials",
    responses((status = 200, body = CredentialsView))
)]
async fn list_credentials(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Result<Json<CredentialsView>, Problem> {
    let config = state.admin.config.clone();
    Ok(Json(views::credentials(&state, &config).await?))
}

/// The configuration in effect; secrets appear only as references.
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "configuration",
    responses((status = 200, description = "Configuration by section", body = Object))
)]
async fn get_config(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Json<serde_json::Value> {
    Json(views::config_view(&state.admin.config))
}

/// Database, Docker engine, workspace image, host firewall rules, recording store,
/// keys, identity provider and secret store.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "health",
    responses((status = 200, description = "Every check, healthy or not", body = HealthView))
)]
async fn get_health(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Json<HealthView> {
    let config = state.admin.config.clone();
    Json(views::health(&state, &config).await)
}

/// A page of audit events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `after_seq` for the next page; absent when this page is the last.
    pub next_after_seq: Option<i64>,
}

/// Searches the audit trail by actor, action, target, session and time range.
#[utoipa::path(
    get,
    path = "/api/v1/audit/events",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn search_audit(
    State(state): State<AppState>,
    RequireAuditor(_): RequireAuditor,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, Problem> {
    let limit = query
        .validate()
        .map_err(|error| Problem::new(StatusCode::BAD_REQUEST, error.to_string()))?;
    let events = state.audit.search(&query).await?;
    let next_after_seq = (events.len() as i64 == limit)
        .then(|| events.last().map(|event| event.seq))
        .flatten();
    Ok(Json(AuditPage {
        events,
        next_after_seq,
    }))
}

/// The signed checkpoints that audit pruning left.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointList {
    /// The broker's audit signing public key (Ed25519, hex).
    pub public_key: String,
    pub checkpoints: Vec<Checkpoint>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit/checkpoints",
    tag = "audit",
    responses((status = 200, body = CheckpointList))
)]
async fn list_checkpoints(
    State(state): State<AppState>,
    RequireAuditor(_): RequireAuditor,
) -> Result<Json<CheckpointList>, Problem> {
    Ok(Json(CheckpointList {
        public_key: state.admin.signing_key.public_key_hex(),
        checkpoints: crate::audit::checkpoint::list_checkpoints(&state.db).await?,
    }))
}

/// One line of the JSON-lines export.
#[derive(Serialize)]
struct ExportLine<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    item: &'a T,
}

#[derive(Serialize)]
struct ExportHeader {
    public_key: String,
    exported_at_ms: i64,
}

/// Exports matching events as JSON lines for a SIEM: a `header` line with the audit
/// public key, one `checkpoint` line per signed checkpoint, then one `event` line per
/// event in chain order. `limit` and `after_seq` are ignored: the whole match is
/// exported. The export is audited as `audit.exported`.
#[utoipa::path(
    get,
    path = "/api/v1/audit/export",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "JSON lines", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn export_audit(
    State(state): State<AppState>,
    RequireAuditor(principal): RequireAuditor,
    ClientAddr(client): ClientAddr,
    Query(query): Query<AuditQuery>,
) -> Result<Response, Problem> {
    let mut page = AuditQuery {
        limit: Some(EXPORT_PAGE),
        after_seq: None,
        ..query.clone()
    };
    page.validate()
        .map_err(|error| Problem::new(StatusCode::BAD_REQUEST, error.to_string()))?;

    let mut output = Vec::new();
    let header_line = ExportHeader {
        public_key: state.admin.signing_key.public_key_hex(),
        exported_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    write_line(&mut output, "header", &header_line)?;
    for checkpoint in crate::audit::checkpoint::list_checkpoints(&state.db).await? {
        write_line(&mut output, "checkpoint", &checkpoint)?;
    }
    // NOTE: the export is assembled in memory; a trail of millions of events needs a
    // streamed body instead.
    let mut exported = 0;
    loop {
        let events = state.audit.search(&page).await?;
        for event in &events {
            write_line(&mut output, "event", event)?;
        }
        exported += events.len();
        match events.last() {
            Some(last) if events.len() as i64 == EXPORT_PAGE => page.after_seq = Some(last.seq),
            _ => break,
        }
    }
    views::audit_export_event(&state, &principal, Some(client), &query, exported).await?;

    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"strongroom-audit.jsonl\""),
            ),
        ],
        output,
    )
        .into_response())
}

fn write_line<T: Serialize>(
    output: &mut Vec<u8>,
    kind: &'static str,
    item: &T,
) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *output, &ExportLine { kind, item })?;
    output.push(b'\n');
    Ok(())
}
