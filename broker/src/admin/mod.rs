//! The admin console: a JSON API under `/api/v1` and server-rendered pages under
//! `/admin`, for people and roles, quotas, the site catalogue, live sessions, stored
//! credentials, configuration, health and the audit trail.
//!
//! Admins may use every route. Auditors may read live sessions and the audit trail
//! (search, checkpoints, export) and nothing else. Users and anonymous callers get
//! 403 and 401. Every change goes through the same extractors as the portal, so a
//! state-changing request must carry the portal's exact `Origin`; every change is
//! audited.

pub mod api;
mod pages;
pub mod problem;
pub mod recordings;
pub mod site_changes;
pub mod views;

use std::sync::Arc;

use axum::Router;

use crate::audit::AuditSigningKey;
use crate::config::Config;
use crate::http::AppState;

/// Services of the console besides the shared application state.
#[derive(Clone)]
pub struct AdminContext {
    pub config: Arc<Config>,
    /// Signs the checkpoints that audit pruning leaves; its public half is shown to
    /// auditors.
    pub signing_key: Arc<AuditSigningKey>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .nest("/api/v1", api::routes())
        .merge(pages::routes())
}
