//! `/healthz` (the process is alive) and `/readyz` (every dependency answers).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures::future::{BoxFuture, join_all};
use serde::Serialize;

use super::AppState;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One dependency that `/readyz` checks.
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    /// Returns a short reason when the dependency is not usable.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

#[derive(Serialize)]
struct CheckResult {
    name: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
    checks: Vec<CheckResult>,
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = run_checks(&state.readiness).await;
    let ready = checks.iter().all(|check| check.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyBody { ready, checks }))
}

async fn run_checks(checks: &[Arc<dyn ReadinessCheck>]) -> Vec<CheckResult> {
    let futures = checks.iter().map(|check| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {} s", CHECK_TIMEOUT.as_secs())),
        };
        if let Err(error) = &outcome {
            tracing::warn!(
                check = check.name(),
                error = error.as_str(),
                "Readiness check failed"
            );
        }
        CheckResult {
            name: check.name(),
            ok: outcome.is_ok(),
            error: outcome.err(),
        }
    });
    join_all(futures).await
}

/// The database answers a trivial query.
pub struct DatabaseCheck(pub crate::db::Database);

impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|error| error.to_string()) })
    }
}
