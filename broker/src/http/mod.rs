//! The portal's HTTP surface.

pub mod client_addr;
pub mod health;
pub mod tls;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_http::trace::TraceLayer;

use crate::audit::AuditLog;
use crate::db::Database;
pub use client_addr::{ClientAddr, TrustedProxies};
pub use health::ReadinessCheck;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub audit: AuditLog,
    pub trusted_proxies: TrustedProxies,
    pub readiness: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    pub metrics: PrometheusHandle,
    pub auth: crate::auth::AuthService,
    pub portal: crate::portal::Portal,
}

impl FromRef<AppState> for TrustedProxies {
    fn from_ref(state: &AppState) -> TrustedProxies {
        state.trusted_proxies.clone()
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed when the broker is embedded in
            // a test binary; the handle then renders only this recorder's metrics.
            drop(metrics::set_global_recorder(recorder));
            handle
        })
        .clone()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics))
        .merge(crate::auth::routes())
        .merge(crate::portal::routes())
        .merge(crate::recordings::replay::routes())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
