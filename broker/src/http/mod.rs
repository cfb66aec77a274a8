//! The portal's HTTP surface.

pub mod client_addr;
pub mod health;
pub mod security;
pub mod tls;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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
    pub admin: crate::admin::AdminContext,
}

impl FromRef<AppState> for TrustedProxies {
    fn from_ref(state: &AppState) -> TrustedProxies {
        state.trusted_proxies.clone()
    }
}

/// Upper bounds of the launch duration histogram, in seconds: a launch creates a network
/// and starts a container, which takes from under a second to tens of seconds.
const LAUNCH_DURATION_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("strongroom_session_launch_duration_seconds".to_owned()),
                    LAUNCH_DURATION_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed when the broker is embedded in
            // a test binary; the handle then renders only this recorder's metrics.
            drop(metrics::set_global_recorder(recorder));
            handle
        })
        .clone()
}

pub fn router(state: AppState) -> Router {
    let https = state.auth.https();
    security::secure(routes(), https)
        .layer(axum::middleware::from_fn(crate::error::html_error_pages))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every route of the portal, without the layers that [`router`] adds.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics))
        .merge(crate::auth::routes())
        .merge(crate::portal::routes())
        .merge(crate::admin::routes())
        .merge(crate::recordings::replay::routes())
        .merge(crate::downloads::portal::routes())
}

/// The path patterns of `router`, such as `/sessions/{id}`, sorted.
///
/// NOTE: axum 0.8 has no accessor for a router's paths, so they are read from its
/// `Debug` output (the `paths` map of its route nodes). A format change in axum
/// makes this return no paths, which the route matrix test reports.
pub fn route_paths<S>(router: &Router<S>) -> Vec<String> {
    let debug = format!("{router:?}");
    // The fallback router's paths follow the main router's and are not routes.
    let main = debug.split("fallback_router:").next().unwrap_or_default();
    let Some((_, nodes)) = main.split_once("node: Node { paths: {") else {
        return Vec::new();
    };
    let mut paths: Vec<String> = nodes
        .split("RouteId(")
        .skip(1)
        .filter_map(|entry| {
            let start = entry.find('"')? + 1;
            let length = entry[start..].find('"')?;
            Some(entry[start..start + length].to_owned())
        })
        .collect();
    paths.sort();
    paths
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::{get, post};

    #[test]
    fn route_paths_lists_merged_routes() {
        let router: Router = Router::new()
            .route("/b/{id}", get(|| async {}))
            .merge(Router::new().route("/a", post(|| async {}).get(|| async {})));

        assert_eq!(super::route_paths(&router), ["/a", "/b/{id}"]);
    }
}
