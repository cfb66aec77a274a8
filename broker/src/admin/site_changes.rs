//! Pending dual-control site changes in the admin API: list, approve, reject.
//!
//! The signed-in admin is the deciding admin. [`crate::sites::dual_control`] refuses a
//! decision by the admin who requested the change and audits every decision as
//! `admin.site.changed`, as the `strongroom site approve|reject` commands do.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use uuid::Uuid;

use super::problem::Problem;
use super::views::AdminError;
use crate::auth::RequireAdmin;
use crate::http::AppState;
use crate::sites::dual_control::{self, DecisionError, PendingChange};

/// A site change that waits for a second admin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PendingChangeView {
    pub id: Uuid,
    pub site: String,
    /// Controlled fields that differ from the stored site, or `new site`.
    pub changed_fields: Vec<String>,
    /// User id of the requesting admin, or `system:cli`.
    pub requested_by: String,
    pub requested_at_ms: i64,
    /// The whole site definition that approval applies.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

impl PendingChangeView {
    fn from_change(change: &PendingChange) -> Result<PendingChangeView, AdminError> {
        Ok(PendingChangeView {
            id: change.id,
            site: change.definition.name.clone(),
            changed_fields: change.changed_fields.clone(),
            requested_by: change.requested_by.clone(),
            requested_at_ms: change.requested_at_ms,
            definition: serde_json::to_value(&change.definition)
                .map_err(|error| AdminError::Internal(error.into()))?,
        })
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DecisionView {
    pub id: Uuid,
    pub site: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// User id of the deciding admin.
    pub decided_by: String,
}

/// Maps a refused decision to the admin error shown by the API and the pages.
pub(super) fn decision_error(error: DecisionError) -> AdminError {
    match error {
        DecisionError::NotPending(_) => AdminError::NotFound(error.to_string()),
        DecisionError::SameAdmin { .. } => AdminError::Conflict(error.to_string()),
        DecisionError::Storage(error) => AdminError::Internal(error),
    }
}

/// Site changes waiting for a second admin, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/site-changes",
    tag = "sites",
    responses(
        (status = 200, body = Vec<PendingChangeView>),
        (status = 401, description = "Not signed in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list_pending(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Result<Json<Vec<PendingChangeView>>, Problem> {
    let changes = dual_control::pending(&state.db)
        .await
        .map_err(|error| AdminError::Internal(error).to_problem())?;
    let views = changes
        .iter()
        .map(PendingChangeView::from_change)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_problem())?;
    Ok(Json(views))
}

/// Approves a pending change as the signed-in admin and applies it; audited as
/// `admin.site.changed`.
#[utoipa::path(
    post,
    path = "/api/v1/site-changes/{id}/approve",
    tag = "sites",
    params(("id" = Uuid, Path, description = "Change id")),
    responses(
        (status = 200, body = DecisionView),
        (status = 404, description = "No pending change with this id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The signed-in admin requested the change", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn approve(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<Uuid>,
) -> Result<Json<DecisionView>, Problem> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let site = dual_control::approve(&state.db, &state.audit, id, &admin.user_id, now_ms)
        .await
        .map_err(|error| decision_error(error).to_problem())?;
    Ok(Json(DecisionView {
        id,
        site: site.name.clone(),
        decision: "approved".to_owned(),
        decided_by: admin.user_id,
    }))
}

/// Rejects a pending change as the signed-in admin; audited as `admin.site.changed`.
#[utoipa::path(
    post,
    path = "/api/v1/site-changes/{id}/reject",
    tag = "sites",
    params(("id" = Uuid, Path, description = "Change id")),
    responses(
        (status = 200, body = DecisionView),
        (status = 404, description = "No pending change with this id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The signed-in admin requested the change", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn reject(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    Path(id): Path<Uuid>,
) -> Result<Json<DecisionView>, Problem> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let change = dual_control::reject(&state.db, &state.audit, id, &admin.user_id, now_ms)
        .await
        .map_err(|error| decision_error(error).to_problem())?;
    Ok(Json(DecisionView {
        id,
        site: change.definition.name,
        decision: "rejected".to_owned(),
        decided_by: admin.user_id,
    }))
}
