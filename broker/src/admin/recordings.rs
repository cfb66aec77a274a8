//! Recordings in the admin API: the catalogue by person, site and start time, and
//! legal hold. A hold or release goes through [`crate::recordings::retention`], which
//! wraps a held recording under the hold key and audits the change as
//! `recording.hold.changed`, as `strongroom recording hold|release` does.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::problem::Problem;
use super::views::AdminError;
use crate::audit::Actor;
use crate::auth::RequireAdmin;
use crate::http::AppState;
use crate::recordings::catalogue::{self, CatalogueEntry, Filter, RecordingState};

/// Rows a listing returns when the request names no limit.
const DEFAULT_LIMIT: u32 = 100;
/// Largest limit a listing accepts.
const MAX_LIMIT: u32 = 1000;

/// Conditions of a recordings listing; absent ones match everything.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordingQuery {
    /// The person: a user id, or a username, which is matched first.
    pub user_id: Option<String>,
    /// Site name.
    pub site: Option<String>,
    /// Recordings that started at or after this time, in Unix milliseconds.
    pub started_from_ms: Option<i64>,
    /// Recordings that started before this time, in Unix milliseconds.
    pub started_before_ms: Option<i64>,
    /// Rows returned, 1 to 1000; 100 when absent.
    pub limit: Option<u32>,
}

/// One recording of the catalogue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordingView {
    pub id: Uuid,
    pub session_id: Uuid,
    pub user_id: String,
    pub site: String,
    /// `recording`, `sealed`, `failed` or `deleted`.
    pub state: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub segment_count: u64,
    pub bytes: u64,
    pub legal_hold: bool,
    /// First instant at which retention no longer keeps the recording, unless held.
    pub expires_at_ms: i64,
    pub deleted_at_ms: Option<i64>,
}

impl From<CatalogueEntry> for RecordingView {
    fn from(entry: CatalogueEntry) -> RecordingView {
        RecordingView {
            id: entry.id,
            session_id: entry.session_id,
            user_id: entry.user_id,
            site: entry.site,
            state: entry.state.as_str().to_owned(),
            started_at_ms: entry.started_at.timestamp_millis(),
            ended_at_ms: entry.ended_at.map(|time| time.timestamp_millis()),
            segment_count: entry.segment_count,
            bytes: entry.bytes,
            legal_hold: entry.legal_hold,
            expires_at_ms: entry.expires_at.timestamp_millis(),
            deleted_at_ms: entry.deleted_at.map(|time| time.timestamp_millis()),
        }
    }
}

fn instant(name: &str, ms: Option<i64>) -> Result<Option<DateTime<Utc>>, Problem> {
    ms.map(|ms| {
        Utc.timestamp_millis_opt(ms).single().ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("invalid {name} {ms}; use Unix milliseconds"),
            )
        })
    })
    .transpose()
}

/// Recordings by person, site and start time, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/recordings",
    tag = "recordings",
    params(RecordingQuery),
    responses(
        (status = 200, body = Vec<RecordingView>),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
    Query(query): Query<RecordingQuery>,
) -> Result<Json<Vec<RecordingView>>, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("invalid limit {limit}; use 1 to {MAX_LIMIT}"),
        ));
    }
    // PostgreSQL cannot store or compare text that contains NUL.
    for (name, value) in [("user_id", &query.user_id), ("site", &query.site)] {
        if value.as_deref().is_some_and(|text| text.contains('\0')) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("invalid {name}: it contains a NUL character"),
            ));
        }
    }
    let internal = |error: anyhow::Error| AdminError::Internal(error).to_problem();
    let user_id = match query.user_id.as_deref() {
        Some(person) => Some(
            crate::auth::users::id_for_filter(&state.db, person)
                .await
                .map_err(internal)?,
        ),
        None => None,
    };
    let filter = Filter {
        user_id,
        site: query.site,
        started_from: instant("started_from_ms", query.started_from_ms)?,
        started_before: instant("started_before_ms", query.started_before_ms)?,
        limit: Some(limit),
    };
    let entries = catalogue::list(&state.db, &filter)
        .await
        .map_err(internal)?;
    Ok(Json(entries.into_iter().map(RecordingView::from).collect()))
}

async fn set_hold(
    state: &AppState,
    admin: &crate::auth::Principal,
    id: Uuid,
    hold: bool,
) -> Result<Json<RecordingView>, Problem> {
    let internal = |error: anyhow::Error| AdminError::Internal(error).to_problem();
    let Some(entry) = catalogue::get(&state.db, id).await.map_err(internal)? else {
        return Err(AdminError::NotFound(format!(
            "no recording {id}; GET /api/v1/recordings lists them"
        ))
        .to_problem());
    };
    if entry.state == RecordingState::Deleted {
        return Err(AdminError::Conflict(format!(
            "recording {id} was deleted by retention; a hold cannot bring it back"
        ))
        .to_problem());
    }
    let retention = crate::recordings::retention::from_config(&state.admin.config, &state.audit)
        .map_err(internal)?;
    retention
        .set_hold(id, hold, Actor::Person(admin.user_id.clone()))
        .await
        .map_err(internal)?;
    let entry = catalogue::get(&state.db, id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal(anyhow::anyhow!("recording {id} vanished after the hold")))?;
    Ok(Json(entry.into()))
}

/// Places a recording on legal hold, so retention keeps it; audited as
/// `recording.hold.changed`.
#[utoipa::path(
    post,
    path = "/api/v1/recordings/{id}/hold",
    tag = "recordings",
    params(("id" = Uuid, Path, description = "Recording id")),
    responses(
        (status = 200, description = "The recording after the change", body = RecordingView),
        (status = 404, description = "No such recording", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Retention already deleted the recording", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn hold(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<Uuid>,
) -> Result<Json<RecordingView>, Problem> {
    set_hold(&state, &admin, id, true).await
}

/// Releases a recording from legal hold; audited as `recording.hold.changed`.
#[utoipa::path(
    post,
    path = "/api/v1/recordings/{id}/release",
    tag = "recordings",
    params(("id" = Uuid, Path, description = "Recording id")),
    responses(
        (status = 200, description = "The recording after the change", body = RecordingView),
        (status = 404, description = "No such recording", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Retention already deleted the recording", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn release(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<Uuid>,
) -> Result<Json<RecordingView>, Problem> {
    set_hold(&state, &admin, id, false).await
}
